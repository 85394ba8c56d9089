"""ONNX export and the ONNX Runtime sampler: structure, per-forward agreement with torch at several batch
sizes and image sizes from one export, fp16, metadata round-trip, trajectories against fastddpm.Sampler
with the same noise, the whole-sampler Loop export against the step-wise sampler, clear errors, the CLI."""

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from fastddpm import GaussianDiffusion, OnnxModelError, OrtSampler, Sampler, UnetConfig, save  # noqa: E402
from fastddpm.onnx import OPSET, export_onnx, export_onnx_sampler, read_onnx  # noqa: E402
from fastddpm.onnx import CPU, default_providers  # noqa: E402
from fastddpm.tolerances import FLOAT16_NETWORK, ONNX_RUNTIME_FLOAT32, assert_close, relative_error  # noqa: E402

from test_cli import assert_one_line_error, run_main  # noqa: E402

IMAGE = 8
T = 20


@pytest.fixture(scope="module")
def model(small_unet):
    return small_unet


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(T, "linear")


@pytest.fixture(scope="module")
def exported(small_eps_export):
    return small_eps_export  # small_unet, T=20 linear, IMAGE=8: this module's model and diffusion


def _session(path):
    return ort.InferenceSession(str(path), providers=[CPU])


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_export_is_valid_onnx_with_dynamic_batch_and_size(exported):
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17 and OPSET >= 17
    (x, t), (eps,) = proto.graph.input, proto.graph.output
    assert (x.name, t.name, eps.name) == ("x", "t", "eps")
    assert x.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert t.type.tensor_type.elem_type == onnx.TensorProto.INT64
    batch, channels, height, width = _dims(x)
    assert isinstance(batch, str) and channels == 1 and isinstance(height, str) and isinstance(width, str)
    assert _dims(t) == [batch]


@pytest.mark.parametrize("batch,size", [(1, IMAGE), (3, IMAGE), (8, IMAGE), (2, 2 * IMAGE), (3, 6)])
def test_forward_matches_torch(exported, model, batch, size):
    session = _session(exported)
    g = torch.Generator().manual_seed(batch * 100 + size)
    x = torch.randn(batch, 1, size, size, generator=g)
    t = torch.randint(0, T, (batch,), generator=g)
    (eps,) = session.run(None, {"x": x.numpy(), "t": t.numpy()})
    with torch.no_grad():
        expected = model(x, t)
    assert_close(torch.from_numpy(eps), expected, rtol=ONNX_RUNTIME_FLOAT32)


def test_metadata_round_trips(exported, model, diffusion):
    info = read_onnx(exported)
    assert info.kind == "eps-model" and info.precision == "fp32"
    assert info.diffusion == diffusion.config
    assert info.image_size == (IMAGE, IMAGE) and info.channels == 1
    assert info.size_divisor == model.size_divisor and info.dynamic_size
    assert np.array_equal(np.asarray(info.meta["betas"]), diffusion.betas.double().numpy())
    assert np.array_equal(np.asarray(info.meta["alphas_cumprod"]), diffusion.alphas_cumprod.double().numpy())
    assert UnetConfig.from_dict(info.meta["model_config"]) == model.config


class TinyEps(nn.Module):
    """Not a fastddpm Unet: any ε-model called as model(x, t) exports."""

    def __init__(self, channels=2):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.time = nn.Linear(1, channels)

    def forward(self, x, t):
        return self.conv(x) * self.time(t[:, None].float() / 100)[:, :, None, None]


