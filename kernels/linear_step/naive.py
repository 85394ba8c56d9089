"""The linear sampler update in pure torch: the twin of the fused kernel.

Every first-order sampler step of this library has the form x_next = A_k·x + B_k·ε + C_k·z, with three
per-step scalars: DDIM (any η) and the ancestral DDPM step on a respaced schedule among them (see
``fastddpm.schedules.ddim_coefficients``).
"""

from __future__ import annotations

import torch

from ..noise.naive import randn_philox

X_COEF, EPS_COEF, NOISE_COEF = range(3)


def linear_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    k: torch.Tensor,
    coefs: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None = None,
    seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_next = coefs[0,k]·x + coefs[1,k]·ε + coefs[2,k]·z in float32, returned in x's dtype.

    ``k``: int (B,) index of the step in ``coefs`` (3, S); ``t``: int (B,) the diffusion timestep, which
    keys the counter-based noise (seeds[b], t[b], element) when ``noise`` is None.
    """
    shape = (k.shape[0],) + (1,) * (x.ndim - 1)
    c = coefs.float()[:, k].reshape(3, *shape)
    z = noise.float() if noise is not None else randn_philox(seeds, t, x.shape[1:])
    out = c[X_COEF] * x.float() + c[EPS_COEF] * eps.float()
    return torch.where(c[NOISE_COEF] != 0, out + c[NOISE_COEF] * z, out).to(x.dtype)
