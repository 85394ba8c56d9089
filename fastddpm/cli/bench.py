"""``fastddpm bench``: the backend × precision matrix (``fastddpm.bench``) from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bench import PRESETS, BenchSettings, run_bench
from ..solvers import METHODS, SPACINGS
from .common import CLIError, device, one_line, positive_int, seed


def register(sub) -> None:
    parser = sub.add_parser(
        "bench",
        help="benchmark backends and precisions against the reference loop",
        description="Benchmark sampler backends and precisions side by side against the reference loop.\n\n"
        "Each configuration is first checked against its oracle with the same noise, then timed (alternated\n"
        "rounds). Prints a markdown table; writes bench.csv (appended), bench.md, bench.png and\n"
        "settings.json into --out.",
        epilog="example: fastddpm bench --config tiny --batch 8 --rounds 2\n"
        "example: fastddpm bench --config digits --method dpmsolver++ --steps 20",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default="fashion", choices=tuple(PRESETS),
                        help="model preset (default fashion: the reference's Fashion-MNIST U-Net; digits: the bundled "
                        "trained model, with a quality score)")
    parser.add_argument("--batch", type=positive_int, nargs="+", default=[64],
                        help="batch sizes (default 64)")
    parser.add_argument("--backends", nargs="+", metavar="BACKEND:PRECISION",
                        help="e.g. eager:fp32 eager:bf16 compile:fp32 cudagraph:bf16 onnxruntime:fp32 "
                        "onnxruntime-loop:fp32 (default: all that suit the device; compile only on CUDA)")
    parser.add_argument("--method", choices=METHODS, default="ddpm",
                        help="sampler (default ddpm: per-step timing of the ancestral update)")
    parser.add_argument("--steps", type=positive_int, default=10, help="steps per sample (default 10)")
    parser.add_argument("--spacing", choices=SPACINGS, default="logsnr",
                        help="timestep spacing of the few-step methods (default logsnr)")
    parser.add_argument("--rounds", type=positive_int, default=5,
                        help="timed rounds per configuration (default 5)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--seed", type=seed, default=0, help="noise seed (default 0)")
    parser.add_argument("--out", default="bench-results", help="output folder (default bench-results)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> None:
    on = device(args.device)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {args.out!r} exists and is not a folder")
    try:
        settings = BenchSettings(preset=args.config, batches=tuple(args.batch), configs=args.backends,
                                 method=args.method, steps=args.steps, spacing=args.spacing, rounds=args.rounds,
                                 device=str(on), seed=args.seed)
        run_bench(settings, out, progress=not args.no_progress)
    except (ValueError, RuntimeError, ImportError, OSError) as exc:
        raise CLIError(one_line(exc)) from None
