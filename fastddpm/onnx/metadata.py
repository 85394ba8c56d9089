"""A fastddpm .onnx file's metadata: what it holds (an ε-model or a whole sampler), its diffusion and
image size, written as one JSON document under the key ``"fastddpm"`` and checked when read."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..io.checkpoint import MAX_IMAGE_SIZE, _first_line, check_diffusion_limits, decode_metadata
from ..io.files import atomic_path
from ..kernels.update_rows import MAX_HISTORIES
from ..reference.diffusion import DiffusionConfig, GaussianDiffusion

__all__ = ["OnnxModelError", "OnnxExport", "read_onnx", "METADATA_KEY", "FORMAT_VERSION", "EPS_MODEL",
           "SAMPLER_MODEL", "PRECISIONS"]

METADATA_KEY = "fastddpm"
FORMAT_VERSION = 1
EPS_MODEL, SAMPLER_MODEL = "eps-model", "sampler"


def _int(value: Any, name: str) -> int:
    """An integer field of the metadata: a JSON integer, not a string or a float that int() would take."""
    if type(value) is not int:
        raise ValueError(f"{name} must hold integers, got {value!r}")
    return value
PRECISIONS = ("fp32", "fp16")


class OnnxModelError(ValueError):
    """An .onnx file that cannot be used: not ONNX, not a fastddpm export, or inconsistent metadata."""


@dataclasses.dataclass(frozen=True)
class OnnxExport:
    """A fastddpm .onnx file, read and checked: the model and what its metadata says."""

    path: Path
    model: Any  # onnx.ModelProto
    kind: str  # "eps-model" or "sampler"
    diffusion: DiffusionConfig
    image_size: tuple[int, int]
    channels: int
    precision: str
    size_divisor: int
    dynamic_size: bool
    sampler: dict[str, Any] | None
    meta: dict[str, Any]


def _set_metadata(proto, meta: dict[str, Any]) -> None:
    for prop in list(proto.metadata_props):
        if prop.key == METADATA_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, sort_keys=True)


def _save(proto, path) -> Path:
    import onnx  # the "onnx" extra

    path = Path(path)
    if proto.ByteSize() >= 2**31:
        raise ValueError(f"{path}: the model is over 2 GB, beyond one ONNX protobuf file")
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return path


# -- reading an export ----------------------------------------------------------------------------
def read_onnx(path: str | os.PathLike) -> OnnxExport:
    """Load and check a fastddpm .onnx file; every failure is an :class:`OnnxModelError` naming the file."""
    import onnx  # the "onnx" extra
    from google.protobuf.message import DecodeError  # protobuf comes with onnx

    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f"{path}: no such file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise OnnxModelError(f"{path}: not an ONNX model ({_first_line(exc)})") from None
    if not proto.graph.node:
        raise OnnxModelError(f"{path}: not an ONNX model (no graph)")
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise OnnxModelError(
            f"{path}: an ONNX model, but not a fastddpm export (no {METADATA_KEY!r} metadata); "
            "export it with fastddpm.export_onnx"
        )
    meta = decode_metadata(path, props[METADATA_KEY], FORMAT_VERSION, OnnxModelError, "fastddpm ONNX")
    kind = meta.get("kind")
    if kind not in (EPS_MODEL, SAMPLER_MODEL):
        raise OnnxModelError(f"{path}: unknown fastddpm model kind {kind!r}; expected {EPS_MODEL!r} or {SAMPLER_MODEL!r}")
    try:
        diffusion = DiffusionConfig.from_dict(meta["diffusion"])
        check_diffusion_limits(diffusion)
        betas = np.asarray(meta["betas"], dtype=np.float64)
        height, width = (_int(v, "image_size") for v in meta["image_size"])
        channels, divisor = _int(meta["channels"], "channels"), _int(meta.get("size_divisor", 1), "size_divisor")
        sampler = _check_sampler_meta(meta["sampler"]) if kind == SAMPLER_MODEL else None
    except (KeyError, TypeError, ValueError) as exc:
        raise OnnxModelError(f"{path}: incomplete fastddpm metadata ({_first_line(exc)})") from None
    if max(height, width) > MAX_IMAGE_SIZE:
        raise OnnxModelError(f"{path}: metadata image size {height}x{width}; at most {MAX_IMAGE_SIZE} a side")
    if min(height, width, channels, divisor) < 1:
        raise OnnxModelError(f"{path}: metadata image size {height}x{width}, channels {channels}, size divisor "
                             f"{divisor}: each must be positive")
    rebuilt = GaussianDiffusion.from_config(diffusion).betas.double().numpy()
    if betas.shape != rebuilt.shape or not np.array_equal(betas, rebuilt):
        raise OnnxModelError(f"{path}: the metadata's betas do not match its diffusion config {diffusion.to_dict()!r}")
    inputs = [i.name for i in proto.graph.input]
    if kind == EPS_MODEL:
        expected = ["x", "t"]
    else:
        expected = ["x_T", "noise"] if any(sampler["noisy"]) else ["x_T"]
    if inputs != expected:
        raise OnnxModelError(f"{path}: inputs {inputs}; this fastddpm {kind} export should have inputs {expected}")
    x_channels = proto.graph.input[0].type.tensor_type.shape.dim[1] if proto.graph.input[0].type.tensor_type.shape.dim else None
    if x_channels is not None and x_channels.HasField("dim_value") and x_channels.dim_value != channels:
        raise OnnxModelError(f"{path}: the graph takes {x_channels.dim_value} channels; its metadata says {channels}")
    return OnnxExport(
        path=path, model=proto, kind=kind, diffusion=diffusion, image_size=(height, width), channels=channels,
        precision=meta.get("precision", "fp32"), size_divisor=divisor,
        dynamic_size=bool(meta.get("dynamic_size", False)), sampler=sampler, meta=meta,
    )


def _check_sampler_meta(sampler: Any) -> dict[str, Any]:
    """A whole-sampler export's description: method, steps, spacing, eta, and one timestep and one noise
    flag per step."""
    if not isinstance(sampler, dict):
        raise ValueError(f"'sampler' must be an object, got {type(sampler).__name__}")
    steps = int(sampler["steps"])
    timesteps, noisy = list(sampler["timesteps"]), [bool(v) for v in sampler["noisy"]]
    if steps < 1 or len(timesteps) != steps or len(noisy) != steps:
        raise ValueError(f"'sampler' has steps={steps} but {len(timesteps)} timesteps and {len(noisy)} noise flags")
    for key in ("method", "spacing", "eta"):
        sampler[key]  # noqa: B018  (KeyError names a missing field)
    # Files written before order 3 and UniPC were exportable hold no order and no history count.
    order = int(sampler.get("order", 2))
    histories = int(sampler.get("histories", order - 1 if sampler["method"] == "dpmsolver++" else 0))
    if not 1 <= order <= 3 or not 0 <= histories <= MAX_HISTORIES:
        raise ValueError(f"'sampler' has order {order} and {histories} histories; 1-3 and 0-{MAX_HISTORIES} expected")
    return {**sampler, "steps": steps, "timesteps": timesteps, "noisy": noisy, "order": order, "histories": histories}
