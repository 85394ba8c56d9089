"""The schedule quantities every solver builds its coefficients from, in float64."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..kernels.update_rows import NUM_ROWS, Row


def schedule_alphas_cumprod(diffusion) -> torch.Tensor:
    """ᾱ in float64, accumulated from the schedule's (float32) betas: the reference's tables are float32,
    every solver's coefficients are built from this."""
    return torch.cumprod(1 - diffusion.betas.detach().to("cpu", torch.float64), 0)


def float64_alphas_cumprod(alphas_cumprod: torch.Tensor | np.ndarray) -> np.ndarray:
    return np.asarray(torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64))


def alpha_sigma(alphas_cumprod: np.ndarray, timesteps: Sequence[int]) -> tuple[list[float], list[float]]:
    """α_t = √ᾱ_t and σ_t = √(1−ᾱ_t) at each visited timestep (VP: α² + σ² = 1)."""
    alpha = [math.sqrt(float(alphas_cumprod[t])) for t in timesteps]
    sigma = [math.sqrt(1 - float(alphas_cumprod[t])) for t in timesteps]
    return alpha, sigma


def empty_rows(steps: int, alpha: Sequence[float], sigma: Sequence[float]) -> np.ndarray:
    """A (NUM_ROWS, S) float64 table with every step's data prediction filled in: x̂_0 = (x − σ·ε̂)/α."""
    rows = np.zeros((NUM_ROWS, steps), dtype=np.float64)
    rows[Row.X0_FROM_X] = [1 / a for a in alpha]
    rows[Row.X0_FROM_EPS] = [-s / a for a, s in zip(alpha, sigma)]
    return rows
