"""The ancestral DDPM update in pure torch: the twin of the fused kernel, with the reference's arithmetic."""

from __future__ import annotations

import torch

from ..noise.naive import randn_philox

# Rows of the (4, T) coefficient table the update reads (see ``GaussianDiffusion.ddpm_step_table``).
SQRT_RECIP_ALPHAS, BETAS, SQRT_ONE_MINUS_ALPHAS_CUMPROD, POSTERIOR_STD = range(4)


def ddpm_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    t: torch.Tensor,
    table: torch.Tensor,
    noise: torch.Tensor | None = None,
    seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_{t−1} = √(1/α_t)·(x − β_t·ε/√(1−ᾱ_t)) + (t>0)·σ_t·z, in float32, returned in x's dtype.

    z is ``noise`` when given, else counter-based noise keyed by (seeds[b], t[b], element).
    """
    shape = (t.shape[0],) + (1,) * (x.ndim - 1)
    coef = table.float()[:, t].reshape(4, *shape)
    xf = x.float()
    mean = coef[SQRT_RECIP_ALPHAS] * (xf - coef[BETAS] * eps.float() / coef[SQRT_ONE_MINUS_ALPHAS_CUMPROD])
    z = noise.float() if noise is not None else randn_philox(seeds, t, x.shape[1:])
    out = torch.where((t > 0).reshape(shape), mean + coef[POSTERIOR_STD] * z, mean)
    return out.to(x.dtype)
