"""Triton kernel: per-sample counter-based Gaussian noise (the twin is ``naive.randn_philox``).

Bytes moved: writes 4N (float32 out) and reads 8B (the seeds); no reads of N-sized inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _randn_philox_kernel(out_ptr, seeds_ptr, steps_ptr, numel_per_sample, BLOCK: tl.constexpr):
    # grid = (cdiv(numel_per_sample, BLOCK), batch): one program per block of one sample, so the sample's
    # seed and step are scalars and the element counter is the index inside the sample.
    block = tl.program_id(0)
    sample = tl.program_id(1).to(tl.int64)
    elem = block * BLOCK + tl.arange(0, BLOCK)
    mask = elem < numel_per_sample
    seed = tl.load(seeds_ptr + sample)
    step = tl.load(steps_ptr + sample).to(tl.int64)
    noise = tl.randn(seed, (step << 32) | elem.to(tl.int64))
    tl.store(out_ptr + sample * numel_per_sample + elem, noise, mask=mask)


def randn_philox_triton(seeds: torch.Tensor, steps: torch.Tensor, sample_shape, out=None) -> torch.Tensor:
    b = seeds.shape[0]
    if out is None:
        out = torch.empty((b, *sample_shape), dtype=torch.float32, device=seeds.device)
    numel = out[0].numel() if b else 0
    if b and numel:
        grid = (triton.cdiv(numel, BLOCK), b)
        _randn_philox_kernel[grid](out, seeds, steps, numel, BLOCK=BLOCK)
    return out
