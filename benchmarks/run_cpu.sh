#!/usr/bin/env bash
# The stored CPU results: every benchmark module, every size, timed, one JSON per module, from a
# committed clean tree only, so that each JSON's commit_info says "dirty": false and names the
# code that was timed. Run it on an otherwise idle machine, in the venv of the project:
#   bash benchmarks/run_cpu.sh                       # or BENCH_GROUPS="gmm ot" bash ... for some modules
#   BENCH_LABEL=b bash benchmarks/run_cpu.sh         # names the files cpu-...-<date>b-<group>.json (a second run that day)
# Writes benchmarks/results/cpu-<cores>core-<date>-<group>.json (cores: nproc) and prints how long
# each module took. Threads are left at the machine's default (all cores); machine_info in each
# JSON records torch's thread count, OMP_NUM_THREADS and the BLAS pools (benchmarks/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."

require_clean() {
  local changes
  changes="$(git status --porcelain)"
  if [ -n "$changes" ]; then
    echo "run_cpu.sh: the git tree is not clean ($1); commit or remove these first:" >&2
    echo "$changes" >&2
    exit 1
  fi
}

require_clean "before the run"
cores="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"  # nproc alone obeys OMP_NUM_THREADS
day="$(date +%Y-%m-%d)${BENCH_LABEL:-}"
# The JSONs are written outside the tree and moved in when the run ends (also when a later module
# fails: the finished ones are kept): a file written into benchmarks/results/ would make the tree
# that the next module checks unclean.
staging="$(mktemp -d)"
finished=()
keep_finished() {
  if [ "${#finished[@]}" -gt 0 ]; then
    mv "${finished[@]}" benchmarks/results/
    echo "kept in benchmarks/results/: ${finished[*]##*/}"
  fi
  rm -rf "$staging"
}
trap keep_finished EXIT
echo "commit $(git rev-parse --short HEAD), $cores cores, torch $(python -c 'import torch; print(torch.__version__, "with", torch.get_num_threads(), "threads")')"
total_start=$SECONDS
for group in ${BENCH_GROUPS:-mmd ot bures gmm attention decalign training}; do
  require_clean "before $group"
  json="$staging/cpu-${cores}core-$day-$group.json"
  start=$SECONDS
  python -m pytest -q -p no:cacheprovider "benchmarks/test_bench_$group.py" --full --benchmark-only \
    --benchmark-columns=median,min,max,rounds --benchmark-json="$json"
  python -c '
import json, sys
dirty = json.load(open(sys.argv[1]))["commit_info"].get("dirty")
if dirty is not False:
    sys.exit(sys.argv[1] + ": commit_info says dirty = " + repr(dirty) + "; not kept")
' "$json"
  finished+=("$json")
  echo "$group: $((SECONDS - start)) s"
done
echo "all: $((SECONDS - total_start)) s"
