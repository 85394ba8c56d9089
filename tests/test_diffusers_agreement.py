"""Timesteps and updates agree with diffusers' schedulers for an equal configuration (skips without diffusers)."""

import pytest

from fastddpm import GaussianDiffusion
from fastddpm.kernels.update_rows import Row
from fastddpm.solvers.ddim import ddim_coefficients
from fastddpm.solvers.dpmsolver import dpmsolver_coefficients
from fastddpm.solvers.timesteps import timestep_sequence
from fastddpm.tolerances import assert_close

from solver_harness import T, mixture_setting, run_diffusers, run_plan

diffusers = pytest.importorskip("diffusers")

# diffusers computes its tables in float32; ours are built in float64 from the same float32 betas, so the
# two differ by float32 rounding of ᾱ (up to ~1e-6 relative), carried through 20 steps.
AGREEMENT = 1e-5  # measured 1.0e-6 (DDIM) and 1.2e-6 (DPM-Solver++) over 20 steps
# fastddpm.Sampler itself (float32 state, float32 coefficient tables) against diffusers (float32): both sides
# round, and the first steps near t = T−1 multiply ε̂'s rounding by σ/α ≈ 158. Measured over 10 third-order
# steps: 1.1e-5 (trailing spacing, whose first step is t = 999).
SAMPLER_AGREEMENT = 5e-5


@pytest.fixture(scope="module")
def setting():
    return mixture_setting()


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
    assert_close(run_plan(mix, ddim_coefficients(abar, seq, 0.0), seq, x_T), expected, rtol=AGREEMENT)


def test_dpmsolver_trajectory_matches_diffusers(setting):
    mix, abar, x_T = setting
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2,
        final_sigmas_type="zero", lower_order_final=True)
    scheduler.set_timesteps(20)  # ≥ 15 steps: second order everywhere but the first and the last step
    seq = scheduler.timesteps.tolist()
    expected = run_diffusers(mix, scheduler, x_T.clone())
    got = run_plan(mix, dpmsolver_coefficients(abar, seq), seq, x_T)
    assert_close(got, expected, rtol=AGREEMENT)


@pytest.mark.parametrize("steps", [10, 20])  # < 15: second order at the second-to-last step too
def test_dpmsolver_third_order_matches_diffusers(setting, steps):
    mix, abar, x_T = setting
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=3,
        final_sigmas_type="zero", lower_order_final=True)
    scheduler.set_timesteps(steps)
    seq = scheduler.timesteps.tolist()
    expected = run_diffusers(mix, scheduler, x_T.clone())
    coefs = dpmsolver_coefficients(abar, seq, order=3)
    assert (coefs[Row.HISTORY2] != 0).sum() == steps - (3 if steps < 15 else 2) - 1
    assert_close(run_plan(mix, coefs, seq, x_T), expected, rtol=AGREEMENT)


@pytest.mark.parametrize("spacing", ["logsnr", "trailing"])
def test_sampler_third_order_matches_diffusers(setting, spacing):
    """fastddpm.Sampler(order=3), float32 and fused, against diffusers' 3M on the same steps and x_T."""
    from fastddpm import Sampler

    mix, _, _ = setting
    sampler = Sampler(mix, GaussianDiffusion(T), method="dpmsolver++", steps=10, spacing=spacing, order=3)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=3,
        final_sigmas_type="zero", lower_order_final=True)
    scheduler.set_timesteps(timesteps=sampler.timestep_sequence)
    x_T, _ = sampler.torch_noise((64, 1, 2, 2), seed=5)
    expected = run_diffusers(mix, scheduler, x_T.clone())
    got = sampler.sample(64, (2, 2), 1, seed=5, progress=False, clip=False)
    assert_close(got, expected, rtol=SAMPLER_AGREEMENT)
