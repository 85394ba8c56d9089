"""What fastddpm samples with when nobody says: a named few-step setting chosen for the bundled model, or
DPM-Solver++ for any other model. ``fastddpm sample`` and :func:`load_sampler` share this, so the README's
Python example draws what the command line draws.

- The bundled digits model samples with ``BUNDLED_DEFAULT`` (UniPC, 5 evaluations, linspace), the best
  5-evaluation setting on the digits proxy and better there than the 1000-step ancestral sampler
  (docs/sampling.md). A solver fitted to it (``fastddpm fit-solver --steps 5``) ships beside it
  (:func:`bundled_solver`) for ``fastddpm sample --solver``; it matches its ODE teacher, which scores lower.
- Any other model gets DPM-Solver++ (2M) over ``DEFAULT_STEPS`` steps spaced evenly in log-SNR: at 20
  steps the spacings tie on the digits proxy, and logsnr is the closest to a float64 solve on the
  exact-ε harness (docs/sampling.md).
- The reference's own sampler (ancestral, every timestep) is ``method="ddpm"``: one keyword away.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .fit.solver import FittedSolver, model_sha256
from .io.checkpoint import load, read_model_identity
from .reference.diffusion import GaussianDiffusion
from .sampling.sampler import Sampler

__all__ = ["DEFAULT_METHOD", "DEFAULT_STEPS", "DEFAULT_SPACING", "BUNDLED_DEFAULT", "bundled_solver_path", "bundled_solver",
           "default_sampler_kwargs", "solver_settings", "load_sampler"]

DEFAULT_METHOD = "dpmsolver++"
DEFAULT_STEPS = 20  # diffusers' advice for DPM-Solver++ on an unknown model; the digits model needs ~10
DEFAULT_SPACING = "logsnr"
# The bundled digits model's default: UniPC over 5 steps spaced evenly from t = T−1 down to 0 ("linspace": the
# last evaluation is at t = 0). On the digits proxy (512 samples; docs/sampling.md) it beats the reference's
# 1000-step ancestral sampler on the confident share and on the Fréchet distance, and the solver fitted to
# the model, whose ODE teacher scores below the ancestral sampler.
BUNDLED_DEFAULT = {"method": "unipc", "steps": 5, "eta": None, "spacing": "linspace", "order": None}


def bundled_solver_path() -> Path:
    """The solver fitted to the bundled model (5 evaluations), shipped beside it."""
    return Path(__file__).resolve().parent / "data" / "digits16-solver5.json"


@functools.lru_cache(maxsize=1)
def bundled_solver() -> FittedSolver:
    """The bundled model's fitted solver (read once; a FittedSolver is frozen)."""
    return FittedSolver.from_json(bundled_solver_path().read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=4)
def _bundled_identity(dtype: torch.dtype) -> tuple[str, Any]:
    """(sha256 of the bundled model's weights as a Unet of default dtype ``dtype`` holds them, its diffusion
    config); read once per process and dtype, without building the model."""
    return read_model_identity(dtype=dtype)


def default_sampler_kwargs(model: Any, diffusion: GaussianDiffusion) -> dict[str, Any]:
    """The solver keywords of :class:`Sampler` (and ``OrtSampler``, ``export_onnx_sampler``) for ``model``:
    ``BUNDLED_DEFAULT`` when ``model`` has the bundled weights and diffusion (checked by sha256, ~10 ms),
    else ``DEFAULT_METHOD`` over ``min(DEFAULT_STEPS, T)`` steps. Both are the five named keys a sharded run
    keys its shards by (a resume that names them must match)."""
    try:
        bundled = _bundled_identity(torch.get_default_dtype())
    except (OSError, ValueError) as exc:  # a broken install: sample with the named default, and say so
        warnings.warn(f"the bundled model cannot be read ({exc}); using {DEFAULT_METHOD} instead", RuntimeWarning,
                      stacklevel=2)
        bundled = None
    if bundled is not None and diffusion.config == bundled[1] and model_sha256(model) == bundled[0]:
        return dict(BUNDLED_DEFAULT)
    return solver_settings(None, diffusion, method=DEFAULT_METHOD)


def solver_settings(model: Any, diffusion: GaussianDiffusion | None, *, method: str | None = None,
                    steps: int | None = None, eta: float | None = None, spacing: str | None = None,
                    order: int | None = None) -> dict[str, Any]:
    """The solver keywords for the settings a user gave (None: not given), as the CLI reads its flags: none
    at all → :func:`default_sampler_kwargs` (a named default when ``model`` is None); some → those, with
    ``DEFAULT_METHOD`` (ddim when ``eta`` is given), ``DEFAULT_SPACING`` and (for the few-step methods)
    ``DEFAULT_STEPS`` for the missing ones. ``method="ddpm"`` without ``steps`` is the reference's sampler over every timestep."""
    if all(v is None for v in (method, steps, eta, spacing, order)) and model is not None and diffusion is not None:
        return default_sampler_kwargs(model, diffusion)
    method = method or ("ddim" if eta is not None else DEFAULT_METHOD)  # η is DDIM's
    if steps is None and method != "ddpm":
        steps = DEFAULT_STEPS if diffusion is None else min(DEFAULT_STEPS, diffusion.num_timesteps)
    return {"method": method, "steps": steps, "eta": eta, "spacing": spacing or DEFAULT_SPACING, "order": order}


def load_sampler(path: str | os.PathLike | None = None, *, device: torch.device | str = "cpu",
                 method: str | None = None, steps: int | None = None, eta: float | None = None,
                 spacing: str | None = None, order: int | None = None, **sampler_options: Any) -> Sampler:
    """A :class:`Sampler` for a checkpoint (the bundled model when ``path`` is None) as ``fastddpm sample``
    makes it: with no solver keyword, the default solver (:func:`default_sampler_kwargs`); with some, those
    completed by :func:`solver_settings`. ``plan=`` / ``timesteps=`` and the rest (``backend=``, ``dtype=``)
    pass through to ``Sampler``."""
    model, diffusion = load(path, device=device)
    if "plan" in sampler_options or "timesteps" in sampler_options:
        settings = {k: v for k, v in dict(method=method, steps=steps, eta=eta, spacing=spacing, order=order).items()
                    if v is not None}
        if "timesteps" in sampler_options:  # explicit timesteps, solved by the default method unless told
            settings.setdefault("method", DEFAULT_METHOD)
    else:
        settings = solver_settings(model, diffusion, method=method, steps=steps, eta=eta, spacing=spacing, order=order)
    return Sampler(model, diffusion, **settings, **sampler_options)
