"""Triton kernels, installed as ``fastddpm.kernels`` (the top-level name ``kernels`` is another PyPI project's).

Each op is a folder: ``fused.py`` (the Triton kernel and its launcher), ``naive.py`` (the pure-torch twin,
same signature) and ``__init__.py`` (the public op: guards, dispatch, ``torch.library`` registration with a
fake implementation so ``torch.compile`` can trace it; eager calls skip the registration, see
``_dispatch.registered_op_needed``). Triton is imported only when a kernel runs.
"""

from ._dispatch import ENV_VAR, IMPLS, interpreting, resolve_impl, triton_available
from .ddpm_step import ddpm_step
from .linear_attention import linear_attention
from .linear_step import linear_step
from .multistep_update import multistep_update
from .noise import randn_philox
from .q_sample import q_sample

__all__ = [
    "q_sample",
    "ddpm_step",
    "linear_attention",
    "linear_step",
    "multistep_update",
    "randn_philox",
    "resolve_impl",
    "triton_available",
    "interpreting",
    "IMPLS",
    "ENV_VAR",
]
