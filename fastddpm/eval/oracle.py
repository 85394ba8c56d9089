"""An ε-model that is exact: data from a known Gaussian mixture, so sampler error can be measured alone.

For x_0 ~ Σ_k w_k N(μ_k, s_k² I), the noised marginal at step t is Σ_k w_k N(√ᾱ_t μ_k, (ᾱ_t s_k² + 1 − ᾱ_t) I),
and the optimal noise prediction is ε*(x_t, t) = −√(1−ᾱ_t)·∇ log p_t(x_t), in closed form. A sampler fed
ε* can only miss the data distribution through its own discretisation error.
"""

from __future__ import annotations

import dataclasses
import math

import torch

__all__ = ["GaussianMixture", "sliced_wasserstein", "QualityReport", "evaluate"]


class GaussianMixture:
    """Isotropic Gaussian mixture over images of ``shape`` (C, H, W); ``model(x, t)`` gives the exact ε."""

    def __init__(self, means: torch.Tensor, stds, weights, alphas_cumprod: torch.Tensor, shape):
        self.means = torch.as_tensor(means, dtype=torch.float64)  # (K, D)
        self.stds = torch.as_tensor(stds, dtype=torch.float64)  # (K,)
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.shape = tuple(shape)
        if self.means.shape[1] != math.prod(self.shape):
            raise ValueError(f"means have {self.means.shape[1]} dims; shape {self.shape} has {math.prod(self.shape)}")
        self.abar = alphas_cumprod.detach().to("cpu", torch.float64)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact draws (n, *shape) in float64 and their component labels."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], dtype=torch.float64, generator=generator)
        x = self.means[labels] + self.stds[labels, None] * noise
        return x.reshape(n, *self.shape), labels

    def responsibilities(self, x: torch.Tensor, abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior component probabilities (n, K) at noise level ᾱ (per sample), and variances (n, K)."""
        flat = x.reshape(x.shape[0], -1).double()
        d = flat.shape[1]
        a = abar.double()[:, None]
        var = a * self.stds[None, :] ** 2 + (1 - a)  # (n, K)
        centers = a.sqrt()[:, :, None] * self.means[None]  # (n, K, D)... broadcast below
        sq = ((flat[:, None, :] - centers) ** 2).sum(-1)  # (n, K)
        logp = self.weights.log()[None] - 0.5 * sq / var - 0.5 * d * var.log()
        return torch.softmax(logp, dim=1), var

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.abar[t.cpu()].to(torch.float64)
        flat = x.reshape(x.shape[0], -1).double().cpu()
        resp, var = self.responsibilities(flat, abar)
        centers = abar.sqrt()[:, None, None] * self.means[None]  # (n, K, D)
        score = -(resp[:, :, None] * (flat[:, None, :] - centers) / var[:, :, None]).sum(1)
        eps = -(1 - abar).sqrt()[:, None] * score
        return eps.reshape(x.shape).to(device=x.device, dtype=x.dtype)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-1 distance between two equal-size point clouds (n, ...)."""
    a = a.reshape(a.shape[0], -1).double().cpu()
    b = b.reshape(b.shape[0], -1).double().cpu()
    if a.shape != b.shape:
        raise ValueError(f"point clouds must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, dtype=torch.float64, generator=g)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = (a @ dirs).sort(dim=0)
    pb, _ = (b @ dirs).sort(dim=0)
    return float((pa - pb).abs().mean())


@dataclasses.dataclass(frozen=True)
class QualityReport:
    w_over_floor: float  # mean sliced W1 to independent exact-draw sets / mean W1 between exact sets
    weight_error: float  # max over components of |share of samples − true weight|
    spread_ratio: tuple[float, ...]  # per component: RMS distance to its mean / the true RMS distance


def evaluate(mix: GaussianMixture, samples: torch.Tensor, references: list[torch.Tensor]) -> QualityReport:
    """Compare ``samples`` with the mixture: distance to several exact-draw sets against the floor (the
    distance between exact-draw sets themselves, averaged over pairs: one pair alone scatters ±30%),
    component weights (samples assigned by their data-space responsibility) and per-component spread."""
    n = samples.shape[0]
    if any(r.shape[0] != n for r in references) or len(references) < 2:
        raise ValueError("pass at least two exact-draw sets of the samples' size")
    to_samples = sum(sliced_wasserstein(samples, r) for r in references) / len(references)
    pairs = [(i, j) for i in range(len(references)) for j in range(i + 1, len(references))]
    floor = sum(sliced_wasserstein(references[i], references[j]) for i, j in pairs) / len(pairs)
    flat = samples.reshape(n, -1).double().cpu()
    resp, _ = mix.responsibilities(flat, torch.ones(n, dtype=torch.float64))
    labels = resp.argmax(1)
    shares = torch.bincount(labels, minlength=len(mix.weights)).double() / n
    d = flat.shape[1]
    spreads = []
    for k in range(len(mix.weights)):
        members = flat[labels == k]
        rms = ((members - mix.means[k]) ** 2).sum(1).mean().sqrt() if len(members) else torch.tensor(float("nan"))
        spreads.append(float(rms / (mix.stds[k] * math.sqrt(d))))
    return QualityReport(to_samples / floor, float((shares - mix.weights).abs().max()), tuple(spreads))
