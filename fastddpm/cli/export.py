"""``fastddpm export``: a checkpoint's ε-U-Net, or its whole sampler as one ONNX Loop, to an .onnx file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io.checkpoint import load_checkpoint
from ..onnx import OnnxModelError, export_onnx, export_onnx_sampler, read_onnx
from ..onnx.metadata import EPS_MODEL, PRECISIONS
from ..reference.diffusion import GaussianDiffusion
from .common import NEEDS_ONNX, CLIError, image_size, one_line, out_file, positive_int
from .solver import add_sampler_arguments, check_fit_matches, sampler_settings


def register(sub) -> None:
    parser = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (the ε-U-Net, or the whole sampler as one ONNX Loop)",
        description="Export a checkpoint to ONNX: the ε-U-Net, or with --sampler the whole sampler.\n\n"
        "The ε-U-Net export has inputs x float32 and t int64, dynamic batch and size, the diffusion in the\n"
        "metadata; --sampler exports the whole sampler as one model (inputs x_T and, for stochastic\n"
        "samplers, noise). Needs the onnx extra: pip install \"fastddpm[onnx]\".",
        epilog="example: fastddpm export --out digits.onnx\n"
        "example: fastddpm export --out sampler.onnx --sampler --method dpmsolver++ --steps 20\n"
        "example: fastddpm export --out sampler.onnx --sampler --onnx digits.onnx   # from an ε-model export",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", help="a .safetensors checkpoint (default: the bundled digits model)")
    parser.add_argument("--onnx", metavar="EPS.onnx",
                        help="with --sampler: build the Loop from this ε-model export instead of a checkpoint "
                        "(no torch export; its precision, size and diffusion are the file's; an export carries no "
                        "model hash, so a --solver fit is checked against its diffusion only)")
    parser.add_argument("--out", required=True, help="output .onnx file")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="fp16: float16 weights and activations, float32 inputs and outputs (default fp32)")
    parser.add_argument("--image-size", type=positive_int, help="default sample size (default: the training size)")
    parser.add_argument("--static-size", action="store_true", help="fix height and width (default: dynamic)")
    parser.add_argument("--sampler", action="store_true",
                        help="export the whole sampler (--method, --steps, --spacing, --eta, --order, --timesteps "
                        "or --solver; default: the sampler `fastddpm sample` uses) as one ONNX Loop")
    add_sampler_arguments(parser)
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> None:
    out = out_file(args.out, ".onnx")
    if not args.sampler and any(v is not None for v in (args.method, args.steps, args.eta, args.spacing,
                                                        args.order, args.timesteps, args.solver)):
        raise CLIError("--method/--steps/--eta/--spacing/--order/--timesteps/--solver choose the sampler of an "
                       "--sampler export")
    try:
        # The "onnx" extra: fastddpm.onnx imports these lazily, so check here, before any work.
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx.export(dynamo=True) needs it)
    except ImportError:
        raise CLIError(NEEDS_ONNX) from None
    if args.onnx is not None:
        _sampler_from_export(args, out)
        return
    precision = args.precision or "fp32"
    loaded = load_checkpoint(args.checkpoint)
    check_fit_matches(args, loaded.diffusion, loaded.model)
    size = image_size(args, loaded)
    common = dict(diffusion=loaded.diffusion, image_size=size, precision=precision, dynamic_size=not args.static_size)
    try:
        if args.sampler:
            export_onnx_sampler(loaded.model, out, **common, **sampler_settings(args, loaded.model, loaded.diffusion))
        else:
            export_onnx(loaded.model, out, **common)
    except (OnnxModelError, ValueError, RuntimeError, OSError) as exc:
        raise CLIError(one_line(exc)) from None
    what = "sampler" if args.sampler else "ε-model"
    print(f"wrote the {what} ({precision}, {size}x{size}) to {out}")


def _sampler_from_export(args: argparse.Namespace, out) -> None:
    """--sampler --onnx EPS.onnx: the Loop around an existing ε-model export (it samples like any model other
    than the bundled one: an export carries no model hash to match a fitted solver's)."""
    if not args.sampler:
        raise CLIError("--onnx builds a whole-sampler export from an ε-model export: add --sampler")
    for flag, value in (("--checkpoint", args.checkpoint), ("--precision", args.precision),
                        ("--image-size", args.image_size), ("--static-size", args.static_size or None)):
        if value is not None:
            raise CLIError(f"{flag} does not apply to --onnx: the ε-model export fixes it")
    if Path(args.onnx).resolve() == out.resolve():
        raise CLIError(f"--out {args.out} is the --onnx file itself: name another file")
    try:
        export = read_onnx(args.onnx)
        if export.kind != EPS_MODEL:
            raise CLIError(f"--onnx {args.onnx}: a {export.kind!r} export; --sampler needs an ε-model export")
        diffusion = GaussianDiffusion.from_config(export.diffusion)
        check_fit_matches(args, diffusion)
        export_onnx_sampler(export.path, out, **sampler_settings(args, diffusion=diffusion))
    except (OnnxModelError, ValueError, RuntimeError, OSError) as exc:
        raise CLIError(one_line(exc)) from None
    height, width = export.image_size
    print(f"wrote the sampler ({export.precision}, {height}x{width}) to {out}, around {args.onnx}")
