"""Fused linear attention: the public op, dispatching to the Triton kernel or the torch twin."""

from __future__ import annotations

import torch

from .._dispatch import registered_op_needed, resolve_impl
from . import naive

__all__ = ["linear_attention"]


def _linear_attention_impl(qkv: torch.Tensor, heads: int, scale: float, impl: str) -> torch.Tensor:
    if impl == "triton":
        from .fused import linear_attention_triton  # Triton is imported only when a kernel runs

        return linear_attention_triton(qkv, heads, scale)
    return naive.linear_attention(qkv, heads, scale)


# What torch.compile traces (and what a Triton call with grad-requiring inputs runs: see
# registered_op_needed); other eager calls run _linear_attention_impl itself.
_linear_attention_op = torch.library.custom_op("fastddpm::linear_attention", _linear_attention_impl, mutates_args=())


@_linear_attention_op.register_fake
def _(qkv, heads, scale, impl):
    b, c, h, w = qkv.shape
    return qkv.new_empty((b, c // 3, h, w))


def linear_attention(qkv: torch.Tensor, heads: int, scale: float, *, impl: str | None = None) -> torch.Tensor:
    """The linear-attention core: to_qkv output (B, 3·heads·D, h, w) → (B, heads·D, h, w), float32 math.

    The Triton kernel takes D (dim_head) a power of two ≥ 16 (the U-Net's 32; 64 too).
    """
    if qkv.ndim != 4 or qkv.shape[1] % (3 * heads):
        raise ValueError(f"qkv must be (B, 3·heads·dim_head, h, w) with heads={heads}, got {tuple(qkv.shape)}")
    dim_head = qkv.shape[1] // (3 * heads)
    chosen = resolve_impl(impl, qkv)
    if chosen == "triton" and (dim_head < 16 or dim_head & (dim_head - 1)):
        if impl == "triton":
            raise ValueError(f"the Triton kernel needs dim_head a power of two >= 16, got {dim_head}")
        chosen = "torch"
    op = _linear_attention_op if registered_op_needed(chosen, qkv) else _linear_attention_impl
    return op(qkv.contiguous(), heads, float(scale), chosen)
