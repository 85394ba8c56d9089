"""The multistep update in pure torch: the twin of the fused kernel.

With x̂_0 = X0_FROM_X·x + X0_FROM_EPS·ε (the data prediction at this step), the step is
x_next = X·x + EPS·ε + X0·x̂_0 + Σ_j HISTORY_j·x̂_0[k−j] over the j = 1 … len(history) earlier data predictions
(newest first): DPM-Solver++ (2M: one, 3M: two) and UniPC (up to three). Rows as in
``fastddpm.kernels.update_rows``. Returns both x_next and x̂_0, which the next step needs.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..update_rows import HISTORY_ROWS, Row


def multistep_update(
    x: torch.Tensor, eps: torch.Tensor, k: torch.Tensor, coefs: torch.Tensor, history: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (k.shape[0],) + (1,) * (x.ndim - 1)
    c = coefs.float()[:, k].reshape(coefs.shape[0], *shape)
    xf, ef = x.float(), eps.float()
    x0 = c[Row.X0_FROM_X] * xf + c[Row.X0_FROM_EPS] * ef
    x_next = c[Row.X] * xf + c[Row.EPS] * ef + c[Row.X0] * x0
    for row, earlier in zip(HISTORY_ROWS, history):
        x_next = x_next + c[row] * earlier.float()
    return x_next.to(x.dtype), x0.to(x.dtype)
