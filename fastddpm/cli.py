"""The ``fastddpm`` command line. Bad input exits with status 2 and a one-line message, no traceback."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Sequence

from ._version import __version__


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _seed(text: str) -> int:
    value = _non_negative_int(text)
    if value > 2**63 - 1:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**63 - 1], got {text!r}")
    return value


def _epochs_to_steps(epochs: int, num_images: int, batch_size: int) -> int:
    """Full batches per epoch (the trainer drops the ragged tail), times epochs."""
    return epochs * max(1, num_images // min(batch_size, num_images))


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 1,2,4, got {text!r}")
    return values


def _add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=("ddpm", "ddim", "dpmsolver++"),
                        help="ddpm: ancestral (default); ddim (--eta 0: deterministic) and dpmsolver++: few steps")
    parser.add_argument("--steps", type=_positive_int,
                        help="sampling steps (default: all the model's timesteps); fewer respace the chain")
    parser.add_argument("--eta", type=float, help="DDIM's η (default 0: deterministic); ddim only")
    parser.add_argument("--spacing", choices=("leading", "trailing", "linspace", "logsnr", "logsnr-sqrt"),
                        help="where the --steps timesteps fall (default logsnr: even in log-SNR, best for few steps)")
    parser.add_argument("--order", type=int, choices=(2, 3),
                        help="DPM-Solver++'s order (default 2; 3 = DPM-Solver++(3M))")
    parser.add_argument("--timesteps", metavar="FIT.json",
                        help="timesteps fitted to the model by 'fastddpm fit-timesteps' (sets the method, order "
                        "and steps)")


def _read_fit(args: argparse.Namespace):
    """The fit named by --timesteps (cached on args), after checking the flags it sets agree with it."""
    if args.timesteps is None:
        return None
    fit = getattr(args, "_fit", None)
    if fit is None:
        from .timestep_fit import FittedTimesteps

        try:
            fit = FittedTimesteps.from_json(Path(args.timesteps).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise CLIError(f"--timesteps {args.timesteps}: {_one_line(exc)}") from None
        if args.order is not None and fit.method != "dpmsolver++":
            raise CLIError(f"--order applies to dpmsolver++; --timesteps {args.timesteps} was fitted for {fit.method}")
        given = {"--method": (args.method, fit.method), "--steps": (args.steps, len(fit.timesteps)),
                 "--order": (args.order, fit.order)}
        for flag, (value, fitted) in given.items():
            if value is not None and value != fitted:
                raise CLIError(f"{flag} {value} does not match --timesteps {args.timesteps} (fitted for {fitted})")
        if args.spacing is not None or args.eta not in (None, 0.0):
            raise CLIError("--timesteps places the steps itself: drop --spacing/--eta")
        args._fit = fit
    return fit


def _sampler_settings(args: argparse.Namespace) -> dict:
    fit = _read_fit(args)
    if fit is not None:
        return dict(method=fit.method, steps=None, eta=None, spacing=list(fit.timesteps))
    return dict(method=args.method or "ddpm", steps=args.steps, eta=args.eta, spacing=args.spacing or "logsnr")


def _sampler_order(args: argparse.Namespace) -> int:
    fit = _read_fit(args)
    return fit.order if fit is not None and fit.method == "dpmsolver++" else (args.order or 2)


def _check_fit_matches(args: argparse.Namespace, diffusion) -> None:
    fit = _read_fit(args)
    if fit is not None and fit.num_train_steps != diffusion.num_timesteps:
        raise CLIError(f"--timesteps {args.timesteps} was fitted for a model of {fit.num_train_steps} timesteps; "
                       f"this one has {diffusion.num_timesteps}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastddpm",
        description="Seed-exact DDPM reference and fast sampler: train a model, sample images.",
    )
    parser.add_argument("--version", action="version", version=f"fastddpm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sample = sub.add_parser(
        "sample",
        help="sample images from a checkpoint (default: the bundled digits model)",
        description="Sample images with the ancestral DDPM sampler and write a PNG grid (.png) or uint8 "
        "images (.npz, array 'arr_0' shaped (N, H, W, C), the layout FID tools read).",
    )
    sample.add_argument("--checkpoint", help="a .safetensors checkpoint (default: the bundled digits model)")
    sample.add_argument("--diffusers", metavar="FOLDER",
                        help="a diffusers DDPM pipeline folder (unet/ + scheduler/, as save_pretrained writes it), "
                        "read offline; its prediction type (epsilon, sample, v) is converted")
    sample.add_argument("--num", type=_positive_int, default=64, help="number of images (default 64)")
    sample.add_argument("--batch-size", type=_positive_int, default=64, help="images per batch (default 64)")
    sample.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    sample.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    sample.add_argument("--out", default="samples.png", help="output .png grid or .npz array (default samples.png)")
    sample.add_argument("--image-size", type=_positive_int, help="sample size (default: the training size)")
    sample.add_argument("--channels", type=_positive_int, help="check the checkpoint has this many channels")
    _add_sampler_arguments(sample)
    sample.add_argument("--backend", choices=("auto", "eager", "compile", "cudagraph", "onnxruntime"), default="auto",
                        help="sampler backend (default auto: cudagraph on CUDA, eager on CPU, onnxruntime with --onnx)")
    sample.add_argument("--onnx", metavar="MODEL.onnx", help="sample from this ONNX export (fastddpm export) in ONNX Runtime")
    sample.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                        help="precision the U-Net runs in; the sample state stays fp32 (default fp32; "
                        "an ONNX export's is fixed when it is exported)")
    sample.add_argument("--noise", choices=("torch", "philox"),
                        help="torch: the reference's random stream (default); philox: per-sample seeds (seed+i for "
                        "image i; always with --out-dir)")
    sample.add_argument("--out-dir", metavar="DIR",
                        help="sharded sampling for large runs: uint8 .npz shards and manifest.json in DIR; run under "
                        "torchrun to spread shards over processes (the same images for any number); a rerun "
                        "resumes, skipping finished shards")
    sample.add_argument("--shard-size", type=_positive_int, default=1000, help="images per shard (default 1000)")
    sample.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sample.set_defaults(func=_cmd_sample)

    export = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (the ε-U-Net, or the whole sampler as one ONNX Loop)",
        description="Export the ε-U-Net of a checkpoint to ONNX (inputs x float32 and t int64, dynamic batch and "
        "size, the diffusion in the metadata), or with --sampler the whole sampler as one model (inputs x_T "
        "and, for stochastic samplers, noise).",
    )
    export.add_argument("--checkpoint", help="a .safetensors checkpoint (default: the bundled digits model)")
    export.add_argument("--out", required=True, help="output .onnx file")
    export.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="fp16: float16 weights and activations, float32 inputs and outputs (default fp32)")
    export.add_argument("--image-size", type=_positive_int, help="default sample size (default: the training size)")
    export.add_argument("--static-size", action="store_true", help="fix height and width (default: dynamic)")
    export.add_argument("--sampler", action="store_true",
                        help="export the whole sampler (--method, --steps, --spacing, --eta, --order or "
                        "--timesteps) as one ONNX Loop")
    _add_sampler_arguments(export)
    export.set_defaults(func=_cmd_export)

    fit = sub.add_parser(
        "fit-timesteps",
        help="fit a few-step solver's timesteps to a model (for sample/export --timesteps)",
        description="Place a deterministic few-step solver's timesteps where the model needs them: starting "
        "from the best named spacing, a search moves one timestep at a time and keeps a move when the solve "
        "lands closer to a many-step solve of the same model from the same noise. Writes a JSON file.",
    )
    fit.add_argument("--checkpoint", help="a .safetensors checkpoint (default: the bundled digits model)")
    fit.add_argument("--steps", type=_positive_int, required=True, help="the solver's step count (model evaluations)")
    fit.add_argument("--method", choices=("ddim", "dpmsolver++"), default="dpmsolver++",
                     help="the solver to fit for (default dpmsolver++)")
    fit.add_argument("--order", type=int, choices=(2, 3), default=2, help="DPM-Solver++'s order (default 2)")
    fit.add_argument("--batch-size", type=_positive_int, default=64,
                     help="noise draws every candidate is judged on (default 64)")
    fit.add_argument("--teacher-steps", type=_positive_int, default=100,
                     help="steps of the DPM-Solver++(2M) solve the fit approaches (default 100)")
    fit.add_argument("--seed", type=_seed, default=0, help="first per-sample seed of the fit batch (default 0)")
    fit.add_argument("--image-size", type=_positive_int, help="sample size (default: the training size)")
    fit.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    fit.add_argument("--out", required=True, help="output .json file")
    fit.add_argument("--no-progress", action="store_true", help="print nothing while fitting")
    fit.set_defaults(func=_cmd_fit_timesteps)

    bench = sub.add_parser(
        "bench",
        help="benchmark backends and precisions against the seed's reference loop",
        description="Run the benchmark matrix: each configuration is first checked against its oracle with the "
        "same noise, then timed (alternated rounds). Prints a markdown table; writes bench.csv (appended), "
        "bench.md, bench.png and settings.json into --out.",
    )
    bench.add_argument("--config", default="fashion", choices=("tiny", "fashion", "cifar", "digits"),
                       help="model preset (default fashion: the seed's Fashion-MNIST U-Net; digits: the bundled "
                       "trained model, with a quality score)")
    bench.add_argument("--batch", type=_positive_int, nargs="+", default=[64], help="batch sizes (default 64)")
    bench.add_argument("--backends", nargs="+", metavar="BACKEND:PRECISION",
                       help="e.g. eager:fp32 eager:bf16 compile:fp32 cudagraph:bf16 onnxruntime:fp32 "
                       "onnxruntime-loop:fp32 (default: all that suit the device; compile only on CUDA)")
    bench.add_argument("--method", choices=("ddpm", "ddim", "dpmsolver++"), default="ddpm",
                       help="sampler (default ddpm: per-step timing of the ancestral update)")
    bench.add_argument("--steps", type=_positive_int, default=10, help="steps per sample (default 10)")
    bench.add_argument("--spacing", choices=("leading", "trailing", "linspace", "logsnr", "logsnr-sqrt"), default="logsnr",
                       help="timestep spacing of the few-step methods (default logsnr)")
    bench.add_argument("--rounds", type=_positive_int, default=5, help="timed rounds per configuration (default 5)")
    bench.add_argument("--device", default="cpu", help="torch device (default cpu)")
    bench.add_argument("--seed", type=_seed, default=0, help="noise seed (default 0)")
    bench.add_argument("--out", default="bench-results", help="output folder (default bench-results)")
    bench.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    bench.set_defaults(func=_cmd_bench)

    train = sub.add_parser(
        "train",
        help="train a model on a folder, array, IDX file or the built-in digits",
        description="Train the reference U-Net (Adam, EMA of the weights) and write checkpoint.safetensors "
        "(full state, for --resume), model.safetensors (EMA weights, for sampling) and sample grids.",
    )
    train.add_argument("--data", help="folder of PNG/JPEG images, .npz/.npy array, *-idx3-ubyte[.gz] file, or 'digits'")
    train.add_argument("--out-dir", help="output folder (default runs/train; when resuming, the checkpoint's folder)")
    train.add_argument("--resume", metavar="CHECKPOINT", help="continue a run from its checkpoint.safetensors")
    g = train.add_argument_group("data and model (fixed by the checkpoint when resuming)")
    g.add_argument("--image-size", type=_positive_int, help="train resolution (default 28)")
    g.add_argument("--channels", type=int, choices=(1, 3), help="1 grayscale or 3 RGB (default 1)")
    g.add_argument("--dim", type=_positive_int, help="U-Net base width (default 28)")
    g.add_argument("--dim-mults", type=_int_tuple, help="width multipliers per resolution (default 1,2,4)")
    g.add_argument("--block", choices=("convnext", "resnet"), help="block type (default convnext)")
    g.add_argument("--resnet-groups", type=_positive_int, help="GroupNorm groups of ResNet blocks (default 8)")
    g.add_argument("--timesteps", type=_positive_int, help="diffusion steps T (default 200)")
    g.add_argument("--schedule", choices=("linear", "cosine", "quadratic", "sigmoid"), help="beta schedule (default linear)")
    o = train.add_argument_group("optimisation")
    o.add_argument("--loss", choices=("l1", "l2", "huber"), help="loss (default huber, the seed's)")
    o.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    o.add_argument("--batch-size", type=_positive_int, help="batch size (default 64)")
    length = o.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive_int, help="total optimisation steps (default 1000)")
    length.add_argument("--epochs", type=_positive_int, help="total epochs (converted to steps)")
    o.add_argument("--ema-decay", type=float, help="EMA decay of the sampling weights (default 0.999)")
    o.add_argument("--seed", type=_seed, help="random seed (default 0)")
    o.add_argument("--sample-every", type=_non_negative_int, help="write a sample grid every N steps (default 0: never)")
    o.add_argument("--save-every", type=_non_negative_int, help="write checkpoints every N steps (default 500)")
    train.add_argument("--device", default="cpu",
                       help="torch device for the model (default cpu; under torchrun, cuda means each process's "
                       "LOCAL_RANK GPU and nccl)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(func=_cmd_train)
    return parser


def _device(name: str):
    import torch

    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise CLIError(f"device {name!r} is not usable here: {str(exc).splitlines()[0]}") from None
    return device


def _cmd_sample(args: argparse.Namespace) -> None:
    if args.out_dir is not None and args.noise == "torch":
        raise CLIError("--out-dir keys each image by its own seed: it samples with --noise philox")
    args.noise = args.noise or ("philox" if args.out_dir is not None else "torch")
    if args.out_dir is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CLIError("under torchrun, sample writes shards: pass --out-dir DIR (every process would otherwise "
                       "sample all images and write the same --out)")
    out = Path(args.out)
    if args.out_dir is None and out.suffix.lower() not in (".png", ".npz"):
        raise CLIError(f"--out must end in .png (a grid) or .npz (uint8 images), got {args.out!r}")
    if args.out_dir is None and not out.parent.exists():
        raise CLIError(f"--out folder {str(out.parent)!r} does not exist")
    if args.onnx is not None and args.backend == "auto":
        args.backend = "onnxruntime"
    if args.backend == "onnxruntime":
        if args.out_dir is not None:
            raise CLIError("--out-dir (sharded sampling) runs the torch backends, not onnxruntime")
        return _sample_onnx(args, out)
    if args.onnx is not None:
        raise CLIError(f"--onnx samples in ONNX Runtime; it does not go with --backend {args.backend}")
    device = _process_device(args.device)
    joined = _join_process_group(device) if args.out_dir is not None else False
    try:
        _sample_torch(args, out, device)
    finally:
        if joined:
            _leave_process_group()


def _process_device(name: str):
    """The device this process uses: under torchrun on CUDA, its LOCAL_RANK GPU (made current first, so
    nothing opens a context on GPU 0)."""
    import torch

    from .distributed import local_device

    try:
        device = local_device(torch.device(name))
    except (RuntimeError, ValueError) as exc:
        raise CLIError(f"device {name!r} is not usable here: {str(exc).splitlines()[0]}") from None
    return _device(str(device))


def _join_process_group(device) -> bool:
    from .distributed import init_from_env

    try:
        return init_from_env(device)
    except (RuntimeError, ValueError) as exc:  # e.g. WORLD_SIZE without MASTER_ADDR, or no NCCL
        raise CLIError(f"cannot join the torch.distributed process group: {str(exc).strip().splitlines()[0]}") from None


def _content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents): what identifies a sharded run's model."""
    import hashlib

    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _sample_torch(args: argparse.Namespace, out: Path, device) -> None:
    import torch

    from .checkpoint import load_checkpoint

    if args.diffusers is not None:
        if args.checkpoint is not None:
            raise CLIError("pass --checkpoint or --diffusers, not both")
        model, diffusion, default_size, channels = _load_diffusers(args.diffusers, device)
        divisor = 1
    else:
        loaded = load_checkpoint(args.checkpoint, device=device)
        model, diffusion = loaded.model, loaded.diffusion
        channels, default_size, divisor = model.config.channels, loaded.image_size, model.size_divisor
    if args.channels is not None and args.channels != channels:
        raise CLIError(f"--channels {args.channels} does not match the model, which has channels={channels}")
    image_size = args.image_size or default_size
    if image_size is None:
        raise CLIError("the checkpoint does not record its image size; pass --image-size")
    if image_size % divisor:
        raise CLIError(f"--image-size {image_size} is not divisible by {divisor} (this model's dim_mults)")

    from .sampler import Sampler

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision or "fp32"]
    try:
        _check_fit_matches(args, diffusion)
        sampler = Sampler(model, diffusion, backend=args.backend, dtype=dtype, order=_sampler_order(args),
                          **_sampler_settings(args))
    except (RuntimeError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if args.out_dir is not None:
        from .checkpoint import bundled_model_path
        from .distributed import ShardError, sample_shards

        # The model by its contents (a path can be spelled many ways, and a file can be retrained in place).
        source = Path(args.diffusers or args.checkpoint or bundled_model_path())
        settings = {"model_sha256": _content_hash(source), "precision": args.precision or "fp32",
                    "order": _sampler_order(args),
                    "backend": sampler.backend, "device": device.type, **_sampler_settings(args)}
        try:
            manifest = sample_shards(sampler, args.num, args.out_dir, image_size=image_size, channels=channels,
                                     seed=args.seed, shard_size=args.shard_size, batch_size=args.batch_size,
                                     settings=settings, progress=not args.no_progress)
        except (ShardError, OSError, ValueError) as exc:
            raise CLIError(str(exc)) from None
        from .distributed import rank_and_world

        if rank_and_world()[0] == 0:
            print(f"wrote {args.num} samples in {len(manifest['shards'])} shard(s) and {args.out_dir}/manifest.json")
        return
    torch.manual_seed(args.seed)
    batches = []
    done = 0
    num_batches = math.ceil(args.num / args.batch_size)
    for index in range(num_batches):
        n = min(args.batch_size, args.num - done)
        if not args.no_progress and num_batches > 1:
            print(f"batch {index + 1}/{num_batches}", file=sys.stderr)
        # philox: image i of the whole run has seed `--seed + i`, whatever the batch split.
        seed = args.seed + done if args.noise == "philox" else None
        try:
            batches.append(sampler.sample(n, image_size, channels, seed=seed, noise=args.noise,
                                          progress=not args.no_progress).cpu())
        except (ValueError, RuntimeError) as exc:  # e.g. seeds past 2**63 - 1, or a model that fails
            raise CLIError(str(exc).strip().splitlines()[0]) from None
        done += n
    _write_samples(torch.cat(batches), out, image_size, channels, args.num)


def _load_diffusers(folder: str, device):
    try:
        from .adapters import load_diffusers
        import diffusers  # noqa: F401
    except ImportError:
        raise CLIError("--diffusers needs the diffusers package: pip install 'fastddpm[compare]'") from None
    try:
        return load_diffusers(folder, device)
    except (OSError, ValueError, TypeError) as exc:
        raise CLIError(f"--diffusers {folder}: {str(exc).splitlines()[0]}") from None


def _write_samples(images, out: Path, image_size: int, channels: int, num: int) -> None:
    import numpy as np

    from .fileio import atomic_path, save_image_grid, to_uint8_images

    if out.suffix.lower() == ".png":
        save_image_grid(images, out, scale=max(1, 64 // image_size))
    else:
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, arr_0=to_uint8_images(images))
    print(f"wrote {num} samples ({image_size}x{image_size}, {channels} channel(s)) to {out}")


_NEEDS_ONNX = "ONNX support needs the onnx extra: pip install 'fastddpm[onnx]'"


def _sample_onnx(args: argparse.Namespace, out: Path) -> None:
    import numpy as np
    import torch

    if args.onnx is None:
        raise CLIError("--backend onnxruntime samples an ONNX export: pass --onnx MODEL.onnx (see fastddpm export)")
    for flag, value in (("--checkpoint", args.checkpoint), ("--precision", args.precision),
                        ("--channels", args.channels), ("--diffusers", args.diffusers)):
        if value is not None:
            raise CLIError(f"{flag} does not apply to --backend onnxruntime: the ONNX export fixes it")
    if args.noise != "torch":
        raise CLIError("--noise philox is the torch backends' counter-based noise; ONNX Runtime draws numpy's")
    try:
        import onnx  # noqa: F401  (fastddpm imports them lazily: check here, before any work)
        import onnxruntime  # noqa: F401

        from .onnx_export import OnnxModelError, read_onnx
        from .ort_sampler import CPU, CUDA, OrtSampler
    except ImportError:
        raise CLIError(_NEEDS_ONNX) from None
    device = _device(args.device)
    providers = [(CUDA, {"device_id": device.index or 0}), CPU] if device.type == "cuda" else [CPU]
    try:
        export = read_onnx(args.onnx)
        # An ε-model export samples like a checkpoint (the CLI's defaults); a whole-sampler export fixes its own.
        if export.kind == "eps-model":
            from .diffusion import GaussianDiffusion

            _check_fit_matches(args, GaussianDiffusion.from_config(export.diffusion))
            settings = {**_sampler_settings(args), "order": _sampler_order(args)}
        elif args.timesteps is not None:
            raise CLIError(f"{args.onnx} is a whole-sampler export: it fixes its timesteps (--timesteps goes with "
                           "an ε-model export or a checkpoint)")
        else:
            settings = dict(method=args.method, steps=args.steps, eta=args.eta, spacing=args.spacing, order=args.order)
        sampler = OrtSampler(export, providers=providers, **settings)
    except (OnnxModelError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if device.type == "cuda" and sampler.device != "cuda":
        raise CLIError("ONNX Runtime's CUDA execution provider is not usable here; use --device cpu")
    image_size = args.image_size or sampler.image_size[0]
    if args.image_size is None and sampler.image_size[0] != sampler.image_size[1]:
        raise CLIError(f"the export's default size is {sampler.image_size}; pass --image-size for a square sample")
    rng = np.random.default_rng(args.seed)
    batches, done = [], 0
    while done < args.num:
        n = min(args.batch_size, args.num - done)
        try:
            batches.append(torch.from_numpy(sampler.sample(n, image_size, seed=rng, progress=not args.no_progress)))
        except (ValueError, RuntimeError) as exc:  # ORT's run-time errors are RuntimeErrors
            raise CLIError(str(exc).strip().splitlines()[0]) from None
        done += n
    _write_samples(torch.cat(batches), out, image_size, sampler.channels, args.num)


def _out_file(name: str, suffix: str) -> Path:
    out = Path(name)
    if out.suffix.lower() != suffix:
        raise CLIError(f"--out must end in {suffix}, got {name!r}")
    if not out.parent.exists():
        raise CLIError(f"--out folder {str(out.parent)!r} does not exist")
    return out


def _image_size(args: argparse.Namespace, loaded) -> int:
    image_size = args.image_size or loaded.image_size
    if image_size is None:
        raise CLIError("the checkpoint does not record its image size; pass --image-size")
    if image_size % loaded.model.size_divisor:
        raise CLIError(f"--image-size {image_size} is not divisible by {loaded.model.size_divisor} (this model's dim_mults)")
    return image_size


def _cmd_export(args: argparse.Namespace) -> None:
    from .checkpoint import load_checkpoint

    out = _out_file(args.out, ".onnx")
    if not args.sampler and any(v is not None for v in (args.method, args.steps, args.eta, args.spacing,
                                                        args.order, args.timesteps)):
        raise CLIError("--method/--steps/--eta/--spacing/--order/--timesteps choose the sampler of an --sampler export")
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx.export(dynamo=True) needs it)

        from .onnx_export import OnnxModelError, export_onnx, export_onnx_sampler
    except ImportError:
        raise CLIError(_NEEDS_ONNX) from None
    loaded = load_checkpoint(args.checkpoint)
    _check_fit_matches(args, loaded.diffusion)
    image_size = _image_size(args, loaded)
    common = dict(diffusion=loaded.diffusion, image_size=image_size, precision=args.precision,
                  dynamic_size=not args.static_size)
    try:
        if args.sampler:
            export_onnx_sampler(loaded.model, out, **common, **_sampler_settings(args), order=_sampler_order(args))
        else:
            export_onnx(loaded.model, out, **common)
    except (OnnxModelError, ValueError, RuntimeError) as exc:
        raise CLIError(str(exc).strip().splitlines()[0]) from None
    what = "sampler" if args.sampler else "ε-model"
    print(f"wrote the {what} ({args.precision}, {image_size}x{image_size}) to {out}")


def _cmd_fit_timesteps(args: argparse.Namespace) -> None:
    from .checkpoint import load_checkpoint
    from .fileio import atomic_path
    from .timestep_fit import fit_timesteps

    out = _out_file(args.out, ".json")
    if args.method != "dpmsolver++" and args.order != 2:
        raise CLIError("--order applies to --method dpmsolver++")
    device = _device(args.device)
    loaded = load_checkpoint(args.checkpoint, device=device)
    image_size = _image_size(args, loaded)
    try:
        fit = fit_timesteps(loaded.model, loaded.diffusion, args.steps, image_size=image_size,
                            channels=loaded.model.config.channels, method=args.method, order=args.order,
                            batch_size=args.batch_size, teacher_steps=args.teacher_steps, seed=args.seed,
                            progress=not args.no_progress)
    except (ValueError, RuntimeError) as exc:  # bad settings, or a model that fails (e.g. out of memory)
        raise CLIError(_one_line(exc)) from None
    try:
        with atomic_path(out) as tmp:
            tmp.write_text(fit.to_json() + "\n", encoding="utf-8")
    except OSError as exc:
        raise CLIError(f"cannot write {out}: {_one_line(exc)}") from None
    print(f"timesteps {list(fit.timesteps)} (from {fit.start}): distance to the {fit.teacher_steps}-step solve "
          f"{fit.start_error:.4g} -> {fit.error:.4g}, held out {fit.heldout_start_error:.4g} -> {fit.heldout_error:.4g}; "
          f"wrote {out}")


def _cmd_bench(args: argparse.Namespace) -> None:
    from .bench import BenchSettings, run_bench

    device = _device(args.device)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {args.out!r} exists and is not a folder")
    try:
        settings = BenchSettings(preset=args.config, batches=tuple(args.batch), configs=args.backends,
                                 method=args.method, steps=args.steps, spacing=args.spacing, rounds=args.rounds,
                                 device=str(device), seed=args.seed)
        run_bench(settings, out, progress=not args.no_progress)
    except (ValueError, RuntimeError, ImportError, OSError) as exc:
        raise CLIError(str(exc).strip().splitlines()[0]) from None


_TRAIN_DEFAULTS = dict(image_size=28, channels=1, dim=28, dim_mults=(1, 2, 4), block="convnext", resnet_groups=8,
                       timesteps=200, schedule="linear", loss="huber", lr=1e-3, batch_size=64, steps=1000,
                       ema_decay=0.999, seed=0, sample_every=0, save_every=500)


def _cmd_train(args: argparse.Namespace) -> None:
    device = _process_device(args.device)
    joined = _join_process_group(device)  # under torchrun: gloo on CPU, nccl on CUDA
    try:
        _train(args, device)
    finally:
        if joined:
            _leave_process_group()


# Set once a torchrun worker has left its process group. Such a process ends with os._exit once its
# files are written and its output flushed: torch.distributed's teardown at interpreter exit aborted
# workers ("terminate called without an active exception", SIGABRT, after the work was done) — once in
# CI after DDP training, and once here after sharded sampling, where faulthandler showed the main thread
# with no Python frame left, i.e. in exit-time destructors. After a DistributedDataParallel has been
# built, destroy_process_group() does not even stop the gloo group's threads (measured on torch 2.14:
# pt_gloo_runloop ×2 and gloo_tcp_loop still run; pytorch/pytorch#107298).
_SKIP_TEARDOWN = False


def _leave_process_group() -> None:
    import torch.distributed as dist

    global _SKIP_TEARDOWN
    dist.destroy_process_group()
    _SKIP_TEARDOWN = True


def run() -> None:
    """The process entry point (the ``fastddpm`` console script, ``python -m fastddpm``): ``main()``, then exit."""
    code = main()
    if _SKIP_TEARDOWN:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _train(args: argparse.Namespace, device) -> None:
    from .data import load_dataset
    from .diffusion import DiffusionConfig
    from .train import TrainConfig, Trainer, read_train_config
    from .unet import UnetConfig

    if args.resume:
        config = read_train_config(args.resume)
        recorded = {"image_size": config.image_size, "channels": config.channels, "dim": config.model.dim,
                    "dim_mults": config.model.dim_mults, "block": "convnext" if config.model.use_convnext else "resnet",
                    "resnet_groups": config.model.resnet_block_groups, "timesteps": config.diffusion.timesteps,
                    "schedule": config.diffusion.beta_schedule, "loss": config.loss, "lr": config.lr,
                    "batch_size": config.batch_size, "ema_decay": config.ema_decay, "seed": config.seed}
        for name, value in recorded.items():
            given = getattr(args, name)
            if given is not None and given != value:
                flag = "--" + name.replace("_", "-")
                raise CLIError(f"{flag} {given} does not match the checkpoint, which has {name}={value}")
        data = load_dataset(args.data or config.data, config.image_size, config.channels)
        steps = args.steps
        if args.epochs is not None:
            steps = _epochs_to_steps(args.epochs, data.shape[0], config.batch_size)
        out_dir = Path(args.out_dir) if args.out_dir else Path(args.resume).parent
        try:
            trainer = Trainer.resume(args.resume, out_dir, steps=steps, data=data, device=device)
        except ValueError as exc:  # e.g. a batch that does not split over the processes
            raise CLIError(str(exc)) from None
        schedule_overrides = {k: getattr(args, k) for k in ("sample_every", "save_every") if getattr(args, k) is not None}
        trainer.config = dataclasses.replace(trainer.config, **schedule_overrides)
    else:
        if not args.data:
            raise CLIError("--data is required (a folder, .npz/.npy, IDX file or 'digits') unless --resume is given")
        opts = {k: (getattr(args, k) if getattr(args, k, None) is not None else v) for k, v in _TRAIN_DEFAULTS.items()}
        data = load_dataset(args.data, opts["image_size"], opts["channels"])
        steps = opts["steps"]
        if args.epochs is not None:
            steps = _epochs_to_steps(args.epochs, data.shape[0], opts["batch_size"])
        try:
            model = UnetConfig(dim=opts["dim"], channels=opts["channels"], dim_mults=opts["dim_mults"],
                               use_convnext=opts["block"] == "convnext", resnet_block_groups=opts["resnet_groups"])
            from .unet import _check_config

            _check_config(model)
            config = TrainConfig(
                data=str(args.data), image_size=opts["image_size"], channels=opts["channels"], model=model,
                diffusion=DiffusionConfig(opts["timesteps"], opts["schedule"]), loss=opts["loss"], lr=opts["lr"],
                batch_size=opts["batch_size"], steps=steps, ema_decay=opts["ema_decay"], seed=opts["seed"],
                sample_every=opts["sample_every"], save_every=opts["save_every"],
            )
            trainer = Trainer(config, args.out_dir or "runs/train", data=data, device=device)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    if trainer.rank == 0:
        processes = f" in {trainer.world_size} processes" if trainer.world_size > 1 else ""
        print(f"training on {trainer.data.shape[0]} images {tuple(trainer.data.shape[1:])} for "
              f"{trainer.config.steps} steps (from step {trainer.step}){processes} into {trainer.out_dir}", file=sys.stderr)
    try:
        trainer.run(progress=not args.no_progress)
    except KeyboardInterrupt:  # the trainer saved at the last complete step
        if trainer.rank == 0:
            print(f"interrupted at step {trainer.step}; saved {trainer.out_dir / 'checkpoint.safetensors'}",
                  file=sys.stderr)
        raise
    except OSError as exc:  # a checkpoint or grid that cannot be written
        raise CLIError(f"cannot write into {trainer.out_dir}: {exc}") from None
    loss = trainer.final_loss()
    if trainer.rank != 0:
        return
    print(f"done: step {trainer.step}, final loss {loss:.4f} (mean of the last {len(trainer.recent_losses)} steps); "
          f"model in {trainer.out_dir / 'model.safetensors'}")


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        args.func(args)
    except (CLIError, CheckpointError, DataError) as exc:
        print(f"fastddpm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastddpm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    run()
