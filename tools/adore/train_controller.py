#!/usr/bin/env python3
"""Trains the ADORE release controller on the tensors of extract_attention.py and evaluates it.

The controller (docs/ADORE.md has the full definition; worker/adore_controller.cc is the C++ inference):
  per token i, at creation:  k_i = Wk u_i + bk           (key feature, key_dim)
  per query token t:         q_t = Wq u_t + bq           (query feature, key_dim)
     u = concatenated attn_norm outputs of the token at the feature layers (engine layout)
  every step t, for every token i <= t (cached or released):
     a    = attention mass i received from query t, summed over layers and heads, divided by
            num_layers * num_heads (0 when released; with release the masses of the cached tokens sum to 1)
     acc += a
     x    = [c_mass * log(a + eps), cached, c_age * log(1 + t - i), <q_t, k_i> / sqrt(key_dim),
             c_mass * log(acc + eps)]
     h_i  = GRUCell(x, h_i)      (torch.nn.GRUCell gates r, z, n; h_i starts at 0)
     s_i  = w . h_i + b
  release: the protected tokens (first num_sink, last num_recent) plus the top (m - 1 - protected) of the
  cached tokens and the top-R released ones by s keep a slot for the next step; the other released ones
  are rebuilt only when they win a slot.

Training simulates that release loop (decisions detached, masses renormalised over the controller's own
cache), label y_i = [i in the top-m of sum_{u=t+1}^{t+horizon} attn[u] among tokens <= t], loss BCE
(default) or listwise cross-entropy against that future attention, truncated BPTT.

  python3 tools/adore/train_controller.py --data .dev/adore/data --epochs 30
writes tools/adore/controller.bin, tools/adore/train_log.txt and tests/data/adore/controller_golden.json.
"""
import argparse, glob, json, math, os, struct, sys, time
from fractions import Fraction

import torch
import torch.nn.functional as Fn

MAGIC = b"ADORECTL"
VERSION = 1
MASS_EPS = 1e-5
C_MASS = 0.25
C_AGE = 0.125
NUM_INPUTS = 5


# ------------------------------------------------------------------------------------------------ data

def load_split(root, split, limit=0, min_len=0):
    paths = sorted(glob.glob(os.path.join(root, split, "seq_*.pt")))
    if limit:
        paths = paths[:limit]
    seqs = []
    for p in paths:
        r = torch.load(p)
        if r["ids"].shape[0] >= min_len:
            seqs.append(r)
    if not seqs:
        raise SystemExit(f"no sequences in {os.path.join(root, split)} (run extract_attention.py extract)")
    return seqs


# ------------------------------------------------------------------------------------------ controller

class Controller(torch.nn.Module):
    def __init__(self, feat_dim, key_dim=32, state_dim=16):
        super().__init__()
        self.key_dim, self.state_dim = key_dim, state_dim
        self.register_buffer("feat_mean", torch.zeros(feat_dim))
        self.register_buffer("feat_inv_std", torch.ones(feat_dim))
        self.key_proj = torch.nn.Linear(feat_dim, key_dim)
        self.query_proj = torch.nn.Linear(feat_dim, key_dim)
        self.gru = torch.nn.GRUCell(NUM_INPUTS, state_dim)
        self.score = torch.nn.Linear(state_dim + NUM_INPUTS, 1)  # over [h, x]: a skip from the inputs
        with torch.no_grad():
            self.key_proj.weight.mul_(0.3)
            self.query_proj.weight.mul_(0.3)

    def features(self, feats):
        """feats [..., L, hidden] -> (key feature, query feature) [..., key_dim]."""
        u = (feats.flatten(-2).float() - self.feat_mean) * self.feat_inv_std
        return self.key_proj(u), self.query_proj(u)

    def score_of(self, h, x):
        return self.score(torch.cat([h, x], -1)).squeeze(-1)

    def folded(self):
        """Projection weights with the input normalisation folded in (what controller.bin stores)."""
        out = {}
        for name, lin in (("key_proj", self.key_proj), ("query_proj", self.query_proj)):
            w = lin.weight * self.feat_inv_std[None, :]
            b = lin.bias - w @ self.feat_mean
            out[name + ".weight"], out[name + ".bias"] = w, b
        return out


