"""Which keep rule is worth learning? Perplexity of release schedules chosen by oracles that see the future.

A release policy's schedule is a [T, T] mask (query t sees the tokens cached at step t); one masked forward
(gguf_llama.LlamaGguf, mask=...) gives exactly the logits of token-by-token decoding with that schedule and
no rebuild. This script simulates the cache loop for several rules and reports each one's perplexity:

  window        4 sinks + the most recent tokens (StreamingLLM)
  h2o           accumulated attention of the queries so far (from the full-attention map: an approximation of
                H2O, which sees the masked attention)
  mass:H        oracle: pooled attention the next H queries will pay each token (the controller's training
                target is the top-m of this with H = 4)
  vmass:H       oracle: the same with each head's weight multiplied by the norm of the token's contribution
                through that head (|W_o,h v_h,i|), i.e. the token's share of the attention output
  recent+X:H    half the budget for the most recent tokens, the other half by rule X

Every rule protects the first 4 positions (sinks) and the 16 most recent ones, like the engine's PlanRelease;
a rule evicts the lowest-scoring unprotected cached token whenever the cache exceeds m.

  python3 tools/adore/oracle_ppl.py --len 2048 --seqs 2 --m 256,512 --rules window,h2o,mass:4,vmass:4
"""
import argparse, json, math, os, sys, time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_llama import LlamaGguf  # noqa: E402

NUM_SINK, NUM_RECENT = 4, 16


def schedule(T, m, rule, A, V):
    """[T, T] bool mask of the cache each query sees under `rule` with budget m."""
    recent_half = rule.startswith("recent+")
    base = rule[len("recent+"):] if recent_half else rule
    name, _, h = base.partition(":")
    H = int(h) if h else 0
    if name in ("mass", "vmass"):
        F = np.cumsum(V if name == "vmass" else A, axis=0)  # F[u, i] = sum_{q <= u} map[q, i]
    elif name == "h2o":
        F = np.cumsum(A, axis=0)
    cached = np.zeros(T, dtype=bool)
    mask = np.zeros((T, T), dtype=bool)
    protect_recent = max(NUM_RECENT, m // 2) if recent_half else NUM_RECENT
    for t in range(T):
        cached[t] = True
        if cached.sum() > m:
            cand = cached.copy()
            cand[:NUM_SINK] = False
            cand[max(0, t - protect_recent + 1):t + 1] = False
            idx = np.nonzero(cand)[0]
            if name == "window":
                victim = idx[0]
            elif name == "h2o":  # attention received from queries < t
                victim = idx[np.argmin(F[t - 1, idx])]
            else:  # what queries t .. t+H-1 will pay
                hi = min(T - 1, t + H - 1)
                victim = idx[np.argmin(F[hi, idx] - F[t - 1, idx])]
            cached[victim] = False
        mask[t] = cached
    return mask


def nll(logits, ids, start):
    lp = torch.log_softmax(logits[:-1].double(), dim=-1)
    tok = lp.gather(1, ids[1:, None]).squeeze(1)
    return -tok[start - 1:].sum().item(), tok[start - 1:].numel()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--corpus", default=".dev/adore/corpus.npz")
    ap.add_argument("--stream", default="austen/heldout", help="token stream of the corpus to cut sequences from")
    ap.add_argument("--ids", default="",
                    help="cut the sequences from these token ids (.npy) instead of the corpus, e.g. the held-out "
                         "text adore-eval scores, tokenized without BOS")
    ap.add_argument("--score-from", type=int, default=0,
                    help="score targets from this position (0: from m, where schedules start to differ; 1: all, "
                         "as adore-eval's streaming perplexity)")
    ap.add_argument("--len", type=int, default=2048)
    ap.add_argument("--seqs", type=int, default=2)
    ap.add_argument("--m", default="256,512")
    ap.add_argument("--rules", default="window,h2o,mass:1,mass:4,mass:64,vmass:1,vmass:4,vmass:64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="", help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    stream = np.load(args.ids) if args.ids else np.load(args.corpus)[args.stream]
    model = LlamaGguf(args.model, device=args.device)
    budgets = [int(x) for x in args.m.split(",")]
    rules = args.rules.split(",")
    T = args.len
    totals = {}
    t0 = time.time()
    for n in range(args.seqs):
        ids = torch.from_numpy(stream[n * T:(n + 1) * T].astype(np.int64))
        full = model(ids, want_logits=True, want_vattn=True)
        A = full["attn"].cpu().numpy().astype(np.float64)
        V = full["vattn"].cpu().numpy().astype(np.float64)
        for m in budgets:
            key = ("full", m)
            start = args.score_from if args.score_from > 0 else m
            s, c = nll(full["logits"].cpu(), ids, start)
            totals[key] = [totals.get(key, [0, 0])[0] + s, totals.get(key, [0, 0])[1] + c]
            for rule in rules:
                mask = torch.from_numpy(schedule(T, m, rule, A, V))
                r = model(ids, want_logits=True, want_attn=False, mask=mask)
                s, c = nll(r["logits"].cpu(), ids, start)
                key = (rule, m)
                totals[key] = [totals.get(key, [0, 0])[0] + s, totals.get(key, [0, 0])[1] + c]
                print(f"seq {n} m={m} {rule}: ppl(targets from {start}) {math.exp(s / c):.3f} ({time.time() - t0:.0f}s)",
                      file=sys.stderr, flush=True)
    rows = []
    for m in budgets:
        base = math.exp(totals[("full", m)][0] / totals[("full", m)][1])
        for rule in ["full"] + rules:
            s, c = totals[(rule, m)]
            ppl = math.exp(s / c)
            rows.append({"rule": rule, "m": m, "len": T, "seqs": args.seqs, "score_from": args.score_from or m,
                         "ppl_after_m": ppl,
                         "vs_full": ppl / base - 1})
            print(f"m={m:5d} {rule:>16s}  ppl {ppl:8.3f}  {100 * (ppl / base - 1):+6.2f}%")
    if args.out:
        json.dump({"command": " ".join(sys.argv), "rows": rows}, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
