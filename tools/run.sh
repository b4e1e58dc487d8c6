#!/usr/bin/env bash
# Quick start, command 1: install what is missing, build, fetch the model, run an embedded generation.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/setup.sh"
"$root/tools/fetch-model.sh"
exec "${ADORE_BUILD_DIR:-$root/build}/adore-generate" \
  --model "$root/models/SmolLM2-135M-Instruct.Q4_1.gguf" --chat \
  --prompt "${1:-Write a short poem about the sea.}" --max_tokens 128