def step_inputs(a, cached, age, aff, acc, key_dim):
    return torch.stack([C_MASS * torch.log(a + MASS_EPS), cached.float(), C_AGE * torch.log1p(age.float()),
                        aff / math.sqrt(key_dim), C_MASS * torch.log(acc + MASS_EPS)], dim=-1)


# ------------------------------------------------------------------------------------------ simulation

def protected_mask(n, num_sink, num_recent, device):
    """Tokens 0..n-1 (n - 1 = the current query) that always keep their slot."""
    i = torch.arange(n, device=device)
    return (i < num_sink) | (i >= n - num_recent)


def select_cache(score, cached, m, rebuild, prot):
    """Which of the n tokens seen so far keep a slot for the next step: m - 1 of them (the next token takes
    the last slot). score [B, n], cached [B, n] bool, prot [n] bool. Candidates are the cached tokens and
    the top-`rebuild` released ones; protected tokens first, then the best candidates by score."""
    B, n = score.shape
    if n + 1 <= m:
        return torch.ones(B, n, dtype=torch.bool, device=score.device)
    ninf = torch.tensor(float("-inf"), device=score.device)
    cand = cached
    if rebuild > 0:
        v, idx = torch.where(~cached, score, ninf).topk(min(rebuild, n), dim=-1)
        cand = cand | torch.zeros_like(cand).scatter(1, idx, v > ninf)
    free = m - 1 - int(prot.sum())
    keep = prot.expand(B, n).clone()
    if free > 0:
        v, idx = torch.where(cand & ~prot, score, ninf).topk(min(free, n), dim=-1)
        keep = keep | torch.zeros_like(keep).scatter(1, idx, v > ninf)
    return keep


