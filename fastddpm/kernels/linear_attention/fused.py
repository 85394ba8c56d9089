"""Triton kernel: the linear-attention core in one kernel, one program per (sample, head).

Pass 1 streams k and v once, keeping an online softmax of k over positions (running row max and sum)
and accumulating the D×D context = softmax(k)·vᵀ in registers. Pass 2 streams q once, softmaxes each
position's column over the head dimension in registers, and writes out = contextᵀ·(q·scale). Neither
softmaxed q nor k is ever written to memory.

Bytes moved per (sample, head): reads q, k and v (3·D·N elements), writes out (D·N) — 4·D·N in all.
The unfused reference (two softmaxes, a scale, two einsums, reshapes) moves about 13·D·N elements
through ~8 kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def launch_config(dim_head: int) -> dict:
    # The D×D float32 context lives in registers. ptxas -v for sm_90 (fastddpm.kernels.aot): D=32 with
    # 64-wide blocks and 4 warps uses 191 registers, no spills; D=64 spills at 32-wide blocks (255
    # registers, 116 B spill stores with 8 warps; worse with 16) and is clean at 16-wide blocks, 8 warps
    # (161 registers, no spills).
    if dim_head <= 32:
        return {"BLOCK_N": 64, "num_warps": 4}
    return {"BLOCK_N": 16, "num_warps": 8}


@triton.jit
def _linear_attention_kernel(out_ptr, qkv_ptr, num_positions, scale, HEADS: tl.constexpr, D: tl.constexpr,
                             BLOCK_N: tl.constexpr):
    head = tl.program_id(0)
    sample = tl.program_id(1).to(tl.int64)
    hidden = HEADS * D
    q_ptr = qkv_ptr + sample * 3 * hidden * num_positions + head * D * num_positions
    k_ptr = q_ptr + hidden * num_positions
    v_ptr = k_ptr + hidden * num_positions
    rows = tl.arange(0, D)

    row_max = tl.full((D,), float("-inf"), tl.float32)
    row_sum = tl.zeros((D,), tl.float32)
    context = tl.zeros((D, D), tl.float32)  # context[d, e]
    for start in range(0, num_positions, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = cols[None, :] < num_positions
        offs = rows[:, None] * num_positions + cols[None, :]
        k = tl.load(k_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        new_max = tl.maximum(row_max, tl.max(k, axis=1))
        rescale = tl.exp(row_max - new_max)
        p = tl.exp(k - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(p, axis=1)
        context = context * rescale[:, None] + tl.dot(p, tl.trans(v), input_precision="ieee")
        row_max = new_max
    context = context / row_sum[:, None]
    context_t = tl.trans(context)  # [e, d]

    out_base = out_ptr + sample * hidden * num_positions + head * D * num_positions
    for start in range(0, num_positions, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = cols[None, :] < num_positions
        offs = rows[:, None] * num_positions + cols[None, :]
        q = tl.load(q_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        q = tl.exp(q - tl.max(q, axis=0)[None, :])
        q = q / tl.sum(q, axis=0)[None, :] * scale
        out = tl.dot(context_t, q, input_precision="ieee")
        tl.store(out_base + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def linear_attention_triton(qkv: torch.Tensor, heads: int, scale: float, out=None) -> torch.Tensor:
    b, c, h, w = qkv.shape
    dim_head = c // (3 * heads)
    if out is None:
        out = torch.empty((b, heads * dim_head, h, w), dtype=qkv.dtype, device=qkv.device)
    if b:
        _linear_attention_kernel[(heads, b)](
            out, qkv, h * w, scale, HEADS=heads, D=dim_head, **launch_config(dim_head)
        )
    return out
