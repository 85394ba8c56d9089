"""The pytest-benchmark suite (``pytest benchmarks --benchmark-only``); CI runs none of it.

Each benchmark first checks its fast path against the reference computation with the same inputs, then
times it. The model is the preset named by ``FASTDDPM_BENCH_PRESET`` (default "fashion", the reference's
Fashion-MNIST U-Net; "tiny" for a quick pass), the batch ``FASTDDPM_BENCH_BATCH`` (default 64), on CUDA
when there is one. Save and compare runs with pytest-benchmark's own flags (``--benchmark-autosave``,
``--benchmark-compare``); ``fastddpm bench`` prints the side-by-side table with speed-ups.
"""

import os

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Every benchmark checks its fast path against float32 first: TF32 (cuDNN's default) would differ by ~1e-3.
torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
ROUNDS = 3


@pytest.fixture(scope="session")
def preset():
    from fastddpm.bench import PRESETS

    name = os.environ.get("FASTDDPM_BENCH_PRESET", "fashion")
    if name not in PRESETS:
        raise pytest.UsageError(f"FASTDDPM_BENCH_PRESET={name!r}; expected one of {tuple(PRESETS)}")
    return PRESETS[name]


@pytest.fixture(scope="session")
def batch():
    return int(os.environ.get("FASTDDPM_BENCH_BATCH", "64"))


@pytest.fixture(scope="session")
def model_and_diffusion(preset):
    from fastddpm.bench.matrix import _load_preset

    return _load_preset(preset, DEVICE)


def run(benchmark, fn, rounds=ROUNDS):
    """Time ``fn`` (one warm-up call apart, CUDA synchronised inside each timed call)."""

    def timed():
        out = fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out

    return benchmark.pedantic(timed, rounds=rounds, warmup_rounds=1, iterations=1)
