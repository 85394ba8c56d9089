"""ONNX export of an ε-model (:func:`export_onnx`) and of a whole sampler (:func:`export_onnx_sampler`).

The ε-model: input ``x`` (float32, B×C×H×W) and ``t`` (int64, B), output ``eps`` (float32); a dynamic
batch axis, and dynamic height/width (multiples of the model's size divisor) when the model's graph
allows; opset 18; checked with ``onnx.checker``. The diffusion's config and schedule tables, the image
size and channels sit in the model's metadata (``fastddpm.onnx.metadata``), so the ``.onnx`` file alone is
enough to sample. ``precision="fp16"`` stores float16 weights and runs the network in float16 while its
inputs and output stay float32 (the sampler's state stays float32).

The whole sampler is the plan's step as the body of one ONNX ``Loop`` (``fastddpm.onnx.graphs``); its
coefficients are the plan's, so ONNX Runtime visits the same timesteps with the same float32
coefficients as the torch sampler.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .._version import __version__
from ..reference.diffusion import GaussianDiffusion
from ..solvers import StepPlan, build_plan, plan_fits
from .graphs import OPSET, build_sampler_model
from .metadata import (EPS_MODEL, FORMAT_VERSION, PRECISIONS, SAMPLER_MODEL, OnnxModelError, _save, _set_metadata,
                       read_onnx)

__all__ = ["export_onnx", "export_onnx_sampler"]


class _FloatIO(nn.Module):
    """The model in float16 with float32 inputs and output. Every module with a float16 weight casts its
    floating inputs to that dtype first: the reference U-Net's sinusoidal time features are float32 and would
    otherwise meet a float16 Linear."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = copy.deepcopy(model).half()
        for module in self.inner.modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dtype == torch.float16:
                module.register_forward_pre_hook(_cast_inputs_to_weight)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.inner(x.half(), t).float()


def _cast_inputs_to_weight(module, args):
    dtype = module.weight.dtype
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    diffusion: GaussianDiffusion,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    precision: str = "fp32",
    dynamic_size: bool = True,
) -> Path:
    """Export the ε-model ``model(x, t)`` to ``path`` (written atomically) with the diffusion in its
    metadata. ``image_size``/``channels`` default to a fastddpm ``Unet``'s own (``image_size`` is then
    required: a Unet does not know it). Returns the path."""
    proto, meta = _export_eps_proto(model, diffusion, image_size, channels, precision, dynamic_size)
    _set_metadata(proto, meta)
    return _save(proto, path)


def _export_eps_proto(model, diffusion, image_size, channels, precision, dynamic_size):
    import onnx  # the "onnx" extra

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not isinstance(diffusion, GaussianDiffusion):
        raise TypeError("diffusion must be a fastddpm.GaussianDiffusion (its config goes in the metadata)")
    config = getattr(model, "config", None)
    if channels is None:
        channels = getattr(config, "channels", None)
        if channels is None:
            raise ValueError("channels is required for a model that does not record it (model.config.channels)")
    if image_size is None:
        raise ValueError("image_size is required: the default sampling size stored in the export")
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    divisor = int(getattr(model, "size_divisor", 1))
    if height % divisor or width % divisor:
        raise ValueError(f"image size {height}x{width} is not divisible by the model's size divisor {divisor}")

    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        module = model if precision == "fp32" else _FloatIO(model)
        example = (torch.zeros(2, channels, height, width, device=device), torch.tensor([0, 1], device=device))
        attempts = [True, False] if dynamic_size else [False]
        error = None
        for dynamic in attempts:
            try:
                program = _torch_export(module, example, divisor, dynamic)
                break
            except Exception as exc:  # a graph that specialises on H/W: retry with a fixed size
                error = exc
        else:
            raise RuntimeError(f"torch.onnx.export failed: {str(error).splitlines()[0]}") from error
    finally:
        model.train(was_training)
    proto = program.model_proto
    proto.producer_name, proto.producer_version = "fastddpm", __version__
    onnx.checker.check_model(proto)
    meta = {
        "format": FORMAT_VERSION,
        "kind": EPS_MODEL,
        "fastddpm_version": __version__,
        "diffusion": diffusion.config.to_dict(),
        "betas": diffusion.betas.detach().cpu().double().tolist(),
        "alphas_cumprod": diffusion.alphas_cumprod.detach().cpu().double().tolist(),
        "image_size": [height, width],
        "channels": channels,
        "precision": precision,
        "size_divisor": divisor,
        "dynamic_size": dynamic,
        "model_config": config.to_dict() if hasattr(config, "to_dict") else None,
    }
    return proto, meta


