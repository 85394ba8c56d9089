"""ONNX export of an ε-model, and the graphs ONNX Runtime samples with.

Three graphs, all from one export:

* the ε-model (:func:`export_onnx`): input ``x`` (float32, B×C×H×W) and ``t`` (int64, B), output ``eps``
  (float32); a dynamic batch axis, and dynamic height/width (multiples of the model's size divisor) when
  the model's graph allows; opset 18; checked with ``onnx.checker``. The diffusion's config and schedule
  tables, the image size and channels sit in the model's metadata (key ``"fastddpm"``, one JSON document),
  so the ``.onnx`` file alone is enough to sample. ``precision="fp16"`` stores float16 weights and runs
  the network in float16 while its inputs and output stay float32 (the sampler's state stays float32).
* the step (built in memory by :class:`fastddpm.OrtSampler`): the ε-model followed by the update every
  sampler of this library reduces to — ``x̂_0 = F·x + G·ε`` and ``x_next = A·x + B·ε + C·aux``, with
  the step's five coefficients an input and ``aux`` the step's noise (ancestral DDPM, DDIM) or the
  previous x̂_0 (DPM-Solver++); DPM-Solver++(3M) adds ``D·aux2``, the x̂_0 of two steps back (six
  coefficients).
* the whole sampler (:func:`export_onnx_sampler`): that step as the body of one ONNX ``Loop`` over a
  timestep and coefficient table baked into the file; inputs ``x_T`` and (for stochastic samplers)
  ``noise`` (S×B×C×H×W, one slice per step), output ``sample``. A deployment samples with one
  ``session.run`` and no Python loop.

The coefficients come from :class:`fastddpm.Sampler`'s own tables (:func:`plan_steps`), so ONNX Runtime
visits the same timesteps with the same float32 coefficients as the torch sampler.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .checkpoint import _first_line, decode_metadata
from .diffusion import DiffusionConfig, GaussianDiffusion

__all__ = [
    "OnnxModelError",
    "OnnxExport",
    "StepPlan",
    "export_onnx",
    "export_onnx_sampler",
    "read_onnx",
    "plan_steps",
    "build_step_model",
    "METADATA_KEY",
    "OPSET",
]

METADATA_KEY = "fastddpm"
FORMAT_VERSION = 1
OPSET = 18
EPS_MODEL, SAMPLER_MODEL = "eps-model", "sampler"
PRECISIONS = ("fp32", "fp16")
# The per-step coefficients, in the order the step's ``coef`` input holds them; D (DPM-Solver++(3M)'s
# weight of the x̂_0 of two steps back) only in order-3 plans.
A, B, C, F, G, D = range(6)


class OnnxModelError(ValueError):
    """An .onnx file that cannot be used: not ONNX, not a fastddpm export, or inconsistent metadata."""


# -- the per-step coefficients -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepPlan:
    """What a sampler does at each of its S steps: timestep t_k, coefficients (A, B, C, F, G)_k as float32
    (S, 5), whether the step draws fresh noise, and whether ``aux`` carries the previous x̂_0 instead."""

    method: str
    spacing: str | list[int]  # a rule's name, or the timesteps themselves (a fit)
    eta: float
    timesteps: tuple[int, ...]
    coefs: np.ndarray
    noisy: tuple[bool, ...]
    multistep: bool
    order: int = 2  # 3: coefs has a sixth column D, and the step reads the x̂_0 of two steps back too

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "steps": self.steps, "spacing": self.spacing, "eta": self.eta, "order": self.order,
                "timesteps": list(self.timesteps), "noisy": list(self.noisy)}


def plan_steps(
    diffusion: GaussianDiffusion,
    method: str = "ddpm",
    steps: int | None = None,
    spacing: str | Sequence[int] = "leading",
    eta: float | None = None,
    order: int = 2,
) -> StepPlan:
    """The steps :class:`fastddpm.Sampler` takes for these settings, as affine coefficients."""
    from .sampler import Sampler

    # The torch sampler validates the settings and builds its tables; no model is ever called.
    sampler = Sampler(_no_model, diffusion, method=method, steps=steps, eta=eta, spacing=spacing, order=order,
                      backend="eager", kernels="torch", device="cpu")
    seq = sampler.timestep_sequence
    abar = torch.cumprod(1 - diffusion.betas.detach().to("cpu", torch.float64), 0)[seq]
    coefs = np.zeros((len(seq), 6 if order == 3 else 5), dtype=np.float64)
    coefs[:, F] = (1 / abar.sqrt()).numpy()
    coefs[:, G] = (-(1 - abar).sqrt() / abar.sqrt()).numpy()
    table = sampler.table.detach().to("cpu", torch.float64)
    if sampler.exact_ddpm:
        # The reference's mean √(1/α_t)·(x − β_t·ε/√(1−ᾱ_t)), expanded; σ_t (0 at t = 0) scales the noise.
        sra, beta, s1m, std = (table[row, seq].numpy() for row in range(4))
        coefs[:, A], coefs[:, B] = sra, -sra * beta / s1m
        coefs[:, C] = np.where(np.asarray(seq) > 0, std, 0.0)
    elif sampler.multistep:
        coefs[:, A], coefs[:, B], coefs[:, C] = table[0].numpy(), table[1].numpy(), table[2].numpy()
        coefs[:, F], coefs[:, G] = table[3].numpy(), table[4].numpy()
        if order == 3:
            coefs[:, D] = table[5].numpy()
    else:  # DDIM (and respaced DDPM, η = 1): x_next = A·x + B·ε + C·z
        coefs[:, A], coefs[:, B], coefs[:, C] = table[0].numpy(), table[1].numpy(), table[2].numpy()
    noisy = tuple(bool(c != 0) for c in coefs[:, C]) if not sampler.multistep else (False,) * len(seq)
    return StepPlan(method=method, spacing=spacing if isinstance(spacing, str) else list(seq), eta=sampler.eta,
                    timesteps=tuple(seq), coefs=coefs.astype(np.float32), noisy=noisy, multistep=sampler.multistep,
                    order=order)


def _no_model(x, t):  # pragma: no cover - plan_steps never samples
    raise RuntimeError("plan_steps builds tables only")


# -- export of the ε-model ----------------------------------------------------------------------------
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


class _FloatIO(nn.Module):
    """The model in float16 with float32 inputs and output. Every module with a float16 weight casts its
    floating inputs to that dtype first: the seed U-Net's sinusoidal time features are float32 and would
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
    import onnx

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


