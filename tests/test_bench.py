"""`fastddpm bench`: settings and their JSON round-trip, equivalence checked before any number is reported,
the files it writes, and the CLI. (Nothing here asserts a speed: benchmarks show speed, tests do not.)"""

import csv
import importlib.util
import json

import pytest
from PIL import Image

from fastddpm.bench import matrix as bench
from fastddpm.bench import BenchSettings, parse_config, run_bench

from test_cli import assert_one_line_error, run_cli


def test_settings_round_trip_and_validation():
    settings = BenchSettings(preset="tiny", batches=(2, 4), configs=("eager:fp32", "onnxruntime:fp16"),
                             method="ddim", steps=7, rounds=2)
    assert BenchSettings.from_json(settings.to_json()) == settings
    assert settings.resolved_configs()[0] == "reference"  # the 1.0× of every ratio is always measured
    with pytest.raises(ValueError, match="unknown preset"):
        BenchSettings(preset="imagenet")
    with pytest.raises(ValueError, match="onnxruntime takes one of"):
        BenchSettings(configs=("onnxruntime:bf16",))
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        parse_config("tensorrt:fp32")
    with pytest.raises(ValueError, match="unknown BenchSettings field"):
        BenchSettings.from_dict({"preset": "tiny", "batch": 3})
    assert parse_config("eager") == ("eager", "fp32") and parse_config("reference") == ("reference", "fp32")
    assert BenchSettings(method="unipc").method == "unipc"  # every registered solver can be benchmarked
    # The oracle runs first whatever the order asked for, and each configuration once.
    assert BenchSettings(configs=("eager:fp32", "reference", "eager:fp32")).resolved_configs() == ("reference", "eager:fp32")


def test_run_writes_checked_rows_table_csv_and_chart(tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    # OpenVINO, when installed, shares the run's one ε-model export with ONNX Runtime.
    openvino = ("openvino:fp32",) if importlib.util.find_spec("openvino") else ()
    configs = ("eager:fp32", "eager:bf16", "onnxruntime-loop:fp32", *openvino)
    settings = BenchSettings(preset="tiny", batches=(2,), configs=configs, rounds=1, steps=4)
    lines = []
    rows = run_bench(settings, tmp_path, progress=False, log=lines.append)
    assert [r["config"] for r in rows] == ["reference", *configs]
    for row in rows:
        assert row["ms_per_step"] > 0 and row["images_per_s"] > 0 and row["git_sha"] and row["device"]
        assert row["check"] == "oracle" or "≤" in row["check"], row["check"]
    assert rows[0]["speedup_per_step"] == 1.0
    table = (tmp_path / "bench.md").read_text()
    assert table.strip() == lines[0].strip() and table.count("\n| ") == 2 + len(configs)  # header + rows
    assert rows[0]["sample_steps"] == 200  # images/s of the real sampler: all T steps of the tiny preset
    with open(tmp_path / "bench.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert [r["config"] for r in written] == [r["config"] for r in rows]
    assert json.loads((tmp_path / "settings.json").read_text()) == settings.to_dict()
    with Image.open(tmp_path / "bench.png") as chart:
        assert chart.format == "PNG" and chart.width > 400


def test_a_configuration_that_disagrees_is_not_timed(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "_tolerance", lambda backend, precision: -1.0)  # nothing can pass
    rows = run_bench(BenchSettings(preset="tiny", batches=(2,), configs=("eager:fp32",), rounds=1, steps=3),
                     None, progress=False, log=lambda text: None)
    reference, eager = rows
    assert "ms_per_step" in reference
    assert eager["check"].startswith("MISMATCH") and "ms_per_step" not in eager and "speedup_per_step" not in eager


def test_few_step_methods_are_checked_against_the_eager_sampler(tmp_path):
    rows = run_bench(BenchSettings(preset="tiny", batches=(2,), configs=("eager:bf16",), method="dpmsolver++",
                                   steps=5, rounds=1), None, progress=False, log=lambda text: None)
    assert rows[0]["check"] == "per-step cost only" and "≤" in rows[1]["check"]
    assert rows[1]["vs_seed_sampler"] > 0  # a whole sample against the seed's T-step sampler


def test_cli_bench(tmp_path):
    out = tmp_path / "results"
    result = run_cli("bench", "--config", "tiny", "--batch", "2", "--rounds", "1", "--steps", "3",
                     "--backends", "eager:fp32", "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "| reference |" in result.stdout and "| eager:fp32 |" in result.stdout
    assert {p.name for p in out.iterdir()} == {"bench.csv", "bench.md", "bench.png", "settings.json"}
    assert_one_line_error(run_cli("bench", "--backends", "eager:int8", "--out", str(out)), "eager takes one of")
    assert_one_line_error(run_cli("bench", "--device", "nonsense", "--out", str(out)), "device 'nonsense'")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a backend that cannot run without CUDA")
def test_a_configuration_that_cannot_run_is_reported_not_fatal(tmp_path):
    rows = run_bench(BenchSettings(preset="tiny", batches=(2,), configs=("cudagraph:fp32", "eager:fp32"), rounds=1,
                                   steps=3), tmp_path, progress=False, log=lambda text: None)
    failed = next(r for r in rows if r["config"] == "cudagraph:fp32")
    assert failed["check"].startswith("failed: backend 'cudagraph' needs a CUDA device") and "ms_per_step" not in failed
    assert next(r for r in rows if r["config"] == "eager:fp32")["ms_per_step"] > 0
    with Image.open(tmp_path / "bench.png") as chart:
        assert chart.format == "PNG"


def test_a_configuration_whose_extra_is_missing_is_skipped_with_the_install_line(monkeypatch):
    find_spec = bench.importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec",
                        lambda name, *args: None if name == "onnxruntime" else find_spec(name, *args))
    rows = run_bench(BenchSettings(preset="tiny", batches=(2,), configs=("eager:fp32", "onnxruntime:fp32",
                                                                         "onnxruntime-loop:fp32"), rounds=1, steps=3),
                     None, progress=False, log=lambda text: None)
    skipped = [r for r in rows if r["config"].startswith("onnxruntime")]
    assert len(skipped) == 2
    for row in skipped:
        assert row["check"] == "skipped: needs onnxruntime: pip install 'fastddpm[onnx]'" and "ms_per_step" not in row
    assert next(r for r in rows if r["config"] == "eager:fp32")["ms_per_step"] > 0


def test_openvino_precisions_are_checked():  # its timed row is in test_run_writes_checked_rows_table_csv_and_chart
    with pytest.raises(ValueError, match="openvino takes one of"):
        BenchSettings(configs=("openvino:fp16",))


def test_onnxruntime_without_its_cuda_provider_is_skipped_on_cuda(monkeypatch):
    import torch

    onnxruntime = pytest.importorskip("onnxruntime")

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert bench._missing_extra("onnxruntime", torch.device("cuda")) == (
        "ONNX Runtime has no CUDA provider here: pip install onnxruntime-gpu")
    assert bench._missing_extra("onnxruntime", torch.device("cpu")) == ""
    assert bench._missing_extra("eager", torch.device("cuda")) == ""


def test_an_explicit_git_sha_names_the_rows(monkeypatch):
    from fastddpm.bench.probes import git_sha

    monkeypatch.setenv("FASTDDPM_GIT_SHA", "abc1234")
    assert git_sha() == "abc1234"
    monkeypatch.delenv("FASTDDPM_GIT_SHA")
    assert git_sha() != "abc1234"
