"""The diffusion core against closed forms (float64 numpy) and against the reference's code
(tests/reference_oracle.py) under one seed."""

import math

import numpy as np
import pytest
import torch

import reference_oracle as oracle
from fastddpm import (
    BETA_SCHEDULES,
    DiffusionConfig,
    GaussianDiffusion,
    Unet,
    cosine_beta_schedule,
    linear_beta_schedule,
    quadratic_beta_schedule,
    sigmoid_beta_schedule,
)
from fastddpm.tolerances import FLOAT32_SCHEDULE_TABLES, assert_close, tolerance

SCHEDULE_FUNCTIONS = {
    "linear": (linear_beta_schedule, oracle.linear_beta_schedule),
    "cosine": (cosine_beta_schedule, oracle.cosine_beta_schedule),
    "quadratic": (quadratic_beta_schedule, oracle.quadratic_beta_schedule),
    "sigmoid": (sigmoid_beta_schedule, oracle.sigmoid_beta_schedule),
}


def closed_form_betas(name, T):
    """The schedules of SPEC.md evaluated in float64."""
    if name == "linear":
        return np.linspace(1e-4, 0.02, T)
    if name == "quadratic":
        return np.linspace(1e-4**0.5, 0.02**0.5, T) ** 2
    if name == "sigmoid":
        return 1 / (1 + np.exp(-np.linspace(-6, 6, T))) * (0.02 - 1e-4) + 1e-4
    if name == "cosine":
        s = 0.008
        x = np.linspace(0, T, T + 1)
        abar = np.cos(((x / T) + s) / (1 + s) * np.pi / 2) ** 2
        abar = abar / abar[0]
        return np.clip(1 - abar[1:] / abar[:-1], 1e-4, 0.9999)
    raise AssertionError(name)


def closed_form_tables(betas):
    betas = np.asarray(betas, dtype=np.float64)
    alphas = 1 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    return {
        "betas": betas,
        "alphas": alphas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_recip_alphas": np.sqrt(1 / alphas),
        "sqrt_alphas_cumprod": np.sqrt(abar),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - abar),
        "posterior_variance": betas * (1 - abar_prev) / (1 - abar),
    }


# ----------------------------------------------------------------------------- schedules and tables
@pytest.mark.parametrize("name", sorted(SCHEDULE_FUNCTIONS))
@pytest.mark.parametrize("T", [2, 200, 1000])
def test_schedule_closed_form_and_reference(name, T):
    ours, theirs = SCHEDULE_FUNCTIONS[name]
    betas = ours(T)
    assert betas.dtype == torch.float32 and betas.shape == (T,)
    assert torch.equal(betas, theirs(T))
    assert_close(betas, torch.from_numpy(closed_form_betas(name, T)), rtol=FLOAT32_SCHEDULE_TABLES)
    assert BETA_SCHEDULES[name] is ours


@pytest.mark.parametrize("name", sorted(SCHEDULE_FUNCTIONS))
@pytest.mark.parametrize("T", [200, 1000])
def test_tables_closed_form(name, T):
    diffusion = GaussianDiffusion(T, name)
    expected = closed_form_tables(diffusion.betas.double().numpy())
    for table, values in expected.items():
        actual = getattr(diffusion, table)
        assert actual.dtype == torch.float32 and actual.shape == (T,), table
        # cumprod chains T float32 roundings; see FLOAT32_SCHEDULE_TABLES.
        assert_close(actual, torch.from_numpy(values), rtol=FLOAT32_SCHEDULE_TABLES)
    # The posterior variance at t=0 is exactly zero (ᾱ_{-1} = 1): the last step adds no noise.
    assert diffusion.posterior_variance[0].item() == 0.0


@pytest.mark.parametrize("name", sorted(SCHEDULE_FUNCTIONS))
def test_tables_bit_exact_with_reference(name):
    diffusion = GaussianDiffusion(200, name)
    reference = oracle.ReferenceDiffusion(200, betas=SCHEDULE_FUNCTIONS[name][1](200))
    for table in GaussianDiffusion.TABLES:
        if hasattr(reference, table):
            assert torch.equal(getattr(diffusion, table), getattr(reference, table)), table


def test_default_is_reference_schedule_and_terminal_signal():
    diffusion = GaussianDiffusion()
    assert diffusion.num_timesteps == 200 and diffusion.timesteps == 200
    assert torch.equal(diffusion.betas, linear_beta_schedule(200))
    # SPEC.md: ᾱ_T ≈ 0.13 at T=200 linear; ≈ 4e-5 at T=1000. Check against the float64 product.
    for T in (200, 1000):
        expected = float(np.prod(1 - np.linspace(1e-4, 0.02, T)))
        assert math.isclose(GaussianDiffusion(T).alphas_cumprod[-1].item(), expected, rel_tol=FLOAT32_SCHEDULE_TABLES)
    assert 0.12 < diffusion.alphas_cumprod[-1].item() < 0.14


