"""The fast sampler: a graph-safe ancestral loop with eager, compiled and CUDA-graph backends.

Graph-safe means: the schedule tables live on the model's device; the loop never calls ``.item()``,
``.cpu()`` or branches in Python on a tensor value (t = 0 is a mask inside the fused update); the
per-step timestep tensors are views into one buffer allocated per call; the trajectory is kept only
when asked, on the device, and copied to the host once at the end.

``noise="torch"`` draws the reference's random numbers in the reference's order (one ``randn`` for x_T,
one per step for t = T−1 … 1), so in float32 the result equals ``GaussianDiffusion.p_sample_loop`` under
the same ``torch.manual_seed``. Each step's noise is drawn just before the model call rather than after
it, which is the same stream for any model that draws no random numbers itself (an ε-model in eval mode). ``noise="philox"`` keys every
sample's noise by its own seed (counter-based, in the update kernel), so sample i is the same image
whatever the batch size, its position, or the backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import operator
import time
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..compiler import CompileConfig, compile_step
from ..kernels import ddpm_step, linear_step, multistep_update, randn_philox, resolve_impl
from ..reference.diffusion import GaussianDiffusion, _model_device
from ..reference.unet import Unet
from ..solvers import METHODS, StepPlan, build_plan, plan_fits, push_history
from .adapters import EpsModel
from ..finite import NonFiniteSampleError, check_finite_samples

__all__ = ["Sampler", "SamplerStats", "BACKENDS", "METHODS", "NOISE_SOURCES", "NonFiniteSampleError"]

BACKENDS = ("auto", "eager", "compile", "cudagraph")
NOISE_SOURCES = ("torch", "philox")
_MODEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _on_sampler_device(method):
    """Run with the sampler's GPU current: Triton launches (the fused updates, the in-kernel noise) go to
    the current device, which under torchrun need not be the model's."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.device.type != "cuda":
            return method(self, *args, **kwargs)
        with torch.cuda.device(self.device):
            return method(self, *args, **kwargs)

    return wrapper


@dataclasses.dataclass
class SamplerStats:
    """Timings of the last ``sample`` call, with compilation / capture reported apart."""

    backend: str = ""
    steps: int = 0
    warmup_seconds: float = 0.0  # the first step (compile) or the graph capture; small when cached
    sample_seconds: float = 0.0  # the loop itself, after warm-up


