"""Fused linear sampler update (DDIM, respaced DDPM): the public op, dispatching to Triton or the twin."""

from __future__ import annotations

import torch

from .._dispatch import check_update_inputs, registered_op_needed, resolve_impl
from ..update_rows import NUM_ROWS
from . import naive

__all__ = ["linear_step"]


def _linear_step_impl(
    x: torch.Tensor, eps: torch.Tensor, k: torch.Tensor, coefs: torch.Tensor, t: torch.Tensor,
    noise: torch.Tensor | None, seeds: torch.Tensor | None, impl: str,
) -> torch.Tensor:
    if impl == "triton":
        from .fused import linear_step_triton  # Triton is imported only when a kernel runs

        return linear_step_triton(x, eps, k, coefs, t, noise, seeds)
    return naive.linear_step(x, eps, k, coefs, t, noise, seeds)


# What torch.compile traces (and what a Triton call with grad-requiring inputs runs: see
# registered_op_needed); other eager calls run _linear_step_impl itself.
_linear_step_op = torch.library.custom_op("fastddpm::linear_step", _linear_step_impl, mutates_args=())


@_linear_step_op.register_fake
def _(x, eps, k, coefs, t, noise, seeds, impl):
    return torch.empty_like(x)


def linear_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    k: torch.Tensor,
    coefs: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None = None,
    seeds: torch.Tensor | None = None,
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """x_next = X_k·x + EPS_k·ε + X0_k·x̂_0 + NOISE_k·z, x̂_0 = X0_FROM_X_k·x + X0_FROM_EPS_k·ε (float32 math,
    x's dtype); ``coefs`` the plan's float32
    (NUM_ROWS, S) table (rows named in ``fastddpm.kernels.update_rows``).

    ``k`` (int, (B,)) picks the column; ``t`` (int, (B,)) is the diffusion timestep keying counter-based
    noise when ``seeds`` is given instead of ``noise``. Steps with NOISE_k = 0 add no noise.
    """
    check_update_inputs(x, eps, coefs, NUM_ROWS, noise, seeds, k=k, t=t)
    impl = resolve_impl(impl, x)
    args = (x.contiguous(), eps.contiguous(), k.contiguous(), coefs.contiguous(), t.contiguous(),
            None if noise is None else noise.contiguous(), None if seeds is None else seeds.contiguous())
    return (_linear_step_op if registered_op_needed(impl, *args) else _linear_step_impl)(*args, impl)