def test_any_eps_model_exports_with_a_custom_schedule(tmp_path):
    torch.manual_seed(1)
    model = TinyEps().eval()
    betas = torch.linspace(1e-3, 0.05, 12)  # a schedule given as numbers, not a name
    diffusion = GaussianDiffusion(beta_schedule=betas)
    with pytest.raises(ValueError, match="channels"):
        export_onnx(model, tmp_path / "m.onnx", diffusion=diffusion, image_size=(6, 10))
    path = export_onnx(model, tmp_path / "m.onnx", diffusion=diffusion, image_size=(6, 10), channels=2)
    info = read_onnx(path)
    assert info.image_size == (6, 10) and info.channels == 2 and info.size_divisor == 1
    assert info.diffusion == diffusion.config and info.meta["model_config"] is None
    x, t = torch.randn(3, 2, 5, 7), torch.tensor([0, 4, 11])  # another batch and size than exported
    (eps,) = _session(path).run(None, {"x": x.numpy(), "t": t.numpy()})
    with torch.no_grad():
        assert_close(torch.from_numpy(eps), model(x, t), rtol=ONNX_RUNTIME_FLOAT32)
    samples = OrtSampler(path, method="ddim", steps=4).sample(2, (6, 10), seed=0, progress=False)
    assert samples.shape == (2, 2, 6, 10) and np.isfinite(samples).all()


def test_fp16_export(model, diffusion, tmp_path):
    path = export_onnx(model, tmp_path / "half.onnx", diffusion=diffusion, image_size=IMAGE, precision="fp16")
    proto = onnx.load(str(path))
    weights = [i for i in proto.graph.initializer if i.name.endswith(".weight")]  # the parameters; not constants
    assert weights and all(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)
    assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [onnx.TensorProto.FLOAT, onnx.TensorProto.INT64]
    assert read_onnx(path).precision == "fp16"
    x, t = torch.randn(4, 1, IMAGE, IMAGE), torch.tensor([0, 5, 13, 19])
    (eps,) = _session(path).run(None, {"x": x.numpy(), "t": t.numpy()})
    assert eps.dtype == np.float32
    with torch.no_grad():
        expected = model(x, t)
    error = relative_error(torch.from_numpy(eps), expected)
    assert 0 < error <= FLOAT16_NETWORK  # > 0: it really ran in half precision


SAMPLERS = [
    dict(method="ddpm"),  # the full ancestral chain: the reference's update
    dict(method="ddpm", steps=7),  # respaced
    dict(method="ddim", steps=5, eta=0.5),
    dict(method="ddim", steps=6, spacing="trailing"),
    dict(method="dpmsolver++", steps=6, spacing="logsnr"),
    dict(method="dpmsolver++", steps=6, spacing="logsnr", order=3),  # reads the x̂_0 of two steps back too
    dict(method="dpmsolver++", timesteps=[19, 14, 9, 4, 2], order=3),  # explicit (e.g. fitted) timesteps
    dict(method="unipc", steps=6, spacing="logsnr"),  # predictor-corrector, order 2: two histories
    dict(method="unipc", steps=7, spacing="trailing", order=3),  # three histories
]


@pytest.mark.parametrize("settings", SAMPLERS, ids=lambda s: "-".join(map(str, s.values())))
def test_trajectory_matches_torch_sampler(exported, model, diffusion, settings):
    reference = Sampler(model, diffusion, backend="eager", **settings)
    shape = (3, 1, IMAGE, IMAGE)
    x_T, noise = reference.torch_noise(shape, seed=7)  # sample(seed=7)'s draws, or the two would differ
    expected = reference.sample(3, IMAGE, 1, seed=7, progress=False, clip=False)
    sampler = OrtSampler(exported, **settings)
    assert sampler.num_steps == reference.num_steps
    given = x_T.numpy().copy(), noise.numpy().copy()
    out = sampler.sample(3, x_T=given[0], noise=given[1], progress=False, clip=False)
    assert_close(torch.from_numpy(out), expected, rtol=ONNX_RUNTIME_FLOAT32)
    # The caller's arrays are inputs only (an OrtValue on the CPU wraps numpy memory: the loop must not).
    assert np.array_equal(given[0], x_T.numpy()) and np.array_equal(given[1], noise.numpy())


