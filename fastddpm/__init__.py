"""fastddpm: a seed-exact DDPM reference (annotated-diffusion) and a fast sampling engine beside it."""

from ._version import __version__
from .diffusion import (
    BETA_SCHEDULES,
    LOSS_TYPES,
    DiffusionConfig,
    GaussianDiffusion,
    cosine_beta_schedule,
    linear_beta_schedule,
    quadratic_beta_schedule,
    sigmoid_beta_schedule,
)
from .checkpoint import CheckpointError, load, save
from .sampler import Sampler
from .timestep_fit import FittedTimesteps, fit_timesteps
# onnx and onnxruntime (the "onnx" extra) are imported only when these are called.
from .onnx_export import OnnxModelError, export_onnx, export_onnx_sampler
from .ort_sampler import OrtSampler
from .unet import Unet, UnetConfig

__all__ = [
    "__version__",
    "Unet",
    "UnetConfig",
    "Sampler",
    "fit_timesteps",
    "FittedTimesteps",
    "OrtSampler",
    "export_onnx",
    "export_onnx_sampler",
    "OnnxModelError",
    "save",
    "load",
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
