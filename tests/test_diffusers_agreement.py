"""Timesteps and updates agree with diffusers' schedulers for an equal configuration (skips without diffusers)."""

import pytest
import torch

from fastddpm import GaussianDiffusion
from fastddpm.oracle import GaussianMixture
from fastddpm.schedules import ddim_coefficients, dpmsolver_coefficients, timestep_sequence
from fastddpm.tolerances import assert_close

diffusers = pytest.importorskip("diffusers")

T = 1000
# diffusers computes its tables in float32; ours are built in float64 from the same float32 betas, so the
# two differ by float32 rounding of ᾱ (up to ~1e-6 relative), carried through 20 steps.
AGREEMENT = 1e-5  # measured 1.0e-6 (DDIM) and 1.2e-6 (DPM-Solver++) over 20 steps


@pytest.fixture(scope="module")
def setting():
    diffusion = GaussianDiffusion(T)
    means = torch.tensor([[-1.0, -1.0, 0.5, 0.0], [1.0, 0.8, -0.5, 0.2], [0.0, 1.0, 1.0, -1.0]])
    mix = GaussianMixture(means, [0.1, 0.2, 0.05], [0.5, 0.3, 0.2], diffusion.alphas_cumprod, (1, 2, 2))
    abar = torch.cumprod(1 - diffusion.betas.double(), 0)
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    return mix, abar, x_T


def run_ours(mix, coefs, seq, x, multistep=False):
    x = x.double()
    x0_prev = torch.zeros_like(x)
    for k, t in enumerate(seq):
        eps = mix(x, torch.full((x.shape[0],), t)).double()
        if multistep:
            A, B, E, F, G = coefs[:, k]
            x, x0_prev = A * x + B * eps + E * x0_prev, F * x + G * eps
        else:
            A, B, _ = coefs[:, k]
            x = A * x + B * eps
    return x


def run_diffusers(mix, scheduler, x):
    for t in scheduler.timesteps:
        eps = mix(x, torch.full((x.shape[0],), int(t)))
        x = scheduler.step(eps, t, x).prev_sample
    return x


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_timesteps_match_diffusers(spacing, steps):
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.tolist() == timestep_sequence(T, steps, spacing)


def test_ddim_trajectory_matches_diffusers(setting):
    mix, abar, x_T = setting
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False,
                                        set_alpha_to_one=True, timestep_spacing="leading")
    scheduler.set_timesteps(20)
    seq = timestep_sequence(T, 20, "leading")
    expected = run_diffusers(mix, scheduler, x_T.clone())
    assert_close(run_ours(mix, ddim_coefficients(abar, seq, 0.0), seq, x_T), expected, rtol=AGREEMENT)


def test_dpmsolver_trajectory_matches_diffusers(setting):
    mix, abar, x_T = setting
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2,
        final_sigmas_type="zero", lower_order_final=True)
    scheduler.set_timesteps(20)  # ≥ 15 steps: second order everywhere but the first and the last step
    seq = scheduler.timesteps.tolist()
    expected = run_diffusers(mix, scheduler, x_T.clone())
    got = run_ours(mix, dpmsolver_coefficients(abar, seq), seq, x_T, multistep=True)
    assert_close(got, expected, rtol=AGREEMENT)
