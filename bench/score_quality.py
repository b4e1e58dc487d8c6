#!/usr/bin/env python3
"""Scores the release-policy quality runs of `adore-eval quality` and writes bench/results/quality.json.

adore-eval quality writes, per run, a raw JSON (perplexity rows and generation rows) and a continuations
file (per config: the greedy continuations' text and token ids, `full` included). This script merges the
runs and scores every config's continuations against full attention's with established packages:
ROUGE-L F1 (rouge-score, per continuation, averaged) and corpus BLEU (sacrebleu), plus the mean number
of leading tokens identical to full's. It writes bench/results/quality.json ({command, machine, commit,
rows}), a PNG plot next to it, and prints a markdown table for docs/BENCHMARKS.md.

  python3 bench/score_quality.py --raw R1.json R2.json ... --gen G1.json G2.json ... \
      --machine "..." --commit SHA [--out bench/results/quality.json]
  python3 bench/score_quality.py --plot-only bench/results/quality.json [--png OUT.png]   # redraw the plot only
Needs: pip install rouge-score sacrebleu matplotlib (--plot-only: matplotlib only)
"""
import argparse, json, os, sys


def load_rows(paths):
    rows, seen = [], set()
    commands = []
    for p in paths:
        d = json.load(open(p))
        commands.append(d.get("command", ""))
        for r in d["rows"]:
            key = (r["task"], r["policy"], r["m"], r["R"], r.get("context"))
            if key in seen:  # `full` runs in every invocation as the reference: keep the first
                continue
            seen.add(key)
            rows.append(r)
    return rows, commands


def score_generations(paths):
    from rouge_score import rouge_scorer
    import sacrebleu
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    out = {}
    for p in paths:
        g = json.load(open(p))
        ref = g["full"]
        for key, v in g.items():
            if key in out:
                continue
            hyps, refs = v["texts"], ref["texts"]
            rl = [scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(refs, hyps)]
            bleu = sacrebleu.corpus_bleu(hyps, [refs]).score
            prefix = []
            for a, b in zip(v["tokens"], ref["tokens"]):
                n = 0
                while n < min(len(a), len(b)) and a[n] == b[n]:
                    n += 1
                prefix.append(n)
            out[key] = {"rouge_l": sum(rl) / len(rl), "bleu": bleu, "same_prefix_tokens": sum(prefix) / len(prefix)}
    return out


def config_key(r):
    return "full" if r["policy"] == "full" else f'{r["policy"]}/m{r["m"]}/R{r["R"]}'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", nargs="+")
    ap.add_argument("--gen", nargs="*", default=[])
    ap.add_argument("--machine")
    ap.add_argument("--commit")
    ap.add_argument("--out", default="bench/results/quality.json")
    ap.add_argument("--plot-only", metavar="JSON",
                    help="only redraw the plot from an existing quality.json (needs neither rouge-score nor sacrebleu)")
    ap.add_argument("--png", default=None, help="with --plot-only: the PNG to write (default: next to the JSON)")
    a = ap.parse_args()
    if a.plot_only:
        with open(a.plot_only) as f:
            plot(json.load(f)["rows"], a.png or os.path.splitext(a.plot_only)[0] + ".png")
        return
    if not (a.raw and a.machine and a.commit):
        ap.error("--raw, --machine and --commit are required (except with --plot-only)")

    rows, commands = load_rows(a.raw)
    scores = score_generations(a.gen) if a.gen else {}
    ppl_rows = [r for r in rows if r["task"] == "ppl"]
    context = ppl_rows[0]["context"] if ppl_rows else None
    for r in rows:
        if r["task"] == "generation":
            r["context"] = r["prompt_tokens"] + r["gen_tokens"]
            r.update(scores.get(config_key(r), {}))
            r["ppl"] = None  # generation rows carry agreement, not perplexity
    out = {"command": " ; ".join(commands) + " ; python3 " + " ".join(sys.argv),
           "machine": a.machine, "commit": a.commit, "rows": rows}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    json.dump(out, open(a.out, "w"), indent=1)

    # Markdown table: one line per config with its perplexity and its continuations' agreement.
    gen = {config_key(r): r for r in rows if r["task"] == "generation"}
    print(f"| policy | m | R | ppl (context {context}) | vs full | ROUGE-L | BLEU | same-prefix tokens | released | rebuilt |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(ppl_rows, key=lambda r: (r["policy"] != "full", r["policy"], r["m"], r["R"])):
        g = gen.get(config_key(r), {})
        fmt = lambda x, f: (f % x) if isinstance(x, (int, float)) else "-"
        print(f'| {r["policy"]} | {r["m"] or "-"} | {r["R"]} | {r["ppl"]:.3f} | {100 * r["ppl_vs_full"]:+.2f}% | '
              f'{fmt(g.get("rouge_l"), "%.3f")} | {fmt(g.get("bleu"), "%.1f")} | '
              f'{fmt(g.get("same_prefix_tokens"), "%.1f")} | {r["released"]} | {r["rebuilt"]} |')

    plot(rows, os.path.splitext(a.out)[0] + ".png")


def plot(rows, png):
    """Perplexity and ROUGE-L vs full against the KV budget (when matplotlib is importable)."""
    ppl_rows = [r for r in rows if r["task"] == "ppl"]
    context = ppl_rows[0]["context"] if ppl_rows else None
    gen = {config_key(r): r for r in rows if r["task"] == "generation"}
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    full = next((r["ppl"] for r in ppl_rows if r["policy"] == "full" and r.get("context") == context), None)
    contexts = sorted({r.get("context") for r in ppl_rows})
    series = {}
    for r in ppl_rows:
        if r["policy"] == "full":
            continue
        label = r["policy"] + (f' R={r["R"]}' if r["policy"] == "adore" else "")
        series.setdefault((label, r.get("context")), []).append(
            (r["m"], 100 * r["ppl_vs_full"], gen.get(config_key(r), {}).get("rouge_l")))
    colors = {}
    for (label, ctx), pts in sorted(series.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        pts.sort()
        color = colors.setdefault(label, f"C{len(colors)}")
        first = ctx == contexts[0]  # the first context solid, a second one dashed
        ax[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if first else "s", ls="-" if first else "--",
                   color=color, label=label + ("" if len(contexts) == 1 else f" @{ctx}"))
        if first and all(p[2] is not None for p in pts):  # continuations were scored at the first context
            ax[1].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", color=color, label=label)
    ax[0].axhline(3, color="gray", ls="--", lw=0.8, label="+3% goal")
    title = f"held-out prose, context {context} (full: {full:.2f})" if full else "perplexity"
    if len(contexts) > 1:
        title = "held-out prose, context " + " (solid) / ".join(str(c) for c in contexts) + " (dashed)"
    ax[0].set(xscale="log", xlabel="KV budget m (slots)", ylabel="perplexity vs full (%)", title=title)
    ax[1].set(xscale="log", xlabel="KV budget m (slots)", ylabel="ROUGE-L F1 vs full",
              title="greedy continuations vs full attention")
    for x in ax:
        x.set_xticks([256, 512, 1024], ["256", "512", "1024"])
        x.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        x.grid(alpha=0.3)
        x.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main()
