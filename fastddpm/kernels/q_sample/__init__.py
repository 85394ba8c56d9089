"""Fused q_sample: the public op, dispatching to the Triton kernel or the torch twin."""

from __future__ import annotations

import torch

from .._dispatch import registered_op_needed, resolve_impl
from . import naive

__all__ = ["q_sample"]


def _q_sample_impl(
    x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, sqrt_alphas_cumprod: torch.Tensor,
    sqrt_one_minus_alphas_cumprod: torch.Tensor, impl: str,
) -> torch.Tensor:
    if impl == "triton":
        from .fused import q_sample_triton  # Triton is imported only when a kernel runs

        return q_sample_triton(x_start, t, noise, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod)
    return naive.q_sample(x_start, t, noise, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod)


# What torch.compile traces (and what a Triton call with grad-requiring inputs runs: see
# registered_op_needed); other eager calls run _q_sample_impl itself.
_q_sample_op = torch.library.custom_op("fastddpm::q_sample", _q_sample_impl, mutates_args=())


@_q_sample_op.register_fake
def _(x_start, t, noise, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, impl):
    return torch.empty_like(x_start)


def q_sample(
    x_start: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    sqrt_alphas_cumprod: torch.Tensor,
    sqrt_one_minus_alphas_cumprod: torch.Tensor,
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """x_t = √ᾱ[t_b]·x_start + √(1−ᾱ)[t_b]·noise, computed in float32, returned in x_start's dtype.

    ``t``: integer (B,) step indices; the two tables: float (T,) on the same device.
    """
    _check(x_start, t, noise, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod)
    chosen = resolve_impl(impl, x_start)
    tensors = (x_start, noise, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod)
    op = _q_sample_op if registered_op_needed(chosen, *tensors) else _q_sample_impl
    return op(
        x_start.contiguous(), t.contiguous(), noise.contiguous(), sqrt_alphas_cumprod.contiguous(),
        sqrt_one_minus_alphas_cumprod.contiguous(), chosen,
    )


def _check(x_start, t, noise, *tables) -> None:
    if noise.shape != x_start.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from x_start shape {tuple(x_start.shape)}")
    if t.ndim != 1 or t.shape[0] != x_start.shape[0] or t.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"t must be int64/int32 step indices shaped ({x_start.shape[0]},), got {t.dtype} {tuple(t.shape)}")
    for table in tables:
        if table.ndim != 1 or table.device != x_start.device:
            raise ValueError(f"schedule tables must be 1-D and on {x_start.device}, got {tuple(table.shape)} on {table.device}")
    if not x_start.is_floating_point():
        raise ValueError(f"x_start must be a floating-point tensor, got {x_start.dtype}")
