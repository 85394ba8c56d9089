"""A solver's plan: the visited timesteps and each step's coefficients of the one update, in float64.

A plan is all a runner needs to know about a solver. The eager / compiled / CUDA-graph ``Sampler``, the
ONNX step graph, ``OrtSampler`` and the whole-sampler ONNX Loop all execute the same
``StepPlan``: at step k they evaluate ε̂ = model(x, t_k) and apply the update whose rows
``fastddpm.kernels.update_rows.Row`` names (column k of ``coefs``). What differs between solvers is only
the numbers in the table, and how many earlier data predictions (x̂_0 "histories") a step reads.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence, TypeVar

import numpy as np
import torch

from ..kernels.update_rows import HISTORY_ROWS, MAX_HISTORIES, NUM_ROWS, Row

__all__ = ["StepPlan", "push_history", "check_plan_fits"]


@dataclasses.dataclass(frozen=True, eq=False)
class StepPlan:
    """What a sampler does at each of its S steps.

    ``timesteps``: the training timesteps visited, descending (the step after the last lands on x_0).
    ``coefs``: float64 (NUM_ROWS, S), column k the coefficients of step k, rows named by ``Row``.
    ``histories``: how many earlier x̂_0 the update reads (0 for DDIM / the ancestral step, 1–3 for the
    multistep solvers); rows HISTORY_j beyond it are zero. ``exact_reference``: the full T-step ancestral
    chain, which the torch runners apply with the reference's own update for bit-exact samples (``coefs``
    still holds its affine form, for runtimes that have no such op). ``method``, ``order``, ``eta`` and
    ``spacing`` (a rule's name, or None for explicit timesteps) describe where the plan came from.
    """

    method: str
    timesteps: tuple[int, ...]
    coefs: np.ndarray
    histories: int = 0
    order: int = 1
    eta: float = 0.0
    spacing: str | None = None
    exact_reference: bool = False

    def __post_init__(self):
        timesteps = tuple(int(t) for t in self.timesteps)
        if not timesteps or any(t < 0 for t in timesteps) or any(a <= b for a, b in zip(timesteps, timesteps[1:])):
            raise ValueError(f"a plan's timesteps must be distinct, descending and >= 0, got {list(timesteps)}")
        coefs = np.array(self.coefs, dtype=np.float64)  # a private copy: the plan is immutable
        if coefs.shape != (NUM_ROWS, len(timesteps)):
            raise ValueError(f"coefs must be ({NUM_ROWS}, {len(timesteps)}) (rows × steps), got {coefs.shape}")
        if not np.isfinite(coefs).all():
            raise ValueError("a plan's coefficients must be finite")
        if not 0 <= self.histories <= MAX_HISTORIES:
            raise ValueError(f"histories must lie in [0, {MAX_HISTORIES}], got {self.histories}")
        if np.any(coefs[list(HISTORY_ROWS[self.histories:])] != 0):
            raise ValueError(f"a plan with {self.histories} histories has non-zero weights for older x̂_0")
        if self.histories and np.any(coefs[Row.NOISE] != 0):
            # The fused updates take either fresh noise or x̂_0 histories; no solver here needs both.
            raise ValueError("a plan draws noise or carries x̂_0 histories, not both")
        coefs.setflags(write=False)
        object.__setattr__(self, "timesteps", timesteps)
        object.__setattr__(self, "coefs", coefs)

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def noisy(self) -> tuple[bool, ...]:
        """Whether each step draws fresh noise (its NOISE weight is non-zero)."""
        return tuple(bool(c != 0) for c in self.coefs[Row.NOISE])

    @property
    def stochastic(self) -> bool:
        return any(self.noisy)

    def table(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The coefficients as the fused updates read them: (NUM_ROWS, S), contiguous, on ``device``."""
        return torch.tensor(self.coefs, dtype=dtype, device=device).contiguous()

    def describe(self) -> dict[str, Any]:
        """The plan's settings as JSON-able values (the ONNX exports' metadata)."""
        return {"method": self.method, "steps": self.steps,
                "spacing": self.spacing if self.spacing is not None else list(self.timesteps),
                "eta": self.eta, "order": self.order, "histories": self.histories,
                "timesteps": list(self.timesteps), "noisy": list(self.noisy)}


def check_plan_fits(plan: Any, num_train_timesteps: int, alphas_cumprod: np.ndarray) -> StepPlan:
    """``plan`` itself, after checking it is a StepPlan made for this schedule (T training steps, ᾱ):
    its timesteps lie below T, an exact-reference plan visits all T, and its x̂_0 rows are this schedule's."""
    if not isinstance(plan, StepPlan):
        raise ValueError(f"plan= takes a StepPlan (for a fitted solver: **fit.sampler_kwargs()), got {type(plan).__name__}")
    T = num_train_timesteps
    if max(plan.timesteps) >= T:
        raise ValueError(f"the plan visits timestep {max(plan.timesteps)}, beyond this diffusion's {T} training steps")
    if plan.exact_reference and plan.steps != T:
        raise ValueError(f"an exact-reference plan visits all {plan.steps} steps of its diffusion, not this one's {T}")
    alpha = np.sqrt(np.asarray(alphas_cumprod, dtype=np.float64)[list(plan.timesteps)])
    if not np.allclose(plan.coefs[Row.X0_FROM_X], 1 / alpha, rtol=1e-5, atol=0):
        raise ValueError("the plan was made for another noise schedule (its x̂_0 rows do not match this diffusion's ᾱ)")
    return plan


T = TypeVar("T")


def push_history(history: Sequence[T], newest: T) -> tuple[tuple[T, ...], T | None]:
    """The x̂_0 histories after a step: ``newest`` first, the oldest dropped. Returns (history, dropped).

    The one place the rotation is written: the torch loop, the CUDA-graph capture and ONNX Runtime's
    loop pass buffers (the dropped one is reused for the next step's output), the ONNX Loop builder value
    names.
    """
    if not history:
        return (), newest
    return (newest, *history[:-1]), history[-1]

