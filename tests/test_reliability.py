"""Reliability: non-finite samples and losses, configs checked before allocation, outputs checked before
work, locked run folders and a distrusted manifest, and one-line errors for malformed files."""

import json
import math
import os
import re

import numpy as np
import pytest
import torch

import fastddpm
from fastddpm import GaussianDiffusion, Sampler, Unet
from fastddpm.finite import NonFiniteSampleError
from fastddpm.train.trainer import CHECKPOINT_NAME, NonFiniteLossError, TrainConfig, Trainer
from fastddpm.reference.diffusion import DiffusionConfig
from fastddpm.reference.unet import UnetConfig

from test_cli import assert_one_line_error, run_cli

T = 4


def _nan_unet():
    torch.manual_seed(0)
    model = Unet(dim=8, channels=1, dim_mults=(1, 2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    return model


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("nan") / "nan.safetensors"
    fastddpm.save(path, _nan_unet(), GaussianDiffusion(T, "linear"), image_size=8)
    return path


class _Inf(torch.nn.Module):
    """An ε-model whose output is +inf for the second sample only (a clamp would turn it into 1)."""

    def forward(self, x, t):
        out = torch.zeros_like(x)
        out[1:2] = float("inf")
        return out


# -- 1. non-finite outputs -----------------------------------------------------------------------------
def test_sampler_raises_on_non_finite_samples_and_opts_out():
    sampler = Sampler(_nan_unet(), GaussianDiffusion(T, "linear"), backend="eager")
    with pytest.raises(NonFiniteSampleError, match="3 of 3 samples are not finite"):
        sampler.sample(3, 8, 1, seed=0, progress=False)
    raw = sampler.sample(3, 8, 1, seed=0, progress=False, check_finite=False)
    assert torch.isnan(raw).all()


def test_sampler_counts_inf_samples_before_clipping():
    sampler = Sampler(_Inf(), GaussianDiffusion(T, "linear"), method="ddim", steps=2, backend="eager")
    with pytest.raises(NonFiniteSampleError, match="1 of 3 samples") as exc:
        sampler.sample(3, 8, 1, seed=0, progress=False)
    assert isinstance(exc.value, ValueError) and (exc.value.bad, exc.value.total) == (1, 3)


def test_ort_sampler_raises_on_non_finite_samples(tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from fastddpm.onnx import OrtSampler, export_onnx, export_onnx_sampler

    model, diffusion = _nan_unet(), GaussianDiffusion(T, "linear")
    path = export_onnx(model, tmp_path / "nan.onnx", diffusion=diffusion, image_size=8)
    sampler = OrtSampler(path, method="ddim", steps=2)
    with pytest.raises(NonFiniteSampleError, match="2 of 2 samples"):
        sampler.sample(2, seed=0, progress=False)
    assert np.isnan(sampler.sample(2, seed=0, progress=False, check_finite=False)).all()
    loop = export_onnx_sampler(path, tmp_path / "loop.onnx", method="ddim", steps=2)  # from the file: one export
    with pytest.raises(NonFiniteSampleError, match="2 of 2 samples"):
        OrtSampler(loop).sample(2, seed=0, progress=False)


def test_cli_sample_nan_checkpoint_exits_1_without_an_image(nan_checkpoint, tmp_path):
    for name in ("x.png", "x.npz"):
        result = run_cli("sample", "--checkpoint", str(nan_checkpoint), "--num", "2", "--method", "ddim", "--steps",
                         "2", "--out", str(tmp_path / name), "--no-progress")
        assert result.returncode == 1, (result.returncode, result.stderr)
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and "2 of 2 samples are not finite" in errors[0], result.stderr
    assert list(tmp_path.iterdir()) == []


def _tiny_config(tmp_path, **kw):
    np.save(tmp_path / "d.npy", (np.random.default_rng(0).random((4, 8, 8)) * 255).astype(np.uint8))
    return TrainConfig(data=str(tmp_path / "d.npy"), image_size=8, model=UnetConfig(dim=8, channels=1, dim_mults=(1, 2)),
                       diffusion=DiffusionConfig(T, "linear"), batch_size=2, **kw)


def test_training_stops_on_non_finite_loss_and_keeps_the_last_finite_checkpoint(tmp_path):
    trainer = Trainer(_tiny_config(tmp_path, steps=4, save_every=1), tmp_path / "run")
    trainer.config = TrainConfig.from_dict({**trainer.config.to_dict(), "steps": 2})
    trainer.run(progress=False)  # finite: checkpoint at step 2
    before = (tmp_path / "run" / CHECKPOINT_NAME).read_bytes()
    trainer.config = TrainConfig.from_dict({**trainer.config.to_dict(), "steps": 4})
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="training loss is nan at step 3"):
        trainer.run(progress=False)
    assert (tmp_path / "run" / CHECKPOINT_NAME).read_bytes() == before
    resumed = Trainer.resume(tmp_path / "run" / CHECKPOINT_NAME)
    assert resumed.step == 2 and all(torch.isfinite(p).all() for p in resumed.model.parameters())


def test_cli_train_non_finite_loss_exits_1(tmp_path):
    np.save(tmp_path / "d.npy", (np.random.default_rng(0).random((4, 8, 8)) * 255).astype(np.uint8))
    result = run_cli("train", "--data", str(tmp_path / "d.npy"), "--image-size", "8", "--dim", "8", "--dim-mults",
                     "1,2", "--timesteps", str(T), "--batch-size", "2", "--steps", "6", "--save-every", "1",
                     "--lr", "1e30", "--out-dir", str(tmp_path / "run"), "--no-progress")
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "training loss is" in errors[0], result.stderr
    _, meta = fastddpm.io.checkpoint.read_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert math.isfinite(meta["training"]["final_loss"])


# -- 2. configs in files are checked before allocation ---------------------------------------------------
def _small_weights():
    torch.manual_seed(0)
    return {f"model.{k}": v for k, v in Unet(dim=8, channels=1, dim_mults=(1, 2)).state_dict().items()}


def _write_model_file(path, model=None, diffusion=None, image_size=8, tensors=None):
    from fastddpm.io.checkpoint import write_checkpoint

    meta = {"kind": "model", "model": model or {"dim": 8, "channels": 1, "dim_mults": [1, 2]},
            "diffusion": diffusion or {"timesteps": T, "beta_schedule": "linear"}, "image_size": image_size}
    write_checkpoint(path, tensors if tensors is not None else _small_weights(), meta)
    return path


def test_model_config_bomb_is_refused_before_allocation(tmp_path):
    import resource

    bomb = _write_model_file(tmp_path / "bomb.safetensors", model={"dim": 4000, "channels": 1, "dim_mults": [1, 2]})
    with torch.device("meta"):
        needs = sum(p.numel() * 4 for p in Unet(dim=4000, channels=1, dim_mults=(1, 2)).parameters())
    assert needs > 20 * 2**30  # the model the config asks for: tens of GB
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(fastddpm.CheckpointError, match="has shape .* expects"):
        fastddpm.load(bomb)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) * 1024
    assert grown < 200 * 2**20, f"peak memory grew by {grown / 2**20:.0f} MiB"
    assert_one_line_error(run_cli("sample", "--checkpoint", str(bomb), "--num", "1", "--out", str(tmp_path / "x.png")),
                          "has shape")


@pytest.mark.parametrize("diffusion,message", [
    ({"timesteps": 10**9, "beta_schedule": "linear"}, "timesteps must be an integer in [1, 100000]"),
    ({"timesteps": "200", "beta_schedule": "linear"}, "timesteps must be an integer"),
])
def test_checkpoint_timesteps_ceiling(tmp_path, diffusion, message):
    path = _write_model_file(tmp_path / "t.safetensors", diffusion=diffusion)
    with pytest.raises(fastddpm.CheckpointError, match=re.escape(message)):
        fastddpm.load(path)


def test_checkpoint_metadata_type_and_depth_errors(tmp_path):
    path = _write_model_file(tmp_path / "s.safetensors", image_size="8")
    with pytest.raises(fastddpm.CheckpointError, match="image_size must be a positive integer, got '8'"):
        fastddpm.io.checkpoint.load_checkpoint(path)
    from safetensors.torch import save_file

    deep = tmp_path / "deep.safetensors"
    save_file({k: v.contiguous() for k, v in _small_weights().items()}, str(deep),
              metadata={"fastddpm": "[" * 200_000 + "]" * 200_000})
    with pytest.raises(fastddpm.CheckpointError, match="nested too deeply"):
        fastddpm.load(deep)
    assert_one_line_error(run_cli("sample", "--checkpoint", str(deep), "--num", "1", "--out", str(tmp_path / "x.png")),
                          "nested too deeply")


def _onnx_file(path, meta_text):
    onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["eps"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, "h", "w"]),
                               helper.make_tensor_value_info("t", TensorProto.INT64, ["b"])],
                              [helper.make_tensor_value_info("eps", TensorProto.FLOAT, ["b", 1, "h", "w"])])
    proto = helper.make_model(graph)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "fastddpm", meta_text
    onnx.save(proto, str(path))
    return path


