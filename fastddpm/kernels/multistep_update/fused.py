"""Triton kernel: the multistep update (one to three x̂_0 histories) in one pass.

Bytes moved per element: reads x, ε and the earlier data predictions, writes x_next and the new data
prediction — 4 + histories elements. The per-step scalars come from the plan's (NUM_ROWS, S) device table.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_rows import (ROW_EPS, ROW_HISTORY1, ROW_HISTORY2, ROW_HISTORY3, ROW_X, ROW_X0, ROW_X0_FROM_EPS,
                            ROW_X0_FROM_X, load_coef)

BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _multistep_update_kernel(
    out_ptr, x0_out_ptr, x_ptr, eps_ptr, h1_ptr, h2_ptr, h3_ptr, k_ptr, coefs_ptr, numel_per_sample, num_steps,
    HISTORIES: tl.constexpr, BLOCK: tl.constexpr,
):
    # grid = (cdiv(numel_per_sample, BLOCK), batch): the sample's step and coefficients are scalars.
    block = tl.program_id(0)
    sample = tl.program_id(1).to(tl.int64)
    elem = block * BLOCK + tl.arange(0, BLOCK)
    mask = elem < numel_per_sample
    offs = sample * numel_per_sample + elem
    k = tl.load(k_ptr + sample).to(tl.int64)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    eps = tl.load(eps_ptr + offs, mask=mask).to(tl.float32)
    x0 = load_coef(coefs_ptr, ROW_X0_FROM_X, num_steps, k) * x + load_coef(coefs_ptr, ROW_X0_FROM_EPS, num_steps, k) * eps
    x_next = load_coef(coefs_ptr, ROW_X, num_steps, k) * x + load_coef(coefs_ptr, ROW_EPS, num_steps, k) * eps
    x_next += load_coef(coefs_ptr, ROW_X0, num_steps, k) * x0
    # Compile-time branches: a build never touches the history pointers it does not use.
    x_next += load_coef(coefs_ptr, ROW_HISTORY1, num_steps, k) * tl.load(h1_ptr + offs, mask=mask).to(tl.float32)
    if HISTORIES >= 2:
        x_next += load_coef(coefs_ptr, ROW_HISTORY2, num_steps, k) * tl.load(h2_ptr + offs, mask=mask).to(tl.float32)
    if HISTORIES >= 3:
        x_next += load_coef(coefs_ptr, ROW_HISTORY3, num_steps, k) * tl.load(h3_ptr + offs, mask=mask).to(tl.float32)
    tl.store(x0_out_ptr + offs, x0.to(x0_out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + offs, x_next.to(out_ptr.dtype.element_ty), mask=mask)


def multistep_update_triton(x, eps, k, coefs, history, out=None, x0_out=None):
    out = torch.empty_like(x) if out is None else out
    x0_out = torch.empty_like(x) if x0_out is None else x0_out
    b = x.shape[0]
    numel = x[0].numel() if b else 0
    if b and numel:
        grid = (triton.cdiv(numel, BLOCK), b)
        h = list(history) + [history[0]] * (3 - len(history))  # unused slots: any valid pointer
        _multistep_update_kernel[grid](
            out, x0_out, x, eps, h[0], h[1], h[2], k, coefs, numel, coefs.shape[1],
            HISTORIES=len(history), BLOCK=BLOCK, num_warps=NUM_WARPS,
        )
    return out, x0_out
