"""Fused ancestral DDPM update: the public op, dispatching to the Triton kernel or the torch twin."""

from __future__ import annotations

import torch

from .._dispatch import check_update_inputs, registered_op_needed, resolve_impl
from . import naive

__all__ = ["ddpm_step"]


def _ddpm_step_impl(
    x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, table: torch.Tensor, noise: torch.Tensor | None,
    seeds: torch.Tensor | None, impl: str,
) -> torch.Tensor:
    if impl == "triton":
        from .fused import ddpm_step_triton  # Triton is imported only when a kernel runs

        return ddpm_step_triton(x, eps, t, table, noise, seeds)
    return naive.ddpm_step(x, eps, t, table, noise, seeds)


# What torch.compile traces (and what a Triton call with grad-requiring inputs runs: see
# registered_op_needed); other eager calls run _ddpm_step_impl itself.
_ddpm_step_op = torch.library.custom_op("fastddpm::ddpm_step", _ddpm_step_impl, mutates_args=())


@_ddpm_step_op.register_fake
def _(x, eps, t, table, noise, seeds, impl):
    return torch.empty_like(x)


def ddpm_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    t: torch.Tensor,
    table: torch.Tensor,
    noise: torch.Tensor | None = None,
    seeds: torch.Tensor | None = None,
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """One ancestral step x_t → x_{t−1} given ε̂ = model(x_t, t), computed in float32, in x's dtype.

    ``table``: float32 (4, T) rows √(1/α), β, √(1−ᾱ), σ = √(posterior variance) (build it with
    ``GaussianDiffusion.ddpm_step_table()``). Noise: ``noise`` (same shape as x; results then match
    ``GaussianDiffusion.p_sample`` given that noise), or ``seeds`` (int64 (B,)) for counter-based noise
    keyed by (seed, t, element). Steps with t = 0 add no noise. Every t must lie in [0, T): it indexes
    the table on the device, unchecked (checking would sync with the host every step).
    """
    check_update_inputs(x, eps, table, 4, noise, seeds, t=t)
    impl = resolve_impl(impl, x)
    args = (x.contiguous(), eps.contiguous(), t.contiguous(), table.contiguous(),
            None if noise is None else noise.contiguous(), None if seeds is None else seeds.contiguous())
    return (_ddpm_step_op if registered_op_needed(impl, *args) else _ddpm_step_impl)(*args, impl)
