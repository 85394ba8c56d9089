"""Every Triton kernel compiles ahead of time for real GPUs (sm_80, sm_90) on this CPU-only machine."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def aot_report():
    # A fresh process without TRITON_INTERPRET: interpreted kernels have no AST to compile.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "fastddpm.kernels.aot", "80", "90"], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_triton_kernels_compile_for_sm80_and_sm90(aot_report, capsys):
    from fastddpm.kernels.aot import builds

    expected = {b.name for b in builds()}
    for arch in ("sm_80", "sm_90"):
        assert {row["kernel"] for row in aot_report if row["arch"] == arch} == expected
    assert all(row["cubin_bytes"] > 0 for row in aot_report)
    with capsys.disabled():  # the register report, shown in the test log
        print("\nkernel AOT report (ptxas -v): arch, kernel, registers, spill stores/loads, 128-bit ld/st")
        for row in aot_report:
            print(f"  {row['arch']} {row['kernel']:<34} regs={row['registers']:>3} spills={row['spill_stores']}/"
                  f"{row['spill_loads']} ld.v4={row['ld_global_v4']} st.v4={row['st_global_v4']}")


def test_elementwise_kernels_use_128_bit_global_accesses(aot_report):
    for row in aot_report:
        if not row["elementwise"]:
            continue
        assert row["st_global_v4"], row
        if not row["kernel"].startswith("randn_philox"):  # the noise kernel reads no per-element input
            assert row["ld_global_v4"], row


def test_triton_kernels_do_not_spill(aot_report):
    for row in aot_report:
        assert row["registers"] is not None and row["registers"] <= 255, row
        assert row["spill_stores"] == 0 and row["spill_loads"] == 0, row
