"""The one place that owns compiler settings: torch.compile options and inductor configuration.

Why these settings (measured on the 2-core CPU machine, the reference Fashion-MNIST U-Net, batch 64, see
shared/NOTES.md): plain torch.compile gives 0.35 s per forward against 0.44 s eager; adding inductor's
``freezing`` (weights folded as constants, valid because sampling never trains) gives 0.28 s. First
compiles take about 110 s there, so compiled steps are cached per (batch, shape, dtype) and reused.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from .config import FrozenConfig

__all__ = ["CompileConfig", "compile_step"]


@dataclasses.dataclass(frozen=True)
class CompileConfig(FrozenConfig):
    """torch.compile settings for a sampling step; frozen, with a JSON round-trip."""

    mode: str | None = None  # a torch.compile mode; when set, it replaces the inductor options below
    fullgraph: bool = True  # the step has no graph breaks: fail loudly if one appears
    dynamic: bool = False  # one specialised graph per (batch, shape, dtype)
    freezing: bool = True  # fold weights into the graph as constants (inference only)


def compile_step(fn: Callable[..., Any], config: CompileConfig | None = None) -> Callable[..., Any]:
    """``torch.compile(fn)`` with ``config``'s options; inductor settings applied here and nowhere else."""
    config = config or CompileConfig()
    if config.mode is not None:
        return torch.compile(fn, mode=config.mode, fullgraph=config.fullgraph, dynamic=config.dynamic)
    options = {"freezing": config.freezing}
    return torch.compile(fn, fullgraph=config.fullgraph, dynamic=config.dynamic, options=options)
