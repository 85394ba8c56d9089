"""UniPC as coefficient rows (fastddpm.solvers.unipc) agrees with diffusers' UniPCMultistepScheduler (skips
without diffusers)."""

import numpy as np
import pytest
import torch

from fastddpm import GaussianDiffusion
from fastddpm.kernels.update_rows import HISTORY_ROWS, NUM_ROWS, Row
from fastddpm.solvers.unipc import UNIPC_ORDERS, unipc_coefficients, unipc_histories
from fastddpm.tolerances import assert_close

from solver_harness import T, mixture_setting, run_diffusers, run_plan

diffusers = pytest.importorskip("diffusers")
# diffusers computes its tables in float32; ours are built in float64 from the same float32 betas, so the
# two differ by float32 rounding of ᾱ (up to ~1e-6 relative), carried through 20 steps.
# Measured, max over linspace/leading/trailing: order 1: 1.4e-6 (10 steps), 1.2e-6 (20); order 2:
# 2.1e-6 (10), 1.2e-6 (20); order 3: 2.1e-6 (10), 1.2e-6 (20); 2–4 steps: ≤ 1.6e-6. (A single step from
# t = 999 is left out: diffusers' float32 x̂_0 = (x − σ·ε̂)/α cancels and multiplies by 1/α ≈ 157,
# 9.3e-5 apart from float64; test_unipc_single_step_is_ddim_to_x0 checks that step's rows instead.)
AGREEMENT = 1e-5
# fastddpm.Sampler itself (float32 state, float32 coefficient table, fused update) against diffusers'
# float32 scheduler: both round, and x̂_0 = (x − σ·ε̂)/α multiplies the state's rounding by 1/α (≈ 61 at
# t = 900). Measured, each side against the float64 plan over 10 and 20 steps, orders 2 and 3: ours
# 4.5e-7 – 2.5e-5, diffusers' 9.6e-7 – 8.3e-6 (the largest of ours: order 3, 10 "leading" steps).
SAMPLER_AGREEMENT = 5e-5


@pytest.fixture(scope="module")
def setting():
    return mixture_setting()


def unipc_scheduler(order, steps, spacing):
    scheduler = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=T, beta_schedule="linear", solver_order=order, solver_type="bh2", predict_x0=True,
        lower_order_final=True, final_sigmas_type="zero", disable_corrector=[], prediction_type="epsilon",
        thresholding=False, timestep_spacing=spacing)
    # This diffusers' UniPC set_timesteps takes no explicit timesteps: its spacing picks them, we read them.
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("order", UNIPC_ORDERS)
def test_unipc_trajectory_matches_diffusers(setting, order, steps, spacing):
    mix, abar, x_T = setting
    scheduler = unipc_scheduler(order, steps, spacing)
    seq = scheduler.timesteps.tolist()
    expected = run_diffusers(mix, scheduler, x_T.clone())
    coefs = unipc_coefficients(abar, seq, order=order)
    assert coefs.dtype == np.float64 and coefs.shape == (NUM_ROWS, steps)
    assert_close(run_plan(mix, coefs, seq, x_T), expected, rtol=AGREEMENT)


@pytest.mark.parametrize("steps", [2, 3, 4])  # ramp-up and lower_order_final overlap
@pytest.mark.parametrize("order", UNIPC_ORDERS)
def test_unipc_few_steps_match_diffusers(setting, order, steps):
    mix, abar, x_T = setting
    scheduler = unipc_scheduler(order, steps, "trailing")
    seq = scheduler.timesteps.tolist()
    expected = run_diffusers(mix, scheduler, x_T.clone())
    assert_close(run_plan(mix, unipc_coefficients(abar, seq, order=order), seq, x_T), expected, rtol=AGREEMENT)


