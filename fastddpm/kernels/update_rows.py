"""The one update every sampler step reduces to, and the one set of names for its coefficient rows.

At step k, with ε̂ = model(x, t_k):

    x̂_0    = X0_FROM_X·x + X0_FROM_EPS·ε̂                              (the data prediction)
    x_next = X·x + EPS·ε̂ + X0·x̂_0 + NOISE·z + Σ_j HISTORY_j·x̂_0[k−j]   (j = 1 … 3)

where z is fresh Gaussian noise and x̂_0[k−j] the data prediction of j steps back. The solvers weigh
x̂_0 (row X0) rather than fold it into X and EPS: near t = T the folded weights are ~1/α ≈ 158 times
larger and cancel, and in float32 that cost UniPC-3 a 2–4× larger error against a float64 solve
(exact-ε harness, 10 trailing steps, each against a float64 solve: 2.3e-5 folded, 6.4e-6 with
the X0 row; diffusers' own float32 scheduler 5.9e-6). A solver's plan
(``fastddpm.solvers.StepPlan``) holds these coefficients as a (``NUM_ROWS``, S) table, one column per
step; the fused kernels, their torch twins and the ONNX step graphs all read it by these names. DDIM and
the ancestral step use EPS, X0 and NOISE (the reference's own ancestral update X, EPS and NOISE); the
multistep solvers (DPM-Solver++, UniPC) X, X0 and up to three histories.
"""

from __future__ import annotations

import enum

__all__ = ["Row", "NUM_ROWS", "MAX_HISTORIES", "HISTORY_ROWS"]


class Row(enum.IntEnum):
    X = 0  # the weight of the state x in x_next
    EPS = 1  # the weight of the model output ε̂
    X0 = 2  # the weight of this step's data prediction x̂_0
    NOISE = 3  # the weight of fresh Gaussian noise z (0 at steps that draw none)
    X0_FROM_X = 4  # x̂_0 = X0_FROM_X·x + X0_FROM_EPS·ε̂
    X0_FROM_EPS = 5
    HISTORY1 = 6  # the weight of the x̂_0 of one step back
    HISTORY2 = 7  # … two steps back
    HISTORY3 = 8  # … three steps back (UniPC order 3: its corrector reaches one step further)


NUM_ROWS = len(Row)
HISTORY_ROWS = (Row.HISTORY1, Row.HISTORY2, Row.HISTORY3)
MAX_HISTORIES = len(HISTORY_ROWS)