def test_custom_betas():
    betas = torch.linspace(1e-3, 0.05, 37, dtype=torch.float64)
    diffusion = GaussianDiffusion(beta_schedule=betas)
    assert diffusion.num_timesteps == 37
    assert torch.equal(diffusion.betas, betas.float())
    assert GaussianDiffusion(37, betas.tolist()).num_timesteps == 37


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(beta_schedule="cosinus"), "unknown beta_schedule 'cosinus'"),
        (dict(timesteps=1), "timesteps must be an integer >= 2"),
        (dict(timesteps=10, beta_schedule=torch.full((5,), 0.01)), "betas has 5 entries but timesteps=10"),
        (dict(beta_schedule=torch.tensor([0.01, 1.0])), r"open interval \(0, 1\)"),
        (dict(beta_schedule=torch.zeros(2, 3)), "1-D"),
    ],
)
def test_bad_schedules_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianDiffusion(**kwargs)


@pytest.mark.parametrize("schedule", ["sigmoid", tuple(np.linspace(1e-3, 0.03, 9).astype(np.float32).tolist())])
def test_config_json_round_trip(schedule):
    diffusion = GaussianDiffusion(None if not isinstance(schedule, str) else 50, schedule)
    config = DiffusionConfig.from_json(diffusion.config.to_json())
    assert config == diffusion.config
    rebuilt = GaussianDiffusion.from_config(config)
    for table in GaussianDiffusion.TABLES:
        assert torch.equal(getattr(rebuilt, table), getattr(diffusion, table)), table


# ----------------------------------------------------------------------------- forward process
def test_q_sample_closed_form_with_given_noise():
    diffusion = GaussianDiffusion(200, "cosine")
    x0 = torch.randn(4, 3, 5, 7)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 100, 199])
    abar = diffusion.alphas_cumprod.double()[t].view(-1, 1, 1, 1)
    expected = abar.sqrt() * x0.double() + (1 - abar).sqrt() * noise.double()
    assert_close(diffusion.q_sample(x0, t, noise=noise), expected, torch.float32)


@pytest.mark.parametrize("t_value", [0, 50, 199])
def test_q_sample_statistics(t_value):
    # x_t | x_0 ~ N(√ᾱ_t·x_0, (1−ᾱ_t)·I): check mean and std over 200k draws at 6 standard errors.
    diffusion = GaussianDiffusion(200)
    torch.manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.7)
    xt = diffusion.q_sample(x0, torch.full((n,), t_value, dtype=torch.long)).double().flatten()
    abar = diffusion.alphas_cumprod[t_value].double().item()
    sd = math.sqrt(1 - abar)
    assert abs(xt.mean().item() - math.sqrt(abar) * 0.7) < 6 * sd / math.sqrt(n)
    # The sample variance's standard error is σ²·√(2/(n−1)).
    assert abs(xt.var().item() - sd**2) < 6 * sd**2 * math.sqrt(2 / (n - 1))


def test_q_sample_draws_like_reference():
    x0 = torch.randn(3, 1, 4, 4)
    t = torch.tensor([5, 0, 199])
    torch.manual_seed(11)
    ours = GaussianDiffusion(200).q_sample(x0, t)
    torch.manual_seed(11)
    theirs = oracle.ReferenceDiffusion(200).q_sample(x0, t)
    assert torch.equal(ours, theirs)


def test_bad_t_rejected():
    diffusion = GaussianDiffusion(10)
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="1-D LongTensor"):
        diffusion.q_sample(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="one step index per sample"):
        diffusion.q_sample(x, torch.tensor([1]))


# ----------------------------------------------------------------------------- posterior
def gaussian_product_posterior(betas, x0, xt, t):
    """q(x_{t−1}|x_t,x_0) ∝ N(x_t; √α_t x_{t−1}, β_t) · N(x_{t−1}; √ᾱ_{t−1} x_0, 1−ᾱ_{t−1}), completed
    square by square (section 二 of the reference write-up): precision = α_t/β_t + 1/(1−ᾱ_{t−1}),
    mean = variance·(√α_t·x_t/β_t + √ᾱ_{t−1}·x_0/(1−ᾱ_{t−1}))."""
    tab = closed_form_tables(betas)
    alpha, beta, abar_prev = tab["alphas"][t], tab["betas"][t], tab["alphas_cumprod_prev"][t]
    precision = alpha / beta + 1 / (1 - abar_prev)
    variance = 1 / precision
    mean = variance * (np.sqrt(alpha) * xt / beta + np.sqrt(abar_prev) * x0 / (1 - abar_prev))
    return mean, variance


