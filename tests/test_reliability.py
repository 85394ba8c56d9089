"""Reliability: non-finite samples and losses, configs checked before allocation, outputs checked before
work, locked run folders and a distrusted manifest, and one-line errors for malformed files."""

import functools
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import fastddpm
from fastddpm import GaussianDiffusion, Sampler, Unet
from fastddpm.finite import NonFiniteSampleError
from fastddpm.train.trainer import CHECKPOINT_NAME, NonFiniteLossError, TrainConfig, Trainer
from fastddpm.reference.diffusion import DiffusionConfig
from fastddpm.reference.unet import UnetConfig

from test_cli import assert_one_line_error, run_cli, run_main

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


def _poisoned_export(source, path, value, everywhere, diffusion=None):
    """A copy of the ε-model export ``source`` with ``value`` in every float weight (``everywhere``) or only in
    the last layer's bias (its output is then ``value`` at every pixel), and another ``diffusion`` in its
    metadata when given: no second torch export."""
    import onnx
    from onnx import numpy_helper

    from fastddpm.onnx import METADATA_KEY

    proto = onnx.load(str(source))
    graph = proto.graph
    if diffusion is not None:
        entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
        meta = json.loads(entry.value)
        meta.update(diffusion=diffusion.config.to_dict(), betas=diffusion.betas.double().tolist(),
                    alphas_cumprod=diffusion.alphas_cumprod.double().tolist())
        entry.value = json.dumps(meta)
    if everywhere:
        names = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    else:
        last = next(node for node in graph.node if graph.output[0].name in node.output)
        assert last.op_type == "Conv" and len(last.input) == 3, last
        names = {last.input[2]}
    for tensor in graph.initializer:
        if tensor.name in names:
            tensor.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(tensor), value), tensor.name))
    onnx.save(proto, str(path))
    return path


