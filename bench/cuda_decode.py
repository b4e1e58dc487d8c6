#!/usr/bin/env python3
"""GPU benchmark driver: ADORE's CUDA engine vs llama.cpp (CUDA) vs Hugging Face transformers.

One invocation on the GPU machine runs, in this order, each under its own timeout and a global
time budget, and keeps going when one fails (the failure goes into the row notes):
  1. adore-bench-cuda --model GGUF (SmolLM2-135M, dequantized to bf16) over the SmolLM2 grid;
  2. llama-batched-bench (CUDA, Q4_1 GGUF, flash attention, all layers on the GPU) over the same grid;
  3. adore-bench-cuda --synthetic llama2-7b and llama3-8b over the large-model grid (+ prefill-only rows);
  4. bench/hf_decode.py (transformers, random bf16 weights, sdpa) on a small subset of every shape.
Everything is merged into OUT_DIR/cuda_decode.json ({"command","machine","commit","measured","rows",
"prefill_rows"}), a markdown table with the ratios is printed, and OUT_DIR/cuda_decode.png is drawn when
matplotlib is importable (else, on another machine: cuda_decode.py --plot-only OUT_DIR/cuda_decode.json).

  python3 bench/cuda_decode.py --adore-bench-cuda BIN/adore-bench-cuda --model $ADORE_MODEL \\
      --llama-batched-bench LLB --commit SHA [--out-dir bench/results] [--time-budget 540]

floor_step_ms (every engine, same formula, bf16 weights): (weight bytes + batch x context at mid-generation
x K/V bytes per token) / copy bandwidth measured by adore-bench-cuda (device-to-device copy, read + write).
llama.cpp reads 4-bit weights, so its rows also carry floor_step_ms_own_weights (GGUF file size as the
weight bytes, f16 K/V).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
from cpu_decode import commit_id, machine_info  # noqa: E402
from hf_decode import SHAPES, floor_step_ms, kv_bytes_per_token  # noqa: E402

ENGINES = ("adore", "llama.cpp", "transformers")
NOMINAL_BANDWIDTH = 4.25e12  # used only when adore-bench-cuda measured nothing (noted in the JSON)


def log(msg):
    print(f"cuda_decode: {msg}", file=sys.stderr, flush=True)


def int_list(s):
    return [int(x) for x in s.split(",") if x.strip()]


def csv(xs):
    return ",".join(map(str, xs))


class Budget:
    """The global wall-clock budget: each run gets min(its own timeout, what is left)."""

    def __init__(self, seconds):
        self.end = time.time() + seconds

    def left(self):
        return self.end - time.time()


def child_env(binary):
    """LD_LIBRARY_PATH with the bundled libraries next to the binary (BIN/lib) and the CUDA toolkit's."""
    env = dict(os.environ)
    paths = [p for p in (os.path.join(os.path.dirname(os.path.abspath(binary)), "lib"), "/usr/local/cuda/lib64")
             if os.path.isdir(p)]
    if env.get("LD_LIBRARY_PATH"):
        paths.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(paths)
    return env


def run_cmd(cmd, what, timeout, env=None):
    """Runs cmd; returns (stdout + stderr text, error string or None). Output is kept on failure/timeout."""
    if timeout < 10:
        return "", f"skipped: time budget used up before {what}"
    log(f"{what} (timeout {timeout:.0f} s): {shlex.join(cmd)}")
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
        return out, f"{what} timed out after {timeout:.0f} s"
    except OSError as e:
        return "", f"{what} could not start: {e}"
    log(f"{what}: exit {p.returncode} after {time.time() - t0:.1f} s")
    out = p.stdout + "\n" + p.stderr
    if p.returncode != 0:
        sys.stderr.write(out[-3000:] + "\n")
        last = [line for line in out.strip().splitlines() if line.strip()][-1:] or ["no output"]
        return out, f"{what} failed (exit {p.returncode}): {last[0][:240]}"
    return out, None


# ---------------------------------------------------------------------------------------------------------
# Engines

