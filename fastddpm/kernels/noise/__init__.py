"""Per-sample counter-based Gaussian noise: the public op, dispatching to Triton or the torch twin."""

from __future__ import annotations

from typing import Sequence

import torch

from .._dispatch import registered_op_needed, resolve_impl
from . import naive

__all__ = ["randn_philox"]


def _randn_philox_impl(seeds: torch.Tensor, steps: torch.Tensor, sample_shape: Sequence[int], impl: str) -> torch.Tensor:
    if impl == "triton":
        from .fused import randn_philox_triton  # Triton is imported only when a kernel runs

        return randn_philox_triton(seeds, steps, tuple(sample_shape))
    return naive.randn_philox(seeds, steps, tuple(sample_shape))


# What torch.compile traces (and what a Triton call with grad-requiring inputs runs: see
# registered_op_needed); other eager calls run _randn_philox_impl itself.
_randn_philox_op = torch.library.custom_op("fastddpm::randn_philox", _randn_philox_impl, mutates_args=())


@_randn_philox_op.register_fake
def _(seeds, steps, sample_shape, impl):
    return seeds.new_empty((seeds.shape[0], *sample_shape), dtype=torch.float32)


def randn_philox(
    seeds: torch.Tensor, step: torch.Tensor | int, sample_shape: Sequence[int], *, impl: str | None = None
) -> torch.Tensor:
    """N(0, 1) noise (B, *sample_shape), float32: sample i depends only on (seeds[i], step, element index).

    ``step`` is an int or an integer tensor of shape () or (B,), 0 ≤ step < 2^32.
    """
    if seeds.ndim != 1 or seeds.dtype != torch.int64:
        raise ValueError(f"seeds must be a 1-D int64 tensor (one per sample), got {seeds.dtype} {tuple(seeds.shape)}")
    steps = torch.as_tensor(step, dtype=torch.int64, device=seeds.device).reshape(-1)
    steps = steps.expand(seeds.shape[0]).contiguous() if steps.numel() == 1 else steps.contiguous()
    if steps.shape != seeds.shape:
        raise ValueError(f"step must be a scalar or one per sample ({seeds.shape[0]}), got shape {tuple(steps.shape)}")
    impl = resolve_impl(impl, seeds)
    op = _randn_philox_op if registered_op_needed(impl) else _randn_philox_impl  # integer inputs: no grad
    return op(seeds.contiguous(), steps, [int(s) for s in sample_shape], impl)