def _set_metadata(proto, meta: dict[str, Any]) -> None:
    for prop in list(proto.metadata_props):
        if prop.key == METADATA_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, sort_keys=True)


def _save(proto, path) -> Path:
    import onnx

    from .fileio import atomic_path

    path = Path(path)
    if proto.ByteSize() >= 2**31:
        raise ValueError(f"{path}: the model is over 2 GB, beyond one ONNX protobuf file")
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return path


# -- reading an export ----------------------------------------------------------------------------
def read_onnx(path: str | os.PathLike) -> OnnxExport:
    """Load and check a fastddpm .onnx file; every failure is an :class:`OnnxModelError` naming the file."""
    import onnx
    from google.protobuf.message import DecodeError

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
        betas = np.asarray(meta["betas"], dtype=np.float64)
        height, width = (int(v) for v in meta["image_size"])
        channels, divisor = int(meta["channels"]), int(meta.get("size_divisor", 1))
        sampler = _check_sampler_meta(meta["sampler"]) if kind == SAMPLER_MODEL else None
    except (KeyError, TypeError, ValueError) as exc:
        raise OnnxModelError(f"{path}: incomplete fastddpm metadata ({_first_line(exc)})") from None
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
    order = int(sampler.get("order", 2))  # files written before order 3 was exportable hold none
    if order not in (2, 3):
        raise ValueError(f"'sampler' has order {order}; 2 or 3 expected")
    return {**sampler, "steps": steps, "timesteps": timesteps, "noisy": noisy, "order": order}


