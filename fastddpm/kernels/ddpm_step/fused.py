"""Triton kernel: the ancestral DDPM update (Algorithm 2, eq. 11) in one pass.

Bytes moved per element: reads x, ε and z and writes x_{t−1} — 4 elements; with in-kernel noise z is
never stored, so 3 (reads x and ε). The four per-sample coefficients come from a (4, T) device table.
The unfused reference step (``GaussianDiffusion.p_sample``) touches about 15N elements in ~10 kernels
and makes 4 host syncs (its ``extract`` gathers on the host).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _ddpm_step_kernel(
    out_ptr, x_ptr, eps_ptr, noise_ptr, seeds_ptr, t_ptr, table_ptr, numel_per_sample, num_steps,
    NOISE_FROM_SEEDS: tl.constexpr, BLOCK: tl.constexpr,
):
    # grid = (cdiv(numel_per_sample, BLOCK), batch): the sample's step and coefficients are scalars.
    block = tl.program_id(0)
    sample = tl.program_id(1).to(tl.int64)
    elem = block * BLOCK + tl.arange(0, BLOCK)
    mask = elem < numel_per_sample
    offs = sample * numel_per_sample + elem
    t = tl.load(t_ptr + sample).to(tl.int64)
    sqrt_recip_alpha = tl.load(table_ptr + t)
    beta = tl.load(table_ptr + num_steps + t)
    sqrt_one_minus_abar = tl.load(table_ptr + 2 * num_steps + t)
    sigma = tl.load(table_ptr + 3 * num_steps + t)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    eps = tl.load(eps_ptr + offs, mask=mask).to(tl.float32)
    # Same operation order as the reference: √(1/α)·(x − (β·ε)/√(1−ᾱ)).
    mean = sqrt_recip_alpha * (x - beta * eps / sqrt_one_minus_abar)
    if NOISE_FROM_SEEDS:
        seed = tl.load(seeds_ptr + sample)
        z = tl.randn(seed, (t << 32) | elem.to(tl.int64))
    else:
        z = tl.load(noise_ptr + offs, mask=mask).to(tl.float32)
    out = tl.where(t > 0, mean + sigma * z, mean)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def ddpm_step_triton(x, eps, t, table, noise=None, seeds=None, out=None) -> torch.Tensor:
    out = torch.empty_like(x) if out is None else out
    b = x.shape[0]
    numel = x[0].numel() if b else 0
    if b and numel:
        from_seeds = noise is None
        grid = (triton.cdiv(numel, BLOCK), b)
        _ddpm_step_kernel[grid](
            out, x, eps, x if from_seeds else noise, seeds if from_seeds else t, t, table, numel, table.shape[1],
            NOISE_FROM_SEEDS=from_seeds, BLOCK=BLOCK, num_warps=NUM_WARPS,
        )
    return out
