#!/usr/bin/env python3
"""Side-by-side CPU benchmark: llama.cpp (llama-batched-bench) vs ADORE (adore-bench).

Both engines run in the same invocation, with the same model, thread count, batch sizes,
prompt lengths and generation length; each measurement is repeated --reps times (engines
interleaved) and the median (or, with --stat max, the best) is kept. Writes bench/results/cpu_decode.json (+ .png when
matplotlib is importable) and prints a markdown table with the adore/llama.cpp ratios.

A run that is missing an engine (or any (batch, prompt) row) is partial: its JSON/PNG go
to .dev/bench/ instead of bench/results/, unless --out is given.

  bench/llamacpp.sh cpu                       # once: builds .dev/llamacpp-cpu/bin/llama-batched-bench
  python3 bench/cpu_decode.py [--batches 1,8] [--prompts 128,512] [--gen 64] [--threads N]
                              [--reps 3] [--stat median|max] [--adore-bench PATH] [--llama-batched-bench PATH]
  python3 bench/cpu_decode.py --plot-only bench/results/cpu_decode.json [--png OUT.png]   # redraw the plot only
"""
import argparse
import glob
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DEFAULT = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
MODEL_LABEL = "SmolLM2-135M-Instruct Q4_1"
LLAMA_DEFAULT = os.path.join(ROOT, ".dev", "llamacpp-cpu", "bin", "llama-batched-bench")
FINAL_JSON = os.path.join(ROOT, "bench", "results", "cpu_decode.json")
PARTIAL_JSON = os.path.join(ROOT, ".dev", "bench", "cpu_decode.partial.json")


def log(msg):
    print(f"cpu_decode: {msg}", file=sys.stderr, flush=True)


def int_list(s):
    return [int(x) for x in s.split(",") if x.strip()]


# ---------------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------------

def machine_info():
    model, sockets_cores = "unknown CPU", set()
    try:
        phys = core = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k, v = k.strip(), v.strip()
                if k == "model name" and model == "unknown CPU":
                    model = v
                elif k == "physical id":
                    phys = v
                elif k == "core id":
                    core = v
                    sockets_cores.add((phys, core))
    except OSError:
        pass
    ram = "?"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    ram = f"{int(line.split()[1]) / (1 << 20):.1f} GiB RAM"
                    break
    except OSError:
        pass
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = f"{ncpu} logical CPUs"
    if sockets_cores:
        cores += f" ({len(sockets_cores)} physical cores)"
    return f"{model}, {cores}, {ram}"


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return None


def git(*args):
    return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True)


def commit_id():
    """HEAD sha when the tree is clean; else 'uncommitted-<hash of the working tree files>'."""
    head = git("rev-parse", "HEAD")
    head_sha = head.stdout.strip() if head.returncode == 0 else None
    dirty = git("status", "--porcelain").stdout.strip()
    if head_sha and not dirty:
        return head_sha
    # Hash every tracked + untracked-not-ignored file: identifies the exact source state.
    files = git("ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout.split("\0")
    h = hashlib.sha256()
    for p in sorted(set(f for f in files if f)):
        full = os.path.join(ROOT, p)
        if not os.path.isfile(full):
            continue
        h.update(p.encode() + b"\0")
        with open(full, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    tag = f"uncommitted-{h.hexdigest()[:12]}"
    return f"{tag} (on {head_sha[:12]})" if head_sha else tag


# ---------------------------------------------------------------------------------------------
# Engines
# ---------------------------------------------------------------------------------------------

def run_cmd(cmd, what, timeout):
    log(f"{what}: {shlex.join(cmd)}")
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or None)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} timed out after {timeout} s")
    log(f"{what}: exit {p.returncode} after {time.time() - t0:.1f} s")
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        raise RuntimeError(f"{what} failed (exit {p.returncode})")
    return p


