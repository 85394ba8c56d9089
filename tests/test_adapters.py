"""Adapters: prediction-type conversions against closed forms, a v-model sampling like its ε-model, diffusers'
DDPMScheduler schedules bit for bit, a diffusers UNet2DModel through Sampler and the CLI, and
denoising-diffusion-pytorch's interface (duck-typed: the library itself needs torchvision)."""

import types

import numpy as np
import pytest
import torch

from fastddpm import GaussianDiffusion, Sampler
from fastddpm.sampling.adapters import EpsModel, adapt, diffusion_from_diffusers, from_denoising_diffusion_pytorch
from fastddpm.tolerances import FLOAT32_TRAJECTORY, PREDICTION_CONVERSION, assert_close

from test_cli import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(1000, "linear")


def _noised(diffusion, batch=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(batch, 1, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(batch, 1, 8, 8, generator=g)
    t = torch.tensor([0, 1, 10, 300, 700, 999])[:batch]
    return x0, eps, t, diffusion.q_sample(x0, t, noise=eps)


@pytest.mark.parametrize("prediction_type", ["sample", "x0", "pred_x0", "v", "v_prediction", "pred_v"])
def test_conversions_recover_eps_from_exact_predictions(diffusion, prediction_type):
    x0, eps, t, x_t = _noised(diffusion)
    abar = diffusion.alphas_cumprod.double()[t].reshape(-1, 1, 1, 1)
    if prediction_type in ("sample", "x0", "pred_x0"):
        exact = x0  # an oracle that predicts x_0 perfectly
    else:
        exact = (abar.sqrt() * eps.double() - (1 - abar).sqrt() * x0.double()).float()  # v = √ᾱ·ε − √(1−ᾱ)·x_0
    model = adapt(lambda x, t: exact, prediction_type, diffusion)
    assert_close(model(x_t, t), eps, rtol=PREDICTION_CONVERSION)


def test_output_unwrapping_and_errors(diffusion):
    x0, eps, t, x_t = _noised(diffusion)
    out = types.SimpleNamespace(sample=eps)  # diffusers' UNet2DOutput
    assert torch.equal(adapt(lambda x, t: out)(x_t, t), eps)
    assert torch.equal(adapt(lambda x, t: (eps, None))(x_t, t), eps)
    with pytest.raises(TypeError, match="returned dict"):
        adapt(lambda x, t: {"eps": eps})(x_t, t)
    with pytest.raises(ValueError, match="unknown prediction type 'score'"):
        adapt(lambda x, t: eps, "score", diffusion)
    with pytest.raises(ValueError, match="needs the diffusion"):
        adapt(lambda x, t: eps, "v")


def test_a_v_model_samples_like_its_eps_model(small_unet):
    """Wrap the ε-U-Net as a v-predictor (closed form); the adapter must give back the same samples."""
    diffusion = GaussianDiffusion(200)
    abar = diffusion.alphas_cumprod

    def v_model(x, t):
        eps = small_unet(x, t)
        a, s = abar[t].sqrt().reshape(-1, 1, 1, 1), (1 - abar[t]).sqrt().reshape(-1, 1, 1, 1)
        x0 = (x - s * eps) / a
        return a * eps - s * x0

    for method, steps in (("ddim", 8), ("dpmsolver++", 8), ("ddpm", 10)):
        expected = Sampler(small_unet, diffusion, method=method, steps=steps).sample(3, 8, 1, seed=1, progress=False)
        adapted = Sampler(v_model, diffusion, method=method, steps=steps, prediction_type="v")
        assert isinstance(adapted.model, EpsModel)
        assert_close(adapted.sample(3, 8, 1, seed=1, progress=False), expected, rtol=PREDICTION_CONVERSION)


def test_denoising_diffusion_pytorch_interface(small_unet):
    """Its GaussianDiffusion exposes .model, .objective and .betas (float32 buffer); duck-typed here."""
    betas = torch.linspace(1e-4, 0.02, 200)
    gd = types.SimpleNamespace(model=small_unet, objective="pred_noise", betas=betas)
    eps_model, diffusion = from_denoising_diffusion_pytorch(gd)
    assert torch.equal(diffusion.betas, betas) and eps_model.prediction_type == "epsilon"
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 150])
    with torch.no_grad():
        assert torch.equal(eps_model(x, t), small_unet(x, t))
    with pytest.raises(TypeError, match="with .objective"):
        from_denoising_diffusion_pytorch(types.SimpleNamespace(model=small_unet, betas=betas))


# -- diffusers ------------------------------------------------------------------------------------
diffusers = pytest.importorskip("diffusers", reason="diffusers (the compare extra) is not installed")


@pytest.mark.parametrize("config", [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="sigmoid"),
    dict(trained_betas=list(np.linspace(1e-3, 0.05, 40))),
    dict(beta_schedule="linear", prediction_type="v_prediction"),
    dict(beta_schedule="linear", prediction_type="sample"),
], ids=lambda c: "-".join(str(v)[:12] for v in c.values()))
def test_ddpm_scheduler_configs_give_the_same_tables(config):
    T = len(config["trained_betas"]) if "trained_betas" in config else 50
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, **config)
    diffusion, prediction = diffusion_from_diffusers(scheduler)
    assert torch.equal(diffusion.betas, scheduler.betas.float())
    assert torch.equal(diffusion.alphas_cumprod, scheduler.alphas_cumprod.float())
    assert prediction == {"epsilon": "epsilon", "v_prediction": "v", "sample": "sample"}[scheduler.config.prediction_type]
    assert diffusion_from_diffusers(dict(scheduler.config))[0].betas.equal(diffusion.betas)  # the config dict too


@pytest.fixture(scope="module")
def tiny_diffusers_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()


def test_diffusers_unet_through_sampler(tiny_diffusers_unet):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=100, prediction_type="v_prediction")
    diffusion, prediction = diffusion_from_diffusers(scheduler)
    sampler = Sampler(tiny_diffusers_unet, diffusion, method="ddim", steps=5, prediction_type=prediction)
    out = sampler.sample(2, 8, 1, seed=0, progress=False, clip=False)
    # By hand: the same DDIM steps on ε computed from the raw UNet2DModel's v.
    manual = Sampler(lambda x, t: _eps_from_v(tiny_diffusers_unet(x, t).sample, x, t, diffusion), diffusion,
                     method="ddim", steps=5)
    assert_close(out, manual.sample(2, 8, 1, seed=0, progress=False, clip=False), rtol=FLOAT32_TRAJECTORY)


def _eps_from_v(v, x, t, diffusion):
    abar = diffusion.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return abar.sqrt() * v + (1 - abar).sqrt() * x


def test_cli_samples_a_diffusers_pipeline_folder(tiny_diffusers_unet, tmp_path):
    folder = tmp_path / "pipeline"
    tiny_diffusers_unet.save_pretrained(folder / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=50).save_pretrained(folder / "scheduler")
    result = run_cli("sample", "--diffusers", str(folder), "--method", "ddim", "--steps", "4", "--num", "3",
                     "--out", str(tmp_path / "s.npz"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "s.npz")["arr_0"].shape == (3, 8, 8, 1)
    assert_one_line_error(run_cli("sample", "--diffusers", str(tmp_path), "--out", str(tmp_path / "x.png")),
                          "expected a diffusers pipeline folder")
