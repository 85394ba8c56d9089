"""``fastddpm sample``: images from a checkpoint, a diffusers folder or an ONNX export, as a PNG grid, a
uint8 .npz, or (--out-dir, under torchrun too) resumable shards."""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..bench.settings import PRECISIONS
from ..io.checkpoint import bundled_model_path, load_checkpoint
from ..io.files import atomic_path, save_image_grid, to_uint8_images
from ..io.shards import ShardError, rank_and_world, sample_shards
from ..onnx import CPU, CUDA, OnnxModelError, OrtSampler, read_onnx
from ..onnx.metadata import EPS_MODEL
from ..onnx.openvino import OpenVinoEpsModel
from ..reference.diffusion import GaussianDiffusion
from ..sampling.adapters import load_diffusers
from ..finite import NonFiniteSampleError
from ..sampling.sampler import BACKENDS, NOISE_SOURCES, Sampler
from .common import (NEEDS_ONNX, CLIError, RunError, check_writable_folder, check_writable_output, device, join_process_group, leave_process_group, one_line, positive_int,
                     process_device, seed)
from .solver import add_sampler_arguments, check_fit_matches, sampler_settings

ONNXRUNTIME = "onnxruntime"  # the CLI's backends beside the Sampler's: an ONNX export in ONNX Runtime,
OPENVINO = "openvino"  # or its U-Net in OpenVINO under the torch sampler's loop


