"""Shared by the solver agreement tests: the exact-ε mixture setting, a plan's update applied in float64
(written out independently of the library's runners), and diffusers' scheduler loop."""

import torch

from fastddpm import GaussianDiffusion
from fastddpm.eval.oracle import GaussianMixture
from fastddpm.kernels.update_rows import HISTORY_ROWS, Row

T = 1000


def mixture_setting():
    """(the exact-ε model of a 3-component mixture on 1×2×2 images, float64 ᾱ, 64 fixed x_T)."""
    diffusion = GaussianDiffusion(T)
    means = torch.tensor([[-1.0, -1.0, 0.5, 0.0], [1.0, 0.8, -0.5, 0.2], [0.0, 1.0, 1.0, -1.0]])
    mix = GaussianMixture(means, [0.1, 0.2, 0.05], [0.5, 0.3, 0.2], diffusion.alphas_cumprod, (1, 2, 2))
    abar = torch.cumprod(1 - diffusion.betas.double(), 0)
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    return mix, abar, x_T


def run_plan(model, coefs, timesteps, x_T):
    """The plan's update (``fastddpm.kernels.update_rows``) in float64: x̂_0 = X0_FROM_X·x + X0_FROM_EPS·ε̂,
    x_next = X·x + EPS·ε̂ + X0·x̂_0 + Σ_j HISTORY_j·x̂_0[k−j] (deterministic plans: NOISE is zero)."""
    x = x_T.double()
    history = [torch.zeros_like(x)] * len(HISTORY_ROWS)
    for k, t in enumerate(timesteps):
        c = coefs[:, k]
        assert c[Row.NOISE] == 0
        eps = model(x, torch.full((x.shape[0],), t)).double()
        x0 = c[Row.X0_FROM_X] * x + c[Row.X0_FROM_EPS] * eps
        x = c[Row.X] * x + c[Row.EPS] * eps + c[Row.X0] * x0 + sum(c[r] * h for r, h in zip(HISTORY_ROWS, history))
        history = [x0] + history[:-1]
    return x


def run_diffusers(model, scheduler, x):
    for t in scheduler.timesteps:
        eps = model(x, torch.full((x.shape[0],), int(t)))
        x = scheduler.step(eps, t, x).prev_sample
    return x