@pytest.mark.parametrize("order", UNIPC_ORDERS)
def test_unipc_rows_structure(order):
    abar = torch.cumprod(1 - GaussianDiffusion(T).betas.double(), 0)
    seq = unipc_scheduler(order, 10, "trailing").timesteps.tolist()
    coefs = unipc_coefficients(abar, seq, order=order)
    n = unipc_histories(order)
    assert n == order
    assert not coefs[Row.NOISE].any()
    assert not coefs[list(HISTORY_ROWS[n:])].any()  # rows beyond the order's reach are exactly zero
    assert coefs[HISTORY_ROWS[n - 1]].any()  # and the last one it claims is used
    a = abar[seq].numpy() ** 0.5
    s = (1 - abar[seq].numpy()) ** 0.5
    np.testing.assert_array_equal(coefs[Row.X0_FROM_X], 1 / a)
    np.testing.assert_array_equal(coefs[Row.X0_FROM_EPS], -s / a)
    # The last step lands on x_0 = x̂_0[S−1]: weight 1 on x̂_0, none on the state, ε̂ or a history.
    assert coefs[Row.X0, -1] == 1 and not coefs[[Row.X, Row.EPS], -1].any()
    assert not coefs[list(HISTORY_ROWS), -1].any()
    assert not coefs[Row.EPS].any()  # data prediction: ε̂ enters through x̂_0 only
    # The first step has no history yet.
    assert not coefs[list(HISTORY_ROWS), 0].any()


def test_unipc_independent_of_default_dtype():
    abar = torch.cumprod(1 - GaussianDiffusion(T).betas.double(), 0)
    seq = [999, 799, 599, 399, 199, 0]
    expected = unipc_coefficients(abar, seq, order=3)
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float32)
        got32 = unipc_coefficients(abar, seq, order=3)
        torch.set_default_dtype(torch.float64)
        got64 = unipc_coefficients(abar, seq, order=3)
    finally:
        torch.set_default_dtype(previous)
    np.testing.assert_array_equal(got32, expected)
    np.testing.assert_array_equal(got64, expected)


def test_unipc_single_step_is_ddim_to_x0():
    abar = torch.cumprod(1 - GaussianDiffusion(T).betas.double(), 0)
    for order in UNIPC_ORDERS:
        coefs = unipc_coefficients(abar, [500], order=order)
        a, s = float(abar[500]) ** 0.5, (1 - float(abar[500])) ** 0.5
        expected = np.zeros(NUM_ROWS)
        expected[[Row.X0, Row.X0_FROM_X, Row.X0_FROM_EPS]] = 1, 1 / a, -s / a
        np.testing.assert_allclose(coefs[:, 0], expected, rtol=1e-15)


def test_unipc_errors():
    abar = torch.cumprod(1 - GaussianDiffusion(T).betas.double(), 0)
    for order in (0, 4, True, 2.5):
        with pytest.raises(ValueError, match="order must be one of"):
            unipc_coefficients(abar, [999, 0], order=order)
        with pytest.raises(ValueError, match="order must be one of"):
            unipc_histories(order)
    with pytest.raises(ValueError, match="at least 1 timestep"):
        unipc_coefficients(abar, [])
    with pytest.raises(ValueError, match=r"lie in \[0, 999\]"):
        unipc_coefficients(abar, [1000, 0])
    with pytest.raises(ValueError, match="distinct and descending"):
        unipc_coefficients(abar, [0, 999])
    with pytest.raises(ValueError, match="distinct and descending"):
        unipc_coefficients(abar, [999, 500, 500])
    with pytest.raises(ValueError, match="integers"):
        unipc_coefficients(abar, [999.0, 0.0])


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("order", [2, 3])
def test_sampler_unipc_matches_diffusers(setting, order, steps, spacing):
    """Sampler(method="unipc"), float32 and fused, against diffusers' scheduler on the same x_T and steps."""
    from fastddpm import Sampler

    mix, _, _ = setting
    scheduler = unipc_scheduler(order, steps, spacing)
    sampler = Sampler(mix, GaussianDiffusion(T), method="unipc", timesteps=scheduler.timesteps.tolist(), order=order)
    assert sampler.plan.histories == order
    x_T, _ = sampler.torch_noise((64, 1, 2, 2), seed=5)
    expected = run_diffusers(mix, scheduler, x_T.clone())
    got = sampler.sample(64, (2, 2), 1, seed=5, progress=False, clip=False)
    assert_close(got, expected, rtol=SAMPLER_AGREEMENT)