# -- graph composition ----------------------------------------------------------------------------
def _eps_nodes(eps_model, prefix: str, x_name: str, t_name: str):
    """The ε-model's nodes renamed into a larger graph: its inputs wired to ``x_name``/``t_name``, every
    value it computes prefixed. Initializers keep their names (they stay in the outer graph). Returns
    (nodes, name of ε)."""
    graph = eps_model.graph
    for node in graph.node:
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            raise OnnxModelError("the ε-model has control flow (If/Loop/Scan); it cannot be nested in a step graph")
    # Its weights keep their names in the composed graphs: none may shadow a name those graphs use.
    clash = sorted(i.name for i in graph.initializer if i.name in _RESERVED or i.name.startswith("fastddpm/"))
    if clash:
        raise OnnxModelError(f"the ε-model has initializers named {clash}, which the step and sampler graphs use")
    rename = {"x": x_name, "t": t_name}
    for node in graph.node:
        for out in node.output:
            if out:
                rename[out] = prefix + out
    nodes = []
    for node in graph.node:
        new = copy.deepcopy(node)
        new.name = prefix + node.name
        new.input[:] = [rename.get(n, n) for n in node.input]
        new.output[:] = [rename.get(n, n) for n in node.output]
        nodes.append(new)
    return nodes, rename[graph.output[0].name]


_RESERVED = {"x", "t", "coef", "aux", "aux2", "x_next", "x0", "x_T", "noise", "sample"}


def _update_nodes(x: str, eps: str, aux: str, coef: str, x_next: str, x0: str, prefix: str, aux2: str | None = None):
    """x̂_0 = F·x + G·ε and x_next = A·x + B·ε + C·aux (+ D·aux2 at order 3), the coefficients read from
    ``coef`` (5,) or (6,)."""
    from onnx import helper

    nodes = []
    c = {}
    for i, name in enumerate("ABCFGD" if aux2 is not None else "ABCFG"):
        c[name] = f"{prefix}{name}"
        nodes.append(helper.make_node("Gather", [coef, f"{prefix}index{i}"], [c[name]], axis=0))

    def term(coefficient, value, out):
        nodes.append(helper.make_node("Mul", [c[coefficient], value], [out]))
        return out

    nodes.append(helper.make_node("Add", [term("F", x, f"{prefix}Fx"), term("G", eps, f"{prefix}Geps")], [x0]))
    ab = f"{prefix}AxBeps"
    nodes.append(helper.make_node("Add", [term("A", x, f"{prefix}Ax"), term("B", eps, f"{prefix}Beps")], [ab]))
    if aux2 is None:
        nodes.append(helper.make_node("Add", [ab, term("C", aux, f"{prefix}Caux")], [x_next]))
        return nodes
    abc = f"{prefix}AxBepsCaux"
    nodes.append(helper.make_node("Add", [ab, term("C", aux, f"{prefix}Caux")], [abc]))
    nodes.append(helper.make_node("Add", [abc, term("D", aux2, f"{prefix}Daux2")], [x_next]))
    return nodes


def _index_initializers(prefix: str, count: int = 5):
    from onnx import numpy_helper

    return [numpy_helper.from_array(np.array(i, dtype=np.int64), f"{prefix}index{i}") for i in range(count)]


def _float_image(name: str, dims: tuple):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))


def _image_dims(eps_model) -> tuple:
    """The ε-model's x dimensions (a fixed channel count, symbolic or fixed batch and size), for the
    composed graphs' image inputs and outputs."""
    dims = eps_model.graph.input[0].type.tensor_type.shape.dim
    names = ("batch", "channels", "height", "width")
    if len(dims) != 4:
        return names
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or n) for d, n in zip(dims, names))


