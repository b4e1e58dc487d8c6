// Test-only writers for tiny model files: a GGUF builder whose every field can be corrupted, and a
// Hugging Face checkpoint directory (config.json, safetensors, tokenizer.json) of a tiny Llama.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace adore::testing {

inline void PutU32(std::string* s, uint32_t v) { s->append(reinterpret_cast<const char*>(&v), 4); }
inline void PutU64(std::string* s, uint64_t v) { s->append(reinterpret_cast<const char*>(&v), 8); }
inline void PutStr(std::string* s, const std::string& v) {
  PutU64(s, v.size());
  s->append(v);
}

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A fresh, empty directory under the test temp dir, private to this process (ctest runs test cases of
// one binary as concurrent processes, which must not share a directory).
inline std::string FreshDir(const std::string& name) {
  const std::filesystem::path p =
      std::filesystem::path(::testing::TempDir()) / (name + "." + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

// Deterministic pseudo-random floats in [-1, 1) (a 32-bit LCG) so no test depends on <random>.
inline std::vector<float> PseudoRandom(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    v[i] = static_cast<float>(x >> 8) / static_cast<float>(1u << 23) - 1.0f;
  }
  return v;
}

// f32 -> f16 bits, round-to-nearest-even; normal range only (what test data needs).
inline uint16_t FloatToHalf(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  const uint32_t sign = (b >> 16) & 0x8000u;
  int32_t exp = static_cast<int32_t>((b >> 23) & 0xFF) - 127 + 15;
  uint32_t mant = b & 0x7FFFFFu;
  if (exp <= 0) return static_cast<uint16_t>(sign);  // flush tiny values to zero
  uint32_t h = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(h);
}

// ---------------------------------------------------------------------------------------------------
// GGUF

struct GgufKv {
  std::string key;
  uint32_t type;
  std::string payload;  // the encoded value after the type code
};

inline GgufKv KvU32(const std::string& k, uint32_t v) {
  GgufKv kv{k, 4, ""};
  PutU32(&kv.payload, v);
  return kv;
}
inline GgufKv KvF32(const std::string& k, float v) {
  GgufKv kv{k, 6, ""};
  kv.payload.append(reinterpret_cast<const char*>(&v), 4);
  return kv;
}
inline GgufKv KvBool(const std::string& k, bool v) { return {k, 7, std::string(1, v ? 1 : 0)}; }
inline GgufKv KvStr(const std::string& k, const std::string& v) {
  GgufKv kv{k, 8, ""};
  PutStr(&kv.payload, v);
  return kv;
}
inline GgufKv KvStrArray(const std::string& k, const std::vector<std::string>& v) {
  GgufKv kv{k, 9, ""};
  PutU32(&kv.payload, 8);
  PutU64(&kv.payload, v.size());
  for (const auto& s : v) PutStr(&kv.payload, s);
  return kv;
}
inline GgufKv KvI32Array(const std::string& k, const std::vector<int32_t>& v) {
  GgufKv kv{k, 9, ""};
  PutU32(&kv.payload, 5);
  PutU64(&kv.payload, v.size());
  for (int32_t x : v) kv.payload.append(reinterpret_cast<const char*>(&x), 4);
  return kv;
}

struct GgufTensorSpec {
  std::string name;
  uint32_t type = 0;         // ggml type code
  std::vector<uint64_t> ne;  // GGUF order
  std::string data;          // raw bytes as stored
  std::optional<uint32_t> n_dims_override;
  std::optional<uint64_t> offset_override;  // relative to the data section
};

struct GgufBuilder {
  uint32_t magic = 0x46554747;
  uint32_t version = 3;
  uint64_t alignment = 32;
  std::optional<uint64_t> tensor_count_override, kv_count_override;
  std::vector<GgufKv> kvs;
  std::vector<std::string> raw_kvs;  // pre-encoded key-value pairs appended after kvs (for corruption)
  std::vector<GgufTensorSpec> tensors;

  GgufTensorSpec* Tensor(const std::string& name) {
    for (auto& t : tensors) {
      if (t.name == name) return &t;
    }
    return nullptr;
  }
  void RemoveTensor(const std::string& name) {
    std::erase_if(tensors, [&](const GgufTensorSpec& t) { return t.name == name; });
  }
  void RemoveKey(const std::string& key) {
    std::erase_if(kvs, [&](const GgufKv& kv) { return kv.key == key; });
  }
  void SetKv(GgufKv kv) {
    RemoveKey(kv.key);
    kvs.push_back(std::move(kv));
  }

  // Lays tensors out in order at aligned offsets; the file ends right after the last tensor's bytes so
  // that every strict prefix is truncated.
  std::string Build() const {
    std::string s;
    PutU32(&s, magic);
    PutU32(&s, version);
    PutU64(&s, tensor_count_override.value_or(tensors.size()));
    PutU64(&s, kv_count_override.value_or(kvs.size() + raw_kvs.size()));
    for (const auto& kv : kvs) {
      PutStr(&s, kv.key);
      PutU32(&s, kv.type);
      s += kv.payload;
    }
    for (const auto& raw : raw_kvs) s += raw;
    std::vector<uint64_t> offsets;
    uint64_t next = 0;
    for (const auto& t : tensors) {
      next = (next + alignment - 1) / alignment * alignment;
      offsets.push_back(t.offset_override.value_or(next));
      next += t.data.size();
    }
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& t = tensors[i];
      PutStr(&s, t.name);
      PutU32(&s, t.n_dims_override.value_or(static_cast<uint32_t>(t.ne.size())));
      for (uint64_t d : t.ne) PutU64(&s, d);
      PutU32(&s, t.type);
      PutU64(&s, offsets[i]);
    }
    if (tensors.empty()) return s;
    s.resize((s.size() + alignment - 1) / alignment * alignment, '\0');
    std::string data;
    for (size_t i = 0; i < tensors.size(); ++i) {
      // Corrupted offsets far outside any sane file get no data (the directory is what is tested).
      if (offsets[i] > (uint64_t{1} << 24)) continue;
      const uint64_t end = offsets[i] + tensors[i].data.size();
      if (end > data.size()) data.resize(end, '\0');
      data.replace(offsets[i], tensors[i].data.size(), tensors[i].data);
    }
    return s + data;
  }
};

inline std::string F32Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}
inline std::string F16Bytes(const std::vector<float>& v) {
  std::string s;
  for (float f : v) {
    const uint16_t h = FloatToHalf(f);
    s.append(reinterpret_cast<const char*>(&h), 2);
  }
  return s;
}
// Q8_0: per 32 values, f16 scale = absmax / 127 and int8 quants.
inline std::string Q8_0Bytes(const std::vector<float>& v) {
  std::string s;
  for (size_t b = 0; b < v.size(); b += 32) {
    float amax = 0;
    for (size_t i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(v[b + i]));
    const float d = amax / 127.0f;
    const uint16_t h = FloatToHalf(d);
    s.append(reinterpret_cast<const char*>(&h), 2);
    for (size_t i = 0; i < 32; ++i) {
      s.push_back(static_cast<char>(d == 0 ? 0 : static_cast<int8_t>(std::lround(v[b + i] / d))));
    }
  }
  return s;
}

