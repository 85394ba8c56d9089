"""The one table of numerical tolerances, keyed by dtype; every looser entry says why.

Errors are measured relative to the largest magnitude of the reference (``relative_error``), so a
tolerance means "agree to this fraction of the signal's scale", whatever the tensor's range.
"""

from __future__ import annotations

import torch

__all__ = ["TOLERANCES", "tolerance", "relative_error", "assert_close"]

TOLERANCES: dict[torch.dtype, float] = {
    # The reference and its fast twins in float32, per forward or per op: 1e-6 relative.
    # Reordered float32 sums (fused kernels, compiled graphs) stay within a few ulps (~1e-7) of it.
    # (A whole 200-step trajectory is held to 1e-5, the sampler's contract: rounding differences of
    # single steps carry through the chain.)
    torch.float32: 1e-6,
    # float64 computations against float64 closed forms (identities checked in double precision):
    # ε = 1.1e-16; cancellations in 1 − ᾱ_t near t = 0 (1 − ᾱ ≈ 1e-4) amplify it to ~1e-12 at worst
    # (measured 2.2e-14).
    torch.float64: 1e-12,
    # Half precision keeps 10 mantissa bits (ε = 9.8e-4); one rounding of inputs and outputs.
    torch.float16: 2e-3,
    # bfloat16 keeps 7 mantissa bits (ε = 7.8e-3); one rounding of inputs and outputs.
    torch.bfloat16: 1.6e-2,
}

# A whole float32 sampling trajectory (up to 200 steps) of a fast backend against the reference with the
# same noise: single-step rounding differences (TOLERANCES[float32]) carry through the chain. The
# sampler's contract; measured ≤ 4e-7 (eager) and 4e-7 (compile) on the tests' small U-Net.
FLOAT32_TRAJECTORY = 1e-5


# The reference's float32 schedule tables against float64 closed forms. Looser than float32's entry because
# (a) the cosine schedule evaluates cos² near π/2 in float32 and then cancels in β = 1 − ᾱ_t/ᾱ_{t−1}
# (measured 3.1e-5 at T=1000, 3.3e-6 at T=200), and (b) cumprod chains T roundings and 1 − ᾱ_t cancels
# near t=0 (measured up to 3.2e-6 over all tables, schedules and T ∈ {200, 1000}).
FLOAT32_SCHEDULE_TABLES = 1e-4


# Counter-based noise from the Triton kernel against its torch twin: the Philox integers and the uniforms
# are bit-identical, but Box-Muller's log, sqrt and cos round differently on each backend (numpy in the
# interpreter, libdevice on NVIDIA, SLEEF in torch's CPU kernels): a few float32 ulps of values up to ~5
# (measured 3.6e-7 absolute in the interpreter).
PHILOX_NORMALS_ACROSS_BACKENDS = 1e-5


# A whole ancestral trajectory with the U-Net in bfloat16/float16 (autocast) against the float32
# reference with the same noise: each step rounds ε̂ to 8 (bf16) or 11 (fp16) significant bits and the
# errors carry through T steps, damped by each step's β_t/√(1−ᾱ_t) factor. Measured on the tests' small
# U-Net over 200 steps: 3.2e-3 (bf16).
LOW_PRECISION_TRAJECTORY = {torch.bfloat16: 3e-2, torch.float16: 5e-3}


# A whole U-Net forward whose attention cores sum in another order (the fused kernel's online softmax
# and blocked dot products, ~3.5e-7 per core against the twin) than the reference: the differences pass
# through every later layer, GroupNorms included. Measured 1.0e-6 on the tests' small U-Net.
FLOAT32_REASSOCIATED_NETWORK = 5e-6


# A fused kernel's float32 contraction over many terms against its torch twin on a GPU: linear attention
# sums over all h·w positions (784 at 28×28), in tl.dot blocks in the kernel and in cuBLAS's order in the
# twin; the rounding error of an n-term sum grows like √n·ε/2 (√784 · 6e-8 ≈ 1.7e-6 of the sum's scale).
# Measured on an H200 (torch 2.11, Triton 3.6): 1.4e-6 at 28×28, dim_head 64; under 1e-6 in the Triton
# interpreter on CPU.
FLOAT32_LONG_CONTRACTION = 5e-6


