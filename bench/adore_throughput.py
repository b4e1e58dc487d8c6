#!/usr/bin/env python3
"""ADORE decode throughput against full attention, same engine, same run (issue: ADORE).

At an 8k prompt, each policy at the largest batch that fits the GPU's memory (capped), and at batch 1:
  - full: adore-bench-cuda --skip_prefill (a decode step reads the same bytes whether or not the prompt's
    KV was computed);
  - adore (m, R), controller on the GPU (DeviceAdorePolicy): with --adore_prompt tokenwise the prompt goes in
    token by token with the policy (minutes at large batches); with --adore_prompt synthetic (the default)
    each sequence starts from the window cache of an uncomputed prompt and random controller state for
    every prompt position (adore-bench-cuda --skip_prefill --policy adore), so each timed step does the
    same work as after a real prompt (controller over all positions, plan, release, m-slot attention).

    python3 bench/adore_throughput.py --bin BIN --model MODEL.gguf [--model synthetic:llama2-7b ...] \
        --out OUT --commit REV

writes OUT/adore_throughput.json (rows: policy, model, batch, prompt, m, R, decode_tok_s, ms_per_token, ...).
"""
import argparse
import json
import os
import subprocess
import sys
import time


def model_flags(model):
    """MODEL[,controller=PATH]: a GGUF file or synthetic:SHAPE, and the controller file its adore runs use."""
    model, _, ctl = model.partition(",controller=")
    flags = ["--controller", ctl] if ctl else []
    if model.startswith("synthetic:"):
        return flags + ["--synthetic", model[len("synthetic:"):]]
    return flags + ["--model", model]


def bench(args, tag, model, extra):
    out = os.path.join(args.out, tag + ".json")
    cmd = [os.path.join(args.bin, "adore-bench-cuda")] + model_flags(model) + ["--max_context", str(args.max_context),
           "--prompt", str(args.prompt), "--gen", str(args.gen), "--warmup", "4", "--commit", args.commit,
           "--json", out] + extra
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    with open(os.path.join(args.out, tag + ".log"), "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=args.step_timeout).returncode
    print(f"  rc {rc} in {time.time() - t0:.0f} s", flush=True)
    if not os.path.exists(out):
        return None
    with open(out) as f:
        return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", required=True)
    p.add_argument("--model", action="append", required=True,
                   help="a GGUF file or synthetic:SHAPE (smollm2-135m, llama2-7b, llama3-8b), optionally followed by "
                        ",controller=PATH (the adore runs' controller; default tools/adore/controller.bin, "
                        "trained for SmolLM2's hidden size); repeatable")
    p.add_argument("--adore_prompt", choices=["synthetic", "tokenwise"], default="synthetic")
    p.add_argument("--out", required=True)
    p.add_argument("--commit", required=True)
    p.add_argument("--prompt", type=int, default=8192)
    p.add_argument("--gen", type=int, default=32)
    p.add_argument("--max_context", type=int, default=8448)
    p.add_argument("--m", type=int, default=1024)
    p.add_argument("--rebuild", default="0", help="R values, comma-separated")
    p.add_argument("--max_fit_batch", type=int, default=4096)
    p.add_argument("--step-timeout", type=float, default=300)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    runs = []
    for mi, model in enumerate(args.model):
        runs.append((f"m{mi}_full", model, ["--policy", "full", "--skip_prefill", "--batch", "max,1",
                                            "--max_fit_batch", str(args.max_fit_batch)]))
        for r in args.rebuild.split(","):
            extra = ["--policy", "adore", "--kv_budget", str(args.m), "--rebuild", r, "--batch", "max,1",
                     "--max_fit_batch", str(args.max_fit_batch)]
            if args.adore_prompt == "synthetic":
                extra.append("--skip_prefill")
            runs.append((f"m{mi}_adore_R{r}", model, extra))
    rows, machine = [], None
    for tag, model, extra in runs:
        doc = bench(args, tag, model, extra)
        if doc is None:
            continue
        machine = machine or doc["machine"]
        for r in doc["rows"]:
            if r.get("kind") != "decode":
                continue
            adore_prompt = None if r["policy"] == "full" else args.adore_prompt
            rows.append({"policy": r["policy"], "model": r["model"], "batch": r["batch"], "prompt": r["prompt"],
                         "m": r["m"] if r["policy"] != "full" else None, "R": r["R"] if r["policy"] != "full" else None,
                         "decode_tok_s": r["decode_tok_s"], "ms_per_token": r.get("ms_per_token"),
                         "max_fit": r.get("max_fit"), "step_over_floor": r.get("step_over_floor"),
                         "prompt_ms": r.get("prefill_ms"), "adore_prompt": adore_prompt,
                         "tokens_released": r.get("tokens_released"),
                         "tokens_rebuilt": r.get("tokens_rebuilt"),
                         # host time with the GPU idle for release plans and slot tables (KV management) and
                         # the device controller's GPU time, per step and as shares of the step
                         "plan_ms_per_step": r.get("plan_ms_per_step"),
                         "stage_ms_per_step": r.get("stage_ms_per_step"),
                         "slot_table_update_steps": r.get("slot_table_update_steps"),
                         "controller_ms_per_step": r.get("controller_ms_per_step"),
                         "kv_management_share": r.get("kv_management_share"),
                         "controller_share": r.get("controller_share"), "note": r.get("note", "")})
    full = {(r["model"], r["max_fit"]): r for r in rows if r["policy"] == "full" and r["decode_tok_s"]}
    for r in rows:
        base = full.get((r["model"], r["max_fit"]))
        r["speedup_vs_full"] = r["decode_tok_s"] / base["decode_tok_s"] if (base and r["decode_tok_s"]) else None
    doc = {"command": "python3 bench/adore_throughput.py " + " ".join(sys.argv[1:]), "machine": machine or "unknown",
           "commit": args.commit, "rows": rows}
    with open(os.path.join(args.out, "adore_throughput.json"), "w") as f:
        json.dump(doc, f, indent=2)
    for r in rows:
        print(r["model"][:16], r["policy"], r["R"], r["batch"], r["max_fit"], r["decode_tok_s"], r["ms_per_token"],
              r["speedup_vs_full"], "kv-mgmt", r["kv_management_share"], "ctl", r["controller_share"], r["note"][:60],
              flush=True)


if __name__ == "__main__":
    main()
