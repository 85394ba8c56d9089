"""What every command shares: the user-facing error, argument types, one-line messages, the device and
checkpoint helpers, and joining / leaving a torchrun process group (with the exit that follows it)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist

from ..io.shards import init_from_env, local_device

__all__ = ["CLIError", "RunError", "positive_int", "non_negative_int", "seed", "int_tuple", "one_line", "out_file",
           "check_writable_output", "check_writable_folder", "image_size", "device", "process_device", "join_process_group", "leave_process_group", "exit_process",
           "NEEDS_ONNX"]

NEEDS_ONNX = "ONNX support needs the onnx extra: pip install 'fastddpm[onnx]'"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2 (``exit_code``)."""

    exit_code = 2


class RunError(CLIError):
    """A run that started and failed (non-finite samples or loss): printed as one line, exit status 1."""

    exit_code = 1


# -- argument types ----------------------------------------------------------------------------------
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


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def seed(text: str) -> int:
    value = non_negative_int(text)
    if value > 2**63 - 1:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**63 - 1], got {text!r}")
    return value


def int_tuple(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 1,2,4, got {text!r}")
    return values


# -- messages and paths ------------------------------------------------------------------------------
def one_line(exc: BaseException) -> str:
    """An exception's message as one line (its first), for a CLIError."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def out_file(name: str, suffix: str) -> Path:
    """--out, checked to end in ``suffix`` and to be writable (:func:`check_writable_output`)."""
    return check_writable_output(name, (suffix,))


def check_writable_output(path: str | os.PathLike, suffixes: Sequence[str] = (), *, flag: str = "--out") -> Path:
    """An output file, checked before any work: it ends in one of ``suffixes`` (when given), is not a folder,
    and its folder exists and is writable (files are written atomically: a temporary file, then a rename)."""
    out = Path(path)
    if suffixes and out.suffix.lower() not in suffixes:
        raise CLIError(f"{flag} must end in {' or '.join(suffixes)}, got {str(path)!r}")
    if out.is_dir():
        raise CLIError(f"{flag} {str(path)!r} is a folder; name a file inside it")
    parent = out.parent
    if not parent.is_dir():
        raise CLIError(f"{flag} folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} folder {str(parent)!r} is not writable (permission denied)")
    if out.exists() and not os.access(out, os.W_OK):
        raise CLIError(f"{flag} {str(path)!r} exists and is read-only (permission denied)")
    return out


def check_writable_folder(path: str | os.PathLike, *, flag: str = "--out-dir") -> Path:
    """An output folder, checked before any work: a folder (or nothing yet) under a writable folder."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{flag} {str(path)!r} is a file, not a folder")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the folder that mkdir(parents=True) will create under
    if not existing.is_dir():
        raise CLIError(f"{flag} {str(path)!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {str(existing)!r} is not writable (permission denied)")
    return out


def image_size(args: argparse.Namespace, loaded) -> int:
    """--image-size, or the size a loaded checkpoint records, checked against the model's dim_mults."""
    size = args.image_size or loaded.image_size
    if size is None:
        raise CLIError("the checkpoint does not record its image size; pass --image-size")
    if size % loaded.model.size_divisor:
        raise CLIError(f"--image-size {size} is not divisible by {loaded.model.size_divisor} (this model's dim_mults)")
    return size


# -- devices and process groups ----------------------------------------------------------------------
def device(name: str) -> torch.device:
    """A torch device that works here (one tensor is made on it), or a CLIError."""
    try:
        result = torch.device(name)
        torch.empty(0, device=result)
    except (RuntimeError, AssertionError) as exc:
        raise CLIError(f"device {name!r} is not usable here: {str(exc).splitlines()[0]}") from None
    return result


def process_device(name: str) -> torch.device:
    """The device this process uses: under torchrun on CUDA, its LOCAL_RANK GPU (made current first, so
    nothing opens a context on GPU 0)."""
    try:
        result = local_device(torch.device(name))
    except (RuntimeError, ValueError) as exc:
        raise CLIError(f"device {name!r} is not usable here: {str(exc).splitlines()[0]}") from None
    return device(str(result))


def join_process_group(on: torch.device) -> bool:
    """Join torchrun's process group when the environment names one (gloo on CPU, nccl on CUDA)."""
    try:
        return init_from_env(on)
    except (RuntimeError, ValueError) as exc:  # e.g. WORLD_SIZE without MASTER_ADDR, or no NCCL
        raise CLIError(f"cannot join the torch.distributed process group: {one_line(exc)}") from None


# Set once a torchrun worker has left its process group. Such a process ends with os._exit once its
# files are written and its output flushed: torch.distributed's teardown at interpreter exit aborted
# workers ("terminate called without an active exception", SIGABRT, after the work was done) — once in
# CI after DDP training, and once here after sharded sampling, where faulthandler showed the main thread
# with no Python frame left, i.e. in exit-time destructors. After a DistributedDataParallel has been
# built, destroy_process_group() does not even stop the gloo group's threads (measured on torch 2.14:
# pt_gloo_runloop ×2 and gloo_tcp_loop still run; pytorch/pytorch#107298).
_SKIP_TEARDOWN = False


def leave_process_group() -> None:
    """Leave the process group; the process then ends through :func:`exit_process` without teardown."""
    global _SKIP_TEARDOWN
    dist.destroy_process_group()
    _SKIP_TEARDOWN = True


def exit_process(code: int) -> None:
    """End the process with ``code``: ``sys.exit``, or — for a torchrun worker that has left its process
    group (see ``_SKIP_TEARDOWN``) — ``os._exit`` after flushing, skipping the exit-time destructors."""
    if _SKIP_TEARDOWN:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
