"""The multistep (DPM-Solver++) update in pure torch: the twin of the fused kernel.

With x̂_0 = F_k·x + G_k·ε (the data prediction at this step), the step is
x_next = A_k·x + B_k·ε + E_k·x̂_0_prev (order 2), plus D_k·x̂_0_prev2 at order 3 (the data prediction of
two steps back): a linear combination of the state, the model output and earlier data predictions (see
``fastddpm.schedules.dpmsolver_coefficients``). Returns both x_next and x̂_0, which the next step needs.
"""

from __future__ import annotations

import torch

A, B, E, F, G, D = range(6)


def multistep_update(
    x: torch.Tensor, eps: torch.Tensor, x0_prev: torch.Tensor, k: torch.Tensor, coefs: torch.Tensor,
    x0_prev2: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (k.shape[0],) + (1,) * (x.ndim - 1)
    c = coefs.float()[:, k].reshape(coefs.shape[0], *shape)
    xf, ef = x.float(), eps.float()
    x0 = c[F] * xf + c[G] * ef
    x_next = c[A] * xf + c[B] * ef + c[E] * x0_prev.float()
    if x0_prev2 is not None:
        x_next = x_next + c[D] * x0_prev2.float()
    return x_next.to(x.dtype), x0.to(x.dtype)
