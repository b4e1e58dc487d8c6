#!/usr/bin/env bash
# Installs what the build and tests need on Debian 12 (root), configures and builds into build/.
# Idempotent: installs only missing packages and rebuilds incrementally.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
packages=(build-essential cmake ninja-build pkg-config python3 python3-pip python3-venv
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libgtest-dev libgmock-dev libgloo-dev libopenblas-dev libopenblas-openmp-dev nlohmann-json3-dev libcpp-httplib-dev libpcre2-dev
  libssl-dev openssl python3-matplotlib)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
build="${ADORE_BUILD_DIR:-$root/build}"
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${ADORE_CMAKE_ARGS:-}
fi
cmake --build "$build" -j"$(nproc)"