class Sampler:
    """Drop-in fast sampler for an ε-prediction model called as ``model(x, t)``.

    ``Sampler(model, diffusion, method="ddpm", steps=None, backend="auto", dtype=torch.float32)``:
    ``method`` "ddpm" (ancestral; all T steps run the reference's update, fewer steps respace the chain),
    "ddim" (``eta`` ≥ 0, default 0: deterministic), "dpmsolver++" (multistep, ``order`` 2 or 3) or "unipc"
    (predictor-corrector, ``order`` 1–3; see ``fastddpm.solvers``). ``steps`` visited timesteps (default
    T), placed by ``spacing`` "leading" | "trailing" | "linspace" (diffusers' names) | "logsnr" (uniform in
    log-SNR) | "logsnr-sqrt", or given as ``timesteps`` (descending; e.g. ``fit_timesteps(...).timesteps``;
    ``spacing=[...]`` still works this release); every chain ends at x_0. ``plan`` runs a ready
    :class:`fastddpm.solvers.StepPlan` (a fitted solver, say) instead of building one from those settings.
    ``dtype`` is the precision the model runs in (bf16/fp16 through autocast); the sample state and the
    update stay float32. ``backend``: "eager", "compile" (torch.compile of one step; CPU and CUDA),
    "cudagraph" (CUDA only: the whole loop captured as one graph per (batch, shape)), or "auto" (cudagraph
    on CUDA, eager on CPU, where a compile of the reference's Fashion-MNIST U-Net costs ~110 s and pays off only after about
    a thousand steps). ``kernels`` is the dispatch of the fused update ("auto", "triton", "torch").
    ``model`` may be any denoiser (a diffusers ``UNet2DModel``, a denoising-diffusion-pytorch ``Unet``, a
    callable): its output is unwrapped and ``prediction_type`` ("epsilon", "sample"/x̂_0, "v" and their
    libraries' spellings) converted to ε (``fastddpm.sampling.adapters``).
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        diffusion: GaussianDiffusion,
        *,
        method: str = "ddpm",
        steps: int | None = None,
        eta: float | None = None,
        spacing: str | Sequence[int] = "leading",
        timesteps: Sequence[int] | None = None,
        order: int | None = None,
        plan: StepPlan | None = None,
        backend: str = "auto",
        dtype: torch.dtype = torch.float32,
        kernels: str = "auto",
        compile_config: CompileConfig | None = None,
        device: torch.device | str | None = None,
        prediction_type: str = "epsilon",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        if dtype not in _MODEL_DTYPES:
            raise ValueError(f"dtype must be one of {[str(d) for d in _MODEL_DTYPES]}, got {dtype}")
        if plan is None:
            plan = build_plan(diffusion, method, steps, spacing, timesteps=timesteps, eta=eta, order=order)
        else:
            given = {"method": method != "ddpm", "steps": steps is not None, "eta": eta is not None,
                     "spacing": not isinstance(spacing, str) or spacing != "leading",
                     "timesteps": timesteps is not None, "order": order is not None}
            if any(given.values()):
                raise ValueError("plan= fixes the solver: pass it alone, without "
                                 + ", ".join(name for name, passed in given.items() if passed))
            plan_fits(plan, diffusion)
        self.plan = plan
        self.device = torch.device(device) if device is not None else _model_device(model)
        if prediction_type != "epsilon" or not isinstance(model, (Unet, EpsModel)):
            # Any model: unwrap outputs (diffusers' .sample, tuples) and convert x̂_0 / v predictions to ε.
            model = model if isinstance(model, EpsModel) else EpsModel(model, prediction_type, diffusion)
        if isinstance(model, EpsModel):
            model.to(self.device)  # its ᾱ tables go where the sampler runs
        self.model = model
        if backend == "auto":
            backend = "cudagraph" if self.device.type == "cuda" else "eager"
        if backend == "cudagraph" and self.device.type != "cuda":
            raise RuntimeError(f"backend 'cudagraph' needs a CUDA device; the model is on {self.device}")
        self.backend = backend
        self.dtype = dtype
        # Resolved once, so the traced / captured step holds a constant choice.
        self.kernels = resolve_impl(kernels, torch.empty(0, device=self.device))
        self.compile_config = compile_config or CompileConfig()
        self.diffusion = diffusion
        self.method, self.order, self.eta = plan.method, plan.order, plan.eta
        self.timestep_sequence = list(plan.timesteps)
        self.num_steps = plan.steps
        # The full ancestral chain runs the reference's own update (fused, bit-exact); every other plan the
        # linear update (no history) or the multistep update (x̂_0 histories) with its float64-built rows.
        self.exact_ddpm = plan.exact_reference
        self.histories = plan.histories
        self.multistep = plan.histories > 0
        # Tables on the model's device, built once.
        self.table = diffusion.ddpm_step_table().to(self.device) if self.exact_ddpm else plan.table(self.device)
        self._noisy_steps = list(plan.noisy)
        self.stats = SamplerStats(backend=backend, steps=self.num_steps)
        self._compiled: dict[tuple, Callable] = {}
        self._graphs: dict[tuple, Any] = {}

    # -- one step ------------------------------------------------------------------------------------
    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _step(self, x, t, k, noise, seeds, history=()):
        """One step: ε̂ = model(x, t), then the fused update (k indexes the step's coefficients). A multistep
        plan reads the earlier x̂_0 in ``history`` (newest first) and the step returns (x_next, x̂_0)."""
        with self._autocast():
            eps = self.model(x, t)
        if self.multistep:
            return multistep_update(x, eps, k, self.table, history, impl=self.kernels)
        if self.exact_ddpm:
            return ddpm_step(x, eps, t, self.table, noise=noise, seeds=seeds, impl=self.kernels)
        return linear_step(x, eps, k, self.table, t, noise=noise, seeds=seeds, impl=self.kernels)

    def _step_fn(self, key: tuple) -> Callable:
        if self.backend != "compile":
            return self._step
        fn = self._compiled.get(key)
        if fn is None:
            fn = compile_step(self._step, self.compile_config)
            self._compiled[key] = fn
        return fn

    def torch_noise(self, shape: Sequence[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The numbers ``sample(..., seed=seed, noise="torch")`` draws, on the host: x_T (shape) and the
        per-step noise (steps, *shape), zero at steps that add none — e.g. to feed another runtime
        (``OrtSampler.sample(x_T=..., noise=...)``) and compare trajectories."""
        generator = torch.Generator(device=self.device).manual_seed(_check_seed(seed, "seed must be an integer"))
        x_T = torch.randn(tuple(shape), device=self.device, generator=generator)
        noise = torch.zeros((self.num_steps, *shape), device=self.device)
        for k, noisy in enumerate(self._noisy_steps):
            if noisy:  # the loop's draw order: one normal_ per noisy step
                noise[k].normal_(generator=generator)
        return x_T.cpu(), noise.cpu()

    # -- the loop ------------------------------------------------------------------------------------
    @torch.no_grad()
    @_on_sampler_device
    def sample(
        self,
        batch_size: int,
        image_size: int | Sequence[int],
        channels: int,
        *,
        seed: int | Sequence[int] | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: str = "torch",
        return_trajectory: bool = False,
        trajectory_stride: int = 1,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
        progress: bool = True,
        clip: bool = True,
        check_finite: bool = True,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Sample ``batch_size`` images (B, channels, H, W), clipped to [−1, 1] unless ``clip=False``.
        Raises :class:`~fastddpm.finite.NonFiniteSampleError` (a ValueError) when samples hold NaN
        or inf — checked once, after the loop — unless ``check_finite=False``.

        ``noise="torch"``: torch's generator (``generator``, or the global one seeded by ``seed`` when
        given), the reference's draws in the reference's order. ``noise="philox"``: per-sample seeds —
        ``seed`` an int s (sample i gets seed s + i) or one seed per sample; sample i then depends only on
        its seed. ``return_trajectory`` also returns every ``trajectory_stride``-th state
        (T//stride, B, C, H, W), kept on the device and copied once at the end. ``callback(i, t, x)`` runs
        after each step (it may sync; the loop itself does not); the cudagraph backend, which runs the
        whole loop as one graph, takes no callback and shows no per-step progress.
        """
        if noise not in NOISE_SOURCES:
            raise ValueError(f"unknown noise {noise!r}; expected one of {NOISE_SOURCES}")
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        shape = (batch_size, channels, height, width)
        if batch_size < 1 or channels < 1 or height < 1 or width < 1:
            raise ValueError(f"batch_size, channels and image size must be positive, got shape {shape}")
        if trajectory_stride < 1:
            raise ValueError(f"trajectory_stride must be >= 1, got {trajectory_stride}")
        device = self.device
        seeds = None
        torch_seed = None
        if noise == "philox":
            seeds = _per_sample_seeds(seed, batch_size, device)
            if generator is not None:
                raise ValueError("generator= applies to noise='torch'; philox noise is keyed by seed=")
        elif seed is not None:
            torch_seed = _check_seed(seed, "noise='torch' takes one integer seed (per-sample seeds need noise='philox')")
            if generator is not None:
                raise ValueError("pass seed= or generator=, not both")
        if self.backend == "cudagraph":
            if generator is not None:
                # A captured graph draws from the device's default generator; it cannot follow another one.
                raise ValueError("backend 'cudagraph' draws from the default CUDA generator; pass seed= instead of generator=")
            if callback is not None:
                raise ValueError("backend 'cudagraph' runs the whole loop as one graph: it cannot call a callback per step")
        elif torch_seed is not None:
            generator = torch.Generator(device=device).manual_seed(torch_seed)
        if torch_seed is not None and self.backend == "cudagraph":
            with torch.random.fork_rng(devices=[device]):
                torch.manual_seed(torch_seed)
                return self.sample(batch_size, image_size, channels, noise=noise,
                                   return_trajectory=return_trajectory, trajectory_stride=trajectory_stride,
                                   progress=progress, clip=clip, check_finite=check_finite)

        T = self.num_steps
        # Every step's timestep and step-index vectors, built once: step k uses the views [k].
        sequence = torch.tensor(self.timestep_sequence, dtype=torch.int64)
        timesteps = sequence[:, None].expand(T, batch_size).contiguous().to(device)
        indices = torch.arange(T, device=device)[:, None].expand(T, batch_size).contiguous()
        trajectory = None
        if return_trajectory:
            trajectory = torch.empty((len(range(0, T, trajectory_stride)), *shape), device=device)

        if noise == "philox":
            # x_T is keyed by the training step count, beyond every per-step key 0..T−1.
            x = randn_philox(seeds, self.diffusion.num_timesteps, shape[1:], impl=self.kernels)
        else:
            x = torch.randn(shape, device=device, generator=generator)

        key = (shape, self.dtype, noise)
        step = self._step_fn(key)
        _synchronize(device)
        start = time.perf_counter()
        self.stats = SamplerStats(backend=self.backend, steps=T)
        if self.backend == "cudagraph":
            graph_key = (*key, return_trajectory, trajectory_stride)  # the graph holds the trajectory copies
            x = self._run_cudagraph(graph_key, x, timesteps, indices, seeds, trajectory, trajectory_stride)
        else:
            x = self._run_loop(step, x, timesteps, indices, seeds, generator, trajectory, trajectory_stride,
                               callback, progress)
        _synchronize(device)
        self.stats.sample_seconds = time.perf_counter() - start - self.stats.warmup_seconds
        if check_finite:
            check_finite_samples(x)  # one reduction, before the clamp (which would turn +inf into 1)
        if clip:
            x = x.clamp(-1.0, 1.0)
        if return_trajectory:
            return x, trajectory.cpu()
        return x

    def _run_loop(self, step, x, timesteps, indices, seeds, generator, trajectory, stride, callback, progress):
        T = self.num_steps
        # The per-step noise buffer, allocated once (a multistep plan draws none: it carries x̂_0 instead).
        z = torch.zeros_like(x) if (seeds is None and not self.multistep) else None
        history = tuple(torch.zeros_like(x) for _ in range(self.histories))
        for k in tqdm(range(T), desc=f"sampling ({self.backend})", disable=not progress, leave=False):
            t = timesteps[k]
            if z is not None:
                # The reference draws one randn_like per noisy step (t = T−1 … 1; none at t = 0); normal_
                # in place draws the same numbers as randn. The model draws nothing, so the order matches.
                z.normal_(generator=generator) if self._noisy_steps[k] else z.zero_()
            timing_warmup = k == 0 and self.backend == "compile"
            warm = time.perf_counter() if timing_warmup else 0.0
            if self.multistep:
                x, x0 = step(x, t, indices[k], None, None, history)
                history, _ = push_history(history, x0)
            else:
                x = step(x, t, indices[k], z, seeds)
            if timing_warmup:
                _synchronize(x.device)
                self.stats.warmup_seconds = time.perf_counter() - warm  # compile, or a cache lookup
            if trajectory is not None and k % stride == 0:
                trajectory[k // stride].copy_(x)
            if callback is not None:
                callback(k, t, x)
        return x

    def _run_cudagraph(self, key, x, timesteps, indices, seeds, trajectory, stride):
        """Capture the whole loop once per (batch, shape, dtype, noise, trajectory) and replay it: one
        graph launch per call."""
        graph = self._graphs.get(key)
        if graph is None:
            warm = time.perf_counter()
            with torch.cuda.device(x.device):
                graph = _LoopGraph(self, x, timesteps, indices, seeds, trajectory is not None, stride)
            _synchronize(x.device)
            self._graphs[key] = graph
            self.stats.warmup_seconds = time.perf_counter() - warm
        with torch.cuda.device(x.device):
            return graph.replay(x, seeds, trajectory)


class _LoopGraph:
    """Static buffers and one CUDA graph holding all T steps (model + fused update + noise draws)."""

    def __init__(self, sampler: Sampler, x, timesteps, indices, seeds, keep_trajectory, stride):
        # Called under torch.cuda.device(x.device): streams and RNG state below are that device's.
        self.sampler = sampler
        self.x = x.clone()
        self.seeds = None if seeds is None else seeds.clone()
        self.timesteps = timesteps
        self.indices = indices
        T = sampler.num_steps
        self.trajectory = (
            torch.empty((len(range(0, T, stride)), *x.shape), device=x.device) if keep_trajectory else None
        )

        def loop(steps):
            state = self.x
            history = tuple(torch.zeros_like(state) for _ in range(sampler.histories))
            for k in steps:
                t = self.timesteps[k]
                if sampler.multistep:  # the multistep solver carries x̂_0 instead of drawing noise
                    state, x0 = sampler._step(state, t, self.indices[k], None, None, history)
                    history, _ = push_history(history, x0)
                else:
                    z = None
                    if self.seeds is None:
                        z = torch.randn_like(state) if sampler._noisy_steps[k] else torch.zeros_like(state)
                    state = sampler._step(state, t, self.indices[k], z, self.seeds)
                if self.trajectory is not None and k % stride == 0:
                    self.trajectory[k // stride].copy_(state)
            return state

        # Warm up on a side stream (cuBLAS/cuDNN workspaces, Triton's compiles), then capture. The warm-up
        # runs every kind of step the loop has, not all T: the first four (noisy steps; even and odd k, since
        # the per-step views timesteps[k] / indices[k] alternate in 16-byte alignment when the batch is odd and
        # Triton specialises on it) and the last (noiseless). On an H200 the first call of a 1000-step chain
        # took 21.2 s with the whole loop warmed up (eager 8.5 s, that run) and 15.0 s with this (eager 7.5 s).
        warm_steps = sorted(set(range(min(T, 4))) | {T - 1})
        device = x.device
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        saved = self.x.clone()
        rng = torch.cuda.get_rng_state(device)
        with torch.cuda.stream(stream):
            loop(warm_steps)
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.set_rng_state(rng, device)
        self.x.copy_(saved)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = loop(range(T))

    def replay(self, x, seeds, trajectory):
        self.x.copy_(x)
        if seeds is not None:
            self.seeds.copy_(seeds)
        self.graph.replay()
        if trajectory is not None:
            trajectory.copy_(self.trajectory)
        return self.out.clone()


_MAX_SEED = 2**63 - 1


def _check_seed(seed, message: str) -> int:
    try:
        value = operator.index(seed)  # int, numpy integers; not floats or sequences
    except TypeError:
        raise ValueError(message) from None
    if not 0 <= value <= _MAX_SEED:
        raise ValueError(f"seed must lie in [0, 2**63 - 1], got {value}")
    return value


def _per_sample_seeds(seed, batch_size: int, device: torch.device) -> torch.Tensor:
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())  # drawn once, outside the loop
    if not isinstance(seed, (Sequence, torch.Tensor)) or isinstance(seed, str):
        first = _check_seed(seed, "seed must be an integer or one integer per sample")
        if first + batch_size - 1 > _MAX_SEED:
            raise ValueError(f"seed {first} + {batch_size - 1} (one seed per sample) exceeds 2**63 - 1")
        return torch.arange(batch_size, dtype=torch.int64, device=device) + first
    seeds = torch.as_tensor(seed)
    if seeds.dtype.is_floating_point or seeds.dtype == torch.bool or seeds.shape != (batch_size,):
        raise ValueError(f"per-sample seeds must be {batch_size} integers, got {seeds.dtype} {tuple(seeds.shape)}")
    if bool((seeds < 0).any()):
        raise ValueError("per-sample seeds must be >= 0")
    return seeds.to(device=device, dtype=torch.int64)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
