"""pytest-benchmark suite: kernels against their torch twins, the U-Net forward per backend and precision,
whole sampling per method and backend, and ONNX Runtime. Run: ``pytest benchmarks --benchmark-only``."""

import pytest
import torch
from conftest import DEVICE, run

from fastddpm import GaussianDiffusion, Sampler
from fastddpm.tolerances import (
    FLOAT32_REASSOCIATED_NETWORK,
    FLOAT32_TRAJECTORY,
    LOW_PRECISION_TRAJECTORY,
    ONNX_RUNTIME_FLOAT32,
    assert_close,
)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Triton on CPU only runs in the interpreter: a correctness tool, not something to time.
IMPLS = ["torch", "triton"] if DEVICE.type == "cuda" else ["torch"]


# -- kernels against their twins -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def step_inputs(preset, batch):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    shape = (batch, preset.channels, preset.image_size, preset.image_size)
    diffusion = GaussianDiffusion(1000, device=DEVICE)
    x, eps, z = (torch.randn(shape, device=DEVICE, generator=g) for _ in range(3))
    t = torch.randint(1, 1000, (batch,), device=DEVICE, generator=g)
    return diffusion, x, eps, z, t


@pytest.mark.parametrize("impl", IMPLS)
def test_ddpm_step(benchmark, step_inputs, impl):
    from fastddpm.kernels import ddpm_step

    diffusion, x, eps, z, t = step_inputs
    table = diffusion.ddpm_step_table()
    # The oracle: the reference step with the same ε and noise (every t ≥ 1, so noise is added).
    expected = diffusion.p_sample(lambda *_: eps, x, t, t_index=1, noise=z)
    assert_close(ddpm_step(x, eps, t, table, noise=z, impl=impl), expected)
    run(benchmark, lambda: ddpm_step(x, eps, t, table, noise=z, impl=impl), rounds=50)


@pytest.mark.parametrize("impl", IMPLS)
def test_q_sample(benchmark, step_inputs, impl):
    from fastddpm.kernels import q_sample

    diffusion, x, _, z, t = step_inputs
    args = (x, t, z, diffusion.sqrt_alphas_cumprod, diffusion.sqrt_one_minus_alphas_cumprod)
    assert_close(q_sample(*args, impl=impl), diffusion.q_sample(x, t, noise=z))
    run(benchmark, lambda: q_sample(*args, impl=impl), rounds=50)


@pytest.mark.parametrize("impl", IMPLS)
def test_linear_attention(benchmark, preset, batch, impl):
    """The U-Net's linear-attention core (4 heads of 32, the reference's) at the preset's full resolution."""
    from fastddpm.kernels import linear_attention
    from fastddpm.kernels.linear_attention.naive import linear_attention as twin

    g = torch.Generator(device=DEVICE).manual_seed(0)
    qkv = torch.randn(batch, 3 * 4 * 32, preset.image_size, preset.image_size, device=DEVICE, generator=g)
    assert_close(linear_attention(qkv, 4, 32**-0.5, impl=impl), twin(qkv, 4, 32**-0.5),
                 rtol=FLOAT32_REASSOCIATED_NETWORK)
    run(benchmark, lambda: linear_attention(qkv, 4, 32**-0.5, impl=impl), rounds=20)


# -- the U-Net forward ---------------------------------------------------------------------------------
# torch.compile only on CUDA: compiling the reference's U-Net takes minutes on a 2-core CPU (fastddpm bench
# --backends compile:fp32 measures it there when asked).
FORWARD_BACKENDS = ["eager", "compile"] if DEVICE.type == "cuda" else ["eager"]


@pytest.mark.parametrize("backend", FORWARD_BACKENDS)
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_unet_forward(benchmark, model_and_diffusion, preset, batch, precision, backend):
    model, _ = model_and_diffusion
    if backend == "compile":
        from fastddpm.compiler import CompileConfig, compile_step

        model = compile_step(model, CompileConfig())
    x = torch.randn(batch, preset.channels, preset.image_size, preset.image_size, device=DEVICE)
    t = torch.randint(0, 200, (batch,), device=DEVICE)
    dtype = PRECISIONS[precision]

    def forward():
        with torch.no_grad(), torch.autocast(DEVICE.type, dtype=dtype, enabled=dtype != torch.float32):
            return model(x, t)

    if dtype != torch.float32 or backend != "eager":  # (the eager fp32 forward is the reference itself)
        with torch.no_grad():
            expected = model_and_diffusion[0](x, t)
        # Low precision: held to the bound of a whole low-precision trajectory, of which one forward is a
        # part; a compiled fp32 forward reassociates sums like the fused kernels do.
        rtol = LOW_PRECISION_TRAJECTORY[dtype] if dtype != torch.float32 else FLOAT32_REASSOCIATED_NETWORK
        assert_close(forward().float(), expected, rtol=rtol)
    run(benchmark, forward)


