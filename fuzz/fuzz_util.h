// Shared helpers of the fuzz targets (fuzz/<name>_fuzzer.cc): a check that aborts with a message (a finding
// under libFuzzer and a failed test under the replay driver), an in-memory file for the readers that take a
// path, the tokenizers the targets run against, and an input splitter.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/gguf.h"
#include "common/model_weights.h"
#include "common/synthetic_model.h"
#include "common/tokenizer.h"
#include "common/unicode_util.h"

// Aborts with the failed condition and a printf-style explanation. Active in every build type (assert()
// disappears under NDEBUG, which the replay tests are built with).
#define FUZZ_CHECK(cond, ...)                                                        \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s\n  ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                             \
      std::fprintf(stderr, "\n");                                                    \
      std::abort();                                                                  \
    }                                                                                \
  } while (0)

namespace adore::fuzz {

// A file that lives in memory (memfd): the GGUF and safetensors readers open files by path, so each input
// replaces the file's contents and the reader opens /proc/self/fd/<fd>. One per process, reused.
class MemFile {
 public:
  static MemFile& Get() {
    static MemFile* f = new MemFile();  // never destroyed: readers may run until exit
    return *f;
  }
  const std::string& path() const { return path_; }
  void Write(const uint8_t* data, size_t size) {
    FUZZ_CHECK(::ftruncate(fd_, 0) == 0, "ftruncate: %s", std::strerror(errno));
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      FUZZ_CHECK(n > 0, "pwrite: %s", std::strerror(errno));
      done += static_cast<size_t>(n);
    }
  }

 private:
  MemFile() {
    fd_ = ::memfd_create("adore-fuzz", 0);
    FUZZ_CHECK(fd_ >= 0, "memfd_create: %s", std::strerror(errno));
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  int fd_ = -1;
  std::string path_;
};

// Consumes an input from the front: fixed-size fields, then the rest.
class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }
  uint8_t Byte() {  // 0 once exhausted
    if (size_ == 0) return 0;
    --size_;
    return *data_++;
  }
  uint16_t U16() { return static_cast<uint16_t>(Byte() | (Byte() << 8)); }
  std::string_view Rest() {
    std::string_view s(reinterpret_cast<const char*>(data_), size_);
    data_ += size_;
    size_ = 0;
    return s;
  }

 private:
  const uint8_t* data_;
  size_t size_;
};

// The SmolLM2 model fetched by tools/fetch-model.sh (or $ADORE_MODEL), when present.
inline std::string ModelPath() {
  if (const char* env = std::getenv("ADORE_MODEL")) return env;
  return std::string(ADORE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// The tokenizer keys of a GGUF file, read with GgufFile only (LoadModelWeights would also dequantize every
// tensor, which is slow under ASan and not what these targets test).
inline absl::StatusOr<TokenizerSpec> ReadGgufTokenizerSpec(const std::string& path) {
  auto f = GgufFile::Open(path);
  if (!f.ok()) return f.status();
  TokenizerSpec spec;
  if (auto v = f->GetString("tokenizer.ggml.model"); v.ok()) spec.model = *v;
  if (auto v = f->GetString("tokenizer.ggml.pre"); v.ok()) spec.pre = *v;
  if (auto v = f->GetString("tokenizer.chat_template"); v.ok()) spec.chat_template = *v;
  auto tokens = f->GetStringArray("tokenizer.ggml.tokens");
  if (!tokens.ok()) return tokens.status();
  spec.tokens = *tokens;
  if (auto merges = f->GetStringArray("tokenizer.ggml.merges"); merges.ok()) spec.merges = *merges;
  if (auto types = f->GetIntArray("tokenizer.ggml.token_type"); types.ok()) {
    spec.token_types.assign(types->begin(), types->end());
  }
  auto get_id = [&](const char* key, int32_t* out) {
    if (auto v = f->GetInt(key); v.ok()) *out = static_cast<int32_t>(*v);
  };
  get_id("tokenizer.ggml.bos_token_id", &spec.bos_id);
  get_id("tokenizer.ggml.eos_token_id", &spec.eos_id);
  get_id("tokenizer.ggml.padding_token_id", &spec.pad_id);
  get_id("tokenizer.ggml.unknown_token_id", &spec.unk_id);
  if (auto it = f->metadata().find("tokenizer.ggml.add_bos_token"); it != f->metadata().end()) {
    if (const bool* b = std::get_if<bool>(&it->second.v)) spec.add_bos = *b;
  }
  return spec;
}

// A ChatML template that ChatTemplate::Parse understands (SmolLM2's shape, with a default system turn).
inline constexpr const char* kChatMlTemplate =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

// A small byte-level BPE vocabulary with the features that matter to the tokenizer: most single bytes
// (a few left out, as SmolLM2 leaves out 21), multi-byte merges including across a UTF-8 character,
// control and user-defined added tokens (one a prefix of another), a duplicate token text, an empty token,
// and a control token outside the byte-level alphabet. `pre` picks the pre-tokenizer.
inline TokenizerSpec TinySpec(const std::string& pre) {
  const ByteLevelAlphabet& a = ByteLevelAlphabet::Get();
  TokenizerSpec spec;
  spec.model = "gpt2";
  spec.pre = pre;
  auto add = [&](const std::string& text, int32_t type) {
    spec.tokens.push_back(text);
    spec.token_types.push_back(type);
    return static_cast<int32_t>(spec.tokens.size() - 1);
  };
  spec.eos_id = add("<|endoftext|>", 3);
  spec.bos_id = add("<|im_start|>", 3);
  add("<|im_end|>", 3);
  add("<|im end|>", 3);  // a plain space: outside the alphabet, decoded as its text
  add("<tool>", 4);      // user-defined: matched even without parse_special
  add("<tool_call>", 4);
  add("", 1);
  for (int b = 0; b < 256; ++b) {
    if (b == 0x04 || b == 0x1D || b == 0xC0 || b == 0xFF) continue;  // bytes without a token vanish
    add(a.Encode(static_cast<uint8_t>(b)), 1);
  }
  const std::string sp = a.Encode(' ');
  // "é" is C3 A9: a merge inside one character.
  const std::string e1 = a.Encode(0xC3), e2 = a.Encode(0xA9), nl = a.Encode('\n');
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"a", "b"}, {"ab", "c"}, {sp, "a"}, {"d", "e"}, {sp, sp}, {sp + sp, sp + sp}, {e1, e2}, {"1", "2"},
      {"t", "h"}, {"th", "e"}, {sp, "the"}, {nl, nl}, {"i", "n"}, {"in", "g"}};
  for (const auto& [l, r] : merges) {
    add(l + r, 1);
    spec.merges.push_back(l + " " + r);
  }
  add("ab", 1);  // listed twice: the first id wins
  spec.chat_template = kChatMlTemplate;
  spec.add_bos = true;
  return spec;
}

