#!/usr/bin/env bash
# The one command for a lent GPU machine (run from the repository root):
#
#     bash benchmarks/gpu_suite.sh [OUT_DIR]        # default: $OUT, else gpu-results/
#
# Where the machine gets a copy of the checkout without its .git, name the commit for the CSV rows:
# FASTDDPM_GIT_SHA=<short sha> bash benchmarks/gpu_suite.sh.
#
# Installs nothing from the network (the package itself goes into /tmp with --no-index --no-deps,
# using the machine's torch and triton), then runs the GPU-marked tests and the kernel, sampler and ONNX
# tests on CUDA, the kernel benchmark and `fastddpm bench` (every backend and precision, batch 64 and
# 256), writing every log, CSV and chart into OUT_DIR. Budget: the limits below add to 9 minutes (a device
# command may run 10); a run takes less. The device tool brings back 8 files at most: tar OUT_DIR there.
set -uo pipefail
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
site=/tmp/fastddpm-site
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" . >"$out/install.log" 2>&1 \
    || { echo "gpu_suite: installing fastddpm failed (see $out/install.log)"; exit 1; }
export PYTHONPATH="$site"
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
    | tee "$out/versions.txt"
python3 -m pip list 2>/dev/null | grep -iE "^(torch|triton|onnx|onnxruntime|onnxscript|numpy|safetensors|diffusers|openvino) " \
    >>"$out/versions.txt"

# Per-test limit where pytest-timeout is installed: one hung test (a graph capture, say) must not eat the
# whole budget. -v names each test in tests.log as it runs, so a run cut by `timeout` still says where.
per_test=""
python3 -c "import pytest_timeout" 2>/dev/null && per_test="--timeout=60"

status=0
# -P: do not put the source folder on sys.path (the installed package maps kernels/ to fastddpm.kernels).
timeout 180 python3 -P -m pytest -v -p no:cacheprovider $per_test --durations=15 tests/test_kernels.py tests/test_sampler.py tests/test_onnx.py -m "gpu or not slow" \
    2>&1 | tee "$out/tests.log" | tail -5 || status=1
timeout 40 python3 -P benchmarks/bench_kernels.py --out "$out/kernels.csv" 2>&1 | tee "$out/kernels.txt" || status=1
# The matrix without torch.compile at batch 64 and 256, then compile alone at batch 64 (its compile time is
# CPU-bound: kept apart so that a slow compile cannot starve the rest of the budget).
timeout 110 python3 -P -m fastddpm bench --device cuda --batch 64 256 --rounds 5 --no-progress --out "$out/bench" \
    --backends eager:fp32 eager:bf16 cudagraph:fp32 cudagraph:bf16 onnxruntime:fp32 onnxruntime:fp16 onnxruntime-loop:fp32 \
    2>&1 | tee "$out/bench.txt" | grep -E "^\||·|wrote|Error|error" || status=1
timeout 100 python3 -P -m fastddpm bench --device cuda --batch 64 --rounds 5 --no-progress --out "$out/bench-compile" \
    --backends eager:fp32 compile:fp32 compile:bf16 cudagraph:bf16 \
    2>&1 | tee "$out/bench-compile.txt" | grep -E "^\||·|wrote|Error|error" || status=1
# The README's main job on the GPU (one batch: auto runs eager), and the 1000-step ancestral sampler, timed
# end to end.
for args in "" "--method ddpm"; do
    name=samples${args:+-ddpm}
    start=$(date +%s.%N)
    timeout 30 python3 -P -m fastddpm sample --device cuda --no-progress $args --out "$out/$name.png" \
        2>&1 | tee -a "$out/sample.txt" || status=1
    echo "$name: $(python3 -c "import time; print(f'{time.time() - $start:.2f}')") s wall, process start to exit" | tee -a "$out/sample.txt"
done
# First and repeated samples per backend in one process (capture and first-call costs; see docs/sampling.md).
timeout 50 python3 -P benchmarks/bench_cuda_first_sample.py --repeats 2 --out "$out/first-sample.csv" \
    2>&1 | tee "$out/first-sample.txt" || status=1
exit $status