def _onnx_meta(**changes):
    betas = GaussianDiffusion(T, "linear").betas.double().tolist()
    meta = {"format": 1, "kind": "eps-model", "diffusion": {"timesteps": T, "beta_schedule": "linear"},
            "betas": betas, "image_size": [8, 8], "channels": 1, "size_divisor": 2}
    meta.update(changes)
    return json.dumps(meta)


def test_onnx_metadata_limits(tmp_path):
    from fastddpm.onnx import OnnxModelError, read_onnx

    assert read_onnx(_onnx_file(tmp_path / "ok.onnx", _onnx_meta())).image_size == (8, 8)
    cases = {
        "steps": (_onnx_meta(diffusion={"timesteps": 10**9, "beta_schedule": "linear"}), "in [1, 100000]"),
        "side": (_onnx_meta(image_size=[8, 100_000]), "at most 8192 a side"),
        "string": (_onnx_meta(image_size=["8", 8]), "image_size must hold integers, got '8'"),
        "deep": ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
    }
    for name, (text, message) in cases.items():
        with pytest.raises(OnnxModelError, match=re.escape(message)):
            read_onnx(_onnx_file(tmp_path / f"{name}.onnx", text))
    result = run_cli("sample", "--onnx", str(tmp_path / "side.onnx"), "--num", "1", "--out", str(tmp_path / "x.png"))
    assert_one_line_error(result, "at most 8192 a side")


