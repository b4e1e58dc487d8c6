#!/usr/bin/env python3
"""Builds the tokenizer golden data: reference encodings from Hugging Face `tokenizers` for SmolLM2.

The reference tokenizer is rebuilt from the GGUF vocab and merges with exactly SmolLM2's tokenizer.json
pipeline (no normalizer; pre-tokenizer Sequence[Digits(individual_digits=True),
ByteLevel(add_prefix_space=False, use_regex=True)]; BPE without dropout, unk or byte fallback; ByteLevel
decoder; the control tokens as special added tokens), so tests need neither network nor transformers.

The test set is built deterministically (fixed seeds, sorted file lists) from Debian-packaged texts plus
generated cases; every case is at most MAX_CHARS characters:
  austen    r-cran-janeaustenr: lines and short paragraphs of the six novels (exported with Rscript)
  gcide     dict-gcide: raw dictionary lines and entries (indentation, brackets, {markup})
  wordnet   wordnet-base: glosses and raw data lines (offsets, digit runs, trailing spaces)
  fortune   fortunes: whole fortune cookies (newlines, tabs, ASCII art)
  cpp/py    code lines and blocks from /usr/include/c++/12 and /usr/lib/python3.11
  unicode   multilingual sentences, NFC/NFD forms, and seeded random strings drawn from letter, digit,
            whitespace, mark, symbol and control classes of many scripts
  emoji     ZWJ sequences, skin tones, flags, keycaps, variation selectors
  space     tabs, CR/LF mixes, runs of spaces, trailing spaces, NBSP, U+2028, other White_Space
  digits    digit runs, numbers, dates, versions, non-ASCII digits
  contract  contractions in all letter cases, curly apostrophes
  special   control tokens embedded in text, partial and adjacent ones
  chat      chat-template renders
Outputs (tests/data/tokenizer/):
  golden.jsonl  one case a line: {"src", "text", "ids"} plus, when the text holds a control token,
                "ids_plain" (special tokens not parsed) and "skip" (decode with skip_special_tokens), and
                "decoded" when decoding does not give the text back (bytes missing from the vocab); every
                VARIANT_EVERY-th case also has "ids_gpt2" and "ids_llama3": the same vocab behind the
                plain GPT-2 regex (pre "gpt2"/"default") and the Llama-3 Split regex (pre "llama-bpe").
  chat.jsonl    one render a line: {"template" ("model" or the Jinja text), "messages",
                "add_generation_prompt", "text", and for the model's template "ids"}; rendered with jinja2
                as transformers does (sandboxed, trim_blocks, lstrip_blocks).

Usage: python3 tools/make_tokenizer_golden.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
Needs: pip install tokenizers gguf numpy jinja2; apt install r-cran-janeaustenr dict-gcide wordnet-base
fortunes.
"""

import argparse
import glob
import gzip
import json
import os
import random
import subprocess
import tempfile
import unicodedata

import jinja2.sandbox
from gguf import GGUFReader
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

MAX_CHARS = 240
VARIANT_EVERY = 20  # every n-th case is also encoded with the gpt2 and llama3 pre-tokenizers
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------------
# The reference tokenizer.

def read_gguf_tokenizer(path):
    reader = GGUFReader(path)

    def strings(key):
        f = reader.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def ints(key):
        f = reader.fields[key]
        return [int(f.parts[i][0]) for i in f.data]

    def string(key):
        f = reader.fields[key]
        return bytes(f.parts[f.data[0]]).decode("utf-8")

    return {
        "tokens": strings("tokenizer.ggml.tokens"),
        "merges": strings("tokenizer.ggml.merges"),
        "types": ints("tokenizer.ggml.token_type"),
        "pre": string("tokenizer.ggml.pre"),
        "chat_template": string("tokenizer.chat_template"),
    }


LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def build_variant(tok, pre):
    """The same vocab and merges behind the pre-tokenizer that GGUF `pre` names stand for in HF."""
    variant = Tokenizer.from_str(tok.to_str())
    if pre == "gpt2":
        variant.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif pre == "llama3":
        variant.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    return variant


def build_reference(spec):
    assert spec["pre"] == "smollm", spec["pre"]
    vocab = {tok: i for i, tok in enumerate(spec["tokens"])}
    merges = [tuple(m.split(" ")) for m in spec["merges"]]
    bpe = models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, fuse_unk=False,
                     byte_fallback=False, ignore_merges=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    specials = [t for t, ty in zip(spec["tokens"], spec["types"]) if ty == 3]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok, specials


