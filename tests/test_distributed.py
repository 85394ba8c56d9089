"""Scale-out on torch.distributed (gloo, CPU): sharded sampling gives the same images for 1 and 2
processes and resumes without redoing finished shards; DDP training matches one process with the same
global batch and resumes at another world size."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastddpm import GaussianDiffusion, save
from fastddpm.io.shards import read_manifest

from test_cli import assert_one_line_error

# torchrun's own parser would read `--num` as an abbreviation of its `--numa-binding`: `--` ends its options.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "fastddpm", "--"]
# Bit-identical results need the same arithmetic in every process: torchrun gives each process one thread
# (OMP_NUM_THREADS=1), and the single-process runs here use one too (a convolution's sums are split by thread).
# PYTHONFAULTHANDLER: should a worker ever abort again, its Python stacks (every thread) reach the report.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}


def run(args, torchrun=False):
    command = (TORCHRUN if torchrun else [sys.executable, "-m", "fastddpm"]) + [str(a) for a in args]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small_unet):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save(path, small_unet, GaussianDiffusion(50), image_size=8)
    return path


def test_sharded_sampling_same_images_for_any_process_count_and_resumes(checkpoint, tmp_path):
    common = ["sample", "--checkpoint", checkpoint, "--num", 11, "--shard-size", 3, "--batch-size", 2,
              "--method", "ddim", "--steps", 3, "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    result = run(common + ["--out-dir", one])
    assert result.returncode == 0, result.stderr
    result = run(common + ["--out-dir", two], torchrun=True)
    assert result.returncode == 0, result.stderr
    manifest_one, images_one = read_manifest(one)
    manifest_two, images_two = read_manifest(two)
    assert images_one.shape == (11, 8, 8, 1) and len(manifest_one["shards"]) == 4
    assert manifest_one["shards"] == manifest_two["shards"] and manifest_one["run"] == manifest_two["run"]
    assert np.array_equal(images_one, images_two)
    assert len({images_one[i].tobytes() for i in range(11)}) == 11  # per-sample seeds: all different

    # Resume: only the missing shard is sampled again, and it comes back the same.
    (one / "shard-000002.npz").unlink()
    (one / "manifest.json").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in one.glob("shard-*.npz")}
    result = run(common + ["--out-dir", one], torchrun=True)  # resumed at another world size
    assert result.returncode == 0, result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in one.glob("shard-*.npz") if p.name in before} == before
    assert np.array_equal(read_manifest(one)[1], images_two)

    # Another run's settings never mix into the folder; torch noise cannot shard.
    changed = [a if a != 3 else 4 for a in common]  # --steps 4 (and --shard-size 4)
    assert_one_line_error(run(changed + ["--out-dir", one]), "written by another run")
    assert_one_line_error(run(common + ["--out-dir", tmp_path / "x", "--noise", "torch"]), "--noise philox")


def test_ddp_training_matches_one_process_and_resumes_at_another_world_size(tmp_path):
    data = tmp_path / "data.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (24, 8, 8), dtype=np.uint8))
    common = ["train", "--data", data, "--image-size", 8, "--dim", 8, "--dim-mults", "1,2", "--timesteps", 50,
              "--batch-size", 4, "--save-every", 0, "--no-progress", "--seed", 3]
    result = run(common + ["--steps", 4, "--out-dir", tmp_path / "single"])
    assert result.returncode == 0, result.stderr
    result = run(common + ["--steps", 4, "--out-dir", tmp_path / "ddp"], torchrun=True)
    assert result.returncode == 0, result.stderr
    from fastddpm.io.checkpoint import read_checkpoint
    from fastddpm.tolerances import DDP_GRADIENT_AVERAGING, assert_close

    single, _ = read_checkpoint(tmp_path / "single" / "checkpoint.safetensors")
    ddp, meta = read_checkpoint(tmp_path / "ddp" / "checkpoint.safetensors")
    assert meta["training"]["step"] == 4 and meta["training"]["world_size"] == 2
    weights = [k for k in single if k.startswith("model.")]
    assert weights and set(weights) == {k for k in ddp if k.startswith("model.")}
    flat = lambda d: torch.cat([d[k].float().flatten() for k in weights])  # noqa: E731
    assert_close(flat(ddp), flat(single), rtol=DDP_GRADIENT_AVERAGING)
    # Adam's step is scale-free: its first moment is not, so it catches gradients summed, not averaged.
    moments = sorted(k for k in single if k.endswith(".exp_avg"))
    assert moments and moments == sorted(k for k in ddp if k.endswith(".exp_avg"))
    first_moment = lambda d: torch.cat([d[k].flatten() for k in moments])  # noqa: E731
    assert_close(first_moment(ddp), first_moment(single), rtol=DDP_GRADIENT_AVERAGING)
    emas = [k for k in single if k.startswith("ema.")]
    assert_close(torch.cat([ddp[k].float().flatten() for k in emas]),
                 torch.cat([single[k].float().flatten() for k in emas]), rtol=DDP_GRADIENT_AVERAGING)
    single_losses = read_checkpoint(tmp_path / "single" / "checkpoint.safetensors")[1]["training"]["recent_losses"]
    # The reported loss is the global batch's (all-reduced), not one process's slice.
    assert np.allclose(meta["training"]["recent_losses"], single_losses, rtol=1e-5)

    # Resume the DDP run in one process and the single run under torchrun: both continue alike.
    result = run(["train", "--resume", tmp_path / "ddp" / "checkpoint.safetensors", "--steps", 6, "--no-progress"])
    assert result.returncode == 0, result.stderr
    result = run(["train", "--resume", tmp_path / "single" / "checkpoint.safetensors", "--steps", 6, "--no-progress"],
                 torchrun=True)
    assert result.returncode == 0, result.stderr
    single, _ = read_checkpoint(tmp_path / "single" / "checkpoint.safetensors")
    ddp, _ = read_checkpoint(tmp_path / "ddp" / "checkpoint.safetensors")
    assert_close(flat(ddp), flat(single), rtol=DDP_GRADIENT_AVERAGING)


def test_shard_settings_round_trip_and_torchrun_needs_out_dir(small_unet, tmp_path, checkpoint):
    from fastddpm import Sampler
    from fastddpm.io.shards import sample_shards

    sampler = Sampler(small_unet, GaussianDiffusion(50), method="ddim", steps=2)
    kwargs = dict(image_size=8, channels=1, shard_size=2, batch_size=2, progress=False, settings={"dims": (1, 2)})
    first = sample_shards(sampler, 3, tmp_path / "run", **kwargs)
    again = sample_shards(sampler, 3, tmp_path / "run", **kwargs)  # a tuple reads back as a list: same run
    assert first == again
    with pytest.raises(ValueError, match="must lie in"):
        sample_shards(sampler, 3, tmp_path / "big", seed=2**63 - 2, **kwargs)
    env = {**ENV, "WORLD_SIZE": "2"}  # as torchrun sets it, without --out-dir
    result = subprocess.run([sys.executable, "-m", "fastddpm", "sample", "--checkpoint", str(checkpoint),
                             "--out", str(tmp_path / "x.png")], capture_output=True, text=True, env=env, timeout=300)
    assert_one_line_error(result, "pass --out-dir DIR")


def test_torchrun_non_finite_samples_stop_every_rank_with_exit_1(small_unet, tmp_path):
    """A NaN model under two processes: each rank's NonFiniteSampleError is gathered, every rank exits 1 with
    the same line (not the exit 2 of a bad folder), and no shard or manifest is written."""
    import copy

    nan_model = copy.deepcopy(small_unet)
    with torch.no_grad():
        for p in nan_model.parameters():
            p.fill_(float("nan"))
    path = tmp_path / "nan.safetensors"
    save(path, nan_model, GaussianDiffusion(4), image_size=8)
    result = run(["sample", "--checkpoint", path, "--num", 2, "--shard-size", 1, "--method", "ddim", "--steps", 1,
                  "--out-dir", tmp_path / "run", "--no-progress"], torchrun=True)
    assert result.returncode != 0
    # Counted, not split into lines: the two processes' writes to the shared stderr can interleave.
    message = "fastddpm: error: rank 0, shard 0: 1 of 1 samples are not finite"
    assert result.stderr.count("fastddpm: error:") == result.stderr.count(message) == 2, result.stderr
    assert "exitcode  : 1" in result.stderr or "exit code 1" in result.stderr.lower(), result.stderr
    assert not list((tmp_path / "run").glob("shard-*")) and not (tmp_path / "run" / "manifest.json").exists()
