"""The reference's ancestral sampler (Ho et al. 2020, Algorithm 2), as a plan.

Over all T steps it is the reference's own update, x_{t−1} = √(1/α_t)·(x − β_t·ε̂/√(1−ᾱ_t)) + σ_t·z with
σ_t² the posterior variance (no noise at t = 0); the torch runners apply it with the reference's float32
tables for bit-exact samples, and the plan holds its expanded affine form for the other runtimes. On fewer
steps it is the ancestral step of the respaced chain: DDIM with η = 1.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..kernels.update_rows import Row
from ..reference.diffusion import GaussianDiffusion
from ._schedule import alpha_sigma, empty_rows, float64_alphas_cumprod, schedule_alphas_cumprod
from .ddim import ddim_coefficients

__all__ = ["ddpm_coefficients"]


def ddpm_coefficients(diffusion: GaussianDiffusion, timesteps: Sequence[int]) -> np.ndarray:
    """float64 (NUM_ROWS, S): the reference's update over all T steps, the respaced ancestral step otherwise."""
    abar = float64_alphas_cumprod(schedule_alphas_cumprod(diffusion))
    if len(timesteps) != diffusion.num_timesteps:
        return ddim_coefficients(abar, timesteps, eta=1.0)
    # The reference's float32 tables, widened: what its update multiplies by, so a runtime that applies
    # these rows reproduces it up to the order of operations.
    sqrt_recip_alpha, beta, sqrt_one_minus_abar, std = np.asarray(diffusion.ddpm_step_table().cpu(), np.float64)
    t = np.asarray(timesteps)
    rows = empty_rows(len(timesteps), *alpha_sigma(abar, timesteps))
    rows[Row.X] = sqrt_recip_alpha[t]
    rows[Row.EPS] = -sqrt_recip_alpha[t] * beta[t] / sqrt_one_minus_abar[t]
    rows[Row.NOISE] = np.where(t > 0, std[t], 0.0)
    return rows
