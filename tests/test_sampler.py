"""The fast sampler against the reference loop: same noise → same trajectory; philox batch invariance;
no host syncs inside the loop; memory independent of the number of steps."""

import weakref

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastddpm import GaussianDiffusion, Sampler, Unet
from fastddpm.compiler import CompileConfig
from fastddpm.tolerances import LOW_PRECISION_TRAJECTORY, PHILOX_NORMALS_ACROSS_BACKENDS, assert_close, relative_error

T = 200


@pytest.fixture(scope="module")
def model(small_unet):
    return small_unet


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(T)


def reference_trajectory(model, diffusion, shape, seed):
    torch.manual_seed(seed)
    return np.stack(diffusion.p_sample_loop(model, shape, progress=False))


def test_eager_fp32_full_trajectory_matches_reference(model, diffusion):
    expected = reference_trajectory(model, diffusion, (3, 1, 8, 8), seed=5)
    torch.manual_seed(5)
    final, trajectory = Sampler(model, diffusion, backend="eager").sample(
        3, 8, 1, return_trajectory=True, progress=False, clip=False
    )
    assert trajectory.shape == (T, 3, 1, 8, 8)
    assert_close(trajectory, torch.from_numpy(expected), rtol=1e-5)  # the trajectory contract (tolerances.py)
    assert_close(final, torch.from_numpy(expected[-1]), torch.float32)


@pytest.mark.slow
def test_compile_fp32_full_trajectory_matches_reference(model, diffusion):
    expected = reference_trajectory(model, diffusion, (2, 1, 8, 8), seed=6)
    sampler = Sampler(model, diffusion, backend="compile")
    torch.manual_seed(6)
    final, trajectory = sampler.sample(2, 8, 1, return_trajectory=True, progress=False, clip=False)
    assert_close(trajectory, torch.from_numpy(expected), rtol=1e-5)
    assert sampler.stats.warmup_seconds > 0  # compile time reported apart from the loop
    # The compiled step is cached per (batch, shape, dtype): a second call does not recompile.
    torch.manual_seed(6)
    again = sampler.sample(2, 8, 1, progress=False, clip=False)
    assert torch.equal(again, final)
    assert len(sampler._compiled) == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_model_keeps_state_fp32(model, diffusion, dtype):
    expected = reference_trajectory(model, diffusion, (2, 1, 8, 8), seed=7)[-1]
    torch.manual_seed(7)
    out = Sampler(model, diffusion, dtype=dtype).sample(2, 8, 1, progress=False, clip=False)
    assert out.dtype == torch.float32
    error = relative_error(out, torch.from_numpy(expected))
    assert 0 < error <= LOW_PRECISION_TRAJECTORY[dtype]  # > 0: the model really ran in low precision


def test_seed_and_generator_arguments(model, diffusion):
    sampler = Sampler(model, diffusion)
    a = sampler.sample(2, 8, 1, seed=np.int64(3), progress=False)
    b = sampler.sample(2, 8, 1, generator=torch.Generator().manual_seed(3), progress=False)
    assert torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1  # clipped to the data range by default
    assert not torch.equal(a, sampler.sample(2, 8, 1, seed=4, progress=False))


def test_philox_sample_depends_only_on_its_seed(model, diffusion):
    # The noise is bit-identical at any batch size and position; the U-Net's float32 arithmetic is not
    # (CPU GEMM/conv blocking depends on the batch), so images agree to float32 rounding over 20 ancestral
    # steps (each draws noise, as the 200-step chain's do).
    sampler = Sampler(model, diffusion, method="ddpm", steps=20)
    seven = sampler.sample(7, 8, 1, noise="philox", seed=100, progress=False, clip=False)
    big = sampler.sample(16, 8, 1, noise="philox", seed=100, progress=False, clip=False)
    assert_close(seven, big[:7], rtol=1e-5)
    for position in (0, 3, 6):
        alone = sampler.sample(1, 8, 1, noise="philox", seed=100 + position, progress=False, clip=False)
        assert_close(alone[0], seven[position], rtol=1e-5)
    explicit = sampler.sample(3, 8, 1, noise="philox", seed=[106, 100, 103], progress=False, clip=False)
    assert_close(explicit, seven[[6, 0, 3]], rtol=1e-5)
    other = sampler.sample(1, 8, 1, noise="philox", seed=99, progress=False, clip=False)
    assert relative_error(other[0], seven[0]) > 0.1  # a different seed is a different image


