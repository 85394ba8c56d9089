"""Linear attention core in pure torch: the twin of the fused kernel (the reference's arithmetic, float32)."""

from __future__ import annotations

import torch


def linear_attention(qkv: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """From the to_qkv output (B, 3·heads·D, h, w) to the pre-to_out tensor (B, heads·D, h, w).

    q is softmaxed over the head dimension, k over positions; context = k·vᵀ, out = contextᵀ·(q·scale).
    """
    b, c, h, w = qkv.shape
    q, k, v = (part.float().reshape(b, heads, -1, h * w) for part in qkv.chunk(3, dim=1))
    q = q.softmax(dim=-2) * scale
    k = k.softmax(dim=-1)
    context = torch.einsum("b h d n, b h e n -> b h d e", k, v)
    out = torch.einsum("b h d e, b h d n -> b h e n", context, q)
    return out.reshape(b, -1, h, w).to(qkv.dtype)