struct TinyDims {
  int layers = 2, hidden = 8, heads = 2, kv_heads = 1, ffn = 32, vocab = 16;
};

inline std::vector<std::string> TinyTokens() {
  return {"<unk>",
          "<s>",
          "</s>",
          "a",
          "b",
          "c",
          "ab",
          "abc",
          "\xC4\xA0",
          "\xC4\xA0"
          "a",
          "d",
          "e",
          "de",
          "f",
          "<|im_start|>",
          "<|im_end|>"};
}

// A valid tiny llama GGUF: F16 token embedding, F32 norms and projections, Q8_0 ffn_down, tied LM head.
inline GgufBuilder TinyLlamaGguf(const TinyDims& d = {}) {
  GgufBuilder b;
  const int head_dim = d.hidden / d.heads;
  b.kvs = {KvStr("general.architecture", "llama"),
           KvStr("general.name", "tiny"),
           KvU32("llama.block_count", d.layers),
           KvU32("llama.context_length", 64),
           KvU32("llama.embedding_length", d.hidden),
           KvU32("llama.feed_forward_length", d.ffn),
           KvU32("llama.attention.head_count", d.heads),
           KvU32("llama.attention.head_count_kv", d.kv_heads),
           KvF32("llama.rope.freq_base", 10000.0f),
           KvF32("llama.attention.layer_norm_rms_epsilon", 1e-5f),
           KvU32("llama.vocab_size", d.vocab),
           KvU32("llama.rope.dimension_count", head_dim),
           KvStr("tokenizer.ggml.model", "gpt2"),
           KvStr("tokenizer.ggml.pre", "smollm"),
           KvStrArray("tokenizer.ggml.tokens", TinyTokens()),
           KvI32Array("tokenizer.ggml.token_type", {2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 3}),
           KvStrArray("tokenizer.ggml.merges", {"a b", "ab c", "\xC4\xA0 a", "d e"}),
           KvU32("tokenizer.ggml.bos_token_id", 1),
           KvU32("tokenizer.ggml.eos_token_id", 2),
           KvU32("tokenizer.ggml.unknown_token_id", 0),
           KvU32("tokenizer.ggml.padding_token_id", 2),
           KvBool("tokenizer.ggml.add_bos_token", false),
           KvStr("tokenizer.chat_template", "{{ messages }}")};
  uint32_t seed = 1;
  auto f32 = [&](const std::string& name, std::vector<uint64_t> ne) {
    size_t n = 1;
    for (auto x : ne) n *= x;
    b.tensors.push_back({name, 0, ne, F32Bytes(PseudoRandom(n, seed++))});
  };
  const uint64_t h = d.hidden, q = d.heads * head_dim, kv = d.kv_heads * head_dim, ff = d.ffn;
  b.tensors.push_back(
      {"token_embd.weight", 1, {h, uint64_t(d.vocab)}, F16Bytes(PseudoRandom(h * d.vocab, seed++))});
  f32("output_norm.weight", {h});
  for (int i = 0; i < d.layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    f32(p + "attn_norm.weight", {h});
    f32(p + "attn_q.weight", {h, q});
    f32(p + "attn_k.weight", {h, kv});
    f32(p + "attn_v.weight", {h, kv});
    f32(p + "attn_output.weight", {q, h});
    f32(p + "ffn_norm.weight", {h});
    f32(p + "ffn_gate.weight", {h, ff});
    f32(p + "ffn_up.weight", {h, ff});
    b.tensors.push_back({p + "ffn_down.weight", 8, {ff, h}, Q8_0Bytes(PseudoRandom(ff * h, seed++))});
  }
  return b;
}