@pytest.mark.parametrize("settings", SAMPLERS[1:], ids=lambda s: "-".join(map(str, s.values())))
def test_whole_sampler_loop_matches_step_wise(exported, tmp_path, settings):
    path = export_onnx_sampler(exported, tmp_path / "loop.onnx", **settings)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [n.op_type for n in proto.graph.node].count("Loop") == 1
    info = read_onnx(path)
    stepwise = OrtSampler(exported, **settings)
    assert info.kind == "sampler" and info.sampler["timesteps"] == list(stepwise.plan.timesteps)
    stochastic = any(stepwise.plan.noisy)
    assert ("noise" in [i.name for i in proto.graph.input]) == stochastic
    loop = OrtSampler(path)
    # Same seed: the same draws in the same order, so the same images.
    a, b = loop.sample(4, seed=11), stepwise.sample(4, seed=11, progress=False)
    assert a.shape == (4, 1, IMAGE, IMAGE) and not np.array_equal(a, loop.sample(4, seed=12))
    assert_close(torch.from_numpy(a), torch.from_numpy(b), rtol=ONNX_RUNTIME_FLOAT32)
    with pytest.raises(ValueError, match="fixes its sampler"):
        OrtSampler(path, steps=stepwise.num_steps + 1)
    OrtSampler(path, timesteps=list(stepwise.plan.timesteps))  # the file's own timesteps, however it named them


def test_io_binding_sampler_makes_no_copies_back_to_host(exported, monkeypatch):
    """The step loop reads its state back only once, at the end."""
    reads = []
    original = ort.OrtValue.numpy
    monkeypatch.setattr(ort.OrtValue, "numpy", lambda self: reads.append(1) or original(self))
    OrtSampler(exported, method="ddim", steps=5).sample(2, seed=0, progress=False)
    assert len(reads) == 1


def test_results_own_their_memory(exported):
    """An OrtValue's numpy() is a view of memory freed with the OrtValue: results must be copies."""
    sampler = OrtSampler(exported, method="ddim", steps=3)
    first = sampler.sample(2, seed=0, progress=False, clip=False)
    kept = first.copy()
    for seed in range(1, 4):  # reuse the freed memory
        sampler.sample(2, seed=seed, progress=False, clip=False)
    assert first.flags.owndata and np.array_equal(first, kept)


