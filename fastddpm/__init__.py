"""fastddpm: an exact DDPM reference (the annotated-diffusion code) and a fast sampling engine beside it."""

from ._version import __version__
from . import _aliases
from .reference.diffusion import (
    BETA_SCHEDULES,
    LOSS_TYPES,
    DiffusionConfig,
    GaussianDiffusion,
    cosine_beta_schedule,
    linear_beta_schedule,
    quadratic_beta_schedule,
    sigmoid_beta_schedule,
)
from .io.checkpoint import CheckpointError, load, save
from .finite import NonFiniteSampleError
from .sampling.sampler import Sampler
from .fit.solver import FittedSolver, fit_solver
from .fit.timesteps import FittedTimesteps, fit_timesteps
from .defaults import load_sampler
# onnx and onnxruntime (the "onnx" extra) are imported only when these are called.
from .onnx import OnnxModelError, OrtSampler, export_onnx, export_onnx_sampler
from .reference.unet import Unet, UnetConfig
from .solvers import StepPlan, build_plan

__all__ = [
    "__version__",
    "Unet",
    "UnetConfig",
    "Sampler",
    "NonFiniteSampleError",
    "StepPlan",
    "build_plan",
    "fit_solver",
    "FittedSolver",
    "fit_timesteps",
    "FittedTimesteps",
    "OrtSampler",
    "export_onnx",
    "export_onnx_sampler",
    "OnnxModelError",
    "save",
    "load",
    "load_sampler",
    "CheckpointError",
    "GaussianDiffusion",
    "DiffusionConfig",
    "BETA_SCHEDULES",
    "LOSS_TYPES",
    "linear_beta_schedule",
    "cosine_beta_schedule",
    "quadratic_beta_schedule",
    "sigmoid_beta_schedule",
]

_aliases.install()  # the flat layout's module paths (fastddpm.sampler, …) this release