@pytest.mark.slow
def test_philox_same_images_on_compile_backend(model, diffusion):
    eager = Sampler(model, diffusion).sample(2, 8, 1, noise="philox", seed=42, progress=False)
    compiled = Sampler(model, diffusion, backend="compile").sample(2, 8, 1, noise="philox", seed=42, progress=False)
    assert_close(compiled, eager, rtol=PHILOX_NORMALS_ACROSS_BACKENDS)


def test_trajectory_stride(model, diffusion):
    expected = reference_trajectory(model, diffusion, (1, 1, 8, 8), seed=9)
    torch.manual_seed(9)
    _, trajectory = Sampler(model, diffusion).sample(1, 8, 1, return_trajectory=True, trajectory_stride=50,
                                                     progress=False, clip=False)
    assert trajectory.shape == (4, 1, 1, 8, 8) and trajectory.device.type == "cpu"
    assert_close(trajectory, torch.from_numpy(expected[::50]), rtol=1e-5)


class SyncCounter(TorchDispatchMode):
    """Counts operations that force the host to wait for a tensor's value or copy it to the host."""

    SYNC_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
                torch.ops.aten.item.default}

    def __init__(self):
        super().__init__()
        self.syncs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.SYNC_OPS:
            self.syncs.append(str(func))
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            src = args[0] if func is torch.ops.aten._to_copy.default else args[1]
            target = kwargs.get("device") if func is torch.ops.aten._to_copy.default else args[0].device
            if target is not None and torch.device(target) != src.device:
                self.syncs.append(f"{func} {src.device}->{target}")
        return func(*args, **kwargs)


def test_sync_counter_detects_a_sync():
    with SyncCounter() as counter:
        x = torch.ones(3)
        if (x > 0).all():  # a Python branch on a tensor value
            x.sum().item()
    assert len(counter.syncs) == 2


@pytest.mark.parametrize("noise", ["torch", "philox"])
def test_loop_makes_no_host_syncs(model, diffusion, noise):
    sampler = Sampler(model, diffusion)
    with SyncCounter() as counter:
        sampler.sample(2, 8, 1, seed=1, noise=noise, progress=False, check_finite=False)
    assert counter.syncs == []
    # The non-finite check reads one number back, once, after the loop.
    with SyncCounter() as counter:
        sampler.sample(2, 8, 1, seed=1, noise=noise, progress=False)
    assert counter.syncs == [str(torch.ops.aten._local_scalar_dense.default)]


class LiveTensors(TorchDispatchMode):
    """Tracks every tensor an operation creates, weakly: ``alive()`` counts those still referenced."""

    def __init__(self):
        super().__init__()
        self.refs = {}  # id -> weakref (tensors are not hashable by value)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor):
                key = id(value)
                self.refs[key] = weakref.ref(value, lambda _, key=key: self.refs.pop(key, None))
        return out

    def alive(self):
        return len(self.refs)


def test_memory_does_not_grow_with_steps(model, diffusion):
    counts = []
    with LiveTensors() as live:
        Sampler(model, diffusion).sample(2, 8, 1, seed=1, progress=False, callback=lambda k, t, x: counts.append(live.alive()))
    assert len(counts) == T
    assert max(counts[10:]) <= counts[10] + 2  # bounded: nothing accumulates per step


def test_any_callable_model(diffusion):
    calls = []

    def model(x, t):
        calls.append(t.shape)
        return torch.zeros_like(x)

    out = Sampler(model, diffusion).sample(4, (4, 6), 2, seed=0, progress=False)
    assert out.shape == (4, 2, 4, 6) and len(calls) == T and calls[0] == (4,)


