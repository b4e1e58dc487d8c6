#!/usr/bin/env bash
# Writes the held-out long prose of the release-policy quality runs (adore-eval quality): Jane Austen's
# "Persuasion" as packaged in Debian's r-cran-janeaustenr, which the controller's training split holds
# out entirely (tools/adore/extract_attention.py). About 466 KB, ~110k SmolLM2 tokens.
#
#   tools/make_heldout_text.sh [OUT]   (default .dev/eval/persuasion.txt; needs Rscript and r-cran-janeaustenr)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.dev/eval/persuasion.txt}"
mkdir -p "$(dirname "$out")"
Rscript -e 'library(janeaustenr); writeLines(persuasion, commandArgs(TRUE)[1])' "$out"
echo "wrote $out: $(wc -c < "$out") bytes, $(wc -w < "$out") words" >&2
