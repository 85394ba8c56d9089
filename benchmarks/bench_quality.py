"""Real-data score of the bundled digits model per sampler and step count (a benchmark, not a test).

A small classifier (logistic regression) is fit in-process on scikit-learn's 8×8 digits; samples (16×16)
are average-pooled back to 8×8 and scored: the share the classifier recognises confidently (max class
probability ≥ 0.9), and the diversity of the recognised classes (how many of the ten appear, and the
entropy of their histogram in bits; log2(10) ≈ 3.32 for a uniform spread). The classifier's own
held-out accuracy and the same scores on real held-out digits are printed as the reference.

    python benchmarks/bench_quality.py [--num 256] [--out benchmarks/results/quality.csv]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import append_rows, environment  # noqa: E402


def fit_classifier():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    x, y = digits.images.reshape(len(digits.images), -1) / 16.0, digits.target
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, test = order[: len(x) * 4 // 5], order[len(x) * 4 // 5 :]
    clf = LogisticRegression(max_iter=2000).fit(x[train], y[train])
    return clf, x[test], y[test]


def score(clf, pixels: np.ndarray) -> dict:
    probs = clf.predict_proba(pixels)
    confident = probs.max(1) >= 0.9
    labels = probs.argmax(1)[confident]
    counts = np.bincount(labels, minlength=10)
    p = counts[counts > 0] / max(1, counts.sum())
    return {"confident": round(float(confident.mean()), 3), "classes": int((counts > 0).sum()),
            "entropy_bits": round(float(-(p * np.log2(p)).sum()), 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/results/quality.csv")
    args = parser.parse_args(argv)

    import fastddpm
    from fastddpm import Sampler

    clf, x_test, y_test = fit_classifier()
    env = environment("cpu")
    rows = []
    print(f"classifier held-out accuracy: {clf.score(x_test, y_test):.3f}")
    real = score(clf, x_test)
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
        pooled = F.avg_pool2d((images + 1) / 2, 2).reshape(args.num, -1).numpy()  # 16×16 → 8×8 in [0, 1]
        result = score(clf, pooled)
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
