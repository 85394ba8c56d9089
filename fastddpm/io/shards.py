"""Scale-out on torch.distributed: sharded sampling (and the process-group plumbing training shares).

Sampling ``num`` images is cut into fixed shards of consecutive indices — shard k holds images
[k·shard_size, (k+1)·shard_size) — whatever the number of processes; process r of W samples the shards
k ≡ r (mod W). Image i is drawn with counter-based noise keyed by its own seed ``seed + i``
(``noise="philox"``) and each shard is sampled in the same batches whatever W, so the set of images is
the same, bit for bit, for any number of processes. Each shard is one ``.npz`` (``images`` uint8
(N, H, W, C), ``indices``, ``settings``) written atomically: a rerun skips the shards already on disk
(after checking they belong to the same run) and redoes only the rest. When all shards exist, rank 0
writes ``manifest.json``.

Under ``torchrun`` the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``) names the
process group; :func:`init_from_env` joins it (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .._version import __version__
from ..finite import NonFiniteSampleError
from .files import atomic_path, to_uint8_images

__all__ = ["ShardError", "init_from_env", "rank_and_world", "sample_shards", "read_manifest"]

MANIFEST = "manifest.json"
LOCK = ".fastddpm.lock"  # held (flock) by rank 0 while a run writes into its folder


class ShardError(ValueError):
    """An output folder that belongs to another run, or a shard that cannot be read."""


class _Foreign(Exception):
    """A shard whose settings are another run's (carries them)."""


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes (when ``WORLD_SIZE`` > 1 and none is joined yet).
    Returns True when this call initialised it (the caller then destroys it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_device(device: torch.device) -> torch.device:
    """On CUDA under torchrun, each process takes the GPU of its ``LOCAL_RANK`` and makes it current (Triton
    launches on the current device; NCCL maps ranks to devices by it)."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        index = int(os.environ["LOCAL_RANK"])
        if index >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {index}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        device = torch.device("cuda", index)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def _agree(error: str | NonFiniteSampleError | None) -> None:
    """Every process reports whether it failed; all raise together if any did (a lone failure would leave
    the others waiting at the next barrier). Non-finite samples are raised as such in every process (the CLI
    exits 1 for them, 2 for the rest)."""
    errors = [error]
    if dist.is_available() and dist.is_initialized():
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)
    failed = [e for e in errors if e is not None]
    if failed:
        first = failed[0]
        raise first if isinstance(first, NonFiniteSampleError) else ShardError(first)


def _shard_path(out_dir: Path, k: int) -> Path:
    return out_dir / f"shard-{k:06d}.npz"


# What reading a shard that is missing, truncated, corrupt or of another format raises.
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


def _open_npz(path: Path):
    """``np.load`` of an .npz archive, without pickles; ValueError for a file that is another format."""
    if not zipfile.is_zipfile(path):  # checked before loading: a plain .npy would be read whole
        raise ValueError("not an .npz archive")
    return np.load(path, allow_pickle=False)  # a zip archive: np.load returns its NpzFile


def _read_shard(path: Path, start: int, stop: int, settings: dict[str, Any]) -> bool:
    """True when ``path`` is this run's complete shard; False when it is missing or unreadable (redo);
    ShardError when it is another run's (never overwrite another run's results)."""
    if not path.exists():
        return False
    try:
        with _open_npz(path) as data:
            stored = json.loads(str(data["settings"]))
            if stored != settings:  # compared before anything else is read: never resample another run's shard
                raise _Foreign(stored)
            indices = data["indices"]
            images = data["images"]
            side = settings.get("image_size")
            if images.dtype != np.uint8 or images.shape[1:] != (side, side, settings.get("channels")):
                return False  # not the images this run writes: sample them again
            count = images.shape[0]
    except _Foreign as foreign:
        stored = foreign.args[0]
    except (*_UNREADABLE, RecursionError):  # truncated or corrupt
        return False
    if not isinstance(stored, dict):
        raise ShardError(f"{path}: not a shard of this run (its settings are not a JSON object); use a new --out-dir")
    if stored != settings:
        differing = sorted(k for k in set(stored) | set(settings) if k not in stored or k not in settings
                           or stored[k] != settings[k])
        hint = (" (fastddpm 0.1.0 and earlier sampled with --method ddpm by default: pass it to resume such a run)"
                if stored.get("method") == "ddpm" and settings.get("method") != "ddpm" else "")
        raise ShardError(f"{path}: written by another run (differs in {', '.join(differing)}){hint}; use a new "
                         "--out-dir")
    return count == stop - start and np.array_equal(indices, np.arange(start, stop))


def sample_shards(
    sampler,
    num: int,
    out_dir: str | os.PathLike,
    *,
    image_size: int,
    channels: int,
    seed: int = 0,
    shard_size: int = 1000,
    batch_size: int = 64,
    settings: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Sample images [0, num) into ``out_dir`` as shards, this process's share of them (see the module
    docstring); returns the manifest (also written by rank 0 once every shard exists). ``sampler`` is a
    :class:`fastddpm.Sampler`; ``settings`` (JSON-able) describe the run and must match on a rerun."""
    if num < 1 or shard_size < 1 or batch_size < 1:
        raise ValueError("num, shard_size and batch_size must be positive")
    rank, world = rank_and_world()
    out = Path(out_dir)
    run = {"num": num, "shard_size": shard_size, "batch_size": batch_size, "seed": seed, "image_size": image_size,
           "channels": channels, "noise": "philox", **(settings or {})}
    # As it will read back from a shard (tuples become lists); NaN and non-JSON values are refused up front.
    run = json.loads(json.dumps(run, sort_keys=True, allow_nan=False))
    if seed < 0 or seed + num - 1 > 2**63 - 1:
        raise ValueError(f"seeds {seed}..{seed + num - 1} (one per image) must lie in [0, 2**63 - 1]")
    with contextlib.ExitStack() as held:
        error = None
        try:
            if rank == 0:
                out.mkdir(parents=True, exist_ok=True)
                held.enter_context(_lock_folder(out))
                for stale in out.glob(".*.tmp"):  # a crashed run's temporary files (no other run holds the lock)
                    stale.unlink(missing_ok=True)
        except ShardError as exc:
            error = str(exc)
        except OSError as exc:
            error = f"{out}: cannot create the folder ({exc})"
        _agree(error)
        return _sample_into(sampler, num, out, run, rank, world, image_size, channels, seed, shard_size, batch_size,
                            progress, log)


