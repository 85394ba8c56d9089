"""How the distribution installs: the kernels folder is `fastddpm.kernels`, never a top-level `kernels`."""

import importlib.metadata
from pathlib import Path

import pytest

import fastddpm


def test_kernels_install_under_the_package():
    import fastddpm.kernels  # noqa: F401  (the top-level folder kernels/, mapped by pyproject.toml)

    dist = importlib.metadata.distribution("fastddpm")
    top_level = (dist.read_text("top_level.txt") or "").split()
    assert "kernels" not in top_level
    assert dist.version == fastddpm.__version__


def test_every_package_folder_is_listed_for_installation():
    # setuptools installs only the packages pyproject.toml lists: a kernel folder missing there works in
    # an editable install and breaks `pip install .`.
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {"fastddpm"} | {
        "fastddpm." + ".".join(p.parent.relative_to(root).parts) for p in (root / "kernels").rglob("__init__.py")
    } | {"fastddpm." + ".".join(p.parent.relative_to(root / "fastddpm").parts)
         for p in (root / "fastddpm").rglob("*/__init__.py")}
    assert on_disk == listed


def test_console_script_declared():
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("fastddpm") == "fastddpm.cli:run"


def test_public_api():
    for name in ("Unet", "GaussianDiffusion", "linear_beta_schedule", "cosine_beta_schedule",
                 "quadratic_beta_schedule", "sigmoid_beta_schedule"):
        assert hasattr(fastddpm, name)