def test_ort_sampler_raises_on_non_finite_samples(small_eps_export, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from fastddpm.onnx import OrtSampler, export_onnx_sampler

    path = _poisoned_export(small_eps_export, tmp_path / "nan.onnx", np.nan, everywhere=True)
    sampler = OrtSampler(path, method="ddim", steps=2)
    with pytest.raises(NonFiniteSampleError, match="2 of 2 samples"):
        sampler.sample(2, seed=0, progress=False)
    assert np.isnan(sampler.sample(2, seed=0, progress=False, check_finite=False)).all()
    loop = export_onnx_sampler(path, tmp_path / "loop.onnx", method="ddim", steps=2)  # from the file: one export
    with pytest.raises(NonFiniteSampleError, match="2 of 2 samples"):
        OrtSampler(loop).sample(2, seed=0, progress=False)


def test_ort_loop_keeps_inf_samples_visible_after_its_clip(small_eps_export, tmp_path):
    """ε = 1e38 (finite) at every pixel and T = 1000: one DDIM step from t = 999 weighs ε by ~-157, past
    float32's range, so the sample is -inf (with ε = inf a zero weight times inf would give NaN), which the
    loop's final Clip alone would return as -1, a plausible black image."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from fastddpm.onnx import OrtSampler, export_onnx_sampler

    path = _poisoned_export(small_eps_export, tmp_path / "inf.onnx", 1e38, everywhere=False,
                            diffusion=GaussianDiffusion(1000))
    loop = OrtSampler(export_onnx_sampler(path, tmp_path / "loop.onnx", method="ddim", steps=1, spacing="trailing"))
    raw = loop.sample(2, seed=0, progress=False, check_finite=False)
    assert np.isinf(raw).all(), raw
    with pytest.raises(NonFiniteSampleError, match="2 of 2 samples"):
        loop.sample(2, seed=0, progress=False)
    finite = OrtSampler(export_onnx_sampler(small_eps_export, tmp_path / "ok.onnx", method="ddim", steps=1))
    x_T = np.random.default_rng(0).standard_normal((2, 1, 8, 8), dtype=np.float32) * 50  # leaves [-1, 1] unclipped
    sample = finite.sample(2, x_T=x_T, progress=False)
    assert np.abs(sample).max() == 1.0  # the clip still applies to finite values


def test_cli_sample_nan_checkpoint_exits_1_without_an_image(nan_checkpoint, tmp_path, capsys):
    common = ("sample", "--checkpoint", nan_checkpoint, "--num", 2, "--method", "ddim", "--steps", 2, "--no-progress")
    results = [  # the process itself once (exit status, no traceback), the other outputs in this process
        ("2 of 2 samples are not finite", run_cli(*map(str, common), "--out", str(tmp_path / "x.png"))),
        ("2 of 2 samples are not finite", run_main(capsys, *common, "--out", tmp_path / "x.npz")),
        ("rank 0, shard 0: 1 of 1 samples are not finite",
         run_main(capsys, *common, "--out-dir", tmp_path / "run", "--shard-size", 1)),
    ]
    for message, result in results:
        assert result.returncode == 1, (result.returncode, result.stderr)
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and message in errors[0], result.stderr
    written = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert not [name for name in written if name.endswith((".png", ".npz", ".json"))], written


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
    from fastddpm.io.checkpoint import MAX_IMAGE_SIZE

    for image_size in ("8", 0, MAX_IMAGE_SIZE + 1, 10**6):  # a string, and sizes no sample could be allocated at
        path = _write_model_file(tmp_path / "s.safetensors", image_size=image_size)
        with pytest.raises(fastddpm.CheckpointError, match=re.escape(f"must be an integer in [1, {MAX_IMAGE_SIZE}], "
                                                                     f"got {image_size!r}")):
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


def test_cli_outputs_that_are_folders_fail_before_work(tmp_path, capsys):
    (tmp_path / "x.png").mkdir()
    (tmp_path / "m.onnx").mkdir()
    (tmp_path / "taken").write_text("")
    result = run_main(capsys, "sample", "--out", tmp_path / "x.png", "--num", 1)
    assert_one_line_error(result, "is a folder")
    assert "sampling (" not in result.stderr  # the progress bar of a sampling run never started
    assert_one_line_error(run_main(capsys, "export", "--out", tmp_path / "m.onnx"), "is a folder")
    result = run_main(capsys, "train", "--data", "digits", "--out-dir", tmp_path / "taken")
    assert_one_line_error(result, "is a file, not a folder")
    assert "training on" not in result.stderr


_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@functools.lru_cache(maxsize=None)
def _nobody_runs_fastddpm() -> bool:
    """Whether user nobody can start this Python and import fastddpm (the interpreter or the environment
    may sit in a folder only root may enter)."""
    import shutil
    import subprocess
    import sys

    if shutil.which("setpriv") is None:
        return False
    probe = subprocess.run([*_NOBODY, sys.executable, "-c", "import fastddpm.io.checkpoint"], capture_output=True,
                           timeout=120)
    return probe.returncode == 0


def _unprivileged(command):
    """``command`` as user nobody when this process is root (root writes into read-only folders and reads
    mode-000 files), else as it is."""
    if os.geteuid():
        return command
    if not _nobody_runs_fastddpm():
        pytest.skip("running as root, and user nobody cannot run this Python with fastddpm (or there is no "
                    "setpriv): file permissions cannot be tested")
    return [*_NOBODY, *command]


@pytest.fixture
def open_tmp(tmp_path):
    """A folder any user may enter (pytest's tmp_path is private to its user), removed afterwards."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(dir=tmp_path if os.geteuid() else None))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_cli_read_only_folders_fail_before_work(open_tmp):
    import subprocess
    import sys

    locked = open_tmp / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    run = lambda *args: subprocess.run(_unprivileged([sys.executable, "-m", "fastddpm", *args]),  # noqa: E731
                                       capture_output=True, text=True, timeout=300)
    assert_one_line_error(run("sample", "--out", str(locked / "x.png"), "--num", "1"), "not writable")
    assert_one_line_error(run("export", "--out", str(locked / "m.onnx")), "not writable")
    result = run("train", "--data", "digits", "--image-size", "8", "--dim", "8", "--dim-mults", "1,2", "--steps", "1",
                 "--out-dir", str(locked / "run"), "--no-progress")
    assert_one_line_error(result, "not writable")
    assert "training on" not in result.stderr


def test_an_unreadable_checkpoint_is_reported_as_such(open_tmp):
    """A mode-000 file (safetensors itself says "No such file or directory"), and a file in a folder this
    user may not enter (``Path.is_file`` raises PermissionError there)."""
    import shutil
    import subprocess
    import sys

    unreadable = open_tmp / "model.safetensors"
    shutil.copyfile(fastddpm.io.checkpoint.bundled_model_path(), unreadable)
    unreadable.chmod(0o000)
    (open_tmp / "private").mkdir(mode=0o700)
    hidden = open_tmp / "private" / "model.safetensors"
    shutil.copyfile(fastddpm.io.checkpoint.bundled_model_path(), hidden)
    if os.geteuid():
        (open_tmp / "private").chmod(0o000)  # as the owner, a private folder needs no search permission
    code = ("import sys; from fastddpm.io.checkpoint import CheckpointError, load\n"
            "for path in sys.argv[1:]:\n"
            "    try: load(path)\n"
            "    except CheckpointError as exc: print(exc)")
    try:
        said = subprocess.run(_unprivileged([sys.executable, "-c", code, str(unreadable), str(hidden)]),
                              capture_output=True, text=True, timeout=120)
    finally:
        (open_tmp / "private").chmod(0o700)
    lines = said.stdout.splitlines()
    assert lines == [f"{unreadable}: cannot be read (permission denied)", f"{hidden}: cannot be read (permission "
                     "denied)"], (said.stdout, said.stderr)


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


def _truncated_shard(out):
    path = out / "shard-000001.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _npy_as_shard(out):
    with open(out / "shard-000001.npz", "wb") as f:
        np.save(f, np.zeros((2, 8, 8, 1), np.uint8))  # loads as a plain array, not an archive


def _other_size_shard(out):
    path = out / "shard-000001.npz"
    with np.load(path) as data:
        indices, settings = data["indices"], data["settings"]
    np.savez(path, images=np.zeros((2, 4, 4, 1), np.uint8), indices=indices, settings=settings)


@pytest.mark.parametrize("change,message", [
    (lambda out: (out / "manifest.json").write_text("[" * 100_000 + "]" * 100_000), "nested too deeply"),
    (lambda out: (out / "shard-000001.npz").unlink(), "shard-000001.npz: cannot read this shard"),
    (_truncated_shard, "shard-000001.npz: cannot read this shard"),
    (_npy_as_shard, "shard-000001.npz: cannot read this shard (ValueError: not an .npz archive)"),
    (_other_size_shard, "images are uint8 (2, 4, 4, 1); expected uint8 (2, H, W, C) like the run's other shards"),
])
def test_read_manifest_rejects_unreadable_files(tiny_sampler, tmp_path, change, message):
    from fastddpm.io.shards import ShardError, read_manifest

    out = tmp_path / "run"
    _shards(tiny_sampler, out)
    change(out)
    with pytest.raises(ShardError, match=re.escape(message)):
        read_manifest(out)


# -- 5. one-line errors for malformed resume checkpoints ------------------------------------------------
@pytest.mark.parametrize("change,message", [
    (lambda t, m: t.pop("rng.torch"), "no 'rng.torch' tensor"),
    (lambda t, m: t.update({"rng.torch": t["rng.torch"][:10]}), "'rng.torch' is torch.uint8 (10,)"),
    (lambda t, m: m["training"].update(step=-1), "training step must be a non-negative integer, got -1"),
    (lambda t, m: m["training"].update(step="abc"), "training step must be a non-negative integer, got 'abc'"),
    (lambda t, m: m["training"]["config"]["diffusion"].update(timesteps=10**9), "in [1, 100000]"),
    (lambda t, m: m["training"]["config"].update(image_size=10**6), "image_size must be at most 8192"),
    (lambda t, m: m["training"]["config"].update(grid_size=10**9), "grid_size must be at most 1024"),
    (lambda t, m: t.update({"optim.x.exp_avg": t["optim.0.exp_avg"].clone()}), "unexpected optimizer tensor 'optim.x.exp_avg'"),
    (lambda t, m: t.update({"optim.0.exp_avg": torch.zeros(3)}), "'optim.0.exp_avg' is torch.float32 (3,)"),
    (lambda t, m: t.pop("optim.0.exp_avg_sq"), "optimizer state of parameter 0 holds ['exp_avg', 'step']"),
    (lambda t, m: t.update({"data.perm": t["data.perm"] + 100}), "'data.perm' is not a permutation"),
    (lambda t, m: t.update({"data.perm": t["data.perm"].float()}), "expected integer indices"),
    (lambda t, m: m["training"].update(pos=10**6), "training pos 1000000 is past the 4 images"),
    (lambda t, m: m["training"].update(recent_losses=["x", None]), "recent_losses must be a list of at most 100"),
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


def test_cli_resume_of_a_malformed_checkpoint_is_one_line(tmp_path, capsys):
    from fastddpm.io.checkpoint import read_checkpoint, write_checkpoint

    Trainer(_tiny_config(tmp_path, steps=1), tmp_path / "run").run(progress=False)
    tensors, meta = read_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    meta.pop("format")
    meta["training"]["step"] = "abc"
    write_checkpoint(tmp_path / "bad.safetensors", tensors, meta)
    assert_one_line_error(run_main(capsys, "train", "--resume", tmp_path / "bad.safetensors", "--no-progress"),
                          "training step must be a non-negative integer, got 'abc'")


def _steps_in(path):
    from fastddpm.io.checkpoint import read_checkpoint

    return read_checkpoint(path)[1]["training"]["step"]


@pytest.mark.parametrize("presses", [1, 2])
def test_cli_train_ctrl_c_says_what_was_saved(tmp_path, capsys, monkeypatch, presses):
    """One Ctrl-C saves at the step boundary; a second stops at once, and the message says the checkpoint
    on disk is the previous one (it used to say "saved")."""
    np.save(tmp_path / "d.npy", (np.random.default_rng(0).random((4, 8, 8)) * 255).astype(np.uint8))
    train_step = Trainer.train_step

    def pressed_at_step_2(self):
        loss = train_step(self)
        if self.step == 2:
            for _ in range(presses):
                self._on_sigint(None, None)  # the second press raises KeyboardInterrupt, as the handler does
        return loss

    monkeypatch.setattr(Trainer, "train_step", pressed_at_step_2)
    result = run_main(capsys, "train", "--data", tmp_path / "d.npy", "--image-size", 8, "--dim", 8, "--dim-mults",
                      "1,2", "--timesteps", T, "--batch-size", 2, "--steps", 5, "--save-every", 1, "--out-dir",
                      tmp_path / "run", "--no-progress")
    assert result.returncode == 130, result.stderr
    checkpoint = tmp_path / "run" / CHECKPOINT_NAME
    expected = f"saved {checkpoint}" if presses == 1 else f"not saved; {checkpoint} holds step 1"
    assert f"interrupted at step 2; {expected}" in result.stderr
    assert _steps_in(checkpoint) == (2 if presses == 1 else 1)


def test_training_writes_the_model_file_first_and_removes_its_stale_temporaries(tmp_path, monkeypatch):
    from fastddpm.train import trainer as trainer_module

    run = tmp_path / "run"
    run.mkdir()
    ours = [run / ".checkpoint.safetensors.k1ll.tmp", run / ".model.safetensors.k1ll.tmp"]
    theirs = run / ".notes.txt.tmp"
    for path in ours + [theirs]:
        path.write_bytes(b"half a file")
    written = []
    write = trainer_module.write_checkpoint
    monkeypatch.setattr(trainer_module, "write_checkpoint", lambda path, *a: (written.append(path.name), write(path, *a)))
    Trainer(_tiny_config(tmp_path, steps=1), run).run(progress=False)
    assert written == [trainer_module.MODEL_NAME, CHECKPOINT_NAME]  # a kill between them leaves the model ahead
    assert not any(path.exists() for path in ours) and theirs.exists()


@pytest.mark.parametrize("sample_every", [0, 1])  # the save's own check, and the grid's before it
def test_training_never_saves_weights_that_overflowed(tmp_path, sample_every):
    """A step's loss is computed before its update, so an update that overflows a weight (here: set to inf
    after step 1, as an overflowing update would leave it) passes the loss check; the save refuses it."""
    def overflow(trainer, loss):
        with torch.no_grad():
            next(trainer.model.parameters()).view(-1)[0] = float("inf")

    trainer = Trainer(_tiny_config(tmp_path, steps=2, save_every=1, sample_every=sample_every), tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match="the model weights are not finite at step 1; stopped without saving"):
        trainer.run(progress=False, on_step=overflow)
    assert not list((tmp_path / "run").iterdir())  # no checkpoint, and no grid sampled from those weights


def test_cli_train_refuses_a_huge_image_size_before_reading_the_data(tmp_path, capsys):
    import resource

    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_main(capsys, "train", "--data", "digits", "--image-size", 100_000, "--out-dir", tmp_path / "run")
    assert_one_line_error(result, "image_size must be at most 8192, got 100000")
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) * 1024 < 200 * 2**20


def test_a_learning_rate_past_float32_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="lr must be a positive number"):
        _tiny_config(tmp_path, lr=1e39)  # Adam's first step size, 10·lr, does not fit a float32
