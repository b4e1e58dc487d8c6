"""A self-contained Llama forward pass in PyTorch, read straight from a GGUF file, for ADORE training data.

Why not transformers: (1) the GPU machine has no `gguf` package and no network; this file needs only numpy
and torch; (2) transformers un-permutes the GGUF q/k weights, so its per-head Q/K differ from the C++
engine's by a permutation of head_dim; here the weights stay in the GGUF (llama.cpp) layout and RoPE
rotates adjacent pairs (2j, 2j+1) exactly like kernels/cpu RopeRef, so every activation matches the
engine's layout; (3) the forward computes the pooled attention (sum over layers and heads) chunk by chunk
instead of materialising [heads, T, T] per layer.

Supports the tensor types of the SmolLM2 Q4_1 file: F32, F16, Q8_0, Q4_0, Q4_1.
"""
import struct

import numpy as np
import torch

GGUF_MAGIC = b"GGUF"
# GGML tensor types used here: id -> (name, block size, bytes per block).
GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34)}


class GgufFile:
    """Metadata and raw tensor bytes of a GGUF (v2/v3) file; raises ValueError naming the problem."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as fh:
            self.buf = fh.read()
        self.off = 0
        if self._take(4) != GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file (bad magic)")
        version = self._u32()
        if version not in (2, 3):
            raise ValueError(f"{path}: unsupported GGUF version {version}")
        n_tensors, n_kv = self._u64(), self._u64()
        self.meta = {}
        for _ in range(n_kv):
            key = self._str()
            self.meta[key] = self._value(self._u32())
        infos = []
        for _ in range(n_tensors):
            name = self._str()
            n_dims = self._u32()
            dims = [self._u64() for _ in range(n_dims)]
            ttype = self._u32()
            offset = self._u64()
            infos.append((name, dims, ttype, offset))
        align = int(self.meta.get("general.alignment", 32))
        data_start = (self.off + align - 1) // align * align
        self.tensors = {}
        for name, dims, ttype, offset in infos:
            if ttype not in GGML_TYPES:
                raise ValueError(f"{path}: tensor {name} has unsupported type {ttype}")
            _, block, nbytes = GGML_TYPES[ttype]
            count = int(np.prod(dims))
            size = count // block * nbytes
            start = data_start + offset
            if start + size > len(self.buf):
                raise ValueError(f"{path}: tensor {name} runs past the end of the file")
            self.tensors[name] = (dims, ttype, start, size)

    def _take(self, n):
        if self.off + n > len(self.buf):
            raise ValueError(f"{self.path}: truncated header")
        b = self.buf[self.off:self.off + n]
        self.off += n
        return b

    def _u32(self):
        return struct.unpack("<I", self._take(4))[0]

    def _u64(self):
        return struct.unpack("<Q", self._take(8))[0]

    def _str(self):
        return self._take(self._u64()).decode("utf-8", errors="replace")

    def _value(self, vtype):
        scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                  12: "<d"}
        if vtype in scalar:
            fmt = scalar[vtype]
            return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]
        if vtype == 8:
            return self._str()
        if vtype == 9:
            etype, n = self._u32(), self._u64()
            return [self._value(etype) for _ in range(n)]
        raise ValueError(f"{self.path}: unknown metadata value type {vtype}")

    def tensor(self, name):
        """Dequantized float32 array shaped like torch's [rows, cols] (GGML dims reversed)."""
        if name not in self.tensors:
            raise ValueError(f"{self.path}: missing tensor {name}")
        dims, ttype, start, size = self.tensors[name]
        raw = np.frombuffer(self.buf, dtype=np.uint8, count=size, offset=start)
        kind = GGML_TYPES[ttype][0]
        if kind == "F32":
            x = raw.view(np.float32).copy()
        elif kind == "F16":
            x = raw.view(np.float16).astype(np.float32)
        elif kind == "Q8_0":
            b = raw.reshape(-1, 34)
            d = b[:, :2].copy().view(np.float16).astype(np.float32)
            q = b[:, 2:].view(np.int8).astype(np.float32)
            x = (q * d).ravel()
        elif kind == "Q4_0":
            b = raw.reshape(-1, 18)
            d = b[:, :2].copy().view(np.float16).astype(np.float32)
            qs = b[:, 2:]
            q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
            x = (q * d).ravel()
        else:  # Q4_1
            b = raw.reshape(-1, 20)
            d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
            m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
            qs = b[:, 4:]
            q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
            x = (q * d + m).ravel()
        return x.reshape(list(reversed(dims)))