def register(sub) -> None:
    parser = sub.add_parser(
        "sample",
        help="sample images from a checkpoint (default: the bundled digits model)",
        description="Sample images from a model and write a PNG grid (.png) or uint8 images (.npz).\n\n"
        "Default: the bundled digits model with UniPC over 5 steps (linspace; 5 evaluations per image);\n"
        "other models: DPM-Solver++ over 20 steps. --method ddpm is the reference's ancestral sampler over every\n"
        "timestep. An .npz holds array 'arr_0' shaped (N, H, W, C), the layout FID tools read.",
        epilog="example: fastddpm sample --out samples.png\n"
        "example: fastddpm sample --method ddpm --out ancestral.png   (the reference's sampler, all steps)\n"
        "example: fastddpm sample --checkpoint runs/train/model.safetensors --num 16 --out mine.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", help="a .safetensors checkpoint (default: the bundled digits model)")
    parser.add_argument("--diffusers", metavar="FOLDER",
                        help="a diffusers DDPM pipeline folder (unet/ + scheduler/, as save_pretrained writes it), "
                        "read offline; its prediction type (epsilon, sample, v) is converted")
    parser.add_argument("--num", type=positive_int, default=64, help="number of images (default 64)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default 64)")
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--out", default="samples.png", help="output .png grid or .npz array (default samples.png)")
    parser.add_argument("--image-size", type=positive_int, help="sample size (default: the training size)")
    parser.add_argument("--channels", type=positive_int, help="check the checkpoint has this many channels")
    add_sampler_arguments(parser)
    parser.add_argument("--backend", choices=(*BACKENDS, ONNXRUNTIME, OPENVINO), default="auto",
                        help="sampler backend (default auto: on CUDA cudagraph where its capture pays back, from 3 "
                        "equal batches on, else eager; "
                        "eager on CPU; onnxruntime with --onnx; "
                        "openvino: an --onnx ε-model export's U-Net in OpenVINO, pip install 'fastddpm[openvino]')")
    parser.add_argument("--onnx", metavar="MODEL.onnx",
                        help="sample from this ONNX export (fastddpm export) in ONNX Runtime, or with --backend "
                        "openvino its U-Net in OpenVINO")
    parser.add_argument("--precision", choices=tuple(PRECISIONS),
                        help="precision the U-Net runs in; the sample state stays fp32 (default fp32; "
                        "an ONNX export's is fixed when it is exported)")
    parser.add_argument("--noise", choices=NOISE_SOURCES,
                        help="torch: the reference's random stream (default); philox: per-sample seeds (seed+i for "
                        "image i; always with --out-dir)")
    parser.add_argument("--out-dir", metavar="DIR",
                        help="sharded sampling for large runs: uint8 .npz shards and manifest.json in DIR; run under "
                        "torchrun to spread shards over processes (the same images for any number); a rerun "
                        "resumes, skipping finished shards")
    parser.add_argument("--shard-size", type=positive_int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> None:
    args.started = time.perf_counter()  # the time _write_samples reports: loading, sampling and writing
    if args.out_dir is not None and args.noise == "torch":
        raise CLIError("--out-dir keys each image by its own seed: it samples with --noise philox")
    args.noise = args.noise or ("philox" if args.out_dir is not None else "torch")
    if args.out_dir is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CLIError("under torchrun, sample writes shards: pass --out-dir DIR (every process would otherwise "
                       "sample all images and write the same --out)")
    out = Path(args.out)
    if args.out_dir is None and out.suffix.lower() not in (".png", ".npz"):
        raise CLIError(f"--out must end in .png (a grid) or .npz (uint8 images), got {args.out!r}")
    if args.out_dir is None:
        check_writable_output(out)  # before any sampling: a folder, a missing or read-only parent
    else:
        check_writable_folder(args.out_dir)
    if args.onnx is not None and args.backend == "auto":
        args.backend = ONNXRUNTIME
    if args.backend == OPENVINO:
        return _sample_openvino(args, out)
    if args.backend == ONNXRUNTIME:
        if args.out_dir is not None:
            raise CLIError("--out-dir (sharded sampling) runs the torch backends, not onnxruntime")
        return _sample_onnx(args, out)
    if args.onnx is not None:
        raise CLIError(f"--onnx samples in ONNX Runtime; it does not go with --backend {args.backend}")
    on = process_device(args.device)
    joined = join_process_group(on) if args.out_dir is not None else False
    try:
        _sample_torch(args, out, on)
    finally:
        if joined:
            leave_process_group()


def _content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents): what identifies a sharded run's model."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _sample_torch(args: argparse.Namespace, out: Path, on: torch.device) -> None:
    if args.diffusers is not None:
        if args.checkpoint is not None:
            raise CLIError("pass --checkpoint or --diffusers, not both")
        model, diffusion, default_size, channels = _load_diffusers(args.diffusers, on)
        divisor = 1
    else:
        loaded = load_checkpoint(args.checkpoint, device=on)
        model, diffusion = loaded.model, loaded.diffusion
        channels, default_size, divisor = model.config.channels, loaded.image_size, model.size_divisor
    if args.channels is not None and args.channels != channels:
        raise CLIError(f"--channels {args.channels} does not match the model, which has channels={channels}")
    image_size = args.image_size or default_size
    if image_size is None:
        raise CLIError("the checkpoint does not record its image size; pass --image-size")
    if image_size % divisor:
        raise CLIError(f"--image-size {image_size} is not divisible by {divisor} (this model's dim_mults)")

    precision = args.precision or "fp32"
    # Sharded runs keep the Sampler's own "auto" (a graph on CUDA): it is in their manifests, which a resume
    # must match, and their batches are cut per shard.
    backend = args.backend if args.out_dir is not None else cli_backend(args.backend, on, args.num, args.batch_size)
    try:
        check_fit_matches(args, diffusion, model)
        settings = sampler_settings(args, model, diffusion)
        sampler = Sampler(model, diffusion, backend=backend, dtype=PRECISIONS[precision], **settings)
    except (RuntimeError, ValueError) as exc:
        raise CLIError(one_line(exc)) from None
    if args.out_dir is not None:
        # The model by its contents (a path can be spelled many ways, and a file can be retrained in place).
        source = Path(args.diffusers or args.checkpoint or bundled_model_path())
        run = {"model_sha256": _content_hash(source), "precision": precision, "backend": sampler.backend,
               "device": on.type, **settings}
        if "timesteps" in run:  # recorded under "spacing", as earlier releases wrote a fit's: their runs resume
            run["spacing"] = run.pop("timesteps")
        if "plan" in run:  # a fitted solver: its timesteps and every coefficient key the run
            plan = run.pop("plan")
            run["plan"] = {**plan.describe(), "coefs": plan.coefs.tolist()}
        try:
            manifest = sample_shards(sampler, args.num, args.out_dir, image_size=image_size, channels=channels,
                                     seed=args.seed, shard_size=args.shard_size, batch_size=args.batch_size,
                                     settings=run, progress=not args.no_progress)
        except NonFiniteSampleError as exc:
            raise RunError(one_line(exc)) from None
        except (ShardError, OSError, ValueError) as exc:
            raise CLIError(one_line(exc)) from None
        if rank_and_world()[0] == 0:
            print(f"wrote {args.num} samples in {len(manifest['shards'])} shard(s) and {args.out_dir}/manifest.json")
        return
    _write_samples(_sample_batches(sampler, args, image_size, channels), out, image_size, channels, args, sampler.plan)


