"""The ``fastddpm`` command line. Bad input exits with status 2 and a one-line message, no traceback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ._version import __version__


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastddpm",
        description="Seed-exact DDPM reference and fast sampler: sample images, and more to come.",
    )
    parser.add_argument("--version", action="version", version=f"fastddpm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sample = sub.add_parser(
        "sample",
        help="sample a PNG grid of images",
        description=(
            "Sample images with the reference ancestral sampler and write a PNG grid. No trained model "
            "is bundled yet: this samples from a freshly initialised U-Net, so the images are noise-like."
        ),
    )
    sample.add_argument("--num", type=_positive_int, default=16, help="number of images (default 16)")
    sample.add_argument("--image-size", type=_positive_int, default=16, help="height and width (default 16)")
    sample.add_argument("--channels", type=_positive_int, default=1, help="image channels (default 1)")
    sample.add_argument("--timesteps", type=_positive_int, default=50, help="diffusion steps T (default 50)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.add_argument("--device", default="cpu", help="torch device (default cpu)")
    sample.add_argument("--out", default="samples.png", help="output PNG (default samples.png)")
    sample.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sample.set_defaults(func=_cmd_sample)
    return parser


def _cmd_sample(args: argparse.Namespace) -> None:
    import torch

    from .diffusion import GaussianDiffusion
    from .fileio import save_image_grid
    from .unet import Unet

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise CLIError(f"--out must end in .png, got {args.out!r}")
    if not out.parent.exists():
        raise CLIError(f"--out folder {str(out.parent)!r} does not exist")
    try:
        device = torch.device(args.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise CLIError(f"device {args.device!r} is not usable here: {str(exc).splitlines()[0]}") from None
    if args.timesteps < 2:
        raise CLIError(f"--timesteps must be at least 2, got {args.timesteps}")

    torch.manual_seed(args.seed)
    model = Unet(dim=16, channels=args.channels, dim_mults=(1, 2)).to(device).eval()
    if args.image_size % model.size_divisor:
        raise CLIError(f"--image-size {args.image_size} is not divisible by {model.size_divisor}")
    diffusion = GaussianDiffusion(args.timesteps, "linear", device=device)
    print(
        "note: no trained model is bundled yet; sampling from a freshly initialised U-Net "
        "(the images will look like noise)",
        file=sys.stderr,
    )
    images = diffusion.sample(
        model,
        image_size=args.image_size,
        batch_size=args.num,
        channels=args.channels,
        return_all_timesteps=False,
        progress=not args.no_progress,
    )
    save_image_grid(images, out, scale=4)
    print(f"wrote {args.num} samples to {out}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        args.func(args)
    except CLIError as exc:
        print(f"fastddpm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastddpm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
