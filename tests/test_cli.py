"""The command line: --help/--version, sample and train end to end, and one-line errors with exit 2."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import fastddpm
from fastddpm.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "fastddpm", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def run_main(capsys, *args):
    """``main(args)`` in this process, as a ``run_cli``-like result: the same parser and error handling
    without a Python start-up and torch import per call (~4 s each here). ``run_cli`` keeps the tests of
    the process entry point itself (exit status, no traceback on stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own errors (exit 2) and --help/--version (exit 0)
        code = exc.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def assert_one_line_error(result, message):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert fastddpm.__version__ in capsys.readouterr().out
    for argv in (["--help"], ["train", "--help"], ["sample", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    assert "--checkpoint" in capsys.readouterr().out


def test_sample_bundled_model_png_and_npz(tmp_path):
    result = run_cli("sample", "--num", "3", "--batch-size", "2", "--out", str(tmp_path / "grid.png"), "--no-progress")
    assert result.returncode == 0, result.stderr
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    # 2×2 grid of 16×16 samples with 2-pixel padding, enlarged 4×: (2·(16+2)+2)·4 = 152 pixels a side.
    assert grid.shape == (152, 152)
    result = run_cli("sample", "--num", "3", "--batch-size", "2", "--out", str(tmp_path / "s.npz"), "--no-progress")
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "s.npz") as archive:
        images = archive["arr_0"]
    assert images.shape == (3, 16, 16, 1) and images.dtype == np.uint8
    # Same seed, same images: the PNG grid's first tile is the first array image.
    first_tile = np.asarray(Image.open(tmp_path / "grid.png").resize((38, 38), Image.NEAREST))[2:18, 2:18]
    np.testing.assert_array_equal(first_tile, images[0, :, :, 0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "s.npz"]  # no temporary files left


def test_sample_few_step_ddim(tmp_path):
    result = run_cli("sample", "--method", "ddim", "--steps", "10", "--num", "2", "--out", str(tmp_path / "d.npz"),
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "d.npz") as archive:
        assert archive["arr_0"].shape == (2, 16, 16, 1)


def test_train_then_sample_then_resume(tmp_path):
    data = (np.random.default_rng(0).random((12, 8, 8)) * 255).astype(np.uint8)
    np.savez(tmp_path / "d.npz", data)
    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "d.npz"), "--image-size", "8", "--dim", "8", "--dim-mults", "1,2",
            "--timesteps", "5", "--batch-size", "4", "--steps", "2", "--out-dir", str(out), "--no-progress"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "final loss" in result.stdout
    result = run_cli("sample", "--checkpoint", str(out / "model.safetensors"), "--num", "2", "--out",
                     str(tmp_path / "x.png"), "--no-progress")
    assert result.returncode == 0, result.stderr
    result = run_cli("train", "--resume", str(out / "checkpoint.safetensors"), "--epochs", "2", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "from step 2" in result.stderr and "step 6," in result.stdout  # 2 epochs of 12 // 4 = 3 steps


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    np.save(root / "d.npy", np.zeros((4, 8, 8), np.uint8))
    result = run_cli("train", "--data", str(root / "d.npy"), "--image-size", "8", "--dim", "8", "--dim-mults", "1,2",
                     "--timesteps", "3", "--batch-size", "2", "--steps", "1", "--out-dir", str(root / "run"),
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    return root


@pytest.mark.parametrize(
    "args,message",
    [
        (["sample", "--out", "x.jpg"], "must end in .png"),
        (["sample", "--out", "no/such/folder/x.png"], "does not exist"),
        (["sample", "--image-size", "9"], "not divisible by 4"),
        (["sample", "--num", "0"], "positive integer"),
        (["sample", "--device", "nonsense"], "device 'nonsense'"),
        (["sample", "--backend", "cudagraph"], "'cudagraph' needs a CUDA device"),
        (["sample", "--steps", "5000"], "steps must lie in [1, 1000]"),
        (["sample", "--method", "dpmsolver++", "--eta", "0.5"], "eta applies to method='ddim'"),
        (["sample", "--channels", "3"], "--channels 3 does not match the model, which has channels=1"),
        (["sample", "--checkpoint", "missing.safetensors"], "missing.safetensors: no such checkpoint file"),
        (["sample", "--checkpoint", "{root}/corrupt.safetensors"], "corrupt.safetensors: not a readable safetensors file"),
        (["train", "--data", "missing.npz"], "missing.npz: no such file or folder"),
        (["train", "--data", "{root}/notes.txt"], "unknown data format"),
        (["train", "--data", "{root}/d.npy", "--image-size", "10"], "image size 10 is not divisible by 4"),
        (["train", "--data", "{root}/d.npy", "--channels", "3"], "grayscale (1 channel) but --channels is 3"),
        (["train", "--resume", "{root}/run/checkpoint.safetensors", "--channels", "3"],
         "--channels 3 does not match the checkpoint, which has channels=1"),
        (["train", "--resume", "{root}/run/model.safetensors"], "model.safetensors: a 'model' checkpoint has no training state"),
        (["train", "--resume", "{root}/corrupt.safetensors"], "corrupt.safetensors: not a readable safetensors file"),
        (["train"], "--data is required"),
        (["train", "--data", "{root}/d.npy", "--init", "{root}/run/model.safetensors", "--dim", "12"],
         "model.safetensors, which has dim=8"),
        (["train", "--data", "{root}/d.npy", "--init", "missing.safetensors"], "missing.safetensors: no such checkpoint"),
        (["train", "--resume", "{root}/run/checkpoint.safetensors", "--init", "{root}/run/model.safetensors"],
         "--init starts a new run"),
        (["train", "--data", "{root}/d.npy", "--lr-schedule", "linear"], "invalid choice: 'linear'"),
        (["train", "--data", "{root}/d.npy", "--image-size", "8", "--lr-schedule", "cosine", "--warmup-steps", "5",
          "--steps", "2"], "cosine schedule needs steps after the warm-up"),
        (["train", "--data", "{root}/d.npy", "--image-size", "8", "--lr", "-1"], "lr must be a positive number"),
        (["train", "--data", "{root}/d.npy", "--image-size", "8", "--dim", "7"], "dim must be even and >= 4"),
        (["sample", "--seed", str(2**64)], "expected a seed in [0, 2**63 - 1]"),
        (["sample", "--method", "ddim", "--order", "2"], "order 2: 'ddim' has no order setting"),
    ],
)
def test_bad_input_one_line_exit_2(small_run, tmp_path, args, message, capsys, monkeypatch):
    (small_run / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (small_run / "notes.txt").write_text("hello")
    before = sorted(p.name for p in small_run.rglob("*"))
    monkeypatch.chdir(tmp_path)
    result = run_main(capsys, *[a.format(root=small_run) for a in args])
    assert_one_line_error(result, message)
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran
    assert sorted(p.name for p in small_run.rglob("*")) == before  # nothing changed beside the inputs


def test_the_console_entry_point_exits_2_with_one_line(tmp_path):
    # The cases above run main() in this process; this one runs the process entry point itself.
    for args, message in ((["sample", "--out", "x.jpg"], "must end in .png"),
                          (["sample", "--num", "0"], "positive integer")):
        assert_one_line_error(run_cli(*args, cwd=tmp_path), message)
    assert list(tmp_path.iterdir()) == []


def _cli_error(capsys, *argv) -> str:
    """Run the CLI in this process; it must exit 2 with one line on stderr: that line."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def _assert_cli_samples_like_the_library(checkpoint, flag, fit_file, model, diffusion, sampler_kwargs, out):
    """``sample FLAG FILE`` writes what Sampler(**sampler_kwargs) draws from the same torch seed."""
    import torch

    from fastddpm import Sampler
    from fastddpm.io.files import to_uint8_images

    assert main(["sample", "--checkpoint", str(checkpoint), flag, str(fit_file), "--num", "3", "--seed", "5",
                 "--out", str(out), "--no-progress"]) == 0
    with np.load(out) as archive:
        images = archive["arr_0"]
    torch.manual_seed(5)
    expected = Sampler(model, diffusion, **sampler_kwargs).sample(3, 8, 1, progress=False)
    np.testing.assert_array_equal(images, to_uint8_images(expected))


def test_fit_timesteps_then_sample_with_them(tmp_path, small_unet, capsys):
    import json

    from fastddpm import FittedTimesteps, GaussianDiffusion, save

    checkpoint = tmp_path / "tiny.safetensors"
    save(checkpoint, small_unet, GaussianDiffusion(50), image_size=8)
    fit_path = tmp_path / "fit.json"
    assert main(["fit-timesteps", "--checkpoint", str(checkpoint), "--steps", "4", "--batch-size", "4",
                 "--teacher-steps", "12", "--out", str(fit_path), "--no-progress"]) == 0
    fit = FittedTimesteps.from_json(fit_path.read_text())
    # The command passes its settings through: the library, asked the same, fits the same timesteps.
    again = fastddpm.fit_timesteps(small_unet, GaussianDiffusion(50), 4, image_size=8, channels=1, batch_size=4,
                                   teacher_steps=12)
    assert fit.timesteps == again.timesteps and fit.num_train_steps == 50 and fit.error == again.error
    assert str(fit_path) in capsys.readouterr().out

    out = tmp_path / "s.npz"
    _assert_cli_samples_like_the_library(checkpoint, "--timesteps", fit_path, small_unet, GaussianDiffusion(50),
                                         fit.sampler_kwargs(), out)

    def error(*argv):
        return _cli_error(capsys, *argv)

    sample = ["sample", "--checkpoint", str(checkpoint), "--out", str(out), "--timesteps"]
    assert "--steps 5 does not match" in error(*sample, str(fit_path), "--steps", "5")
    assert "drop --spacing" in error(*sample, str(fit_path), "--spacing", "trailing")
    assert "--method ddim does not match" in error(*sample, str(fit_path), "--method", "ddim")
    assert "--order 3 does not match" in error(*sample, str(fit_path), "--order", "3")
    ddim_fit = FittedTimesteps(**{**json.loads(fit.to_json()), "method": "ddim", "order": 1})
    (tmp_path / "ddim.json").write_text(ddim_fit.to_json())
    assert "--order applies to dpmsolver++" in error(*sample, str(tmp_path / "ddim.json"), "--order", "2")
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    assert "--timesteps" in error(*sample, str(tmp_path / "deep.json"))
    (tmp_path / "other.json").write_text(json.dumps({"timesteps": [3, 1]}))
    assert "not a fastddpm timestep fit" in error(*sample, str(tmp_path / "other.json"))
    assert "No such file" in error(*sample, str(tmp_path / "missing.json"))
    foreign = FittedTimesteps(**{**json.loads(fit.to_json()), "num_train_steps": 1000, "timesteps": (999, 3)})
    (tmp_path / "foreign.json").write_text(foreign.to_json())
    assert "fitted for a model of 1000 timesteps" in error(*sample, str(tmp_path / "foreign.json"))
    assert "--out must end in .json" in error("fit-timesteps", "--steps", "4", "--out", str(tmp_path / "f.txt"))


def test_fit_solver_then_sample_with_it(tmp_path, small_unet, capsys):
    import json

    from fastddpm import GaussianDiffusion, save
    from fastddpm.fit.solver import FittedSolver, fit_solver

    checkpoint = tmp_path / "tiny.safetensors"
    save(checkpoint, small_unet, GaussianDiffusion(50), image_size=8)
    fit_path = tmp_path / "fit.json"
    assert main(["fit-solver", "--checkpoint", str(checkpoint), "--steps", "4", "--batch-size", "4",
                 "--teacher-steps", "12", "--iterations", "2", "--spacing", "linspace", "--out", str(fit_path),
                 "--no-progress"]) == 0
    fit = FittedSolver.from_json(fit_path.read_text())
    # The command passes its settings through: the library, asked the same, fits the same plan.
    again = fit_solver(small_unet, GaussianDiffusion(50), 4, image_size=8, channels=1, fit_batch=4, teacher_steps=12,
                       iterations=2, spacing="linspace", progress=False)
    assert fit.start == "linspace" and fit.timesteps == (49, 33, 16, 0)  # round(linspace(0, T - 1, 4)), descending
    assert {**fit.to_dict(), "seconds": 0} == {**again.to_dict(), "seconds": 0}  # batch, teacher, seed: passed on
    assert str(fit_path) in capsys.readouterr().out

    out = tmp_path / "s.npz"
    _assert_cli_samples_like_the_library(checkpoint, "--solver", fit_path, small_unet, GaussianDiffusion(50),
                                         fit.sampler_kwargs(), out)

    def error(*argv):
        return _cli_error(capsys, *argv)

    written = out.read_bytes()
    sample = ["sample", "--checkpoint", str(checkpoint), "--out", str(out), "--solver"]
    assert "fixes the solver: drop --steps" in error(*sample, str(fit_path), "--steps", "4")
    other = tmp_path / "other.safetensors"
    save(other, type(small_unet)(dim=8, channels=1, dim_mults=(1, 2)), GaussianDiffusion(50), image_size=8)
    assert "fitted for another model" in error("sample", "--checkpoint", str(other), "--out", str(out),
                                               "--solver", str(fit_path))
    longer = tmp_path / "longer.safetensors"
    save(longer, small_unet, GaussianDiffusion(60), image_size=8)
    assert "fitted for the diffusion" in error("sample", "--checkpoint", str(longer), "--out", str(out),
                                               "--solver", str(fit_path))
    bad = json.loads(fit.to_json())
    bad["coefs"]["X"] = bad["coefs"]["X"][:-1]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert "coefs['X'] must be 4 finite numbers" in error(*sample, str(tmp_path / "bad.json"))
    # A step count the spacing cannot place: one line, before any solve, and no file written.
    assert "trailing" in error("fit-solver", "--checkpoint", str(checkpoint), "--steps", "29", "--teacher-steps", "40",
                               "--spacing", "trailing", "--out", str(tmp_path / "never.json"), "--no-progress")
    assert not (tmp_path / "never.json").exists()
    assert out.read_bytes() == written and not list(tmp_path.glob("*.tmp*"))  # the refused runs wrote nothing


def test_sample_unipc_order_3_is_the_library_sampler(tmp_path, small_unet, capsys):
    import torch

    from fastddpm import GaussianDiffusion, Sampler, save
    from fastddpm.io.files import to_uint8_images

    checkpoint = tmp_path / "tiny.safetensors"
    save(checkpoint, small_unet, GaussianDiffusion(50), image_size=8)
    out = tmp_path / "u.npz"
    assert main(["sample", "--checkpoint", str(checkpoint), "--method", "unipc", "--order", "3", "--steps", "5",
                 "--num", "3", "--seed", "7", "--out", str(out), "--no-progress"]) == 0
    with np.load(out) as archive:
        images = archive["arr_0"]
    torch.manual_seed(7)
    expected = Sampler(small_unet, GaussianDiffusion(50), method="unipc", order=3, steps=5,
                       spacing="logsnr").sample(3, 8, 1, progress=False)  # logsnr: the CLI's default spacing
    np.testing.assert_array_equal(images, to_uint8_images(expected))
    # An order the solver does not take is the solver's one-line error, exit 2.
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(checkpoint), "--method", "ddim", "--order", "2", "--out",
                 str(tmp_path / "x.png")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "order 2: 'ddim' has no order setting" in lines[0], lines
    assert not (tmp_path / "x.png").exists()


def test_cli_auto_backend_captures_a_cuda_graph_only_when_it_pays():
    from fastddpm.cli.sample import cli_backend

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    # A capture costs about 2 eager batches and a replay a quarter of one: one or two batches run eager,
    # three or more equal ones replay a graph; a smaller last batch is a second capture.
    assert [cli_backend("auto", cuda, 64 * n, 64) for n in (1, 2, 3, 10)] == ["eager", "eager", "cudagraph", "cudagraph"]
    assert cli_backend("auto", cuda, 64 * 3 + 8, 64) == "eager" and cli_backend("auto", cuda, 64 * 4 + 8, 64) == "cudagraph"
    assert cli_backend("auto", cuda, 10, 64) == "eager"  # one batch smaller than --batch-size
    assert cli_backend("auto", cpu, 640, 64) == "auto"  # the Sampler resolves it: eager on CPU
    # An explicit choice is kept.
    assert cli_backend("cudagraph", cuda, 1, 64) == "cudagraph" and cli_backend("compile", cpu, 1, 64) == "compile"
