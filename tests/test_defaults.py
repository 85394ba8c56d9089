"""What fastddpm samples with when nobody says (``fastddpm.defaults``): ``BUNDLED_DEFAULT`` for the bundled
model, DPM-Solver++ for any other, the same in the CLI and in ``load_sampler``; the fitted solver shipped
beside the bundled model fits it."""

import fnmatch
import tomllib

import pytest
from pathlib import Path

import numpy as np
import torch

import fastddpm
from fastddpm import GaussianDiffusion, Sampler
from fastddpm import defaults
from fastddpm.defaults import (BUNDLED_DEFAULT, DEFAULT_METHOD, DEFAULT_STEPS, bundled_solver, bundled_solver_path,
                               default_sampler_kwargs, solver_settings)
from fastddpm.solvers.timesteps import timestep_sequence
from fastddpm.fit.solver import model_sha256
from fastddpm.io.files import to_uint8_images

from test_cli import run_cli

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_solver_was_fitted_to_the_shipped_model():
    # Fails when the bundled model is retrained without refitting its solver (or the fit file is edited).
    model, diffusion = fastddpm.load()
    fit = bundled_solver()
    fit.check(model, diffusion)
    assert fit.model_sha256 == model_sha256(model) and len(fit.timesteps) == 5
    assert fit.heldout_error <= fit.heldout_start_error  # a fit never returns a plan worse than its start


def test_the_bundled_model_gets_its_named_default():
    model, diffusion = fastddpm.load()
    kwargs = default_sampler_kwargs(model, diffusion)
    assert kwargs == BUNDLED_DEFAULT and kwargs is not BUNDLED_DEFAULT  # a copy: a caller may change it
    # Asked for by name, the same five settings (a sharded run's resume compares them).
    assert solver_settings(model, diffusion, **{k: v for k, v in BUNDLED_DEFAULT.items() if v is not None}) == kwargs
    # The same weights with one value changed are another model.
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1.0
    assert default_sampler_kwargs(model, diffusion)["method"] == DEFAULT_METHOD


def test_the_shipped_solver_is_package_data():
    # An editable install reads the source tree; `pip install .` ships only what package-data names.
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["fastddpm"]
    relative = bundled_solver_path().relative_to(ROOT / "fastddpm").as_posix()
    assert any(fnmatch.fnmatch(relative, p) for p in patterns), (relative, patterns)


def test_another_model_gets_the_named_few_step_default(small_unet):
    for T in (50, 10):
        diffusion = GaussianDiffusion(T)
        kwargs = default_sampler_kwargs(small_unet, diffusion)
        assert kwargs == {"method": DEFAULT_METHOD, "steps": min(DEFAULT_STEPS, T), "eta": None, "spacing": "logsnr",
                          "order": None}
        # The same sampler asked by name gives the same settings (a sharded run's resume compares them).
        named = solver_settings(small_unet, diffusion, method=DEFAULT_METHOD, steps=min(DEFAULT_STEPS, T))
        assert named == kwargs == solver_settings(small_unet, diffusion)
    # The bundled weights under another diffusion are another model too.
    model, _ = fastddpm.load()
    assert "plan" not in default_sampler_kwargs(model, GaussianDiffusion(1000, "cosine"))


def test_load_sampler_is_what_the_cli_samples(tmp_path):
    out = tmp_path / "s.npz"
    result = run_cli("sample", "--num", "3", "--batch-size", "2", "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert f"{BUNDLED_DEFAULT['method']}, {BUNDLED_DEFAULT['steps']} steps" in result.stdout
    sampler = fastddpm.load_sampler()
    assert sampler.plan.method == BUNDLED_DEFAULT["method"]
    assert list(sampler.plan.timesteps) == timestep_sequence(1000, BUNDLED_DEFAULT["steps"], BUNDLED_DEFAULT["spacing"])
    torch.manual_seed(0)  # the CLI's --seed 0 and its batches of 2 from one stream
    images = torch.cat([sampler.sample(2, 16, 1, progress=False), sampler.sample(1, 16, 1, progress=False)])
    with np.load(out) as archive:
        np.testing.assert_array_equal(archive["arr_0"], to_uint8_images(images))


def test_load_sampler_solver_keywords_replace_the_default(small_unet, tmp_path):
    reference = fastddpm.load_sampler(method="ddpm")
    assert reference.plan.method == "ddpm" and len(reference.plan.timesteps) == 1000
    few = fastddpm.load_sampler(steps=7)  # any solver keyword: the named setting, as `sample --steps 7`
    assert few.plan.method == DEFAULT_METHOD and len(few.plan.timesteps) == 7
    path = tmp_path / "small.safetensors"
    fastddpm.save(path, small_unet, GaussianDiffusion(30), image_size=8)
    sampler = fastddpm.load_sampler(path)
    assert isinstance(sampler, Sampler) and sampler.plan.method == DEFAULT_METHOD
    assert len(sampler.plan.timesteps) == 20


def test_missing_settings_are_completed_as_the_cli_completes_them(small_unet):
    diffusion = GaussianDiffusion(50)
    assert solver_settings(small_unet, diffusion, eta=0.5)["method"] == "ddim"  # η is DDIM's
    assert solver_settings(small_unet, diffusion, method="ddpm") == {
        "method": "ddpm", "steps": None, "eta": None, "spacing": "logsnr", "order": None}  # all timesteps
    assert solver_settings(None, None, order=3) == {"method": DEFAULT_METHOD, "steps": DEFAULT_STEPS, "eta": None,
                                                     "spacing": "logsnr", "order": 3}
    sampler = fastddpm.load_sampler(timesteps=[999, 500, 100])
    assert sampler.plan.method == DEFAULT_METHOD and sampler.plan.timesteps == (999, 500, 100)


def test_an_unreadable_bundled_model_falls_back_with_a_warning(monkeypatch, tmp_path, small_unet):
    from fastddpm.io import checkpoint

    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    monkeypatch.setattr(checkpoint, "bundled_model_path", lambda: tmp_path / "broken.safetensors")
    defaults._bundled_identity.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="bundled model cannot be read"):
            assert default_sampler_kwargs(small_unet, GaussianDiffusion(50))["method"] == DEFAULT_METHOD
    finally:
        defaults._bundled_identity.cache_clear()


def test_the_bundled_model_is_recognised_under_a_float64_default_dtype():
    """The bundled default must not silently switch to DPM-Solver++ when torch's default dtype is float64
    (the Unet then holds float64 weights, whose hash differs from the float32 ones)."""
    torch.set_default_dtype(torch.float64)
    try:
        model, diffusion = fastddpm.load()
        assert defaults.default_sampler_kwargs(model, diffusion) == BUNDLED_DEFAULT
    finally:
        torch.set_default_dtype(torch.float32)
