"""Triton kernel: the linear sampler update x_next = X_k·x + EPS_k·ε + X0_k·x̂_0 + NOISE_k·z in one pass.

Bytes moved per element: reads x, ε and z, writes x_next — 4 elements; 3 with in-kernel noise. The
per-step scalars come from the plan's (NUM_ROWS, S) device table gathered inside the kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_rows import ROW_EPS, ROW_NOISE, ROW_X, ROW_X0, ROW_X0_FROM_EPS, ROW_X0_FROM_X, load_coef

BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _linear_step_kernel(
    out_ptr, x_ptr, eps_ptr, noise_ptr, seeds_ptr, k_ptr, t_ptr, coefs_ptr, numel_per_sample, num_steps,
    NOISE_FROM_SEEDS: tl.constexpr, BLOCK: tl.constexpr,
):
    # grid = (cdiv(numel_per_sample, BLOCK), batch): the sample's step and coefficients are scalars.
    block = tl.program_id(0)
    sample = tl.program_id(1).to(tl.int64)
    elem = block * BLOCK + tl.arange(0, BLOCK)
    mask = elem < numel_per_sample
    offs = sample * numel_per_sample + elem
    k = tl.load(k_ptr + sample).to(tl.int64)
    c = load_coef(coefs_ptr, ROW_NOISE, num_steps, k)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    eps = tl.load(eps_ptr + offs, mask=mask).to(tl.float32)
    x0 = load_coef(coefs_ptr, ROW_X0_FROM_X, num_steps, k) * x + load_coef(coefs_ptr, ROW_X0_FROM_EPS, num_steps, k) * eps
    out = load_coef(coefs_ptr, ROW_X, num_steps, k) * x + load_coef(coefs_ptr, ROW_EPS, num_steps, k) * eps
    out += load_coef(coefs_ptr, ROW_X0, num_steps, k) * x0
    if NOISE_FROM_SEEDS:
        t = tl.load(t_ptr + sample).to(tl.int64)
        seed = tl.load(seeds_ptr + sample)
        z = tl.randn(seed, (t << 32) | elem.to(tl.int64))
    else:
        z = tl.load(noise_ptr + offs, mask=mask).to(tl.float32)
    out = tl.where(c != 0, out + c * z, out)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def linear_step_triton(x, eps, k, coefs, t, noise=None, seeds=None, out=None) -> torch.Tensor:
    out = torch.empty_like(x) if out is None else out
    b = x.shape[0]
    numel = x[0].numel() if b else 0
    if b and numel:
        from_seeds = noise is None
        grid = (triton.cdiv(numel, BLOCK), b)
        _linear_step_kernel[grid](
            out, x, eps, x if from_seeds else noise, seeds if from_seeds else k, k, t, coefs, numel,
            coefs.shape[1], NOISE_FROM_SEEDS=from_seeds, BLOCK=BLOCK, num_warps=NUM_WARPS,
        )
    return out
