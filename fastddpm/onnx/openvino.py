"""OpenVINO as a CPU runner of an ε-model export: :class:`OpenVinoEpsModel` is a ``model(x, t) -> ε̂``
callable that any runner of plans takes (``Sampler(OpenVinoEpsModel(path), diffusion, plan=...)``).

OpenVINO (the CPU runtime optimum-intel uses for diffusion) reads the project's ONNX export as it is and
compiles it for this CPU, with ``INFERENCE_PRECISION_HINT`` "f32" or "bf16" (AVX512-BF16 / AMX where the
CPU has them). Only the U-Net runs in OpenVINO: the sample state and the update stay float32 in the
runner, so bf16 rounds ε̂ once per step and never the state (an ODE solver multiplies ε̂ by σ/α ≈ 158 at
its first step; the state must not be rounded too). A network is compiled once per input shape (static
shapes let OpenVINO plan its memory and pick its kernels; a sampler calls it with one shape). Needs the
``openvino`` extra.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch

from .metadata import EPS_MODEL, OnnxExport, OnnxModelError, read_onnx
from .passes import split_projection_convs

__all__ = ["OpenVinoEpsModel", "NEEDS_OPENVINO", "OPENVINO_PRECISIONS"]

NEEDS_OPENVINO = "the OpenVINO runner needs the openvino extra: pip install 'fastddpm[openvino]'"
# The network's precision on the CPU plugin (INFERENCE_PRECISION_HINT); inputs and outputs stay float32.
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoEpsModel:
    """An ε-model export (``fastddpm export`` / :func:`fastddpm.export_onnx`, fp32) compiled by OpenVINO.

    Called like the U-Net: ``model(x, t)`` with x float32 (B, C, H, W) and t int64 (B,) CPU tensors;
    returns ε̂ as a new float32 tensor. ``precision`` "fp32" or "bf16" (the network's; see the module
    docstring); ``effective_precision`` says what the CPU plugin ran after the first call (a CPU without
    bf16 instructions runs "fp32"). ``num_threads``: OpenVINO's inference threads (default: its own
    choice, all cores)."""

    def __init__(self, path: str | os.PathLike | OnnxExport, *, precision: str = "fp32",
                 num_threads: int | None = None):
        try:
            import openvino  # the "openvino" extra
        except ImportError:
            raise ImportError(NEEDS_OPENVINO) from None
        if precision not in OPENVINO_PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(OPENVINO_PRECISIONS)}, got {precision!r}")
        self.export = export = path if isinstance(path, OnnxExport) else read_onnx(path)
        if export.kind != EPS_MODEL:
            raise OnnxModelError(f"{export.path}: a {export.kind!r} export; OpenVINO runs an ε-model export "
                                 "(the runner keeps the sampling loop)")
        if export.precision != "fp32":
            raise OnnxModelError(f"{export.path}: a {export.precision} export; OpenVINO takes the fp32 export and "
                                 "lowers it itself (precision='bf16')")
        self.precision, self.channels, self.image_size = precision, export.channels, export.image_size
        try:
            self._core = openvino.Core()
            self._network = self._core.read_model(_rewritten(export).SerializeToString(), b"")
        except Exception as exc:  # OpenVINO raises its own exception types; name the file
            raise OnnxModelError(f"{export.path}: OpenVINO cannot read it ({_last_line(exc)})") from None
        self._config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision],
                                        "PERFORMANCE_HINT": "LATENCY"}
        if num_threads is not None:
            self._config["INFERENCE_NUM_THREADS"] = int(num_threads)
        self._requests: dict[tuple, Any] = {}
        self.effective_precision: str | None = None  # known once a network is compiled (the first call)

    def _request(self, x_shape: tuple[int, ...]):
        request = self._requests.get(x_shape)
        if request is None:
            try:
                network = self._network.clone()
                network.reshape({"x": list(x_shape), "t": [x_shape[0]]})
                compiled = self._core.compile_model(network, "CPU", self._config)
            except Exception as exc:  # e.g. a size the network cannot take
                raise OnnxModelError(f"{self.export.path}: OpenVINO cannot compile it for input {list(x_shape)} "
                                     f"({_last_line(exc)})") from None
            # What the plugin chose: a CPU without bf16 instructions (e.g. AVX2-only Zen 3) runs f32 when
            # asked for bf16, silently; this records it for the caller (and the bench's row).
            used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
            self.effective_precision = {v: k for k, v in OPENVINO_PRECISIONS.items()}.get(used, used)
            request = compiled.create_infer_request()
            self._requests[x_shape] = request
        return request

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or t.device.type != "cpu":
            raise ValueError(f"OpenVINO runs on the CPU: x and t must be CPU tensors, got {x.device} and {t.device}")
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x must be (B, {self.channels}, H, W), got {tuple(x.shape)}")
        height, width = x.shape[2:]
        # Checked here: OpenVINO compiles a size the U-Net cannot take and returns a smaller image (5×5 → 4×4).
        if height % self.export.size_divisor or width % self.export.size_divisor:
            raise ValueError(f"image size {height}x{width} is not divisible by {self.export.size_divisor} (this model's)")
        if not self.export.dynamic_size and (height, width) != tuple(self.image_size):
            raise ValueError(f"this export has a fixed image size {tuple(self.image_size)}; got {height}x{width}")
        request = self._request(tuple(x.shape))
        x_in = np.ascontiguousarray(x.detach().float().numpy())
        t_in = np.ascontiguousarray(t.detach().to(torch.int64).reshape(x.shape[0]).numpy())
        # infer() returns copies of the outputs (the request's own buffers are overwritten by the next call).
        return torch.from_numpy(np.asarray(request.infer({"x": x_in, "t": t_in})[0], dtype=np.float32))


def _rewritten(export: OnnxExport):
    """The export's graph as OpenVINO should compile it: q/k/v projections as three convolutions (OpenVINO runs
    the channel Split of one with its slow reference kernel). A rewrite that fails leaves the graph as it is."""
    try:
        return split_projection_convs(export.model)
    except Exception as exc:  # a graph the pass did not foresee: slower, never wrong
        warnings.warn(f"{export.path}: compiled without the q/k/v rewrite ({_last_line(exc)})", RuntimeWarning,
                      stacklevel=3)
        return export.model


def _last_line(exc: BaseException) -> str:
    """OpenVINO's messages start with "Exception from src/…cpp:NNN" and end with what went wrong."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
