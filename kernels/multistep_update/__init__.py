"""Fused DPM-Solver++ multistep update: the public op, dispatching to the Triton kernel or the twin."""

from __future__ import annotations

import torch

from .._dispatch import check_update_inputs, resolve_impl
from . import naive

__all__ = ["multistep_update"]


@torch.library.custom_op("fastddpm::multistep_update", mutates_args=())
def _multistep_update_op(
    x: torch.Tensor, eps: torch.Tensor, x0_prev: torch.Tensor, k: torch.Tensor, coefs: torch.Tensor,
    x0_prev2: torch.Tensor | None, impl: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if impl == "triton":
        from .fused import multistep_update_triton

        return multistep_update_triton(x, eps, x0_prev, k, coefs, x0_prev2)
    return naive.multistep_update(x, eps, x0_prev, k, coefs, x0_prev2)


@_multistep_update_op.register_fake
def _(x, eps, x0_prev, k, coefs, x0_prev2, impl):
    return torch.empty_like(x), torch.empty_like(x)


def multistep_update(
    x: torch.Tensor, eps: torch.Tensor, x0_prev: torch.Tensor, k: torch.Tensor, coefs: torch.Tensor,
    x0_prev2: torch.Tensor | None = None, *, impl: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_next, x̂_0) with x̂_0 = F_k·x + G_k·ε and x_next = A_k·x + B_k·ε + E_k·x0_prev (+ D_k·x0_prev2 at
    order 3); ``coefs`` float32 (5, S) rows A, B, E, F, G — (6, S) with row D when ``x0_prev2`` is given;
    float32 math, results in x's dtype."""
    for name, history in (("x0_prev", x0_prev), ("x0_prev2", x0_prev2)):
        if history is not None and history.shape != x.shape:
            raise ValueError(f"{name} must have x's shape {tuple(x.shape)}, got {tuple(history.shape)}")
    check_update_inputs(x, eps, coefs, 5 if x0_prev2 is None else 6, x0_prev, None, k=k)
    return _multistep_update_op(
        x.contiguous(), eps.contiguous(), x0_prev.contiguous(), k.contiguous(), coefs.contiguous(),
        None if x0_prev2 is None else x0_prev2.contiguous(), resolve_impl(impl, x),
    )