class LlamaGguf(torch.nn.Module):
    """Llama forward (RMSNorm, RoPE on adjacent pairs, GQA, SwiGLU) with the GGUF weights as stored."""

    def __init__(self, path, device="cpu"):
        super().__init__()
        g = GgufFile(path)
        arch = g.meta.get("general.architecture", "llama")
        m = lambda k: g.meta[f"{arch}.{k}"]
        self.num_layers = int(m("block_count"))
        self.hidden = int(m("embedding_length"))
        self.num_heads = int(m("attention.head_count"))
        self.num_kv_heads = int(m("attention.head_count_kv"))
        self.head_dim = self.hidden // self.num_heads
        self.rope_theta = float(g.meta.get(f"{arch}.rope.freq_base", 10000.0))
        self.eps = float(m("attention.layer_norm_rms_epsilon"))
        t = lambda name: torch.from_numpy(g.tensor(name)).to(device)
        self.embd = t("token_embd.weight")  # [vocab, hidden]
        self.vocab = self.embd.shape[0]
        self.out_norm = t("output_norm.weight")
        self.lm_head = t("output.weight") if "output.weight" in g.tensors else self.embd
        self.layers = []
        for i in range(self.num_layers):
            p = f"blk.{i}."
            self.layers.append({k: t(p + k + ".weight") for k in (
                "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                "ffn_down")})
        del g
        self.device = device

    def rms(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x, pos):
        # x: [T, heads, head_dim]; rotates pairs (2j, 2j+1) by pos * theta^(-2j/head_dim), as RopeRef does.
        hd = x.shape[-1]
        inv = self.rope_theta ** (-torch.arange(0, hd // 2, device=x.device, dtype=torch.float32) * 2.0 / hd)
        ang = pos.to(torch.float32)[:, None] * inv[None, :]  # [T, hd/2]
        c, s = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
        a, b = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
        return out

    @torch.no_grad()
    def forward(self, ids, feature_layers=(), want_logits=False, want_attn=True, chunk=1024, mask=None,
                want_vattn=False):
        """ids: [T] int tensor (one sequence). Returns dict with
        'features': [T, len(feature_layers), hidden] float32: each layer's attn_norm output (the input of
                    its q/k/v projections; the engine's `h` buffer after RmsNormRef at that layer);
        'attn': [T, T] float32, row t = attention of query t summed over layers and heads, divided by
                num_layers * num_heads (each row sums to 1; zero above the diagonal);
        'logits': [T, vocab] when want_logits;
        'vattn': [T, T] float32 when want_vattn: like 'attn' but each head's weight on token i is multiplied
                 by the norm of what token i adds to the residual through that head (|W_o,h v_h,i|), each row
                 renormalised to sum to 1: the share of the attention output a token carries.
        mask: optional [T, T] bool, True where query t may see token i (combined with causality): the
        keep schedule of a release policy. One masked forward equals token-by-token decoding with that
        schedule (no rebuild): token i's K/V come from its own masked row, as in the engine."""
        T = ids.shape[0]
        dev = self.embd.device
        pos = torch.arange(T, device=dev)
        x = self.embd[ids.to(dev)]
        nh, nkv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        group = nh // nkv
        scale = 1.0 / (hd ** 0.5)
        pooled = torch.zeros(T, T, device=dev, dtype=torch.float32) if want_attn else None
        feats = []
        causal = torch.ones(T, T, device=dev, dtype=torch.bool).tril()
        if mask is not None:
            causal = causal & mask.to(dev)
        vpooled = torch.zeros(T, T, device=dev, dtype=torch.float32) if want_vattn else None
        for li, w in enumerate(self.layers):
            h = self.rms(x, w["attn_norm"])
            if li in feature_layers:
                feats.append(h)
            q = self.rope((h @ w["attn_q"].T).view(T, nh, hd), pos).transpose(0, 1)  # [nh, T, hd]
            k = self.rope((h @ w["attn_k"].T).view(T, nkv, hd), pos).transpose(0, 1)
            v = (h @ w["attn_v"].T).view(T, nkv, hd).transpose(0, 1)
            k = k.repeat_interleave(group, dim=0)
            v = v.repeat_interleave(group, dim=0)
            if want_vattn:  # |W_o[:, head h] v_h,i| per head and token: [nh, T]
                wo = w["attn_output"].view(-1, nh, hd).transpose(0, 1)  # [nh, hidden, hd]
                vnorm = torch.linalg.vector_norm(v @ wo.transpose(1, 2), dim=-1)
            out = torch.empty(nh, T, hd, device=dev)
            for s in range(0, T, chunk):
                e = min(T, s + chunk)
                sc = (q[:, s:e] @ k[:, :e].transpose(1, 2)) * scale  # [nh, C, e]
                sc = sc.masked_fill(~causal[s:e, :e], float("-inf"))
                p = torch.softmax(sc, dim=-1)
                out[:, s:e] = p @ v[:, :e]
                if want_attn:
                    pooled[s:e, :e] += p.sum(0)
                if want_vattn:
                    vpooled[s:e, :e] += (p * vnorm[:, None, :e]).sum(0)
            x = x + out.transpose(0, 1).reshape(T, nh * hd) @ w["attn_output"].T
            h = self.rms(x, w["ffn_norm"])
            g = h @ w["ffn_gate"].T
            x = x + (torch.nn.functional.silu(g) * (h @ w["ffn_up"].T)) @ w["ffn_down"].T
        res = {}
        if feature_layers:
            order = sorted(feature_layers)
            res["features"] = torch.stack([feats[order.index(l)] for l in feature_layers], dim=1)
        if want_attn:
            res["attn"] = pooled / (self.num_layers * nh)
        if want_vattn:
            res["vattn"] = vpooled / vpooled.sum(-1, keepdim=True)
        if want_logits:
            res["logits"] = self.rms(x, self.out_norm) @ self.lm_head.T
        return res
