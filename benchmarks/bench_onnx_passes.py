"""The ε-model export as written against ``fastddpm.onnx.passes.split_projection_convs``, in ONNX Runtime
and in OpenVINO (a benchmark, not a test): the Fashion U-Net at batch 64, each configuration's error against
torch first, then 5 alternated rounds of 3 forwards; median and min–max ms per forward.

    python benchmarks/bench_onnx_passes.py
"""
import statistics, tempfile, time
from pathlib import Path
import numpy as np, torch, fastddpm, onnx, onnxruntime as ort, openvino as ov
from fastddpm.bench.settings import PRESETS
from fastddpm.onnx.passes import split_projection_convs
preset = PRESETS["fashion"]
torch.manual_seed(0)
model = fastddpm.Unet(**preset.unet).eval()
folder = Path(tempfile.mkdtemp())
path = fastddpm.export_onnx(model, folder / "eps.onnx", diffusion=fastddpm.GaussianDiffusion(preset.timesteps), image_size=28)
plain = onnx.load(str(path)); split = split_projection_convs(plain)
x = np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32); t = np.full((64,), 100, np.int64)
feeds = {"x": x, "t": t}
core = ov.Core()
def ov_req(m):
    net = core.read_model(m.SerializeToString(), b""); net.reshape({"x": [64, 1, 28, 28], "t": [64]})
    r = core.compile_model(net, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
    return lambda: r.infer(feeds)
def ort_sess(m):
    so = ort.SessionOptions(); so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda: s.run(None, feeds)
runs = {"ort as written": ort_sess(plain), "ort split convs": ort_sess(split), "openvino as written": ov_req(plain), "openvino split convs": ov_req(split)}
with torch.no_grad():
    expected = model(torch.from_numpy(x), torch.from_numpy(t)).numpy()
for name, fn in runs.items():
    out = fn(); out = out[0] if isinstance(out, list) else next(iter(out.values()))
    print(name, "max rel err vs torch", float(np.abs(out - expected).max() / np.abs(expected).max()))
    fn()
times = {k: [] for k in runs}
for _ in range(5):
    for name, fn in runs.items():
        s = time.perf_counter()
        for _ in range(3): fn()
        times[name].append((time.perf_counter() - s) / 3 * 1e3)
print("| configuration | ms per forward (median) | min–max |")
print("|---|---|---|")
for name, v in times.items():
    print(f"| {name} | {statistics.median(v):.0f} | {min(v):.0f}–{max(v):.0f} |")
