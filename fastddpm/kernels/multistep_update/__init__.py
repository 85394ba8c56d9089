"""Fused multistep update (DPM-Solver++, UniPC): the public op, dispatching to the Triton kernel or the twin."""

from __future__ import annotations

from typing import Sequence

import torch

from .._dispatch import check_update_inputs, registered_op_needed, resolve_impl
from ..update_rows import MAX_HISTORIES, NUM_ROWS
from . import naive

__all__ = ["multistep_update"]


def _multistep_update_impl(
    x: torch.Tensor, eps: torch.Tensor, k: torch.Tensor, coefs: torch.Tensor, history1: torch.Tensor,
    history2: torch.Tensor | None, history3: torch.Tensor | None, impl: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    history = [h for h in (history1, history2, history3) if h is not None]
    if impl == "triton":
        from .fused import multistep_update_triton  # Triton imports only when a kernel runs

        return multistep_update_triton(x, eps, k, coefs, history)
    return naive.multistep_update(x, eps, k, coefs, history)


# What torch.compile traces (and what a Triton call with grad-requiring inputs runs: see
# registered_op_needed); other eager calls run _multistep_update_impl itself.
_multistep_update_op = torch.library.custom_op("fastddpm::multistep_update", _multistep_update_impl, mutates_args=())


@_multistep_update_op.register_fake
def _(x, eps, k, coefs, history1, history2, history3, impl):
    return torch.empty_like(x), torch.empty_like(x)


def multistep_update(
    x: torch.Tensor, eps: torch.Tensor, k: torch.Tensor, coefs: torch.Tensor, history: Sequence[torch.Tensor],
    *, impl: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_next, x̂_0) with x̂_0 = X0_FROM_X·x + X0_FROM_EPS·ε and x_next = X·x + EPS·ε + X0·x̂_0 + Σ_j HISTORY_j·history[j−1]
    (``history`` newest first, 1 to 3 tensors like x); ``coefs`` the plan's float32 (NUM_ROWS, S) table,
    ``k`` (int, (B,)) each sample's step. float32 math, results in x's dtype."""
    history = list(history)
    if not 1 <= len(history) <= MAX_HISTORIES:
        raise ValueError(f"history must hold 1 to {MAX_HISTORIES} earlier x̂_0, got {len(history)}")
    for j, earlier in enumerate(history, 1):
        if earlier.shape != x.shape:
            raise ValueError(f"history[{j - 1}] must have x's shape {tuple(x.shape)}, got {tuple(earlier.shape)}")
    check_update_inputs(x, eps, coefs, NUM_ROWS, history[0], None, k=k)
    impl = resolve_impl(impl, x)
    h = [t.contiguous() for t in history] + [None] * (MAX_HISTORIES - len(history))
    op = _multistep_update_op if registered_op_needed(impl, x, eps, coefs, *history) else _multistep_update_impl
    return op(x.contiguous(), eps.contiguous(), k.contiguous(), coefs.contiguous(), h[0], h[1], h[2], impl)
