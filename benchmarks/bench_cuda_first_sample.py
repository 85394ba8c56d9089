"""What a one-shot ``fastddpm sample`` pays on a GPU (a benchmark, not a test): in one process, per backend, the
seconds of the first sample (CUDA graph capture, Triton JIT compiles, cuDNN's first calls) and of the
repeats, for the bundled model's default solver and for the 1000-step ancestral sampler.

The backends alternate in the order given, after creating the CUDA context untimed. The first row of a
process still pays one-time costs (cuDNN and cuBLAS handles, Triton hashing its sources for its cache key,
~0.4 s on an H200): compare rows at the same position, or list a throwaway configuration first. Triton's
on-disk cache makes a second process cheaper than the first. Writes rows to ``first-sample.csv``::

    python benchmarks/bench_cuda_first_sample.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import append_rows, environment  # noqa: E402

from fastddpm import load_sampler  # noqa: E402
from fastddpm.bench.probes import sync  # noqa: E402
from fastddpm.cli.common import positive_int  # noqa: E402

SOLVERS = {"default": {}, "ddpm-1000": {"method": "ddpm"}}
IMAGE_SIZE, CHANNELS = 16, 1  # the bundled digits model


def timed_sample(sampler, num: int, seed: int) -> float:
    sync(sampler.device)
    start = time.perf_counter()
    images = sampler.sample(num, IMAGE_SIZE, CHANNELS, seed=seed, progress=False)
    sync(sampler.device)
    if not torch.isfinite(images).all():
        raise SystemExit("a sample is not finite")
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["eager", "cudagraph"])
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=list(SOLVERS))
    parser.add_argument("--num", type=positive_int, default=64)
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed samples after the first (default 3)")
    parser.add_argument("--out", default="benchmarks/results/first-sample.csv")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only to try the script out")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "bench_cuda_first_sample: needs a CUDA device\n")
    torch.zeros(1, device=args.device).sum().item()  # the CUDA context: paid once by any backend
    env = environment(torch.device(args.device))
    rows = []
    for solver in args.solvers:
        for backend in args.backends:
            start = time.perf_counter()
            sampler = load_sampler(device=args.device, backend=backend, **SOLVERS[solver])
            load = time.perf_counter() - start
            first = timed_sample(sampler, args.num, seed=0)
            repeats = [timed_sample(sampler, args.num, seed=1 + i) for i in range(args.repeats)]
            median = statistics.median(repeats)
            print(f"{solver:10s} {backend:10s} load {load:6.2f} s  first {first:6.2f} s  repeat median "
                  f"{median:7.3f} s (min {min(repeats):.3f}, max {max(repeats):.3f}), "
                  f"{1000 * median / sampler.num_steps:.2f} ms/step", flush=True)
            rows.append({**env, "solver": solver, "backend": backend, "num": args.num, "steps": sampler.num_steps,
                         "load_s": round(load, 3), "first_s": round(first, 3), "repeat_median_s": round(median, 4),
                         "repeat_min_s": round(min(repeats), 4), "repeat_max_s": round(max(repeats), 4)})
    append_rows(args.out, rows)
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
