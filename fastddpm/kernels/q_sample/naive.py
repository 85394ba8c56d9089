"""q_sample in pure torch: the twin of the fused kernel, with the reference's arithmetic."""

from __future__ import annotations

import torch


def q_sample(
    x_start: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    sqrt_alphas_cumprod: torch.Tensor,
    sqrt_one_minus_alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """√ᾱ[t_b]·x0 + √(1−ᾱ)[t_b]·noise in float32, returned in x_start's dtype."""
    shape = (t.shape[0],) + (1,) * (x_start.ndim - 1)
    a = sqrt_alphas_cumprod.float()[t].reshape(shape)
    s = sqrt_one_minus_alphas_cumprod.float()[t].reshape(shape)
    return (a * x_start.float() + s * noise.float()).to(x_start.dtype)
