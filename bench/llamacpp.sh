#!/usr/bin/env bash
# Fetches llama.cpp from source (the copy vendored in the PyPI sdist llama-cpp-python==0.3.35,
# sha256-pinned) and builds only its benchmark tools: llama-batched-bench, llama-bench,
# llama-perplexity. Nothing third-party is kept in the repo: everything lives under .dev/.
#
#   bench/llamacpp.sh [cpu|cuda] [DEST]     (default: cpu, DEST=.dev/llamacpp-<variant>/bin)
#
# Idempotent: the download, the extraction, the CMake configure and the build are each skipped
# when already done (the build is skipped entirely when DEST holds the tools built with the same
# source + flags). Env: JOBS (default: nproc), NVCC (default /usr/local/cuda/bin/nvcc),
# CONFIGURE_ONLY=1 (stop after the CMake configure step).
# Offline machine: put the verified sdist at .dev/llamacpp-src/llama_cpp_python-0.3.35.tar.gz first
# (it is then used without touching the network).
set -euo pipefail

variant=${1:-cpu}
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${2:-$root/.dev/llamacpp-$variant/bin}
jobs=${JOBS:-$(nproc)}
nvcc=${NVCC:-/usr/local/cuda/bin/nvcc}

pkg="llama-cpp-python==0.3.35"
sdist_name="llama_cpp_python-0.3.35.tar.gz"
sdist_dir="llama_cpp_python-0.3.35"
sdist_sha256="1139dbb54509074b70893fab8554e3b079aa9f4d312058ce4018ef0019e3de12"
targets=(llama-batched-bench llama-bench llama-perplexity)

# Common flags: Release, static, no networking / server / UI / tests / examples.
common_flags=(
  -G Ninja
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_CURL=OFF
  -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_SERVER=OFF
  -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF
)
case "$variant" in
  cpu)
    flags=("${common_flags[@]}" -DGGML_NATIVE=ON -DGGML_OPENMP=ON)
    ;;
  cuda)
    flags=("${common_flags[@]}" -DGGML_NATIVE=OFF -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90
           -DCMAKE_CUDA_COMPILER="$nvcc")
    ;;
  *)
    echo "usage: $0 [cpu|cuda] [DEST]" >&2; exit 2
    ;;
esac

log() { echo "llamacpp.sh[$variant]: $*" >&2; }

work="$root/.dev/llamacpp-src"          # sdist + extracted source, shared by both variants
build="$root/.dev/llamacpp-$variant/build"
src="$work/$sdist_dir/vendor/llama.cpp"
stamp_val="$sdist_sha256 ${flags[*]} ${targets[*]}"
stamp="$dest/.build-stamp"

# 0. Already built with identical source + flags?
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_val" ]; then
  ok=1
  for t in "${targets[@]}"; do [ -x "$dest/$t" ] || ok=0; done
  if [ $ok = 1 ]; then log "up to date: $dest"; exit 0; fi
fi

# 1. Tools.
if ! command -v ninja >/dev/null 2>&1; then
  log "ninja missing: apt-get install ninja-build"
  if [ "$(id -u)" = 0 ]; then apt-get install -y ninja-build; else sudo apt-get install -y ninja-build; fi
fi
command -v cmake >/dev/null || { log "cmake not found"; exit 1; }
if [ "$variant" = cuda ] && [ ! -x "$nvcc" ]; then log "nvcc not found at $nvcc (set NVCC=...)"; exit 1; fi

# 2. Download the sdist (verify the pinned sha256).
mkdir -p "$work"
tarball="$work/$sdist_name"
if [ -f "$tarball" ] && echo "$sdist_sha256  $tarball" | sha256sum --quiet -c - 2>/dev/null; then
  log "sdist present: $tarball"
else
  rm -f "$tarball"
  log "downloading $pkg (sdist) ..."
  python3 -m pip download --quiet --no-deps --no-binary=:all: "$pkg" -d "$work"
  echo "$sdist_sha256  $tarball" | sha256sum --quiet -c - \
    || { log "sha256 mismatch for $sdist_name (expected $sdist_sha256)"; rm -f "$tarball"; exit 1; }
  log "sdist sha256 ok"
  rm -rf "${work:?}/$sdist_dir"   # force a fresh extraction from the verified tarball
fi

# 3. Extract the vendored llama.cpp.
if [ -f "$work/.extracted" ] && [ "$(cat "$work/.extracted")" = "$sdist_sha256" ] && [ -f "$src/CMakeLists.txt" ]; then
  log "source present: $src"
else
  log "extracting $sdist_dir/vendor/llama.cpp ..."
  rm -rf "${work:?}/$sdist_dir"
  tar -xzf "$tarball" -C "$work" "$sdist_dir/vendor/llama.cpp"
  echo "$sdist_sha256" > "$work/.extracted"
fi

# 4. Configure (re-run only when the flags changed).
cfg_stamp="$build/.configure-stamp"
if [ -f "$build/build.ninja" ] && [ -f "$cfg_stamp" ] && [ "$(cat "$cfg_stamp")" = "$stamp_val" ]; then
  log "already configured: $build"
else
  log "configuring: cmake ${flags[*]}"
  rm -rf "$build"
  mkdir -p "$build"
  cmake -S "$src" -B "$build" "${flags[@]}"
  echo "$stamp_val" > "$cfg_stamp"
fi

if [ "${CONFIGURE_ONLY:-0}" = 1 ]; then log "CONFIGURE_ONLY=1: stopping after configure ($build)"; exit 0; fi

# 5. Build only the benchmark targets.
log "building ${targets[*]} with -j$jobs (this takes a while on few cores) ..."
t0=$(date +%s)
cmake --build "$build" --config Release -j "$jobs" --target "${targets[@]}"
log "build done in $(( $(date +%s) - t0 )) s"

# 6. Install into DEST.
mkdir -p "$dest"
for t in "${targets[@]}"; do
  install -m 0755 "$build/bin/$t" "$dest/$t"
done
echo "$stamp_val" > "$stamp"
log "binaries in $dest: ${targets[*]}"