def llama_cmd(args):
    # Non-shared prompts (no -pps): every sequence of a batch prefills its own P-token prompt,
    # so prefill t/s = B*P / t_pp, decode t/s = B*G / t_tg. The KV cache is per-sequence
    # (not unified); each sequence gets ctx/max(B) cells, so size ctx for the largest case.
    per_seq = -(-(max(args.prompts) + args.gen) // 256) * 256
    ctx = args.ctx or max(args.batches) * per_seq
    return [args.llama_batched_bench, "-m", args.model, "-c", str(ctx), "-b", "2048", "-ub", "512",
            "-npp", ",".join(map(str, args.prompts)), "-ntg", str(args.gen),
            "-npl", ",".join(map(str, args.batches)), "-t", str(args.threads),
            "--output-format", "jsonl"]


def run_llama(args, cmd):
    p = run_cmd(cmd, "llama.cpp", args.timeout)
    rows = {}
    for line in (p.stdout + "\n" + p.stderr).splitlines():
        line = line.strip()
        if not (line.startswith("{") and "speed_tg" in line):
            continue
        r = json.loads(line)
        rows[(r["pl"], r["pp"])] = {"decode_tok_s": r["speed_tg"], "prefill_tok_s": r["speed_pp"],
                                    "gen": r["tg"], "threads": r["n_threads"]}
    return rows


def adore_cmd(args, out_json):
    return [args.adore_bench, "--model", args.model, "--batch", ",".join(map(str, args.batches)),
            "--prompt", ",".join(map(str, args.prompts)), "--gen", str(args.gen),
            "--threads", str(args.threads), "--json", out_json]


def run_adore(args, cmd, out_json):
    run_cmd(cmd, "adore", args.timeout)
    with open(out_json) as f:
        data = json.load(f)
    rows = {}
    for r in data.get("rows", []):
        rows[(int(r["batch"]), int(r["prompt"]))] = {
            "decode_tok_s": float(r["decode_tok_s"]), "prefill_tok_s": float(r["prefill_tok_s"]),
            "gen": int(r.get("gen", args.gen)), "threads": args.threads}
    return rows


def find_adore_bench():
    cands = []
    for pat in ("build*/adore-bench", "build*/*/adore-bench", "build*/*/*/adore-bench",
                ".dev/build*/adore-bench", ".dev/build*/*/adore-bench", ".dev/build*/*/*/adore-bench"):
        cands += [p for p in glob.glob(os.path.join(ROOT, pat)) if os.access(p, os.X_OK)]
    return max(cands, key=os.path.getmtime) if cands else None


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def fmt(x):
    return "—" if x is None else f"{x:.1f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def markdown(rows, batches, prompts):
    get = {(r["engine"], r["batch"], r["prompt"]): r for r in rows}
    out = ["| batch | prompt | llama.cpp decode t/s | adore decode t/s | decode ratio adore/llama.cpp "
           "| llama.cpp prefill t/s | adore prefill t/s | prefill ratio adore/llama.cpp |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in batches:
        for p in prompts:
            l, a = get.get(("llama.cpp", b, p)), get.get(("adore-cpu", b, p))
            ld, ad = l and l["decode_tok_s"], a and a["decode_tok_s"]
            lp, ap = l and l["prefill_tok_s"], a and a["prefill_tok_s"]
            rd, rp = ratio(ad, ld), ratio(ap, lp)
            out.append(f"| {b} | {p} | {fmt(ld)} | {fmt(ad)} | {'—' if rd is None else f'{rd:.2f}x'} "
                       f"| {fmt(lp)} | {fmt(ap)} | {'—' if rp is None else f'{rp:.2f}x'} |")
    return "\n".join(out)


def plot(rows, batches, prompts, png, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not importable: skipping the plot")
        return
    engines = [e for e in ("llama.cpp", "adore-cpu") if any(r["engine"] == e for r in rows)]
    get = {(r["engine"], r["batch"], r["prompt"]): r for r in rows}
    labels = [f"B={b}\nP={p}" for b in batches for p in prompts]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(1, len(engines))
    for ax, key, name in ((axes[0], "decode_tok_s", "decode"), (axes[1], "prefill_tok_s", "prefill")):
        for i, e in enumerate(engines):
            vals = [(get.get((e, b, p)) or {}).get(key, 0) for b in batches for p in prompts]
            xs = [j + (i - (len(engines) - 1) / 2) * width for j in range(len(labels))]
            bars = ax.bar(xs, vals, width, label=e)
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_ylabel("tokens / s")
        ax.set_title(f"{name} throughput")
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    log(f"wrote {png}")


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=MODEL_DEFAULT)
    ap.add_argument("--batches", type=int_list, default=[1, 8])
    ap.add_argument("--prompts", type=int_list, default=[128, 512])
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--reps", type=int, default=3, help="repetitions per engine (interleaved)")
    ap.add_argument("--stat", choices=("median", "max"), default="median",
                    help="how reps are combined per row (max = best run; use on a noisy shared machine)")
    ap.add_argument("--ctx", type=int, default=0, help="llama.cpp -c (default: max(B)*roundup(max(P)+G, 256))")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per engine run (0: none)")
    ap.add_argument("--llama-batched-bench", default=LLAMA_DEFAULT)
    ap.add_argument("--adore-bench", default=None,
                    help="path to adore-bench (default: newest build*/**/adore-bench or .dev/build*/**/adore-bench)")
    ap.add_argument("--skip-llamacpp", action="store_true")
    ap.add_argument("--skip-adore", action="store_true")
    ap.add_argument("--out", default=None,
                    help=f"output JSON (default: {os.path.relpath(FINAL_JSON, ROOT)} for a complete run, "
                         f"{os.path.relpath(PARTIAL_JSON, ROOT)} otherwise); the PNG goes next to it")
    ap.add_argument("--plot-only", metavar="JSON",
                    help="only redraw the plot and table from an existing results JSON (runs no engine)")
    ap.add_argument("--png", default=None, help="with --plot-only: the PNG to write (default: next to the JSON)")
    args = ap.parse_args()
    command = shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv])

    if args.plot_only:
        with open(args.plot_only) as f:
            result = json.load(f)
        rows = result["rows"]
        batches = sorted({r["batch"] for r in rows})
        prompts = sorted({r["prompt"] for r in rows})
        gen = rows[0]["gen"] if rows else "?"
        threads = rows[0]["threads"] if rows else "?"
        title = (f"{MODEL_LABEL}, gen {gen}, {threads} threads, {result.get('stat', 'median')} of "
                 f"{result.get('reps', '?')} | {result.get('machine', '')}")
        plot(rows, batches, prompts, args.png or os.path.splitext(args.plot_only)[0] + ".png", title)
        print(markdown(rows, batches, prompts))
        return

    if not os.path.isfile(args.model):
        sys.exit(f"cpu_decode: model not found: {args.model} (run tools/fetch-model.sh)")

    engines = []
    if not args.skip_llamacpp:
        if os.access(args.llama_batched_bench, os.X_OK):
            engines.append("llama.cpp")
        else:
            log(f"llama-batched-bench not found at {args.llama_batched_bench} (run bench/llamacpp.sh cpu): skipping llama.cpp")
    if not args.skip_adore:
        args.adore_bench = args.adore_bench or find_adore_bench()
        if args.adore_bench and os.access(args.adore_bench, os.X_OK):
            engines.append("adore-cpu")
        else:
            log(f"adore-bench not found ({args.adore_bench or 'no build*/**/adore-bench'}; pass --adore-bench PATH): skipping adore")
    if not engines:
        sys.exit("cpu_decode: no engine to run")

    tmpdir = tempfile.TemporaryDirectory(prefix="cpu_decode.")
    adore_json = os.path.join(tmpdir.name, "adore.json")
    cmds = {"llama.cpp": llama_cmd(args)}
    if "adore-cpu" in engines:
        cmds["adore-cpu"] = adore_cmd(args, adore_json)

    load_before = loadavg()
    ncpu = len(os.sched_getaffinity(0))
    if load_before and load_before[0] > 0.5 * ncpu:
        log(f"WARNING: 1-min load average {load_before[0]:.1f} on {ncpu} CPUs: other work is running, "
            "numbers will be noisy (consider --stat max or a quiet machine)")
    samples = {e: {} for e in engines}  # engine -> (batch, prompt) -> list of row dicts
    for rep in range(args.reps):
        order = engines if rep % 2 == 0 else engines[::-1]  # alternate who goes first
        for e in order:
            log(f"rep {rep + 1}/{args.reps}: {e}")
            try:
                got = run_llama(args, cmds[e]) if e == "llama.cpp" else run_adore(args, cmds[e], adore_json)
            except (RuntimeError, OSError, ValueError, KeyError) as err:
                log(f"{e}: {err!r}: no result from this rep")
                got = {}
            for k, v in got.items():
                samples[e].setdefault(k, []).append(v)

    combine = statistics.median if args.stat == "median" else max
    rows = []
    for e in engines:
        for b in args.batches:
            for p in args.prompts:
                s = samples[e].get((b, p))
                if not s:
                    log(f"{e}: no result for batch={b} prompt={p}")
                    continue
                rows.append({"engine": e, "model": MODEL_LABEL, "batch": b, "prompt": p, "gen": s[0]["gen"],
                             "decode_tok_s": round(combine(x["decode_tok_s"] for x in s), 3),
                             "prefill_tok_s": round(combine(x["prefill_tok_s"] for x in s), 3),
                             "threads": s[0]["threads"]})

    complete = set(engines) == {"llama.cpp", "adore-cpu"} and len(rows) == 2 * len(args.batches) * len(args.prompts)
    out_json = args.out or (FINAL_JSON if complete else PARTIAL_JSON)
    if not complete and not args.out:
        log(f"partial run (engines: {', '.join(engines)}): writing to {os.path.relpath(out_json, ROOT)}, "
            f"not {os.path.relpath(FINAL_JSON, ROOT)}")
    os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
    machine = machine_info()
    result = {
        "command": command,
        "machine": machine,
        "commit": commit_id(),
        "engine_commands": {e: shlex.join(c) for e, c in cmds.items() if e in engines},
        "loadavg_before_after": [load_before, loadavg()],
        "reps": args.reps,
        "stat": args.stat,
        "rows": rows,
        # every rep's raw numbers, to judge the noise: engine -> "batch,prompt" -> [[decode, prefill], ...]
        "samples": {e: {f"{b},{p}": [[round(x["decode_tok_s"], 3), round(x["prefill_tok_s"], 3)] for x in v]
                        for (b, p), v in sorted(samples[e].items())} for e in engines},
    }
    with open(out_json, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    log(f"wrote {out_json}")

    title = f"{MODEL_LABEL}, gen {args.gen}, {args.threads} threads, {args.stat} of {args.reps} | {machine}"
    plot(rows, args.batches, args.prompts, os.path.splitext(out_json)[0] + ".png", title)

    print(f"\n{MODEL_LABEL}, gen={args.gen}, threads={args.threads}, {args.stat} of {args.reps} rep(s); {machine}\n")
    print(markdown(rows, args.batches, args.prompts))


if __name__ == "__main__":
    main()
