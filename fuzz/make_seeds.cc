// Writes the fuzz targets' seed corpora: a few small valid inputs per target (fuzz/corpus/<name>/), made
// with the tests' model writers (tests/common/tiny_model_writers.h) and the fuzzers' vocabularies, so the
// committed seeds can be regenerated and reviewed instead of being opaque binaries:
//   build/fuzz/fuzz_make_seeds fuzz/corpus
// (built with the test suite; the request seeds need the gRPC build).
#include "gtest/gtest.h"  // tiny_model_writers.h's FreshDir refers to ::testing::TempDir

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "common/gguf.h"
#include "fuzz/fuzz_util.h"
#include "tests/common/tiny_model_writers.h"
#ifdef ADORE_FUZZ_WITH_PROTO
#include "adore/v1/adore.pb.h"
#endif

namespace {

namespace fs = std::filesystem;
using namespace adore::testing;  // NOLINT: the writers' helpers

std::string root;
int written = 0;

void Put(const std::string& target, const std::string& name, const std::string& bytes) {
  const fs::path dir = fs::path(root) / target;
  fs::create_directories(dir);
  WriteFile((dir / name).string(), bytes);
  ++written;
}

std::string Bytes(std::initializer_list<uint8_t> b) { return std::string(b.begin(), b.end()); }

// Deterministic bytes (the LCG of PseudoRandom) for quantized blocks.
std::string RandomBytes(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (char& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

GgufKv KvRaw(const std::string& k, uint32_t type, const std::string& payload) { return {k, type, payload}; }

void GgufSeeds() {
  Put("gguf", "tiny_llama.gguf", TinyLlamaGguf().Build());
  GgufBuilder v2 = TinyLlamaGguf();
  v2.version = 2;
  v2.alignment = 64;
  v2.SetKv(KvU32("general.alignment", 64));
  Put("gguf", "tiny_llama_v2_align64.gguf", v2.Build());

  // One tensor of every ggml type (random blocks of the right size) and metadata of every value type,
  // including nested arrays.
  GgufBuilder all;
  all.kvs = {KvStr("general.architecture", "llama"),
             KvRaw("u8", 0, Bytes({7})),
             KvRaw("i8", 1, Bytes({0xF9})),
             KvRaw("u16", 2, Bytes({1, 2})),
             KvRaw("i16", 3, Bytes({0xFE, 0xFF})),
             KvU32("u32", 123456),
             KvRaw("i32", 5, Bytes({0xFF, 0xFF, 0xFF, 0xFF})),
             KvF32("f32", 0.5f),
             KvBool("bool", true),
             KvStr("string", "h\xC3\xA9llo"),
             KvRaw("u64", 10, Bytes({1, 0, 0, 0, 0, 0, 0, 0x80})),
             KvRaw("i64", 11, Bytes({0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF})),
             KvRaw("f64", 12, Bytes({0, 0, 0, 0, 0, 0, 0xF0, 0x3F})),
             KvStrArray("strings", {"a", "", "c"}),
             KvI32Array("ints", {1, -2, 3})};
  std::string nested;  // array of 2 arrays of 2 u8
  PutU32(&nested, 9);
  PutU64(&nested, 2);
  for (int i = 0; i < 2; ++i) {
    PutU32(&nested, 0);
    PutU64(&nested, 2);
    nested += Bytes({1, 2});
  }
  all.kvs.push_back(KvRaw("nested", 9, nested));
  const std::vector<adore::GgmlType> types = {
      adore::GgmlType::kF32,  adore::GgmlType::kF16,  adore::GgmlType::kBF16, adore::GgmlType::kQ4_0,
      adore::GgmlType::kQ4_1, adore::GgmlType::kQ5_0, adore::GgmlType::kQ5_1, adore::GgmlType::kQ8_0,
      adore::GgmlType::kQ8_1, adore::GgmlType::kQ2_K, adore::GgmlType::kQ3_K, adore::GgmlType::kQ4_K,
      adore::GgmlType::kQ5_K, adore::GgmlType::kQ6_K, adore::GgmlType::kQ8_K};
  uint32_t seed = 1;
  for (adore::GgmlType t : types) {
    const uint64_t bytes = *adore::GgmlTypeBytes(t, 256);
    // Random bits: the parser and the dequantizers must take any.
    all.tensors.push_back({std::string("t.") + adore::GgmlTypeName(t), static_cast<uint32_t>(t), {256},
                           RandomBytes(bytes, seed++)});
  }
  all.tensors.push_back({"t.2d", 0, {4, 2, 2}, F32Bytes(PseudoRandom(16, 9))});
  Put("gguf", "all_types.gguf", all.Build());

  GgufBuilder empty;
  Put("gguf", "header_only.gguf", empty.Build());

  // An untied LM head (output.weight).
  TinyDims d;
  GgufBuilder untied = TinyLlamaGguf(d);
  untied.tensors.push_back({"output.weight", 0, {uint64_t(d.hidden), uint64_t(d.vocab)},
                            F32Bytes(PseudoRandom(size_t(d.hidden) * d.vocab, 77))});
  Put("gguf", "tiny_llama_untied.gguf", untied.Build());
}

void SafetensorsSeeds() {
  std::vector<float> v = PseudoRandom(12, 3);
  std::vector<float> h = v, b = v;
  const std::string f16 = EncodeAs("F16", &h), bf16 = EncodeAs("BF16", &b);
  Put("safetensors", "f32_f16_bf16.safetensors",
      SafetensorsBytes({{"a.f32", "F32", {3, 4}, F32Bytes(v)},
                        {"b.f16", "F16", {12}, f16},
                        {"c.bf16", "BF16", {2, 2, 3}, bf16},
                        {"d.scalar", "F32", {}, F32Bytes({1.5f})},
                        {"e.empty", "F32", {0, 4}, ""}}));
  Put("safetensors", "other_dtypes.safetensors",
      SafetensorsBytes({{"i32", "I32", {2}, RandomBytes(8, 1)},
                        {"u8", "U8", {3}, RandomBytes(3, 2)},
                        {"bool", "BOOL", {1}, Bytes({1})},
                        {"f64", "F64", {1}, RandomBytes(8, 3)},
                        {"f8", "F8_E4M3", {2}, RandomBytes(2, 4)}}));
  std::string header = "{}";
  std::string s;
  PutU64(&s, header.size());
  Put("safetensors", "empty.safetensors", s + header);
}

void TokenizerSeeds() {
  const std::vector<std::string> texts = {
      "Hello, world! How are you today?",
      "The quick brown fox jumps over 12345 lazy dogs.\n\n  Indented\ttab\r\n",
      "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
      "def f(x):\n    return x ** 2  # square\n",
      "h\xC3\xA9llo w\xC3\xB6rld \xE2\x80\x94 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\xA4\x96 caf\xC3\xA9",
      "<tool_call>{\"a\": 1}</tool_call> ab abc the thing   ",
  };
  int n = 0;
  for (int vocab = 0; vocab < adore::fuzz::kNumVocabularies; ++vocab) {
    for (size_t i = 0; i < texts.size(); ++i) {
      if (vocab > 0 && i % 2 == 1) continue;  // fewer seeds for the small vocabularies
      const uint8_t op = static_cast<uint8_t>(i % 2 == 0 ? 0x10 : 0x31);  // encode, flags vary
      Put("tokenizer", "encode_" + std::to_string(n++),
          std::string(1, char(vocab)) + std::string(1, char(op)) + texts[i]);
    }
    // Decode: the ids of one text (16-bit, shifted by 4 as the target reads them) and a few bad ones.
    const adore::Tokenizer& t = adore::fuzz::VocabularyFor(static_cast<uint8_t>(vocab));
    auto ids = t.Encode(texts[2], true, false);
    std::string dec = std::string(1, char(vocab)) + std::string(1, char(0x12));
    for (int32_t id : *ids) {
      const uint16_t v = static_cast<uint16_t>(id + 4);
      dec += Bytes({uint8_t(v & 0xFF), uint8_t(v >> 8)});
    }
    Put("tokenizer", "decode_" + std::to_string(n++), dec);
    // Chat: NUL-separated messages, the first byte of each picks the role (0 system, 1 user, 2 assistant).
    Put("tokenizer", "chat_" + std::to_string(n++),
        std::string(1, char(vocab)) + std::string(1, char(3)) + std::string("\x00You are terse.", 15) +
            std::string(1, '\0') + std::string("\x01Hi there", 9) + std::string(1, '\0') +
            std::string("\x02Hello!", 7));
  }
  // Chat templates (operation 0x43): the ChatML one of the tiny vocabularies and SmolLM2's own, then NUL
  // and a message's content.
  std::vector<std::string> templates = {adore::fuzz::kChatMlTemplate};
  if (fs::exists(adore::fuzz::ModelPath())) {
    auto spec = adore::fuzz::ReadGgufTokenizerSpec(adore::fuzz::ModelPath());
    if (spec.ok() && !spec->chat_template.empty()) templates.push_back(spec->chat_template);
  }
  for (const std::string& tmpl : templates) {
    Put("tokenizer", "template_" + std::to_string(n++),
        std::string(1, char(1)) + std::string(1, char(0x43)) + tmpl + std::string(1, '\0') + "Hello there");
  }
}

void StreamDecoderSeeds() {
  const std::string unicode =
      "caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\xA4\x96\xF0\x9F\x91\x8D done.<|im_end|>";
  int n = 0;
  for (int vocab = 0; vocab < 3; ++vocab) {
    const adore::Tokenizer& t = adore::fuzz::VocabularyFor(static_cast<uint8_t>(vocab));
    auto ids = t.Encode(unicode, true, false);
    for (uint8_t flags : {0, 1}) {
      std::string s = std::string(1, char(vocab)) + std::string(1, char(flags));
      for (int32_t id : *ids) {
        const uint16_t v = static_cast<uint16_t>(id + 4);
        s += Bytes({uint8_t(v & 0xFF), uint8_t(v >> 8)});
      }
      Put("stream_decoder", "ids_" + std::to_string(n++), s);
    }
  }
  // Byte-level vocabulary (3): one id per byte, so these are raw byte streams: valid multi-byte characters,
  // then invalid ones (a stray continuation, an overlong, a surrogate, a truncated sequence at the end).
  Put("stream_decoder", "bytes_valid", std::string(1, char(3)) + std::string(1, char(0)) + unicode);
  Put("stream_decoder", "bytes_invalid",
      std::string(1, char(3)) + std::string(1, char(0)) +
          "a\x80 b\xC0\xAF c\xED\xA0\x80 d\xF4\x90\x80\x80 e\xE2\x82 f\xF0\x9F\xA4");
}

// OpenAI-compatible request bodies: byte 0 picks the endpoint (0 completions, 1 chat completions).
void HttpRequestSeeds() {
  const std::vector<std::pair<int, std::string>> bodies = {
      {0, R"({"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.7,)"
          R"( "top_p": 0.9, "top_k": 40, "seed": 7, "stop": ["\n\n", "The end"], "stream": true,)"
          R"( "stream_options": {"include_usage": true}})"},
      {0, R"({"prompt": [1, 2, 3, 4], "max_tokens": 4, "policy": "window", "kv_budget": 64})"},
      {0, R"({"prompt": "x", "n": 2, "logprobs": 3, "echo": true, "frequency_penalty": 0.5})"},
      {1, R"({"model": "m", "messages": [{"role": "system", "content": "Be brief."},)"
          R"( {"role": "user", "content": "Hello \u00e9\ud83e\udd16"}], "max_completion_tokens": 8,)"
          R"( "policy": "adore", "kv_budget": 128, "rebuild": 4})"},
      {1, R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],)"
          R"( "policy": "heavy_hitter", "kv_budget": 16, "temperature": 0})"},
      {1, R"({"messages": [], "max_tokens": -1, "top_p": 1.5, "stop": 3})"},
  };
  int n = 0;
  for (const auto& [endpoint, body] : bodies) {
    Put("http_request", "body_" + std::to_string(n++), std::string(1, char(endpoint)) + body);
  }
}