// ---------------------------------------------------------------------------------------------------
// Hugging Face checkpoint

struct StTensor {
  std::string name;
  std::string dtype;  // F32, F16, BF16 (or anything, for corruption tests)
  std::vector<int64_t> shape;
  std::string data;
};

// safetensors bytes: u64 header length, JSON header, packed data in the given order.
inline std::string SafetensorsBytes(const std::vector<StTensor>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  std::string data;
  for (const auto& t : tensors) {
    header[t.name] = {
        {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.data.size()}}};
    offset += t.data.size();
    data += t.data;
  }
  header["__metadata__"] = {{"format", "pt"}};
  std::string h = header.dump();
  std::string s;
  PutU64(&s, h.size());
  return s + h + data;
}

struct TinyHf {
  int layers = 2, hidden = 16, heads = 4, kv_heads = 2, ffn = 24, vocab = 16;
  bool tied = false;
  std::string dtype = "F32";  // dtype of the linear weights
  bool sharded = false;
  bool list_merges = false;  // ["a", "b"] merges instead of "a b"
  // HF name -> the f32 values written (after f16/bf16 rounding), for comparisons.
  std::map<std::string, std::vector<float>> values;
  std::map<std::string, std::vector<int64_t>> shapes;
};

inline std::string EncodeAs(const std::string& dtype, std::vector<float>* v) {
  std::string s;
  for (float& f : *v) {
    if (dtype == "F32") {
      s.append(reinterpret_cast<const char*>(&f), 4);
    } else if (dtype == "F16") {
      const uint16_t h = FloatToHalf(f);
      s.append(reinterpret_cast<const char*>(&h), 2);
      // Keep what the reader will see: decode the half back (normal range only).
      const uint32_t bits =
          ((h & 0x8000u) << 16) | ((((h >> 10) & 0x1Fu) + 112) << 23) | ((h & 0x3FFu) << 13);
      if ((h & 0x7FFFu) == 0)
        f = 0.0f;
      else
        std::memcpy(&f, &bits, 4);
    } else {  // BF16 by truncation
      uint32_t b;
      std::memcpy(&b, &f, 4);
      const uint16_t h = static_cast<uint16_t>(b >> 16);
      s.append(reinterpret_cast<const char*>(&h), 2);
      b = static_cast<uint32_t>(h) << 16;
      std::memcpy(&f, &b, 4);
    }
  }
  return s;
}

