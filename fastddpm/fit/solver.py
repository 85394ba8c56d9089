"""A solver fitted to a model: the timesteps and the per-step coefficients of a few-step plan.

The named solvers (DPM-Solver++, UniPC) take their coefficients from a Taylor expansion that assumes an
exact ε̂ and small steps; at 5 evaluations neither holds. A fit asks the model instead, with no data:

1. the start — for each solver asked for (UniPC by default, or also "dpmsolver++") the timesteps are
   fitted by pattern search (:func:`fastddpm.fit_timesteps`), and the solver whose few-step solve lands closest to the teacher (a
   many-step DPM-Solver++ solve of the same model from the same x_T) is kept. With ``spacing=`` the start
   is that named spacing's plan instead (the solver whose plan lands closest), its timesteps kept and only
   the coefficients fitted. Measured on the bundled digits model, a fit from the spacing that scores best
   there (linspace) still moved its samples to the teacher's and lost that score (docs/sampling.md);
2. the coefficients — the plan's free rows (X: the state's weight, X0: this step's x̂_0, HISTORY_j: the
   earlier x̂_0) are moved by Adam through the unrolled few-step solve, with the model's weights frozen,
   to lower the same distance (as S4S does, Frankel et al. 2025, arXiv 2502.17423). x̂_0's own rows
   (X0_FROM_*) stay: they define x̂_0 from ε̂.

A held-out batch of x_T, never used to fit, picks the iteration to keep and reports the distance before
and after; the fit never returns a plan that is worse than its start on it. The distance is the mean
over samples of each one's RMS distance to its teacher (a few samples that land in another mode would
dominate a mean of squares).

    fit = fit_solver(model, diffusion, steps=5, image_size=16, channels=1)
    Sampler(model, diffusion, **fit.sampler_kwargs(model, diffusion))
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import ConfigError, FrozenConfig
from ..io.checkpoint import weights_sha256
from ..kernels import randn_philox
from ..kernels.multistep_update.naive import multistep_update
from ..kernels.update_rows import HISTORY_ROWS, MAX_HISTORIES, Row
from ..reference.diffusion import DiffusionConfig, GaussianDiffusion
from ..sampling.adapters import EpsModel
from ..sampling.sampler import Sampler
from ..solvers import SOLVERS, SPACINGS, StepPlan, build_plan
from .timesteps import fit_timesteps

__all__ = ["FittedSolver", "fit_solver", "model_sha256", "FIT_SOLVERS", "DEFAULT_FIT_SOLVERS", "DEFAULT_FIT_BATCH"]

FIT_SOLVERS = ("dpmsolver++", "unipc")  # multistep solvers: their rows carry x̂_0 histories to fit
# What a fit starts from by default, and on how many x_T. Every fit measured so far kept UniPC (the
# exact-ε harness at 4-10 evaluations; the bundled digits model at 5), and on the digits model a fit
# from UniPC alone on 64 x_T matched the shipped fit (both solvers, 128 x_T) on the digits proxy
# (confident 0.441 vs 0.443, Fréchet 0.708 vs 0.707, 512 samples) in 584 s instead of 1330 s.
DEFAULT_FIT_SOLVERS = ("unipc",)
DEFAULT_FIT_BATCH = 64
_FREE_ROWS = (Row.X, Row.X0) + HISTORY_ROWS  # the weights a fit moves (HISTORY_j up to the plan's count)
_HEX64 = re.compile(r"[0-9a-f]{64}")


def model_sha256(model: Any) -> str:
    """sha256 of a model's weights (names, dtypes, shapes and bytes of its state_dict), "" for a model
    without one (a plain callable): what a fit records so it is not applied to another model."""
    if isinstance(model, EpsModel):
        model = model.model
    state = getattr(model, "state_dict", None)
    return weights_sha256(state()) if callable(state) else ""


@dataclasses.dataclass(frozen=True)
class FittedSolver(FrozenConfig, json_indent=1, json_sort_keys=False):
    """A fitted few-step plan, with what it was fitted for and how well it did (see the module docstring).

    ``coefs`` maps each row name of ``Row`` to its S per-step coefficients. ``sampler_kwargs(model,
    diffusion)`` gives ``{"plan": ...}`` for :class:`fastddpm.Sampler`, :class:`fastddpm.OrtSampler` and
    :func:`fastddpm.export_onnx_sampler`, after checking the fit was made for that model and diffusion.
    """

    method: str  # the solver the fit started from
    order: int
    start: str  # the named spacing the timestep search started from, or whose timesteps were kept (spacing=)
    timesteps: tuple[int, ...]
    histories: int
    coefs: dict
    diffusion: DiffusionConfig
    model_sha256: str
    teacher_steps: int
    start_error: float  # the named start's distance to the teacher on the fit batch
    error: float
    heldout_start_error: float
    heldout_error: float
    iterations: int
    seconds: float

    def __post_init__(self):
        def integer(name, value, low, high=None):
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
                raise ValueError(f"{name} must be an integer in [{low}, {high if high is not None else '∞'}], got {value!r}")
            return value

        if self.method not in FIT_SOLVERS:
            raise ValueError(f"method must be one of {FIT_SOLVERS}, got {self.method!r}")
        if integer("order", self.order, 1) not in SOLVERS[self.method].orders:
            raise ValueError(f"order {self.order} does not go with method {self.method!r}")
        if not isinstance(self.diffusion, DiffusionConfig):
            raise ValueError(f"diffusion must be a DiffusionConfig, got {type(self.diffusion).__name__}")
        T = self.diffusion.timesteps
        if not isinstance(self.timesteps, (tuple, list)) or len(self.timesteps) < 1:
            raise ValueError(f"timesteps must be a non-empty list of integers, got {self.timesteps!r}")
        seq = tuple(integer("a timestep", t, 0, T - 1) for t in self.timesteps)
        if any(a <= b for a, b in zip(seq, seq[1:])):
            raise ValueError(f"timesteps must be distinct and descending, got {list(seq)}")
        object.__setattr__(self, "timesteps", seq)
        if integer("histories", self.histories, 0, MAX_HISTORIES) != SOLVERS[self.method].histories(self.order):
            raise ValueError(f"histories {self.histories} does not go with {self.method} order {self.order}")
        if self.start not in SPACINGS:
            raise ValueError(f"start must be one of {SPACINGS}, got {self.start!r}")
        if not isinstance(self.coefs, dict) or set(self.coefs) != {row.name for row in Row}:
            got = sorted(self.coefs) if isinstance(self.coefs, dict) else type(self.coefs).__name__
            raise ValueError(f"coefs must map every row name {[row.name for row in Row]} to its values, got {got}")
        rows = {}
        for name, values in self.coefs.items():
            if not isinstance(values, (tuple, list)) or len(values) != len(seq) or any(
                    isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
                raise ValueError(f"coefs[{name!r}] must be {len(seq)} finite numbers (one per timestep), got {values!r}")
            rows[name] = tuple(float(v) for v in values)
        object.__setattr__(self, "coefs", rows)
        if not isinstance(self.model_sha256, str) or not (self.model_sha256 == "" or _HEX64.fullmatch(self.model_sha256)):
            raise ValueError(f"model_sha256 must be 64 hex digits (or empty for a model without weights), got {self.model_sha256!r}")
        integer("teacher_steps", self.teacher_steps, 1)
        integer("iterations", self.iterations, 0)
        for name in ("start_error", "error", "heldout_start_error", "heldout_error", "seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.plan()  # the rows must form a valid plan (histories, no noise)

    @classmethod
    def from_dict(cls, d: Any) -> "FittedSolver":
        try:
            return super().from_dict(d)
        except ConfigError as exc:  # another kind of file (e.g. a timestep fit): say so before the details
            raise ConfigError(f"not a fastddpm solver fit ({exc})") from None

    def plan(self) -> StepPlan:
        coefs = np.array([self.coefs[row.name] for row in Row], dtype=np.float64)
        return StepPlan(method=self.method, timesteps=self.timesteps, coefs=coefs, histories=self.histories,
                        order=self.order, spacing=None)

    def check(self, model: Any = None, diffusion: GaussianDiffusion | None = None) -> None:
        """Raise ValueError if ``model`` (its weights) or ``diffusion`` is not what this fit was made for."""
        if diffusion is not None and diffusion.config != self.diffusion:
            raise ValueError(f"this solver was fitted for the diffusion {self.diffusion.to_dict()}, not "
                             f"{diffusion.config.to_dict()}")
        if model is not None and self.model_sha256 and model_sha256(model) != self.model_sha256:
            raise ValueError("this solver was fitted for another model (its weights' sha256 differs)")

    def sampler_kwargs(self, model: Any = None, diffusion: GaussianDiffusion | None = None) -> dict[str, Any]:
        """``{"plan": ...}`` for a runner; pass the model and diffusion to have them checked first."""
        self.check(model, diffusion)
        return {"plan": self.plan()}


def _solve(model, x_T: torch.Tensor, timesteps: Sequence[int], coefs: torch.Tensor, histories: int) -> torch.Tensor:
    """The few-step solve of a plan's rows, differentiable in ``coefs`` (and x_T): the kernels' torch twin
    step by step. ``coefs`` float32 (NUM_ROWS, S) on x_T's device."""
    x, batch = x_T, x_T.shape[0]
    history = [torch.zeros_like(x) for _ in range(histories)]  # a multistep plan: at least one
    for k, t in enumerate(timesteps):
        eps = model(x, torch.full((batch,), t, device=x.device, dtype=torch.long))
        index = torch.full((batch,), k, device=x.device, dtype=torch.long)
        x, x0 = multistep_update(x, eps, index, coefs, history)
        history = [x0] + history[:-1]
    return x


