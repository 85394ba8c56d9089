"""``fastddpm bench``: the benchmark matrix — every backend and precision against the seed's reference loop.

For one model preset, each batch size and each configuration ("reference" or "backend:precision"):

1. **Equivalence first.** Every configuration samples once with the same noise as its oracle and is
   compared within the tolerance table's bound for its precision (``fastddpm.tolerances``): for the
   ancestral "ddpm" method the oracle is the seed's own loop (``GaussianDiffusion.p_sample_loop``); for
   "ddim"/"dpmsolver++" it is the eager float32 sampler of the same method (itself tested against
   diffusers). A configuration that disagrees is reported as such and never timed. This first call is
   also the warm-up (torch.compile, CUDA-graph capture, ONNX export + session), reported apart.
2. **Timing**, alternated round by round (drift on a shared machine hits every configuration alike):
   ms per step (median, min–max), images/s, speed-up per step against the reference loop, peak memory
   (CUDA: allocator peak; CPU: resident-set growth, sampled), and for the trained digits preset a quality
   proxy of the samples (``fastddpm.quality``).

Per-step cost does not depend on T, so "ddpm" with fewer ``steps`` than the model's T times a chain of
``steps`` steps (a schedule of that length); the few-step methods run the model's real schedule, and
their "vs seed sampler" column compares a whole sample against the seed sampling all T steps.
Results: a markdown table on stdout, and in ``out_dir``: ``bench.csv`` (rows appended, with versions,
git SHA, device and flags), ``bench.md``, ``bench.png`` (a chart) and ``settings.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ._version import __version__

__all__ = ["PRESETS", "BenchSettings", "run_bench", "parse_config", "default_configs"]


@dataclasses.dataclass(frozen=True)
class Preset:
    description: str
    unet: dict | None  # Unet kwargs; None: the bundled digits model
    image_size: int
    channels: int
    timesteps: int
    quality: bool = False  # a trained model whose samples the digits proxy can score


PRESETS = {
    "tiny": Preset("Unet(dim=8, channels=1, dim_mults=(1, 2)), 1×8×8 (smoke runs)", dict(dim=8, channels=1, dim_mults=(1, 2)), 8, 1, 200),
    "fashion": Preset("the seed's Fashion-MNIST U-Net: Unet(dim=28, channels=1, dim_mults=(1, 2, 4)), 1×28×28",
                      dict(dim=28, channels=1, dim_mults=(1, 2, 4)), 28, 1, 200),
    "cifar": Preset("a CIFAR-sized U-Net: Unet(dim=32, channels=3, dim_mults=(1, 2, 4)), 3×32×32",
                    dict(dim=32, channels=3, dim_mults=(1, 2, 4)), 32, 3, 1000),
    "digits": Preset("the bundled digits model (trained), 1×16×16", None, 16, 1, 1000, quality=True),
}
BACKENDS = ("eager", "compile", "cudagraph", "onnxruntime", "onnxruntime-loop")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
METHODS = ("ddpm", "ddim", "dpmsolver++")


def parse_config(text: str) -> tuple[str, str]:
    """"reference" or "backend:precision" → (backend, precision)."""
    if text == "reference":
        return ("reference", "fp32")
    backend, _, precision = text.partition(":")
    precision = precision or "fp32"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} in {text!r}; expected reference or one of {BACKENDS}")
    allowed = ("fp32", "fp16") if backend.startswith("onnxruntime") else tuple(PRECISIONS)
    if precision not in allowed:
        raise ValueError(f"precision {precision!r} in {text!r}: {backend} takes one of {allowed}")
    return (backend, precision)


def default_configs(device: str) -> tuple[str, ...]:
    if torch.device(device).type == "cuda":
        return ("reference", "eager:fp32", "eager:bf16", "compile:fp32", "compile:bf16", "cudagraph:fp32",
                "cudagraph:bf16", "onnxruntime:fp32", "onnxruntime:fp16")
    # compile is left out on CPU by default: compiling the seed's U-Net takes ~2 minutes on 2 cores.
    return ("reference", "eager:fp32", "eager:bf16", "onnxruntime:fp32", "onnxruntime-loop:fp32")


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """What one ``fastddpm bench`` run measures; frozen, with a JSON round-trip (saved beside the results)."""

    preset: str = "fashion"
    batches: tuple[int, ...] = (64,)
    configs: tuple[str, ...] | None = None  # None: default_configs(device)
    method: str = "ddpm"
    steps: int = 10
    spacing: str = "logsnr"
    rounds: int = 5
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "batches", tuple(int(b) for b in self.batches))
        if self.configs is not None:
            object.__setattr__(self, "configs", tuple(self.configs))
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {tuple(PRESETS)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        if not self.batches or min(self.batches) < 1 or self.steps < 1 or self.rounds < 1:
            raise ValueError("batches, steps and rounds must be positive")
        for config in self.resolved_configs():
            parse_config(config)

    def resolved_configs(self) -> tuple[str, ...]:
        """The configurations in order, each once, "reference" first (the oracle and the 1.0× of every ratio)."""
        configs = self.configs or default_configs(self.device)
        return tuple(dict.fromkeys(("reference", *configs)))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["batches"], d["configs"] = list(self.batches), (list(self.configs) if self.configs else None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchSettings":
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown BenchSettings field(s) {unknown}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "BenchSettings":
        return cls.from_dict(json.loads(text))


# -- environment ----------------------------------------------------------------------------------
def environment(device: torch.device | str) -> dict[str, str]:
    """What every CSV row records: date, versions, git SHA, device."""
    versions = {"torch": torch.__version__, "fastddpm": __version__, "python": platform.python_version()}
    for name in ("triton", "onnxruntime"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "none"
    flags = f"threads={torch.get_num_threads()} kernels={os.environ.get('FASTDDPM_KERNELS', 'auto')}"
    if os.environ.get("TRITON_INTERPRET") == "1":
        flags += " TRITON_INTERPRET=1"
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_sha": _git_sha(), "device": device_name(device), **versions, "flags": flags}


def _git_sha() -> str:
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


# -- measurement helpers ---------------------------------------------------------------------------
class _PeakMemory:
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
        self._base = self._peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self._base is not None:
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _rss_bytes() or 0)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            if self.visible:
                self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return False
        if self._base is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(0, max(self._peak, _rss_bytes() or 0) - self._base) / 2**20
        return False


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the matrix -------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Case:
    name: str
    build: Callable[[], Callable[[], torch.Tensor]]  # builds the run (sampler, export, session); may fail
    tolerance: float
    memory_visible: bool = True


def _load_preset(preset: Preset, device: torch.device):
    from .checkpoint import load
    from .diffusion import GaussianDiffusion
    from .unet import Unet

    if preset.unet is None:
        model, diffusion = load(device=device)
        return model, diffusion
    torch.manual_seed(0)  # weights: timing and equivalence do not need a trained model
    return Unet(**preset.unet).to(device).eval(), GaussianDiffusion(preset.timesteps)


def _tolerance(backend: str, precision: str) -> float:
    from .tolerances import FLOAT32_TRAJECTORY, LOW_PRECISION_TRAJECTORY, ONNX_RUNTIME_FLOAT32

    if precision == "fp32":
        return ONNX_RUNTIME_FLOAT32 if backend.startswith("onnxruntime") else FLOAT32_TRAJECTORY
    return LOW_PRECISION_TRAJECTORY[PRECISIONS[precision]]


def run_bench(settings: BenchSettings, out_dir: str | os.PathLike | None = None, *, progress: bool = True,
              log=print) -> list[dict[str, Any]]:
    """Run the matrix; returns the CSV rows (and writes the files when ``out_dir`` is given).

    Settings that cannot run at all (a device that is absent, more steps than the model's T) raise
    ValueError / RuntimeError; a configuration that cannot be built or run is reported in its row.
    """
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available here")
    # fp32 means fp32 on both sides of every check: TF32 convolutions and matmuls (cuDNN's default, and
    # ONNX Runtime's CUDA provider's) differ from float32 by ~1e-3.
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    workdir = Path(tempfile.mkdtemp(prefix="fastddpm-bench-"))
    try:
        rows, env = _run_matrix(settings, device, workdir, progress)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        shutil.rmtree(workdir, ignore_errors=True)
    table = format_table(rows, settings, env)
    log(table)
    if out_dir is not None:
        csv_path = write_outputs(rows, settings, table, out_dir)
        log(f"\nwrote {csv_path.name} (rows appended), bench.md, bench.png and settings.json to {out_dir}")
    return rows


def _run_matrix(settings: BenchSettings, device: torch.device, workdir: Path, progress: bool):
    from tqdm.auto import tqdm

    from .checkpoint import _first_line
    from .diffusion import GaussianDiffusion
    from .sampler import Sampler
    from .tolerances import relative_error

    preset = PRESETS[settings.preset]
    model, diffusion = _load_preset(preset, device)
    T = diffusion.num_timesteps
    size, channels = preset.image_size, preset.channels
    ancestral_chain = settings.method == "ddpm"
    # The chain the configurations sample: for "ddpm", a schedule of `steps` steps (all visited, the
    # reference's own update); otherwise the model's schedule with `steps` steps of the method.
    chain = GaussianDiffusion(settings.steps, diffusion.config.beta_schedule) if (
        ancestral_chain and settings.steps != T and isinstance(diffusion.config.beta_schedule, str)) else diffusion
    if ancestral_chain and chain is diffusion and settings.steps != T:
        raise ValueError("a custom beta schedule cannot be shortened; pass --steps equal to its T")
    if settings.steps > T:
        raise ValueError(f"--steps {settings.steps} exceeds the {settings.preset} model's T={T}")
    real_chain = chain is diffusion  # the images are the model's real samples
    # images/s counts whole samples: all T steps of the ancestral sampler, or the method's `steps`.
    sample_steps = T if ancestral_chain else settings.steps
    sampler_args = dict(method=settings.method, steps=None if ancestral_chain else settings.steps,
                        spacing=settings.spacing)
    reference_chain = chain if ancestral_chain else GaussianDiffusion(settings.steps)
    env = environment(device)
    configs = [(c, *parse_config(c)) for c in settings.resolved_configs()]
    exports: dict[str, Path] = {}
    rows: list[dict[str, Any]] = []
    total = len(settings.batches) * len(configs) * (1 + settings.rounds)
    bar = tqdm(total=total, desc="bench", disable=not progress, leave=False, file=sys.stderr)
    for batch in settings.batches:
        shape = (batch, channels, size, size)
        eager = Sampler(model, chain, backend="eager", **sampler_args)
        x_T, noise = (a.numpy() for a in eager.torch_noise(shape, settings.seed))

        def reference(shape=shape):
            torch.manual_seed(settings.seed)
            return torch.from_numpy(reference_chain.p_sample_loop(model, shape, progress=False)[-1])

        def torch_case(backend, precision, batch=batch):
            sampler = Sampler(model, chain, backend=backend, dtype=PRECISIONS[precision], **sampler_args)
            return lambda: sampler.sample(batch, size, channels, seed=settings.seed, progress=False, clip=False).cpu()

        cases: list[_Case] = []
        for name, backend, precision in configs:
            if backend == "reference":
                cases.append(_Case(name, lambda: reference, 0.0))
            elif backend.startswith("onnxruntime"):
                cases.append(_Case(name, functools.partial(_ort_case, backend, precision, model, chain, sampler_args,
                                                           size, device, exports, workdir, x_T, noise),
                                   _tolerance(backend, precision), memory_visible=device.type == "cpu"))
            else:
                cases.append(_Case(name, functools.partial(torch_case, backend, precision),
                                   _tolerance(backend, precision)))

        # 1. warm-up and equivalence
        expected = None if ancestral_chain else eager.sample(batch, size, channels, seed=settings.seed,
                                                             progress=False, clip=False).cpu()
        results: dict[str, dict[str, Any]] = {}
        runs: dict[str, Callable[[], torch.Tensor]] = {}
        for case in cases:
            try:  # a backend that cannot be built or run here is reported, not fatal
                start = time.perf_counter()
                runs[case.name] = case.build()
                with _PeakMemory(device, case.memory_visible) as memory:
                    out = runs[case.name]()
                    _sync(device)
                warmup = time.perf_counter() - start  # building (compile, export, session) and the first call
                if case.name != "reference" and expected is None:
                    raise RuntimeError("no oracle: the reference failed")
            except Exception as exc:
                results[case.name] = {"check": f"failed: {_first_line(exc)[:120]}"}
                bar.update(1 + settings.rounds)
                continue
            if case.name == "reference" and ancestral_chain:
                expected = out
            if case.name == "reference":
                check, error = "oracle" if ancestral_chain else "per-step cost only", 0.0
            else:
                error = relative_error(out.clamp(-1, 1), expected.clamp(-1, 1))
                check = (f"{error:.1e} ≤ {case.tolerance:.0e}" if error <= case.tolerance
                         else f"MISMATCH {error:.1e} > {case.tolerance:.0e}: not timed")
            quality = {}
            if preset.quality and real_chain and case.name != "reference":
                from .quality import digits_score

                quality = digits_score(out.clamp(-1, 1))
            results[case.name] = {"check": check, "error": error, "warmup_s": warmup, "times": [],
                                  "quality": quality, "peak_mb": memory.peak_mb}
            bar.update(1)

        # 2. timing, alternated
        timed = [c for c in cases if "times" in results[c.name] and not results[c.name]["check"].startswith("MISMATCH")]
        for _ in range(settings.rounds):
            for case in timed:
                result = results[case.name]
                if "times" not in result:  # failed in an earlier round
                    bar.update(1)
                    continue
                try:
                    start = time.perf_counter()
                    runs[case.name]()
                    _sync(device)
                    result["times"].append((time.perf_counter() - start) / settings.steps)
                except Exception as exc:
                    results[case.name] = {"check": f"failed while timed: {_first_line(exc)[:120]}"}
                bar.update(1)
        mismatched = sum(1 for c in cases if "times" in results[c.name]) - len(timed)
        bar.update(mismatched * settings.rounds)

        ref_times = results.get("reference", {}).get("times")
        ref_step = statistics.median(ref_times) if ref_times else None
        for case in cases:
            r = results[case.name]
            row = {**env, "bench": "sampler", "preset": settings.preset, "config": case.name, "batch": batch,
                   "method": settings.method, "steps": settings.steps, "spacing": settings.spacing,
                   "rounds": settings.rounds, "check": r["check"]}
            if r.get("times"):
                med = statistics.median(r["times"])
                row.update(
                    ms_per_step=round(med * 1e3, 3), ms_min=round(min(r["times"]) * 1e3, 3),
                    ms_max=round(max(r["times"]) * 1e3, 3), images_per_s=round(batch / (med * sample_steps), 3), sample_steps=sample_steps,
                    speedup_per_step=round(ref_step / med, 3) if ref_step else "",
                    vs_seed_sampler=(round(ref_step * T / (med * settings.steps), 2)
                                     if ref_step and (real_chain or not ancestral_chain) and case.name != "reference"
                                     else ""),
                    warmup_s=round(r["warmup_s"], 2),
                    peak_mb=round(r["peak_mb"], 1) if r["peak_mb"] is not None else "",
                    **{f"quality_{k}": v for k, v in r["quality"].items()},
                )
            rows.append(row)
    bar.close()
    return rows, env


def _ort_case(backend, precision, model, chain, sampler_args, size, device, exports, workdir, x_T, noise):
    from .onnx_export import export_onnx, export_onnx_sampler
    from .ort_sampler import CPU, CUDA, OrtSampler

    key = f"{backend}:{precision}"
    eps_key = f"eps:{precision}"
    if eps_key not in exports:
        exports[eps_key] = export_onnx(model, workdir / f"eps-{precision}.onnx", diffusion=chain, image_size=size,
                                       precision=precision)
    if backend == "onnxruntime-loop" and key not in exports:
        exports[key] = export_onnx_sampler(exports[eps_key], workdir / f"loop-{precision}.onnx", **sampler_args)
    path = exports[key] if backend == "onnxruntime-loop" else exports[eps_key]
    # fp32 means fp32: ORT's CUDA provider defaults to TF32 convolutions (~1e-3 off).
    providers = [(CUDA, {"use_tf32": 0}), CPU] if device.type == "cuda" else [CPU]
    settings = {} if backend == "onnxruntime-loop" else sampler_args
    sampler = OrtSampler(path, providers=providers, **settings)
    if sampler.device != device.type:
        raise RuntimeError(f"ONNX Runtime cannot run on {device} here")
    if backend == "onnxruntime-loop":
        return lambda: torch.from_numpy(sampler.sample(len(x_T), x_T=x_T, noise=noise))
    return lambda: torch.from_numpy(sampler.sample(len(x_T), x_T=x_T, noise=noise, progress=False, clip=False))


# -- output -----------------------------------------------------------------------------------------
_COLUMNS = [("config", "config"), ("batch", "batch"), ("ms_per_step", "ms/step"), ("spread", "min–max"),
            ("images_per_s", "images/s"), ("speedup_per_step", "speed-up/step"),
            ("vs_seed_sampler", "vs seed sampler"), ("warmup_s", "warm-up s"), ("peak_mb", "peak MB"),
            ("quality", "quality (confident / classes)"), ("check", "equivalence")]


def format_table(rows: list[dict], settings: BenchSettings, env: dict) -> str:
    preset = PRESETS[settings.preset]
    sample_steps = next((r["sample_steps"] for r in rows if "sample_steps" in r), settings.steps)
    lines = [f"{env['device']} · torch {env['torch']} · onnxruntime {env['onnxruntime']} · {preset.description} · "
             f"{settings.method}, {settings.steps} steps · {settings.rounds} rounds · git {env['git_sha']}", "",
             f"ms/step: median and min–max over the rounds; images/s: whole samples of {sample_steps} steps; "
             "warm-up: the first call (compile, capture, export + session); peak MB: CUDA allocator peak, or "
             "resident-set growth on CPU, during the first call; equivalence: error against the oracle ≤ tolerance.", "",
             "| " + " | ".join(h for _, h in _COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for row in rows:
        cells = []
        for key, _ in _COLUMNS:
            if key == "spread":
                value = f"{row['ms_min']:.1f}–{row['ms_max']:.1f}" if "ms_min" in row else ""
            elif key == "quality":
                value = (f"{row['quality_confident']:.2f} / {row['quality_classes']}" if "quality_confident" in row else "")
            elif key in ("speedup_per_step", "vs_seed_sampler") and row.get(key) not in (None, ""):
                value = f"{row[key]:.2f}×"
            elif key == "ms_per_step" and key in row:
                value = f"{row[key]:.1f}"
            else:
                value = str(row.get(key, ""))
            cells.append(value)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(rows: list[dict], settings: BenchSettings, table: str, out_dir: str | os.PathLike) -> Path:
    """Write bench.md, settings.json and bench.png, and append to bench.csv; returns the CSV's path."""
    from .fileio import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = append_csv(out / "bench.csv", rows)
    for name, text in (("bench.md", table + "\n"), ("settings.json", settings.to_json() + "\n")):
        with atomic_path(out / name) as tmp:
            tmp.write_text(text)
    save_chart(rows, out / "bench.png", title=table.splitlines()[0])
    return csv_path


def append_csv(path: Path, rows: list[dict]) -> Path:
    """Append rows (columns: the union of the rows' keys, sorted for a stable header); a file whose header
    differs is not mixed with: the rows go to a new file beside it, named by its header's hash."""
    import csv
    import hashlib

    fields = sorted({k for row in rows for k in row})
    if path.exists():
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != fields:
            path = path.with_name(f"{path.stem}-{hashlib.sha1(','.join(fields).encode()).hexdigest()[:8]}.csv")
    from .fileio import atomic_path

    previous = path.read_bytes() if path.exists() else b""
    with atomic_path(path) as tmp:  # the old rows and the new, or the old file untouched
        with open(tmp, "wb") as f:
            f.write(previous)
        with open(tmp, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            if not previous:
                writer.writeheader()
            writer.writerows(rows)
    return path


def save_chart(rows: list[dict], path: Path, title: str = "") -> None:
    """A horizontal bar chart of speed-up per step (the reference at 1.0×), one bar per row, as a PNG."""
    from PIL import Image, ImageDraw, ImageFont

    from .fileio import atomic_path

    timed = [r for r in rows if r.get("speedup_per_step") not in (None, "") and math.isfinite(float(r["speedup_per_step"]))]
    font = ImageFont.load_default()
    label_w, bar_w, row_h, top = 260, 460, 26, 60
    width, height = label_w + bar_w + 90, top + row_h * max(1, len(timed)) + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    parts = _ascii(title).split(" | ")  # device and versions on one line, the model and the run on the next
    draw.text((10, 4), " | ".join(parts[:3]), fill="black", font=font)
    draw.text((10, 18), " | ".join(parts[3:]), fill="black", font=font)
    draw.text((10, 34), "speed-up per step against the seed's reference loop (higher is faster)", fill="#444", font=font)
    scale = max([float(r["speedup_per_step"]) for r in timed] + [1.0]) * 1.05
    x0 = label_w
    for i, row in enumerate(timed):
        y = top + i * row_h
        value = float(row["speedup_per_step"])
        colour = "#999999" if row["config"] == "reference" else ("#2b7bb9" if value >= 1 else "#d95f02")
        draw.text((10, y + 6), f"{row['config']}, batch {row['batch']}", fill="black", font=font)
        draw.rectangle([x0, y + 4, x0 + int(bar_w * value / scale), y + row_h - 4], fill=colour)
        draw.text((x0 + int(bar_w * value / scale) + 6, y + 6), f"{value:.2f}x", fill="black", font=font)
    one = x0 + int(bar_w / scale)
    draw.line([one, top - 4, one, top + row_h * max(1, len(timed))], fill="black", width=1)
    draw.text((one - 10, top + row_h * max(1, len(timed)) + 4), "1.0x", fill="black", font=font)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _ascii(text: str) -> str:
    """Pillow's built-in font has no glyphs for ·, × or –."""
    return text.replace(" · ", " | ").replace("×", "x").replace("–", "-")
