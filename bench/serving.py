#!/usr/bin/env python3
"""Serving overhead and the multi-process tensor-parallel path, on a GPU machine, in one run.

1. Overhead (issue 5): decode throughput at batch B through adore-server against the in-process engine
   (adore-bench-cuda) on the same model shape, prompt and generation length. Through the server: the
   embedded worker (one process) and one external adore-worker process over gRPC. The server figure is
   B / (median inter-token latency) of B concurrent streams that start together (adore-loadgen), the
   in-process figure B / step time.
2. Tensor parallelism through the server (issues 5 and 8): adore-server with N external adore-worker
   processes (one GPU each, CUDA_VISIBLE_DEVICES) joined in an NCCL group the coordinator bootstraps,
   against N = 1, on a synthetic 7B shape.
Server rows run without and with adore-server --pipeline_steps (--pipeline off,on), --repeats rounds of them.

    python3 bench/serving.py --bin BIN_DIR --out OUT_DIR --commit REV

writes OUT_DIR/serving_overhead.json (rows: path, model, tp, batch, prompt, gen,
engine_tok_s, server_tok_s, ratio, server_itl_ms_p50, ttft_ms_p50, output_tok_s) and the raw tool outputs.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(proc, log, needle, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            return False
        with open(log) as f:
            if needle in f.read():
                return True
        time.sleep(0.5)
    return False


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, cmd, log, env=None):
        print("+", " ".join(cmd), flush=True)
        f = open(log, "w")
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []


def tail(path, n=12):
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def loadgen(args, port, tag, batch, prompt, gen, policy=()):
    out = os.path.join(args.out, tag + "_loadgen.json")
    cmd = [os.path.join(args.bin, "adore-loadgen"), "--server", f"127.0.0.1:{port}", "--requests", str(batch),
           "--concurrency", str(batch), "--prompt_tokens", str(prompt), "--max_tokens", str(gen), "--warmup",
           str(batch), "--progress_s", "0", "--commit", args.commit, "--label", tag, "--json", out] + list(policy)
    print("+", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.step_timeout)
    with open(os.path.join(args.out, tag + "_loadgen.txt"), "w") as f:
        f.write(r.stdout + r.stderr)
    print(r.stdout[-1200:], r.stderr[-600:], flush=True)
    if not os.path.exists(out):
        return None
    with open(out) as f:
        return json.load(f)["rows"][0]


def server_run(args, procs, tag, model, batch, prompt, gen, workers, tp_devices, policy=(), pipeline=False,
               server_flags=(), loadgen_flags=()):
    """adore-server with `workers` external workers (0 = embedded), then a loadgen round. `server_flags` and
    `loadgen_flags` go to adore-server and adore-loadgen as they are."""
    port = free_port()
    worker_addrs = []
    for rank in range(workers):
        wport = free_port()
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(tp_devices[rank]))
        log = os.path.join(args.out, f"{tag}_worker{rank}.log")
        p = procs.start([os.path.join(args.bin, "adore-worker"), "--backend", "cuda", "--port", str(wport)], log, env)
        if not wait_for(p, log, "serving", 60):
            print(f"worker {rank} did not start:\n{tail(log)}", flush=True)
            return None
        worker_addrs.append(f"127.0.0.1:{wport}")
    log = os.path.join(args.out, f"{tag}_server.log")
    cmd = [os.path.join(args.bin, "adore-server"), "--backend", "cuda", "--model", model, "--port", str(port),
           "--max_batch", str(max(batch, 16)), "--default_max_tokens", str(gen),
           "--controller=" + (args.controller if policy else "")]
    if worker_addrs:
        cmd += ["--workers", ",".join(worker_addrs)]
    cmd.append("--pipeline_steps=" + ("true" if pipeline else "false"))
    cmd += list(server_flags)
    p = procs.start(cmd, log)
    if not wait_for(p, log, "serving", 300):
        print(f"server did not start:\n{tail(log)}", flush=True)
        for rank in range(workers):
            print(tail(os.path.join(args.out, f"{tag}_worker{rank}.log")), flush=True)
        return None
    row = loadgen(args, port, tag, batch, prompt, gen, list(policy) + list(loadgen_flags))
    procs.stop()
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="adore-server, adore-worker, adore-loadgen, adore-bench-cuda")
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--overhead-model", default="smollm2-135m")
    ap.add_argument("--tp-model", default="llama2-7b")
    ap.add_argument("--tp", type=int, default=2, help="external workers of the tensor-parallel run (0: skip)")
    ap.add_argument("--step-timeout", type=float, default=240)
    ap.add_argument("--adore-m", type=int, default=0,
                    help="also serve adore (controller on the GPU) at this kv_budget through the embedded server")
    ap.add_argument("--controller", default="tools/adore/controller.bin")
    ap.add_argument("--pipeline", default="off,on",
                    help="single-GPU server rows without (off) and with (on) adore-server --pipeline_steps")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds of the single-GPU server rows (embedded and one external worker), interleaved")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    os.environ["NCCL_NVLS_ENABLE"] = "0"
    procs = Procs()
    rows = []
    machine = None
    try:
        # In-process reference: the engine alone at the same shape.
        bench_json = os.path.join(args.out, "in_process.json")
        cmd = [os.path.join(args.bin, "adore-bench-cuda"), "--synthetic", args.overhead_model, "--batch",
               str(args.batch), "--prompt", str(args.prompt), "--gen", str(args.gen), "--commit", args.commit,
               "--json", bench_json]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, timeout=args.step_timeout, stdout=open(os.path.join(args.out, "in_process.txt"), "w"),
                       stderr=subprocess.STDOUT)
        ref, engine = None, None
        if os.path.exists(bench_json):
            with open(bench_json) as f:
                doc = json.load(f)
            machine = doc["machine"]
            ref = doc["rows"][0]
            engine = {"path": "in-process engine (adore-bench-cuda)", "model": ref["model"],
                      "decode_tok_s": ref["decode_tok_s"], "step_ms": ref["step_ms"]}
        spec = f"synthetic:{args.overhead_model}"
        pipelines = [p == "on" for p in args.pipeline.split(",")]
        runs = [(kind + ("_pipelined" if p else ""), workers, p)
                for kind, workers in (("embedded", 0), ("external1", 1)) for p in pipelines]
        for repeat in range(args.repeats):
            for tag, workers, pipe in runs:
                tag_r = tag + (f"_r{repeat}" if args.repeats > 1 else "")
                r = server_run(args, procs, tag_r, spec, args.batch, args.prompt, args.gen, workers, [0], pipeline=pipe)
                if r is None:
                    continue
                tok_s = args.batch / (r["itl_ms_p50"] / 1e3) if r.get("itl_ms_p50") else None
                where = ("embedded worker" if workers == 0 else "1 adore-worker process") + (
                    ", pipelined steps" if pipe else "")
                rows.append({"path": f"adore-server, {where}", "repeat": repeat,
                             "model": ref["model"] if ref else spec, "tp": 1, "batch": args.batch,
                             "prompt": args.prompt, "gen": args.gen,
                             "engine_tok_s": ref["decode_tok_s"] if ref else None, "server_tok_s": tok_s,
                             "ratio": tok_s / ref["decode_tok_s"] if (tok_s and ref) else None,
                             "engine_step_ms": ref["step_ms"] if ref else None,
                             "server_itl_ms_p50": r.get("itl_ms_p50"), "ttft_ms_p50": r.get("ttft_ms_p50"),
                             "output_tok_s": r.get("output_tok_s"), "errors": r.get("errors")})
        if args.adore_m > 0:
            r = server_run(args, procs, "embedded_adore", spec, args.batch, args.prompt, args.gen, 0, [0],
                           ["--policy", "adore", "--kv_budget", str(args.adore_m)])
            if r is not None:
                tok_s = args.batch / (r["itl_ms_p50"] / 1e3) if r.get("itl_ms_p50") else None
                rows.append({"path": f"adore-server, embedded worker, policy adore m={args.adore_m} (GPU controller)",
                             "model": ref["model"] if ref else spec, "tp": 1, "batch": args.batch,
                             "prompt": args.prompt, "gen": args.gen,
                             "engine_tok_s": ref["decode_tok_s"] if ref else None, "server_tok_s": tok_s,
                             "ratio": tok_s / ref["decode_tok_s"] if (tok_s and ref) else None,
                             "server_itl_ms_p50": r.get("itl_ms_p50"), "ttft_ms_p50": r.get("ttft_ms_p50"),
                             "output_tok_s": r.get("output_tok_s"), "errors": r.get("errors"),
                             "note": "the engine reference is full attention; the prompt goes in token by token"})
        if args.tp > 0:
            base = {}
            for pipe in pipelines:
                for n in sorted({1, args.tp}):
                    tag = f"tp{n}" + ("_pipelined" if pipe else "")
                    r = server_run(args, procs, tag, f"synthetic:{args.tp_model}", args.batch, args.prompt, args.gen,
                                   n, list(range(n)), pipeline=pipe)
                    if r is None:
                        continue
                    tok_s = args.batch / (r["itl_ms_p50"] / 1e3) if r.get("itl_ms_p50") else None
                    base[pipe] = base.get(pipe) or tok_s
                    rows.append({"path": f"adore-server, {n} adore-worker process(es), NCCL"
                                         + (", pipelined steps" if pipe else ""),
                                 "model": args.tp_model, "tp": n, "batch": args.batch, "prompt": args.prompt,
                                 "gen": args.gen, "engine_tok_s": None, "server_tok_s": tok_s, "ratio": None,
                                 "ratio_to_tp1": tok_s / base[pipe] if (tok_s and base.get(pipe)) else None,
                                 "server_itl_ms_p50": r.get("itl_ms_p50"), "ttft_ms_p50": r.get("ttft_ms_p50"),
                                 "output_tok_s": r.get("output_tok_s"), "errors": r.get("errors"),
                                 "note": "compare with tp 1 through the server, same pipelining (ratio_to_tp1)"})
    finally:
        procs.stop()
    doc = {"command": "python3 bench/serving.py " + " ".join(sys.argv[1:]), "machine": machine or "unknown",
           "commit": args.commit, "engine": engine, "rows": rows}
    with open(os.path.join(args.out, "serving_overhead.json"), "w") as f:
        json.dump(doc, f, indent=2)
    print(json.dumps(rows, indent=1), flush=True)


if __name__ == "__main__":
    main()
