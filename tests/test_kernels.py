"""Every Triton kernel against its pure-torch twin (interpreted on CPU, real on CUDA), and the ops'
dispatch and torch.library registration. Names contain "kernel" or "triton": `pytest -k "kernel or triton"`."""

import math

import pytest
import torch

from conftest import DEVICE
from fastddpm import GaussianDiffusion, Unet
from fastddpm.kernels import ddpm_step, linear_attention, linear_step, multistep_update, q_sample, randn_philox, resolve_impl
from fastddpm.kernels.update_rows import NUM_ROWS
from fastddpm.kernels.ddpm_step import fused as step_fused
from fastddpm.kernels.ddpm_step import naive as step_naive
from fastddpm.kernels.linear_attention import fused as attn_fused
from fastddpm.kernels.linear_attention import naive as attn_naive
from fastddpm.kernels.noise import fused as noise_fused
from fastddpm.kernels.noise import naive as noise_naive
from fastddpm.kernels.q_sample import fused as q_fused
from fastddpm.kernels.q_sample import naive as q_naive
from fastddpm.tolerances import (FLOAT32_LONG_CONTRACTION, FLOAT32_REASSOCIATED_NETWORK, PHILOX_NORMALS_ACROSS_BACKENDS,
                                 assert_close, relative_error, tolerance)
from fastddpm.reference.unet import LinearAttention, set_linear_attention_kernel

pytest.importorskip("triton")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(3, 1, 28, 28), (5, 3, 7, 9), (1, 2, 5, 5), (4, 1, 16, 16)]
T = 200


def poisoned_like(x):
    return torch.full_like(x, float("nan"))


def step_indices(batch):
    # Always include the edges t = 0 (no noise), 1 and T − 1.
    base = torch.tensor([0, 1, T - 1, 57, 123, 3, 199])
    return base[torch.arange(batch) % len(base)].to(DEVICE)


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(T, "linear", device=DEVICE)


# ----------------------------------------------------------------------------- q_sample
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_q_sample_kernel_matches_twin(diffusion, dtype, shape):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x0 = torch.randn(shape, generator=g, device=DEVICE).to(dtype)
    noise = torch.randn(shape, generator=g, device=DEVICE).to(dtype)
    t = step_indices(shape[0])
    tables = (diffusion.sqrt_alphas_cumprod, diffusion.sqrt_one_minus_alphas_cumprod)
    out = poisoned_like(x0)
    q_fused.q_sample_triton(x0, t, noise, *tables, out=out)
    expected = q_naive.q_sample(x0, t, noise, *tables)
    assert out.dtype == dtype and not out.isnan().any()
    assert_close(out, expected, dtype)


def test_q_sample_kernel_twin_is_the_reference(diffusion):
    x0 = torch.randn(3, 2, 6, 6, device=DEVICE)
    noise = torch.randn_like(x0)
    t = step_indices(3)
    expected = diffusion.q_sample(x0, t, noise=noise)
    got = q_sample(x0, t, noise, diffusion.sqrt_alphas_cumprod, diffusion.sqrt_one_minus_alphas_cumprod, impl="triton")
    assert_close(got, expected, torch.float32)


# ----------------------------------------------------------------------------- the ancestral update
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_ddpm_step_kernel_given_noise_matches_twin(diffusion, dtype, shape):
    g = torch.Generator(device=DEVICE).manual_seed(1)
    x = torch.randn(shape, generator=g, device=DEVICE)  # the sample state stays float32
    eps = torch.randn(shape, generator=g, device=DEVICE).to(dtype)  # the model's output may be low precision
    z = torch.randn(shape, generator=g, device=DEVICE)
    t = step_indices(shape[0])
    table = diffusion.ddpm_step_table()
    out = poisoned_like(x)
    step_fused.ddpm_step_triton(x, eps, t, table, noise=z, out=out)
    assert not out.isnan().any()
    assert_close(out, step_naive.ddpm_step(x, eps, t, table, noise=z), torch.float32)


