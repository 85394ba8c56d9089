"""Shared test configuration. ``reference_oracle`` (the reference code, transcribed) is the oracle."""

import os

import pytest
import torch

# Without CUDA, Triton kernels run on CPU tensors through the Triton interpreter. The switch is read
# when a kernel is decorated, so it is set here, before any test imports fastddpm.kernels' kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# float32 in the tolerance table is IEEE float32. cuDNN runs float32 convolutions in TF32 by default (10-bit
# mantissa inputs), which turns the ulp-level differences of a fused kernel or a captured graph into ~1e-4
# ones after a few layers: measured on an H200 (torch 2.11), eager vs CUDA graph over 20–50 steps of the tests'
# small U-Net 7e-5–3.6e-4 with TF32; with TF32 off those tests pass at 1e-5, and `fastddpm bench` (TF32 off)
# measured 4.8e-7 for a CUDA graph against the reference over 10 steps of the Fashion U-Net.
torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

# Small U-Net configurations covering both block types, time embedding on and off, custom init/out
# widths, and two or three resolutions. Each is built by the library and by the reference oracle.
UNET_CONFIGS = {
    "convnext-fashion": dict(dim=28, channels=1, dim_mults=(1, 2, 4)),
    "convnext-rgb-mult3": dict(dim=16, channels=3, dim_mults=(1, 2), convnext_mult=3),
    "convnext-no-time": dict(dim=12, channels=2, dim_mults=(1, 2), with_time_emb=False),
    "resnet-rgb": dict(dim=16, channels=3, dim_mults=(1, 2, 2), use_convnext=False, resnet_block_groups=4),
    "resnet-init-out": dict(
        dim=8, init_dim=6, out_dim=2, channels=1, dim_mults=(1, 2), use_convnext=False, resnet_block_groups=2
    ),
}


@pytest.fixture(scope="session")
def small_eps_export(tmp_path_factory):
    """The small U-Net (as ``small_unet`` builds it) exported as an ε-model (T=20 linear, 8×8): one export
    (~25 s of torch.onnx.export here) shared by the ONNX Runtime and OpenVINO tests."""
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    from fastddpm import GaussianDiffusion, Unet, export_onnx

    torch.manual_seed(0)
    model = Unet(dim=8, channels=1, dim_mults=(1, 2)).eval()
    return export_onnx(model, tmp_path_factory.mktemp("eps-export") / "eps.onnx", diffusion=GaussianDiffusion(20),
                       image_size=8)


@pytest.fixture(scope="module")
def small_unet():
    """The tests' small U-Net (8 channels, two resolutions, 1 image channel): seeded, in eval mode."""
    from fastddpm import Unet

    torch.manual_seed(0)
    return Unet(dim=8, channels=1, dim_mults=(1, 2)).eval()