def _distance(x: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (x - teacher).flatten(1).pow(2).mean(1).sqrt().mean()


def fit_solver(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    diffusion: GaussianDiffusion,
    steps: int,
    *,
    image_size: int | Sequence[int],
    channels: int,
    methods: Sequence[str] = DEFAULT_FIT_SOLVERS,
    order: int = 2,
    fit_batch: int = DEFAULT_FIT_BATCH,
    teacher_steps: int = 100,
    iterations: int = 150,
    learning_rate: float = 2e-3,
    seed: int = 0,
    spacing: str | None = None,
    prediction_type: str = "epsilon",
    device: torch.device | str | None = None,
    progress: bool = True,
) -> FittedSolver:
    """Fit the timesteps and the coefficients of a ``steps``-evaluation plan to ``model`` (see the module
    docstring). ``methods``: the solvers to start from (each gets a timestep fit, or with ``spacing`` the
    named plan; the closest is kept); ``order`` for each. The fit batch and the held-out batch are ``fit_batch`` x_T each (per-sample philox
    seeds from ``seed`` and ``seed + fit_batch``). ``spacing``: start from this named spacing and keep its
    timesteps (None: fit the timesteps first)."""
    methods = tuple(methods)
    if not methods or any(m not in FIT_SOLVERS for m in methods):
        raise ValueError(f"methods must be some of {FIT_SOLVERS}, got {methods}")
    T = diffusion.num_timesteps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps < teacher_steps <= T:
        raise ValueError(f"need 2 <= steps < teacher_steps <= {T}, got steps={steps}, teacher_steps={teacher_steps}")
    if spacing is not None and spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS} or None (fit the timesteps), got {spacing!r}")
    for m in methods:  # settings checked before any solve
        build_plan(diffusion, m, steps, spacing or "linspace", order=order)
    if fit_batch < 2 or iterations < 0 or not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"fit_batch must be >= 2, iterations >= 0, learning_rate > 0; got {fit_batch}, "
                         f"{iterations}, {learning_rate}")
    started = time.perf_counter()
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    options = {"prediction_type": prediction_type, **({"device": device} if device is not None else {})}

    # 1. The start: the best of the solvers, each on its own fitted timesteps (or on the named spacing).
    if spacing is None:
        fits = [fit_timesteps(model, diffusion, steps, image_size=(height, width), channels=channels, method=m,
                              order=order, batch_size=fit_batch, teacher_steps=teacher_steps, seed=seed,
                              sampler_options={**options, "backend": "eager"}, progress=progress)
                for m in methods]
        best = min(fits, key=lambda f: f.error)
        if best.heldout_error <= best.heldout_start_error:
            start_plan = build_plan(diffusion, best.method, timesteps=list(best.timesteps), order=order)
        else:  # the timestep fit did not carry over to held-out x_T: start from the named spacing
            start_plan = build_plan(diffusion, best.method, steps, best.start, order=order)
        start_name, start_errors = best.start, (best.start_error, best.heldout_start_error)
    else:
        candidates = [build_plan(diffusion, m, steps, spacing, order=order) for m in methods]
        start_name, start_errors = spacing, None  # measured below, once the teacher is there

    # 2. The coefficients, by gradient through the unrolled solve (the model's weights frozen).
    teacher_sampler = Sampler(model, diffusion, plan=build_plan(diffusion, "dpmsolver++", teacher_steps, "logsnr"),
                              **options)
    eps_model, device = teacher_sampler.model, teacher_sampler.device  # the same ε-model the runners use
    fit_seed, heldout_seed = seed, seed + fit_batch  # the batches fit_timesteps used: never overlapping
    x_T, teacher = {}, {}
    for s in (fit_seed, heldout_seed):
        seeds = torch.arange(fit_batch, dtype=torch.int64, device=device) + s
        x_T[s] = randn_philox(seeds, T, (channels, height, width))  # the x_T of sample(seed=s, noise="philox")
        teacher[s] = teacher_sampler.sample(fit_batch, (height, width), channels, seed=s, noise="philox",
                                            progress=False, clip=False).float()

    def solve_distance(timesteps, coefs: torch.Tensor, histories: int, s: int) -> float:
        with torch.no_grad():
            return float(_distance(_solve(eps_model, x_T[s], timesteps, coefs.float(), histories), teacher[s]))

    if spacing is not None:  # the solver whose named plan lands closest to the teacher on the fit batch
        start_plan = candidates[0] if len(candidates) == 1 else min(candidates, key=lambda plan: solve_distance(
            plan.timesteps, torch.tensor(plan.coefs, device=device), plan.histories, fit_seed))
    start = torch.tensor(start_plan.coefs, dtype=torch.float64, device=device)
    free = torch.zeros_like(start, dtype=torch.bool)
    free[[int(r) for r in _FREE_ROWS[: 2 + start_plan.histories]]] = True
    delta = torch.zeros_like(start, requires_grad=True)

    def coefs_of(d: torch.Tensor) -> torch.Tensor:
        return (start + d * free).float()

    def distance(d: torch.Tensor, s: int) -> float:
        return solve_distance(start_plan.timesteps, coefs_of(d), start_plan.histories, s)

    # Frozen weights: no gradients computed for them, and none left behind in the caller's model.
    parameters = list(eps_model.parameters())
    requires = [p.requires_grad for p in parameters]
    for p in parameters:
        p.requires_grad_(False)
    try:
        start_error, heldout_start = distance(delta.detach(), fit_seed), distance(delta.detach(), heldout_seed)
        if start_errors is None:
            start_errors = (start_error, heldout_start)
        best_delta, best_heldout, error = delta.detach().clone(), heldout_start, start_error
        optimizer = torch.optim.Adam([delta], lr=learning_rate)
        bar = tqdm(range(iterations), desc="fit-solver", disable=not progress, leave=False)
        for i in bar:
            optimizer.zero_grad()
            out = _solve(eps_model, x_T[fit_seed], start_plan.timesteps, coefs_of(delta), start_plan.histories)
            loss = _distance(out, teacher[fit_seed])
            loss.backward()
            optimizer.step()
            loss = float(loss.detach())
            if (i + 1) % 10 == 0 or i + 1 == iterations:
                heldout = distance(delta.detach(), heldout_seed)
                if heldout < best_heldout:
                    best_delta, best_heldout, error = delta.detach().clone(), heldout, loss
                bar.set_postfix(fit=f"{loss:.4f}", heldout=f"{heldout:.4f}", best=f"{best_heldout:.4f}")
    finally:
        for p, flag in zip(parameters, requires):
            p.requires_grad_(flag)
    if best_heldout < heldout_start:
        error = distance(best_delta, fit_seed)
    coefs = (start + best_delta * free).cpu().numpy()  # float64: the start's rows plus the fitted moves
    return FittedSolver(
        method=start_plan.method, order=order, start=start_name, timesteps=start_plan.timesteps,
        histories=start_plan.histories, coefs={row.name: tuple(coefs[row].tolist()) for row in Row},
        diffusion=diffusion.config, model_sha256=model_sha256(model), teacher_steps=teacher_steps,
        start_error=start_errors[0], error=error, heldout_start_error=start_errors[1],
        heldout_error=best_heldout, iterations=iterations, seconds=time.perf_counter() - started,
    )
