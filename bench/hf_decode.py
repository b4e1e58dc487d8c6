#!/usr/bin/env python3
"""Hugging Face transformers baseline for bench/cuda_decode.py: batched greedy decode on the GPU.

Builds LlamaForCausalLM from a LlamaConfig of the SmolLM2-135M, Llama-2-7B or Llama-3-8B shape (the same
shapes as the C++ engine's Llama2_7BConfig / Llama3_8BConfig and the SmolLM2 GGUF) with RANDOM bf16
weights on the GPU (no model hub, no files: decode time does not depend on the weight values, so this is
fine for timing), attn_implementation="sdpa". For each (batch, prompt): prefill random tokens in one
forward call (logits of the last position only), then `warmup` untimed and `gen` timed greedy decode
steps with the default DynamicCache, torch.cuda.synchronize() around every step. An out-of-memory config
is recorded as skipped and the next one runs.

  python3 bench/hf_decode.py --models smollm2-135m,llama3-8b --batches 1,16 --prompts 2048 --gen 32 \
      [--bandwidth BYTES_PER_S] --json OUT.json

Rows carry the fields of bench/results/cuda_decode.json (engine "transformers"). floor_step_ms uses the
same formula as adore-bench-cuda: (bf16 weight bytes + K/V bytes at mid-generation) / copy bandwidth;
the bandwidth is --bandwidth (adore-bench-cuda's measurement) or measured here with a device copy.
This module is also imported (without torch) by cuda_decode.py for SHAPES and the floor formula.
"""
import argparse
import json
import shlex
import sys
import time

# Shapes, as in worker/cuda/cuda_engine.cc (Llama2_7BConfig, Llama3_8BConfig) and the SmolLM2 GGUF.
SHAPES = {
    "smollm2-135m": dict(label="SmolLM2-135M", vocab=49152, hidden=576, layers=30, heads=9, kv_heads=3,
                         head_dim=64, ff=1536, rope_theta=100000.0, tied=True),
    "llama2-7b": dict(label="Llama-2-7B shape", vocab=32000, hidden=4096, layers=32, heads=32, kv_heads=32,
                      head_dim=128, ff=11008, rope_theta=10000.0, tied=False),
    "llama3-8b": dict(label="Llama-3-8B shape", vocab=128256, hidden=4096, layers=32, heads=32, kv_heads=8,
                      head_dim=128, ff=14336, rope_theta=500000.0, tied=False),
}


def weight_bytes(s):
    """bf16 bytes one decode step reads: layer matrices + norms, final norm, LM head (tied: counted once)."""
    d, q, kv = s["hidden"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    layer = d * (q + 2 * kv) + q * d + 3 * s["ff"] * d + 2 * d
    return 2 * (s["layers"] * layer + d + s["vocab"] * d)


def kv_bytes_per_token(s):
    return s["layers"] * 2 * s["kv_heads"] * s["head_dim"] * 2


def floor_step_ms(s, batch, ctx_mid, bandwidth):
    """Decode step floor: weights + every sequence's K/V at context ctx_mid, read once at `bandwidth`."""
    return 1e3 * (weight_bytes(s) + batch * ctx_mid * kv_bytes_per_token(s)) / bandwidth


def log(msg):
    print(f"hf_decode: {msg}", file=sys.stderr, flush=True)


def int_list(text):
    return [int(x) for x in text.split(",") if x.strip()]


def build_model(torch, shape, max_pos, device):
    from transformers import LlamaConfig, LlamaForCausalLM
    s = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["ff"],
                      num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                      num_key_value_heads=s["kv_heads"], head_dim=s["head_dim"], max_position_embeddings=max_pos,
                      rope_theta=s["rope_theta"], rms_norm_eps=1e-5, tie_word_embeddings=s["tied"],
                      attn_implementation="sdpa")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)  # random init, directly on the device
    finally:
        torch.set_default_dtype(old)
    model = model.to(device=device, dtype=torch.bfloat16).eval()
    # Explicit values (a constructor on the device may leave memory uninitialized), as CudaWeights::Synthetic:
    # linear weights uniform in +-1/sqrt(in_features), embeddings in +-1, norm weights 1.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                bound = 1.0 if "embed_tokens" in name else p.shape[1] ** -0.5
                p.uniform_(-bound, bound)
    return model, cfg