# A CUDA graph's first batch of a shape (the capture) and each later one (a replay), in eager batches:
# the bundled model on an H200, 1000 ancestral steps, batch 64: 14.97 s captured vs 7.53 s eager first,
# then 1.70 s vs 7.57 s (benchmarks/results/gpu-h200/first-sample.txt, run 4). One model and run: for the
# 5-step default the ratios were 2.5 and 0.25 (milliseconds either way).
CAPTURE_COST, REPLAY_COST = 2.0, 0.25


def cli_backend(backend: str, device: torch.device, num: int, batch_size: int) -> str:
    """The CLI's "auto" on CUDA: a CUDA graph only where its captures pay back within the run (each batch
    shape is captured once: a smaller last batch is another capture), else eager. ``Sampler(backend="auto")``
    itself keeps the graph on CUDA: a library caller samples again."""
    if backend != "auto" or device.type != "cuda":
        return backend
    full, rest = divmod(num, batch_size)
    captured = (CAPTURE_COST + REPLAY_COST * (full - 1) if full else 0.0) + (CAPTURE_COST if rest else 0.0)
    return "cudagraph" if captured < full + (1 if rest else 0) else "eager"


def _sample_batches(sampler: Sampler, args: argparse.Namespace, image_size: int, channels: int) -> torch.Tensor:
    """--num images in batches of --batch-size from one seeded stream (or per-image philox seeds)."""
    torch.manual_seed(args.seed)
    batches = []
    done = 0
    num_batches = math.ceil(args.num / args.batch_size)
    for index in range(num_batches):
        n = min(args.batch_size, args.num - done)
        if not args.no_progress and num_batches > 1:
            print(f"batch {index + 1}/{num_batches}", file=sys.stderr)
        # philox: image i of the whole run has seed `--seed + i`, whatever the batch split.
        first_seed = args.seed + done if args.noise == "philox" else None
        try:
            batches.append(sampler.sample(n, image_size, channels, seed=first_seed, noise=args.noise,
                                          progress=not args.no_progress).cpu())
        except NonFiniteSampleError as exc:
            raise RunError(one_line(exc)) from None
        except (ValueError, RuntimeError) as exc:  # e.g. seeds past 2**63 - 1, or a model that fails
            raise CLIError(one_line(exc)) from None
        done += n
    return torch.cat(batches)


def _sample_openvino(args: argparse.Namespace, out: Path) -> None:
    """An ε-model export's U-Net in OpenVINO, the loop and its float32 update in the torch sampler."""
    if args.onnx is None:
        raise CLIError("--backend openvino runs an ONNX export: pass --onnx MODEL.onnx (see fastddpm export)")
    for flag, value in (("--checkpoint", args.checkpoint), ("--diffusers", args.diffusers),
                        ("--channels", args.channels), ("--out-dir", args.out_dir)):
        if value is not None:
            raise CLIError(f"{flag} does not apply to --backend openvino")
    if args.device != "cpu":
        raise CLIError("--backend openvino runs on the CPU: use --device cpu")
    try:
        import onnx  # noqa: F401  (fastddpm.onnx reads the export with it)
    except ImportError:
        raise CLIError(NEEDS_ONNX) from None
    try:
        eps_model = OpenVinoEpsModel(args.onnx, precision=args.precision or "fp32")
        diffusion = GaussianDiffusion.from_config(eps_model.export.diffusion)
        check_fit_matches(args, diffusion)
        sampler = Sampler(eps_model, diffusion, backend="eager", **sampler_settings(args, diffusion=diffusion))
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    except (OnnxModelError, ValueError) as exc:
        raise CLIError(one_line(exc)) from None
    height, width = eps_model.image_size
    image_size = args.image_size or height
    if args.image_size is None and height != width:
        raise CLIError(f"the export's default size is {eps_model.image_size}; pass --image-size for a square sample")
    images = _sample_batches(sampler, args, image_size, eps_model.channels)
    if eps_model.effective_precision != eps_model.precision:
        print(f"fastddpm: note: OpenVINO ran the U-Net in {eps_model.effective_precision}, not "
              f"{eps_model.precision}: this CPU has no instructions for it", file=sys.stderr)
    _write_samples(images, out, image_size, eps_model.channels, args, sampler.plan)