def test_cpu_machine_asks_for_cpu_only_and_stays_quiet(exported, capfd):
    if torch.cuda.is_available():
        pytest.skip("checks the provider choice on a machine without CUDA")
    assert default_providers() == [CPU]
    sampler = OrtSampler(exported, method="ddim", steps=3)
    sampler.sample(1, seed=0, progress=False)
    assert sampler.device == "cpu" and sampler.session.get_providers() == [CPU]
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_bad_files_give_clear_errors(exported, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(exported.read_bytes()[:5000])
    with pytest.raises(OnnxModelError, match=r"corrupt\.onnx: not an ONNX model"):
        OrtSampler(corrupt)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(OnnxModelError, match=r"garbage\.onnx: not an ONNX model"):
        read_onnx(garbage)
    with pytest.raises(OnnxModelError, match="no such file"):
        read_onnx(tmp_path / "missing.onnx")
    # A valid ONNX model that fastddpm did not write.
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "foreign",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    with pytest.raises(OnnxModelError, match=r"foreign\.onnx: an ONNX model, but not a fastddpm export"):
        OrtSampler(foreign)


def _with_metadata(source, target, change):
    from fastddpm.onnx import METADATA_KEY

    proto = onnx.load(str(source))
    entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    meta = json.loads(entry.value)
    change(meta)
    entry.value = json.dumps(meta)
    onnx.save(proto, str(target))
    return target


def test_inconsistent_metadata_is_rejected(exported, tmp_path):
    loop = export_onnx_sampler(exported, tmp_path / "loop.onnx", method="ddim", steps=4, eta=1.0)
    read_onnx(loop)  # as written: consistent
    cases = {
        "noisy": (lambda m: m["sampler"]["noisy"].pop(), "4 timesteps and 3 noise flags"),
        "sampler": (lambda m: m.pop("sampler"), "incomplete fastddpm metadata"),
        "channels": (lambda m: m.update(channels=3), "the graph takes 1 channels; its metadata says 3"),
        "divisor": (lambda m: m.update(size_divisor=0), "each must be positive"),
        "betas": (lambda m: m["betas"].__setitem__(0, 0.5), "betas do not match"),
        "deterministic": (lambda m: m["sampler"].update(noisy=[False] * 4), "should have inputs ['x_T']"),
    }
    for name, (change, message) in cases.items():
        with pytest.raises(OnnxModelError, match=re.escape(message)):
            read_onnx(_with_metadata(loop, tmp_path / f"{name}.onnx", change))


def test_sample_arguments_are_checked(exported):
    sampler = OrtSampler(exported, method="ddim", steps=3)
    with pytest.raises(ValueError, match="not divisible by 2"):
        sampler.sample(1, 7, progress=False)
    with pytest.raises(ValueError, match=r"noise must have shape \(3, 2, 1, 8, 8\)"):
        sampler.sample(2, noise=np.zeros((2, 2, 1, 8, 8)), progress=False)
    with pytest.raises(ValueError, match="eta applies"):
        OrtSampler(exported, method="ddpm", eta=0.5)


def test_cli_export_and_sample(model, diffusion, tmp_path, capsys):
    checkpoint = tmp_path / "tiny.safetensors"
    save(checkpoint, model, diffusion, image_size=IMAGE)
    result = run_main(capsys, "export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "eps.onnx"))
    assert result.returncode == 0, result.stderr
    result = run_main(capsys, "sample", "--onnx", str(tmp_path / "eps.onnx"), "--method", "ddim", "--steps", "4",
                     "--num", "5", "--batch-size", "3", "--out", str(tmp_path / "s.npz"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "s.npz")["arr_0"].shape == (5, IMAGE, IMAGE, 1)
    # The Loop around the ε-model export just written (no second torch export).
    result = run_main(capsys, "export", "--onnx", str(tmp_path / "eps.onnx"), "--out", str(tmp_path / "loop.onnx"),
                      "--sampler", "--method", "dpmsolver++", "--steps", "5", "--order", "3")
    assert result.returncode == 0, result.stderr
    for args, message in ((["--checkpoint", str(checkpoint)], "--checkpoint does not apply to --onnx"),
                          (["--precision", "fp16"], "--precision does not apply to --onnx"),
                          (["--onnx", str(tmp_path / "loop.onnx")], "a 'sampler' export; --sampler needs an ε-model"),
                          (["--onnx", str(tmp_path / "x.onnx")], "is the --onnx file itself")):
        onnx_flag = [] if "--onnx" in args else ["--onnx", str(tmp_path / "eps.onnx")]
        assert_one_line_error(run_main(capsys, "export", *onnx_flag, *args, "--sampler", "--out",
                                       str(tmp_path / "x.onnx")), message)
    assert_one_line_error(run_main(capsys, "export", "--onnx", str(tmp_path / "eps.onnx"), "--out",
                                   str(tmp_path / "x.onnx")), "add --sampler")
    assert not (tmp_path / "x.onnx").exists()
    assert read_onnx(tmp_path / "loop.onnx").sampler["steps"] == 5
    assert read_onnx(tmp_path / "loop.onnx").sampler["order"] == 3
    result = run_main(capsys, "sample", "--backend", "onnxruntime", "--onnx", str(tmp_path / "loop.onnx"), "--num", "2",
                     "--out", str(tmp_path / "l.png"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "l.png").is_file()
    # Errors: one line, exit 2, nothing written.
    assert_one_line_error(run_main(capsys, "sample", "--onnx", str(tmp_path / "loop.onnx"), "--steps", "9",
                                  "--out", str(tmp_path / "x.png")), "fixes its sampler")
    assert_one_line_error(run_main(capsys, "sample", "--onnx", str(tmp_path / "loop.onnx"), "--order", "2",
                                  "--out", str(tmp_path / "x.png")), "order=2 (the file's is 3)")
    assert_one_line_error(run_main(capsys, "sample", "--onnx", str(checkpoint), "--out", str(tmp_path / "x.png")),
                          "not an ONNX model")
    assert_one_line_error(run_main(capsys, "sample", "--onnx", str(tmp_path / "eps.onnx"), "--backend", "eager",
                                  "--out", str(tmp_path / "x.png")), "does not go with --backend eager")
    assert_one_line_error(run_main(capsys, "sample", "--onnx", str(tmp_path / "eps.onnx"), "--precision", "bf16",
                                  "--out", str(tmp_path / "x.png")), "--precision does not apply")
    assert_one_line_error(run_main(capsys, "export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.onnx"),
                                  "--steps", "3"), "--sampler export")
    # A timestep fit goes with an ε-model export of a model of its own length, never with a Loop export.
    from fastddpm import FittedTimesteps

    fit = dict(method="dpmsolver++", order=2, start="logsnr", teacher_steps=10, start_error=1.0, error=0.5,
               heldout_start_error=1.0, heldout_error=0.6, evaluations=3, seconds=1.0)
    (tmp_path / "fit.json").write_text(FittedTimesteps(timesteps=(19, 9, 2), num_train_steps=T, **fit).to_json())
    (tmp_path / "far.json").write_text(FittedTimesteps(timesteps=(19, 9, 2), num_train_steps=50, **fit).to_json())
    result = run_main(capsys, "sample", "--onnx", str(tmp_path / "eps.onnx"), "--timesteps", str(tmp_path / "fit.json"),
                     "--num", "2", "--out", str(tmp_path / "fit.npz"), "--no-progress")
    assert result.returncode == 0, result.stderr
    # The fit's timesteps are the ones sampled (the CLI draws from numpy's generator seeded with --seed 0).
    from fastddpm.io.files import to_uint8_images

    expected = OrtSampler(tmp_path / "eps.onnx", method="dpmsolver++", spacing=(t for t in (19, 9, 2))).sample(
        2, seed=np.random.default_rng(0), progress=False)
    assert np.array_equal(np.load(tmp_path / "fit.npz")["arr_0"], to_uint8_images(torch.from_numpy(expected)))
    assert_one_line_error(run_main(capsys, "sample", "--onnx", str(tmp_path / "loop.onnx"), "--timesteps",
                                  str(tmp_path / "fit.json"), "--out", str(tmp_path / "x.png")), "whole-sampler export")
    assert_one_line_error(run_main(capsys, "sample", "--onnx", str(tmp_path / "eps.onnx"), "--timesteps",
                                  str(tmp_path / "far.json"), "--out", str(tmp_path / "x.png")),
                          "fitted for a model of 50 timesteps")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.onnx").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_execution_provider_matches_cpu(exported):
    settings = dict(method="ddim", steps=5, eta=0.5)
    # TF32 off: the comparison is of the IO-bound loop on the device, not of TF32 convolutions.
    cuda = OrtSampler(exported, providers=[("CUDAExecutionProvider", {"use_tf32": 0}), CPU], **settings)
    if cuda.device != "cuda":
        pytest.skip("ONNX Runtime's CUDA execution provider does not load on this machine")
    cpu = OrtSampler(exported, providers=[CPU], **settings)
    a, b = cuda.sample(4, seed=0, progress=False), cpu.sample(4, seed=0, progress=False)
    assert_close(torch.from_numpy(a), torch.from_numpy(b), rtol=ONNX_RUNTIME_FLOAT32)
