#!/usr/bin/env python3
"""Tensor-parallel scaling of the CUDA engine: decode throughput and per-token latency at tp = 1, 2, 4, 8
(as many GPUs as the machine has) on the Llama-2-7B and Llama-3-8B synthetic shapes, prompts 2k / 8k / 32k,
at batch 1 and at the largest batch whose KV fits each configuration, plus the time spent in collectives per
step (from eager runs, where each NCCL all-reduce is timed with CUDA events).

One run per machine, e.g. on a 2-GPU host:

    python3 bench/scaling.py --bin BIN_DIR --out OUT_DIR --commit REV

writes OUT_DIR/scaling.json (rows: tp, policy, model, batch, prompt, decode_tok_s, ms_per_token,
comm_ms_per_step, ...) and the raw adore-bench-cuda files next to it. NVLink multicast stays off
(NCCL_NVLS_ENABLE=0). Ranks are threads of one adore-bench-cuda process, one GPU each (--tp).

With --server the same grid runs through the product instead: adore-server (pipelined steps, prompts under
a releasing policy in chunks of --policy_prefill_chunk) with one adore-worker process per GPU joined in the
NCCL group the coordinator bootstraps, and adore-loadgen streaming --server_batch concurrent requests.
decode_tok_s = batch / median inter-token latency; comm_ms_per_step = the workers' collective time per step
over the measured requests (GetStats, the slowest rank); slot_map_checks = the sequence-steps whose release
decisions the coordinator compared across ranks (and found equal: a mismatch fails the step):

    python3 bench/scaling.py --server --bin BIN_DIR --out OUT_DIR --commit REV --policies full,adore
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving  # noqa: E402  (adore-server / adore-worker / adore-loadgen process handling)


def gpu_count():
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return len([l for l in out.stdout.splitlines() if l.startswith("GPU ")])


def run_bench(args, model, tp, batches, prompts, graphs, out_json, log, policy="full"):
    cmd = [os.path.join(args.bin, "adore-bench-cuda"), "--synthetic", model, "--tp", str(tp),
           "--max_context", str(args.max_context), "--batch", batches, "--prompt", prompts,
           "--gen", str(args.gen), "--warmup", "4", "--commit", args.commit,
           "--cuda_graphs=" + ("true" if graphs else "false"), "--json", out_json,
           "--max_fit_batch", str(args.max_fit_batch)] + (["--skip_prefill"] if args.skip_prefill else [])
    if policy == "adore":  # decode from a synthetic history (adore-bench-cuda --skip_prefill --policy adore)
        cmd += ["--policy", "adore", "--kv_budget", str(args.kv_budget), "--rebuild", "0",
                "--controller", args.controller]
        if not args.skip_prefill:
            cmd.append("--skip_prefill")
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    print(f"  rc {rc} in {time.time() - t0:.0f} s", flush=True)
    if rc != 0:
        with open(log) as f:
            print("".join(f.readlines()[-15:]), flush=True)
    if not os.path.exists(out_json):
        return None
    with open(out_json) as f:
        return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", required=False, help="folder with adore-bench-cuda (and lib/)")
    p.add_argument("--out", required=False)
    p.add_argument("--commit", required=False)
    p.add_argument("--models", default="llama2-7b,llama3-8b")
    p.add_argument("--policies", default="full", help="full and/or adore (m = --kv_budget, R = 0; its decode "
                   "starts from a synthetic history: the window cache of an uncomputed prompt and random "
                   "controller state for every prompt position, so each step costs what it does after a real prompt)")
    p.add_argument("--kv_budget", type=int, default=1024)
    p.add_argument("--controller", default="tools/adore/controller.bin")
    p.add_argument("--prompts", default="2048,8192,32768")
    p.add_argument("--tp", default="", help="tp sizes; default 1, 2, 4, 8 up to the GPU count")
    p.add_argument("--gen", type=int, default=32)
    p.add_argument("--max_context", type=int, default=32768 + 64)
    p.add_argument("--max_fit_batch", type=int, default=256, help="cap of the largest-batch rows")
    p.add_argument("--skip_prefill", action="store_true",
                   help="decode rows over uncomputed prompt KV (adore-bench-cuda --skip_prefill): same decode cost")
    p.add_argument("--server", action="store_true", help="through adore-server and adore-worker processes")
    p.add_argument("--server_batch", default="2048:32,8192:16,32768:4",
                   help="--server: concurrent requests per prompt length, PROMPT:BATCH,...")
    p.add_argument("--policy_prefill_chunk", type=int, default=32, help="--server: adore-server's flag")
    p.add_argument("--step-timeout", type=float, default=300, help="--server: longest loadgen run, seconds")
    p.add_argument("--plot", default="", help="only redraw the plot of this scaling.json (next to it)")
    p.add_argument("--time-budget", type=float, default=540, help="seconds; later runs are skipped past it")
    args = p.parse_args()
    if args.plot:
        with open(args.plot) as f:
            plot(json.load(f), os.path.splitext(args.plot)[0] + ".png")
        return
    if not (args.bin and args.out and args.commit):
        p.error("--bin, --out and --commit are required (except with --plot)")
    os.makedirs(args.out, exist_ok=True)
    os.environ["NCCL_NVLS_ENABLE"] = "0"
    n = gpu_count()
    tps = [int(x) for x in args.tp.split(",")] if args.tp else [k for k in (1, 2, 4, 8) if k <= n]
    start = time.time()
    if args.server:
        return server_grid(args, tps, n, start)
    rows, raw, machine = [], [], None
    for model, policy, tp in [(mo, po, tp) for mo in args.models.split(",") for po in args.policies.split(",")
                          for tp in tps]:
        if time.time() - start > args.time_budget:
            print(f"time budget spent: skipping {model} {policy} tp={tp}", flush=True)
            continue
        tag = f"{model}_{policy}_tp{tp}"
        res = run_bench(args, model, tp, "1,max", args.prompts, True, os.path.join(args.out, tag + ".json"),
                        os.path.join(args.out, tag + ".log"), policy)
        comm = None
        if tp > 1 and time.time() - start <= args.time_budget:
            comm = run_bench(args, model, tp, "1,max", "2048", False,
                             os.path.join(args.out, tag + "_eager.json"), os.path.join(args.out, tag + "_eager.log"),
                             policy)
        if res is None:
            continue
        machine = machine or res["machine"]
        raw.append(tag)
        comm_by = {}
        if comm is not None:
            for r in comm["rows"]:
                comm_by[(r["max_fit"], r["prompt"])] = r
        for r in res["rows"]:
            if r.get("kind") != "decode":
                continue
            e = comm_by.get((r["max_fit"], r["prompt"]))
            rows.append({
                "tp": tp, "policy": policy, "m": args.kv_budget if policy == "adore" else None,
                "model": r["model"], "batch": r["batch"], "prompt": r["prompt"],
                "max_fit": r["max_fit"], "decode_tok_s": r["decode_tok_s"], "ms_per_token": r["ms_per_token"]
                if "ms_per_token" in r else r["step_ms"],
                "comm_ms_per_step": (e or {}).get("comm_ms_per_step") if tp > 1 else 0.0,
                "comm_note": "" if tp == 1 else (
                    "from an eager run of the same shape" if e else "not measured (eager runs at prompt 2048 only)"),
                "eager_decode_tok_s": (e or {}).get("decode_tok_s"),
                "step_over_floor": r["step_over_floor"], "floor_step_ms": r["floor_step_ms"],
                "note": r["note"]})
    doc = {"command": "python3 bench/scaling.py " + " ".join(sys.argv[1:]), "machine": machine or "unknown",
           "commit": args.commit, "settings": {"gen": args.gen, "tp_sizes": tps, "gpus": n,
                                               "ranks": "threads of one process, one GPU each, NCCL (NVLS off)",
                                               "raw": raw}, "rows": rows}
    with open(os.path.join(args.out, "scaling.json"), "w") as f:
        json.dump(doc, f, indent=2)
    plot(doc, os.path.join(args.out, "scaling.png"))
    print(f"wrote {len(rows)} rows in {time.time() - start:.0f} s", flush=True)


def server_grid(args, tps, gpus, start):
    """The grid through adore-server with one adore-worker process per GPU (see the module doc)."""
    batch_of = dict((int(a), int(b)) for a, b in (x.split(":") for x in args.server_batch.split(",")))
    prompts = [int(x) for x in args.prompts.split(",")]
    procs = serving.Procs()
    rows = []
    base = {}
    try:
        for model, policy, prompt, tp in [(mo, po, pr, tp) for mo in args.models.split(",")
                                          for po in args.policies.split(",") for pr in prompts for tp in tps]:
            if time.time() - start > args.time_budget:
                print(f"time budget spent: skipping {model} {policy} {prompt} tp={tp}", flush=True)
                continue
            batch = batch_of.get(prompt, 8)
            tag = f"srv_{model}_{policy}_{prompt}_tp{tp}"
            spec = f"synthetic:{model}:{prompt + args.gen + 64}"
            release = ["--policy", policy] + (["--kv_budget", str(args.kv_budget), "--rebuild", "0"]
                                              if policy != "full" else [])
            t0 = time.time()
            r = serving.server_run(args, procs, tag, spec, batch, prompt, args.gen, tp, list(range(tp)), release,
                                   pipeline=True,
                                   server_flags=["--policy_prefill_chunk", str(args.policy_prefill_chunk)],
                                   loadgen_flags=["--warmup", str(min(batch, 4))])
            print(f"  {tag}: {time.time() - t0:.0f} s", flush=True)
            if r is None:
                continue
            itl = r.get("itl_ms_p50")
            tok_s = batch / (itl / 1e3) if itl else None
            key = (model, policy, prompt)
            if tp == 1:
                base[key] = tok_s
            b1 = base.get(key)
            rows.append({"tp": tp, "policy": policy, "m": args.kv_budget if policy != "full" else None,
                         "model": r.get("model") or model, "batch": batch, "prompt": prompt, "max_fit": False,
                         "decode_tok_s": tok_s, "ms_per_token": itl,
                         "comm_ms_per_step": r.get("comm_ms_per_step") if tp > 1 else 0.0,
                         "comm_note": "" if tp == 1 or policy != "full" else
                         "full attention decodes from CUDA graphs, whose collectives are not timed: a lower bound",
                         "server_step_ms_mean": r.get("step_ms_mean"), "server_steps": r.get("steps"),
                         "slot_map_checks": r.get("slot_map_checks"),
                         "efficiency": tok_s / (tp * b1) if (tok_s and b1) else None,
                         "ttft_ms_p50": r.get("ttft_ms_p50"), "ok": r.get("ok"), "errors": r.get("errors"),
                         "path": f"adore-server (pipelined) + {tp} adore-worker process(es), NCCL",
                         "note": "batch fixed per prompt (--server_batch), not the largest that fits"})
    finally:
        procs.stop()
    names = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True).stdout.strip().splitlines()
    machine = f"{len(names)} x {names[0]}" if names else "unknown"
    doc = {"command": "python3 bench/scaling.py " + " ".join(sys.argv[1:]), "machine": machine,
           "commit": args.commit, "settings": {"gen": args.gen, "tp_sizes": tps, "gpus": gpus,
                                               "ranks": "adore-worker processes, one GPU each, NCCL (NVLS off)",
                                               "policy_prefill_chunk": args.policy_prefill_chunk}, "rows": rows}
    with open(os.path.join(args.out, "scaling_server.json"), "w") as f:
        json.dump(doc, f, indent=2)
    plot(doc, os.path.join(args.out, "scaling_server.png"))
    print(f"wrote {len(rows)} rows in {time.time() - start:.0f} s", flush=True)


def plot(doc, png):
    """Throughput and scaling efficiency against GPU count at the largest batch that fits (when matplotlib
    is importable): efficiency = throughput at tp=k / (k * throughput at tp=1)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", flush=True)
        return
    rows = [r for r in doc["rows"] if r["max_fit"] and r["decode_tok_s"]]
    fixed_batch = not rows  # through the server: the batch of --server_batch
    if fixed_batch:
        rows = [r for r in doc["rows"] if r["decode_tok_s"]]
    series = sorted({(r["model"], r["prompt"], r["policy"]) for r in rows})
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for model, prompt, policy in series:
        pts = sorted((r["tp"], r["decode_tok_s"]) for r in rows
                     if r["model"] == model and r["prompt"] == prompt and r["policy"] == policy)
        base = dict(pts).get(1)
        label = f"{model.split(' (')[0]}, {prompt // 1024}k, {policy}"
        if fixed_batch:
            label += f", batch {next(r['batch'] for r in rows if r['model'] == model and r['prompt'] == prompt)}"
        a1.plot([t for t, _ in pts], [v for _, v in pts], marker="o", label=label)
        if base:
            a2.plot([t for t, _ in pts], [100 * v / (t * base) for t, v in pts], marker="o", label=label)
    tps = sorted({r["tp"] for r in rows})
    for a in (a1, a2):
        a.set_xticks(tps)
        a.set_xlabel("GPUs (tensor-parallel size)")
        a.grid(alpha=0.3)
    a1.set_ylabel("decode tokens/s (" + ("batch as labelled" if fixed_batch else "largest batch that fits") + ")")
    a1.set_yscale("log")
    a2.set_ylabel("scaling efficiency (%)")
    a2.set_ylim(0, 120)
    a2.axhline(85, color="gray", ls="--", lw=1)
    a1.legend(fontsize=8)
    policies = ", ".join(sorted({r["policy"] for r in rows})) or "full"
    what = "adore-server + adore-worker processes" if fixed_batch else "CUDA engine"
    fig.suptitle(f"{what}: tensor parallelism, {policies} ({doc['machine'].split(';')[0]}, commit {doc['commit']})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}", flush=True)


if __name__ == "__main__":
    main()