def simulate(ctrl, P, feats, m, *, policy="adore", rebuild=0, num_sink=4, num_recent=16, horizon=4,
             loss_kind="bce", tbptt=64, train=False, on_chunk=None, Y=None, record=False):
    """Runs the release loop over a batch. P [B, T, T] pooled attention (float32), feats [B, T, L, H].
    policy: adore (controller scores; num_sink + num_recent protected), h2o (accumulated observed mass, the
    engine's heavy_hitter: the recent m/2 protected), window (num_sink + the most recent).
    Returns dict: loss sum (train) and, in eval, sums of recall / mass coverage over steps where the cache
    is full: for query t+1, the cache chosen after step t (plus t+1 itself) against the true top-m of
    P[t+1] and its attention mass. Y [B, T, T]: the map the labels are taken from (default P; e.g. the
    value-weighted attention). record: also return 'mask' [B, T, T] bool, the cache each query saw (the
    schedule, for a masked forward)."""
    B, T, _ = P.shape
    dev = P.device
    ar = torch.arange(T, device=dev)
    cached = torch.zeros(B, 0, dtype=torch.bool, device=dev)
    acc = torch.zeros(B, 0, device=dev)
    out = {"loss": 0.0, "loss_n": 0, "recall": 0.0, "coverage": 0.0, "n": 0}
    if policy == "adore":
        kf, qf = ctrl.features(feats)
        h = torch.zeros(B, 0, ctrl.state_dim, device=dev)
        if train:
            Yf = P if Y is None else Y
            cs = torch.cat([torch.zeros(B, 1, T, device=dev), Yf.cumsum(1)], 1)  # cs[u] = sum of Y[< u]
    zero_h = torch.zeros(B, 1, ctrl.state_dim if ctrl is not None else 1, device=dev)
    chunk_loss = None
    if record:
        out["mask"] = torch.zeros(B, T, T, dtype=torch.bool, device=dev)
    for t in range(T):
        n = t + 1
        idx = ar[:n]
        cached = torch.cat([cached, torch.ones(B, 1, dtype=torch.bool, device=dev)], 1)
        if record:
            out["mask"][:, t, :n] = cached
        a = P[:, t, :n] * cached
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
        acc = torch.cat([acc, torch.zeros(B, 1, device=dev)], 1) + a
        if policy == "adore":
            prot = protected_mask(n, num_sink, num_recent, dev)
            aff = (kf[:, :n] * qf[:, t:t + 1]).sum(-1)
            x = step_inputs(a, cached, (t - idx).expand(B, n), aff, acc, ctrl.key_dim)
            h = torch.cat([h, zero_h], 1)
            h = ctrl.gru(x.reshape(B * n, NUM_INPUTS), h.reshape(B * n, -1)).view(B, n, -1)
            s = ctrl.score_of(h, x)
            if train and n >= m and n < T:
                e = min(T, n + horizon)
                fut = cs[:, e, :n] - cs[:, n, :n]  # what the next `horizon` queries pay tokens <= t
                lm = ~prot
                l = 0.0
                if loss_kind in ("bce", "both"):
                    k = m - 1 - int(prot.sum())
                    _, top = torch.where(lm, fut, torch.tensor(-1.0, device=dev)).topk(k, dim=-1)
                    y = torch.zeros_like(fut).scatter(1, top, 1.0)
                    bce = Fn.binary_cross_entropy_with_logits(s, y, reduction="none")
                    l = l + (bce * lm).sum() / lm.sum() / B
                if loss_kind in ("listwise", "both"):
                    q = torch.where(lm, fut, torch.zeros_like(fut))
                    q = q / q.sum(-1, keepdim=True).clamp_min(1e-12)
                    ls = torch.log_softmax(torch.where(lm, s, torch.tensor(-1e4, device=dev)), -1)
                    l = l - (q * ls).sum() / B
                chunk_loss = l if chunk_loss is None else chunk_loss + l
                out["loss_n"] += 1
            if train and (n % tbptt == 0 or n == T):
                if chunk_loss is not None:
                    chunk_loss.backward()
                    out["loss"] += float(chunk_loss.detach())
                    if on_chunk is not None:
                        on_chunk()  # truncated BPTT: one optimizer step per chunk
                chunk_loss = None
                h = h.detach()
                kf, qf = ctrl.features(feats)  # a fresh graph for the next chunk
            score = s.detach()
        elif policy == "h2o":
            score = acc
            prot = idx > t - m // 2
        elif policy == "window":
            score = idx.float().expand(B, n)
            prot = (idx < num_sink) | (idx > t - (m - 1 - num_sink))
        else:
            raise ValueError(policy)
        cached = select_cache(score, cached, m, rebuild if policy == "adore" else 0, prot)
        if not train and n < T and n >= m:
            c = torch.cat([cached, torch.ones(B, 1, dtype=torch.bool, device=dev)], 1)
            p = P[:, n, :n + 1]
            _, top = p.topk(m, dim=-1)
            out["recall"] += float(c.gather(1, top).float().mean(-1).sum())
            out["coverage"] += float((p * c).sum(-1).sum())
            out["n"] += B
    return out


# ------------------------------------------------------------------------------------------------- I/O

def write_bin(ctrl, path, feature_layers, hidden, num_sink, num_recent):
    tensors = dict(ctrl.folded())
    sd = ctrl.state_dict()
    for k in ("gru.weight_ih", "gru.weight_hh", "gru.bias_ih", "gru.bias_hh", "score.weight", "score.bias"):
        tensors[k] = sd[k]
    table, blobs, off = [], [], 0
    for name, t in tensors.items():
        a = t.detach().float().contiguous().cpu()
        table.append({"name": name, "shape": list(a.shape), "offset": off})
        b = a.numpy().astype("<f4").tobytes()
        blobs.append(b)
        off += len(b)
    header = {"feature_layers": list(feature_layers), "hidden_size": hidden, "key_dim": ctrl.key_dim,
              "state_dim": ctrl.state_dim, "num_inputs": NUM_INPUTS, "mass_eps": MASS_EPS, "mass_coef": C_MASS,
              "age_coef": C_AGE, "num_sink": num_sink, "num_recent": num_recent, "tensors": table}
    hb = json.dumps(header, separators=(",", ":")).encode()
    with open(path, "wb") as fh:
        fh.write(MAGIC + struct.pack("<II", VERSION, len(hb)) + hb)
        for b in blobs:
            fh.write(b)