def test_bad_arguments(model, diffusion):
    with pytest.raises(RuntimeError, match="'cudagraph' needs a CUDA device"):
        Sampler(model, diffusion, backend="cudagraph")
    with pytest.raises(ValueError, match="unknown backend"):
        Sampler(model, diffusion, backend="jit")
    with pytest.raises(ValueError, match="unknown method"):
        Sampler(model, diffusion, method="euler")
    with pytest.raises(ValueError, match=r"steps must lie in \[1, 200\]"):
        Sampler(model, diffusion, steps=500)
    with pytest.raises(ValueError, match="eta applies to method='ddim'"):
        Sampler(model, diffusion, eta=0.5)
    with pytest.raises(ValueError, match="unknown spacing"):
        Sampler(model, diffusion, method="ddim", steps=10, spacing="uniform")
    with pytest.raises(ValueError, match="dtype must be one of"):
        Sampler(model, diffusion, dtype=torch.float64)
    sampler = Sampler(model, diffusion)
    with pytest.raises(ValueError, match="unknown noise"):
        sampler.sample(1, 8, 1, noise="white")
    with pytest.raises(ValueError, match="per-sample seeds must be 2 integers"):
        sampler.sample(2, 8, 1, noise="philox", seed=[1, 2, 3])
    with pytest.raises(ValueError, match=r"exceeds 2\*\*63 - 1"):
        sampler.sample(2, 8, 1, noise="philox", seed=2**63 - 1)
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*63 - 1\]"):
        sampler.sample(2, 8, 1, seed=-1)
    with pytest.raises(ValueError, match="one integer seed"):
        sampler.sample(2, 8, 1, seed=[1, 2])
    assert CompileConfig.from_json(CompileConfig(freezing=False).to_json()) == CompileConfig(freezing=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("noise", ["torch", "philox"])
def test_cudagraph_matches_eager_on_cuda(noise):
    torch.manual_seed(0)
    model = Unet(dim=16, channels=1, dim_mults=(1, 2)).cuda().eval()
    diffusion = GaussianDiffusion(50)
    eager = Sampler(model, diffusion, backend="eager")
    graph = Sampler(model, diffusion, backend="cudagraph")
    a = eager.sample(4, 16, 1, seed=11, noise=noise, progress=False) if noise == "philox" else None
    if noise == "torch":
        torch.manual_seed(11)
        a = eager.sample(4, 16, 1, progress=False)
        torch.manual_seed(11)
        b = graph.sample(4, 16, 1, progress=False)
    else:
        b = graph.sample(4, 16, 1, seed=11, noise=noise, progress=False)
    assert_close(b, a, rtol=1e-5)
    b2 = graph.sample(4, 16, 1, seed=12, noise="philox", progress=False) if noise == "philox" else None
    if b2 is not None:  # replay with new seeds gives new images
        assert not torch.equal(b2, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method,steps,order", [("ddim", 20, None), ("dpmsolver++", 20, 2), ("dpmsolver++", 20, 3),
                                                ("unipc", 20, 3), ("ddpm", 25, None)])
def test_few_step_methods_on_cudagraph_match_eager(method, steps, order):
    torch.manual_seed(0)
    model = Unet(dim=16, channels=1, dim_mults=(1, 2)).cuda().eval()
    diffusion = GaussianDiffusion(200)
    kwargs = dict(method=method, steps=steps, spacing="logsnr", order=order)
    a = Sampler(model, diffusion, backend="eager", **kwargs).sample(4, 16, 1, seed=5, noise="philox", progress=False)
    b = Sampler(model, diffusion, backend="cudagraph", **kwargs).sample(4, 16, 1, seed=5, noise="philox", progress=False)
    assert_close(b, a, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_eager_cuda_with_triton_update_matches_reference():
    torch.manual_seed(0)
    model = Unet(dim=16, channels=1, dim_mults=(1, 2)).cuda().eval()
    diffusion = GaussianDiffusion(50)
    torch.manual_seed(3)
    expected = diffusion.p_sample_loop(model, (4, 1, 16, 16), return_all_timesteps=False, progress=False)
    torch.manual_seed(3)
    got = Sampler(model, diffusion, backend="eager", kernels="triton").sample(4, 16, 1, progress=False, clip=False)
    assert_close(got, expected, rtol=1e-5)