def _finish(graph, eps_model):
    from onnx import helper

    opsets = {o.domain: o.version for o in eps_model.opset_import}
    opsets[""] = max(opsets.get("", OPSET), OPSET)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="fastddpm", producer_version=__version__)
    model.ir_version = eps_model.ir_version
    model.functions.extend(eps_model.functions)
    return model


def build_step_model(eps_model, order: int = 2):
    """The one-step graph ONNX Runtime iterates: inputs x, t (int64, B), coef (float32, 5), aux — at order 3
    also aux2 (the x̂_0 of two steps back) with coef (6,); outputs x_next and x0 (see the module docstring)."""
    from onnx import TensorProto, helper

    prefix = "fastddpm/"
    third = order == 3
    nodes, eps = _eps_nodes(eps_model, prefix + "eps/", "x", "t")
    nodes += _update_nodes("x", eps, "aux", "coef", "x_next", "x0", prefix, "aux2" if third else None)
    dims = _image_dims(eps_model)
    graph = helper.make_graph(
        nodes, "fastddpm_step",
        inputs=[_float_image("x", dims), helper.make_tensor_value_info("t", TensorProto.INT64, [dims[0]]),
                helper.make_tensor_value_info("coef", TensorProto.FLOAT, [6 if third else 5]),
                _float_image("aux", dims)] + ([_float_image("aux2", dims)] if third else []),
        outputs=[_float_image("x_next", dims), _float_image("x0", dims)],
        initializer=list(eps_model.graph.initializer) + _index_initializers(prefix, 6 if third else 5),
    )
    return _finish(graph, eps_model)


def build_sampler_model(eps_model, plan: StepPlan):
    """The whole sampler as one ONNX Loop (see the module docstring)."""
    from onnx import TensorProto, helper, numpy_helper

    p = "fastddpm/"
    stochastic = any(plan.noisy)
    body_nodes = [
        helper.make_node("Identity", [p + "cond_in"], [p + "cond_out"]),
        helper.make_node("Gather", [p + "timesteps", p + "k"], [p + "t_k"], axis=0),
        helper.make_node("Shape", [p + "x"], [p + "batch"], start=0, end=1),
        helper.make_node("Expand", [p + "t_k", p + "batch"], [p + "t"]),
        helper.make_node("Gather", [p + "coefs", p + "k"], [p + "coef"], axis=0),
    ]
    if stochastic:
        body_nodes.append(helper.make_node("Gather", ["noise", p + "k"], [p + "aux"], axis=0))
        aux = p + "aux"
    else:  # ODE solvers and η = 0: aux is the previous x̂_0 (multiplied by 0 unless multistep)
        aux = p + "x0_prev"
    third = plan.order == 3
    eps_nodes, eps = _eps_nodes(eps_model, p + "eps/", p + "x", p + "t")
    body_nodes += eps_nodes
    body_nodes += _update_nodes(p + "x", eps, aux, p + "coef", p + "x_next", p + "x0", p,
                                p + "x0_prev2" if third else None)
    untyped = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None)  # noqa: E731
    carried_in, carried_out = [untyped(p + "x"), untyped(p + "x0_prev")], [untyped(p + "x_next"), untyped(p + "x0")]
    if third:  # order 3 carries one more history: this step's x̂_0_prev is the next step's x̂_0_prev2
        body_nodes.append(helper.make_node("Identity", [p + "x0_prev"], [p + "x0_prev_out"]))
        carried_in.append(untyped(p + "x0_prev2"))
        carried_out.append(untyped(p + "x0_prev_out"))
    body = helper.make_graph(
        body_nodes, "fastddpm_step",
        inputs=[helper.make_tensor_value_info(p + "k", TensorProto.INT64, []),
                helper.make_tensor_value_info(p + "cond_in", TensorProto.BOOL, [])] + carried_in,
        outputs=[helper.make_tensor_value_info(p + "cond_out", TensorProto.BOOL, [])] + carried_out,
        # The weights live in the body: ORT folds and fuses only what it knows to be constant there, and
        # left in the outer graph they cost 40% per step (measured on the Fashion U-Net, 2-core CPU:
        # 579 ms/step with outer-scope weights, 411 inside; the step graph alone: 417).
        initializer=list(eps_model.graph.initializer) + _index_initializers(p, 6 if third else 5) + [
            numpy_helper.from_array(np.asarray(plan.timesteps, dtype=np.int64), p + "timesteps"),
            numpy_helper.from_array(plan.coefs.astype(np.float32), p + "coefs"),
        ],
    )
    outer_nodes = [
        helper.make_node("Shape", ["x_T"], [p + "shape"]),
        helper.make_node("ConstantOfShape", [p + "shape"], [p + "zeros"],
                         value=numpy_helper.from_array(np.zeros(1, np.float32))),
        helper.make_node("Loop", [p + "trip_count", p + "true", "x_T", p + "zeros"] + ([p + "zeros"] if third else []),
                         [p + "x_final", p + "x0_final"] + ([p + "x0_prev_final"] if third else []), body=body),
        helper.make_node("Clip", [p + "x_final", p + "minus_one", p + "one"], ["sample"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array(plan.steps, dtype=np.int64), p + "trip_count"),
        numpy_helper.from_array(np.array(True), p + "true"),
        numpy_helper.from_array(np.array(-1.0, dtype=np.float32), p + "minus_one"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), p + "one"),
    ]
    dims = _image_dims(eps_model)
    inputs = [_float_image("x_T", dims)]
    if stochastic:
        inputs.append(_float_image("noise", (plan.steps, *dims)))
    graph = helper.make_graph(outer_nodes, "fastddpm_sampler", inputs=inputs, outputs=[_float_image("sample", dims)],
                              initializer=initializers)
    return _finish(graph, eps_model)