# The identities below are checked with float64 tables (dtype=torch.float64): in float32, 1 − ᾱ_t for
# t near 0 is ~1e-4 and carries ~1e-3 relative rounding, which would hide a wrong formula.
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("t_value", [1, 2, 73, 199])
def test_posterior_matches_gaussian_product(schedule, t_value):
    diffusion = GaussianDiffusion(200, schedule, dtype=torch.float64)
    x0 = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    xt = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    t = torch.full((2,), t_value, dtype=torch.long)
    mean, variance = diffusion.q_posterior_mean_variance(x0, xt, t)
    exp_mean, exp_var = gaussian_product_posterior(diffusion.betas.numpy(), x0.numpy(), xt.numpy(), t_value)
    assert_close(mean, torch.from_numpy(exp_mean), torch.float64)
    assert_close(variance.flatten(), torch.full((2,), exp_var, dtype=torch.float64), torch.float64)


def test_posterior_at_t0_is_x0_with_zero_variance():
    diffusion = GaussianDiffusion(200, dtype=torch.float64)
    x0, xt = torch.randn(2, 1, 3, 3, dtype=torch.float64), torch.randn(2, 1, 3, 3, dtype=torch.float64)
    mean, variance = diffusion.q_posterior_mean_variance(x0, xt, torch.zeros(2, dtype=torch.long))
    assert_close(mean, x0, torch.float64)
    assert torch.all(variance == 0)


@pytest.mark.parametrize("t_value", [0, 1, 120, 199])
def test_eq11_mean_with_true_noise_is_posterior_mean(t_value):
    # With the true ε, eq. 11's mean (what p_sample returns at t_index 0) is the posterior mean at x_0.
    diffusion = GaussianDiffusion(200, dtype=torch.float64)
    x0 = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.full((3,), t_value, dtype=torch.long)
    xt = diffusion.q_sample(x0, t, noise=eps)
    assert_close(diffusion.predict_start_from_noise(xt, t, eps), x0, torch.float64)
    eq11 = diffusion.p_sample(lambda x, tt: eps, xt, t, t_index=0)
    posterior_mean, _ = diffusion.q_posterior_mean_variance(x0, xt, t)
    assert_close(eq11, posterior_mean, torch.float64)


def test_float64_tables_agree_with_reference_tables():
    single, double = GaussianDiffusion(200), GaussianDiffusion(200, dtype=torch.float64)
    assert torch.equal(double.betas, single.betas.double())
    for table in GaussianDiffusion.TABLES:
        assert getattr(double, table).dtype == torch.float64
        assert_close(getattr(single, table), getattr(double, table), rtol=FLOAT32_SCHEDULE_TABLES)


def test_p_sample_adds_posterior_noise():
    diffusion = GaussianDiffusion(200)
    x = torch.randn(2, 1, 4, 4)
    z = torch.randn_like(x)
    t = torch.tensor([10, 10])
    eps = torch.randn_like(x)
    with_noise = diffusion.p_sample(lambda a, b: eps, x, t, t_index=10, noise=z)
    mean = diffusion.p_sample(lambda a, b: eps, x, t, t_index=0)
    expected = mean.double() + diffusion.posterior_variance[10].double().sqrt() * z.double()
    assert_close(with_noise, expected, torch.float32)


# ----------------------------------------------------------------------------- losses
class ConstantModel(torch.nn.Module):
    def __init__(self, prediction):
        super().__init__()
        self.prediction = prediction

    def forward(self, x, t):
        return self.prediction


def hand_loss(noise, prediction, loss_type):
    d = (noise.double() - prediction.double()).numpy().ravel()
    if loss_type == "l1":
        return np.mean(np.abs(d))
    if loss_type == "l2":
        return np.mean(d**2)
    # Huber with δ = 1: ½d² inside |d| < 1, |d| − ½ outside.
    return np.mean(np.where(np.abs(d) < 1, 0.5 * d**2, np.abs(d) - 0.5))


@pytest.mark.parametrize("loss_type", ["l1", "l2", "huber"])
def test_p_losses_by_hand(loss_type):
    diffusion = GaussianDiffusion(200)
    x0 = torch.randn(4, 1, 6, 6)
    noise = 2 * torch.randn_like(x0)  # wide enough that Huber sees both branches
    prediction = torch.randn_like(x0)
    loss = diffusion.p_losses(ConstantModel(prediction), x0, torch.tensor([0, 3, 9, 199]), noise=noise, loss_type=loss_type)
    assert math.isclose(loss.item(), hand_loss(noise, prediction, loss_type), rel_tol=tolerance(torch.float32) * 10)


