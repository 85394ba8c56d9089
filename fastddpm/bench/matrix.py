"""``fastddpm bench``: the benchmark matrix — every backend and precision against the reference loop.

For one model preset, each batch size and each configuration ("reference" or "backend:precision"):

1. **Equivalence first.** Every configuration samples once with the same noise as its oracle and is
   compared within the tolerance table's bound for its precision (``fastddpm.tolerances``): for the
   ancestral "ddpm" method the oracle is the reference's own loop (``GaussianDiffusion.p_sample_loop``); for
   the few-step methods ("ddim", "dpmsolver++", "unipc") it is the eager float32 sampler of the same
   method (itself tested against diffusers and the solvers' float64 references). A configuration that
   disagrees is reported as such and never timed. This first call is also the warm-up (torch.compile,
   CUDA-graph capture, ONNX export + session), reported apart.
2. **Timing**, alternated round by round (drift on a shared machine hits every configuration alike):
   ms per step (median, min–max), images/s, speed-up per step against the reference loop, peak memory
   (CUDA: allocator peak; CPU: resident-set growth, sampled), and for the trained digits preset a quality
   proxy of the samples (``fastddpm.eval.quality``).

Per-step cost does not depend on T, so "ddpm" with fewer ``steps`` than the model's T times a chain of
``steps`` steps (a schedule of that length); the few-step methods run the model's real schedule, and
their "vs reference sampler" column (CSV key vs_seed_sampler, kept for older files) compares a whole sample against the reference sampling all T steps.
Results (``report``): a markdown table on stdout, and in ``out_dir``: ``bench.csv`` (rows appended, with
versions, git SHA, device and flags — ``probes``), ``bench.md``, ``bench.png`` (a chart) and ``settings.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..eval.quality import digits_score
from ..io.checkpoint import _first_line, load
from ..onnx import CPU, CUDA, OrtSampler, export_onnx, export_onnx_sampler
from ..onnx.openvino import OpenVinoEpsModel
from ..reference.diffusion import GaussianDiffusion
from ..reference.unet import Unet
from ..sampling.sampler import Sampler
from ..tolerances import (FLOAT32_TRAJECTORY, LOW_PRECISION_TRAJECTORY, ONNX_RUNTIME_FLOAT32, OPENVINO_FLOAT32,
                          relative_error)
from .probes import PeakMemory, environment, sync
from .report import format_table, write_outputs
from .settings import OPENVINO, ORT_BACKENDS, PRECISIONS, PRESETS, BenchSettings, Preset, parse_config

__all__ = ["run_bench"]


# -- the matrix -------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Case:
    name: str
    build: Callable[[], Callable[[], torch.Tensor]]  # builds the run (sampler, export, session); may fail
    tolerance: float
    memory_visible: bool = True
    skip: str = ""  # why it is not run at all (an optional extra that is not installed)


# The modules each optional backend needs, and the extra that installs them.
_EXTRAS = {**{backend: (("onnx", "onnxscript", "onnxruntime"), "onnx") for backend in ORT_BACKENDS},
           OPENVINO: (("onnx", "onnxscript", "openvino"), "openvino")}


def _missing_extra(backend: str, device: torch.device) -> str:
    """An empty string when ``backend`` can be tried here, else what to install (a skipped row, not a failure)."""
    modules, extra = _EXTRAS.get(backend, ((), ""))
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        return f"needs {', '.join(missing)}: pip install 'fastddpm[{extra}]'"
    if backend in ORT_BACKENDS and device.type == "cuda":  # the CPU-only package cannot run there
        try:
            import onnxruntime as ort

            providers = ort.get_available_providers()
        except Exception as exc:  # found but broken: this row is skipped, not the whole matrix
            return f"onnxruntime does not import: {_first_line(exc)[:100]}"
        if CUDA not in providers:
            return "ONNX Runtime has no CUDA provider here: pip install onnxruntime-gpu"
    return ""


def _load_preset(preset: Preset, device: torch.device):
    if preset.unet is None:
        model, diffusion = load(device=device)
        return model, diffusion
    torch.manual_seed(0)  # weights: timing and equivalence do not need a trained model
    return Unet(**preset.unet).to(device).eval(), GaussianDiffusion(preset.timesteps)


def _tolerance(backend: str, precision: str) -> float:
    if precision == "fp32":
        return (ONNX_RUNTIME_FLOAT32 if backend in ORT_BACKENDS else OPENVINO_FLOAT32 if backend == OPENVINO
                else FLOAT32_TRAJECTORY)
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
            elif backend in ORT_BACKENDS:
                cases.append(_Case(name, functools.partial(_ort_case, backend, precision, model, chain, sampler_args,
                                                           size, device, exports, workdir, x_T, noise),
                                   _tolerance(backend, precision), memory_visible=device.type == "cpu",
                                   skip=_missing_extra(backend, device)))
            elif backend == OPENVINO:
                cases.append(_Case(name, functools.partial(_openvino_case, precision, model, chain, sampler_args, size,
                                                           channels, batch, settings.seed, device, exports, workdir),
                                   _tolerance(backend, precision), memory_visible=False,
                                   skip=_missing_extra(backend, device)))
            else:
                cases.append(_Case(name, functools.partial(torch_case, backend, precision),
                                   _tolerance(backend, precision)))

        # 1. warm-up and equivalence
        expected = None if ancestral_chain else eager.sample(batch, size, channels, seed=settings.seed,
                                                             progress=False, clip=False).cpu()
        results: dict[str, dict[str, Any]] = {}
        runs: dict[str, Callable[[], torch.Tensor]] = {}
        for case in cases:
            if case.skip:
                results[case.name] = {"check": f"skipped: {case.skip}"}
                bar.update(1 + settings.rounds)
                continue
            try:  # a backend that cannot be built or run here is reported, not fatal
                start = time.perf_counter()
                runs[case.name] = case.build()
                with PeakMemory(device, case.memory_visible) as memory:
                    out = runs[case.name]()
                    sync(device)
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
                    sync(device)
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


def _openvino_case(precision, model, chain, sampler_args, size, channels, batch, seed, device, exports, workdir):
    if device.type != "cpu":
        raise RuntimeError("OpenVINO runs on the CPU: use --device cpu")
    if "eps:fp32" not in exports:
        exports["eps:fp32"] = export_onnx(model, workdir / "eps-fp32.onnx", diffusion=chain, image_size=size)
    eps_model = OpenVinoEpsModel(exports["eps:fp32"], precision=precision)
    sampler = Sampler(eps_model, chain, backend="eager", **sampler_args)  # the loop and update: torch, fp32
    return lambda: sampler.sample(batch, size, channels, seed=seed, progress=False, clip=False).cpu()
