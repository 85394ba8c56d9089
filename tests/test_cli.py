"""The command line: --help/--version, the sample command's output, and one-line errors with exit 2."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import fastddpm
from fastddpm.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "fastddpm", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert fastddpm.__version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "sample" in capsys.readouterr().out


def test_sample_writes_png_grid(tmp_path):
    out = tmp_path / "grid.png"
    result = run_cli("sample", "--num", "4", "--image-size", "8", "--timesteps", "3", "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    image = np.asarray(Image.open(out))
    # 2×2 grid of 8×8 images with 2-pixel padding, enlarged 4×: (2·(8+2)+2)·4 = 88 pixels a side.
    assert image.shape == (88, 88)
    assert image.std() > 0
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary file left behind


@pytest.mark.parametrize(
    "args,message",
    [
        (["--out", "x.jpg"], "must end in .png"),
        (["--out", "no/such/folder/x.png"], "does not exist"),
        (["--image-size", "9"], "not divisible by 2"),
        (["--num", "0"], "positive integer"),
        (["--device", "nonsense"], "device 'nonsense'"),
    ],
)
def test_sample_bad_input_one_line_exit_2(tmp_path, args, message):
    result = run_cli("sample", "--timesteps", "2", "--no-progress", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written