@pytest.mark.parametrize("t_value", [0, 1, T - 1])
def test_ddpm_step_kernel_equals_reference_p_sample(diffusion, t_value):
    x = torch.randn(4, 1, 12, 12, device=DEVICE)
    eps = torch.randn_like(x)
    z = torch.randn_like(x)
    t = torch.full((4,), t_value, dtype=torch.long, device=DEVICE)
    expected = diffusion.p_sample(lambda *_: eps, x, t, t_value, noise=z)
    for impl in ("triton", "torch"):
        got = ddpm_step(x, eps, t, diffusion.ddpm_step_table(), noise=z, impl=impl)
        assert_close(got, expected, torch.float32)
    if t_value == 0:  # the last step adds no noise at all, whatever z holds
        z_nan = torch.full_like(x, float("nan"))
        assert_close(ddpm_step(x, eps, t, diffusion.ddpm_step_table(), noise=z_nan, impl="triton"), expected, torch.float32)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_ddpm_step_kernel_philox_matches_twin(diffusion, shape):
    x = torch.randn(shape, device=DEVICE)
    eps = torch.randn(shape, device=DEVICE)
    t = step_indices(shape[0])
    seeds = torch.arange(shape[0], dtype=torch.int64, device=DEVICE) * 7919 + 3
    out = poisoned_like(x)
    step_fused.ddpm_step_triton(x, eps, t, diffusion.ddpm_step_table(), seeds=seeds, out=out)
    assert not out.isnan().any()
    expected = step_naive.ddpm_step(x, eps, t, diffusion.ddpm_step_table(), seeds=seeds)
    assert_close(out, expected, rtol=PHILOX_NORMALS_ACROSS_BACKENDS)


