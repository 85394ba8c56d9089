"""A real-data quality proxy for digit samples: a small classifier fit in-process on scikit-learn's digits.

Samples (any size, one channel, in [−1, 1]) are average-pooled to 8×8 and scored by a logistic
regression fit on 4/5 of scikit-learn's 8×8 digits: the share it recognises confidently (max class
probability ≥ 0.9) and the diversity of the recognised classes (how many of the ten appear, and the
entropy of their histogram in bits; log2(10) ≈ 3.32 for a uniform spread). Needs the ``digits`` extra.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["digits_classifier", "digits_score", "score_pixels", "pooled_pixels", "frechet_distance", "real_digits"]

CONFIDENT = 0.9


@functools.lru_cache(maxsize=1)
def digits_classifier():
    """(classifier, held-out 8×8 pixels in [0, 1], held-out labels); fit once per process."""
    # scikit-learn is optional (the `digits` extra): imported only when a score is asked for.
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    x, y = digits.images.reshape(len(digits.images), -1) / 16.0, digits.target
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[: len(x) * 4 // 5], order[len(x) * 4 // 5 :]
    clf = LogisticRegression(max_iter=2000).fit(x[train], y[train])
    return clf, x[test], y[test]


def score_pixels(pixels: np.ndarray) -> dict:
    """Scores of 8×8 images flattened to (N, 64), in [0, 1]."""
    clf = digits_classifier()[0]
    probs = clf.predict_proba(pixels)
    confident = probs.max(1) >= CONFIDENT
    counts = np.bincount(probs.argmax(1)[confident], minlength=10)
    p = counts[counts > 0] / max(1, counts.sum())
    return {"confident": round(float(confident.mean()), 3), "classes": int((counts > 0).sum()),
            "entropy_bits": round(float(-(p * np.log2(p)).sum()), 2)}


def digits_score(images: torch.Tensor) -> dict:
    """Scores of samples (N, 1, H, W) in [−1, 1] with H and W multiples of 8."""
    return score_pixels(pooled_pixels(images))


def pooled_pixels(images: torch.Tensor) -> np.ndarray:
    """Samples (N, 1, H, W) in [−1, 1], H and W multiples of 8, average-pooled to 8×8 in [0, 1]: (N, 64)."""
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] % 8 or images.shape[3] % 8:
        raise ValueError(f"digit samples must be (N, 1, H, W) with H, W multiples of 8; got {tuple(images.shape)}")
    factor = (images.shape[2] // 8, images.shape[3] // 8)
    pooled = F.avg_pool2d((images.detach().float().cpu().clamp(-1, 1) + 1) / 2, factor)
    return pooled.reshape(len(images), -1).numpy().astype(np.float64)


def real_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits in [0, 1], (N, 64): the classifier's training 4/5 (the Fréchet reference)
    and its held-out 1/5 (real samples for the real-vs-real floor)."""
    from sklearn.datasets import load_digits  # the `digits` extra

    digits = load_digits()
    x = digits.images.reshape(len(digits.images), -1) / 16.0
    order = np.random.default_rng(0).permutation(len(x))  # the split digits_classifier uses
    return x[order[: len(x) * 4 // 5]], x[order[len(x) * 4 // 5 :]]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fit to two point sets (N, D): ‖μa − μb‖² + tr(Σa + Σb − 2(ΣaΣb)^½)
    (the FID formula, here on whatever features are passed)."""
    from scipy import linalg  # scipy comes with scikit-learn (the `digits` extra)

    mu_a, mu_b = a.mean(0), b.mean(0)
    # A small ridge: some digit pixels (the corners) are always 0, so the covariances are singular.
    ridge = 1e-6 * np.eye(a.shape[1])
    cov_a, cov_b = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
    root = linalg.sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root.real))
