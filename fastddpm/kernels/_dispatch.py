"""Which implementation an op runs: the Triton kernel or its pure-torch twin.

``impl`` may be "auto" (Triton for CUDA tensors when Triton imports; torch otherwise), "triton" or
"torch". The environment variable ``FASTDDPM_KERNELS`` sets the default for every op (same values).
With ``TRITON_INTERPRET=1`` set before Triton is imported, "triton" also runs on CPU tensors, through
the Triton interpreter: that is how the CPU test suite proves the kernels.
"""

from __future__ import annotations

import os

import torch

__all__ = ["IMPLS", "ENV_VAR", "registered_op_needed", "resolve_impl", "triton_available", "interpreting"]

IMPLS = ("auto", "triton", "torch")
ENV_VAR = "FASTDDPM_KERNELS"


_TRITON_AVAILABLE: bool | None = None  # cached by hand: torch.compile traces through lru_cache wrappers


def triton_available() -> bool:
    global _TRITON_AVAILABLE
    if _TRITON_AVAILABLE is None:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401

            _TRITON_AVAILABLE = True
        except Exception:  # ImportError, or a broken install raising at import
            _TRITON_AVAILABLE = False
    return _TRITON_AVAILABLE


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def registered_op_needed(impl: str, *tensors: torch.Tensor | None) -> bool:
    """True under torch.compile, whose tracer must see an op's registered custom op, and for a Triton kernel
    given inputs that require grad: the registered op has no autograd formula, so a backward through it
    fails loudly where the kernel's output would silently carry no gradient. Otherwise (eager code, a CUDA
    graph capture included) the op calls its implementation itself: the registered op's dispatch adds only
    a cost there, its first call importing torch._dynamo, sympy and ~900 more modules (2.6 s on the 2-core
    CPU machine; on the H200 machine 3.6 s of a 5.0 s first 5-step sample on CUDA). The torch twins are
    differentiable when called directly."""
    if torch.compiler.is_compiling():
        return True
    return impl == "triton" and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def resolve_impl(impl: str | None, *tensors: torch.Tensor) -> str:
    """Turn ``impl`` (or the environment default) into "triton" or "torch" for these tensors."""
    choice = impl if impl is not None else os.environ.get(ENV_VAR, "auto")
    if choice not in IMPLS:
        source = "impl" if impl is not None else ENV_VAR
        raise ValueError(f"{source} must be one of {IMPLS}, got {choice!r}")
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if choice == "torch":
        return "torch"
    runnable = triton_available() and (on_cuda or interpreting())
    if choice == "auto":
        return "triton" if runnable and on_cuda else "torch"
    if not runnable:
        why = "Triton does not import" if not triton_available() else "the tensors are not on a CUDA device"
        raise RuntimeError(
            f"impl='triton' cannot run here: {why} (set TRITON_INTERPRET=1 before importing triton to "
            "interpret kernels on CPU, or use impl='torch')"
        )
    return "triton"


def check_update_inputs(x, eps, table, rows: int, noise, seeds, **indices) -> None:
    """Shared guards of the sampler-update ops: one noise source, matching shapes, integer per-sample
    indices, a float32 (rows, S) coefficient table on x's device, int64 per-sample seeds."""
    if (noise is None) == (seeds is None):
        raise ValueError("pass exactly one noise source: noise=<tensor like x> or seeds=<int64 (B,)>")
    if eps.shape != x.shape or (noise is not None and noise.shape != x.shape):
        raise ValueError(f"eps and noise must have x's shape {tuple(x.shape)}")
    for name, index in indices.items():
        if index.ndim != 1 or index.shape[0] != x.shape[0] or index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be int64/int32 step indices shaped ({x.shape[0]},), got {index.dtype} {tuple(index.shape)}")
    if table.ndim != 2 or table.shape[0] != rows or table.dtype != torch.float32 or table.device != x.device:
        raise ValueError(
            f"table must be float32 ({rows}, S) on {x.device}, got {table.dtype} {tuple(table.shape)} on {table.device}"
        )
    if seeds is not None and (seeds.dtype != torch.int64 or seeds.shape != (x.shape[0],)):
        raise ValueError(f"seeds must be int64 shaped ({x.shape[0]},), got {seeds.dtype} {tuple(seeds.shape)}")