@contextlib.contextmanager
def _lock_folder(out: Path):
    """Hold an exclusive flock on ``out``'s lock file, or raise ShardError when another run holds it."""
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ShardError(f"{out}: another run is writing into this folder (it holds {LOCK}); wait for it or "
                             "use a new --out-dir") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _sample_into(sampler, num, out, run, rank, world, image_size, channels, seed, shard_size, batch_size, progress,
                 log) -> dict[str, Any]:
    shards = math.ceil(num / shard_size)
    mine = list(range(rank, shards, world))
    todo, error = [], None
    try:
        todo = [k for k in mine
                if not _read_shard(_shard_path(out, k), k * shard_size, min(num, (k + 1) * shard_size), run)]
    except ShardError as exc:
        error = str(exc)
    _agree(error)
    if log is not None:
        log(f"rank {rank}/{world}: {len(mine)} shard(s), {len(mine) - len(todo)} already done")
    error = None
    try:
        for k in tqdm(todo, desc=f"shards (rank {rank})", disable=not progress, leave=False):
            start, stop = k * shard_size, min(num, (k + 1) * shard_size)
            images = []
            for lo in range(start, stop, batch_size):  # the same batches for any number of processes
                hi = min(stop, lo + batch_size)
                seeds = torch.arange(lo, hi, dtype=torch.int64) + seed
                images.append(sampler.sample(hi - lo, image_size, channels, seed=seeds, noise="philox",
                                             progress=False).cpu())
            with atomic_path(_shard_path(out, k)) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, images=to_uint8_images(torch.cat(images)), indices=np.arange(start, stop),
                             settings=np.array(json.dumps(run, sort_keys=True)))
    except NonFiniteSampleError as exc:  # no shard of this batch is written
        error = NonFiniteSampleError(exc.bad, exc.total, f"rank {rank}, shard {k}: ")
    except (OSError, RuntimeError, ValueError) as exc:  # reported by every process, not only this one
        error = f"rank {rank}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    _agree(error)
    manifest = {"format": 1, "fastddpm_version": __version__, "run": run, "shards": [
        {"file": _shard_path(out, k).name, "start": k * shard_size, "stop": min(num, (k + 1) * shard_size)}
        for k in range(shards)]}
    error = None
    if rank == 0:
        try:
            missing = [s["file"] for s in manifest["shards"]
                       if not _read_shard(out / s["file"], s["start"], s["stop"], run)]
            if missing:
                error = f"{out}: shards missing after sampling: {', '.join(missing[:5])}"
            else:
                with atomic_path(out / MANIFEST) as tmp:
                    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        except (OSError, ShardError) as exc:
            error = str(exc)
    _agree(error)
    return manifest


