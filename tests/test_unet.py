"""The reference U-Net against the reference's code (tests/reference_oracle.py) and SPEC.md's facts."""

import math

import numpy as np
import pytest
import torch

import reference_oracle as oracle
from conftest import UNET_CONFIGS
from fastddpm import Unet, UnetConfig
from fastddpm.tolerances import assert_close
from fastddpm.reference.unet import SinusoidalPositionEmbeddings


def _size_for(cfg):
    return 4 * 2 ** (len(cfg["dim_mults"]) - 1)


@pytest.mark.parametrize("name", sorted(UNET_CONFIGS))
def test_state_dict_layout_matches_reference(name):
    cfg = UNET_CONFIGS[name]
    ours, theirs = Unet(**cfg).state_dict(), oracle.Unet(**cfg).state_dict()
    assert list(ours) == list(theirs)  # same names in the same order
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert sum(v.numel() for v in ours.values()) == sum(v.numel() for v in theirs.values())


def test_fashion_config_counts_from_spec():
    # SPEC.md: Unet(dim=28, channels=1, dim_mults=(1, 2, 4)) has 2,996,315 parameters in 220 entries.
    model = Unet(dim=28, channels=1, dim_mults=(1, 2, 4))
    assert sum(p.numel() for p in model.parameters()) == 2_996_315
    assert len(model.state_dict()) == 220


@pytest.mark.parametrize("name", sorted(UNET_CONFIGS))
def test_same_seed_same_initial_weights(name):
    # Registration order decides the order of random initialisation: same seed, same weights.
    cfg = UNET_CONFIGS[name]
    torch.manual_seed(123)
    ours = Unet(**cfg).state_dict()
    torch.manual_seed(123)
    theirs = oracle.Unet(**cfg).state_dict()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("name", sorted(UNET_CONFIGS))
def test_reference_state_dict_loads_strict_and_forward_matches(name):
    cfg = UNET_CONFIGS[name]
    torch.manual_seed(7)
    reference = oracle.Unet(**cfg).eval()
    # Perturb the norms' affine parameters away from 1/0 so they matter in the comparison.
    with torch.no_grad():
        for key, value in reference.state_dict().items():
            if "norm" in key or key.endswith(("net.0.weight", "net.3.weight", "to_out.1.weight")):
                value.add_(0.1 * torch.randn_like(value))
    model = Unet(**cfg).eval()
    model.load_state_dict(reference.state_dict(), strict=True)

    size = _size_for(cfg)
    x = torch.randn(3, cfg["channels"], size, size)
    t = torch.tensor([0, 57, 199])
    with torch.no_grad():
        expected = reference(x, t)
        actual = model(x, t)
    assert actual.shape == (3, cfg.get("out_dim") or cfg["channels"], size, size)
    assert_close(actual, expected, torch.float32)


def test_forward_non_square_and_batch_one():
    cfg = UNET_CONFIGS["convnext-fashion"]
    torch.manual_seed(0)
    reference = oracle.Unet(**cfg).eval()
    model = Unet(**cfg).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(1, 1, 12, 20)
    t = torch.tensor([3])
    with torch.no_grad():
        assert_close(model(x, t), reference(x, t), torch.float32)


def test_gradients_match_reference():
    cfg = UNET_CONFIGS["resnet-rgb"]
    torch.manual_seed(1)
    reference = oracle.Unet(**cfg)
    model = Unet(**cfg)
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([4, 150])
    reference(x, t).square().mean().backward()
    model(x, t).square().mean().backward()
    ref_grads = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        assert_close(p.grad, ref_grads[name].grad, torch.float32)


@pytest.mark.parametrize("dim", [4, 16, 28, 64])
def test_sinusoidal_embedding_closed_form(dim):
    t = torch.tensor([0, 1, 17, 199, 999])
    half = dim // 2
    freqs = np.exp(-np.arange(half) * math.log(10000) / (half - 1))
    args = t.numpy()[:, None].astype(np.float64) * freqs[None, :]
    expected = np.concatenate([np.sin(args), np.cos(args)], axis=-1)
    actual = SinusoidalPositionEmbeddings(dim)(t)
    # float32 frequencies times t up to 999 carry ~1e-4 absolute phase error at the highest t.
    np.testing.assert_allclose(actual.numpy(), expected, atol=5e-4, rtol=0)


@pytest.mark.parametrize("dim", [2, 3, 7])
def test_sinusoidal_embedding_rejects_bad_width(dim):
    with pytest.raises(ValueError, match="even and >= 4"):
        SinusoidalPositionEmbeddings(dim)


def test_wrong_channel_count_names_expected_value():
    model = Unet(dim=8, channels=3, dim_mults=(1, 2))
    with pytest.raises(ValueError, match=r"expects channels=3"):
        model(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))


@pytest.mark.parametrize("dim_mults,size,divisor", [((1, 2), 9, 2), ((1, 2, 4), 14, 4), ((1, 2, 4, 8), 20, 8)])
def test_indivisible_image_size_names_divisor(dim_mults, size, divisor):
    model = Unet(dim=8, channels=1, dim_mults=dim_mults)
    with pytest.raises(ValueError, match=rf"not divisible by {divisor}\b"):
        model(torch.randn(1, 1, size, size), torch.tensor([0]))
    with pytest.raises(ValueError, match=rf"not divisible by {divisor}\b"):
        model(torch.randn(1, 1, divisor * 2, size), torch.tensor([0]))


def test_bad_time_shape_rejected():
    model = Unet(dim=8, channels=1, dim_mults=(1, 2))
    with pytest.raises(ValueError, match="one per sample"):
        model(torch.randn(2, 1, 8, 8), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\)"):
        model(torch.randn(1, 8, 8), torch.tensor([0]))


def test_unbuildable_configs_rejected_with_expected_value():
    with pytest.raises(ValueError, match="must start with 1"):
        Unet(dim=8, dim_mults=(2, 4))
    with pytest.raises(ValueError, match="resnet_block_groups=8"):
        Unet(dim=28, dim_mults=(1, 2), use_convnext=False)  # GroupNorm(8, 28) cannot split 28 channels


def test_config_json_round_trip_rebuilds_same_layout():
    model = Unet(**UNET_CONFIGS["resnet-init-out"])
    config = UnetConfig.from_json(model.config.to_json())
    assert config == model.config
    rebuilt = Unet.from_config(config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    with pytest.raises(ValueError, match="unknown UnetConfig field"):
        UnetConfig.from_dict({"dim": 8, "widht": 3})