def measure_bandwidth(torch, device, nbytes=2 << 30, reps=10):
    a = torch.ones(nbytes, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    for _ in range(2):
        b.copy_(a)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        b.copy_(a)
    stop.record()
    torch.cuda.synchronize()
    sec = start.elapsed_time(stop) / 1e3 / reps
    del a, b
    torch.cuda.empty_cache()
    return 2.0 * nbytes / sec


def run_config(torch, model, shape, batch, prompt, gen, warmup, device, seed):
    s = SHAPES[shape]
    g = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, s["vocab"], (batch, prompt), generator=g).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        sync()
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)  # default DynamicCache
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        sync()
        prefill_s = time.perf_counter() - t0
        cache = out.past_key_values
        del out
        steps = []
        for i in range(warmup + gen):
            sync()
            t0 = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            sync()
            if i >= warmup:
                steps.append(time.perf_counter() - t0)
            cache = out.past_key_values
            del out
    del cache, ids, nxt
    return prefill_s, steps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m,llama2-7b,llama3-8b",
                    help=f"comma-separated shapes out of {', '.join(SHAPES)}")
    ap.add_argument("--batches", type=int_list, default=[1, 16])
    ap.add_argument("--prompts", type=int_list, default=[2048])
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--bandwidth", type=float, default=0.0,
                    help="copy bandwidth in bytes/s (read + write) for floor_step_ms; 0: measure it here")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    shapes = [m for m in args.models.split(",") if m]
    for m in shapes:
        if m not in SHAPES:
            sys.exit(f"hf_decode: unknown shape '{m}' (known: {', '.join(SHAPES)})")
    if args.gen <= 0 or args.warmup < 0 or not args.batches or not args.prompts:
        sys.exit("hf_decode: --gen must be > 0, --warmup >= 0, --batches and --prompts non-empty")

    import torch
    import transformers
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        sys.exit("hf_decode: torch sees no CUDA device")
    gpu = torch.cuda.get_device_name() if on_gpu else "cpu"
    bandwidth = args.bandwidth or (measure_bandwidth(torch, args.device) if on_gpu else 0.0)
    log(f"{gpu}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    result = {"command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
              "machine": f"{gpu}; torch {torch.__version__}, transformers {transformers.__version__}",
              "bandwidth_bytes_per_s": bandwidth, "rows": []}

    def write():
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")

    for shape in shapes:
        s = SHAPES[shape]
        base = {"engine": "transformers", "shape": shape, "model": s["label"], "gen": args.gen}
        t0 = time.time()
        try:
            model, _ = build_model(torch, shape, max(args.prompts) + args.warmup + args.gen, args.device)
        except Exception as e:  # noqa: BLE001 -- record any failure, keep going
            log(f"{shape}: cannot build the model: {e!r}")
            for b in args.batches:
                for p in args.prompts:
                    result["rows"].append({**base, "batch": b, "prompt": p, "decode_tok_s": None, "step_ms": None,
                                           "floor_step_ms": None, "note": f"error building the model: {e!r}"[:300]})
            write()
            continue
        run_config(torch, model, shape, 2, 64, 2, 0, args.device, args.seed)  # warm up kernels and allocator
        log(f"{shape}: model built and warmed up in {time.time() - t0:.1f} s")
        for b in args.batches:
            for p in args.prompts:
                row = {**base, "batch": b, "prompt": p, "decode_tok_s": None, "step_ms": None,
                       "floor_step_ms": None, "prefill_ms": None, "prefill_tok_s": None,
                       "note": f"random bf16 weights (timing only), attn {model.config._attn_implementation}, "
                               "DynamicCache, eager PyTorch"}
                try:
                    prefill_s, steps = run_config(torch, model, shape, b, p, args.gen, args.warmup, args.device,
                                                  args.seed)
                    dec = sum(steps)
                    step_ms = 1e3 * dec / len(steps)
                    row.update(decode_tok_s=b * args.gen / dec, step_ms=step_ms, step_ms_min=1e3 * min(steps),
                               prefill_ms=1e3 * prefill_s, prefill_tok_s=b * p / prefill_s, warmup=args.warmup)
                    if bandwidth:
                        fl = floor_step_ms(s, b, p + args.warmup + args.gen / 2, bandwidth)
                        row.update(floor_step_ms=fl, step_over_floor=step_ms / fl)
                except torch.OutOfMemoryError as e:
                    row["note"] = f"skipped: out of GPU memory ({str(e).splitlines()[0][:160]})"
                except Exception as e:  # noqa: BLE001
                    row["note"] = f"error: {e!r}"[:300]
                if on_gpu:
                    torch.cuda.empty_cache()
                done = f"{row['decode_tok_s']:.1f} tok/s, {row['step_ms']:.2f} ms/step" if row["step_ms"] else None
                log(f"{shape} batch {b} prompt {p}: {done or row['note']}")
                result["rows"].append(row)
                write()
        del model
        if on_gpu:
            torch.cuda.empty_cache()
    write()
    log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
