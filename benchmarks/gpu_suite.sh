#!/usr/bin/env bash
# The one command for a lent GPU machine (run from the repository root):
#
#     bash benchmarks/gpu_suite.sh [OUT_DIR]        # default: $OUT, else gpu-results/
#
# Installs nothing from the network (the package itself goes into /tmp with --no-index --no-deps,
# using the machine's torch and triton), then runs the GPU-marked tests and the kernel tests on CUDA,
# the kernel benchmark, the sampler benchmark at batch 64 and 256 and the ONNX Runtime benchmark, writing every log and CSV into
# OUT_DIR and printing the tables last. Budget: under 9 minutes on an H100.
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

status=0
# -P: do not put the source folder on sys.path (the installed package maps kernels/ to fastddpm.kernels).
timeout 240 python3 -P -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_sampler.py tests/test_onnx.py -m "gpu or not slow" \
    2>&1 | tee "$out/tests.log" | tail -5 || status=1
timeout 120 python3 -P benchmarks/bench_kernels.py --out "$out/kernels.csv" 2>&1 | tee "$out/kernels.txt" || status=1
timeout 240 python3 -P benchmarks/bench_sampler.py --device cuda --batch 64 256 --rounds 5 --out "$out/sampler.csv" \
    2>&1 | tee "$out/sampler.txt" | grep -E "^\||^[A-Za-z].*batch|wrote|Error|error" || status=1
timeout 150 python3 -P benchmarks/bench_onnx.py --device cuda --batch 64 --rounds 3 --out "$out/onnx.csv" \
    2>&1 | tee "$out/onnx.txt" | grep -E "^\||^[A-Za-z].*batch|wrote|Error|error" || status=1
exit $status
