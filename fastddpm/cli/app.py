"""The ``fastddpm`` command line: the parser of every command, ``main`` and the process entry point ``run``.
Bad input exits with status 2 and a one-line message, no traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .._version import __version__
from ..io.checkpoint import CheckpointError
from ..train.data import DataError
from . import bench, export, fit, sample, train
from .common import CLIError, exit_process

__all__ = ["build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastddpm",
        description="An exact DDPM reference and a fast sampler: train a model, sample images.",
        epilog="example: fastddpm sample --method dpmsolver++ --steps 20 --out samples.png\n"
        "Run 'fastddpm COMMAND --help' for a command's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fastddpm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (sample, export, fit, bench, train):  # each adds its subparser, with func= its command
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0, 1 when a run fails — non-finite samples or loss —, 2 for
    bad input, 130 when interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        args.func(args)
    except (CLIError, CheckpointError, DataError) as exc:
        print(f"fastddpm: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("fastddpm: interrupted", file=sys.stderr)
        return 130
    return 0


def run() -> None:
    """The process entry point (the ``fastddpm`` console script, ``python -m fastddpm``): ``main()``, then
    exit — with ``os._exit`` for a torchrun worker that has left its process group (``common.exit_process``)."""
    exit_process(main())


if __name__ == "__main__":  # pragma: no cover
    run()
