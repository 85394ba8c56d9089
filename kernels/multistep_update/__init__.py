"""Fused DPM-Solver++ multistep update: the public op, dispatching to the Triton kernel or the twin."""

from __future__ import annotations

import torch

from .._dispatch import check_update_inputs, resolve_impl
from . import naive

__all__ = ["multistep_update"]


@torch.library.custom_op("fastddpm::multistep_update", mutates_args=())
def _multistep_update_op(
    x: torch.Tensor, eps: torch.Tensor, x0_prev: torch.Tensor, k: torch.Tensor, coefs: torch.Tensor, impl: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if impl == "triton":
        from .fused import multistep_update_triton

        return multistep_update_triton(x, eps, x0_prev, k, coefs)
    return naive.multistep_update(x, eps, x0_prev, k, coefs)


@_multistep_update_op.register_fake
def _(x, eps, x0_prev, k, coefs, impl):
    return torch.empty_like(x), torch.empty_like(x)


def multistep_update(
    x: torch.Tensor, eps: torch.Tensor, x0_prev: torch.Tensor, k: torch.Tensor, coefs: torch.Tensor,
    *, impl: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_next, x̂_0) with x̂_0 = F_k·x + G_k·ε and x_next = A_k·x + B_k·ε + E_k·x0_prev; ``coefs`` float32
    (5, S) rows A, B, E, F, G; float32 math, results in x's dtype."""
    if x0_prev.shape != x.shape:
        raise ValueError(f"x0_prev must have x's shape {tuple(x.shape)}, got {tuple(x0_prev.shape)}")
    check_update_inputs(x, eps, coefs, 5, x0_prev, None, k=k)
    return _multistep_update_op(
        x.contiguous(), eps.contiguous(), x0_prev.contiguous(), k.contiguous(), coefs.contiguous(), resolve_impl(impl, x)
    )