# -- 3. outputs are checked before work ----------------------------------------------------------------
def test_check_writable_output_helper(tmp_path):
    from fastddpm.cli.common import CLIError, check_writable_output, check_writable_folder

    (tmp_path / "x.png").mkdir()
    with pytest.raises(CLIError, match="is a folder"):
        check_writable_output(tmp_path / "x.png", (".png",))
    with pytest.raises(CLIError, match="does not exist"):
        check_writable_output(tmp_path / "no" / "y.png", (".png",))
    with pytest.raises(CLIError, match="must end in .onnx"):
        check_writable_output(tmp_path / "y.png", (".onnx",))
    assert check_writable_output(tmp_path / "y.png", (".png",)) == tmp_path / "y.png"
    (tmp_path / "file").write_text("")
    with pytest.raises(CLIError, match="is a file, not a folder"):
        check_writable_folder(tmp_path / "file")
    assert check_writable_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"


def test_cli_outputs_that_are_folders_fail_before_work(tmp_path):
    (tmp_path / "x.png").mkdir()
    (tmp_path / "m.onnx").mkdir()
    (tmp_path / "taken").write_text("")
    result = run_cli("sample", "--out", str(tmp_path / "x.png"), "--num", "1")
    assert_one_line_error(result, "is a folder")
    assert "samples" not in result.stdout  # nothing was sampled
    assert_one_line_error(run_cli("export", "--out", str(tmp_path / "m.onnx")), "is a folder")
    assert_one_line_error(run_cli("train", "--data", "digits", "--out-dir", str(tmp_path / "taken")),
                          "is a file, not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses file permissions: a read-only folder is writable")