def export_onnx_sampler(
    model: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    *,
    diffusion: GaussianDiffusion | None = None,
    method: str = "ddpm",
    steps: int | None = None,
    spacing: str | Sequence[int] = "leading",
    eta: float | None = None,
    order: int = 2,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    precision: str | None = None,
    dynamic_size: bool = True,
) -> Path:
    """Export the whole sampler (``method``/``steps``/``spacing``/``eta``/``order`` as for :class:`fastddpm.Sampler`)
    as one ONNX model with a Loop over the steps. ``model`` is an ε-model (exported first, like
    :func:`export_onnx`) or the path of an ε-model export. Inputs: ``x_T`` and, when the sampler draws
    noise after x_T, ``noise`` (steps, B, C, H, W), slice k used at step k (ignored where the step adds
    none). Output: ``sample``, clipped to [−1, 1]."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        if precision is not None or not dynamic_size:
            raise ValueError("precision and dynamic_size are the ε-model export's; they do not apply to a file")
        source = read_onnx(model)
        if source.kind != EPS_MODEL:
            raise OnnxModelError(f"{source.path}: a {source.kind!r} export; export_onnx_sampler needs an ε-model")
        if diffusion is not None or image_size is not None or channels is not None:
            raise ValueError("diffusion, image_size and channels come from the ε-model export's metadata")
        eps_proto, meta = source.model, dict(source.meta)
        plan = plan_steps(GaussianDiffusion.from_config(source.diffusion), method, steps, spacing, eta, order)
    else:
        if diffusion is None:
            raise ValueError("diffusion is required when exporting from a torch model")
        plan = plan_steps(diffusion, method, steps, spacing, eta, order)  # settings checked before the slow export
        eps_proto, meta = _export_eps_proto(model, diffusion, image_size, channels, precision or "fp32",
                                            dynamic_size)
    proto = build_sampler_model(eps_proto, plan)
    onnx.checker.check_model(proto)
    meta.update(kind=SAMPLER_MODEL, sampler=plan.describe())
    _set_metadata(proto, meta)
    return _save(proto, path)

