"""bf16 judged by distribution, not per trajectory (a benchmark, not a test): is a sample drawn with the
network in bfloat16 as good as one drawn in float32, at equal NFE, within the float32 result's own noise?

An ODE solver amplifies a network's rounding along a trajectory (DPM-Solver++'s first step multiplies ε̂ by
σ/α ≈ 158), so bf16 and fp32 samples from one x_T differ visibly; what matters is whether the *set* of samples
is as close to the data. The sampler keeps the state and the update in float32 and runs only the network in
bf16 (``Sampler(dtype=torch.bfloat16)``: autocast).

1. **Exact-ε harness** (``fastddpm.eval.oracle``: a Gaussian mixture whose ε is known): a "bf16 network"
   is modelled as the exact ε of the bf16-rounded input, rounded to bf16 (what any bf16 network does at its
   ends), and, harsher, with a relative error of the size the bf16 digits U-Net shows per forward (measured
   in part 2). Distance to exact draws over the floor and the narrow component's spread, against the fp32
   result's spread over ``--repeats`` independent sample sets.
2. **Digits proxy** (the bundled model, 512 samples, philox seeds 0–511, the same seeds in both precisions):
   confident share and Fréchet distance of pooled pixels, fp32 against bf16 autocast, and the paired
   bootstrap error of their difference. On a CPU without bf16 instructions autocast still computes in bf16
   (converting in software: slow, but the numbers are bf16's).

    python benchmarks/bench_bf16_quality.py [--num 512] [--harness-num 4000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import NARROW, append_rows, environment, harness_setting  # noqa: E402

# (method, steps, spacing): the bundled model's default first, the fewest-NFE setting that reaches the
# ancestral sampler's quality, and the default for any other model (DPM-Solver++ logsnr) at 10 and 20.
DIGITS_SETTINGS = (("unipc", 5, "linspace"), ("dpmsolver++", 4, "leading"), ("dpmsolver++", 10, "logsnr"),
                   ("dpmsolver++", 20, "logsnr"))
HARNESS_SETTINGS = (("dpmsolver++", 5, "logsnr"), ("unipc", 5, "linspace"), ("dpmsolver++", 10, "logsnr"),
                    ("dpmsolver++", 20, "logsnr"))


def bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(x.dtype)


class Bf16Network:
    """The exact ε of a mixture seen through a bf16 network's ends: its input and output rounded to bf16, and
    optionally a relative error ``relative`` (Gaussian, per element, a fixed generator) inside."""

    def __init__(self, mix, relative: float = 0.0, seed: int = 0):
        self.mix, self.relative, self.generator = mix, relative, torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.mix(bf16(x), t)
        if self.relative:
            eps = eps * (1 + self.relative * torch.randn(eps.shape, generator=self.generator, dtype=eps.dtype))
        return bf16(eps)


def harness(args, rows, env, relative_error: float) -> None:
    from fastddpm import Sampler
    from fastddpm.eval.oracle import evaluate

    n = args.harness_num
    diffusion, mix, refs, _ = harness_setting(n)
    networks = {"fp32": mix, "bf16 ends": Bf16Network(mix),
                f"bf16 ends + {relative_error:.1e} relative": Bf16Network(mix, relative_error)}
    print(f"\n## Exact-ε harness: {n} samples per set, {args.repeats} sets (seeds 1+k·n) per precision")
    print("| setting | network | distance / floor (median, min–max) | narrow spread (median, min–max) |")
    print("|---|---|---|---|")
    for method, steps, spacing in HARNESS_SETTINGS:
        for name, network in networks.items():
            distances, spreads = [], []
            for repeat in range(args.repeats):
                sampler = Sampler(network, diffusion, method=method, steps=steps, spacing=spacing)
                out = sampler.sample(n, (2, 2), 1, seed=1 + repeat * n, noise="philox", progress=False, clip=False)
                report = evaluate(mix, out, refs)
                distances.append(report.w_over_floor)
                spreads.append(report.spread_ratio[NARROW])
            print(f"| {method} {spacing} {steps} | {name} | {statistics.median(distances):.3f} "
                  f"({min(distances):.3f}–{max(distances):.3f}) | {statistics.median(spreads):.3f} "
                  f"({min(spreads):.3f}–{max(spreads):.3f}) |", flush=True)
            rows.append({**env, "part": "harness", "setting": f"{method} {spacing} {steps}", "network": name,
                         "evaluations": steps, "num": n, "repeats": args.repeats,
                         "w_over_floor_median": round(statistics.median(distances), 4),
                         "w_over_floor_min": round(min(distances), 4), "w_over_floor_max": round(max(distances), 4),
                         "narrow_spread_median": round(statistics.median(spreads), 4),
                         "narrow_spread_min": round(min(spreads), 4), "narrow_spread_max": round(max(spreads), 4)})


def digits(args, rows, env) -> float:
    """Scores both precisions on the digits proxy; returns the bf16 U-Net's relative error per forward."""
    import fastddpm
    from fastddpm.eval.quality import frechet_distance, pooled_pixels, real_digits, score_pixels

    model, diffusion = fastddpm.load()
    reference, heldout = real_digits()
    floor = frechet_distance(heldout[: args.num], reference)
    x = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    relative = []
    with torch.no_grad():
        for t in (999, 500, 100, 10):
            steps = torch.full((64,), t)
            exact = model(x, steps)
            with torch.autocast("cpu", torch.bfloat16):
                low = model(x, steps).float()
            relative.append(float((low - exact).norm() / exact.norm()))
    relative_error = statistics.median(relative)
    print(f"bf16 autocast U-Net per forward, relative error against fp32 (t = 999, 500, 100, 10): "
          f"{', '.join(f'{r:.2e}' for r in relative)}")
    print(f"\n## Digits proxy: {args.num} samples (philox seeds 0–{args.num - 1}, the same in both precisions); "
          f"confident share's SE for one set ±{np.sqrt(0.25 / args.num):.3f} at most; Fréchet floor {floor:.3f}")
    print("| setting | fp32 confident / Fréchet | bf16 confident / Fréchet | difference (bf16 − fp32) ± paired "
          "bootstrap SE | bf16 s / fp32 s |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for method, steps, spacing in DIGITS_SETTINGS:
        pixels, seconds = {}, {}
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            sampler = fastddpm.Sampler(model, diffusion, method=method, steps=steps, spacing=spacing, dtype=dtype)
            started = time.perf_counter()
            images = sampler.sample(args.num, 16, 1, seed=0, noise="philox", progress=False)
            seconds[precision] = time.perf_counter() - started
            if not torch.isfinite(images).all():
                raise SystemExit(f"{method} {spacing} {steps} {precision}: non-finite samples")
            pixels[precision] = pooled_pixels(images)
        scores = {p: (score_pixels(v)["confident"], frechet_distance(v, reference)) for p, v in pixels.items()}
        # Paired bootstrap: the same resampled indices for both precisions (the samples share their x_T).
        diffs = []
        for _ in range(args.bootstrap):
            idx = rng.integers(0, args.num, args.num)
            a, b = pixels["fp32"][idx], pixels["bf16"][idx]
            diffs.append((score_pixels(b)["confident"] - score_pixels(a)["confident"],
                          frechet_distance(b, reference) - frechet_distance(a, reference)))
        diffs = np.asarray(diffs)
        d_conf, d_fd = scores["bf16"][0] - scores["fp32"][0], scores["bf16"][1] - scores["fp32"][1]
        print(f"| {method} {spacing} {steps} | {scores['fp32'][0]:.3f} / {scores['fp32'][1]:.3f} | "
              f"{scores['bf16'][0]:.3f} / {scores['bf16'][1]:.3f} | {d_conf:+.3f} ± {diffs[:, 0].std():.3f} / "
              f"{d_fd:+.3f} ± {diffs[:, 1].std():.3f} | {seconds['bf16'] / seconds['fp32']:.1f} |", flush=True)
        rows.append({**env, "part": "digits", "setting": f"{method} {spacing} {steps}", "evaluations": steps,
                     "num": args.num, "confident_fp32": scores["fp32"][0], "frechet_fp32": round(scores["fp32"][1], 4),
                     "confident_bf16": scores["bf16"][0], "frechet_bf16": round(scores["bf16"][1], 4),
                     "confident_diff_se": round(float(diffs[:, 0].std()), 4),
                     "frechet_diff_se": round(float(diffs[:, 1].std()), 4), "frechet_floor": round(floor, 4),
                     "relative_error_per_forward": round(relative_error, 5)})
    return relative_error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=512, help="digits samples per setting and precision")
    parser.add_argument("--bootstrap", type=int, default=100, help="paired bootstrap rounds for the digits table")
    parser.add_argument("--harness-num", type=int, default=4000, help="harness samples per set")
    parser.add_argument("--repeats", type=int, default=4, help="independent harness sample sets per precision")
    parser.add_argument("--out", default="benchmarks/results/bf16-quality.csv")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    env = environment("cpu")
    relative_error = digits(args, rows, env)
    harness(args, rows, env, relative_error)
    append_rows(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
