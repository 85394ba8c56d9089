"""The OpenVINO runner (``fastddpm.onnx.openvino.OpenVinoEpsModel``): per forward and over short trajectories
against the torch U-Net it was exported from, its refusals, and ``sample --backend openvino``."""

import dataclasses
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
openvino = pytest.importorskip("openvino", reason="the openvino extra is not installed")

from fastddpm import GaussianDiffusion, OnnxModelError, Sampler, export_onnx_sampler  # noqa: E402
from fastddpm.io.files import to_uint8_images  # noqa: E402
from fastddpm.onnx import read_onnx  # noqa: E402
from fastddpm.onnx.openvino import NEEDS_OPENVINO, OpenVinoEpsModel  # noqa: E402
from fastddpm.tolerances import LOW_PRECISION_TRAJECTORY, OPENVINO_FLOAT32, assert_close  # noqa: E402

from test_cli import assert_one_line_error, run_main  # noqa: E402

T, IMAGE = 20, 8


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(T)


@pytest.fixture(scope="module")
def exported(small_eps_export):
    return small_eps_export  # small_unet, T=20 linear, IMAGE=8


@pytest.mark.parametrize("shape", [(3, 1, IMAGE, IMAGE), (2, 1, 2 * IMAGE, 2 * IMAGE)])
def test_forward_matches_torch(exported, small_unet, shape):
    model = OpenVinoEpsModel(exported)
    x, t = torch.randn(shape), torch.randint(0, T, (shape[0],))
    with torch.no_grad():
        expected = small_unet(x, t)
    first = model(x, t)
    assert first.dtype == torch.float32 and first.shape == expected.shape
    assert_close(first, expected, rtol=OPENVINO_FLOAT32)
    # The result is the caller's own: a second call (same shape, same compiled request) leaves it alone.
    kept = first.clone()
    model(torch.randn(shape), t)
    assert torch.equal(first, kept)
    assert model.effective_precision == "fp32"


@pytest.mark.parametrize("method,order", [("ddim", None), ("unipc", 3)])
def test_trajectory_matches_the_torch_sampler(exported, small_unet, diffusion, method, order):
    expected = Sampler(small_unet, diffusion, method=method, steps=8, order=order).sample(
        4, IMAGE, 1, seed=0, progress=False, clip=False)
    for precision in ("fp32", "bf16"):
        model = OpenVinoEpsModel(exported, precision=precision)
        got = Sampler(model, diffusion, method=method, steps=8, order=order).sample(
            4, IMAGE, 1, seed=0, progress=False, clip=False)
        # A CPU without bf16 instructions (the CI machine's AVX2 Zen 3) runs bf16 as f32: held to f32's bound.
        tolerance = OPENVINO_FLOAT32 if model.effective_precision == "fp32" else LOW_PRECISION_TRAJECTORY[torch.bfloat16]
        assert_close(got, expected, rtol=tolerance)
    capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert (model.effective_precision == "bf16") == ("BF16" in capabilities)


def test_refusals(exported, tmp_path, monkeypatch):
    loop = export_onnx_sampler(exported, tmp_path / "loop.onnx", method="ddim", steps=3)
    with pytest.raises(OnnxModelError, match="OpenVINO runs an ε-model export"):
        OpenVinoEpsModel(loop)
    half = dataclasses.replace(read_onnx(exported), precision="fp16")  # what an fp16 export's metadata says
    with pytest.raises(OnnxModelError, match="OpenVINO takes the fp32 export"):
        OpenVinoEpsModel(half)
    with pytest.raises(ValueError, match="precision must be one of"):
        OpenVinoEpsModel(exported, precision="fp16")
    with pytest.raises(ValueError, match=r"x must be \(B, 1, H, W\)"):
        OpenVinoEpsModel(exported)(torch.zeros(1, 3, IMAGE, IMAGE), torch.zeros(1, dtype=torch.long))
    # OpenVINO itself would compile it and return a 4×4 image.
    with pytest.raises(ValueError, match="image size 5x5 is not divisible by 2"):
        OpenVinoEpsModel(exported)(torch.zeros(1, 1, 5, 5), torch.zeros(1, dtype=torch.long))
    monkeypatch.setitem(sys.modules, "openvino", None)  # the extra not installed
    with pytest.raises(ImportError) as exc:
        OpenVinoEpsModel(exported)
    assert str(exc.value) == NEEDS_OPENVINO


def test_cli_sample_backend_openvino(exported, diffusion, tmp_path, capsys):
    out = tmp_path / "s.npz"
    result = run_main(capsys, "sample", "--onnx", exported, "--backend", "openvino", "--method", "ddim", "--steps",
                      "5", "--num", "3", "--out", out, "--no-progress")
    assert result.returncode == 0, result.stderr
    # The same sampler in Python, from the same seeded stream: the same images (the U-Net agrees to ~1e-6).
    torch.manual_seed(0)
    expected = Sampler(OpenVinoEpsModel(exported), diffusion, method="ddim", steps=5, spacing="logsnr").sample(
        3, IMAGE, 1, progress=False)  # the CLI's default spacing
    with np.load(out) as archive:
        np.testing.assert_array_equal(archive["arr_0"], to_uint8_images(expected))
    for args, message in ((["--backend", "openvino"], "pass --onnx MODEL.onnx"),
                          (["--backend", "openvino", "--onnx", exported, "--precision", "fp16"], "precision must be one of"),
                          (["--backend", "openvino", "--onnx", exported, "--device", "cuda"], "runs on the CPU")):
        assert_one_line_error(run_main(capsys, "sample", *args, "--out", tmp_path / "x.png"), message)
    assert not (tmp_path / "x.png").exists()