def test_p_losses_feeds_model_the_noised_input():
    diffusion = GaussianDiffusion(200)
    x0, noise = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([3, 150])
    seen = {}

    def model(x, tt):
        seen["x"], seen["t"] = x, tt
        return torch.zeros_like(x)

    diffusion.p_losses(model, x0, t, noise=noise, loss_type="l2")
    assert torch.equal(seen["x"], diffusion.q_sample(x0, t, noise=noise)) and seen["t"] is t


def test_unknown_loss_rejected():
    with pytest.raises(ValueError, match="unknown loss_type 'l3'"):
        GaussianDiffusion(10).p_losses(ConstantModel(torch.zeros(1)), torch.zeros(1, 1, 2, 2), torch.tensor([0]), loss_type="l3")


def test_p_losses_matches_reference_under_same_seed():
    torch.manual_seed(0)
    model = Unet(dim=8, channels=1, dim_mults=(1, 2))
    x0 = torch.randn(3, 1, 8, 8)
    t = torch.tensor([0, 100, 199])
    for loss_type in ("l1", "l2", "huber"):
        torch.manual_seed(5)
        ours = GaussianDiffusion(200).p_losses(model, x0, t, loss_type=loss_type)
        torch.manual_seed(5)
        theirs = oracle.ReferenceDiffusion(200).p_losses(model, x0, t, loss_type=loss_type)
        assert torch.equal(ours, theirs), loss_type


# ----------------------------------------------------------------------------- the sampling loop
def _tiny_pair(cfg=None):
    cfg = cfg or dict(dim=8, channels=1, dim_mults=(1, 2))
    torch.manual_seed(3)
    reference = oracle.Unet(**cfg).eval()
    model = Unet(**cfg).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    return model, reference


@pytest.mark.parametrize("schedule", ["linear", "cosine", "quadratic", "sigmoid"])
def test_p_sample_loop_same_samples_and_rng_order_as_reference(schedule):
    T = 12
    model, reference = _tiny_pair()
    torch.manual_seed(2024)
    ours = GaussianDiffusion(T, schedule).p_sample_loop(model, (2, 1, 8, 8), progress=False)
    ours_rng = torch.get_rng_state()
    torch.manual_seed(2024)
    theirs = oracle.ReferenceDiffusion(T, betas=SCHEDULE_FUNCTIONS[schedule][1](T)).p_sample_loop(reference, (2, 1, 8, 8))
    assert len(ours) == len(theirs) == T
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert isinstance(a, np.ndarray) and a.dtype == np.float32
        np.testing.assert_array_equal(a, b, err_msg=f"step {step}")
    # Same number of draws in the same order: the generators end in the same state.
    assert torch.equal(ours_rng, torch.get_rng_state())


def test_full_200_step_sample_matches_reference():
    model, reference = _tiny_pair(dict(dim=8, channels=3, dim_mults=(1, 2), use_convnext=False, resnet_block_groups=4))
    torch.manual_seed(99)
    ours = GaussianDiffusion(200).sample(model, image_size=4, batch_size=2, channels=3, progress=False)
    torch.manual_seed(99)
    theirs = oracle.ReferenceDiffusion(200).sample(reference, image_size=4, batch_size=2, channels=3)
    np.testing.assert_array_equal(ours[-1], theirs[-1])
    assert len(ours) == 200


def test_final_only_equals_last_step_without_host_copies():
    model, _ = _tiny_pair()
    diffusion = GaussianDiffusion(10)
    torch.manual_seed(1)
    everything = diffusion.p_sample_loop(model, (3, 1, 8, 8), progress=False)
    torch.manual_seed(1)
    final = diffusion.p_sample_loop(model, (3, 1, 8, 8), return_all_timesteps=False, progress=False)
    assert isinstance(final, torch.Tensor)
    np.testing.assert_array_equal(final.numpy(), everything[-1])


def test_same_seed_reproduces_different_seed_differs():
    model, _ = _tiny_pair()
    diffusion = GaussianDiffusion(8)

    def run(s):
        torch.manual_seed(s)
        return diffusion.sample(model, image_size=8, batch_size=2, channels=1, return_all_timesteps=False, progress=False)

    assert torch.equal(run(4), run(4))
    assert not torch.equal(run(4), run(5))


def test_loop_with_parameterless_callable_runs_on_cpu():
    diffusion = GaussianDiffusion(5)
    out = diffusion.p_sample_loop(lambda x, t: torch.zeros_like(x), (2, 1, 4, 4), return_all_timesteps=False, progress=False)
    assert out.device.type == "cpu" and out.shape == (2, 1, 4, 4)
