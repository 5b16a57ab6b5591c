#!/usr/bin/env bash
# One prepared command for a lent GPU machine, which has no network: it uses that machine's python3
# (a CUDA build of torch) and installs what it lacks from wheels carried in .whl/ (see README.md
# here for how to fetch them). Runs the GPU tests, then the full benchmark suite on CUDA, one JSON
# per group, into $OUT (or benchmarks/results/ when $OUT is unset), named after the device.
#   bash benchmarks/run_gpu.sh                      # or BENCH_GROUPS="mmd ot" bash ... for some groups,
#                                                   # BENCH_LABEL=b to keep a second run of the day apart
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# A device tool that copies the working tree but keeps the repository of an earlier commit makes
# every result say "dirty". With `git bundle create .whl/alignkit.bundle HEAD` made just before the
# run, HEAD moves to the commit the tree was made from, so that pytest-benchmark records that
# commit, and "dirty": false only where the tree equals it.
if [ -f .whl/alignkit.bundle ]; then
  git fetch -q .whl/alignkit.bundle HEAD && git reset -q FETCH_HEAD || exit 1
fi
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/alignkit-site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/alignkit-site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
# KeOps 2.3's NVRTC binder crashed with CUDA 13.0 (H100, H200) inside the C++ library that the
# process had loaded first; with the system's libstdc++ (the one its binder was built with) first,
# it runs (benchmarks/README.md, "KeOps on a GPU").
if command -v g++ > /dev/null; then
  export LD_PRELOAD="$(g++ -print-file-name=libstdc++.so.6)"
fi
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
device="$(python3 -c 'import torch; print(torch.cuda.get_device_name(0).replace(" ", "-"))')" || exit 1
name="gpu-$device-$(date +%Y-%m-%d)${BENCH_LABEL:-}"  # BENCH_LABEL: a second run in a day
log="$out/$name.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$log"
{ echo "commit $(git rev-parse HEAD 2>/dev/null); uncommitted changes:"; git status --short 2>&1 | head -n 5; echo "LD_PRELOAD=${LD_PRELOAD:-}"; } >> "$log"
python3 -c 'import torch, pykeops; print("torch", torch.__version__, "cuda", torch.version.cuda, "pykeops", pykeops.__version__)' >> "$log" 2>&1
# Each step has its own time limit, so that one slow group cannot take the others' results with it.
timeout 300 python3 -c 'from alignkit.kernels.backends.keops import unavailable_reason as r; print("KeOps on CUDA:", r("cuda") or "runs")' 2>&1 | tee -a "$log"
timeout 200 python3 -m pytest -q -rs -p no:cacheprovider tests/gpu 2>&1 | tee -a "$log" | tail -n 15
for group in ${BENCH_GROUPS:-mmd training gmm bures ot decalign attention}; do
  timeout 200 python3 -m pytest -q -p no:cacheprovider "benchmarks/test_bench_$group.py" --full --device cuda \
    --benchmark-only --benchmark-columns=median,min,max,rounds --benchmark-json="$out/$name-$group.json" 2>&1 \
    | tee -a "$log" | tail -n 30
done
