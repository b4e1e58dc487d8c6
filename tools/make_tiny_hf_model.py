#!/usr/bin/env python3
"""Writes tests/data/tiny_hf/: a tiny random LlamaForCausalLM checkpoint plus reference logits from HF.

The checkpoint (hidden 64, 2 layers, 4 heads, 2 KV heads, head_dim 16, intermediate 128, untied
lm_head, float32, vocab 259 = 256 byte tokens + <|endoftext|> <|im_start|> <|im_end|>) is saved with
save_pretrained(safe_serialization=True), with a byte-level BPE tokenizer.json (no merges,
SmolLM2-style pre-tokenizer: single digits + ByteLevel) built with `tokenizers`, and a
tokenizer_config.json (ChatML template, bos <|im_start|>, eos <|im_end|>). golden_logits.json holds
HF's float32 logits for two fixed 16-token sequences; the C++ engine must reproduce them after
loading the directory (which permutes q/k rows to GGUF order).

Weights are drawn N(0, 0.15^2) (norm weights 1 + N(0, 0.2^2)) rather than HF's 0.02 init so that
logits vary enough for a comparison to catch mistakes. Everything is seeded; rerunning gives the same
files on the same torch version.

Reproduce (from the repository root):
    pip install torch transformers tokenizers safetensors
    python3 tools/make_tiny_hf_model.py tests/data/tiny_hf
"""
import json
import os
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}")


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character map (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tokenizer(out_dir):
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}  # token id = byte value
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)  # ids 256, 257, 258
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 256,
        "chat_template": CHAT_TEMPLATE,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/data/tiny_hf"
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(20240611)
    config = LlamaConfig(
        vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=257,
        eos_token_id=258, pad_token_id=256, attention_bias=False, mlp_bias=False)
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out_dir, safe_serialization=True)
    os.chmod(os.path.join(out_dir, "model.safetensors"), 0o644)
    write_tokenizer(out_dir)

    tok = AutoTokenizer.from_pretrained(out_dir)
    seq_a = tok("Hello, world! 42", add_special_tokens=False)["input_ids"]
    seq_b = tok("<|im_start|>user\nWhat's 2+2", add_special_tokens=False)["input_ids"]
    assert len(seq_a) == 16 and len(seq_b) == 16, (len(seq_a), len(seq_b))
    assert seq_b[0] == 257 and tok.decode(seq_a) == "Hello, world! 42"

    sequences = []
    with torch.no_grad():
        for text, ids in (("Hello, world! 42", seq_a), ("<|im_start|>user\nWhat's 2+2", seq_b)):
            logits = model(torch.tensor([ids])).logits[0].float()
            sequences.append({
                "text": text,
                "token_ids": ids,
                "argmax": logits.argmax(-1).tolist(),
                "logits": [[float(f"{v:.9g}") for v in row] for row in logits.tolist()],
            })
    golden = {
        "generator": "tools/make_tiny_hf_model.py",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "note": "float32 logits of LlamaForCausalLM (eager attention) for each prefix position",
        "sequences": sequences,
    }
    with open(os.path.join(out_dir, "golden_logits.json"), "w") as f:
        json.dump(golden, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
