"""Where a CPU forward of the U-Net spends its time: the top operators of torch eager (torch.profiler) and
of OpenVINO (its per-node performance counters, grouped by operator type), on a bench preset's model
(a benchmark, not a test).

    python benchmarks/profile_cpu_ops.py [--config fashion] [--batch 64] [--rounds 3] [--top 10] [--no-openvino] [--no-passes]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import torch

import fastddpm
from fastddpm.bench.settings import PRESETS


def eager_profile(model, x, t, rounds: int, top: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        model(x, t)  # warm-up: first-call allocations and kernel choices
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(rounds):
                model(x, t)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"\ntorch eager fp32: {total / rounds / 1e3:.1f} ms of operator self time per forward ({rounds} forwards)")
    print("| operator | ms per forward | share |")
    print("|---|---|---|")
    for event in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
        print(f"| {event.key} | {event.self_cpu_time_total / rounds / 1e3:.1f} | "
              f"{event.self_cpu_time_total / total:.0%} |")


def openvino_profile(model, diffusion, x, t, image_size: int, rounds: int, top: int, passes: bool = True) -> None:
    import onnx
    import openvino as ov

    from fastddpm.onnx.passes import split_projection_convs

    with tempfile.TemporaryDirectory() as folder:
        path = fastddpm.export_onnx(model, Path(folder) / "eps.onnx", diffusion=diffusion, image_size=image_size)
        core = ov.Core()
        model = onnx.load(str(path))
        if passes:  # what OpenVinoEpsModel compiles
            model = split_projection_convs(model)
        network = core.read_model(model.SerializeToString(), b"")
        network.reshape({"x": list(x.shape), "t": list(t.shape)})
        compiled = core.compile_model(network, "CPU", {"PERF_COUNT": "YES", "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    feeds = {"x": x.numpy(), "t": t.numpy()}
    request.infer(feeds)  # warm-up
    per_type: dict[str, float] = collections.defaultdict(float)
    started = time.perf_counter()
    for _ in range(rounds):
        request.infer(feeds)
        for info in request.profiling_info:
            per_type[f"{info.node_type} ({info.exec_type})"] += info.real_time.total_seconds()
    wall = (time.perf_counter() - started) / rounds
    total = sum(per_type.values())
    print(f"\nOpenVINO fp32{'' if passes else ' (the export as written, no graph passes)'}: {wall * 1e3:.1f} ms wall per forward, {total / rounds * 1e3:.1f} ms in nodes "
          f"({rounds} forwards)")
    print("| node type (kernel) | ms per forward | share |")
    print("|---|---|---|")
    for name, seconds in sorted(per_type.items(), key=lambda item: item[1], reverse=True)[:top]:
        print(f"| {name} | {seconds / rounds * 1e3:.1f} | {seconds / total:.0%} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="fashion", choices=[k for k, p in PRESETS.items() if p.unet])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--no-openvino", action="store_true")
    parser.add_argument("--no-passes", action="store_true",
                        help="profile the export as written, not as OpenVinoEpsModel compiles it (its graph passes)")
    args = parser.parse_args(argv)
    preset = PRESETS[args.config]
    torch.manual_seed(0)
    model = fastddpm.Unet(**preset.unet).eval()
    diffusion = fastddpm.GaussianDiffusion(preset.timesteps)
    x = torch.randn(args.batch, preset.channels, preset.image_size, preset.image_size)
    t = torch.full((args.batch,), preset.timesteps // 2, dtype=torch.int64)
    print(f"{preset.description}, batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    eager_profile(model, x, t, args.rounds, args.top)
    if not args.no_openvino:
        openvino_profile(model, diffusion, x, t, preset.image_size, args.rounds, args.top, not args.no_passes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
