"""What every benchmark row records (versions, git SHA, device, flags) and appending rows to a CSV: the
same helpers ``fastddpm bench`` uses, for the scripts in this folder."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fastddpm.bench.probes import device_name, environment
from fastddpm.bench.report import append_csv

__all__ = ["append_rows", "device_name", "environment", "harness_setting"]

NARROW = 2  # the harness mixture's narrow component (std 0.05): its spread ratio is the sharpest check


def harness_setting(num: int):
    """The exact-ε harness the solver benchmarks share (the tests keep their own in tests/solver_harness.py):
    (T=1000 linear diffusion, its 3-component Gaussian mixture on 1×2×2 images, 4 sets of ``num`` exact draws
    to judge against, the generator that drew them — draw more exact sets from it)."""
    from fastddpm import GaussianDiffusion
    from fastddpm.eval.oracle import GaussianMixture

    diffusion = GaussianDiffusion(1000)
    means = torch.tensor([[-1.0, -1.0, 0.5, 0.0], [1.0, 0.8, -0.5, 0.2], [0.0, 1.0, 1.0, -1.0]])
    mix = GaussianMixture(means, [0.1, 0.2, 0.05], [0.5, 0.3, 0.2], diffusion.alphas_cumprod, (1, 2, 2))
    generator = torch.Generator().manual_seed(0)
    references = [mix.sample(num, generator)[0] for _ in range(4)]
    return diffusion, mix, references, generator


def append_rows(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append rows to a CSV (a file with another header is left alone: the rows go to a new file beside it)."""
    if rows:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        append_csv(path, rows)