# -- whole sampling --------------------------------------------------------------------------------------
SAMPLING = [("ddpm", "eager", "fp32"), ("ddpm", "eager", "bf16"), ("ddim", "eager", "fp32"),
            ("dpmsolver++", "eager", "fp32")]
if DEVICE.type == "cuda":
    SAMPLING += [("ddpm", "cudagraph", "fp32"), ("ddpm", "cudagraph", "bf16"), ("dpmsolver++", "cudagraph", "fp32")]


@pytest.mark.parametrize("method,backend,precision", SAMPLING)
def test_sampling(benchmark, model_and_diffusion, preset, batch, method, backend, precision):
    """10 steps of the method; ddpm on a 10-step schedule, so the reference loop is the oracle."""
    model, diffusion = model_and_diffusion
    chain = GaussianDiffusion(10) if method == "ddpm" else diffusion
    sampler = Sampler(model, chain, method=method, steps=None if method == "ddpm" else 10, spacing="logsnr",
                      backend=backend, dtype=PRECISIONS[precision])
    size, channels = preset.image_size, preset.channels

    def sample():
        return sampler.sample(batch, size, channels, seed=0, progress=False, clip=False)

    # The oracle: the reference's loop for ddpm, the eager float32 sampler of the method otherwise.
    if method == "ddpm":
        torch.manual_seed(0)
        expected = torch.from_numpy(chain.p_sample_loop(model, (batch, channels, size, size), progress=False)[-1])
    else:
        eager = Sampler(model, chain, method=method, steps=10, spacing="logsnr", backend="eager")
        expected = eager.sample(batch, size, channels, seed=0, progress=False, clip=False).cpu()
    rtol = FLOAT32_TRAJECTORY if precision == "fp32" else LOW_PRECISION_TRAJECTORY[PRECISIONS[precision]]
    assert_close(sample().cpu(), expected, rtol=rtol)
    run(benchmark, sample)


def test_sampling_reference_loop(benchmark, model_and_diffusion, preset, batch):
    """The seed's loop over the same 10-step schedule: the 1.0× of the sampling benchmarks."""
    model, _ = model_and_diffusion
    chain = GaussianDiffusion(10)
    shape = (batch, preset.channels, preset.image_size, preset.image_size)
    run(benchmark, lambda: chain.p_sample_loop(model, shape, progress=False))


# -- ONNX Runtime --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["step-wise", "loop"])
def test_onnxruntime_sampling(benchmark, model_and_diffusion, preset, batch, tmp_path_factory, kind):
    pytest.importorskip("onnxruntime")
    from fastddpm import OrtSampler, export_onnx, export_onnx_sampler

    model, _ = model_and_diffusion
    chain = GaussianDiffusion(10)
    folder = tmp_path_factory.mktemp("onnx")
    path = export_onnx(model, folder / "eps.onnx", diffusion=chain, image_size=preset.image_size)
    if kind == "loop":
        path = export_onnx_sampler(path, folder / "loop.onnx", method="ddpm")
    from fastddpm.onnx import CPU, CUDA

    # fp32 on both sides: ORT's CUDA provider defaults to TF32 convolutions.
    sampler = OrtSampler(path, providers=[(CUDA, {"use_tf32": 0}), CPU] if DEVICE.type == "cuda" else [CPU])
    eager = Sampler(model, chain, backend="eager")
    shape = (batch, preset.channels, preset.image_size, preset.image_size)
    x_T, noise = (a.numpy() for a in eager.torch_noise(shape, seed=0))
    expected = eager.sample(batch, preset.image_size, preset.channels, seed=0, progress=False)
    assert_close(torch.from_numpy(sampler.sample(batch, x_T=x_T, noise=noise)), expected.cpu(),
                 rtol=ONNX_RUNTIME_FLOAT32)
    run(benchmark, lambda: sampler.sample(batch, x_T=x_T, noise=noise))
