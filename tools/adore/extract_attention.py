#!/usr/bin/env python3
"""ADORE training data: English prose from Debian packages -> SmolLM2's pooled attention and features.

Two steps, so the GPU machine (no network, no Debian packages, no `gguf`/tokenizer needed) only runs the
model:

  corpus   (here, on the Debian dev machine) reads the texts, tokenizes them with the model's own tokenizer
           (transformers, from the GGUF) and writes one small .npz of uint16 token streams per
           (source, split):  python3 tools/adore/extract_attention.py corpus --out .dev/adore/corpus.npz
  extract  (GPU, or CPU for a small subset) cuts sequences from those streams, runs the model
           (tools/adore/gguf_llama.py, weights in the engine's GGUF layout) and writes per sequence
           <out>/<split>/seq_<n>.pt with
             ids    [T] int32      token ids
             attn   [T, T] float16 pooled attention: row t = attention of query t summed over all layers
                                   and heads / (num_layers * num_heads) (rows sum to 1, zero above diagonal)
             feats  [T, L, hidden] float16 attn_norm outputs (input of q/k/v) at --feature-layers
             source str, split str, start int (token offset in the stream)
           python3 tools/adore/extract_attention.py extract --corpus .dev/adore/corpus.npz --out .dev/adore/data

Sources and the fixed train / held-out split (every source is held out in part):
  austen    r-cran-janeaustenr: 'persuasion' entirely held out; of the other five novels the last 10% of
            each is held out, the first 90% is train.
  gcide     dict-gcide (/usr/share/dictd/gcide.dict.dz): entries in file order, cleaned of [1913 Webster]
            style source tags; every 4th block of 200 entries is kept (size cap; covers A-Z); the last 10%
            of the kept entries (end of the alphabet) is held out.
  wordnet   wordnet-base glosses (data.noun/verb/adj/adv) as "lemma (pos): gloss"; last 10% of each file
            held out.
  fortunes  fortunes-min/fortunes (/usr/share/games/fortunes/*, the non-offensive set): last 10% of each file
            held out.
"""
import argparse, glob, gzip, os, re, subprocess, sys, time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

AUSTEN = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion"]
HELDOUT_FRACTION = 0.1


# ---------------------------------------------------------------------------------------------- corpus

def split_docs(docs, frac=HELDOUT_FRACTION):
    cut = int(round(len(docs) * (1 - frac)))
    return docs[:cut], docs[cut:]


def austen_texts():
    out = {"train": [], "heldout": []}
    for book in AUSTEN:
        r = subprocess.run(["Rscript", "-e", f"library(janeaustenr); writeLines({book})"], check=True,
                           capture_output=True, text=True)
        paras, cur = [], []
        for line in r.stdout.splitlines():
            if line.strip():
                cur.append(line.strip())
            elif cur:
                paras.append(" ".join(cur))
                cur = []
        if cur:
            paras.append(" ".join(cur))
        if book == "persuasion":
            out["heldout"].append("\n\n".join(paras))
        else:
            tr, ho = split_docs(paras)
            out["train"].append("\n\n".join(tr))
            out["heldout"].append("\n\n".join(ho))
    return out


