"""The reference diffusion core (Ho et al. 2020): annotated-diffusion's tables, arithmetic and RNG call order.

Under the same ``torch.manual_seed`` every method here draws the same random numbers, in the same order,
as annotated-diffusion's module-level functions (see ``shared/SPEC.md``), and computes with the same
float32 operations, so results match that code bit for bit. The fast samplers are measured against this
class.

Naming: ``T`` is the number of training timesteps. The schedule functions' ``timesteps`` argument,
``GaussianDiffusion(timesteps=...)`` and ``DiffusionConfig.timesteps`` all mean T (public names kept for
compatibility); ``num_train_timesteps`` reads it under its own name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import FrozenConfig

__all__ = [
    "GaussianDiffusion",
    "DiffusionConfig",
    "linear_beta_schedule",
    "cosine_beta_schedule",
    "quadratic_beta_schedule",
    "sigmoid_beta_schedule",
    "BETA_SCHEDULES",
    "LOSS_TYPES",
]

BETA_START = 0.0001
BETA_END = 0.02


def linear_beta_schedule(timesteps: int) -> torch.Tensor:
    """β_t evenly spaced from 1e-4 to 0.02 (Ho et al.); with T=200, ᾱ_T ≈ 0.13."""
    return torch.linspace(BETA_START, BETA_END, timesteps)


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal: ᾱ(x) = cos²(((x/T)+s)/(1+s)·π/2) normalised by ᾱ(0), β clipped to [1e-4, 0.9999]."""
    x = torch.linspace(0, timesteps, timesteps + 1)
    alphas_cumprod = torch.cos(((x / timesteps) + s) / (1 + s) * torch.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return torch.clip(betas, 0.0001, 0.9999)


def quadratic_beta_schedule(timesteps: int) -> torch.Tensor:
    """√β_t evenly spaced from √1e-4 to √0.02."""
    return torch.linspace(BETA_START**0.5, BETA_END**0.5, timesteps) ** 2


def sigmoid_beta_schedule(timesteps: int) -> torch.Tensor:
    """β_t = sigmoid(linspace(−6, 6, T))·(0.02 − 1e-4) + 1e-4."""
    return torch.sigmoid(torch.linspace(-6, 6, timesteps)) * (BETA_END - BETA_START) + BETA_START


BETA_SCHEDULES: dict[str, Callable[[int], torch.Tensor]] = {
    "linear": linear_beta_schedule,
    "cosine": cosine_beta_schedule,
    "quadratic": quadratic_beta_schedule,
    "sigmoid": sigmoid_beta_schedule,
}

# The reference's loss names and the torch functions they mean (smooth_l1 with its default β = 1).
LOSS_TYPES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l1": F.l1_loss,
    "l2": F.mse_loss,
    "huber": F.smooth_l1_loss,
}


@dataclasses.dataclass(frozen=True)
class DiffusionConfig(FrozenConfig):
    """What a :class:`GaussianDiffusion` is built from, frozen, with a JSON round-trip.

    ``timesteps`` is T, the number of training timesteps (also readable as ``num_train_timesteps``; the
    field keeps its name because checkpoints store it). ``beta_schedule`` is a schedule name or the betas
    themselves (a tuple of floats: float32 values survive the trip through JSON's doubles exactly).
    """

    timesteps: int = 200
    beta_schedule: str | tuple[float, ...] = "linear"

    def __post_init__(self) -> None:
        if not isinstance(self.beta_schedule, str):
            object.__setattr__(self, "beta_schedule", tuple(float(b) for b in self.beta_schedule))

    @property
    def num_train_timesteps(self) -> int:
        """T (the ``timesteps`` field)."""
        return self.timesteps


def _make_betas(timesteps: int | None, beta_schedule: str | torch.Tensor | Sequence[float]) -> torch.Tensor:
    if isinstance(beta_schedule, str):
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"unknown beta_schedule {beta_schedule!r}; expected one of {sorted(BETA_SCHEDULES)}")
        timesteps = 200 if timesteps is None else timesteps
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 2:
            raise ValueError(f"timesteps must be an integer >= 2, got {timesteps!r}")
        return BETA_SCHEDULES[beta_schedule](timesteps)
    betas = torch.as_tensor(beta_schedule).detach().to("cpu", torch.float32)
    if betas.ndim != 1 or betas.numel() < 2:
        raise ValueError(f"betas must be a 1-D tensor of at least 2 values; got shape {tuple(betas.shape)}")
    if timesteps is not None and timesteps != betas.numel():
        raise ValueError(f"betas has {betas.numel()} entries but timesteps={timesteps}; they must agree")
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError("every beta must lie in the open interval (0, 1)")
    return betas.clone()


