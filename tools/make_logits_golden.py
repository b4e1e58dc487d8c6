#!/usr/bin/env python3
"""Reference logits from Hugging Face transformers for the CPU engine's golden test.

Loads the GGUF model with transformers (LlamaForCausalLM, float32; transformers dequantizes the GGUF
tensors itself with the `gguf` package), tokenizes a few prompts with the HF tokenizer built from the same
file, and writes tests/data/golden/hf_logits.json: per prompt the token ids and, per position, the argmax,
max |logit| and the top-20 (id, logit) pairs.

    python3 tools/make_logits_golden.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import argparse, json, os, sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    # Prose (Jane Austen, Pride and Prejudice, ch. 1).
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be "
    "in want of a wife. However little known the feelings or views of such a man may be on his first "
    "entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that "
    "he is considered the rightful property of some one or other of their daughters. \"My dear Mr. Bennet,\" "
    "said his lady to him one day, \"have you heard that Netherfield Park is let at last?\" Mr. Bennet "
    "replied that he had not. \"But it is,\" returned she; \"for Mrs. Long has just been here, and she told "
    "me all about it.\" Mr. Bennet made no answer. \"Do you not want to know who has taken it?\" cried his "
    "wife impatiently. \"You want to tell me, and I have no objection to hearing it.\" This was invitation "
    "enough.",
    # Code.
    "def merge_sorted(a, b):\n    \"\"\"Merge two sorted lists into one sorted list.\"\"\"\n    i = j = 0\n"
    "    out = []\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n            out.append(a[i])\n"
    "            i += 1\n        else:\n            out.append(b[j])\n            j += 1\n    out.extend(a[i:])\n"
    "    out.extend(b[j:])\n    return out\n\n\nclass LRUCache:\n    def __init__(self, capacity: int):\n"
    "        self.capacity = capacity\n        self.items = {}\n\n    def get(self, key):\n"
    "        if key not in self.items:\n            return None\n        value = self.items.pop(key)\n"
    "        self.items[key] = value\n        return value\n",
    # Chat (ChatML) with numbers and a list.
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nGive me three tips for staying focused while studying, and explain why each works. "
    "Also, what is 17 * 23?<|im_end|>\n<|im_start|>assistant\nHere are three tips:\n\n1. Remove distractions: "
    "put your phone in another room, because every notification pulls your attention away and it takes "
    "minutes to get it back.\n2. Work in short blocks: 25 minutes of work followed by a 5 minute break keeps "
    "your mind fresh.\n3. Set a clear goal for each session, so you always know what to do next.\n\n"
    "As for the arithmetic, 17 * 23 = 391.",
    # Dictionary-style text with unusual punctuation.
    "Quixotic (a.): Like Don Quixote; romantic to extravagance; absurdly chivalric; apt to be deluded. "
    "Syn. -- Visionary; fanciful; wild; imaginary; chimerical; utopian. Etym: [From Don Quixote, the hero "
    "of the romance of Cervantes.] 1. The quality of being quixotic; 2. a quixotic act or idea; 3. "
    "(fig.) an undertaking of the kind -- rarely used.",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="tests/data/golden/hf_logits.json")
    ap.add_argument("--topk", type=int, default=20)
    args = ap.parse_args()
    d, f = os.path.split(os.path.abspath(args.model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    out = {"model": f, "transformers": __import__("transformers").__version__, "torch": torch.__version__,
           "command": " ".join(["python3"] + sys.argv), "prompts": []}
    total = 0
    for text in PROMPTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        top = torch.topk(logits, args.topk, dim=-1)
        out["prompts"].append({
            "text": text, "ids": ids,
            "argmax": logits.argmax(-1).tolist(),
            "max_abs": logits.abs().max(-1).values.tolist(),
            "top_ids": top.indices.tolist(),
            "top_logits": [[round(v, 6) for v in row] for row in top.values.tolist()],
        })
        total += len(ids)
        print(f"prompt: {len(ids)} tokens", file=sys.stderr)
    print(f"total {total} tokens", file=sys.stderr)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, separators=(",", ":"))


if __name__ == "__main__":
    main()