def gcide_texts(path="/usr/share/dictd/gcide.dict.dz", block=200, keep_every=4):
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
        raw = fh.read()
    entries = []
    for e in re.split(r"\n\s*\n", raw):
        lines = [l.strip() for l in e.splitlines()]
        lines = [l for l in lines if l and not re.fullmatch(r"\[[^\]]*\]", l)]
        if not lines or lines[0].startswith("00-database") or lines[0].startswith("00database"):
            continue
        entries.append(" ".join(lines))
    kept = [e for i, e in enumerate(entries) if (i // block) % keep_every == 0]
    tr, ho = split_docs(kept)
    return {"train": ["\n\n".join(tr)], "heldout": ["\n\n".join(ho)]}


def wordnet_texts(root="/usr/share/wordnet"):
    out = {"train": [], "heldout": []}
    for pos, tag in (("noun", "n."), ("verb", "v."), ("adj", "adj."), ("adv", "adv.")):
        glosses = []
        with open(os.path.join(root, f"data.{pos}"), encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  ") or "|" not in line:
                    continue  # license header
                fields, gloss = line.split("|", 1)
                lemma = fields.split()[4].replace("_", " ")
                lemma = re.sub(r"\(.*\)$", "", lemma)
                glosses.append(f"{lemma} ({tag}): {gloss.strip()}")
        tr, ho = split_docs(glosses)
        out["train"].append("\n".join(tr))
        out["heldout"].append("\n".join(ho))
    return out


def fortunes_texts(root="/usr/share/games/fortunes"):
    out = {"train": [], "heldout": []}
    for path in sorted(glob.glob(os.path.join(root, "*"))):
        if os.path.isdir(path) or "." in os.path.basename(path):
            continue  # .dat / .u8 index files, off/ directory
        with open(path, encoding="utf-8", errors="replace") as fh:
            items = [f.strip("\n") for f in fh.read().split("\n%\n") if f.strip()]
        if len(items) < 10:
            continue
        tr, ho = split_docs(items)
        out["train"].append("\n\n".join(tr))
        out["heldout"].append("\n\n".join(ho))
    return out


def cmd_corpus(args):
    from transformers import AutoTokenizer
    d, f = os.path.split(os.path.abspath(args.model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    sources = {"austen": austen_texts, "gcide": gcide_texts, "wordnet": wordnet_texts,
               "fortunes": fortunes_texts}
    arrays = {}
    sep = tok("\n\n", add_special_tokens=False)["input_ids"]
    for name, fn in sources.items():
        t0 = time.time()
        texts = fn()
        for split, docs in texts.items():
            ids = []
            for doc in docs:
                ids.extend(tok(doc, add_special_tokens=False)["input_ids"])
                ids.extend(sep)
            a = np.asarray(ids, dtype=np.uint16)
            arrays[f"{name}/{split}"] = a
            print(f"corpus: {name}/{split}: {len(docs)} docs, {len(a)} tokens ({time.time() - t0:.1f}s)",
                  file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"corpus: wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB)", file=sys.stderr)


# --------------------------------------------------------------------------------------------- extract

def plan_sequences(corpus, split, seq_len, count, sources):
    """Round-robin over sources: non-overlapping windows of `seq_len` from each stream, in order."""
    streams = {s: corpus[f"{s}/{split}"] for s in sources if f"{s}/{split}" in corpus}
    offsets = {s: 0 for s in streams}
    plan = []
    while len(plan) < count:
        progressed = False
        for s, a in streams.items():
            if len(plan) >= count:
                break
            if offsets[s] + seq_len <= len(a):
                plan.append((s, offsets[s]))
                offsets[s] += seq_len
                progressed = True
        if not progressed:
            break
    return plan


def cmd_extract(args):
    import torch
    from gguf_llama import LlamaGguf
    torch.set_num_threads(args.threads)
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    layers = tuple(int(x) for x in args.feature_layers.split(","))
    corpus = dict(np.load(args.corpus))
    sources = args.sources.split(",")
    t0 = time.time()
    model = LlamaGguf(args.model, device=dev)
    print(f"extract: model loaded on {dev} in {time.time() - t0:.1f}s; feature layers {layers}", file=sys.stderr,
          flush=True)
    jobs = [("train", args.train_len, args.train_seqs), ("heldout", args.heldout_len, args.heldout_seqs)]
    for split, seq_len, count in jobs:
        if count <= 0:
            continue
        plan = plan_sequences(corpus, split, seq_len, count, sources)
        if len(plan) < count:
            print(f"extract: {split}: only {len(plan)} sequences of {seq_len} tokens available", file=sys.stderr)
        out_dir = os.path.join(args.out, split)
        os.makedirs(out_dir, exist_ok=True)
        for n, (src, start) in enumerate(plan):
            if n < args.first:
                continue
            path = os.path.join(out_dir, f"seq_{n:05d}.pt")
            if os.path.exists(path) and not args.overwrite:
                continue
            t1 = time.time()
            ids = torch.from_numpy(corpus[f"{src}/{split}"][start:start + seq_len].astype(np.int64))
            r = model(ids, feature_layers=layers, chunk=args.chunk, want_vattn=args.vattn)
            rec = {"ids": ids.to(torch.int32), "attn": r["attn"].to(torch.float16).cpu(),
                   "feats": r["features"].to(torch.float16).cpu(), "source": src, "split": split,
                   "start": int(start), "feature_layers": list(layers)}
            if args.vattn:
                rec["vattn"] = r["vattn"].to(torch.float16).cpu()
            torch.save(rec, path + ".tmp")
            os.replace(path + ".tmp", path)
            print(f"extract: {split} {n + 1}/{len(plan)} {src}@{start} T={seq_len} "
                  f"{time.time() - t1:.2f}s (total {time.time() - t0:.0f}s)", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus", help="build the tokenized corpus from Debian packages")
    c.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    c.add_argument("--out", default=".dev/adore/corpus.npz")
    e = sub.add_parser("extract", help="run the model and write training tensors")
    e.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    e.add_argument("--corpus", default=".dev/adore/corpus.npz")
    e.add_argument("--out", default=".dev/adore/data")
    e.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    e.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    e.add_argument("--sources", default="austen,gcide,wordnet,fortunes")
    e.add_argument("--feature-layers", default="3,10,20",
                   help="layers whose attn_norm output is stored as the controller's token features")
    e.add_argument("--train-seqs", type=int, default=20)
    e.add_argument("--train-len", type=int, default=512)
    e.add_argument("--heldout-seqs", type=int, default=4)
    e.add_argument("--heldout-len", type=int, default=1024)
    e.add_argument("--chunk", type=int, default=1024, help="queries per attention chunk")
    e.add_argument("--first", type=int, default=0,
                   help="skip the planned sequences before this index (to split the work over processes or GPUs)")
    e.add_argument("--overwrite", action="store_true")
    e.add_argument("--vattn", action="store_true",
                   help="also store the value-weighted pooled attention (train_controller.py --target vattn)")
    args = ap.parse_args()
    {"corpus": cmd_corpus, "extract": cmd_extract}[args.cmd](args)


if __name__ == "__main__":
    main()
