#!/usr/bin/env bash
# Writes tests/data/eval/emma_excerpt.txt, the held-out prose for the perplexity check (adore-eval ppl vs
# tools/hf_ppl.py): chapters I and II of Jane Austen's "Emma" (public domain) as packaged in Debian's
# r-cran-janeaustenr (Project Gutenberg text, one line per R string, line wraps kept). About 28 KB,
# ~6.5k SmolLM2 tokens.
#
#   tools/make_eval_text.sh [OUT]      (needs Rscript and r-cran-janeaustenr: apt-get install r-cran-janeaustenr)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-tests/data/eval/emma_excerpt.txt}"
mkdir -p "$(dirname "$out")"
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
Rscript -e 'library(janeaustenr); writeLines(emma, commandArgs(TRUE)[1])' "$tmp"
# From the "CHAPTER I" heading up to (not including) "CHAPTER III"; trailing blank lines dropped.
# (Each volume restarts at CHAPTER I, so stop at the first CHAPTER III.)
awk '/^CHAPTER III$/ { exit } /^CHAPTER I$/ { on = 1 } on' "$tmp" |
  sed -e ':a' -e '/^\n*$/{$d;N;ba' -e '}' > "$out"
echo "wrote $out: $(wc -c < "$out") bytes, $(wc -w < "$out") words" >&2
