#!/usr/bin/env bash
# Quick start, command 2: install what is missing, build, fetch the model, run the whole test suite.
# Sanitizers are not run here (a sanitizer build of the whole tree takes about an hour on 2 cores, beyond CI's budget):
# tools/sanitize.sh asan (the whole suite under ASan + UBSan) and tools/sanitize.sh tsan (the concurrency tests
# under TSan) do that, in build-asan/ and build-tsan/; docs/RELIABILITY.md "Sanitizers" has their last runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/setup.sh"
"$root/tools/fetch-model.sh"
cd "${ADORE_BUILD_DIR:-$root/build}"
ctest --output-on-failure -j"$(nproc)" --timeout 900
