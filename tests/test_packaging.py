"""How the distribution installs: the kernels folder is `fastddpm.kernels`, never a top-level `kernels`."""

import importlib.metadata

import fastddpm


def test_kernels_install_under_the_package():
    import fastddpm.kernels  # noqa: F401  (the top-level folder kernels/, mapped by pyproject.toml)

    dist = importlib.metadata.distribution("fastddpm")
    top_level = (dist.read_text("top_level.txt") or "").split()
    assert "kernels" not in top_level
    assert dist.version == fastddpm.__version__


def test_console_script_declared():
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("fastddpm") == "fastddpm.cli:main"


def test_public_api():
    for name in ("Unet", "GaussianDiffusion", "linear_beta_schedule", "cosine_beta_schedule",
                 "quadratic_beta_schedule", "sigmoid_beta_schedule"):
        assert hasattr(fastddpm, name)