# ---------------------------------------------------------------------------------------------------
# Debian-packaged texts.

def clip(s):
    return s[:MAX_CHARS]


def sample(rng, items, n):
    items = list(items)
    return items if len(items) <= n else rng.sample(items, n)


def austen_cases(rng):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "austen.txt")
        subprocess.run(["Rscript", "-e",
                        "library(janeaustenr); con <- file(commandArgs(TRUE)[1], encoding='UTF-8'); "
                        "writeLines(austen_books()$text, con); close(con)", out],
                       check=True, capture_output=True)
        with open(out, encoding="utf-8") as f:
            lines = f.read().split("\n")
    nonempty = [l for l in lines if l.strip()]
    cases = [("austen", l) for l in sample(rng, nonempty, 2200)]
    for start in sorted(rng.sample(range(len(lines) - 6), 200)):
        cases.append(("austen", clip("\n".join(lines[start:start + rng.randint(2, 6)]))))
    return cases


def gcide_cases(rng):
    with gzip.open("/usr/share/dictd/gcide.dict.dz", "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    lines = [l for l in text.split("\n") if l.strip() and "\ufffd" not in l]
    cases = [("gcide", clip(l)) for l in sample(rng, lines, 1200)]
    entries = [e for e in text.split("\n\n") if e.strip() and "\ufffd" not in e]
    cases += [("gcide", clip(e)) for e in sample(rng, entries, 200)]
    return cases


def wordnet_cases(rng):
    glosses, raw = [], []
    for pos in ("noun", "verb", "adj", "adv"):
        with open(f"/usr/share/wordnet/data.{pos}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):
                    continue  # license header
                line = line.rstrip("\n")
                raw.append(line)
                if " | " in line:
                    glosses.append(line.split(" | ", 1)[1])
    return ([("wordnet", clip(g)) for g in sample(rng, glosses, 1000)] +
            [("wordnet", clip(r)) for r in sample(rng, raw, 200)])


def fortune_cases(rng):
    fortunes = []
    for path in sorted(glob.glob("/usr/share/games/fortunes/*")):
        if "." in os.path.basename(path) or os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for item in f.read().split("\n%\n"):
                if item.strip() and len(item) <= MAX_CHARS and "\ufffd" not in item:
                    fortunes.append(item)
    return [("fortune", f) for f in sample(rng, fortunes, 900)]


def code_cases(rng):
    cases = []
    for tag, pattern in (("cpp", "/usr/include/c++/12/bits/*.h"), ("py", "/usr/lib/python3.11/*.py")):
        lines, blocks = [], []
        for path in sorted(glob.glob(pattern)):
            with open(path, encoding="utf-8", errors="replace") as f:
                file_lines = f.read().split("\n")
            lines += [l for l in file_lines if l.strip() and "\ufffd" not in l]
            for i in range(0, len(file_lines) - 8, 40):
                blocks.append("\n".join(file_lines[i:i + 8]))
        cases += [(tag, clip(l)) for l in sample(rng, lines, 900)]
        cases += [(tag, clip(b)) for b in sample(rng, blocks, 120) if "\ufffd" not in b]
    return cases


# ---------------------------------------------------------------------------------------------------
# Generated cases.

SENTENCES = [
    "Le cœur a ses raisons que la raison ne connaît point.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein, sagt man in Köln.",
    "¿Dónde está la biblioteca? ¡Allí, señor!",
    "Ação, coração e informação são palavras portuguesas.",
    "Zażółć gęślą jaźń — to polskie zdanie testowe.",
    "Příliš žluťoučký kůň úpěl ďábelské ódy.",
    "Árvíztűrő tükörfúrógép.",
    "Høj på øl og æbler i Århus.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Жовтий їжак ґрунтовно з'їв щавель.",
    "Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο.",
    "الصبر مفتاح الفرج، والعلم نور.",
    "שלום עולם, מה שלומך היום?",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "আমি বাংলায় গান গাই।",
    "வணக்கம் உலகம்.",
    "สวัสดีครับ ยินดีต้อนรับ",
    "Xin chào thế giới, tôi là người Việt Nam.",
    "你好，世界！今天天气很好。",
    "我们在2024年3月15日见面。",
    "こんにちは世界。カタカナとひらがなと漢字。",
    "東京タワーは333メートルです。",
    "안녕하세요 세계! 한국어 문장입니다.",
    "ሰላም ለዓለም።",
    "Բարեւ աշխարհ։",
    "გამარჯობა მსოფლიო.",
    "Merhaba dünya, İstanbul'da ılık bir gün.",
    "Ða ðe þæt ðu wille, þu scealt.",
    "ℌ𝔢𝔩𝔩𝔬 𝕎𝕠𝕣𝕝𝕕 𝐁𝐨𝐥𝐝 𝑰𝒕𝒂𝒍𝒊𝒄",
    "ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ　１２３",
    "Ⅻ o'clock, ½ past, ¾ done, x² + y³ = z⁴, H₂O.",
    "naïve café résumé coöperate façade jalapeño",
    "Straße, Maße, Fuß, ẞ",
    "ǅemal, ǈubljana, ǋegoš",
    "İ ı ŉ ǰ ΐ ΰ և ẖ ẗ ẘ ẙ ẚ ﬀ ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ",
    "Zalgo: Z̴̡̪̫̖̥̔ͪ͆ḁ̶̢̦̹̔l̵̡̮̹̂ğ̸̗̺̇ơ̵̱̦͐",
    "Tiếng Việt có dấu: ắ ằ ẳ ẵ ặ ố ồ ổ ỗ ộ",
    "Dzień dobry, świecie! Ćma, źdźbło, łódź.",
    "Ελληνικά: αβγδεζηθ ΑΒΓΔΕΖΗΘ ς",
    "Kyrillisch: ЁЖЗИЙ ёжзий Ѣѣ Ѳѳ",
]

EMOJI = [
    "😀", "😂🤣", "👍", "👍🏻", "👍🏼", "👍🏽", "👍🏾", "👍🏿", "👨‍👩‍👧‍👦", "👩‍❤️‍💋‍👨", "🧑🏽‍💻", "👩🏿‍🚀",
    "🏳️‍🌈", "🏴‍☠️", "🇺🇸", "🇯🇵", "🇩🇪🇫🇷", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "1️⃣", "#️⃣", "*️⃣", "❤️", "❤", "☺️", "✌🏾",
    "🤷‍♀️", "🤷🏻‍♂️", "🫠", "🦀", "🐍", "🚀✨", "🙏🏽", "👁️‍🗨️", "🧔‍♂️", "🫶🏼", "©️", "™️", "↔️", "🔟",
]

WHITESPACE = ["\t", "\n", "\x0b", "\x0c", "\r", " ", "\x85", "\xa0", "\u1680", "\u2000", "\u2001",
              "\u2002", "\u2003", "\u2004", "\u2005", "\u2006", "\u2007", "\u2008", "\u2009", "\u200a",
              "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
# Look like spaces but are not White_Space: the regex must treat them as symbols.
NOT_WHITESPACE = ["\x1c", "\x1d", "\x1e", "\x1f", "\u180e", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"]


def codepoint_pool(ranges):
    pool = []
    for lo, hi in ranges:
        for cp in range(lo, hi + 1):
            ch = chr(cp)
            if unicodedata.category(ch) not in ("Cn", "Cs", "Co"):
                pool.append(ch)
    return pool


CLASSES = {
    "ascii_letter": codepoint_pool([(0x41, 0x5A), (0x61, 0x7A)]),
    "letter": codepoint_pool([(0xC0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x530, 0x58F),
                              (0x5D0, 0x5EA), (0x620, 0x64A), (0x904, 0x939), (0xE01, 0xE30),
                              (0x10A0, 0x10FF), (0x3041, 0x3096), (0x30A1, 0x30FA), (0x4E00, 0x4E80),
                              (0xAC00, 0xAC40), (0x1D400, 0x1D44F), (0x20000, 0x20010), (0x1E00, 0x1EFF)]),
    "digit": list("0123456789"),
    "number": codepoint_pool([(0xB2, 0xB3), (0xB9, 0xB9), (0xBC, 0xBE), (0x660, 0x669), (0x6F0, 0x6F9),
                              (0x966, 0x96F), (0x9E6, 0x9EF), (0xE50, 0xE59), (0x2070, 0x2079),
                              (0x2080, 0x2089), (0x2150, 0x2189), (0x2460, 0x249B), (0xFF10, 0xFF19),
                              (0x1D7CE, 0x1D7FF), (0x10107, 0x10133), (0x3007, 0x3007), (0x3021, 0x3029)]),
    "space": WHITESPACE + [" "] * 8 + ["\n"] * 3,
    "not_space": NOT_WHITESPACE,
    "mark": codepoint_pool([(0x300, 0x36F), (0x483, 0x489), (0x591, 0x5BD), (0x64B, 0x65F), (0x93A, 0x94F),
                            (0xE31, 0xE31), (0xE34, 0xE3A), (0x20D0, 0x20F0), (0xFE00, 0xFE0F),
                            (0xFE20, 0xFE2F)]),
    "punct": list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + codepoint_pool(
        [(0xA1, 0xBF), (0x2010, 0x2027), (0x2030, 0x205E), (0x20A0, 0x20C0), (0x2190, 0x21FF),
         (0x2200, 0x22FF), (0x2500, 0x257F), (0x25A0, 0x25FF), (0x2600, 0x26FF), (0x3001, 0x3003),
         (0x300C, 0x3011), (0xFF01, 0xFF0F)]),
    "emoji": codepoint_pool([(0x1F300, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F900, 0x1F9FF),
                             (0x1F3FB, 0x1F3FF)]) + ["\u200d", "\ufe0f", "\u20e3"],
    "control": [chr(c) for c in range(0, 0x20)] + ["\x7f", "\x80", "\x9f", "\xad"],
    "apostrophe": ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'M", "'LL",
                   "'D", "'", "''", "’s", "'x"],
}
CLASS_WEIGHTS = {"ascii_letter": 10, "letter": 6, "digit": 4, "number": 2, "space": 6, "not_space": 1,
                 "mark": 2, "punct": 4, "emoji": 2, "control": 1, "apostrophe": 2}


def random_string(rng):
    names = list(CLASS_WEIGHTS)
    weights = [CLASS_WEIGHTS[n] for n in names]
    out = []
    for _ in range(rng.randint(1, 30)):
        cls = rng.choices(names, weights)[0]
        run = rng.randint(1, 6) if cls in ("ascii_letter", "letter", "digit", "space") else 1
        out.extend(rng.choice(CLASSES[cls]) for _ in range(run))
    return clip("".join(out))


def unicode_cases(rng):
    cases = []
    for s in SENTENCES:
        for form in ("NFC", "NFD", "NFKC"):
            cases.append(("unicode", unicodedata.normalize(form, s)))
        cases.append(("unicode", " " + s + "  "))
        cases.append(("unicode", s.upper()))
    for i in range(len(SENTENCES)):
        a, b = rng.sample(SENTENCES, 2)
        cases.append(("unicode", a + rng.choice(WHITESPACE) + b))
    for _ in range(1300):
        cases.append(("unicode", random_string(rng)))
    for ch in WHITESPACE + NOT_WHITESPACE:
        for tpl in ("a{0}b", "a {0}b", "a{0} b", "a {0} b", "{0}{0}x", "x{0}{0}", "x{0}{0}{0}1", "'s{0}'t",
                    "a  {0}b", "{0}", "{0}{0}", " {0}", "{0} ", "!{0}!", "1{0}2"):
            cases.append(("unicode", tpl.format(ch)))
    return cases


def emoji_cases(rng):
    cases = [("emoji", e) for e in EMOJI]
    for e in EMOJI:
        cases.append(("emoji", f"I like it {e} a lot{e}{e}!"))
        cases.append(("emoji", f" {e} "))
    for _ in range(200):
        parts = [rng.choice(EMOJI + [" ", "  ", "a", "ok", "1", "!", "\n", "é"]) for _ in range(rng.randint(1, 8))]
        cases.append(("emoji", "".join(parts)))
    return cases


def whitespace_cases(rng):
    cases = []
    pieces = ["word", "Word", "x", "1", "12", "!", "?!", "(", ")", "é", "中文", "'s", "-", "_", "\t", "  ",
              "   ", " ", "\n", "\r\n", "\r", "\n\n", " \n", "\t\n", "\xa0", "\u2028", "\u3000", "\x85"]
    for n in range(1, 40):
        cases.append(("space", " " * n))
        cases.append(("space", "a" + " " * n + "b"))
        cases.append(("space", "a" + " " * n))
        cases.append(("space", "\t" * (n % 7 + 1) + "if (x) {" + " " * (n % 5)))
    for _ in range(400):
        cases.append(("space", "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))))
    cases += [("space", s) for s in [
        "line one\r\nline two\r\n", "\r\n\r\n", "trailing   ", "   leading", "\n\n\nthree newlines",
        "tab\tseparated\tvalues\t", "mixed \t \n \r\n end", "  \n  \n  ", "a\n b\n  c\n   d", "\u00a0nbsp\u00a0",
        "x\u2028y\u2029z", "", " ", "\n", "\t", "\r",
    ]]
    return cases


def digit_cases(rng):
    cases = [("digits", s) for s in [
        "0", "1234567890", "3.14159265358979", "1,000,000", "-42", "+1 (555) 123-4567", "2024-01-01T12:34:56Z",
        "v1.2.3", "0x1F 0b1010 0o777", "1e-10", "12:30pm", "10%", "$9.99", "€1.234,56", "A1B2C3", "x1y22z333",
        "٣٤٥ ٦", "१२३", "１２３", "½¼¾", "Ⅷ ⅷ Ⅻ", "①②③", "x²³", "𝟘𝟙𝟚", "1 2  3   4", "1\n2\t3",
        "007", "99 bottles", "in 1984,", "page 12-14", "ISBN 978-3-16-148410-0", "192.168.0.1:8080",
    ]]
    for _ in range(250):
        n = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 20)))
        tpl = rng.choice(["{}", " {}", "a{}", "{} items", "#{}", "({})", "{}.{}", "x = {};", "'{}'"])
        cases.append(("digits", tpl.format(n, n[::-1])))
    return cases


def contraction_cases(rng):
    cases = []
    for c in ["s", "t", "re", "ve", "m", "ll", "d"]:
        for variant in sorted({c, c.upper(), c.capitalize(), c[:-1] + c[-1].upper()}):
            for tpl in ("it'{}", "IT'{}", " '{}", "'{}", "x'{}y", "'{}'{}", "a '{} b", "’{}", "''{}"):
                cases.append(("contract", tpl.format(variant, variant)))
    cases += [("contract", s) for s in [
        "don't DON'T Don't", "I'm I'M i'm", "we've WE'VE", "they're THEY'RE", "she'll SHE'LL",
        "he'd HE'D", "it's IT'S", "rock 'n' roll", "'tis 'TWAS", "o'clock", "Ma'am", "y'all'd've",
        "the students' books", "'quoted'", "''double''", "it’s curly", "l'été", "c'est l'homme",
    ]]
    return cases


def special_cases(rng, specials):
    cases = [("special", s) for s in [
        "<|im_start|>user\nHello<|im_end|>\n", "<|im_start|><|im_start|>", "<|im_end|><|endoftext|>",
        "<|im_start", "<|im_start|", "im_start|>", "<<|im_end|>>", "< |im_end| >", "<|IM_END|>",
        " <|im_end|> ", "text<|endoftext|>text", "<repo_name>adore<file_sep>main.cc<filename>x",
        "<reponame>a<gh_stars>10", "<issue_start>bug<issue_comment>fix<issue_closed>",
        "<jupyter_start><jupyter_text>hi<jupyter_code>x=1<jupyter_output>1<empty_output><jupyter_script>",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
        "a<|im_start|>b", "1<|im_end|>2", "'s<|im_end|>'t", " <|endoftext|>\n\n", "<|endoftext|>" * 3,
        "<|im_start|>assistant\n", "<|im_end|>", "<|endoftext|>", "<|<|im_end|>|>",
    ]]
    fillers = ["hello", " world", "\n", " ", "12", "é", "😀", "'s", "  ", "<", "|>", "<|"]
    for _ in range(180):
        parts = [rng.choice(fillers + specials) for _ in range(rng.randint(2, 8))]
        cases.append(("special", "".join(parts)))
    return cases


# ---------------------------------------------------------------------------------------------------
# Chat templates.

PLAIN_CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
                " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|im_start|>assistant\\n' }}{% endif %}")
QWEN_LIKE = ("{% for message in messages %}\n    {%- if loop.first and messages[0]['role'] != 'system' %}\n"
             "        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n"
             "    {%- endif %}\n    {{- \"<|im_start|>\" + message.role + \"\\n\" + message.content + "
             "\"<|im_end|>\\n\" }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n"
             "    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n")
INDENTED = ("{# ChatML with block indentation that lstrip_blocks/trim_blocks remove #}\n"
            "{% for message in messages %}\n"
            "  {% if loop.first and messages[0].role != 'system' %}"
            "{{ '<|im_start|>system\\nBe brief.<|im_end|>\\n' }}{% endif %}"
            "{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
            "{% endfor %}\n"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def render(template, messages, add_generation_prompt):
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt)


def chat_records(rng, model_template, contents, tok):
    roles = ["user", "assistant"]
    conversations = [[], [{"role": "user", "content": "Hi"}], [{"role": "system", "content": "Be terse."}],
                     [{"role": "system", "content": "S"}, {"role": "user", "content": "What is 2+2?"},
                      {"role": "assistant", "content": "4"}, {"role": "user", "content": "Why?"}],
                     [{"role": "assistant", "content": "I speak first."}],
                     [{"role": "user", "content": ""}],
                     [{"role": "user", "content": "a"}, {"role": "system", "content": "late system"}]]
    for _ in range(110):
        msgs = []
        if rng.random() < 0.4:
            msgs.append({"role": "system", "content": rng.choice(contents)})
        for k in range(rng.randint(1, 4)):
            msgs.append({"role": roles[k % 2], "content": rng.choice(contents)})
        conversations.append(msgs)
    records = []
    for i, msgs in enumerate(conversations):
        for add_gen in ((True, False) if i < 20 else (rng.random() < 0.7,)):
            text = render(model_template, msgs, add_gen)
            records.append({"template": "model", "messages": msgs, "add_generation_prompt": add_gen,
                            "text": text, "ids": tok.encode(text).ids})
    for template in (PLAIN_CHATML, QWEN_LIKE, INDENTED):
        for msgs in conversations[:8]:
            for add_gen in (True, False):
                records.append({"template": template, "messages": msgs, "add_generation_prompt": add_gen,
                                "text": render(template, msgs, add_gen)})
    return records


# ---------------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--out", default=os.path.join(ROOT, "tests/data/tokenizer"))
    args = parser.parse_args()

    spec = read_gguf_tokenizer(args.model)
    tok, specials = build_reference(spec)
    plain = Tokenizer.from_str(tok.to_str())
    plain.encode_special_tokens = True  # HF's switch for "special tokens in text are plain text"

    cases = []
    for seed, make in enumerate([austen_cases, gcide_cases, wordnet_cases, fortune_cases, code_cases,
                                 unicode_cases, emoji_cases, whitespace_cases, digit_cases,
                                 contraction_cases]):
        cases += make(random.Random(1000 + seed))
    cases += special_cases(random.Random(2000), specials)
    contents = [text for _, text in cases]
    chat = chat_records(random.Random(3000), spec["chat_template"], contents, tok)
    cases += [("chat", r["text"]) for r in chat if r["template"] == "model"][:60]

    os.makedirs(args.out, exist_ok=True)
    variants = {pre: build_variant(tok, pre) for pre in ("gpt2", "llama3")}
    counts = {}
    with open(os.path.join(args.out, "golden.jsonl"), "w", encoding="utf-8") as f:
        for index, (src, text) in enumerate(cases):
            ids = tok.encode(text).ids
            record = {"src": src, "text": text, "ids": ids}
            decoded = tok.decode(ids, skip_special_tokens=False)
            if decoded != text:
                # Bytes whose byte-level character is missing from the vocab (e.g. 0x04, 0x1D) are dropped
                # by HF's BPE (no unk token, no byte fallback), so these texts do not round-trip.
                record["decoded"] = decoded
            if any(s in text for s in specials):
                record["ids_plain"] = plain.encode(text).ids
                record["skip"] = tok.decode(ids, skip_special_tokens=True)
            if index % VARIANT_EVERY == 0:
                for pre, variant in variants.items():
                    record["ids_" + pre] = variant.encode(text).ids
            f.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            counts[src] = counts.get(src, 0) + 1
    with open(os.path.join(args.out, "chat.jsonl"), "w", encoding="utf-8") as f:
        for r in chat:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"{len(cases)} cases", counts, f"{len(chat)} chat renders")


if __name__ == "__main__":
    main()
