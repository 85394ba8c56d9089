"""ONNX Runtime benchmark: the ORT sampler against torch, per step, on the seed's Fashion-MNIST U-Net.

Unet(dim=28, channels=1, dim_mults=(1, 2, 4)), batch 64, 1×28×28, the ancestral update over a short
schedule (``--steps``, default 10: the work per step does not depend on T). Configurations, alternated
round by round: the seed's reference loop; fastddpm.Sampler eager fp32; OrtSampler on the fp32 ε-model
export (one IO-bound run per step); the fp32 whole-sampler export (one ONNX Loop, one run per call); and
the fp16 ε-model export. Export time is reported apart (``warm-up``: export + session creation + first
call). Before timing, every fp32 ORT configuration is checked against the reference with the same noise
(on CUDA with TF32 off on both sides).

    python benchmarks/bench_onnx.py [--device cpu|cuda] [--batch 64] [--rounds 5] [--out FILE.csv]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import append_rows, environment  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[64])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/onnx.csv")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from fastddpm import GaussianDiffusion, OrtSampler, Sampler, Unet, export_onnx, export_onnx_sampler
    from fastddpm.ort_sampler import CPU, CUDA
    from fastddpm.tolerances import ONNX_RUNTIME_FLOAT32, assert_close

    device = torch.device(args.device)
    providers = [CPU]
    if device.type == "cuda":
        # fp32 means fp32 on both sides: TF32 convolutions (cuDNN's and ORT's default) would differ by ~1e-3.
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        providers = [(CUDA, {"use_tf32": 0}), CPU]
    torch.manual_seed(0)
    model = Unet(dim=28, channels=1, dim_mults=(1, 2, 4)).to(device).eval()
    diffusion = GaussianDiffusion(args.steps)
    env = {**environment(device), "onnxruntime": ort.__version__}
    folder = Path(tempfile.mkdtemp(prefix="fastddpm-bench-onnx-"))
    warmup, exports = {}, {}
    for name, precision in (("ort fp32", "fp32"), ("ort fp16", "fp16")):
        start = time.perf_counter()
        exports[name] = export_onnx(model, folder / f"{precision}.onnx", diffusion=diffusion, image_size=28,
                                    precision=precision)
        warmup[name] = time.perf_counter() - start
    start = time.perf_counter()
    exports["ort loop fp32"] = export_onnx_sampler(exports["ort fp32"], folder / "loop.onnx", method="ddpm")
    warmup["ort loop fp32"] = time.perf_counter() - start

    rows = []
    for batch in args.batch:
        shape = (batch, 1, 28, 28)
        eager = Sampler(model, diffusion, backend="eager")
        ort_samplers = {name: OrtSampler(path, providers=providers) for name, path in exports.items()}
        if any(s.device != device.type for s in ort_samplers.values()):
            raise SystemExit(f"ONNX Runtime cannot run on {device} here (providers {providers})")
        x_T, noise = (a.numpy() for a in eager.torch_noise(shape, seed=1))

        def reference():
            return diffusion.p_sample_loop(model, shape, progress=False)

        runs = {
            "reference": reference,
            "torch eager fp32": lambda: eager.sample(batch, 28, 1, seed=1, progress=False),
            **{name: (lambda s=s: s.sample(batch, x_T=x_T, noise=noise, progress=False))
               for name, s in ort_samplers.items()},
        }
        torch.manual_seed(1)
        expected = torch.from_numpy(reference()[-1]).clamp(-1, 1)
        for name, run in runs.items():
            start = time.perf_counter()
            out = run()
            first = time.perf_counter() - start
            warmup[name] = warmup.get(name, 0.0) + first
            if "fp16" not in name and name != "reference":  # equivalence before any number is reported
                assert_close(torch.as_tensor(out).cpu(), expected, rtol=ONNX_RUNTIME_FLOAT32)
        times = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - start) / args.steps)

        ref_step = statistics.median(times["reference"])
        print(f"\n{env['device']} · torch {env['torch']} · onnxruntime {env['onnxruntime']} · batch {batch} · "
              f"1×28×28 · {args.steps} steps × {args.rounds} rounds")
        print("| config | ms/step (median) | spread (min–max) | images/s at T=200 | speed-up | warm-up s |")
        print("|---|---|---|---|---|---|")
        for name, samples in times.items():
            med = statistics.median(samples)
            row = {**env, "bench": "onnx", "config": name, "batch": batch, "steps": args.steps,
                   "rounds": args.rounds, "ms_per_step": round(med * 1e3, 2),
                   "ms_min": round(min(samples) * 1e3, 2), "ms_max": round(max(samples) * 1e3, 2),
                   "images_per_s_T200": round(batch / (med * 200), 3), "speedup": round(ref_step / med, 2),
                   "warmup_s": round(warmup.get(name, 0.0), 1)}
            rows.append(row)
            print(f"| {name} | {row['ms_per_step']:.1f} | {row['ms_min']:.1f}–{row['ms_max']:.1f} | "
                  f"{row['images_per_s_T200']:.3f} | {row['speedup']:.2f}× | {row['warmup_s']:.1f} |")
    append_rows(args.out, rows)
    print(f"\nwrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
