"""DDIM (Song et al. 2021, eq. 12), any η: η = 0 is deterministic, η = 1 the ancestral step of the chain.

With x̂_0 = (x − √(1−ᾱ_t)·ε̂)/√ᾱ_t and p the next timestep (ᾱ_p = 1 after the last):

    x_next = √ᾱ_p·x̂_0 + √(1−ᾱ_p−σ²)·ε̂ + σ·z,   σ = η·√((1−ᾱ_p)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_p)

η = 1 gives the posterior variance of the respaced chain: over all T steps it is the reference's ancestral
update (up to float rounding).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..kernels.update_rows import Row
from ._schedule import alpha_sigma, empty_rows, float64_alphas_cumprod

__all__ = ["ddim_coefficients"]


def ddim_coefficients(alphas_cumprod: torch.Tensor | np.ndarray, timesteps: Sequence[int], eta: float = 0.0) -> np.ndarray:
    """float64 (NUM_ROWS, S): rows X0, EPS and NOISE of x_next = X0·x̂_0 + EPS·ε̂ + NOISE·z (and x̂_0's rows)."""
    if not (eta >= 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    abar = float64_alphas_cumprod(alphas_cumprod)
    alpha, sigma = alpha_sigma(abar, timesteps)
    rows = empty_rows(len(timesteps), alpha, sigma)
    for k, t in enumerate(timesteps):
        a_t = float(abar[t])
        a_p = float(abar[timesteps[k + 1]]) if k + 1 < len(timesteps) else 1.0
        noise = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(max(0.0, 1 - a_t / a_p))
        direction = math.sqrt(max(0.0, 1 - a_p - noise**2))
        rows[Row.X0, k] = math.sqrt(a_p)
        rows[Row.EPS, k] = direction
        rows[Row.NOISE, k] = noise
    return rows