#ifdef ADORE_FUZZ_WITH_PROTO
void RequestSeeds() {
  namespace v1 = ::adore::v1;
  auto put = [](const std::string& name, const v1::GenerateRequest& r) {
    Put("request", name, r.SerializeAsString());
  };
  v1::GenerateRequest text;
  text.set_text("Hello, how are you?");
  text.mutable_sampling()->set_max_tokens(16);
  text.mutable_sampling()->set_temperature(0.7f);
  text.mutable_sampling()->set_top_k(40);
  text.mutable_sampling()->set_top_p(0.9f);
  text.mutable_sampling()->set_seed(42);
  text.mutable_sampling()->add_stop("\n\n");
  text.mutable_release()->set_policy(v1::POLICY_FULL);
  text.set_request_id("seed-text");
  put("text_full", text);

  v1::GenerateRequest ids;
  for (int id : {1, 2, 3, 100, 2000}) ids.mutable_token_ids()->add_ids(id);
  ids.mutable_sampling()->set_max_tokens(8);
  ids.mutable_release()->set_policy(v1::POLICY_WINDOW);
  ids.mutable_release()->set_kv_budget(64);
  put("token_ids_window", ids);

  v1::GenerateRequest chat;
  auto* m = chat.mutable_chat()->add_messages();
  m->set_role("system");
  m->set_content("You are terse.");
  m = chat.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("What is the capital of France?");
  chat.mutable_release()->set_policy(v1::POLICY_HEAVY_HITTER);
  chat.mutable_release()->set_kv_budget(128);
  put("chat_heavy_hitter", chat);

  v1::GenerateRequest adore_req;
  adore_req.set_text("Summarize: the cat sat on the mat.");
  adore_req.mutable_release()->set_policy(v1::POLICY_ADORE);
  adore_req.mutable_release()->set_kv_budget(256);
  adore_req.mutable_release()->set_rebuild(4);
  adore_req.mutable_sampling()->set_temperature(0.0f);
  put("text_adore", adore_req);

  v1::GenerateRequest bad;
  bad.set_text("x");
  bad.mutable_sampling()->set_temperature(-1.0f);
  bad.mutable_sampling()->set_top_p(1.5f);
  bad.mutable_sampling()->set_top_k(-3);
  bad.mutable_sampling()->set_max_tokens(0);
  put("bad_sampling", bad);

  v1::GenerateRequest unknown;
  unknown.set_text("x");
  unknown.mutable_release()->set_policy(static_cast<v1::Policy>(7));
  unknown.mutable_release()->set_rebuild(1000);
  put("unknown_policy", unknown);
}
#endif

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR (e.g. fuzz/corpus)\n", argv[0]);
    return 2;
  }
  root = argv[1];
  GgufSeeds();
  SafetensorsSeeds();
  TokenizerSeeds();
  StreamDecoderSeeds();
  HttpRequestSeeds();
#ifdef ADORE_FUZZ_WITH_PROTO
  RequestSeeds();
#endif
  std::printf("wrote %d seeds under %s\n", written, root.c_str());
  return 0;
}
