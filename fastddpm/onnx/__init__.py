"""ONNX: export an ε-model or a whole sampler, read exports back, and sample in ONNX Runtime.

onnx and onnxruntime (the "onnx" extra) are imported only when a function here runs.
"""

from .export import export_onnx, export_onnx_sampler
from .graphs import OPSET, build_sampler_model, build_step_model
from .metadata import METADATA_KEY, OnnxExport, OnnxModelError, read_onnx
from .runtime import CPU, CUDA, OrtSampler, default_providers

__all__ = ["export_onnx", "export_onnx_sampler", "read_onnx", "OnnxExport", "OnnxModelError", "OrtSampler",
           "build_step_model", "build_sampler_model", "default_providers", "OPSET", "METADATA_KEY", "CPU", "CUDA"]
