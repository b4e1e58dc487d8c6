#!/usr/bin/env bash
# Quick start, command 2: install what is missing, build, fetch the model, run the whole test suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/setup.sh"
"$root/tools/fetch-model.sh"
cd "${ADORE_BUILD_DIR:-$root/build}"
ctest --output-on-failure -j"$(nproc)" --timeout 900