# ONNX Runtime against torch in float32, per forward and over a sampling trajectory with the same noise:
# ORT's convolutions (MLAS), InstanceNormalization (how GroupNorm exports) and fused elementwise ops sum
# in other orders than torch's. Measured: 1.1e-6 per forward and 4.3e-7 over a 20-step ancestral chain on
# the tests' small U-Net; 1.0e-5 over 20 DPM-Solver++ steps of the trained digits model (its first step
# multiplies ε̂ by σ/α ≈ 158 at t = T−1). The bound is the one the ONNX issue sets per forward.
ONNX_RUNTIME_FLOAT32 = 1e-4


# OpenVINO's CPU plugin against torch in float32, per forward and over a trajectory with the same noise:
# it fuses convolutions with their bias and activation and runs its own (oneDNN) kernels, which sum in
# other orders. Measured on the tests' small U-Net (AVX2 Zen 3): 1.5e-6 per forward, 2.0e-7 over 10 DDIM
# and 2.7e-7 over 10 DPM-Solver++ steps. The same bound as ONNX Runtime's.
OPENVINO_FLOAT32 = 1e-4


# A whole network run in float16 (an fp16 ONNX export: float16 weights and activations) against the
# float32 network: every layer rounds to 11 significant bits and GroupNorm's statistics are summed in
# float16, so errors compound over depth beyond the table's one-rounding entry. Measured on the tests'
# small U-Net: 8.1e-4.
FLOAT16_NETWORK = 5e-3


# ε recovered from an x̂_0 or v prediction (fastddpm.adapters) against the exact ε: x̂_0 → ε divides by
# √(1−ᾱ_t), which is 0.01 at t = 0 for the T=1000 linear schedule, so float32 roundings of x_t and x̂_0
# (~6e-8 relative) grow up to 100×. Measured on the tests' exact predictions: 7.1e-7 (x̂_0), 5.8e-8 (v).
PREDICTION_CONVERSION = 1e-5


# Weights after DDP training steps against one process with the same global batch: DDP averages the
# processes' gradients (sum then divide) where one process sums the whole batch in its own order, and Adam
# divides each coordinate's step by its gradient's own magnitude, so coordinates whose gradient is near
# zero turn tiny summation differences into visible step differences. Measured on the tests' 8-wide U-Net
# (2 processes, global batch 4, Adam lr 1e-3): 7.6e-6 after 4 steps.
DDP_GRADIENT_AVERAGING = 1e-4


def tolerance(dtype: torch.dtype) -> float:
    try:
        return TOLERANCES[dtype]
    except KeyError:
        raise KeyError(f"no tolerance for dtype {dtype}; the table has {sorted(map(str, TOLERANCES))}") from None


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|actual − expected| / max|expected| (0 when both are all zeros); NaN anywhere gives inf."""
    actual = torch.as_tensor(actual).detach().to("cpu", torch.float64)
    expected = torch.as_tensor(expected).detach().to("cpu", torch.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"shape mismatch: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    if not (torch.isfinite(actual).all() and torch.isfinite(expected).all()):
        return float("inf")
    diff = (actual - expected).abs().max().item() if actual.numel() else 0.0
    scale = expected.abs().max().item() if expected.numel() else 0.0
    if scale == 0.0:
        return diff
    return diff / scale


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, *, rtol: float | None = None) -> None:
    """Assert ``relative_error(actual, expected) <= rtol`` (default: the table's entry for ``dtype``,
    itself defaulting to ``actual``'s dtype)."""
    if rtol is None:
        rtol = tolerance(dtype if dtype is not None else torch.as_tensor(actual).dtype)
    err = relative_error(actual, expected)
    if not err <= rtol:
        raise AssertionError(f"relative error {err:.3e} exceeds tolerance {rtol:.1e}")
