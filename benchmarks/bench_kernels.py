"""Kernel benchmark: each Triton kernel against its torch twin (and the reference step), in µs and GB/s.

Needs a CUDA GPU (on CPU the kernels only run interpreted, which says nothing about speed):

    python benchmarks/bench_kernels.py [--out benchmarks/results/kernels.csv]

Timings come from triton.testing.do_bench (median of repeated runs after warm-up, L2 flushed between
runs); GB/s counts the bytes each kernel must move (see each kernel's docstring).
"""

from __future__ import annotations

import argparse
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import append_rows, environment  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/kernels.csv")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA GPU (none here); nothing measured.", file=sys.stderr)
        return 0

    from triton.testing import do_bench

    from fastddpm import GaussianDiffusion
    from fastddpm.kernels import ddpm_step, linear_attention, q_sample, randn_philox

    dev = torch.device("cuda")
    diffusion = GaussianDiffusion(1000, device=dev)
    table = diffusion.ddpm_step_table()
    env = environment(dev)
    rows = []

    def record(kernel, shape, dtype, impl, fn, nbytes):
        ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
        rows.append({**env, "kernel": kernel, "shape": "x".join(map(str, shape)), "dtype": str(dtype).split(".")[-1],
                     "impl": impl, "us": round(ms * 1e3, 2), "GB_s": round(nbytes / (ms * 1e-3) / 1e9, 1)})
        print(f"{kernel:<22} {rows[-1]['shape']:<14} {rows[-1]['dtype']:<9} {impl:<10} "
              f"{rows[-1]['us']:>9.2f} us {rows[-1]['GB_s']:>8.1f} GB/s")

    for shape in ((64, 1, 28, 28), (256, 3, 32, 32)):
        for dtype in (torch.float32, torch.bfloat16):
            x0 = torch.randn(shape, device=dev, dtype=dtype)
            noise = torch.randn_like(x0)
            t = torch.randint(0, 1000, (shape[0],), device=dev)
            n, item = x0.numel(), x0.element_size()
            for impl in ("triton", "torch"):
                record("q_sample", shape, dtype, impl, lambda: q_sample(
                    x0, t, noise, diffusion.sqrt_alphas_cumprod, diffusion.sqrt_one_minus_alphas_cumprod, impl=impl),
                    3 * n * item)
            x = torch.randn(shape, device=dev)
            eps = torch.randn(shape, device=dev, dtype=dtype)
            z = torch.randn(shape, device=dev)
            seeds = torch.arange(shape[0], device=dev, dtype=torch.int64)
            for impl in ("triton", "torch"):
                record("ddpm_step[noise]", shape, dtype, impl,
                       lambda: ddpm_step(x, eps, t, table, noise=z, impl=impl), n * (12 + item))
                record("ddpm_step[philox]", shape, dtype, impl,
                       lambda: ddpm_step(x, eps, t, table, seeds=seeds, impl=impl), n * (8 + item))
            t_same = torch.full((shape[0],), 500, device=dev, dtype=torch.long)
            record("p_sample (reference)", shape, dtype, "reference",
                   lambda: diffusion.p_sample(lambda *_: eps, x, t_same, 500, noise=z), n * (12 + item))
        seeds = torch.arange(shape[0], device=dev, dtype=torch.int64)
        step = torch.full_like(seeds, 7)  # a device tensor: an int would add a host-to-device copy per call
        for impl in ("triton", "torch"):
            record("randn_philox", shape, torch.float32, impl,
                   lambda: randn_philox(seeds, step, shape[1:], impl=impl), 4 * x0.numel())

    for b, dim_head, hw in ((64, 32, (28, 28)), (64, 32, (14, 14)), (256, 32, (16, 16)), (64, 64, (28, 28))):
        for dtype in (torch.float32, torch.bfloat16):
            qkv = torch.randn(b, 3 * 4 * dim_head, *hw, device=dev, dtype=dtype)
            nbytes = 4 * b * 4 * dim_head * hw[0] * hw[1] * qkv.element_size()
            for impl in ("triton", "torch"):
                record("linear_attention", (b, 4, dim_head, hw[0] * hw[1]), dtype, impl,
                       lambda: linear_attention(qkv, 4, dim_head**-0.5, impl=impl), nbytes)

    append_rows(args.out, rows)
    print(f"wrote {len(rows)} rows to {args.out} ({env['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
