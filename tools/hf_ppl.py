#!/usr/bin/env python3
"""Reference perplexity from Hugging Face transformers, for `adore-eval ppl` (worker/perplexity.h).

The sliding-window recipe of HF's "Perplexity of fixed-length models": windows of CONTEXT tokens moving
by STRIDE, each scoring only the tokens past the previous window's end (labels shifted inside a window).
Two deliberate details, both matched by the C++ side:
  * tokenization: the HF tokenizer built from the same GGUF, add_special_tokens=False (no BOS; SmolLM2's
    GGUF has add_bos_token = false anyway), over the whole file; optionally cut to the first MAX_TOKENS;
  * the mean is exact: per-token NLL from log_softmax in float64, summed over every scored target and
    divided by their count. (The HF page weights each window's mean loss by trg_len - 1, which is off by
    one token for every window after the first; that value is also reported as ppl_hf_doc_weighting.)

    python3 tools/hf_ppl.py --text tests/data/eval/emma_excerpt.txt --window 1024:512 --window 512:256 \\
        --window 512:256:1500 --json tests/data/eval/hf_ppl.json

Each --window is CONTEXT:STRIDE[:MAX_TOKENS] (MAX_TOKENS 0 or absent = the whole text).
"""
import argparse, hashlib, json, math, os, sys, time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def windows(n, context, stride):
    """(begin, score_begin, end) per window: the HF loop, as worker/perplexity.cc PlanPerplexityWindows."""
    out, prev_end = [], 0
    if n < 2:
        return out
    for begin in range(0, n, stride):
        end = min(begin + context, n)
        out.append((begin, max(prev_end, begin + 1), end))
        prev_end = end
        if end == n:
            break
    return out


def perplexity(model, ids, context, stride):
    nll_sum, scored, doc_nll, doc_count = 0.0, 0, 0.0, 0
    wins = windows(len(ids), context, stride)
    t0 = time.time()
    for w, (begin, score_begin, end) in enumerate(wins):
        input_ids = torch.tensor([ids[begin:end]])
        with torch.no_grad():
            logits = model(input_ids).logits[0]
        # Target t (absolute) is predicted by window row t - 1 - begin.
        rows = logits[score_begin - 1 - begin:end - 1 - begin].double()
        targets = torch.tensor(ids[score_begin:end])
        nll = -rows.log_softmax(-1).gather(1, targets[:, None])[:, 0]
        nll_sum += nll.sum().item()
        scored += len(targets)
        # The HF page: loss over the window's last trg_len labels (shifted), weighted by trg_len - 1.
        doc_nll += nll.mean().item() * (end - (prev_end if w else 0) - 1)
        doc_count += end - (prev_end if w else 0) - 1
        prev_end = end
        print(f"\rwindow {w + 1}/{len(wins)}, {time.time() - t0:.1f} s", end="", file=sys.stderr)
    print(file=sys.stderr)
    return {"windows": len(wins), "tokens_scored": scored, "nll": nll_sum / scored,
            "ppl": math.exp(nll_sum / scored), "ppl_hf_doc_weighting": math.exp(doc_nll / doc_count)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--text", required=True)
    ap.add_argument("--window", action="append", default=None, help="CONTEXT:STRIDE[:MAX_TOKENS], repeatable")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    settings = []
    for w in args.window or ["1024:512"]:
        parts = [int(x) for x in w.split(":")]
        if len(parts) not in (2, 3) or parts[0] < 2 or not 1 <= parts[1] <= parts[0]:
            ap.error(f"bad --window {w!r}: want CONTEXT:STRIDE[:MAX_TOKENS] with 1 <= STRIDE <= CONTEXT")
        settings.append((parts[0], parts[1], parts[2] if len(parts) == 3 else 0))

    with open(args.text, "rb") as fh:
        raw = fh.read()
    text = raw.decode("utf-8")
    d, f = os.path.split(os.path.abspath(args.model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    all_ids = tok(text, add_special_tokens=False)["input_ids"]
    print(f"{args.text}: {len(all_ids)} tokens", file=sys.stderr)

    out = {"command": " ".join(["python3"] + sys.argv), "engine": "transformers", "model": f,
           "transformers": __import__("transformers").__version__, "torch": torch.__version__,
           "text": args.text, "text_sha256": hashlib.sha256(raw).hexdigest(), "text_tokens": len(all_ids),
           "runs": []}
    for context, stride, max_tokens in settings:
        ids = all_ids[:max_tokens] if max_tokens > 0 else all_ids
        r = perplexity(model, ids, context, stride)
        run = {"context": context, "stride": stride, "max_tokens": max_tokens, "num_tokens": len(ids), **r}
        out["runs"].append(run)
        print(f"context {context} stride {stride} max_tokens {max_tokens}: ppl {r['ppl']:.6f} "
              f"nll {r['nll']:.6f} tokens_scored {r['tokens_scored']} "
              f"(HF page weighting: ppl {r['ppl_hf_doc_weighting']:.6f})")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
            fh.write("\n")


if __name__ == "__main__":
    main()
