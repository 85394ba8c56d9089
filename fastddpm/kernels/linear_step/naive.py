"""The linear sampler update in pure torch: the twin of the fused kernel.

Every first-order sampler step of this library has the form x_next = X_k·x + EPS_k·ε + X0_k·x̂_0 + NOISE_k·z
(x̂_0 = X0_FROM_X_k·x + X0_FROM_EPS_k·ε): DDIM (any η) and the ancestral DDPM step on a respaced schedule among them (see
``fastddpm.solvers.ddim``).
"""

from __future__ import annotations

import torch

from ..noise.naive import randn_philox
from ..update_rows import Row


def linear_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    k: torch.Tensor,
    coefs: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None = None,
    seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_next = X_k·x + EPS_k·ε + X0_k·x̂_0 + NOISE_k·z with x̂_0 = X0_FROM_X_k·x + X0_FROM_EPS_k·ε, in
    float32, returned in x's dtype.

    ``k``: int (B,) index of the step in ``coefs`` (the plan's (NUM_ROWS, S) table); ``t``: int (B,) the diffusion timestep, which
    keys the counter-based noise (seeds[b], t[b], element) when ``noise`` is None.
    """
    shape = (k.shape[0],) + (1,) * (x.ndim - 1)
    c = coefs.float()[:, k].reshape(coefs.shape[0], *shape)
    z = noise.float() if noise is not None else randn_philox(seeds, t, x.shape[1:])
    xf, ef = x.float(), eps.float()
    x0 = c[Row.X0_FROM_X] * xf + c[Row.X0_FROM_EPS] * ef
    out = c[Row.X] * xf + c[Row.EPS] * ef + c[Row.X0] * x0
    return torch.where(c[Row.NOISE] != 0, out + c[Row.NOISE] * z, out).to(x.dtype)