def run_adore(args, shape, source, batches, prompts, prefill_only, budget, tmp):
    """adore-bench-cuda on one model; returns (parsed JSON or None, error or None, command)."""
    out_json = os.path.join(tmp, f"adore-{shape}.json")
    max_ctx = max(prompts + prefill_only) + args.warmup + args.gen + 1
    cmd = [args.adore_bench_cuda, *source, "--batch", csv(batches), "--prompt", csv(prompts),
           "--gen", str(args.gen), "--warmup", str(args.warmup), "--prefill_tokens", str(args.prefill_tokens),
           "--max_context", str(max_ctx), "--json", out_json]
    if prefill_only:
        cmd += ["--prefill_only", csv(prefill_only)]
    cmd += args.adore_arg
    if args.commit:
        cmd += ["--commit", args.commit]
    out, err = run_cmd(cmd, f"adore {shape}", min(args.timeout, budget.left()), child_env(args.adore_bench_cuda))
    sys.stderr.write("".join(line + "\n" for line in out.splitlines() if line.startswith(("adore ", "engine "))))
    data = None
    if os.path.exists(out_json):  # written after every row, so a timeout keeps the rows done so far
        with open(out_json) as f:
            data = json.load(f)
    return data, err, shlex.join(cmd)


def llama_ctx(batches, prompts, gen):
    # Non-unified KV: each of max(npl) sequences gets ctx / max(npl) cells (padded to 256); size it for the
    # longest prompt + gen (batched-bench silently skips a (pp, pl) whose pl * (pp + tg) exceeds ctx).
    per_seq = -(-(max(prompts) + gen) // 256) * 256
    return max(batches) * per_seq


def run_llama(args, batches, prompts, budget):
    """llama-batched-bench over (batches x prompts); returns ({(b, p): row}, error, command)."""
    cmd = [args.llama_batched_bench, "-m", args.model, "-c", str(llama_ctx(batches, prompts, args.gen)),
           "-b", "2048", "-ub", "512", "-npp", csv(prompts), "-ntg", str(args.gen), "-npl", csv(batches),
           "-ngl", "99", "-fa", "on", "--output-format", "jsonl"]
    out, err = run_cmd(cmd, "llama.cpp", min(args.llama_timeout, budget.left()), child_env(args.llama_batched_bench))
    rows = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{") and "speed_tg" in line:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            rows[(int(r["pl"]), int(r["pp"]))] = r
    return rows, err, shlex.join(cmd)


def run_hf(args, bandwidth, budget, tmp):
    out_json = os.path.join(tmp, "hf.json")
    cmd = [args.python, os.path.join(BENCH, "hf_decode.py"), "--models", "smollm2-135m,llama2-7b,llama3-8b",
           "--batches", csv(args.hf_batches), "--prompts", csv(args.hf_prompts), "--gen", str(args.gen),
           "--warmup", str(args.warmup), "--bandwidth", str(bandwidth), "--json", out_json]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out, err = run_cmd(cmd, "transformers", min(args.timeout, budget.left()), env)
    sys.stderr.write("".join(line + "\n" for line in out.splitlines() if line.startswith("hf_decode:")))
    data = None
    if os.path.exists(out_json):
        with open(out_json) as f:
            data = json.load(f)
    return data, err, shlex.join(cmd)


# ---------------------------------------------------------------------------------------------------------
# Rows

def empty_row(engine, shape, b, p, gen, note):
    return {"engine": engine, "shape": shape, "model": SHAPES[shape]["label"], "batch": b, "prompt": p, "gen": gen,
            "decode_tok_s": None, "step_ms": None, "floor_step_ms": None, "step_over_floor": None,
            "prefill_tok_s": None, "prefill_ms": None, "note": note}


def adore_rows(data, err, shape, batches, prompts, gen, weights_note):
    """Decode rows for every (b, p) of the grid (missing ones carry the error) and the prefill-only rows."""
    got = {}
    prefill = []
    for r in (data or {}).get("rows", []):
        r = dict(r, shape=shape, model=SHAPES[shape]["label"])
        r["note"] = "; ".join(x for x in (weights_note, r.get("note")) if x)
        if r.get("kind") == "prefill":
            prefill.append(r)
        else:
            got[(r["batch"], r["prompt"])] = r
    rows = [got.get((b, p)) or empty_row("adore", shape, b, p, gen, err or "no result") for b in batches
            for p in prompts]
    return rows, prefill


def llama_rows(got, err, batches, prompts, gen, bandwidth, own_weight_bytes):
    s = SHAPES["smollm2-135m"]
    rows = []
    for b in batches:
        for p in prompts:
            r = got.get((b, p))
            row = empty_row("llama.cpp", "smollm2-135m", b, p, gen, "Q4_1 weights, f16 KV, flash attention")
            if r is None:
                row["note"] += "; " + (err or "no result (batched-bench skips a config whose pl*(pp+tg) > -c)")
            else:
                tg = int(r["tg"])
                step_ms = 1e3 * float(r["t_tg"]) / tg
                fl = floor_step_ms(s, b, p + tg / 2, bandwidth)
                own = 1e3 * (own_weight_bytes + b * (p + tg / 2) * kv_bytes_per_token(s)) / bandwidth
                row.update(gen=tg, decode_tok_s=float(r["speed_tg"]), step_ms=step_ms, floor_step_ms=fl,
                           step_over_floor=step_ms / fl, floor_step_ms_own_weights=own,
                           step_over_own_floor=step_ms / own, prefill_tok_s=float(r["speed_pp"]),
                           prefill_ms=1e3 * float(r["t_pp"]))
            rows.append(row)
    return rows


def hf_rows(data, err, shapes_grid, gen):
    got = {(r["shape"], r["batch"], r["prompt"]): r for r in (data or {}).get("rows", [])}
    return [got.get(k) or empty_row("transformers", k[0], k[1], k[2], gen, err or "no result") for k in shapes_grid]


# ---------------------------------------------------------------------------------------------------------
# Output

def fmt(x, nd=1):
    return "—" if x is None else f"{x:,.{nd}f}"


def ratio(a, b):
    return "—" if a is None or not b else f"{a / b:.2f}x"


def markdown(result):
    rows = result["rows"]
    get = {(r["engine"], r["shape"], r["batch"], r["prompt"]): r for r in rows}
    keys = []
    for r in rows:
        k = (r["shape"], r["batch"], r["prompt"])
        if k not in keys:
            keys.append(k)
    out = ["| model | batch | prompt | adore tok/s | llama.cpp tok/s | transformers tok/s | adore / llama.cpp "
           "| adore / transformers | adore step ms | floor ms | step / floor | adore prefill tok/s "
           "| llama.cpp prefill tok/s | note |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for shape, b, p in keys:
        a, l, h = (get.get((e, shape, b, p)) or {} for e in ENGINES)
        ad, ld, hd = a.get("decode_tok_s"), l.get("decode_tok_s"), h.get("decode_tok_s")
        note = a.get("note", "") if ad is None else ""
        if a.get("step_over_floor") is not None:
            sof = f"{a['step_over_floor']:.2f}x"
        else:
            sof = "—"
        out.append(f"| {SHAPES[shape]['label']} | {b} | {p} | {fmt(ad)} | {fmt(ld)} | {fmt(hd)} | {ratio(ad, ld)} "
                   f"| {ratio(ad, hd)} | {fmt(a.get('step_ms'), 2)} | {fmt(a.get('floor_step_ms'), 2)} | {sof} "
                   f"| {fmt(a.get('prefill_tok_s'), 0)} | {fmt(l.get('prefill_tok_s'), 0)} | {note} |")
    pre = result.get("prefill_rows", [])
    if pre:
        out += ["", "| model | prefill tokens (one sequence) | prefill ms | compute floor ms | prefill / floor "
                "| achieved TFLOP/s | note |", "|---|---:|---:|---:|---:|---:|---|"]
        for r in pre:
            over = r.get("prefill_over_floor")
            out.append(f"| {r['model']} | {r['prompt']} | {fmt(r.get('prefill_ms'))} "
                       f"| {fmt(r.get('compute_floor_ms'))} | {'—' if over is None else f'{over:.2f}x'} "
                       f"| {fmt(r.get('prefill_tflops'))} | {r.get('note', '')} |")
    return "\n".join(out)


def plot(result, png):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log(f"matplotlib not importable: no plot (later: cuda_decode.py --plot-only {png[:-4]}.json)")
        return
    rows = result["rows"]
    shapes = [s for s in SHAPES if any(r["shape"] == s for r in rows)]
    fig, axes = plt.subplots(2, len(shapes), figsize=(6 * len(shapes), 8), squeeze=False)
    for col, shape in enumerate(shapes):
        mine = [r for r in rows if r["shape"] == shape]
        configs = []
        for r in mine:  # configs with a number from at least one engine
            if r.get("decode_tok_s") and (r["batch"], r["prompt"]) not in configs:
                configs.append((r["batch"], r["prompt"]))
        get = {(r["engine"], r["batch"], r["prompt"]): r for r in mine}
        labels = [f"B={b}\nP={p}" for b, p in configs]
        engines = [e for e in ENGINES if any(r["engine"] == e and r["decode_tok_s"] for r in mine)]
        width = 0.8 / max(1, len(engines))
        ax = axes[0][col]
        for i, e in enumerate(engines):
            vals = [(get.get((e, b, p)) or {}).get("decode_tok_s") or 0 for b, p in configs]
            xs = [j + (i - (len(engines) - 1) / 2) * width for j in range(len(configs))]
            ax.bar(xs, vals, width, label=e)
        ax.set_yscale("log")
        ax.set_xticks(range(len(configs)), labels, fontsize=7)
        ax.set_ylabel("decode tokens / s")
        ax.set_title(f"{SHAPES[shape]['label']}: decode throughput")
        ax.legend(fontsize=8)
        ax = axes[1][col]
        step = [(get.get(("adore", b, p)) or {}).get("step_ms") or 0 for b, p in configs]
        floor = [(get.get(("adore", b, p)) or {}).get("floor_step_ms") or 0 for b, p in configs]
        xs = range(len(configs))
        ax.bar([x - 0.2 for x in xs], step, 0.4, label="adore step")
        ax.bar([x + 0.2 for x in xs], floor, 0.4, label="bandwidth floor")
        for x, s_, f_ in zip(xs, step, floor):
            if s_ and f_:
                ax.annotate(f"{s_ / f_:.2f}x", (x, s_), ha="center", va="bottom", fontsize=7)
        ax.set_yscale("log")
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_ylabel("ms per decode step")
        ax.set_title(f"{SHAPES[shape]['label']}: adore step vs floor")
        ax.legend(fontsize=8)
    m = result.get("measured", {})
    fig.suptitle(f"{m.get('gpu', result.get('machine', ''))} | copy {m.get('copy_bandwidth_bytes_per_s', 0) / 1e12:.2f}"
                 f" TB/s, bf16 matmul {m.get('matmul_tflops', 0):.0f} TFLOP/s | commit {result.get('commit')}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    log(f"wrote {png}")


# ---------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adore-bench-cuda", default=os.path.join(ROOT, "build", "adore-bench-cuda"))
    ap.add_argument("--llama-batched-bench", default=os.path.join(ROOT, ".dev", "llamacpp-cuda", "bin",
                                                                   "llama-batched-bench"))
    ap.add_argument("--model", default=os.environ.get("ADORE_MODEL") or os.path.join(
        ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"), help="SmolLM2 GGUF (default $ADORE_MODEL)")
    ap.add_argument("--python", default=sys.executable, help="python with torch + transformers")
    ap.add_argument("--smol-batches", type=int_list, default=[1, 16, 64, 256])
    ap.add_argument("--smol-prompts", type=int_list, default=[1024, 2048, 8192])
    ap.add_argument("--big-batches", type=int_list, default=[1, 16, 64, 256])
    ap.add_argument("--big-prompts", type=int_list, default=[2048, 8192, 32768])
    ap.add_argument("--prefill-only", type=int_list, default=[8192, 32768],
                    help="one-sequence prefill lengths timed against the compute floor (7B/8B)")
    ap.add_argument("--hf-batches", type=int_list, default=[1, 16])
    ap.add_argument("--hf-prompts", type=int_list, default=[2048])
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--prefill-tokens", type=int, default=8192)
    ap.add_argument("--timeout", type=float, default=300, help="seconds per engine run")
    ap.add_argument("--llama-timeout", type=float, default=180,
                    help="seconds for llama.cpp (the rows it printed before a timeout are kept), so that a slow "
                         "run leaves time for the 7B/8B rows")
    ap.add_argument("--time-budget", type=float, default=540, help="seconds for the whole run")
    ap.add_argument("--adore-arg", action="append", default=[],
                    help="extra flag for adore-bench-cuda (repeatable), e.g. --adore-arg=--cuda_graphs=false")
    ap.add_argument("--skip", default="",
                    help="comma-separated: adore-smol, llama.cpp, adore-7b, adore-8b, transformers")
    ap.add_argument("--commit", default=None, help="commit to record (default: from git, if there)")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--plot-only", metavar="JSON", help="only redraw the plot and table from a merged JSON")
    args = ap.parse_args()

    if args.plot_only:
        with open(args.plot_only) as f:
            result = json.load(f)
        plot(result, os.path.splitext(args.plot_only)[0] + ".png")
        print(markdown(result))
        return

    command = shlex.join(["python3", *sys.argv])
    skip = set(x for x in args.skip.split(",") if x)
    budget = Budget(args.time_budget)
    tmpdir = tempfile.TemporaryDirectory(prefix="cuda_decode.")  # per-engine JSONs, removed at exit
    tmp = tmpdir.name
    os.makedirs(args.out_dir, exist_ok=True)
    out_json = os.path.join(args.out_dir, "cuda_decode.json")
    commands, rows, prefill_rows, hf_machine = {}, [], [], None
    measured = None

    have_adore = os.access(args.adore_bench_cuda, os.X_OK)
    if not have_adore:
        log(f"adore-bench-cuda not found at {args.adore_bench_cuda}: adore rows will say so")
    have_model = os.path.isfile(args.model)

    # 1. adore on the SmolLM2 GGUF.
    smol_grid = (args.smol_batches, args.smol_prompts)
    if "adore-smol" not in skip:
        data, err = None, None
        # Without the GGUF, random weights of its shape time the same (the engine runs bf16 either way).
        source = ["--model", args.model] if have_model else ["--synthetic", "smollm2-135m"]
        weights_note = ("GGUF Q4_1 dequantized to bf16" if have_model
                        else f"synthetic bf16 weights (GGUF not found at {args.model})")
        if not have_adore:
            err = f"adore-bench-cuda not found at {args.adore_bench_cuda}"
        else:
            data, err, commands["adore smollm2-135m"] = run_adore(
                args, "smollm2-135m", source, *smol_grid, [], budget, tmp)
            measured = (data or {}).get("measured")
        r, _ = adore_rows(data, err, "smollm2-135m", *smol_grid, args.gen, weights_note)
        rows += r

    # 2. llama.cpp on the same SmolLM2 grid (its rows are built at the end, with the measured bandwidth).
    llama_got, llama_err = {}, None
    if "llama.cpp" not in skip:
        if not os.access(args.llama_batched_bench, os.X_OK):
            llama_err = f"skipped: llama-batched-bench not found at {args.llama_batched_bench}"
        elif not have_model:
            llama_err = f"model not found: {args.model}"
        else:
            llama_got, llama_err, commands["llama.cpp"] = run_llama(args, *smol_grid, budget)

    # 3. adore on the 7B / 8B shapes, synthetic weights.
    for shape, key in (("llama2-7b", "adore-7b"), ("llama3-8b", "adore-8b")):
        if key in skip:
            continue
        data, err = None, None
        if not have_adore:
            err = f"adore-bench-cuda not found at {args.adore_bench_cuda}"
        else:
            data, err, commands[f"adore {shape}"] = run_adore(
                args, shape, ["--synthetic", shape], args.big_batches, args.big_prompts, args.prefill_only,
                budget, tmp)
            measured = measured or (data or {}).get("measured")
        r, pre = adore_rows(data, err, shape, args.big_batches, args.big_prompts, args.gen, "synthetic bf16 weights")
        rows += r
        prefill_rows += pre

    bandwidth = (measured or {}).get("copy_bandwidth_bytes_per_s") or NOMINAL_BANDWIDTH
    if not measured:
        log(f"no bandwidth measurement from adore-bench-cuda: floors use the nominal {NOMINAL_BANDWIDTH / 1e12} TB/s")
    if "llama.cpp" not in skip:
        own = os.path.getsize(args.model) if have_model else 0
        rows += llama_rows(llama_got, llama_err, *smol_grid, args.gen, bandwidth, own)

    # 4. transformers on a subset of every shape.
    if "transformers" not in skip:
        grid = [(s, b, p) for s in ("smollm2-135m", "llama2-7b", "llama3-8b") for b in args.hf_batches
                for p in args.hf_prompts]
        data, err, commands["transformers"] = run_hf(args, bandwidth, budget, tmp)
        rows += hf_rows(data, err, grid, args.gen)
        hf_machine = (data or {}).get("machine")

    gpu = (measured or {}).get("gpu", "unknown GPU")
    result = {
        "command": command,
        "machine": f"{gpu}; host {machine_info()}",
        "commit": args.commit or commit_id(),
        "measured": measured or {"copy_bandwidth_bytes_per_s": NOMINAL_BANDWIDTH,
                                 "note": "not measured: nominal value used for the floors"},
        "settings": {"gen": args.gen, "warmup_steps_adore_and_transformers": args.warmup,
                     "prefill_tokens_per_call_adore": args.prefill_tokens,
                     "floor": "(bf16 weight bytes + batch * (prompt + warmup + gen/2) * kv bytes/token) / copy "
                              "bandwidth; llama.cpp: prompt + gen/2 (no warmup steps)"},
        "engine_commands": commands,
        "transformers_versions": hf_machine,
        "rows": rows,
        "prefill_rows": prefill_rows,
    }
    with open(out_json, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    log(f"wrote {out_json} ({len(rows)} rows, {len(prefill_rows)} prefill rows); "
        f"{args.time_budget - budget.left():.0f} s used")
    plot(result, os.path.splitext(out_json)[0] + ".png")
    print(markdown(result))


if __name__ == "__main__":
    main()