def _torch_export(module, example, divisor, dynamic_size):
    batch = torch.export.Dim("batch", min=1, max=65536)
    x_dims: dict[int, Any] = {0: batch}
    if dynamic_size:
        for axis, name in ((2, "height"), (3, "width")):
            # Sizes the model accepts are multiples of its divisor: export them as divisor·n.
            dim = torch.export.Dim(name, min=1, max=8192)
            x_dims[axis] = dim * divisor if divisor > 1 else dim
    # torch.onnx prints its progress to stdout and logs/warns about its internals (e.g. torchvision ops it
    # skips); a library's export should not.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return torch.onnx.export(
                module, example, None, dynamo=True, opset_version=OPSET, input_names=["x", "t"],
                output_names=["eps"], dynamic_shapes=(x_dims, {0: batch}), verbose=False, optimize=True,
            )
    finally:
        logger.setLevel(level)


def export_onnx_sampler(
    model: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    *,
    diffusion: GaussianDiffusion | None = None,
    method: str = "ddpm",
    steps: int | None = None,
    spacing: str | Sequence[int] = "leading",
    eta: float | None = None,
    order: int | None = None,
    timesteps: Sequence[int] | None = None,
    plan: StepPlan | None = None,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    precision: str | None = None,
    dynamic_size: bool = True,
) -> Path:
    """Export the whole sampler (``method``/``steps``/``spacing``/``timesteps``/``eta``/``order``, or a ready
    ``plan``, as for :class:`fastddpm.Sampler`)
    as one ONNX model with a Loop over the steps. ``model`` is an ε-model (exported first, like
    :func:`export_onnx`) or the path of an ε-model export. Inputs: ``x_T`` and, when the sampler draws
    noise after x_T, ``noise`` (steps, B, C, H, W), slice k used at step k (ignored where the step adds
    none). Output: ``sample``, clipped to [−1, 1]; a value that is NaN or ±inf stays so, for the check after
    the graph to see."""
    import onnx  # the "onnx" extra

    def make_plan(diffusion: GaussianDiffusion) -> StepPlan:
        if plan is None:
            return build_plan(diffusion, method, steps, spacing, timesteps=timesteps, eta=eta, order=order)
        if method != "ddpm" or steps is not None or eta is not None or order is not None or timesteps is not None \
                or not isinstance(spacing, str) or spacing != "leading":
            raise ValueError("plan= fixes the solver: pass it without method/steps/spacing/timesteps/eta/order")
        return plan_fits(plan, diffusion)

    if isinstance(model, (str, os.PathLike)):
        if precision is not None or not dynamic_size:
            raise ValueError("precision and dynamic_size are the ε-model export's; they do not apply to a file")
        source = read_onnx(model)
        if source.kind != EPS_MODEL:
            raise OnnxModelError(f"{source.path}: a {source.kind!r} export; export_onnx_sampler needs an ε-model")
        if diffusion is not None or image_size is not None or channels is not None:
            raise ValueError("diffusion, image_size and channels come from the ε-model export's metadata")
        eps_proto, meta = source.model, dict(source.meta)
        step_plan = make_plan(GaussianDiffusion.from_config(source.diffusion))
    else:
        if diffusion is None:
            raise ValueError("diffusion is required when exporting from a torch model")
        step_plan = make_plan(diffusion)  # settings checked before the slow export
        eps_proto, meta = _export_eps_proto(model, diffusion, image_size, channels, precision or "fp32",
                                            dynamic_size)
    proto = build_sampler_model(eps_proto, step_plan)
    onnx.checker.check_model(proto)
    meta.update(kind=SAMPLER_MODEL, sampler=step_plan.describe())
    _set_metadata(proto, meta)
    return _save(proto, path)

