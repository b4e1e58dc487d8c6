#!/usr/bin/env python3
"""A CUDA tensor-parallel group survives the loss of a rank (needs 2 GPUs; the CPU version of this check is
tests/server/fault_test.cc, in CI).

adore-server drives two external adore-worker processes (one GPU each, NCCL, NVLink multicast off). While
streams run, rank 1 is killed with SIGKILL. Checked:
  1. every running stream ends with an error (none hangs, none is lost): the loadgen round returns, and how
     long after the kill it did is recorded;
  2. the worker is restarted on the same port; the coordinator forms the group again (the surviving rank
     leaves its aborted NCCL group for a new one, and both are loaded again) and a new round of requests
     succeeds; the time from the restart to the first successful request is recorded.

    python3 tools/tp_fault_check.py --bin BIN_DIR --out OUT_DIR [--model synthetic:llama2-7b:2048]

writes OUT_DIR/tp_fault.json and the processes' logs; exits 1 when a check fails.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from serving import free_port, wait_for  # noqa: E402 - the same helpers as the serving benchmark


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="folder with adore-server, adore-worker, adore-loadgen")
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="synthetic:llama2-7b:2048")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--collective-timeout", type=int, default=10,
                    help="adore-worker --collective_timeout_s: how long the surviving rank waits in a collective")
    ap.add_argument("--kill-after", type=float, default=3.0, help="seconds of streaming before the kill")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    env = dict(os.environ, NCCL_NVLS_ENABLE="0")
    procs = []
    result = {"model": args.model, "streams": args.streams, "collective_timeout_s": args.collective_timeout}

    def start(cmd, log, extra_env=None):
        print("+", " ".join(cmd), flush=True)
        p = subprocess.Popen(cmd, stdout=open(log, "a"), stderr=subprocess.STDOUT, env=dict(env, **(extra_env or {})))
        procs.append(p)
        return p

    def worker(rank, port):
        log = os.path.join(args.out, f"worker{rank}.log")
        p = start([os.path.join(args.bin, "adore-worker"), "--backend", "cuda", "--port", str(port),
                   "--collective_timeout_s", str(args.collective_timeout)], log, {"CUDA_VISIBLE_DEVICES": str(rank)})
        if not wait_for(p, log, "serving", 60):
            raise RuntimeError(f"worker {rank} did not start")
        return p

    def loadgen(tag, requests, max_tokens, timeout):
        out = os.path.join(args.out, f"{tag}.json")
        cmd = [os.path.join(args.bin, "adore-loadgen"), "--server", f"127.0.0.1:{port}", "--requests", str(requests),
               "--concurrency", str(requests), "--prompt_tokens", "64", "--max_tokens", str(max_tokens),
               "--progress_s", "0", "--deadline_s", str(max(1, int(timeout) - 5)), "--json", out, "--label", tag]
        t0 = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        with open(os.path.join(args.out, f"{tag}.txt"), "w") as f:
            f.write(r.stdout + r.stderr)
        row = json.load(open(out))["rows"][0] if os.path.exists(out) else {}
        return row, time.time() - t0, (r.stdout + r.stderr)[-600:]

    ok = True
    try:
        wports = [free_port(), free_port()]
        workers = [worker(0, wports[0]), worker(1, wports[1])]
        port = free_port()
        slog = os.path.join(args.out, "server.log")
        server = start([os.path.join(args.bin, "adore-server"), "--backend", "cuda", "--model", args.model,
                        "--port", str(port), "--workers", ",".join(f"127.0.0.1:{p}" for p in wports),
                        "--max_batch", "16", "--controller="], slog)
        if not wait_for(server, slog, "serving", 300):
            raise RuntimeError("server did not start")
        row, secs, _ = loadgen("before", args.streams, 16, 120)
        result["before"] = {"ok": row.get("ok"), "errors": row.get("errors")}
        ok &= row.get("ok") == args.streams

        # Long streams; rank 1 dies while they run.
        lg = subprocess.Popen([os.path.join(args.bin, "adore-loadgen"), "--server", f"127.0.0.1:{port}",
                               "--requests", str(args.streams), "--concurrency", str(args.streams),
                               "--prompt_tokens", "64", "--max_tokens", "1500", "--progress_s", "0",
                               "--json", os.path.join(args.out, "killed.json"), "--label", "killed"],
                              stdout=open(os.path.join(args.out, "killed.txt"), "w"), stderr=subprocess.STDOUT)
        time.sleep(args.kill_after)
        os.kill(workers[1].pid, signal.SIGKILL)
        t_kill = time.time()
        workers[1].wait()
        try:
            lg.wait(timeout=120)
        except subprocess.TimeoutExpired:
            lg.kill()
            result["killed"] = {"hung": True}
            ok = False
        else:
            row = json.load(open(os.path.join(args.out, "killed.json")))["rows"][0]
            result["killed"] = {"ok": row.get("ok"), "errors": row.get("errors"),
                                "streams_ended_s_after_kill": round(time.time() - t_kill, 2)}
            ok &= row.get("errors") == args.streams
            with open(os.path.join(args.out, "killed.txt")) as f:
                text = f.read()
            result["killed"]["unavailable_reported"] = "UNAVAILABLE" in text
        # Restart rank 1 on its port; new requests must succeed once the group is formed again.
        t_restart = time.time()
        workers[1] = worker(1, wports[1])
        recovered = None
        attempts = 0
        while time.time() - t_restart < 240:
            attempts += 1
            row, _, _ = loadgen(f"probe{attempts}", 1, 4, 30)
            if row.get("ok") == 1:
                recovered = time.time() - t_restart
                break
            time.sleep(2)
        result["recovered_s_after_restart"] = round(recovered, 2) if recovered is not None else None
        result["probes"] = attempts
        ok &= recovered is not None
        if recovered is not None:
            row, _, _ = loadgen("after", args.streams, 64, 120)
            result["after"] = {"ok": row.get("ok"), "errors": row.get("errors")}
            ok &= row.get("ok") == args.streams
    except Exception as e:  # noqa: BLE001 - recorded, then the check fails
        result["exception"] = repr(e)
        ok = False
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    result["passed"] = bool(ok)
    with open(os.path.join(args.out, "tp_fault.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=1), flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
