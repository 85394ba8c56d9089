"""Solvers fitted to a model (fastddpm.fit.solver): the fit lowers the held-out distance to the teacher on
the exact-ε harness and reports it truthfully, the result runs on every runner, and fit files are
checked field by field and against the model and diffusion they were made for."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from fastddpm import GaussianDiffusion, Sampler
from fastddpm.fit.solver import FittedSolver, fit_solver, model_sha256
from fastddpm.kernels.update_rows import Row
from fastddpm.tolerances import FLOAT32_TRAJECTORY, ONNX_RUNTIME_FLOAT32, assert_close

from solver_harness import mixture_setting


@pytest.fixture(scope="module")
def harness_fit():
    mix, _, _ = mixture_setting()
    diffusion = GaussianDiffusion(1000)
    fit = fit_solver(mix, diffusion, 5, image_size=(2, 2), channels=1, methods=("dpmsolver++",), fit_batch=256,
                     teacher_steps=40, iterations=40, learning_rate=5e-3, seed=1000, progress=False)
    return mix, diffusion, fit


def teacher_distance(mix, diffusion, plan, seed, n):
    """The distance the fit reports, recomputed from scratch with the public runners."""
    teacher = Sampler(mix, diffusion, method="dpmsolver++", steps=40, spacing="logsnr").sample(
        n, (2, 2), 1, seed=seed, noise="philox", progress=False, clip=False)
    out = Sampler(mix, diffusion, plan=plan).sample(n, (2, 2), 1, seed=seed, noise="philox", progress=False, clip=False)
    return float((out - teacher).flatten(1).pow(2).mean(1).sqrt().mean())


def test_fit_lowers_the_heldout_distance_and_reports_it_truthfully(harness_fit):
    mix, diffusion, fit = harness_fit
    assert fit.heldout_error < fit.heldout_start_error
    heldout_seed = 1000 + 256
    assert teacher_distance(mix, diffusion, fit.plan(), heldout_seed, 256) == pytest.approx(fit.heldout_error, rel=1e-4)
    named = Sampler(mix, diffusion, method="dpmsolver++", steps=5, spacing=fit.start).plan
    assert teacher_distance(mix, diffusion, named, heldout_seed, 256) == pytest.approx(fit.heldout_start_error, rel=1e-4)
    # Coefficients moved, and only the free rows (x̂_0's own rows stay the model's definition of x̂_0).
    start = Sampler(mix, diffusion, method="dpmsolver++", timesteps=list(fit.timesteps)).plan.coefs
    moved = np.abs(fit.plan().coefs - start).max(axis=1)
    assert moved[[Row.X, Row.X0, Row.HISTORY1]].max() > 0
    assert not moved[[Row.EPS, Row.NOISE, Row.X0_FROM_X, Row.X0_FROM_EPS, Row.HISTORY2, Row.HISTORY3]].any()


def test_fit_from_a_named_spacing_keeps_its_timesteps_and_reports_its_start():
    mix, _, _ = mixture_setting()
    diffusion = GaussianDiffusion(1000)
    # UniPC first: on this batch DPM-Solver++ lands closer (by 2%), so taking the first solver would fail.
    fit = fit_solver(mix, diffusion, 5, image_size=(2, 2), channels=1, methods=("unipc", "dpmsolver++"),
                     fit_batch=256, teacher_steps=40, iterations=20, learning_rate=5e-3, seed=2000,
                     spacing="linspace", progress=False)
    named = {m: Sampler(mix, diffusion, method=m, steps=5, spacing="linspace").plan for m in ("dpmsolver++", "unipc")}
    assert fit.start == "linspace" and fit.timesteps == named[fit.method].timesteps
    heldout_seed = 2000 + 256
    # The start is the solver whose named plan lands closer on the fit batch, its distances recomputed.
    fit_batch_distance = {m: teacher_distance(mix, diffusion, plan, 2000, 256) for m, plan in named.items()}
    assert fit.method == min(fit_batch_distance, key=fit_batch_distance.get)
    assert fit_batch_distance[fit.method] == pytest.approx(fit.start_error, rel=1e-4)
    assert teacher_distance(mix, diffusion, named[fit.method], heldout_seed, 256) == pytest.approx(
        fit.heldout_start_error, rel=1e-4)
    assert teacher_distance(mix, diffusion, fit.plan(), heldout_seed, 256) == pytest.approx(fit.heldout_error, rel=1e-4)
    assert teacher_distance(mix, diffusion, fit.plan(), 2000, 256) == pytest.approx(fit.error, rel=1e-4)
    assert fit.heldout_error < fit.heldout_start_error
    with pytest.raises(ValueError, match="spacing must be one of"):
        fit_solver(mix, diffusion, 5, image_size=(2, 2), channels=1, spacing="karras", progress=False)
    with pytest.raises(ValueError, match="trailing"):  # a step count the spacing cannot place: before any solve
        fit_solver(mix, diffusion, 61, image_size=(2, 2), channels=1, teacher_steps=600, spacing="trailing",
                   progress=False)


def test_fit_round_trips_through_json_and_checks_its_model(harness_fit, small_unet):
    mix, diffusion, fit = harness_fit
    again = FittedSolver.from_json(fit.to_json())
    assert again == fit and np.array_equal(again.plan().coefs, fit.plan().coefs)
    assert fit.model_sha256 == ""  # the oracle has no weights: nothing to check
    with pytest.raises(ValueError, match="fitted for the diffusion"):
        fit.check(diffusion=GaussianDiffusion(500))
    stamped = dataclasses.replace(fit, model_sha256=model_sha256(small_unet))
    stamped.check(small_unet, diffusion)
    other = type(small_unet)(dim=8, channels=1, dim_mults=(1, 2))
    with pytest.raises(ValueError, match="fitted for another model"):
        stamped.sampler_kwargs(other)


def test_malformed_fit_files_are_refused(harness_fit):
    _, _, fit = harness_fit
    good = json.loads(fit.to_json())
    bad_cases = {
        "wrong length": {**good, "coefs": {**good["coefs"], "X": good["coefs"]["X"][:-1]}},
        "non-finite": {**good, "coefs": {**good["coefs"], "X0": [float("nan")] + good["coefs"]["X0"][1:]}},
        "ascending timesteps": {**good, "timesteps": sorted(good["timesteps"])},
        "timestep beyond T": {**good, "timesteps": [1000] + good["timesteps"][1:]},
        "missing row": {**good, "coefs": {k: v for k, v in good["coefs"].items() if k != "HISTORY3"}},
        "unknown field": {**good, "extra": 1},
        "bad sha": {**good, "model_sha256": "abc"},
        "noise in a multistep plan": {**good, "coefs": {**good["coefs"], "NOISE": [1.0] * len(good["timesteps"])}},
        "history beyond its count": {**good, "coefs": {**good["coefs"], "HISTORY3": [1.0] * len(good["timesteps"])}},
    }
    for name, data in bad_cases.items():
        with pytest.raises(ValueError):
            FittedSolver.from_json(json.dumps(data))
    with pytest.raises(ValueError, match="not a fastddpm solver fit"):
        FittedSolver.from_json(json.dumps({"timesteps": [3, 2]}))


def test_fitted_plan_runs_the_same_on_eager_and_onnx_runtime(small_unet, small_eps_export, tmp_path):
    pytest.importorskip("onnxruntime")
    from fastddpm import OrtSampler, export_onnx_sampler

    diffusion = GaussianDiffusion(20)  # small_eps_export's: small_unet with T=20
    fit = fit_solver(small_unet, diffusion, 4, image_size=8, channels=1, fit_batch=4, teacher_steps=12,
                     iterations=3, methods=("unipc",), progress=False)
    assert fit.model_sha256 == model_sha256(small_unet)
    kwargs = fit.sampler_kwargs(small_unet, diffusion)
    sampler = Sampler(small_unet, diffusion, **kwargs)
    x_T, _ = sampler.torch_noise((3, 1, 8, 8), seed=2)
    eager = sampler.sample(3, 8, 1, seed=2, progress=False, clip=False)
    exported = small_eps_export
    ort = OrtSampler(exported, **kwargs).sample(3, x_T=x_T.numpy(), progress=False, clip=False)
    assert_close(torch.from_numpy(ort), eager, rtol=ONNX_RUNTIME_FLOAT32)
    loop = OrtSampler(export_onnx_sampler(exported, tmp_path / "loop.onnx", **kwargs)).sample(3, x_T=x_T.numpy())
    assert_close(torch.from_numpy(loop), eager.clamp(-1, 1), rtol=ONNX_RUNTIME_FLOAT32)


@pytest.mark.slow
def test_fitted_plan_runs_the_same_compiled(small_unet):
    diffusion = GaussianDiffusion(50)
    fit = fit_solver(small_unet, diffusion, 4, image_size=8, channels=1, fit_batch=4, teacher_steps=12,
                     iterations=2, methods=("dpmsolver++",), progress=False)
    eager = Sampler(small_unet, diffusion, **fit.sampler_kwargs()).sample(2, 8, 1, seed=3, noise="philox", progress=False)
    compiled = Sampler(small_unet, diffusion, backend="compile", **fit.sampler_kwargs()).sample(
        2, 8, 1, seed=3, noise="philox", progress=False)
    assert_close(compiled, eager, rtol=FLOAT32_TRAJECTORY)
