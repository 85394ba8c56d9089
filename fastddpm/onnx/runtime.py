"""Sampling in ONNX Runtime from a fastddpm .onnx export.

``OrtSampler(path)`` runs the library's solvers (any plan of ``fastddpm.solvers``: the same timesteps and
float32 coefficients as :class:`fastddpm.Sampler`) on an ε-model export, one ``run_with_iobinding`` per
step: the state, the previous x̂_0 and every step's timestep and coefficients live in ORT values on the
session's device, bound once and swapped between steps, so on the CUDA execution provider nothing but
each stochastic step's noise crosses to the device. On a whole-sampler export (a Loop) it is one
``session.run`` per call.

Noise comes from numpy's PCG64 generator (``seed`` an int or a ``numpy.random.Generator``): x_T first,
then one draw per step that adds noise, in step order — the same numbers for a step-wise and a Loop
export, so both give the same images. ``x_T=`` and ``noise=`` (steps, B, C, H, W) supply them instead
(e.g. the torch sampler's, to compare trajectories).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..reference.diffusion import GaussianDiffusion
from ..finite import check_finite_samples
from ..solvers import StepPlan, build_plan, explicit_timesteps, plan_fits, push_history
from .graphs import build_step_model, step_inputs
from .metadata import EPS_MODEL, OnnxExport, OnnxModelError, read_onnx

__all__ = ["OrtSampler", "default_providers"]

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def default_providers() -> list[str]:
    """The CUDA execution provider first when it can run here, else the CPU provider alone.

    onnxruntime-gpu lists the CUDA provider even on machines without a GPU, and a session asked for it
    there prints an error before it falls back; so it is asked for only when torch sees a CUDA device.
    """
    import onnxruntime as ort  # the "onnx" extra

    if CUDA in ort.get_available_providers() and _cuda_device_present():
        return [CUDA, CPU]
    return [CPU]


def _cuda_device_present() -> bool:
    try:
        return torch.cuda.is_available()
    except Exception:  # a broken driver: do not ask ORT for CUDA
        return False


class OrtSampler:
    """Sample from a fastddpm .onnx export with ONNX Runtime.

    ``method`` / ``steps`` / ``spacing`` / ``timesteps`` / ``eta`` / ``order`` (or a ready ``plan``) as for
    :class:`fastddpm.Sampler` (an ε-model export),
    or fixed by the file (a whole-sampler export; passing different ones is an error). ``providers`` are
    ONNX Runtime's (default :func:`default_providers`).
    """

    def __init__(
        self,
        path: str | os.PathLike | OnnxExport,
        *,
        method: str | None = None,
        steps: int | None = None,
        spacing: str | Sequence[int] | None = None,
        eta: float | None = None,
        order: int | None = None,
        timesteps: Sequence[int] | None = None,
        plan: StepPlan | None = None,
        providers: Sequence[str] | None = None,
        session_options: Any = None,
    ):
        import onnxruntime as ort  # the "onnx" extra

        self.export = export = path if isinstance(path, OnnxExport) else read_onnx(path)
        self.image_size, self.channels = export.image_size, export.channels
        if export.kind == EPS_MODEL:
            diffusion = GaussianDiffusion.from_config(export.diffusion)
            if plan is None:
                plan = build_plan(diffusion, method or "ddpm", steps, "leading" if spacing is None else spacing,
                                  timesteps=timesteps, eta=eta, order=order)
            elif any(v is not None for v in (method, steps, spacing, eta, order, timesteps)):
                raise ValueError("plan= fixes the solver: pass it without method/steps/spacing/timesteps/eta/order")
            else:
                plan_fits(plan, diffusion)
            self.plan: StepPlan | None = plan
            graph = build_step_model(export.model, plan)
            self.method, self.num_steps = plan.method, plan.steps
        else:
            self.plan = None
            fixed = export.sampler
            if plan is not None:
                raise ValueError(f"{export.path}: a whole-sampler export fixes its sampler; plan= applies to an ε-model export")
            if spacing is not None and not isinstance(spacing, str):  # timesteps passed as spacing= (the alias)
                if timesteps is not None:
                    raise ValueError("pass spacing= (a rule's name) or timesteps= (the steps themselves), not both")
                spacing, timesteps = None, spacing
            if timesteps is not None:  # checked like the torch sampler's, compared with the file's list
                timesteps = explicit_timesteps(export.diffusion.timesteps, None, timesteps)
            asked = {"method": method, "steps": steps, "spacing": spacing, "timesteps": timesteps, "eta": eta,
                     "order": order}
            wrong = [f"{k}={v!r} (the file's is {fixed[k]!r})" for k, v in asked.items() if v is not None and v != fixed[k]]
            if wrong:
                raise ValueError(f"{export.path}: a whole-sampler export fixes its sampler; got " + ", ".join(wrong))
            graph = export.model
            self.method, self.num_steps = fixed["method"], int(fixed["steps"])
            self._stochastic = any(i.name == "noise" for i in graph.graph.input)
        self.providers = list(providers) if providers is not None else default_providers()
        try:
            self.session = ort.InferenceSession(graph.SerializeToString(), sess_options=session_options,
                                                providers=self.providers)
        except Exception as exc:  # ORT raises its own exception types; name the file
            raise OnnxModelError(f"{export.path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]})") from None
        self.device = "cuda" if CUDA in self.session.get_providers() else "cpu"
        # The GPU the CUDA provider runs on (provider option device_id): the loop's buffers live there.
        self.device_id = int(self.session.get_provider_options().get(CUDA, {}).get("device_id", 0)) if self.device == "cuda" else 0

    def sample(
        self,
        batch_size: int,
        image_size: int | Sequence[int] | None = None,
        *,
        seed: int | np.random.Generator | None = None,
        x_T: np.ndarray | None = None,
        noise: np.ndarray | None = None,
        progress: bool = True,
        clip: bool = True,
        check_finite: bool = True,
    ) -> np.ndarray:
        """``batch_size`` images (B, C, H, W) float32, clipped to [−1, 1] unless ``clip=False`` (a
        whole-sampler export always clips, and leaves NaN and ±inf as they are). ``image_size`` defaults to
        the export's. Raises ``NonFiniteSampleError`` (a ValueError) when samples hold NaN or inf, unless
        ``check_finite=False``."""
        if image_size is None:
            height, width = self.image_size
        else:
            height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        shape = (batch_size, self.channels, height, width)
        if batch_size < 1 or height < 1 or width < 1:
            raise ValueError(f"batch_size and image size must be positive, got shape {shape}")
        if (height, width) != self.image_size and not self.export.dynamic_size:
            raise ValueError(f"this export has a fixed image size {self.image_size}; got {height}x{width}")
        if height % self.export.size_divisor or width % self.export.size_divisor:
            raise ValueError(f"image size {height}x{width} is not divisible by {self.export.size_divisor} (this model's)")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        x_T = self._given(x_T, shape, "x_T") if x_T is not None else rng.standard_normal(shape, dtype=np.float32)
        if noise is not None:
            noise = self._given(noise, (self.num_steps, *shape), "noise")
        if self.plan is None:
            x = self._sample_loop(x_T, noise, rng, shape)  # clipped in the graph, where NaN and ±inf stay so
            if check_finite:
                check_finite_samples(x)
            return x
        x = self._sample_steps(x_T, noise, rng, shape, progress)
        if check_finite:
            check_finite_samples(x)  # before the clip, which would turn +inf into 1
        return np.clip(x, -1.0, 1.0, out=x) if clip else x

    @staticmethod
    def _given(array, shape, name) -> np.ndarray:
        array = np.asarray(array, dtype=np.float32)
        if array.shape != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)}, got {array.shape}")
        return np.ascontiguousarray(array)

    def _sample_loop(self, x_T, noise, rng, shape) -> np.ndarray:
        feeds = {"x_T": x_T}
        if self._stochastic:
            if noise is None:
                # The step-wise sampler's draws, in its order: one per step that adds noise (the Loop
                # multiplies the other slices by 0).
                noise = np.zeros((self.num_steps, *shape), dtype=np.float32)
                for k, noisy in enumerate(self.export.sampler["noisy"]):
                    if noisy:
                        noise[k] = rng.standard_normal(shape, dtype=np.float32)
            feeds["noise"] = noise
        return self.session.run(["sample"], feeds)[0]

    def _sample_steps(self, x_T, noise, rng, shape, progress) -> np.ndarray:
        import onnxruntime as ort  # the "onnx" extra

        plan, device, device_id = self.plan, self.device, self.device_id
        batch = shape[0]

        def on_device(array):
            # A copy: on the CPU provider an OrtValue wraps the numpy buffer, and the loop writes into
            # its state buffers (it would overwrite the caller's x_T).
            return ort.OrtValue.ortvalue_from_numpy(np.array(array, copy=True, order="C"), device, device_id)

        # Everything the loop reads is on the device before it starts; x ping-pongs between two buffers
        # (a step reads one and writes the other), and x̂_0 is written into the buffer the history drops.
        def empty():
            return ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, device, device_id)

        xs = [on_device(x_T), empty()]
        history = tuple(on_device(np.zeros(shape, np.float32)) for _ in range(plan.histories))
        x0_out = empty()
        ts = [on_device(np.full(batch, t, dtype=np.int64)) for t in plan.timesteps]
        coefs = [on_device(np.ascontiguousarray(column, dtype=np.float32)) for column in plan.coefs.T]
        # A plan that draws noise reads it at every step; where its NOISE weight is 0 any finite value does.
        z = on_device(np.zeros(shape, np.float32)) if plan.stochastic else None
        binding = self.session.io_binding()
        current = 0
        for k in tqdm(range(plan.steps), desc="sampling (onnxruntime)", disable=not progress, leave=False):
            if z is not None and plan.noisy[k]:
                z.update_inplace(noise[k] if noise is not None else rng.standard_normal(shape, dtype=np.float32))
            binding.bind_ortvalue_input("x", xs[current])
            binding.bind_ortvalue_input("t", ts[k])
            binding.bind_ortvalue_input("coef", coefs[k])
            for name, value in zip(step_inputs(plan), (z,) if z is not None else history):
                binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output("x_next", xs[1 - current])
            binding.bind_ortvalue_output("x0", x0_out)
            # Host-to-device copies (this step's noise) complete before the run reads them: ORT does not
            # order them with its own stream on its own.
            binding.synchronize_inputs()
            self.session.run_with_iobinding(binding)
            current = 1 - current
            history, x0_out = push_history(history, x0_out)  # the dropped buffer takes the next x̂_0
        # numpy() is a view of the OrtValue's memory, freed with it when this returns: copy.
        return np.array(xs[current].numpy(), copy=True)
