"""Fused linear sampler update (DDIM, respaced DDPM): the public op, dispatching to Triton or the twin."""

from __future__ import annotations

import torch

from .._dispatch import resolve_impl
from . import naive

__all__ = ["linear_step"]


@torch.library.custom_op("fastddpm::linear_step", mutates_args=())
def _linear_step_op(
    x: torch.Tensor, eps: torch.Tensor, k: torch.Tensor, coefs: torch.Tensor, t: torch.Tensor,
    noise: torch.Tensor | None, seeds: torch.Tensor | None, impl: str,
) -> torch.Tensor:
    if impl == "triton":
        from .fused import linear_step_triton

        return linear_step_triton(x, eps, k, coefs, t, noise, seeds)
    return naive.linear_step(x, eps, k, coefs, t, noise, seeds)


@_linear_step_op.register_fake
def _(x, eps, k, coefs, t, noise, seeds, impl):
    return torch.empty_like(x)


def linear_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    k: torch.Tensor,
    coefs: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None = None,
    seeds: torch.Tensor | None = None,
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """x_next = A_k·x + B_k·ε + C_k·z (float32 math, x's dtype), ``coefs`` float32 (3, S) rows A, B, C.

    ``k`` (int, (B,)) picks the column; ``t`` (int, (B,)) is the diffusion timestep keying counter-based
    noise when ``seeds`` is given instead of ``noise``. Steps with C_k = 0 add no noise.
    """
    if (noise is None) == (seeds is None):
        raise ValueError("pass exactly one noise source: noise=<tensor like x> or seeds=<int64 (B,)>")
    if eps.shape != x.shape or (noise is not None and noise.shape != x.shape):
        raise ValueError(f"eps and noise must have x's shape {tuple(x.shape)}")
    for name, index in (("k", k), ("t", t)):
        if index.ndim != 1 or index.shape[0] != x.shape[0] or index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be int64/int32 shaped ({x.shape[0]},), got {index.dtype} {tuple(index.shape)}")
    if coefs.ndim != 2 or coefs.shape[0] != 3 or coefs.dtype != torch.float32 or coefs.device != x.device:
        raise ValueError(f"coefs must be float32 (3, S) on {x.device}, got {coefs.dtype} {tuple(coefs.shape)} on {coefs.device}")
    if seeds is not None and (seeds.dtype != torch.int64 or seeds.shape != (x.shape[0],)):
        raise ValueError(f"seeds must be int64 shaped ({x.shape[0]},), got {seeds.dtype} {tuple(seeds.shape)}")
    return _linear_step_op(
        x.contiguous(), eps.contiguous(), k.contiguous(), coefs.contiguous(), t.contiguous(),
        None if noise is None else noise.contiguous(), None if seeds is None else seeds.contiguous(),
        resolve_impl(impl, x),
    )
