"""Ahead-of-time compilation of every kernel for real NVIDIA GPUs, on any machine (no GPU needed).

``compile_report(arch)`` builds each kernel with ``triton.compile(ASTSource(...), target=GPUTarget("cuda",
arch, 32))`` down to PTX and cubin, then asks the bundled ``ptxas -v`` for registers and spills. Run it in
a process without ``TRITON_INTERPRET`` (interpreted kernels have no AST to compile)::

    python -m fastddpm.kernels.aot 90
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["KernelBuild", "builds", "compile_report"]

_TT = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}


@dataclasses.dataclass(frozen=True)
class KernelBuild:
    name: str  # e.g. "q_sample[bf16]"
    kernel: object  # the triton.jit function
    signature: dict  # argument name -> Triton type ("*fp32", "i32", "constexpr", ...)
    constexprs: dict
    aligned: tuple  # argument names specialised as divisible by 16 (pointers, per-sample sizes)
    elementwise: bool  # streaming kernels must use 128-bit global memory accesses
    num_warps: int = 4


def builds() -> list[KernelBuild]:
    # The kernel modules import Triton: only when an ahead-of-time build is asked for.
    from .ddpm_step.fused import BLOCK as STEP_BLOCK
    from .ddpm_step.fused import _ddpm_step_kernel
    from .linear_attention.fused import _linear_attention_kernel, launch_config
    from .linear_step.fused import BLOCK as LINEAR_BLOCK
    from .linear_step.fused import _linear_step_kernel
    from .multistep_update.fused import BLOCK as MULTISTEP_BLOCK
    from .multistep_update.fused import _multistep_update_kernel
    from .noise.fused import BLOCK as NOISE_BLOCK
    from .noise.fused import _randn_philox_kernel
    from .q_sample.fused import BLOCK as Q_BLOCK
    from .q_sample.fused import _q_sample_kernel

    out = []
    for dt in ("fp32", "bf16"):
        out.append(KernelBuild(
            f"q_sample[{dt}]", _q_sample_kernel,
            {"out_ptr": _TT[dt], "x_ptr": _TT[dt], "noise_ptr": _TT[dt], "t_ptr": "*i64", "sqrt_ac_ptr": "*fp32",
             "sqrt_1mac_ptr": "*fp32", "numel_per_sample": "i32", "BLOCK": "constexpr"},
            {"BLOCK": Q_BLOCK}, ("out_ptr", "x_ptr", "noise_ptr", "numel_per_sample"), True))
        for from_seeds in (False, True):
            out.append(KernelBuild(
                f"ddpm_step[{dt},{'philox' if from_seeds else 'given-noise'}]", _ddpm_step_kernel,
                {"out_ptr": "*fp32", "x_ptr": "*fp32", "eps_ptr": _TT[dt], "noise_ptr": "*fp32", "seeds_ptr": "*i64",
                 "t_ptr": "*i64", "table_ptr": "*fp32", "numel_per_sample": "i32", "num_steps": "i32",
                 "NOISE_FROM_SEEDS": "constexpr", "BLOCK": "constexpr"},
                {"NOISE_FROM_SEEDS": from_seeds, "BLOCK": STEP_BLOCK},
                ("out_ptr", "x_ptr", "eps_ptr", "noise_ptr", "numel_per_sample"), True))
        for from_seeds in (False, True):
            out.append(KernelBuild(
                f"linear_step[{dt},{'philox' if from_seeds else 'given-noise'}]", _linear_step_kernel,
                {"out_ptr": "*fp32", "x_ptr": "*fp32", "eps_ptr": _TT[dt], "noise_ptr": "*fp32", "seeds_ptr": "*i64",
                 "k_ptr": "*i64", "t_ptr": "*i64", "coefs_ptr": "*fp32", "numel_per_sample": "i32", "num_steps": "i32",
                 "NOISE_FROM_SEEDS": "constexpr", "BLOCK": "constexpr"},
                {"NOISE_FROM_SEEDS": from_seeds, "BLOCK": LINEAR_BLOCK},
                ("out_ptr", "x_ptr", "eps_ptr", "noise_ptr", "numel_per_sample"), True))
        for histories in (1, 2, 3):  # DPM-Solver++ 2M / 3M (and UniPC 2), UniPC 3
            out.append(KernelBuild(
                f"multistep_update[{dt},histories={histories}]", _multistep_update_kernel,
                {"out_ptr": "*fp32", "x0_out_ptr": "*fp32", "x_ptr": "*fp32", "eps_ptr": _TT[dt],
                 "h1_ptr": "*fp32", "h2_ptr": "*fp32", "h3_ptr": "*fp32", "k_ptr": "*i64", "coefs_ptr": "*fp32",
                 "numel_per_sample": "i32", "num_steps": "i32", "HISTORIES": "constexpr", "BLOCK": "constexpr"},
                {"HISTORIES": histories, "BLOCK": MULTISTEP_BLOCK},
                ("out_ptr", "x0_out_ptr", "x_ptr", "eps_ptr", "h1_ptr", "h2_ptr", "h3_ptr", "numel_per_sample"),
                True))
    out.append(KernelBuild(
        "randn_philox", _randn_philox_kernel,
        {"out_ptr": "*fp32", "seeds_ptr": "*i64", "steps_ptr": "*i64", "numel_per_sample": "i32", "BLOCK": "constexpr"},
        {"BLOCK": NOISE_BLOCK}, ("out_ptr", "numel_per_sample"), True))
    for dt in ("fp32", "bf16"):
        for d in (32, 64):
            cfg = launch_config(d)
            out.append(KernelBuild(
                f"linear_attention[{dt},D={d}]", _linear_attention_kernel,
                {"out_ptr": _TT[dt], "qkv_ptr": _TT[dt], "num_positions": "i32", "scale": "fp32",
                 "HEADS": "constexpr", "D": "constexpr", "BLOCK_N": "constexpr"},
                {"HEADS": 4, "D": d, "BLOCK_N": cfg["BLOCK_N"]}, ("out_ptr", "qkv_ptr"), False, cfg["num_warps"]))
    return out


def _ptxas_usage(ptx: str, arch: int) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    target = re.search(r"^\.target\s+(sm_\w+)", ptx, re.M)  # sm_90a for Hopper: its wgmma/TMA variant
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        result = subprocess.run(
            [get_ptxas(arch).path, f"-arch={target.group(1) if target else f'sm_{arch}'}", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
            capture_output=True, text=True, check=True,
        )
    text = result.stdout + result.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return {
        "registers": int(regs.group(1)) if regs else None,
        "spill_stores": int(spills.group(1)) if spills else None,
        "spill_loads": int(spills.group(2)) if spills else None,
    }


def compile_report(arch: int) -> list[dict]:
    """Compile every kernel for sm_<arch>; one dict per build with PTX facts and register use."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    rows = []
    for build in builds():
        names = list(build.signature)
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in build.aligned}
        source = ASTSource(fn=build.kernel, signature=build.signature, constexprs=build.constexprs, attrs=attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": build.num_warps})
        ptx = compiled.asm["ptx"]
        rows.append({
            "kernel": build.name,
            "arch": f"sm_{arch}",
            "elementwise": build.elementwise,
            "ld_global_v4": "ld.global.v4" in ptx,
            "st_global_v4": "st.global.v4" in ptx,
            "cubin_bytes": len(compiled.asm["cubin"]),
            **_ptxas_usage(ptx, arch),
        })
    return rows


if __name__ == "__main__":
    archs = [int(a) for a in sys.argv[1:]] or [80, 90]
    print(json.dumps([row for arch in archs for row in compile_report(arch)], indent=1))
