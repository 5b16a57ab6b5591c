#!/usr/bin/env bash
# One prepared command for a lent GPU machine (no network there: everything comes from the
# carried virtual environment). Runs the GPU tests and the full benchmark suite on CUDA, and
# leaves the JSON (named after the device) in $OUT, or in benchmarks/results/ when $OUT is unset.
#   bash benchmarks/run_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
device="$(python -c 'import torch; print(torch.cuda.get_device_name(0).replace(" ", "-"))')"
stamp="$(date +%Y-%m-%d)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu-$device-$stamp.txt"
python -m pytest -q tests/gpu tests/core/test_backends.py 2>&1 | tail -n 5 | tee -a "$out/gpu-$device-$stamp.txt"
python -m pytest benchmarks/ --full --device cuda --benchmark-only --benchmark-json="$out/gpu-$device-$stamp.json" -q 2>&1 | tail -n 40 | tee -a "$out/gpu-$device-$stamp.txt"
