"""Sampler benchmark: the seed's reference loop against each backend and precision, per step.

The seed's Fashion-MNIST configuration: Unet(dim=28, channels=1, dim_mults=(1, 2, 4)), batch 64, 1×28×28.
Each configuration samples a short schedule (``--steps``, default 10: the work per step does not depend
on T) and the configurations are alternated round by round, so drift on a shared machine hits them all.
Compile / graph-capture time is measured apart (the first call), then ``--rounds`` timed calls each.

    python benchmarks/bench_sampler.py [--device cpu|cuda] [--batch 64] [--rounds 5] [--out FILE.csv]

Before timing, each backend's fp32 output is checked against the reference with the same noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import append_rows, environment  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[64])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", nargs="+", default=None,
                        help="backend:dtype pairs, e.g. eager:fp32 compile:bf16 (default: all for the device)")
    parser.add_argument("--out", default="benchmarks/results/sampler.csv")
    args = parser.parse_args(argv)

    from fastddpm import GaussianDiffusion, Sampler, Unet
    from fastddpm.tolerances import assert_close

    device = torch.device(args.device)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if args.configs:
        configs = [tuple(c.split(":")) for c in args.configs]
    elif device.type == "cuda":
        configs = [(b, d) for b in ("eager", "compile", "cudagraph") for d in ("fp32", "bf16")]
    else:
        configs = [(b, d) for b in ("eager", "compile") for d in ("fp32", "bf16")]

    torch.manual_seed(0)
    model = Unet(dim=28, channels=1, dim_mults=(1, 2, 4)).to(device).eval()
    # Tables on the host, as the seed keeps them: the reference loop then gathers on the host and copies
    # back each step, like the seed's extract(). The Sampler builds its own device tables from them.
    diffusion = GaussianDiffusion(args.steps)
    env = environment(device)
    rows = []
    for batch in args.batch:
        shape = (batch, 1, 28, 28)

        def reference():
            # The seed's loop: per-step host gathers and a host copy of every step's image.
            return diffusion.p_sample_loop(model, shape, progress=False)

        samplers = {c: Sampler(model, diffusion, backend=c[0], dtype=dtypes[c[1]]) for c in configs}
        warmup = {}
        start = time.perf_counter()
        torch.manual_seed(1)
        expected = torch.from_numpy(reference()[-1]).to(device)
        warmup["reference"] = time.perf_counter() - start
        for config, sampler in samplers.items():
            start = time.perf_counter()
            torch.manual_seed(1)
            out = sampler.sample(batch, 28, 1, progress=False, clip=False)
            _sync(device)
            warmup[config] = time.perf_counter() - start
            if config[1] == "fp32":  # equivalence before any number is reported
                assert_close(out, expected, rtol=1e-5)
            print(f"warm-up {config[0]}/{config[1]}: {warmup[config]:.1f} s", file=sys.stderr)

        times = {name: [] for name in ["reference", *samplers]}
        for _ in range(args.rounds):
            for name in times:
                start = time.perf_counter()
                if name == "reference":
                    reference()
                else:
                    samplers[name].sample(batch, 28, 1, progress=False)
                _sync(device)
                times[name].append((time.perf_counter() - start) / args.steps)

        ref_step = statistics.median(times["reference"])
        print(f"\n{env['device']} · torch {env['torch']} · batch {batch} · 1×28×28 · {args.steps} steps × "
              f"{args.rounds} rounds")
        print("| config | ms/step (median) | spread (min–max) | images/s at T=200 | speed-up | warm-up s |")
        print("|---|---|---|---|---|---|")
        for name, samples in times.items():
            label = name if name == "reference" else f"{name[0]} {name[1]}"
            med = statistics.median(samples)
            row = {**env, "bench": "sampler", "config": label, "batch": batch, "steps": args.steps,
                   "rounds": args.rounds, "ms_per_step": round(med * 1e3, 2),
                   "ms_min": round(min(samples) * 1e3, 2), "ms_max": round(max(samples) * 1e3, 2),
                   "images_per_s_T200": round(batch / (med * 200), 3), "speedup": round(ref_step / med, 2),
                   "warmup_s": round(warmup[name], 1)}
            rows.append(row)
            print(f"| {label} | {row['ms_per_step']:.1f} | {row['ms_min']:.1f}–{row['ms_max']:.1f} | "
                  f"{row['images_per_s_T200']:.3f} | {row['speedup']:.2f}× | {row['warmup_s']:.1f} |")
    append_rows(args.out, rows)
    print(f"\nwrote {len(rows)} rows to {args.out}")
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