class GaussianDiffusion:
    """The reference's schedule tables and its q_sample / p_losses / p_sample / p_sample_loop / sample.

    ``GaussianDiffusion(timesteps=200, beta_schedule="linear")``: ``timesteps`` is T, the number of
    training timesteps (``num_timesteps`` / ``num_train_timesteps`` afterwards). ``beta_schedule`` may also
    be "cosine", "quadratic", "sigmoid" or a 1-D tensor of betas (then T defaults to its length). The
    tables live on ``device``. With the default ``dtype=torch.float32`` they are computed exactly as the
    reference computes them; ``dtype=torch.float64`` computes them from the same betas in double precision
    (for references and closed-form checks: float32 tables lose digits where 1−ᾱ_t is small, near t=0).
    """

    TABLES = (
        "betas",
        "alphas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_recip_alphas",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "posterior_variance",
    )

    def __init__(
        self,
        timesteps: int | None = None,
        beta_schedule: str | torch.Tensor | Sequence[float] = "linear",
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"table dtype must be torch.float32 (the reference's) or torch.float64, got {dtype}")
        betas = _make_betas(timesteps, beta_schedule)
        self.num_timesteps = int(betas.numel())
        schedule = beta_schedule if isinstance(beta_schedule, str) else tuple(betas.tolist())
        self.config = DiffusionConfig(timesteps=self.num_timesteps, beta_schedule=schedule)

        # Same float32 operations in the same order as the reference, so each table matches it bit for bit.
        self.betas = betas.to(dtype)
        self.dtype = dtype
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = F.pad(self.alphas_cumprod[:-1], (1, 0), value=1.0)
        self.sqrt_recip_alphas = torch.sqrt(1.0 / self.alphas)
        self.sqrt_alphas_cumprod = torch.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = torch.sqrt(1.0 - self.alphas_cumprod)
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.device = torch.device("cpu")
        self._ddpm_step_table: torch.Tensor | None = None
        self._to(torch.device(device))

    @classmethod
    def from_config(
        cls, config: DiffusionConfig, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> "GaussianDiffusion":
        return cls(config.timesteps, config.beta_schedule, device=device, dtype=dtype)

    @property
    def timesteps(self) -> int:
        """T (kept for compatibility; same as ``num_train_timesteps``)."""
        return self.num_timesteps

    @property
    def num_train_timesteps(self) -> int:
        """T, the number of training timesteps."""
        return self.num_timesteps

    def _to(self, device: torch.device) -> None:
        for name in self.TABLES:
            setattr(self, name, getattr(self, name).to(device))
        self.device = device

    def ddpm_step_table(self) -> torch.Tensor:
        """float32 (4, T) on the tables' device, rows √(1/α_t), β_t, √(1−ᾱ_t), σ_t = √(posterior variance):
        the coefficients the fused ancestral update (``fastddpm.kernels.ddpm_step``) gathers per sample."""
        table = self._ddpm_step_table
        if table is None or table.device != self.device:
            rows = (self.sqrt_recip_alphas, self.betas, self.sqrt_one_minus_alphas_cumprod, self.posterior_variance.sqrt())
            table = torch.stack(rows).to(torch.float32).contiguous()
            self._ddpm_step_table = table
        return table

    def to(self, device: torch.device | str) -> "GaussianDiffusion":
        """Move the tables to ``device`` (in place; returns self, like ``nn.Module.to``)."""
        self._to(torch.device(device))
        return self

    def __repr__(self) -> str:
        schedule = self.config.beta_schedule if isinstance(self.config.beta_schedule, str) else "custom"
        return f"GaussianDiffusion(timesteps={self.num_timesteps}, beta_schedule={schedule!r}, device={self.device})"

    # -- helpers ------------------------------------------------------------------------------------
    def extract(self, table: torch.Tensor, t: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        """``table[t]`` shaped (batch, 1, 1, ...) for broadcasting against ``x_shape``, on ``t``'s device.

        Like the reference: with the tables on the CPU (the default) and ``t`` on a GPU it gathers on the host
        and copies the result back (two syncs per call). ``GaussianDiffusion(..., device=...)`` or
        ``.to(device)`` keeps the tables on the device and gathers there instead.
        """
        shape = (t.shape[0], *((1,) * (len(x_shape) - 1)))
        if table.device == t.device:
            return table.gather(-1, t).reshape(shape)
        return table.gather(-1, t.to(table.device)).reshape(shape).to(t.device)

    def _check_t(self, t: torch.Tensor, x: torch.Tensor) -> None:
        if not isinstance(t, torch.Tensor) or t.dtype != torch.long or t.ndim != 1 or t.shape[0] != x.shape[0]:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"t must be a 1-D LongTensor with one step index per sample ({x.shape[0]}); got {shape}")

    # -- forward process ----------------------------------------------------------------------------
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·noise; noise = randn_like(x_start) when not given."""
        self._check_t(t, x_start)
        if noise is None:
            noise = torch.randn_like(x_start)
        sqrt_alphas_cumprod_t = self.extract(self.sqrt_alphas_cumprod, t, x_start.shape)
        sqrt_one_minus_alphas_cumprod_t = self.extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape)
        return sqrt_alphas_cumprod_t * x_start + sqrt_one_minus_alphas_cumprod_t * noise

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t−1} | x_t, x_0) (section 二 of the reference write-up):

        μ̃ = √ᾱ_{t−1}·β_t/(1−ᾱ_t)·x_0 + √α_t·(1−ᾱ_{t−1})/(1−ᾱ_t)·x_t,  σ̃² = β_t·(1−ᾱ_{t−1})/(1−ᾱ_t).
        """
        self._check_t(t, x_t)
        shape = x_t.shape
        one_minus_abar = 1.0 - self.extract(self.alphas_cumprod, t, shape)
        coef_x0 = self.extract(self.alphas_cumprod_prev, t, shape).sqrt() * self.extract(self.betas, t, shape)
        coef_xt = self.extract(self.alphas, t, shape).sqrt() * (1.0 - self.extract(self.alphas_cumprod_prev, t, shape))
        mean = (coef_x0 * x_start + coef_xt * x_t) / one_minus_abar
        return mean, self.extract(self.posterior_variance, t, shape)

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t, the forward process solved for x_0."""
        self._check_t(t, x_t)
        return (x_t - self.extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * noise) / self.extract(
            self.sqrt_alphas_cumprod, t, x_t.shape
        )

    # -- training loss ------------------------------------------------------------------------------
    def p_losses(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x_start: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        loss_type: str = "l1",
    ) -> torch.Tensor:
        """Loss between the true noise and ``model(q_sample(x_start, t, noise), t)``: l1, l2 or huber."""
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {sorted(LOSS_TYPES)}")
        if noise is None:
            noise = torch.randn_like(x_start)
        x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
        predicted_noise = model(x_noisy, t)
        return LOSS_TYPES[loss_type](noise, predicted_noise)

    # -- reverse process ----------------------------------------------------------------------------
    @torch.no_grad()
    def p_sample(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        t: torch.Tensor,
        t_index: int,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One ancestral step (Algorithm 2, eq. 11): the posterior mean with ε̂ = model(x, t), plus
        √σ̃²_t·z except at ``t_index == 0``. z = randn_like(x) unless ``noise`` is given."""
        self._check_t(t, x)
        betas_t = self.extract(self.betas, t, x.shape)
        sqrt_one_minus_alphas_cumprod_t = self.extract(self.sqrt_one_minus_alphas_cumprod, t, x.shape)
        sqrt_recip_alphas_t = self.extract(self.sqrt_recip_alphas, t, x.shape)
        model_mean = sqrt_recip_alphas_t * (x - betas_t * model(x, t) / sqrt_one_minus_alphas_cumprod_t)
        if t_index == 0:
            return model_mean
        posterior_variance_t = self.extract(self.posterior_variance, t, x.shape)
        if noise is None:
            noise = torch.randn_like(x)
        return model_mean + torch.sqrt(posterior_variance_t) * noise

    @torch.no_grad()
    def p_sample_loop(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        shape: Sequence[int],
        *,
        return_all_timesteps: bool = True,
        progress: bool = True,
        device: torch.device | str | None = None,
    ) -> list[np.ndarray] | torch.Tensor:
        """Sample by running every reverse step from x_T ~ N(0, I).

        Like the reference, returns the list of all T intermediate images as numpy arrays (one host copy per
        step). ``return_all_timesteps=False`` returns only the final image, as a tensor on the device,
        with no per-step host copies. ``device`` defaults to that of the model's parameters.
        """
        device = torch.device(device) if device is not None else _model_device(model)
        b = shape[0]
        img = torch.randn(tuple(shape), device=device)
        imgs = []
        steps = reversed(range(0, self.num_timesteps))
        for i in tqdm(steps, desc="sampling loop time step", total=self.num_timesteps, disable=not progress):
            img = self.p_sample(model, img, torch.full((b,), i, device=device, dtype=torch.long), i)
            if return_all_timesteps:
                imgs.append(img.cpu().numpy())
        return imgs if return_all_timesteps else img

    @torch.no_grad()
    def sample(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        image_size: int,
        batch_size: int = 16,
        channels: int = 3,
        **loop_kwargs: Any,
    ) -> list[np.ndarray] | torch.Tensor:
        """``p_sample_loop(model, (batch_size, channels, image_size, image_size), **loop_kwargs)``."""
        return self.p_sample_loop(model, shape=(batch_size, channels, image_size, image_size), **loop_kwargs)


def _model_device(model: object) -> torch.device:
    """The device of the model's first parameter (the reference's rule); CPU for a parameterless callable."""
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        first = next(iter(parameters()), None)
        if first is not None:
            return first.device
    return torch.device("cpu")
