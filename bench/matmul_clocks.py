#!/usr/bin/env python3
"""Burst vs sustained bf16 matmul rate on the GPU, with the SM clock and power sampled by nvidia-smi.

  OUT=DIR python3 bench/matmul_clocks.py     (torch on the GPU machine; writes DIR/clocks.json)

torch.matmul of two 8192 x 8192 bf16 matrices, repeated 10, 10, 50, 200 and 400 times back to back
(CUDA events around each batch), 2 s idle between batches. adore-bench-cuda's compute floor uses a
10-repeat burst; this shows what a run of a few hundred milliseconds gets.
"""
import json, subprocess, time, torch
def smi():
    out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.max.sm,power.draw,temperature.gpu", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout.strip()
    return out
n = 8192
a = torch.rand(n, n, device="cuda", dtype=torch.bfloat16) - 0.5
b = torch.rand(n, n, device="cuda", dtype=torch.bfloat16) - 0.5
for _ in range(3): a @ b
torch.cuda.synchronize()
rows = []
for reps in (10, 10, 50, 200, 400):
    mon = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits", "-lms", "50"],
                           stdout=subprocess.PIPE, text=True)
    time.sleep(0.2)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps): a @ b
    e.record(); torch.cuda.synchronize()
    ms = s.elapsed_time(e)
    time.sleep(0.1); mon.terminate(); samples = mon.communicate()[0].split("\n")
    vals = [tuple(float(x) for x in l.split(",")) for l in samples if l.strip() and "," in l]
    clk = [v[0] for v in vals]; pw = [v[1] for v in vals]
    rows.append({"reps": reps, "ms": ms, "tflops": 2 * n**3 * reps / ms / 1e9, "sm_clock_mhz_min": min(clk) if clk else None,
                 "sm_clock_mhz_max": max(clk) if clk else None, "power_w_max": max(pw) if pw else None, "samples": len(vals)})
    print(rows[-1], flush=True)
    time.sleep(2)
print(smi())
json.dump({"rows": rows, "smi_after": smi()}, open(__import__("os").environ["OUT"] + "/clocks.json", "w"), indent=1)
