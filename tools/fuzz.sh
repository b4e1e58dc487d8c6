#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) with clang under ASan + UBSan and runs each for SECONDS, one after
# another (one process, one core each), then writes a summary: executions, speed, coverage, corpus growth
# and findings (crash / leak / timeout / out-of-memory inputs, kept under OUT/<target>/artifacts/).
#
#   tools/fuzz.sh [-t SECONDS] [-b BUILD_DIR] [-o OUT_DIR] [TARGET...]
#
# Defaults: 600 s per target, build-fuzz/, BUILD_DIR/fuzz-runs/, every target built (gguf safetensors
# tokenizer stream_decoder, and request http_request where gRPC is found). Each target starts from its
# seeds (fuzz/corpus/<target>/) and regression inputs (fuzz/regressions/<target>/) plus the corpus it grew
# on earlier runs (OUT/<target>/corpus/), with its dictionary (fuzz/dicts/<target>.dict). Exit status 1
# when any target found something. Needs the packages of tools/setup.sh; installs clang (Debian 12:
# clang 14 with libFuzzer) and clang's OpenMP when missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=600
build="$root/build-fuzz"
out=""
while getopts "t:b:o:h" opt; do
  case $opt in
    t) seconds=$OPTARG ;;
    b) build=$OPTARG ;;
    o) out=$OPTARG ;;
    *) sed -n '2,13p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
out=${out:-$build/fuzz-runs}

packages=(clang libclang-rt-dev libomp-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "fuzz: missing ${missing[*]} (apt-get install ${missing[*]} as root)" >&2
    exit 1
  fi
  echo "fuzz: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -f "$build/build.ninja" ]; then
  CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DADORE_BUILD_FUZZERS=ON -DADORE_ENABLE_CUDA=OFF \
    -DADORE_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
    -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g"
fi
available=$(cmake --build "$build" --target help | sed -n 's/^\([a-z_]*\)_fuzzer: .*/\1/p' | sort)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets <<<"$available"
fi
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$available" || { echo "fuzz: no target '$t' (built: $(echo $available))" >&2; exit 2; }
done
cmake --build "$build" -j"${FUZZ_BUILD_JOBS:-$(nproc)}" --target "${targets[@]/%/_fuzzer}"

# Inputs larger than the default 4 KiB matter for the file readers.
declare -A max_len=([gguf]=16384 [safetensors]=16384)
mkdir -p "$out"
summary="$out/summary.md"
{
  commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
  git -C "$root" diff --quiet HEAD 2>/dev/null || commit="$commit + uncommitted changes"
  echo "# Fuzzing summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), commit $commit)"
  echo
  echo "clang: $(clang++ --version | head -1); ${seconds} s per target; ASan + UBSan; one process per target."
  echo
  echo "| target | seconds | executions | exec/s | coverage (edges) | features | corpus (files/bytes) | new units | peak RSS MB | findings |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
} >"$summary"
found=0
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
for t in "${targets[@]}"; do
  dir="$out/$t"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  dirs=("$dir/corpus" "$root/fuzz/corpus/$t")
  [ -d "$root/fuzz/regressions/$t" ] && dirs+=("$root/fuzz/regressions/$t")
  args=(-max_total_time="$seconds" -print_final_stats=1 -print_funcs=0 -timeout=25 -rss_limit_mb=4096
        -artifact_prefix="$dir/artifacts/")
  [ -n "${max_len[$t]:-}" ] && args+=(-max_len="${max_len[$t]}")
  [ -f "$root/fuzz/dicts/$t.dict" ] && args+=(-dict="$root/fuzz/dicts/$t.dict")
  echo "fuzz: $t for ${seconds}s: $build/fuzz/${t}_fuzzer ${args[*]} ${dirs[*]}" >&2
  start=$(date +%s)
  set +e
  "$build/fuzz/${t}_fuzzer" "${args[@]}" "${dirs[@]}" >"$dir/log.txt" 2>&1
  rc=$?
  set -e
  elapsed=$(( $(date +%s) - start ))
  stat_of() { sed -n "s/^stat::$1: *//p" "$dir/log.txt" | tail -1; }
  last=$(grep -E '^#[0-9]+.*cov: ' "$dir/log.txt" | tail -1 || true)
  cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.*ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.*corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$last")
  findings=$(find "$dir/artifacts" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  if [ "$rc" != 0 ] && [ "$findings" = 0 ]; then findings="exit $rc (see log)"; fi
  [ "$findings" != 0 ] && found=1
  echo "| $t | $elapsed | $(stat_of number_of_executed_units) | $(stat_of average_exec_per_sec) | ${cov:-?} | ${ft:-?} | ${corp:-?} | $(stat_of new_units_added) | $(stat_of peak_rss_mb) | $findings |" >>"$summary"
  echo "fuzz: $t done in ${elapsed}s, rc $rc, findings: $findings" >&2
done
echo >>"$summary"
echo "Logs, grown corpora and any finding's input: $out/<target>/{log.txt,corpus/,artifacts/}" >>"$summary"
cat "$summary"
exit $found
