"""Counter-based Gaussian noise in pure torch: the twin of the kernels' in-kernel generator.

Element ``e`` of a sample with seed ``s`` at diffusion step ``k`` is Philox-4x32-10 keyed by ``s`` (its
low and high 32 bits) at counter ``(e, k, 0, 0)``, turned into one normal by Box-Muller on the first two
outputs — exactly what Triton's ``tl.randn(s, (k << 32) | e)`` computes. The integers and the uniforms
are bit-identical across backends; the normals differ only by the last-ulp rounding of log/cos/sqrt.
Because the key holds only (seed, step, element), a sample's noise does not depend on the batch size,
its batch position, or the backend.
"""

from __future__ import annotations

import math

import torch

__all__ = ["philox4x32", "randn_philox"]

_MASK32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57  # Philox-4x32 multipliers
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85  # Weyl key increments (golden ratio, √3 − 1)
# float32 constants as CPU 0-dim tensors: they combine with tensors on any device as scalars, with no
# host-to-device copy (which would sync every step, and cannot happen inside a CUDA graph capture).
_UNIFORM_SCALE = torch.tensor(4.6566127342e-10, dtype=torch.float32)  # ≈ 2^-31, Triton's constant
_TWO_PI = torch.tensor(6.283185307179586, dtype=torch.float32)
_MINUS_TWO = torch.tensor(-2.0, dtype=torch.float32)


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of the 64-bit product a·b (a a constant, b < 2^32), in int64 without overflow."""
    a1, a0 = a >> 16, a & 0xFFFF
    b1, b0 = b >> 16, b & 0xFFFF
    cross = a1 * b0 + a0 * b1  # < 2^33
    low = a0 * b0
    hi = a1 * b1 + ((cross + (low >> 16)) >> 16)
    lo = (((cross & 0xFFFF) << 16) + low) & _MASK32
    return hi & _MASK32, lo


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = 10):
    """Philox-4x32 (Salmon et al. 2011) on int64 tensors holding uint32 values; returns four uint32 words."""
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def _uint32_to_uniform(x: torch.Tensor) -> torch.Tensor:
    signed = torch.where(x >= 2**31, x - 2**32, x)  # reinterpret as int32
    folded = torch.where(signed < 0, -signed - 1, signed)  # ~x for negatives: [0, 2^31)
    return folded.to(torch.float32) * _UNIFORM_SCALE


def randn_philox(seeds: torch.Tensor, step: torch.Tensor | int, sample_shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Standard normal noise of shape (len(seeds), *sample_shape), float32, keyed per sample.

    ``seeds``: int64 (B,), one seed per sample (any 64-bit value). ``step``: an int or an integer tensor
    of shape () or (B,) — the diffusion step the noise is for (0 ≤ step < 2^32).
    """
    seeds = seeds.to(torch.int64)
    device = seeds.device
    b = seeds.shape[0]
    numel = math.prod(sample_shape)
    step = torch.as_tensor(step, dtype=torch.int64, device=device).reshape(-1)
    step = step.expand(b) if step.numel() == 1 else step
    elem = torch.arange(numel, dtype=torch.int64, device=device).expand(b, numel)
    k0 = (seeds & _MASK32)[:, None].expand(b, numel)
    k1 = ((seeds >> 32) & _MASK32)[:, None].expand(b, numel)
    c1 = (step & _MASK32)[:, None].expand(b, numel)
    zero = torch.zeros_like(elem)
    r0, r1, _, _ = philox4x32(elem, c1, zero, zero, k0, k1)
    u1 = torch.clamp_min(_uint32_to_uniform(r0), 1.0e-7)
    u2 = _uint32_to_uniform(r1)
    # Box-Muller, cosine branch, float32 throughout like the kernel.
    theta = _TWO_PI * u2
    radius = torch.sqrt(_MINUS_TWO * torch.log(u1))
    return (radius * torch.cos(theta)).reshape(b, *sample_shape)