# ----------------------------------------------------------------------------- the linear (DDIM) update
def ddim_table(diffusion, steps=10, eta=0.5):
    from fastddpm.solvers import build_plan

    plan = build_plan(diffusion, "ddim", steps, "trailing", eta=eta)
    return plan.table(DEVICE), torch.tensor(plan.timesteps, device=DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("noise_source", ["given", "philox"])
def test_linear_step_kernel_matches_twin(diffusion, dtype, shape, noise_source):
    coefs, seq = ddim_table(diffusion)
    g = torch.Generator(device=DEVICE).manual_seed(2)
    x = torch.randn(shape, generator=g, device=DEVICE)
    eps = torch.randn(shape, generator=g, device=DEVICE).to(dtype)
    k = torch.arange(shape[0], device=DEVICE) % coefs.shape[1]  # includes the last step (C = 0)
    k[-1] = coefs.shape[1] - 1
    t = seq[k]
    z = torch.randn(shape, generator=g, device=DEVICE) if noise_source == "given" else None
    seeds = torch.arange(shape[0], dtype=torch.int64, device=DEVICE) + 5 if z is None else None
    out = poisoned_like(x)
    from fastddpm.kernels.linear_step import fused as linear_fused
    from fastddpm.kernels.linear_step import naive as linear_naive

    linear_fused.linear_step_triton(x, eps, k, coefs, t, noise=z, seeds=seeds, out=out)
    assert not out.isnan().any()
    expected = linear_naive.linear_step(x, eps, k, coefs, t, noise=z, seeds=seeds)
    assert_close(out, expected, rtol=tolerance_for(noise_source))


@pytest.mark.parametrize("solver", [("dpmsolver++", 2), ("dpmsolver++", 3), ("unipc", 3)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_multistep_update_kernel_matches_twin(diffusion, dtype, shape, solver):
    from fastddpm.kernels.multistep_update import fused as ms_fused
    from fastddpm.kernels.multistep_update import naive as ms_naive
    from fastddpm.kernels.update_rows import HISTORY_ROWS
    from fastddpm.solvers import build_plan

    plan = build_plan(diffusion, solver[0], 10, "trailing", order=solver[1])
    coefs = plan.table(DEVICE)
    assert 1 <= plan.histories <= 3
    g = torch.Generator(device=DEVICE).manual_seed(3)
    x = torch.randn(shape, generator=g, device=DEVICE)
    history = [torch.randn(shape, generator=g, device=DEVICE) for _ in range(plan.histories)]
    eps = torch.randn(shape, generator=g, device=DEVICE).to(dtype)
    # Step indices from 3 on: the first sample takes a step whose oldest history weight is live.
    k = (torch.arange(shape[0], device=DEVICE) + 3) % coefs.shape[1]
    out, x0 = poisoned_like(x), poisoned_like(x)
    ms_fused.multistep_update_triton(x, eps, k, coefs, history, out=out, x0_out=x0)
    assert not out.isnan().any() and not x0.isnan().any()
    expected_out, expected_x0 = ms_naive.multistep_update(x, eps, k, coefs, history)
    assert_close(out, expected_out, torch.float32)
    assert_close(x0, expected_x0, torch.float32)
    # The oldest history term is really applied: dropping it changes the result.
    oldest = HISTORY_ROWS[plan.histories - 1]
    assert coefs[oldest, k[0]] != 0
    fewer, _ = ms_naive.multistep_update(x, eps, k, coefs, history[:-1]) if plan.histories > 1 else (x, None)
    assert not torch.allclose(out[0], fewer[0])


def tolerance_for(noise_source):
    return PHILOX_NORMALS_ACROSS_BACKENDS if noise_source == "philox" else tolerance(torch.float32)


# ----------------------------------------------------------------------------- in-kernel noise
def test_triton_philox_integers_match_twin_bit_for_bit():
    # The integer stream is exact across backends: compare Triton's own randint4x with the twin's Philox.
    import triton
    import triton.language as tl

    @triton.jit
    def words(out_ptr, seed, step, N: tl.constexpr):
        offs = tl.arange(0, N)
        a, b, c, d = tl.randint4x(seed, (step.to(tl.int64) << 32) | offs.to(tl.int64))
        tl.store(out_ptr + offs, a.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out_ptr + N + offs, b.to(tl.int64) & 0xFFFFFFFF)

    seed, step, n = 2**40 + 12345, 77, 64
    out = torch.empty(2 * n, dtype=torch.int64, device=DEVICE)
    words[(1,)](out, seed, step, N=n)
    elem = torch.arange(n, device=DEVICE)
    full = lambda v: torch.full((n,), v, dtype=torch.int64, device=DEVICE)  # noqa: E731
    r0, r1, _, _ = noise_naive.philox4x32(elem, full(step), full(0), full(0), full(seed & 0xFFFFFFFF), full(seed >> 32))
    assert torch.equal(out[:n], r0) and torch.equal(out[n:], r1)


@pytest.mark.parametrize("sample_shape", [(1, 28, 28), (3, 5, 7), (1, 1, 1)], ids=str)
def test_randn_philox_kernel_matches_twin(sample_shape):
    seeds = torch.tensor([0, 1, 2**40 + 7, -5, 2**63 - 1], dtype=torch.int64, device=DEVICE)
    steps = torch.tensor([0, 5, 999, 2**32 - 1, 17], dtype=torch.int64, device=DEVICE)
    out = torch.full((5, *sample_shape), float("nan"), device=DEVICE)
    noise_fused.randn_philox_triton(seeds, steps, sample_shape, out=out)
    assert not out.isnan().any()
    assert_close(out, noise_naive.randn_philox(seeds, steps, sample_shape), rtol=PHILOX_NORMALS_ACROSS_BACKENDS)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_philox_noise_statistics_kernel(impl):
    n_samples, numel = 8, 32 * 32 * 3
    seeds = torch.arange(1000, 1000 + n_samples, dtype=torch.int64, device=DEVICE)
    a = randn_philox(seeds, 10, (numel,), impl=impl).double().cpu()
    b = randn_philox(seeds, 11, (numel,), impl=impl).double().cpu()
    n = a.numel()
    assert abs(a.mean().item()) < 6 / math.sqrt(n)
    assert abs(a.var().item() - 1) < 6 * math.sqrt(2 / n)
    # Fourth moment of a normal is 3: catches a uniform or a clipped generator.
    assert abs((a**4).mean().item() - 3) < 6 * math.sqrt(96 / n)

    def corr(u, v):
        u, v = u - u.mean(), v - v.mean()
        return (u * v).mean().item() / (u.std().item() * v.std().item())

    bound = 6 / math.sqrt(n)
    assert abs(corr(a[:, 1:].flatten(), a[:, :-1].flatten())) < bound  # neighbouring elements
    assert abs(corr(a.flatten(), b.flatten())) < bound  # consecutive steps
    assert abs(corr(a[1:].flatten(), a[:-1].flatten())) < bound  # consecutive seeds (samples)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_philox_noise_batch_position_invariant_kernel(impl):
    seeds = torch.tensor([11, 22, 33, 44, 55, 66, 77], dtype=torch.int64, device=DEVICE)
    full = randn_philox(seeds, 123, (2, 8, 8), impl=impl)
    for position in (0, 3, 6):
        alone = randn_philox(seeds[position : position + 1], 123, (2, 8, 8), impl=impl)
        assert torch.equal(alone[0], full[position])
    reordered = randn_philox(seeds.flip(0), 123, (2, 8, 8), impl=impl)
    assert torch.equal(reordered.flip(0), full)
    other = randn_philox(seeds, 123, (2, 8, 8), impl="torch" if impl == "triton" else "triton")
    assert_close(other, full, rtol=PHILOX_NORMALS_ACROSS_BACKENDS)


# ----------------------------------------------------------------------------- linear attention
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim_head", [32, 64])
@pytest.mark.parametrize("hw", [(28, 28), (14, 14), (7, 7), (5, 7)], ids=str)
def test_linear_attention_kernel_matches_twin(dtype, dim_head, hw):
    heads = 4
    qkv = (2 * torch.randn(2, 3 * heads * dim_head, *hw, device=DEVICE)).to(dtype)
    out = torch.full((2, heads * dim_head, *hw), float("nan"), dtype=dtype, device=DEVICE)
    attn_fused.linear_attention_triton(qkv, heads, dim_head**-0.5, out=out)
    assert out.dtype == dtype and not out.isnan().any()
    # float32 on a GPU: sums over all h·w positions in cuBLAS's order and the kernel's (the table's
    # long-contraction entry says why); the interpreter on CPU holds the float32 entry.
    rtol = FLOAT32_LONG_CONTRACTION if dtype == torch.float32 and DEVICE == "cuda" else tolerance(dtype)
    assert_close(out, attn_naive.linear_attention(qkv, heads, dim_head**-0.5), rtol=rtol)


def test_linear_attention_kernel_twin_is_the_reference_module():
    torch.manual_seed(0)
    module = LinearAttention(28).to(DEVICE)
    x = torch.randn(3, 28, 14, 14, device=DEVICE)
    with torch.no_grad():
        expected = module(x)
        for kernel in ("triton", "torch", "auto"):
            module.kernel = kernel
            assert_close(module(x), expected, torch.float32)


def test_unet_with_triton_linear_attention_kernel():
    torch.manual_seed(0)
    model = Unet(dim=16, channels=1, dim_mults=(1, 2)).to(DEVICE).eval()
    x = torch.randn(2, 1, 16, 16, device=DEVICE)
    t = torch.tensor([0, 150], device=DEVICE)
    with torch.no_grad():
        expected = model(x, t)
        set_linear_attention_kernel(model, "triton")
        got = model(x, t)
        set_linear_attention_kernel(model, None)
        again = model(x, t)
    # None restores the reference's own attention: bit-exact on CPU; cuDNN's float32 convolutions need not
    # repeat bit for bit on a GPU (seen on an H200 with TF32 off), so there the table's float32 entry.
    assert all(m.kernel is None for m in model.modules() if isinstance(m, LinearAttention))
    assert torch.equal(again, expected) if DEVICE == "cpu" else relative_error(again, expected) <= tolerance(torch.float32)
    assert_close(got, expected, rtol=FLOAT32_REASSOCIATED_NETWORK)


# ----------------------------------------------------------------------------- dispatch and registration
def test_kernel_dispatch_rules(monkeypatch):
    cpu = torch.zeros(1)
    assert resolve_impl("torch", cpu) == "torch"
    assert resolve_impl("auto", cpu) == ("triton" if cpu.is_cuda else "torch")
    monkeypatch.setenv("FASTDDPM_KERNELS", "torch")
    assert resolve_impl(None, cpu) == "torch"
    monkeypatch.setenv("FASTDDPM_KERNELS", "fast")
    with pytest.raises(ValueError, match="FASTDDPM_KERNELS must be one of"):
        resolve_impl(None, cpu)
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve_impl("cuda", cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="impl='triton' cannot run here"):
        resolve_impl("triton", cpu)


def test_kernel_ops_reject_bad_input(diffusion):
    x = torch.zeros(2, 1, 4, 4, device=DEVICE)
    table = diffusion.ddpm_step_table()
    t = torch.zeros(2, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="exactly one noise source"):
        ddpm_step(x, x, t, table)
    with pytest.raises(ValueError, match="table must be float32"):
        ddpm_step(x, x, t, table.double(), noise=x)
    with pytest.raises(ValueError, match="t must be int64/int32 step indices"):
        q_sample(x, t.float(), x, diffusion.sqrt_alphas_cumprod, diffusion.sqrt_one_minus_alphas_cumprod)
    with pytest.raises(ValueError, match="t must be int64/int32 step indices"):
        ddpm_step(x, x, t.bool(), table, noise=x)  # a bool t would act as a mask, not as indices
    with pytest.raises(ValueError, match="qkv must be"):
        linear_attention(torch.zeros(1, 10, 2, 2), heads=4, scale=1.0)


def test_kernel_ops_registered_for_torch_compile(diffusion):
    x = torch.randn(2, 1, 4, 4)
    t = torch.tensor([0, 5])
    table = GaussianDiffusion(T).ddpm_step_table()
    ops = torch.ops.fastddpm
    torch.library.opcheck(ops.ddpm_step, (x, x, t, table, x, None, "torch"))
    torch.library.opcheck(ops.ddpm_step, (x, x, t, table, None, torch.tensor([1, 2]), "torch"))
    torch.library.opcheck(ops.q_sample, (x, t, x, table[0], table[1], "torch"))
    torch.library.opcheck(ops.linear_attention, (torch.randn(1, 24, 3, 3), 2, 0.5, "torch"))
    rows = torch.randn(NUM_ROWS, table.shape[1])  # any (NUM_ROWS, S) float32 table
    torch.library.opcheck(ops.linear_step, (x, x, t, rows, t, x, None, "torch"))
    torch.library.opcheck(ops.multistep_update, (x, x, t, rows, x, None, None, "torch"))
    torch.library.opcheck(ops.multistep_update, (x, x, t, rows, x, x, None, "torch"))
    torch.library.opcheck(ops.multistep_update, (x, x, t, rows, x, x, x, "torch"))
    torch.library.opcheck(ops.randn_philox, (torch.tensor([1, 2]), torch.tensor([3, 3]), [1, 4, 4], "torch"))

    def step(x, eps, t, z):
        return ddpm_step(x, eps, t, table, noise=z, impl="torch") * 2

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    z = torch.randn_like(x)
    assert torch.equal(compiled(x, x, t, z), step(x, x, t, z))
    # The tracer sees the registered op (eager calls bypass it: see the next test).
    traced = []

    def record(gm, example_inputs):
        traced.extend(node.target for node in gm.graph.nodes)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(step, fullgraph=True, backend=record)(x, x, t, z)
    assert torch.ops.fastddpm.ddpm_step.default in traced


EAGER_OPS_SCRIPT = """
import sys, torch
from fastddpm import GaussianDiffusion
from fastddpm.kernels import ddpm_step, linear_attention, linear_step, multistep_update, q_sample, randn_philox
from fastddpm.kernels.update_rows import NUM_ROWS
device = sys.argv[1]
x, t = torch.randn(2, 1, 4, 4, device=device), torch.tensor([0, 5], device=device)
table, rows = GaussianDiffusion(20).ddpm_step_table().to(device), torch.randn(NUM_ROWS, 20, device=device)
seeds = torch.tensor([1, 2], device=device)
for impl in ("torch", "triton"):
    ddpm_step(x, x, t, table, seeds=seeds, impl=impl)
    q_sample(x, t, x, table[0], table[1], impl=impl)
    linear_attention(torch.randn(1, 96, 3, 3, device=device), 1, 0.5, impl=impl)
    linear_step(x, x, t, rows, t, noise=x, impl=impl)
    multistep_update(x, x, t, rows, [x, x], impl=impl)
    randn_philox(seeds, 3, (1, 4, 4), impl=impl)
print("torch._dynamo" in sys.modules)
"""


def test_eager_ops_do_not_import_the_compiler():
    # An eager call of a registered custom op imports torch._dynamo, sympy and ~900 modules on its first call
    # (2.6 s here, 3.6 s of a first CUDA sample on an H200 machine); eager calls run the implementation itself.
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    if DEVICE == "cpu":  # "triton" runs on CPU tensors through the interpreter (as conftest.py sets it)
        env["TRITON_INTERPRET"] = "1"
    done = subprocess.run([sys.executable, "-c", EAGER_OPS_SCRIPT, DEVICE], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


def _triton_op_calls(x):
    """Each float-input op called with impl="triton" on x (which may require grad)."""
    t = step_indices(x.shape[0])
    table = GaussianDiffusion(T).ddpm_step_table().to(DEVICE)
    rows = torch.randn(NUM_ROWS, T, device=DEVICE)
    seeds = torch.arange(x.shape[0], device=DEVICE)
    return {
        "q_sample": lambda: q_sample(x, t, torch.randn_like(x), table[0], table[1], impl="triton"),
        "ddpm_step": lambda: ddpm_step(x, x, t, table, seeds=seeds, impl="triton"),
        "linear_step": lambda: linear_step(x, x, t, rows, t, seeds=seeds, impl="triton"),
        "multistep_update": lambda: multistep_update(x, x, t, rows, [x, x], impl="triton")[0],
    }


@pytest.mark.parametrize("op", ["q_sample", "ddpm_step", "linear_step", "multistep_update"])
def test_triton_kernels_refuse_gradients_loudly(op):
    # The kernels have no backward: given inputs that require grad, the op runs through its registration,
    # whose missing autograd formula fails the backward instead of leaving the gradient silently empty.
    x = torch.randn(2, 1, 4, 4, device=DEVICE, requires_grad=True)
    with pytest.raises(RuntimeError, match="autograd"):
        _triton_op_calls(x)[op]().sum().backward()


def test_unet_with_triton_attention_refuses_a_backward_and_its_twin_gives_the_reference_gradient():
    # Inside a U-Net the other parameters would still get gradients: only the loud error shows the gap.
    torch.manual_seed(0)
    model = Unet(dim=16, channels=1, dim_mults=(1, 2)).to(DEVICE)
    set_linear_attention_kernel(model, "triton")
    x, t = torch.randn(2, 1, 16, 16, device=DEVICE), torch.tensor([0, 150], device=DEVICE)
    with pytest.raises(RuntimeError, match="autograd"):
        model(x, t).square().sum().backward()
    # The torch twin, called directly, is differentiable: the reference module's own gradient.
    torch.manual_seed(0)
    module = LinearAttention(28).to(DEVICE)
    inputs = torch.randn(2, 28, 5, 5, device=DEVICE)
    grads = []
    for kernel in (None, "torch"):
        module.kernel = kernel
        module.zero_grad()
        module(inputs).square().sum().backward()
        grads.append(module.to_qkv.weight.grad.clone())
    assert_close(grads[1], grads[0], torch.float32)
