"""The module paths of the flat layout before 0.x's package-by-layer tree, kept importable this release.

``import fastddpm.sampler`` (and the other old paths) returns the module at its new home, so code written
against the flat layout keeps working; a DeprecationWarning names the new path. Nothing is imported until
an old path is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old path -> new path (both under fastddpm); fastddpm.train and fastddpm.bench are packages now that
# export what the old modules did.
MOVED = {
    "unet": "reference.unet",
    "diffusion": "reference.diffusion",
    "schedules": "solvers.timesteps",
    "sampler": "sampling.sampler",
    "adapters": "sampling.adapters",
    "checkpoint": "io.checkpoint",
    "fileio": "io.files",
    "distributed": "io.shards",
    "onnx_export": "onnx",
    "ort_sampler": "onnx.runtime",
    "timestep_fit": "fit.timesteps",
    "data": "train.data",
    "quality": "eval.quality",
    "oracle": "eval.oracle",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.spec = module.__spec__  # importlib sets the alias's spec on it next: put the real one back after
        return module

    def exec_module(self, module):  # the target module is already executed
        module.__spec__ = self.spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.partition(".")
        if package != "fastddpm" or name not in MOVED:
            return None
        new = f"fastddpm.{MOVED[name]}"
        warnings.warn(f"{fullname} moved to {new}; the old path is removed in the next release",
                      DeprecationWarning, stacklevel=2)  # warn skips importlib's frames: 2 is the importer
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install() -> None:
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())  # before the path finder: fastddpm/data/ is a folder of weights
