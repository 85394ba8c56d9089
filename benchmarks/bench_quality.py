"""Real-data score of the bundled digits model per sampler and step count (a benchmark, not a test).

The score is ``fastddpm.eval.quality.digits_score``: a logistic regression fit in-process on scikit-learn's 8×8
digits scores the samples pooled to 8×8 — the share recognised confidently (max class probability ≥ 0.9),
and the diversity of the recognised classes (how many of the ten appear, and the entropy of their
histogram in bits; log2(10) ≈ 3.32 for a uniform spread). The classifier's own
held-out accuracy and the same scores on real held-out digits are printed as the reference.

    python benchmarks/bench_quality.py [--num 256] [--out benchmarks/results/quality.csv]
"""

from __future__ import annotations

import argparse
import math
import sys
import time


sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import append_rows, environment  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/results/quality.csv")
    args = parser.parse_args(argv)

    import fastddpm
    from fastddpm import Sampler

    from fastddpm.eval.quality import digits_classifier, digits_score, score_pixels

    clf, x_test, y_test = digits_classifier()
    env = environment("cpu")
    rows = []
    print(f"classifier held-out accuracy: {clf.score(x_test, y_test):.3f}")
    real = score_pixels(x_test)
    print(f"real held-out digits: {real}")
    rows.append({**env, "sampler": "real digits", "steps": "", "spacing": "", "seconds": "", **real})

    model, diffusion = fastddpm.load()
    configs = [("ddpm", None, "logsnr"), ("ddim", 10, "logsnr"), ("ddim", 20, "logsnr"), ("ddim", 50, "logsnr"),
               ("dpmsolver++", 10, "logsnr"), ("dpmsolver++", 20, "logsnr"), ("dpmsolver++", 50, "logsnr"),
               ("dpmsolver++", 20, "trailing")]
    print("| sampler | steps | spacing | confident | classes | entropy (bits) | seconds |")
    print("|---|---|---|---|---|---|---|")
    for method, steps, spacing in configs:
        sampler = Sampler(model, diffusion, method=method, steps=steps, spacing=spacing)
        start = time.perf_counter()
        images = sampler.sample(args.num, 16, 1, seed=0, noise="philox", progress=False)
        seconds = time.perf_counter() - start
        result = digits_score(images)  # 16×16 pooled to 8×8
        label_steps = steps or diffusion.num_timesteps
        rows.append({**env, "sampler": method, "steps": label_steps, "spacing": spacing,
                     "seconds": round(seconds, 1), **result})
        print(f"| {method} | {label_steps} | {spacing} | {result['confident']:.3f} | {result['classes']} | "
              f"{result['entropy_bits']:.2f} | {seconds:.1f} |")
    append_rows(args.out, rows)
    print(f"wrote {len(rows)} rows to {args.out} ({env['device']}); uniform entropy would be {math.log2(10):.2f} bits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
