"""What a ``fastddpm bench`` run measures: the model presets, the configurations ("reference" or
"backend:precision") and :class:`BenchSettings`."""

from __future__ import annotations

import dataclasses

import torch

from ..config import FrozenConfig
from ..onnx.metadata import PRECISIONS as ONNX_PRECISIONS
from ..onnx.openvino import OPENVINO_PRECISIONS
from ..sampling.sampler import BACKENDS as SAMPLER_BACKENDS
from ..solvers import METHODS

__all__ = ["Preset", "PRESETS", "BACKENDS", "ORT_BACKENDS", "OPENVINO", "PRECISIONS", "METHODS", "BenchSettings", "parse_config",
           "default_configs"]


@dataclasses.dataclass(frozen=True)
class Preset:
    description: str
    unet: dict | None  # Unet kwargs; None: the bundled digits model
    image_size: int
    channels: int
    timesteps: int
    quality: bool = False  # a trained model whose samples the digits proxy can score


PRESETS = {
    "tiny": Preset("Unet(dim=8, channels=1, dim_mults=(1, 2)), 1×8×8 (smoke runs)", dict(dim=8, channels=1, dim_mults=(1, 2)), 8, 1, 200),
    "fashion": Preset("the reference's Fashion-MNIST U-Net: Unet(dim=28, channels=1, dim_mults=(1, 2, 4)), 1×28×28",
                      dict(dim=28, channels=1, dim_mults=(1, 2, 4)), 28, 1, 200),
    "cifar": Preset("a CIFAR-sized U-Net: Unet(dim=32, channels=3, dim_mults=(1, 2, 4)), 3×32×32",
                    dict(dim=32, channels=3, dim_mults=(1, 2, 4)), 32, 3, 1000),
    "digits": Preset("the bundled digits model (trained), 1×16×16", None, 16, 1, 1000, quality=True),
}
# The precision names the U-Net runs in, and their torch dtypes (the CLI's --precision too).
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# ONNX Runtime, the bench's own backends: the ε-model export under the Python loop, and the whole-sampler Loop.
ORT_BACKENDS = ("onnxruntime", "onnxruntime-loop")
# OpenVINO: the ε-model export's U-Net compiled by OpenVINO under the torch sampler's loop (CPU only).
OPENVINO = "openvino"
BACKENDS = (*(b for b in SAMPLER_BACKENDS if b != "auto"), *ORT_BACKENDS, OPENVINO)


def parse_config(text: str) -> tuple[str, str]:
    """"reference" or "backend:precision" → (backend, precision)."""
    if text == "reference":
        return ("reference", "fp32")
    backend, _, precision = text.partition(":")
    precision = precision or "fp32"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} in {text!r}; expected reference or one of {BACKENDS}")
    allowed = (ONNX_PRECISIONS if backend in ORT_BACKENDS else tuple(OPENVINO_PRECISIONS) if backend == OPENVINO
               else tuple(PRECISIONS))
    if precision not in allowed:
        raise ValueError(f"precision {precision!r} in {text!r}: {backend} takes one of {allowed}")
    return (backend, precision)


def default_configs(device: str) -> tuple[str, ...]:
    if torch.device(device).type == "cuda":
        return ("reference", "eager:fp32", "eager:bf16", "compile:fp32", "compile:bf16", "cudagraph:fp32",
                "cudagraph:bf16", "onnxruntime:fp32", "onnxruntime:fp16")
    # compile is left out on CPU by default: compiling the reference's U-Net takes ~2 minutes on 2 cores.
    return ("reference", "eager:fp32", "eager:bf16", "onnxruntime:fp32", "onnxruntime-loop:fp32", "openvino:fp32")


@dataclasses.dataclass(frozen=True)
class BenchSettings(FrozenConfig):
    """What one ``fastddpm bench`` run measures; frozen, with a JSON round-trip (saved beside the results)."""

    preset: str = "fashion"
    batches: tuple[int, ...] = (64,)
    configs: tuple[str, ...] | None = None  # None: default_configs(device)
    method: str = "ddpm"
    steps: int = 10
    spacing: str = "logsnr"
    rounds: int = 5
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "batches", tuple(int(b) for b in self.batches))
        if self.configs is not None:
            object.__setattr__(self, "configs", tuple(self.configs))
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {tuple(PRESETS)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        if not self.batches or min(self.batches) < 1 or self.steps < 1 or self.rounds < 1:
            raise ValueError("batches, steps and rounds must be positive")
        for config in self.resolved_configs():
            parse_config(config)

    def resolved_configs(self) -> tuple[str, ...]:
        """The configurations in order, each once, "reference" first (the oracle and the 1.0× of every ratio)."""
        configs = self.configs or default_configs(self.device)
        return tuple(dict.fromkeys(("reference", *configs)))