def read_manifest(out_dir: str | os.PathLike) -> tuple[dict[str, Any], np.ndarray]:
    """The manifest and all images of a finished run, in index order (uint8 (num, H, W, C))."""
    out = Path(out_dir)
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"{out / MANIFEST}: cannot read the manifest ({exc})") from None
    except RecursionError:
        raise ShardError(f"{out / MANIFEST}: the manifest is nested too deeply to read") from None
    parts = []
    for shard in _checked_entries(out, manifest):
        path = out / shard["file"]
        try:
            with _open_npz(path) as data:
                indices, images = data["indices"], data["images"]
        except _UNREADABLE as exc:  # missing, truncated, foreign
            raise ShardError(f"{path}: cannot read this shard ({type(exc).__name__}: {exc})") from None
        if not np.array_equal(indices, np.arange(shard["start"], shard["stop"])):
            raise ShardError(f"{path}: indices do not match the manifest")
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(indices) or \
                (parts and images.shape[1:] != parts[0].shape[1:]):
            raise ShardError(f"{path}: images are {images.dtype} {images.shape}; expected uint8 "
                             f"({len(indices)}, H, W, C) like the run's other shards")
        parts.append(images)
    return manifest, np.concatenate(parts)


def _checked_entries(out: Path, manifest: Any) -> list[dict[str, Any]]:
    """The manifest's shard entries, checked: plain file names inside ``out`` (no folders, no ``..``, not
    absolute), each named once, covering [0, num) in order with no gap or overlap."""
    where = out / MANIFEST
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, list) or not shards:
        raise ShardError(f"{where}: no list of shards")
    seen, expected_start = set(), 0
    for entry in shards:
        if not isinstance(entry, dict):
            raise ShardError(f"{where}: a shard entry is not an object: {entry!r}")
        name, start, stop = entry.get("file"), entry.get("start"), entry.get("stop")
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise ShardError(f"{where}: shard file {name!r} is not a file name inside the run folder")
        if name in seen:
            raise ShardError(f"{where}: shard file {name!r} is listed twice")
        seen.add(name)
        if type(start) is not int or type(stop) is not int or stop <= start:
            raise ShardError(f"{where}: shard {name!r} has start {start!r} and stop {stop!r}")
        if start != expected_start:
            raise ShardError(f"{where}: shard {name!r} starts at {start}, expected {expected_start} (a gap or overlap)")
        expected_start = stop
    num = manifest.get("run", {}).get("num") if isinstance(manifest.get("run"), dict) else None
    if num is not None and expected_start != num:
        raise ShardError(f"{where}: shards cover [0, {expected_start}) but the run has {num} images")
    return shards
