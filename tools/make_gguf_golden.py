#!/usr/bin/env python3
"""Golden data for tests/common/gguf_test.cc, from an independent GGUF implementation (PyPI `gguf`).

Writes tests/data/gguf_golden.json with
  * "model": config/tokenizer facts and, for a few tensors of the SmolLM2 Q4_1 file (Q8_0, Q4_1, F32),
    the first values and float64 sums of some rows plus whole-tensor sums, dequantized by
    gguf.quants.dequantize;
  * "blocks": for every ggml type the C++ reader dequantizes, raw block bytes (hex) and the floats
    gguf-py dequantizes them to. Types gguf-py can quantize are quantized from seeded random data; the
    K-quants (no quantizer in gguf-py) are seeded random bytes with finite f16 scales.

Reproduce (from the repository root, after tools/fetch-model.sh):
    pip install gguf numpy
    python3 tools/make_gguf_golden.py models/SmolLM2-135M-Instruct.Q4_1.gguf tests/data/gguf_golden.json
"""
import json
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as T
from gguf import quants

ROWS = {  # tensor -> rows to record
    "token_embd.weight": [0, 1, 1000, 49151],
    "blk.0.attn_q.weight": [0, 5, 575],
    "blk.29.ffn_down.weight": [0, 575],
    "blk.0.attn_norm.weight": [0],
    "output_norm.weight": [0],
}
WHOLE = ["blk.0.attn_k.weight", "blk.17.ffn_up.weight", "blk.0.ffn_norm.weight"]  # full-tensor sums
NUM_VALUES = 48


def f32(x):
    return float(f"{float(x):.9g}")  # float32 round-trips through 9 significant digits


def dequantized(t):
    if t.tensor_type == T.F32:
        return np.asarray(t.data, dtype=np.float32).reshape(-1, int(t.shape[0]))
    return quants.dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0]))


def model_section(path):
    r = GGUFReader(path)
    by_name = {t.name: t for t in r.tensors}
    out = {"tensors": {}, "whole": {}}
    for name, rows in ROWS.items():
        t = by_name[name]
        x = dequantized(t)
        out["tensors"][name] = {
            "type": t.tensor_type.name,
            "ne": [int(v) for v in t.shape],
            "rows": [{
                "row": r_,
                "values": [f32(v) for v in x[r_, :NUM_VALUES]],
                "sum": float(np.sum(x[r_].astype(np.float64))),
                "abs_sum": float(np.sum(np.abs(x[r_].astype(np.float64)))),
            } for r_ in rows],
        }
    for name in WHOLE:
        t = by_name[name]
        x = dequantized(t).astype(np.float64)
        out["whole"][name] = {"type": t.tensor_type.name, "sum": float(x.sum()),
                              "abs_sum": float(np.abs(x).sum()), "sq_sum": float((x * x).sum())}
    return out


def blocks_section():
    rng = np.random.default_rng(1234)
    out = {}
    # Types gguf-py quantizes: two rows of 64 values (2 blocks each for the 32-element quants).
    for qt in [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]:
        x = (rng.standard_normal((2, 64)) * 0.7).astype(np.float32)
        if qt == T.F32:
            raw = x.view(np.uint8)
        elif qt == T.F16:
            raw = x.astype(np.float16).view(np.uint8)
        else:
            raw = quants.quantize(x, qt)
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        if qt == T.F32:
            y = x
        elif qt == T.F16:
            y = raw.view(np.float16).astype(np.float32)
        else:
            y = quants.dequantize(raw, qt)
        out[qt.name] = {"code": int(qt), "n": int(y.size), "hex": raw.tobytes().hex(),
                        "expected": [f32(v) for v in y.reshape(-1)]}
    # K-quants: random bytes, with the f16 super-block scales forced to finite values.
    scale_offsets = {T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
    block_bytes = {T.Q4_K: 144, T.Q5_K: 176, T.Q6_K: 210}
    for qt in [T.Q4_K, T.Q5_K, T.Q6_K]:
        raw = rng.integers(0, 256, size=(2, block_bytes[qt]), dtype=np.uint8)
        for b in range(2):
            for off in scale_offsets[qt]:
                d = np.float16(rng.uniform(0.001, 0.05) * (1 if off == 0 else 0.5))
                raw[b, off:off + 2] = np.frombuffer(d.tobytes(), dtype=np.uint8)
        y = quants.dequantize(raw.reshape(1, -1), qt)
        out[qt.name] = {"code": int(qt), "n": int(y.size), "hex": raw.tobytes().hex(),
                        "expected": [f32(v) for v in y.reshape(-1)]}
    return out


def main():
    model_path, out_path = sys.argv[1], sys.argv[2]
    golden = {"generator": "tools/make_gguf_golden.py (gguf-py GGUFReader + gguf.quants.dequantize)",
              "model": model_section(model_path), "blocks": blocks_section()}
    with open(out_path, "w") as f:
        json.dump(golden, f, indent=None, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
