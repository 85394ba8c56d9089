"""How the distribution installs: the kernels folder is `fastddpm.kernels`, never a top-level `kernels`."""

import importlib.metadata
import os
from pathlib import Path

import pytest

import fastddpm


def test_kernels_install_under_the_package():
    import fastddpm.kernels  # noqa: F401  

    dist = importlib.metadata.distribution("fastddpm")
    top_level = (dist.read_text("top_level.txt") or "").split()
    assert "kernels" not in top_level
    assert dist.version == fastddpm.__version__


def test_every_source_folder_is_a_package():
    # pyproject.toml installs what setuptools' find_packages sees: a folder of modules without an
    # __init__.py works in an editable install and is silently left out of `pip install .`.
    root = Path(__file__).resolve().parent.parent / "fastddpm"
    folders = {p.parent for p in root.rglob("*.py") if "__pycache__" not in p.parts}
    assert [str(f) for f in folders if not (f / "__init__.py").exists()] == []


def test_console_script_declared():
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("fastddpm") == "fastddpm_launcher:run"


def test_the_console_script_sets_a_passive_openmp_wait_policy_unless_told(monkeypatch):
    import fastddpm.cli
    import fastddpm_launcher

    seen = []
    monkeypatch.setattr(fastddpm.cli, "run", lambda: seen.append(os.environ.get("OMP_WAIT_POLICY")))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    fastddpm_launcher.run()
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a user's own choice is kept
    fastddpm_launcher.run()
    assert seen == ["PASSIVE", "ACTIVE"]


def test_the_console_script_runs_the_cli(tmp_path):
    import subprocess
    import sys

    code = "import sys, fastddpm_launcher; sys.argv = ['fastddpm', 'sample', '--out', 'x.jpg']; fastddpm_launcher.run()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "fastddpm: error: --out must end in .png (a grid) or .npz (uint8 images), got 'x.jpg'"


def test_public_api():
    for name in ("Unet", "GaussianDiffusion", "linear_beta_schedule", "cosine_beta_schedule",
                 "quadratic_beta_schedule", "sigmoid_beta_schedule"):
        assert hasattr(fastddpm, name)


def test_flat_layout_module_paths_still_import_with_a_warning():
    import importlib
    import sys

    from fastddpm._aliases import MOVED

    for old, new in MOVED.items():
        sys.modules.pop(f"fastddpm.{old}", None)
        with pytest.warns(DeprecationWarning, match=f"fastddpm.{old} moved to fastddpm.{new}"):
            module = importlib.import_module(f"fastddpm.{old}")
        assert module is importlib.import_module(f"fastddpm.{new}")
    from fastddpm.sampler import Sampler  # the names users imported from them
    from fastddpm.schedules import timestep_sequence  # noqa: F401
    assert Sampler is fastddpm.Sampler
