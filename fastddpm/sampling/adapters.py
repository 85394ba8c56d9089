"""Adapters: the models users already have, as the ε-models fastddpm's samplers take.

* :func:`adapt` wraps any denoiser into ``eps_model(x, t) -> ε``: a diffusers ``UNet2DModel`` (its output
  object's ``.sample``), a denoising-diffusion-pytorch ``Unet``, or any callable ``model(x, t)`` returning
  a tensor (or an object with ``.sample``, or a tuple whose first item is the prediction); and converts the
  prediction types those libraries train — ``"epsilon"``, ``"sample"`` (x̂_0; denoising-diffusion-pytorch's
  ``pred_x0``) and ``"v"`` (``v_prediction`` / ``pred_v``) — to ε with the diffusion's tables:

      x̂_0 → ε = (x_t − √ᾱ_t·x̂_0) / √(1−ᾱ_t)        v → ε = √ᾱ_t·v + √(1−ᾱ_t)·x_t

  (from x_t = √ᾱ·x_0 + √(1−ᾱ)·ε and v = √ᾱ·ε − √(1−ᾱ)·x_0). The tables sit on the model's device and
  are gathered by t: the conversion is graph-safe (no host sync).
* :func:`diffusion_from_diffusers` turns a diffusers ``DDPMScheduler`` (or its config dict) into a
  :class:`GaussianDiffusion` with the same betas, bit for bit, and returns its prediction type.
* :func:`from_denoising_diffusion_pytorch` takes that library's ``GaussianDiffusion`` and returns
  ``(eps_model, diffusion)``.

No adapted library is a dependency: each is only duck-typed, never imported here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..reference.diffusion import GaussianDiffusion

__all__ = ["PREDICTION_TYPES", "EpsModel", "adapt", "diffusion_from_diffusers", "from_denoising_diffusion_pytorch"]

# Every spelling the adapted libraries use, mapped to this library's three names.
PREDICTION_TYPES = {
    "epsilon": "epsilon", "eps": "epsilon", "pred_noise": "epsilon",
    "sample": "sample", "x0": "sample", "pred_x0": "sample",
    "v": "v", "v_prediction": "v", "pred_v": "v",
}


class EpsModel(nn.Module):
    """``model`` seen as an ε-model: calls it, unwraps its output, converts its prediction type to ε."""

    def __init__(self, model: Callable, prediction_type: str = "epsilon", diffusion: GaussianDiffusion | None = None,
                 *, call: Callable | None = None):
        super().__init__()
        kind = PREDICTION_TYPES.get(prediction_type)
        if kind is None:
            raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of {sorted(PREDICTION_TYPES)}")
        if kind != "epsilon" and diffusion is None:
            raise ValueError(f"prediction type {prediction_type!r} needs the diffusion (its ᾱ_t) to convert to ε")
        self.model = model
        self.prediction_type = kind
        self._call = call or _call_plain
        if kind != "epsilon":
            abar = diffusion.alphas_cumprod.detach().to("cpu", torch.float64)
            self.register_buffer("sqrt_abar", abar.sqrt().float(), persistent=False)
            self.register_buffer("sqrt_one_minus_abar", (1 - abar).sqrt().float(), persistent=False)
        # Buffers follow the wrapped model to its device.
        device = _device_of(model)
        if device is not None:
            self.to(device)

    @property
    def config(self):  # e.g. a fastddpm Unet's config (channels), when the wrapped model has one
        return getattr(self.model, "config", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = _unwrap(self._call(self.model, x, t))
        if self.prediction_type == "epsilon":
            return out
        # In float32 whatever the model ran in: x̂_0 → ε divides by √(1−ᾱ) (0.01 at t = 0), and the sample
        # state is float32 (a bf16 model output is rounded once, not the state too).
        shape = (t.shape[0],) + (1,) * (x.ndim - 1)
        a = self.sqrt_abar[t].reshape(shape)
        s = self.sqrt_one_minus_abar[t].reshape(shape)
        out, xf = out.float(), x.float()
        if self.prediction_type == "sample":
            return (xf - a * out) / s
        return a * out + s * xf


def _call_plain(model, x, t):
    return model(x, t)


def _unwrap(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    sample = getattr(out, "sample", None)  # diffusers' UNet2DOutput
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model returned {type(out).__name__}; expected a tensor, an object with .sample, or a tuple")


def _device_of(model) -> torch.device | None:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return None


def adapt(model: Callable, prediction_type: str | None = None, diffusion: GaussianDiffusion | None = None) -> EpsModel:
    """``model`` as an ε-model for :class:`fastddpm.Sampler`, :func:`fastddpm.export_onnx` and the rest.

    ``prediction_type`` defaults to what the model says about itself where it can (a diffusers model
    does not: its scheduler does — see :func:`diffusion_from_diffusers`), else "epsilon".
    """
    if isinstance(model, EpsModel):
        return model
    return EpsModel(model, prediction_type or "epsilon", diffusion)


# -- diffusers ------------------------------------------------------------------------------------
def diffusion_from_diffusers(scheduler: Any) -> tuple[GaussianDiffusion, str]:
    """A diffusers ``DDPMScheduler`` (or any scheduler config with its fields, or the config dict) as
    ``(GaussianDiffusion with the same betas, prediction type)``."""
    config = getattr(scheduler, "config", scheduler)
    if not isinstance(config, Mapping):
        raise TypeError(f"expected a diffusers scheduler or its config dict, got {type(scheduler).__name__}")
    get = config.get
    T = int(get("num_train_timesteps", 1000))
    start, end = float(get("beta_start", 0.0001)), float(get("beta_end", 0.02))
    schedule = get("beta_schedule", "linear")
    trained = get("trained_betas")
    if get("rescale_betas_zero_snr", False):
        raise ValueError("rescale_betas_zero_snr (ᾱ_T = 0) is not supported: ε-prediction is undefined at zero SNR")
    if trained is not None:
        betas = torch.tensor(trained, dtype=torch.float32)
    elif schedule == "linear":
        betas = torch.linspace(start, end, T, dtype=torch.float32)
    elif schedule == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, T, dtype=torch.float32) ** 2
    elif schedule == "squaredcos_cap_v2":  # GLIDE's cosine: ᾱ(s) = cos²((s + 0.008)/1.008 · π/2), β ≤ 0.999
        def abar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=torch.float32)
    elif schedule == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6, 6, T)) * (end - start) + start
    else:
        raise ValueError(f"unsupported diffusers beta_schedule {schedule!r}")
    prediction = get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"unsupported diffusers prediction_type {prediction!r}")
    return GaussianDiffusion(beta_schedule=betas), PREDICTION_TYPES[prediction]


def load_diffusers(folder: str, device: torch.device | str = "cpu") -> tuple[EpsModel, GaussianDiffusion, int | None, int]:
    """A diffusers DDPM pipeline folder (``unet/`` and ``scheduler/``, as ``save_pretrained`` writes it),
    read offline: ``(eps_model, diffusion, image_size, channels)``."""
    from diffusers import DDPMScheduler, UNet2DModel  # the "compare" extra: never a dependency

    root = Path(folder)
    unet_dir = root / "unet" if (root / "unet").is_dir() else root
    scheduler_dir = root / "scheduler" if (root / "scheduler").is_dir() else root
    if not (unet_dir / "config.json").is_file() or not (scheduler_dir / "scheduler_config.json").is_file():
        raise FileNotFoundError(f"{root}: expected a diffusers pipeline folder with unet/config.json and "
                                "scheduler/scheduler_config.json")
    unet = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True).to(device).eval()
    scheduler = DDPMScheduler.from_pretrained(str(scheduler_dir), local_files_only=True)
    diffusion, prediction = diffusion_from_diffusers(scheduler)
    config = unet.config
    if getattr(config, "num_class_embeds", None) or getattr(config, "class_embed_type", None):
        raise ValueError(f"{unet_dir}: a class-conditional UNet2DModel; fastddpm samples unconditional models")
    if scheduler.config.get("clip_sample", False) and scheduler.config.get("clip_sample_range", 1.0) != 1.0:
        raise ValueError(f"{scheduler_dir}: clip_sample_range {scheduler.config['clip_sample_range']}; fastddpm's "
                         "samplers work in [−1, 1]")
    channels = int(config.in_channels)
    call = None
    if int(config.out_channels) == 2 * channels:  # learned variance: ε and the variance, stacked
        if scheduler.config.get("variance_type") not in ("learned", "learned_range"):
            raise ValueError(f"{unet_dir}: {config.out_channels} output channels for {channels} input channels")
        call = _first_half
    elif int(config.out_channels) != channels:
        raise ValueError(f"{unet_dir}: {config.out_channels} output channels for {channels} input channels")
    size = config.sample_size  # None: the caller must name a size
    size = size if size is None or isinstance(size, int) else int(size[0])
    return EpsModel(unet, prediction, diffusion, call=call), diffusion, size, channels


def _first_half(model, x, t):
    """A learned-variance model's prediction: the first C of its 2C output channels (the variance, the
    second half, is not used: fastddpm's samplers use the fixed posterior variance)."""
    out = _unwrap(model(x, t))
    return out[:, : out.shape[1] // 2]


# -- denoising-diffusion-pytorch ----------------------------------------------------------------------
def from_denoising_diffusion_pytorch(gd: Any) -> tuple[EpsModel, GaussianDiffusion]:
    """That library's ``GaussianDiffusion`` (which holds its ``Unet`` as ``.model``, the objective
    ``pred_noise`` / ``pred_x0`` / ``pred_v`` as ``.objective`` and its betas as a buffer) as
    ``(eps_model, diffusion)``. Its samples live in [−1, 1] as ours do (it normalises data itself)."""
    for name in ("model", "objective", "betas"):
        if not hasattr(gd, name):
            raise TypeError(f"expected denoising_diffusion_pytorch.GaussianDiffusion (with .{name}), got {type(gd).__name__}")
    if getattr(gd.model, "self_condition", False):
        raise ValueError("self-conditioned models (self_condition=True) need their previous x̂_0: not supported")
    diffusion = GaussianDiffusion(beta_schedule=gd.betas.detach().to("cpu", torch.float32))
    return EpsModel(gd.model, gd.objective, diffusion), diffusion