def _load_diffusers(folder: str, on: torch.device):
    try:
        import diffusers  # noqa: F401  (the "compare" extra: checked here, before any work)
    except ImportError:
        raise CLIError("--diffusers needs the diffusers package: pip install 'fastddpm[compare]'") from None
    try:
        return load_diffusers(folder, on)
    except (OSError, ValueError, TypeError) as exc:
        raise CLIError(f"--diffusers {folder}: {str(exc).splitlines()[0]}") from None


def _write_samples(images: torch.Tensor, out: Path, image_size: int, channels: int, args: argparse.Namespace,
                   plan) -> None:
    if out.suffix.lower() == ".png":
        save_image_grid(images, out, scale=max(1, 64 // image_size))
    else:
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, arr_0=to_uint8_images(images))
    seconds = time.perf_counter() - args.started
    print(f"wrote {args.num} samples ({image_size}x{image_size}, {channels} channel(s)) to {out} in {seconds:.1f} s "
          f"({_describe(plan, args)})")


def _describe(plan, args: argparse.Namespace) -> str:
    """What sampled: "unipc fitted to the model, 5 steps", "ddpm, 1000 steps", "… on fitted timesteps"."""
    if plan is None:
        return "the export's own sampler"
    if plan.spacing is not None:
        how = plan.method
    else:
        how = f"{plan.method} on fitted timesteps" if args.timesteps else f"{plan.method} fitted to the model"
    return f"{how}, {len(plan.timesteps)} steps"


def _sample_onnx(args: argparse.Namespace, out: Path) -> None:
    if args.onnx is None:
        raise CLIError("--backend onnxruntime samples an ONNX export: pass --onnx MODEL.onnx (see fastddpm export)")
    for flag, value in (("--checkpoint", args.checkpoint), ("--precision", args.precision),
                        ("--channels", args.channels), ("--diffusers", args.diffusers)):
        if value is not None:
            raise CLIError(f"{flag} does not apply to --backend onnxruntime: the ONNX export fixes it")
    if args.noise != "torch":
        raise CLIError("--noise philox is the torch backends' counter-based noise; ONNX Runtime draws numpy's")
    try:
        import onnx  # noqa: F401  (the "onnx" extra: fastddpm.onnx imports it lazily, so check before any work)
        import onnxruntime  # noqa: F401
    except ImportError:
        raise CLIError(NEEDS_ONNX) from None
    on = device(args.device)
    providers = [(CUDA, {"device_id": on.index or 0}), CPU] if on.type == "cuda" else [CPU]
    try:
        export = read_onnx(args.onnx)
        # An ε-model export samples like a checkpoint other than the bundled one (the CLI's named default: an
        # export carries no fitted solver); a whole-sampler export fixes its own.
        if export.kind == EPS_MODEL:
            check_fit_matches(args, GaussianDiffusion.from_config(export.diffusion))
            settings = sampler_settings(args, diffusion=GaussianDiffusion.from_config(export.diffusion))
        elif args.timesteps is not None or args.solver is not None:
            raise CLIError(f"{args.onnx} is a whole-sampler export: it fixes its timesteps (--timesteps and "
                           "--solver go with an ε-model export or a checkpoint)")
        else:
            settings = dict(method=args.method, steps=args.steps, eta=args.eta, spacing=args.spacing, order=args.order)
        sampler = OrtSampler(export, providers=providers, **settings)
    except (OnnxModelError, ValueError) as exc:
        raise CLIError(one_line(exc)) from None
    if on.type == "cuda" and sampler.device != "cuda":
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
        except NonFiniteSampleError as exc:
            raise RunError(one_line(exc)) from None
        except (ValueError, RuntimeError) as exc:  # ORT's run-time errors are RuntimeErrors
            raise CLIError(one_line(exc)) from None
        done += n
    _write_samples(torch.cat(batches), out, image_size, sampler.channels, args, sampler.plan)
