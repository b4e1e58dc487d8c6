#!/usr/bin/env bash
# Runs every CUDA test binary (cuda_*_test) on a GPU machine and prints one summary line per binary plus
# a total. Usage: tools/cuda_smoke.sh [BIN_DIR]  (default: $ADORE_BUILD_DIR, else build-cuda/, else build/).
# The engine test needs the model (tools/fetch-model.sh, or $ADORE_MODEL); without it those tests skip.
# Exit status: 0 when nothing failed, 1 otherwise. Full logs go to $ADORE_SMOKE_LOGS (default a temp dir).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin_dir=${1:-${ADORE_BUILD_DIR:-}}
if [ -z "$bin_dir" ]; then
  for d in "$root/build-cuda" "$root/build"; do
    if compgen -G "$d/cuda_*_test" > /dev/null; then bin_dir=$d; break; fi
  done
fi
if [ -z "$bin_dir" ] || ! compgen -G "$bin_dir/cuda_*_test" > /dev/null; then
  echo "cuda_smoke: no cuda_*_test binaries found (pass the directory holding them)" >&2
  exit 2
fi
# Shared libraries bundled next to the binaries (absl, cuBLAS, ...) take precedence when present.
if [ -d "$bin_dir/lib" ]; then export LD_LIBRARY_PATH="$bin_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
export ADORE_SOURCE_DIR=${ADORE_SOURCE_DIR:-$root}
if [ -z "${ADORE_MODEL:-}" ] && [ -f "$root/models/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  export ADORE_MODEL="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
fi
logs=${ADORE_SMOKE_LOGS:-$(mktemp -d -t adore-cuda-smoke.XXXXXX)}
mkdir -p "$logs"

if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader | sed 's/^/gpu: /'
fi
echo "binaries: $bin_dir   logs: $logs   model: ${ADORE_MODEL:-none}"

total_pass=0 total_fail=0 total_skip=0 bad=0
printf '%-34s %6s %6s %6s %8s  %s\n' binary passed failed skipped seconds status
for bin in "$bin_dir"/cuda_*_test; do
  name=$(basename "$bin")
  log="$logs/$name.log"
  start=$(date +%s.%N)
  "$bin" --gtest_color=no > "$log" 2>&1
  rc=$?
  secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
  pass=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
  fail=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
  skip=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
  pass=${pass:-0} fail=${fail:-0} skip=${skip:-0}
  status=ok
  if [ "$rc" -ne 0 ]; then
    status="FAIL (exit $rc)"
    bad=1
    [ "$fail" -eq 0 ] && fail=1  # crashed before gtest's summary
  fi
  total_pass=$((total_pass + pass)) total_fail=$((total_fail + fail)) total_skip=$((total_skip + skip))
  printf '%-34s %6s %6s %6s %8s  %s\n' "$name" "$pass" "$fail" "$skip" "$secs" "$status"
  if [ "$rc" -ne 0 ]; then
    grep -E '^\[  FAILED  \]|Failure|error' "$log" | head -20 | sed 's/^/    /'
  fi
  # Measurements the tests print (logit agreement, greedy matches, timings).
  grep -E '^(text [0-9]+:|prompt [0-9]+ |Llama-|positions )' "$log" | sed 's/^/    /'
done
echo "total: $total_pass passed, $total_fail failed, $total_skip skipped"
if [ "$total_skip" -gt 0 ]; then
  grep -h -A1 ': Skipped$' "$logs"/*.log | grep -v -e ': Skipped$' -e '^--$' | sort | uniq -c | head -5 |
    sed 's/^/skip reason: /'
fi
exit $bad