// Writes config.json, model.safetensors (or two shards + index), tokenizer.json, tokenizer_config.json.
inline void WriteTinyHf(const std::string& dir, TinyHf* m) {
  const int head_dim = m->hidden / m->heads;
  nlohmann::json config = {{"architectures", {"LlamaForCausalLM"}},
                           {"model_type", "llama"},
                           {"hidden_size", m->hidden},
                           {"num_hidden_layers", m->layers},
                           {"num_attention_heads", m->heads},
                           {"num_key_value_heads", m->kv_heads},
                           {"intermediate_size", m->ffn},
                           {"max_position_embeddings", 128},
                           {"rope_theta", 500.0},
                           {"rms_norm_eps", 1e-6},
                           {"vocab_size", m->vocab},
                           {"tie_word_embeddings", m->tied},
                           {"bos_token_id", 1},
                           {"eos_token_id", 2},
                           {"torch_dtype", "float32"}};
  WriteFile(dir + "/config.json", config.dump(2));

  std::vector<StTensor> tensors;
  uint32_t seed = 100;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, const std::string& dtype) {
    int64_t n = 1;
    for (auto x : shape) n *= x;
    std::vector<float> v = PseudoRandom(n, seed++);
    std::string bytes = EncodeAs(dtype, &v);
    m->values[name] = v;
    m->shapes[name] = shape;
    tensors.push_back({name, dtype, shape, bytes});
  };
  const int64_t h = m->hidden, q = m->heads * head_dim, kv = m->kv_heads * head_dim;
  add("model.embed_tokens.weight", {m->vocab, h}, m->dtype);
  for (int i = 0; i < m->layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "input_layernorm.weight", {h}, "F32");
    add(p + "self_attn.q_proj.weight", {q, h}, m->dtype);
    add(p + "self_attn.k_proj.weight", {kv, h}, m->dtype);
    add(p + "self_attn.v_proj.weight", {kv, h}, m->dtype);
    add(p + "self_attn.o_proj.weight", {h, q}, m->dtype);
    add(p + "post_attention_layernorm.weight", {h}, "F32");
    add(p + "mlp.gate_proj.weight", {m->ffn, h}, m->dtype);
    add(p + "mlp.up_proj.weight", {m->ffn, h}, m->dtype);
    add(p + "mlp.down_proj.weight", {h, m->ffn}, m->dtype);
  }
  add("model.norm.weight", {h}, "F32");
  if (!m->tied) add("lm_head.weight", {m->vocab, h}, m->dtype);

  if (!m->sharded) {
    WriteFile(dir + "/model.safetensors", SafetensorsBytes(tensors));
  } else {
    const size_t half = tensors.size() / 2;
    std::vector<StTensor> a(tensors.begin(), tensors.begin() + half),
        b(tensors.begin() + half, tensors.end());
    WriteFile(dir + "/model-00001-of-00002.safetensors", SafetensorsBytes(a));
    WriteFile(dir + "/model-00002-of-00002.safetensors", SafetensorsBytes(b));
    nlohmann::json map = nlohmann::json::object();
    for (const auto& t : a) map[t.name] = "model-00001-of-00002.safetensors";
    for (const auto& t : b) map[t.name] = "model-00002-of-00002.safetensors";
    WriteFile(dir + "/model.safetensors.index.json",
              nlohmann::json({{"metadata", {{"total_size", 0}}}, {"weight_map", map}}).dump(2));
  }

  // Vocab: 12 normal tokens (ids 0..11 minus specials), specials as added tokens at 0-2 and 14-15.
  nlohmann::json vocab = nlohmann::json::object();
  const std::vector<std::string> toks = TinyTokens();
  for (int i = 0; i < 14; ++i) vocab[toks[i]] = i;
  nlohmann::json merges = nlohmann::json::array();
  for (auto [l, r] : std::vector<std::pair<std::string, std::string>>{
           {"a", "b"}, {"ab", "c"}, {"\xC4\xA0", "a"}, {"d", "e"}}) {
    if (m->list_merges)
      merges.push_back({l, r});
    else
      merges.push_back(l + " " + r);
  }
  nlohmann::json added = nlohmann::json::array();
  for (int id : {0, 1, 2, 14, 15}) {
    added.push_back({{"id", id}, {"content", toks[id]}, {"special", true}, {"normalized", false}});
  }
  nlohmann::json tokenizer = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Digits"}, {"individual_digits", true}},
          {{"type", "ByteLevel"},
           {"add_prefix_space", false},
           {"trim_offsets", true},
           {"use_regex", true}}}}}},
      {"model", {{"type", "BPE"}, {"unk_token", "<unk>"}, {"vocab", vocab}, {"merges", merges}}}};
  WriteFile(dir + "/tokenizer.json", tokenizer.dump());
  nlohmann::json tcfg = {{"bos_token", "<|im_start|>"},
                         {"eos_token", {{"content", "<|im_end|>"}, {"special", true}}},
                         {"add_bos_token", false},
                         {"chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}"}};
  WriteFile(dir + "/tokenizer_config.json", tcfg.dump(2));
}

}  // namespace adore::testing
