"""Timesteps fitted to a model: where a few-step solver should evaluate *this* model.

A named spacing ("logsnr", "logsnr-sqrt", ...) places the steps by a rule that ignores the model. A fit
places them where the model's own probability-flow ODE needs them: starting from the best named spacing,
a pattern search moves one timestep at a time (step sizes 32, 16, …, 1 training steps) and keeps a move
when the few-step solve lands closer to a many-step solve of the same ODE from the same x_T (the
"teacher": DPM-Solver++(2M) over ``teacher_steps`` logsnr-spaced steps). Only the model is consulted —
no data — so it is fair to any model, and every candidate is judged on the same x_T (common random
numbers: the objective is deterministic). The error on a second, held-out x_T batch is reported before
and after, so a fit that only memorised its batch shows.

The idea of fitting the schedule to the model follows "Align Your Steps" (Sabour et al., 2024); this is a
plain derivative-free search on the teacher distance, not that paper's KL bound.

    fit = fit_timesteps(model, diffusion, steps=10, image_size=16, channels=1)
    Sampler(model, diffusion, method="dpmsolver++", timesteps=fit.timesteps)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import torch

from ..config import ConfigError, FrozenConfig
from ..sampling.sampler import Sampler
from ..solvers import SOLVERS, SPACINGS, StepPlan, build_plan

__all__ = ["FittedTimesteps", "fit_timesteps"]

FIT_METHODS = ("ddim", "dpmsolver++", "unipc")  # deterministic: the teacher distance is defined per x_T
_MOVES = (32, 16, 8, 4, 2, 1)  # pattern-search step sizes, in training timesteps


@dataclasses.dataclass(frozen=True)
class FittedTimesteps(FrozenConfig, json_indent=1, json_sort_keys=False):
    """A fit's result: the timesteps (descending, for ``Sampler(spacing=...)``), the solver they were fitted
    for, and the mean over samples of the RMS distance to the teacher before and after, on the fit batch and held out."""

    timesteps: tuple[int, ...]
    method: str
    order: int
    num_train_steps: int  # T of the model fitted for (num_train_timesteps; the stored name is kept)
    start: str  # the named spacing the search started from
    teacher_steps: int
    start_error: float
    error: float
    heldout_start_error: float
    heldout_error: float
    evaluations: int  # candidate solves (each is len(timesteps) model evaluations on the fit batch)
    seconds: float

    def __post_init__(self):
        # A fit read from a file is checked as strictly as one made here: it steers a sampler.
        def integer(name, value):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            return value

        T = integer("num_train_steps", self.num_train_steps)
        if not isinstance(self.timesteps, (tuple, list)):
            raise ValueError(f"timesteps must be a list of integers, got {self.timesteps!r}")
        seq = [integer("a timestep", t) for t in self.timesteps]
        if len(seq) < 2 or any(not 0 <= t < T for t in seq) or any(a <= b for a, b in zip(seq, seq[1:])):
            raise ValueError(f"timesteps must be at least 2 distinct, descending integers in [0, {T - 1}], got {seq}")
        object.__setattr__(self, "timesteps", tuple(seq))
        integer("teacher_steps", self.teacher_steps)
        integer("evaluations", self.evaluations)
        if self.start not in SPACINGS:
            raise ValueError(f"start must be one of {SPACINGS}, got {self.start!r}")
        if self.method not in FIT_METHODS:
            raise ValueError(f"method must be one of {FIT_METHODS}, got {self.method!r}")
        if integer("order", self.order) not in SOLVERS[self.method].orders:
            raise ValueError(f"order {self.order} does not go with method {self.method!r}")
        for name in ("start_error", "error", "heldout_start_error", "heldout_error", "seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")

    def sampler_kwargs(self) -> dict[str, Any]:
        """The ``Sampler`` arguments this fit is for."""
        kwargs: dict[str, Any] = {"method": self.method, "timesteps": list(self.timesteps)}
        if len(SOLVERS[self.method].orders) > 1:  # a solver with an order setting
            kwargs["order"] = self.order
        return kwargs

    @classmethod
    def from_dict(cls, d: Any) -> "FittedTimesteps":
        try:
            return super().from_dict(d)
        except ConfigError as exc:  # another kind of file (or a partial fit): say so before the details
            raise ConfigError(f"not a fastddpm timestep fit ({exc})") from None


def fit_timesteps(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    diffusion,
    steps: int,
    *,
    image_size: int | Sequence[int],
    channels: int,
    method: str = "dpmsolver++",
    order: int = 2,
    batch_size: int = 128,
    teacher_steps: int = 100,
    seed: int = 0,
    sampler_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> FittedTimesteps:
    """Fit ``steps`` timesteps for ``method`` (and ``order``) to ``model``; see the module docstring.
    ``sampler_options`` go to every ``Sampler`` (backend, dtype, kernels, device, prediction_type)."""

    if method not in FIT_METHODS:
        raise ValueError(f"fit_timesteps fits deterministic solvers {FIT_METHODS}, got {method!r}")
    T = diffusion.num_timesteps
    if not 2 <= steps <= T:
        raise ValueError(f"steps must lie in [2, {T}], got {steps}")
    if not steps < teacher_steps <= T:
        raise ValueError(f"teacher_steps must lie in ({steps}, {T}], got {teacher_steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    # Eager by default: every candidate is a new timestep table, and a compiled or captured step would be
    # rebuilt for each of hundreds of candidates.
    options = {"backend": "eager", **(sampler_options or {})}
    solver_order = order if len(SOLVERS[method].orders) > 1 else None
    build_plan(diffusion, method, steps, "linspace", order=solver_order)  # settings checked before any solve
    started = time.perf_counter()

    def solve(plan: StepPlan, batch_seed: int) -> torch.Tensor:
        sampler = Sampler(model, diffusion, plan=plan, **options)
        return sampler.sample(batch_size, image_size, channels, seed=batch_seed, noise="philox", progress=False,
                              clip=False).float()

    fit_seed, heldout_seed = seed, seed + batch_size  # philox per-sample seeds: the two batches never overlap
    teacher_plan = build_plan(diffusion, "dpmsolver++", teacher_steps, "logsnr")
    teacher = {s: solve(teacher_plan, s) for s in (fit_seed, heldout_seed)}

    def error(seq: Sequence[int], batch_seed: int = fit_seed) -> float:
        # The mean over samples of each one's RMS distance to its teacher: a few samples that land in
        # another mode would dominate a mean of squares and make the fit chase them.
        plan = build_plan(diffusion, method, timesteps=list(seq), order=solver_order)
        gap = solve(plan, batch_seed) - teacher[batch_seed]
        return float(gap.flatten(1).pow(2).mean(1).sqrt().mean())

    starts = {}
    for name in SPACINGS:
        try:
            seq = list(build_plan(diffusion, method, steps, name, order=solver_order).timesteps)
        except ValueError:  # a rule that cannot place this many steps
            continue
        starts[name] = (error(seq), seq)
    start = min(starts, key=lambda name: starts[name][0])
    start_error, seq = starts[start]
    start_seq, best, evaluations = list(seq), start_error, len(starts)
    for move in _MOVES:
        improved = True
        while improved:  # first-improvement sweeps until no single move helps at this size
            improved = False
            for i in range(1, steps):  # the first step stays where the start put it (T − 1 but for 'leading')
                upper = seq[i - 1] - 1
                lower = seq[i + 1] + 1 if i + 1 < steps else 0
                for delta in (move, -move):
                    candidate = list(seq)
                    candidate[i] += delta
                    if not lower <= candidate[i] <= upper:
                        continue
                    value = error(candidate)
                    evaluations += 1
                    if value < best:
                        best, seq, improved = value, candidate, True
                        break
        if progress:
            print(f"fit_timesteps: move {move}: error {best:.3e} after {evaluations} solves")
    return FittedTimesteps(
        timesteps=tuple(seq), method=method, order=solver_order or 1, num_train_steps=T,
        start=start, teacher_steps=teacher_steps, start_error=start_error, error=best,
        heldout_start_error=error(start_seq, heldout_seed), heldout_error=error(seq, heldout_seed),
        evaluations=evaluations, seconds=time.perf_counter() - started,
    )
