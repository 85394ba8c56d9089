"""Solvers: each turns a schedule and its settings into a :class:`StepPlan` that every runner executes.

A solver is one small module with a pure float64 function of the schedule (``ddim.py``, ``ddpm.py``,
``dpmsolver.py``, ``unipc.py``); registering it here is all a new one needs to run on every backend —
the torch ``Sampler`` (eager / compile / CUDA graph), ONNX Runtime and the whole-sampler ONNX Loop.

    plan = build_plan(diffusion, "unipc", steps=10, spacing="logsnr", order=3)
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Callable, Sequence

import numpy as np

from ..reference.diffusion import GaussianDiffusion
from ._schedule import schedule_alphas_cumprod
from .ddim import ddim_coefficients
from .ddpm import ddpm_coefficients
from .dpmsolver import dpmsolver_coefficients
from .plan import StepPlan, check_plan_fits, push_history
from .timesteps import SPACINGS, explicit_timesteps, timestep_sequence
from .unipc import unipc_coefficients, unipc_histories

__all__ = ["SOLVERS", "METHODS", "SPACINGS", "Solver", "StepPlan", "build_plan", "push_history", "check_plan_fits",
           "plan_fits",
           "timestep_sequence", "explicit_timesteps"]


@dataclasses.dataclass(frozen=True)
class Solver:
    """A registered solver: its orders (the first is the default), whether it takes η, how many x̂_0
    histories an order needs, and its coefficient function (diffusion, timesteps, order, η) → rows."""

    name: str
    orders: tuple[int, ...]
    takes_eta: bool
    histories: Callable[[int], int]
    coefficients: Callable[[GaussianDiffusion, list[int], int, float], np.ndarray]
    summary: str


SOLVERS: dict[str, Solver] = {
    s.name: s
    for s in (
        Solver("ddpm", (1,), False, lambda order: 0,
               lambda diffusion, ts, order, eta: ddpm_coefficients(diffusion, ts),
               "ancestral (the reference's sampler over all T steps; the respaced chain on fewer)"),
        Solver("ddim", (1,), True, lambda order: 0,
               lambda diffusion, ts, order, eta: ddim_coefficients(schedule_alphas_cumprod(diffusion), ts, eta),
               "DDIM, eta >= 0 (0: deterministic)"),
        Solver("dpmsolver++", (2, 3), False, lambda order: order - 1,
               lambda diffusion, ts, order, eta: dpmsolver_coefficients(schedule_alphas_cumprod(diffusion), ts, order),
               "DPM-Solver++ multistep, order 2 or 3"),
        Solver("unipc", (2, 1, 3), False, unipc_histories,
               lambda diffusion, ts, order, eta: unipc_coefficients(schedule_alphas_cumprod(diffusion), ts, order),
               "UniPC-bh2 predictor + UniC corrector, order 1-3"),
    )
}
METHODS = tuple(SOLVERS)


def _whole(name: str, value) -> int:
    """An integer setting (ints, numpy integers; not bools, floats or strings), or a one-line ValueError."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def plan_fits(plan, diffusion: GaussianDiffusion) -> StepPlan:
    """``plan`` after checking it was made for ``diffusion`` (see ``check_plan_fits``)."""
    return check_plan_fits(plan, diffusion.num_timesteps, schedule_alphas_cumprod(diffusion).numpy())


def build_plan(
    diffusion: GaussianDiffusion,
    method: str = "ddpm",
    steps: int | None = None,
    spacing: str = "leading",
    *,
    timesteps: Sequence[int] | None = None,
    eta: float | None = None,
    order: int | None = None,
) -> StepPlan:
    """The plan of ``method`` over ``steps`` timesteps placed by ``spacing`` (a rule's name), or over the
    explicit ``timesteps`` (descending training timesteps). ``order`` defaults to the solver's; ``eta``
    applies to "ddim" (default 0)."""
    solver = SOLVERS.get(method)
    if solver is None:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if order is None:
        order = solver.orders[0]
    if steps is not None:
        steps = _whole("steps", steps)
    order = _whole("order", order)
    if order not in solver.orders:
        if len(solver.orders) == 1:
            raise ValueError(f"order {order!r}: {method!r} has no order setting (its steps are first order)")
        raise ValueError(f"order {order!r}: {method!r} takes order {' or '.join(map(str, sorted(solver.orders)))}")
    if eta is not None and not solver.takes_eta:
        raise ValueError(f"eta applies to method='ddim' (the ancestral 'ddpm' step is eta = 1), not {method!r}")
    eta = 1.0 if method == "ddpm" else float(eta or 0.0)
    T = diffusion.num_timesteps
    if timesteps is not None:
        if not isinstance(spacing, str) or spacing != "leading":
            raise ValueError("pass spacing= (a rule's name) or timesteps= (the steps themselves), not both")
        seq, name = explicit_timesteps(T, steps, timesteps), None
    elif isinstance(spacing, str):
        seq, name = timestep_sequence(T, steps, spacing, schedule_alphas_cumprod(diffusion)), spacing
    else:  # the timesteps passed as spacing= (this release's alias of timesteps=)
        seq, name = explicit_timesteps(T, steps, spacing), None
    coefs = solver.coefficients(diffusion, seq, order, eta)
    return StepPlan(method=method, timesteps=tuple(seq), coefs=coefs, histories=solver.histories(order),
                    order=order, eta=eta, spacing=name, exact_reference=method == "ddpm" and len(seq) == T)