// The vocabularies the tokenizer targets choose from with their first input byte (fixed numbering, so a
// saved input means the same thing everywhere; the SmolLM2 slot falls back to the tiny vocabulary where
// the model file is absent).
inline constexpr int kNumVocabularies = 4;
inline const Tokenizer& VocabularyFor(uint8_t choice) {
  struct All {
    std::unique_ptr<Tokenizer> t[kNumVocabularies];
  };
  static const All* all = [] {
    auto* a = new All();
    auto make = [](const TokenizerSpec& spec) {
      auto t = Tokenizer::Create(spec);
      FUZZ_CHECK(t.ok(), "fuzz vocabulary: %s", std::string(t.status().message()).c_str());
      return *std::move(t);
    };
    if (std::filesystem::exists(ModelPath())) {
      auto spec = ReadGgufTokenizerSpec(ModelPath());
      FUZZ_CHECK(spec.ok(), "%s: %s", ModelPath().c_str(), std::string(spec.status().message()).c_str());
      a->t[0] = make(*spec);
      std::fprintf(stderr, "fuzz: vocabulary 0 is SmolLM2's (%s)\n", ModelPath().c_str());
    } else {
      a->t[0] = make(TinySpec("smollm"));
      std::fprintf(stderr, "fuzz: %s is absent; vocabulary 0 is the tiny one\n", ModelPath().c_str());
    }
    a->t[1] = make(TinySpec("smollm"));
    a->t[2] = make(TinySpec("llama3"));
    a->t[3] = make(SyntheticTokenizer(300));  // every byte, no merges, no specials, "gpt2" pre-tokenizer
    return a;
  }();
  return *all->t[choice % kNumVocabularies];
}

// Reference UTF-8 decoding with replacement (Unicode 15 section 3.9, U+FFFD for each maximal subpart:
// what Python's bytes.decode("utf-8", "replace") gives), written independently of common/stream_decoder.cc
// as the fuzzers' oracle: decode one code point by its bit pattern, then reject overlongs, surrogates and
// values above U+10FFFF by value.
inline std::string ReferenceUtf8Lossy(std::string_view s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    int len;
    uint32_t cp;
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
      continue;
    }
    // Take continuation bytes while the prefix can still become a valid character: the maximal subpart.
    size_t k = 1;
    bool whole = true;
    for (; k < static_cast<size_t>(len); ++k) {
      if (i + k >= s.size()) {
        whole = false;
        break;
      }
      const unsigned char d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) {
        whole = false;
        break;
      }
      const uint32_t next = (cp << 6) | (d & 0x3F);
      // Smallest and largest code point any completion of these k+1 bytes can reach.
      const int left = len - 1 - static_cast<int>(k);
      const uint32_t lo = next << (6 * left), hi = (next << (6 * left)) | ((1u << (6 * left)) - 1);
      const uint32_t min_for_len = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
      const bool can_be_valid = hi >= min_for_len && lo <= 0x10FFFF && !(lo >= 0xD800 && hi <= 0xDFFF);
      if (!can_be_valid) {
        whole = false;
        break;
      }
      cp = next;
    }
    if (whole) {
      const bool valid = cp >= (len == 2 ? 0x80u : len == 3 ? 0x800u : 0x10000u) && cp <= 0x10FFFF &&
                         !(cp >= 0xD800 && cp <= 0xDFFF);
      if (valid) {
        out.append(s.data() + i, static_cast<size_t>(len));
        i += static_cast<size_t>(len);
        continue;
      }
    }
    // The lead alone is invalid when the first continuation already fails (C0, C1, E0 80, ...): one
    // replacement per byte then; otherwise one for the lead plus its valid continuations.
    out += "\xEF\xBF\xBD";
    i += k;
  }
  return out;
}

}  // namespace adore::fuzz