def write_golden(ctrl, seq, path, num_pool, n_tokens=8, seed=0):
    """A few steps of the per-token inputs -> features, h and scores, for the C++ test."""
    g = torch.Generator().manual_seed(seed)
    feats = seq["feats"][:n_tokens].float()  # [n, L, H]
    with torch.no_grad():
        # The folded projections, as stored in controller.bin and computed by the C++ controller.
        fw = ctrl.folded()
        flat = feats.reshape(n_tokens, -1)
        kf = Fn.linear(flat, fw["key_proj.weight"], fw["key_proj.bias"])
        qf = Fn.linear(flat, fw["query_proj.weight"], fw["query_proj.bias"])
        h = torch.zeros(n_tokens, ctrl.state_dim)
        acc = torch.zeros(n_tokens)
        steps = []
        for t in range(n_tokens):
            mass = seq["attn"][t, :t + 1].float() * num_pool  # engine-style mass: sum over layers, heads
            cached = (torch.rand(t + 1, generator=g) > 0.3)
            cached[t] = True
            raw = mass * cached
            scale = 1.0 / float(raw.sum())  # the engine's normalisation: masses sum to 1 over the cache
            a = raw * scale
            acc[:t + 1] += a
            aff = (kf[:t + 1] * qf[t]).sum(-1)
            x = step_inputs(a, cached, t - torch.arange(t + 1), aff, acc[:t + 1], ctrl.key_dim)
            h[:t + 1] = ctrl.gru(x, h[:t + 1])
            s = ctrl.score_of(h[:t + 1], x)
            steps.append({"query_pos": t, "mass": raw.tolist(), "cached": [int(c) for c in cached],
                          "mass_scale": scale, "h": h[:t + 1].tolist(), "scores": s.tolist()})
    rec = {"n_tokens": n_tokens, "features": feats.reshape(n_tokens, -1).tolist(), "key_features": kf.tolist(),
           "query_features": qf.tolist(), "steps": steps}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(rec, fh, separators=(",", ":"))


# ------------------------------------------------------------------------------------------------ main

def crop(seq, T):
    if seq["ids"].shape[0] <= T:
        return seq
    out = dict(seq, ids=seq["ids"][:T], attn=seq["attn"][:T, :T].contiguous(), feats=seq["feats"][:T])
    if "vattn" in seq:
        out["vattn"] = seq["vattn"][:T, :T].contiguous()
    return out


def batches(seqs, bs, gen):
    by_len = {}
    for s in seqs:
        by_len.setdefault(s["ids"].shape[0], []).append(s)
    out = []
    for group in by_len.values():
        perm = torch.randperm(len(group), generator=gen).tolist()
        for i in range(0, len(group), bs):
            out.append([group[j] for j in perm[i:i + bs]])
    return [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]


def stack(batch, dev, target="attn"):
    P = torch.stack([s["attn"] for s in batch]).to(dev).float()
    F = torch.stack([s["feats"] for s in batch]).to(dev)
    Y = None if target == "attn" else torch.stack([s[target] for s in batch]).to(dev).float()
    return P, F, Y