def test_cli_read_only_folders_fail_before_work(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert_one_line_error(run_cli("sample", "--out", str(locked / "x.png"), "--num", "1"), "not writable")
        assert_one_line_error(run_cli("export", "--out", str(locked / "m.onnx")), "not writable")
        result = run_cli("train", "--data", "digits", "--image-size", "8", "--dim", "8", "--dim-mults", "1,2",
                         "--steps", "1", "--out-dir", str(locked / "run"), "--no-progress")
        assert_one_line_error(result, "not writable")
        assert "training on" not in result.stderr
    finally:
        locked.chmod(0o755)


# -- 4. run folders locked, manifest trusted no more ----------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sampler():
    torch.manual_seed(0)
    return Sampler(Unet(dim=8, channels=1, dim_mults=(1, 2)).eval(), GaussianDiffusion(T, "linear"), backend="eager")


def _shards(sampler, out):
    from fastddpm.io.shards import sample_shards

    return sample_shards(sampler, 4, out, image_size=8, channels=1, shard_size=2, batch_size=2, progress=False)


def test_run_folder_is_locked_and_stale_temporaries_are_removed(tiny_sampler, tmp_path):
    import fcntl

    from fastddpm.io.shards import LOCK, ShardError

    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".shard-000000.npz.x1y2.tmp"
    stale.write_bytes(b"half a shard")
    with open(out / LOCK, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run, writing
        with pytest.raises(ShardError, match="another run is writing into this folder"):
            _shards(tiny_sampler, out)
        assert stale.exists() and not list(out.glob("shard-*"))
    _shards(tiny_sampler, out)  # the other run ended: this one takes the folder
    assert not stale.exists() and len(list(out.glob("shard-*.npz"))) == 2


def test_rerun_resamples_a_shard_of_the_wrong_shape(tiny_sampler, tmp_path):
    out = tmp_path / "run"
    _shards(tiny_sampler, out)
    path = out / "shard-000001.npz"
    with np.load(path) as data:
        good, indices, settings = data["images"].copy(), data["indices"], data["settings"]
    np.savez(path, images=np.zeros((2, 4, 4, 1), np.float32), indices=indices, settings=settings)
    _shards(tiny_sampler, out)
    with np.load(path) as data:
        np.testing.assert_array_equal(data["images"], good)


@pytest.mark.parametrize("change,message", [
    (lambda s: s[0].update(file="../x.npz"), "not a file name inside the run folder"),
    (lambda s: s[0].update(file="/etc/passwd"), "not a file name inside the run folder"),
    (lambda s: s[1].update(file=s[0]["file"]), "listed twice"),
    (lambda s: s[1].update(start=3), "a gap or overlap"),
    (lambda s: s.pop(), "shards cover [0, 2) but the run has 4 images"),
])
def test_read_manifest_rejects_untrusted_entries(tiny_sampler, tmp_path, change, message):
    from fastddpm.io.shards import MANIFEST, ShardError, read_manifest

    out = tmp_path / "run"
    _shards(tiny_sampler, out)
    assert read_manifest(out)[1].shape == (4, 8, 8, 1)
    manifest = json.loads((out / MANIFEST).read_text())
    change(manifest["shards"])
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=re.escape(message)):
        read_manifest(out)


# -- 5. one-line errors for malformed resume checkpoints ------------------------------------------------
@pytest.mark.parametrize("change,message", [
    (lambda t, m: t.pop("rng.torch"), "no 'rng.torch' tensor"),
    (lambda t, m: t.update({"rng.torch": t["rng.torch"][:10]}), "'rng.torch' is torch.uint8 (10,)"),
    (lambda t, m: m["training"].update(step=-1), "training step must be a non-negative integer, got -1"),
    (lambda t, m: m["training"].update(step="abc"), "training step must be a non-negative integer, got 'abc'"),
    (lambda t, m: m["training"]["config"]["diffusion"].update(timesteps=10**9), "in [1, 100000]"),
])
def test_resume_rejects_malformed_training_state(tmp_path, change, message):
    from fastddpm.io.checkpoint import read_checkpoint, write_checkpoint

    trainer = Trainer(_tiny_config(tmp_path, steps=1), tmp_path / "run")
    trainer.run(progress=False)
    tensors, meta = read_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    change(tensors, meta)
    meta.pop("format")
    write_checkpoint(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(fastddpm.CheckpointError, match=re.escape(message)):
        Trainer.resume(tmp_path / "bad.safetensors")
