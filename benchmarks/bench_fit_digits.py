"""Timesteps fitted to the bundled digits model against the named spacings (a benchmark, not a test).

For each (steps, order): ``fastddpm.fit_timesteps`` on the bundled model (fit batch: philox seeds from
100000 on, teacher DPM-Solver++(2M) over 50 logsnr steps), then 512 samples (seeds 0–511, never seen by
the fit) with the fitted timesteps and with "logsnr", "logsnr-sqrt" and the spacing the fit started
from, scored by ``fastddpm.eval.quality.digits_score`` (share confidently recognised, classes, entropy) and by
the held-out distance to the teacher the fit reports.

    python benchmarks/bench_fit_digits.py [--steps 10] [--orders 2 3] [--out benchmarks/results/fit-digits.csv]
"""

from __future__ import annotations

import argparse
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import append_rows, environment  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10])
    parser.add_argument("--orders", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--num", type=int, default=512)
    parser.add_argument("--fit-batch", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/fit-digits.csv")
    args = parser.parse_args(argv)

    import fastddpm
    from fastddpm import Sampler, fit_timesteps
    from fastddpm.eval.quality import digits_score

    model, diffusion = fastddpm.load()
    env = environment("cpu")
    rows = []
    print("| solver | steps | timesteps | confident | classes | entropy (bits) |")
    print("|---|---|---|---|---|---|")
    for steps in args.steps:
        for order in args.orders:
            fit = fit_timesteps(model, diffusion, steps, image_size=16, channels=1, order=order,
                                batch_size=args.fit_batch, teacher_steps=50, seed=100000, progress=True)
            print(f"fitted {list(fit.timesteps)} from {fit.start} in {fit.seconds:.0f} s; held-out distance to the "
                  f"teacher {fit.heldout_start_error:.4f} -> {fit.heldout_error:.4f}")
            name = f"dpmsolver++ ({'3M' if order == 3 else '2M'})"
            spacings = {"logsnr": "logsnr", "logsnr-sqrt": "logsnr-sqrt", fit.start: fit.start,
                        "fitted": list(fit.timesteps)}
            for label, spacing in spacings.items():
                sampler = Sampler(model, diffusion, method="dpmsolver++", steps=steps, spacing=spacing, order=order)
                result = digits_score(sampler.sample(args.num, 16, 1, seed=0, noise="philox", progress=False))
                print(f"| {name} | {steps} | {label} | {result['confident']:.3f} | {result['classes']} | "
                      f"{result['entropy_bits']:.2f} |")
                distance = {"fitted": fit.heldout_error, fit.start: fit.heldout_start_error}.get(label)
                rows.append({**env, "solver": name, "steps": steps, "timesteps": label,
                             "heldout_teacher_distance": "" if distance is None else round(distance, 5), **result})
    append_rows(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