def evaluate_ppl(ctrl, seqs, ms, dev, args, log, policies=("adore", "h2o", "window")):
    """Perplexity of held-out text under each policy's schedule: the closed-loop simulation's cache per
    query as the attention mask of one forward of the model (gguf_llama.py; equal to token-by-token decoding
    with that schedule and no rebuild), over the positions >= m, against full attention on the same
    positions. The simulation's masses approximate the engine's (full attention renormalised over the
    cache), so this is the controller's quality before the engine's own evaluation (adore-eval)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gguf_llama import LlamaGguf
    model = LlamaGguf(args.ppl_model, device=dev)
    rows = []
    T = min(s["ids"].shape[0] for s in seqs)
    seqs = [crop(s, T) for s in seqs]
    P, F, _ = stack(seqs, dev)  # one batched simulation per policy and budget
    for m in ms:
        if T <= m:
            continue
        tot = {}
        masks = {"full": [None] * len(seqs)}
        for pol in policies:
            masks[pol] = simulate(ctrl, P, F, m, policy=pol, num_sink=args.num_sink, num_recent=args.num_recent,
                                  record=True)["mask"]
        for name, ms_ in masks.items():
            for s, mask in zip(seqs, ms_):
                ids = s["ids"].long().to(dev)
                logits = model(ids, want_attn=False, want_logits=True, mask=mask)["logits"]
                lp = torch.log_softmax(logits[:-1].double(), -1).gather(1, ids[1:, None]).squeeze(1)[m - 1:]
                a = tot.setdefault(name, [0.0, 0])
                a[0] -= float(lp.sum())
                a[1] += lp.numel()
        use = seqs
        base = math.exp(tot["full"][0] / tot["full"][1])
        for name in ["full"] + list(policies):
            ppl = math.exp(tot[name][0] / tot[name][1])
            rows.append((m, name, ppl, ppl / base - 1))
            log(f"  m={m:5d} {name:12s} perplexity {ppl:9.3f}  {100 * (ppl / base - 1):+6.2f}% vs full  "
                f"({len(use)} seqs, positions >= m)")
    return rows


def evaluate(ctrl, seqs, ms, dev, args, log, policies=("adore", "h2o", "window"), rebuilds=(0,)):
    rows = []
    for m in ms:
        use = sorted((s for s in seqs if s["ids"].shape[0] > m), key=lambda s: s["ids"].shape[0])
        if not use:
            continue
        groups = []  # batches of equal length
        for s in use:
            if groups and len(groups[-1]) < args.eval_batch and groups[-1][0]["ids"].shape[0] == s["ids"].shape[0]:
                groups[-1].append(s)
            else:
                groups.append([s])
        for pol in policies:
            for R in (rebuilds if pol == "adore" else (0,)):
                tot = {"recall": 0.0, "coverage": 0.0, "n": 0}
                with torch.no_grad():
                    for group in groups:
                        P, F, _ = stack(group, dev)
                        r = simulate(ctrl, P, F, m, policy=pol, rebuild=R, num_sink=args.num_sink,
                                     num_recent=args.num_recent, train=False)
                        for k in tot:
                            tot[k] += r[k]
                name = pol if pol != "adore" else f"adore(R={R})"
                row = (m, name, tot["recall"] / max(1, tot["n"]), tot["coverage"] / max(1, tot["n"]),
                       len(use), "/".join(sorted({str(s["ids"].shape[0]) for s in use})))
                rows.append(row)
                log(f"  m={m:5d} {name:12s} top-m recall {row[2]:.4f}  attention mass kept {row[3]:.4f}  "
                    f"({row[4]} seqs, T={row[5]})")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=".dev/adore/data")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest for these small ops)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eval-batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--key-dim", type=int, default=32)
    ap.add_argument("--state-dim", type=int, default=16)
    ap.add_argument("--train-m", default="1/8,1/4,1/2", help="budgets during training, as fractions of T")
    ap.add_argument("--eval-m", default="256,512,1024")
    ap.add_argument("--rebuild", type=int, default=0, help="R simulated during training")
    ap.add_argument("--eval-rebuild", default="0,16")
    ap.add_argument("--num-sink", type=int, default=4)
    ap.add_argument("--num-recent", type=int, default=16)
    ap.add_argument("--horizon", type=int, default=4)
    ap.add_argument("--loss", default="bce", choices=["bce", "listwise", "both"])
    ap.add_argument("--target", default="attn", choices=["attn", "vattn"],
                    help="map the labels come from: pooled attention, or value-weighted attention (extract "
                         "--vattn): each head's weight times the norm of what the token adds through that head")
    ap.add_argument("--ppl-model", default="", help="GGUF model: also report held-out perplexity per policy")
    ap.add_argument("--ppl-source", default="austen", help="held-out source for the perplexity evaluation")
    ap.add_argument("--ppl-seqs", type=int, default=4)
    ap.add_argument("--ppl-policies", default="adore,h2o,window")
    ap.add_argument("--no-recall-eval", action="store_true", help="skip the top-m recall evaluation")
    ap.add_argument("--tbptt", type=int, default=64)
    ap.add_argument("--train-limit", type=int, default=0)
    ap.add_argument("--heldout-limit", type=int, default=0)
    ap.add_argument("--train-len", type=int, default=0, help="crop training sequences to this length (0: as extracted)")
    ap.add_argument("--eval-len", type=int, default=0, help="crop held-out sequences to this length (0: as extracted)")
    ap.add_argument("--num-pool", type=int, default=270, help="num_layers * num_heads of the model")
    ap.add_argument("--out", default="tools/adore/controller.bin")
    ap.add_argument("--log", default="tools/adore/train_log.txt")
    ap.add_argument("--golden", default="tests/data/adore/controller_golden.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-budget", type=float, default=0,
                    help="stop training after this many seconds (0: run all epochs); evaluation and export follow")
    ap.add_argument("--init", default="", help="start from this checkpoint (--epochs 0: evaluate / export only)")
    ap.add_argument("--ckpt", default=".dev/adore/controller.pt", help="PyTorch checkpoint written after training")
    ap.add_argument("--eval-protect", default="",
                    help="extra sink:recent protected sets to evaluate the controller with, e.g. 0:16,4:0,4:64")
    ap.add_argument("--random-for-hidden", type=int, default=0,
                    help="only write an untrained controller (random weights, feature layers 3,10,20) for a model "
                         "of this hidden size to --out and exit: for throughput benchmarks at shapes (e.g. the "
                         "7B synthetic one) that no controller was trained for; the cost is the same")
    args = ap.parse_args()
    if args.random_for_hidden:
        torch.manual_seed(args.seed)
        write_bin(Controller(3 * args.random_for_hidden, args.key_dim, args.state_dim), args.out, [3, 10, 20],
                  args.random_for_hidden, args.num_sink, args.num_recent)
        print(f"wrote {args.out}: untrained controller for hidden size {args.random_for_hidden}")
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    for path in (args.log, args.out, args.golden):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    logf = open(args.log, "w")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    log(f"# train_controller.py {' '.join(sys.argv[1:])}")
    log(f"# device {dev}, torch {torch.__version__}")
    train = load_split(args.data, "train", args.train_limit)
    held = load_split(args.data, "heldout", args.heldout_limit)
    # Attention is causal, so the first T' tokens of a sequence are a valid sequence of length T' with
    # exactly the same pooled attention block and features: cropping is free.
    if args.train_len:
        train = [crop(s, args.train_len) for s in train]
    if args.eval_len:
        held = [crop(s, args.eval_len) for s in held]
    layers = train[0]["feature_layers"]
    L, H = train[0]["feats"].shape[1:]
    srcs = lambda ss: sorted({(s["source"], s["ids"].shape[0]) for s in ss})
    log(f"# train: {len(train)} seqs {srcs(train)}; held-out: {len(held)} seqs {srcs(held)}")
    log(f"# features: attn_norm output of layers {layers} ({L} x {H}); key_dim {args.key_dim}, "
        f"state_dim {args.state_dim}")

    ctrl = Controller(L * H, args.key_dim, args.state_dim).to(dev)
    with torch.no_grad():
        allf = torch.cat([s["feats"].float().flatten(1) for s in train[:64]])
        ctrl.feat_mean.copy_(allf.mean(0))
        ctrl.feat_inv_std.copy_(1.0 / allf.std(0).clamp_min(1e-3))
        del allf
    if args.init:
        ctrl.load_state_dict(torch.load(args.init, map_location=dev))
        log(f"# initialised from {args.init}")
    opt = torch.optim.Adam(ctrl.parameters(), lr=args.lr)
    fracs = [float(Fraction(f)) for f in args.train_m.split(",")]
    gen = torch.Generator().manual_seed(args.seed)
    # Optimizer steps: one per truncated-BPTT chunk (an upper bound: chunks before the cache fills have no loss).
    total_steps = args.epochs * sum(-(-b[0]["ids"].shape[0] // args.tbptt)
                                    for b in batches(train, args.batch, torch.Generator().manual_seed(0)))
    step_count = [0]

    def set_lr():
        # Warm-up then cosine decay over the run's progress: optimizer steps, or the time budget when that
        # ends training first (so a budget-cut run still anneals).
        frac = step_count[0] / max(1, total_steps)
        if args.time_budget:
            frac = max(frac, (time.time() - t0) / args.time_budget)
        frac = min(1.0, frac)
        scale = frac / 0.05 if frac < 0.05 else 0.5 * (1 + math.cos(math.pi * (frac - 0.05) / 0.95))
        for g in opt.param_groups:
            g["lr"] = args.lr * max(0.02, scale)

    t0 = time.time()
    stop = False
    for ep in range(args.epochs):
        tot, n = 0.0, 0
        for batch in batches(train, args.batch, gen):
            if args.time_budget and time.time() - t0 > args.time_budget:
                stop = True
                break
            P, F, Y = stack(batch, dev, args.target)
            T = P.shape[1]
            m = max(16, int(T * fracs[int(torch.randint(len(fracs), (1,), generator=gen))]))
            def on_chunk():
                torch.nn.utils.clip_grad_norm_(ctrl.parameters(), 1.0)
                set_lr()
                opt.step()
                step_count[0] += 1
                opt.zero_grad()

            opt.zero_grad()
            r = simulate(ctrl, P, F, m, policy="adore", rebuild=args.rebuild, num_sink=args.num_sink,
                         num_recent=args.num_recent, horizon=args.horizon, loss_kind=args.loss,
                         tbptt=args.tbptt, train=True, on_chunk=on_chunk, Y=Y)
            tot += r["loss"] / max(1, r["loss_n"])
            n += 1
        log(f"epoch {ep + 1}/{args.epochs}: loss {tot / max(1, n):.5f}  ({n} batches, {time.time() - t0:.0f}s)")
        if stop:
            log(f"# time budget of {args.time_budget:.0f}s reached")
            break
    if args.ckpt and args.epochs > 0:
        os.makedirs(os.path.dirname(os.path.abspath(args.ckpt)), exist_ok=True)
        torch.save(ctrl.state_dict(), args.ckpt)
        log(f"# wrote {args.ckpt}")

    ms = [int(x) for x in args.eval_m.split(",")]
    log("# held-out evaluation (closed loop; recall = fraction of the true top-m of the next query's pooled "
        "attention held in the cache; mass = its attention mass held)")
    if not args.no_recall_eval:
        evaluate(ctrl, held, ms, dev, args, log, rebuilds=[int(x) for x in args.eval_rebuild.split(",")])
    for spec in filter(None, args.eval_protect.split(",")):
        sink, recent = (int(v) for v in spec.split(":"))
        log(f"# controller with protected set sink={sink} recent={recent}")
        evaluate(ctrl, held, ms, dev, argparse.Namespace(**dict(vars(args), num_sink=sink, num_recent=recent)),
                 log, policies=("adore",), rebuilds=(0,))
    if args.ppl_model:
        pseqs = [s for s in held if s["source"] == args.ppl_source][:args.ppl_seqs]
        log(f"# held-out perplexity ({args.ppl_source}, {len(pseqs)} seqs): the simulated schedule as the mask of "
            "one model forward")
        with torch.no_grad():
            evaluate_ppl(ctrl, pseqs, ms, dev, args, log, policies=args.ppl_policies.split(","))
    ctrl = ctrl.cpu()
    write_bin(ctrl, args.out, layers, H, args.num_sink, args.num_recent)
    log(f"# wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    write_golden(ctrl, held[0], args.golden, args.num_pool)
    log(f"# wrote {args.golden}")


if __name__ == "__main__":
    main()
