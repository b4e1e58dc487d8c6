#!/usr/bin/env bash
# Every plotting script in bench/ redraws its PNG from the committed results JSON (bench/results/*.json)
# without re-running a benchmark: the JSONs are copied into a temp dir, each script's plot-only mode runs
# on the copy, and each output must be a PNG (signature \x89PNG\r\n\x1a\n) larger than 10 kB.
# Needs matplotlib (tools/setup.sh installs python3-matplotlib); a missing matplotlib fails the test.
# Run from anywhere: bash tests/bench/plots_test.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
results="$root/bench/results"
min_bytes=10240

fail() {
  echo "bench_plots: FAIL: $*" >&2
  exit 1
}

# The first Python that has matplotlib: python3 on PATH, else the system one that tools/setup.sh equips (a
# PATH python3 from pyenv or a venv may lack it).
py=""
for candidate in python3 /usr/bin/python3; do
  if "$candidate" -c 'import matplotlib' 2>/dev/null; then py="$candidate"; break; fi
done
[ -n "$py" ] ||
  fail "no python3 can import matplotlib: install python3-matplotlib (tools/setup.sh installs it) or pip install matplotlib"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/bench_plots.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
export MPLBACKEND=Agg PYTHONDONTWRITEBYTECODE=1

for j in cpu_decode cuda_decode quality scaling scaling_adore; do
  [ -f "$results/$j.json" ] || fail "missing committed results file bench/results/$j.json"
  cp "$results/$j.json" "$tmp/$j.json"
  # A plot drawn from no rows is an empty-axes PNG that would pass the size check: require rows.
  python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert isinstance(d.get("rows"), list) and d["rows"]' \
    "$tmp/$j.json" 2>/dev/null || fail "bench/results/$j.json is not JSON with a non-empty \"rows\" list"
done

# check_png NAME PNG LOG: the script's output PNG exists, has the PNG signature and is larger than min_bytes.
check_png() {
  local name="$1" png="$2" log="$3" size sig
  if [ ! -f "$png" ]; then
    cat "$log" >&2
    fail "$name: no PNG written at $png"
  fi
  size=$(stat -c %s "$png")
  sig=$(head -c 8 "$png" | od -An -tx1 | tr -d ' \n')
  [ "$sig" = "89504e470d0a1a0a" ] || { cat "$log" >&2; fail "$name: $png is not a PNG (first bytes: $sig)"; }
  [ "$size" -gt "$min_bytes" ] || { cat "$log" >&2; fail "$name: $png is only $size bytes (want > $min_bytes)"; }
  echo "bench_plots: ok: $name -> $(basename "$png") ($size bytes)"
}

# run_plot NAME PNG CMD...: runs CMD (a plot-only invocation), failing on a non-zero exit, then checks PNG.
run_plot() {
  local name="$1" png="$2" log="$tmp/$1.log"
  shift 2
  if ! (cd "$root" && "$@") >"$log" 2>&1; then
    cat "$log" >&2
    fail "$name: '$*' exited non-zero"
  fi
  check_png "$name" "$png" "$log"
}

run_plot cpu_decode "$tmp/cpu_decode.png" \
  "$py" bench/cpu_decode.py --plot-only "$tmp/cpu_decode.json" --png "$tmp/cpu_decode.png"
run_plot cuda_decode "$tmp/cuda_decode.png" \
  "$py" bench/cuda_decode.py --plot-only "$tmp/cuda_decode.json"
run_plot score_quality "$tmp/quality.png" \
  "$py" bench/score_quality.py --plot-only "$tmp/quality.json" --png "$tmp/quality.png"
run_plot scaling "$tmp/scaling.png" \
  "$py" bench/scaling.py --plot "$tmp/scaling.json"
run_plot scaling_adore "$tmp/scaling_adore.png" \
  "$py" bench/scaling.py --plot "$tmp/scaling_adore.json"

echo "bench_plots: all 5 plots OK"
