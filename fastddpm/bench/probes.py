"""What the bench reads off the machine: the environment every CSV row records (date, versions, git SHA,
device, flags) and the peak memory of a block."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import threading
from pathlib import Path

import torch

from .._version import __version__

__all__ = ["environment", "device_name", "git_sha", "PeakMemory", "rss_bytes", "sync"]


def environment(device: torch.device | str) -> dict[str, str]:
    """What every CSV row records: date, versions, git SHA, device."""
    versions = {"torch": torch.__version__, "fastddpm": __version__, "python": platform.python_version()}
    for name in ("triton", "onnxruntime"):  # optional: triton with CUDA torch builds, onnxruntime the "onnx" extra
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "none"
    flags = (f"threads={torch.get_num_threads()} kernels={os.environ.get('FASTDDPM_KERNELS', 'auto')} "
             f"omp_wait={os.environ.get('OMP_WAIT_POLICY', 'default')}")
    if os.environ.get("TRITON_INTERPRET") == "1":
        flags += " TRITON_INTERPRET=1"
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_sha": git_sha(), "device": device_name(device), **versions, "flags": flags}


def git_sha() -> str:
    """``FASTDDPM_GIT_SHA`` when set (for a copy of a checkout without its .git, as on a lent GPU machine),
    else the short SHA of the checkout fastddpm runs from, else "unknown" (an installed package)."""
    if os.environ.get("FASTDDPM_GIT_SHA"):
        return os.environ["FASTDDPM_GIT_SHA"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores)"


class PeakMemory:
    """Peak memory of a block: the CUDA allocator's peak, or on CPU the resident set's growth, sampled
    every 2 ms from /proc (None where neither can be read: ORT's CUDA memory is invisible to torch)."""

    def __init__(self, device: torch.device, visible: bool = True):
        self.device, self.visible, self.peak_mb = device, visible, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = self._peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self._base is not None:
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, rss_bytes() or 0)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            if self.visible:
                self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return False
        if self._base is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(0, max(self._peak, rss_bytes() or 0) - self._base) / 2**20
        return False


def rss_bytes() -> int | None:
    """This process's resident set size (Linux /proc), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA), so a timer stops after it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
