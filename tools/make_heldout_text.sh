#!/usr/bin/env bash
# Writes the held-out long prose of the release-policy quality runs (adore-eval quality).
#
#   tools/make_heldout_text.sh [OUT]                 test text (default .dev/eval/persuasion.txt): Jane Austen's
#       "Persuasion" as packaged in Debian's r-cran-janeaustenr, which the controller's training split holds
#       out entirely (tools/adore/extract_attention.py). About 466 KB, ~110k SmolLM2 tokens.
#   tools/make_heldout_text.sh --validation [OUT]    validation text (default .dev/eval/validation.txt): the
#       held-out last 10% of the paragraphs of "Emma" and "Mansfield Park" (the same split as the training
#       data), for choosing policy settings without looking at the test text. About 46k tokens.
# Needs Rscript and r-cran-janeaustenr (and python3 for --validation).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--validation" ]; then
  out="${2:-.dev/eval/validation.txt}"
  mkdir -p "$(dirname "$out")"
  python3 - "$out" <<'PY'
import subprocess, sys
# Paragraphs as tools/adore/extract_attention.py forms them; its held-out part is the last 10% of each book.
out = []
for book in ["emma", "mansfieldpark"]:
    text = subprocess.run(["Rscript", "-e", f"library(janeaustenr); writeLines({book})"], check=True,
                          capture_output=True, text=True).stdout
    paras, cur = [], []
    for line in text.splitlines():
        if line.strip():
            cur.append(line.strip())
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    out.append("\n\n".join(paras[int(round(len(paras) * 0.9)):]))
open(sys.argv[1], "w").write("\n\n".join(out) + "\n")
PY
else
  out="${1:-.dev/eval/persuasion.txt}"
  mkdir -p "$(dirname "$out")"
  Rscript -e 'library(janeaustenr); writeLines(persuasion, commandArgs(TRUE)[1])' "$out"
fi
echo "wrote $out: $(wc -c < "$out") bytes, $(wc -w < "$out") words" >&2
