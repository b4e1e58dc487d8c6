// safetensors reader and Hugging Face checkpoint loading: canonical names, q/k row permutation
// (checked against an explicit reshape/swap-axes and against RoPE attention scores), tokenizer.json.
#include "common/safetensors.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/gguf.h"
#include "common/model_weights.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/tiny_model_writers.h"
#include "tests/test_util.h"

namespace adore {
namespace {

using ::adore::testing::DataPath;
using ::adore::testing::FreshDir;
using ::adore::testing::TinyHf;
using ::adore::testing::WriteFile;
using ::adore::testing::WriteTinyHf;
using ::testing::HasSubstr;

TEST(SafetensorsFileTest, ReadsDirectoryAndConvertsDtypes) {
  const std::string dir = FreshDir("st_dtypes");
  std::vector<float> a = {1.0f, -2.5f, 0.125f, 3.0f, 1e-3f, -7.75f};
  std::vector<float> b = a, c = a;
  const std::string a_bytes = adore::testing::EncodeAs("F32", &a);
  const std::string b_bytes = adore::testing::EncodeAs("F16", &b);
  const std::string c_bytes = adore::testing::EncodeAs("BF16", &c);
  WriteFile(dir + "/x.safetensors", adore::testing::SafetensorsBytes({{"a", "F32", {2, 3}, a_bytes},
                                                                      {"b", "F16", {6}, b_bytes},
                                                                      {"c", "BF16", {3, 1, 2}, c_bytes}}));
  auto f = SafetensorsFile::Open(dir + "/x.safetensors");
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  ASSERT_NE(f->Find("b"), nullptr);
  EXPECT_EQ(f->Find("b")->dtype, "F16");
  EXPECT_EQ(f->Find("b")->end - f->Find("b")->begin, 12u);
  EXPECT_EQ(f->Find("zzz"), nullptr);
  for (const auto& [name, want, shape] :
       std::vector<std::tuple<std::string, std::vector<float>, std::vector<int64_t>>>{
           {"a", a, {2, 3}}, {"b", b, {6}}, {"c", c, {3, 1, 2}}}) {
    auto t = f->ReadTensor(name);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->shape, shape) << name;
    EXPECT_EQ(t->data, want) << name;
  }
  EXPECT_EQ(b[1], -2.5f);   // exactly representable in f16
  EXPECT_EQ(c[5], -7.75f);  // and in bf16
  auto missing = f->ReadTensor("nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("x.safetensors"));
}

// Found by fuzz/safetensors_fuzzer (fuzz/regressions/safetensors/zero_element_f32_tensor): a tensor with a zero
// dimension has no bytes, and converting it passed an empty vector's null data() to memcpy (undefined
// behaviour, reported by UBSan). Empty tensors of every supported dtype read back empty, and Dequantize takes
// zero elements with null buffers.
TEST(SafetensorsFileTest, ZeroElementTensorsReadBackEmpty) {
  const std::string dir = FreshDir("st_empty");
  std::vector<float> one = {1.5f};
  WriteFile(dir + "/e.safetensors",
            adore::testing::SafetensorsBytes({{"f32", "F32", {0, 4}, ""},
                                              {"f16", "F16", {3, 0}, ""},
                                              {"bf16", "BF16", {0}, ""},
                                              {"scalar", "F32", {}, adore::testing::EncodeAs("F32", &one)}}));
  auto f = SafetensorsFile::Open(dir + "/e.safetensors");
  ASSERT_TRUE(f.ok()) << f.status();
  for (const auto& [name, shape] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
           {"f32", {0, 4}}, {"f16", {3, 0}}, {"bf16", {0}}}) {
    auto t = f->ReadTensor(name);
    ASSERT_TRUE(t.ok()) << name << ": " << t.status();
    EXPECT_EQ(t->shape, shape) << name;
    EXPECT_TRUE(t->data.empty()) << name;
  }
  auto scalar = f->ReadTensor("scalar");
  ASSERT_TRUE(scalar.ok()) << scalar.status();
  EXPECT_EQ(scalar->data, std::vector<float>{1.5f});
  for (GgmlType type : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0}) {
    EXPECT_TRUE(Dequantize(type, nullptr, 0, nullptr).ok()) << GgmlTypeName(type);
  }
}

// The llama.cpp converter's permute(w, n_head): w.reshape(n_head, 2, rows/n_head/2, cols)
// .swapaxes(1, 2).reshape(w.shape), spelled out as index arithmetic on the 4-D view.
std::vector<float> ReshapeSwapAxesPermute(const std::vector<float>& w, int64_t rows, int64_t cols,
                                          int64_t n_head) {
  const int64_t half = rows / n_head / 2;
  std::vector<float> out(w.size());
  // Output viewed as [n_head, half, 2, cols]; element (h, b, a, c) comes from input (h, a, b, c).
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t b = 0; b < half; ++b)
      for (int64_t a = 0; a < 2; ++a)
        for (int64_t c = 0; c < cols; ++c)
          out[((h * half + b) * 2 + a) * cols + c] = w[((h * 2 + a) * half + b) * cols + c];
  return out;
}

std::vector<float> MatVec(const std::vector<float>& w, int64_t rows, int64_t cols,
                          const std::vector<float>& x) {
  std::vector<float> y(rows, 0.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) y[r] += w[r * cols + c] * x[c];
  return y;
}

// HF Llama RoPE: dimension i pairs with i + D/2 (rotate_half).
std::vector<double> RopeHalfSplit(const float* x, int d, int pos, double theta) {
  std::vector<double> out(d);
  for (int i = 0; i < d / 2; ++i) {
    const double ang = pos * std::pow(theta, -2.0 * i / d);
    out[i] = x[i] * std::cos(ang) - x[i + d / 2] * std::sin(ang);
    out[i + d / 2] = x[i + d / 2] * std::cos(ang) + x[i] * std::sin(ang);
  }
  return out;
}

// GGUF/llama.cpp Llama RoPE: dimensions 2i and 2i+1 form a pair.
std::vector<double> RopeInterleaved(const float* x, int d, int pos, double theta) {
  std::vector<double> out(d);
  for (int i = 0; i < d / 2; ++i) {
    const double ang = pos * std::pow(theta, -2.0 * i / d);
    out[2 * i] = x[2 * i] * std::cos(ang) - x[2 * i + 1] * std::sin(ang);
    out[2 * i + 1] = x[2 * i] * std::sin(ang) + x[2 * i + 1] * std::cos(ang);
  }
  return out;
}

double Dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

class HfCheckpointTest : public ::testing::Test {
 protected:
  ModelWeights Load(TinyHf* m, const std::string& name) {
    dir_ = FreshDir(name);
    WriteTinyHf(dir_, m);
    auto w = LoadModelWeights(dir_);
    EXPECT_TRUE(w.ok()) << w.status();
    return w.ok() ? *std::move(w) : ModelWeights{};
  }
  std::string dir_;
};

TEST_F(HfCheckpointTest, LoadsConfigAndMapsNames) {
  TinyHf m;
  ModelWeights w = Load(&m, "hf_names");
  const ModelConfig& c = w.config;
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.hidden_size, 16);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 4);
  EXPECT_EQ(c.intermediate_size, 24);
  EXPECT_EQ(c.vocab_size, 16);
  EXPECT_EQ(c.max_context, 128);
  EXPECT_FLOAT_EQ(c.rope_theta, 500.0f);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_FALSE(c.tie_embeddings);
  EXPECT_EQ(w.tensors.size(), 3u + 2u * 9u);
  const std::vector<std::pair<std::string, std::string>> same = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
      {"model.layers.1.self_attn.v_proj.weight", "blk.1.attn_v.weight"},
      {"model.layers.1.self_attn.o_proj.weight", "blk.1.attn_output.weight"},
      {"model.layers.0.mlp.gate_proj.weight", "blk.0.ffn_gate.weight"},
      {"model.layers.0.mlp.up_proj.weight", "blk.0.ffn_up.weight"},
      {"model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight"},
      {"model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"},
      {"model.layers.1.post_attention_layernorm.weight", "blk.1.ffn_norm.weight"}};
  for (const auto& [hf, canonical] : same) {
    auto t = w.Get(canonical);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ((*t)->shape, m.shapes.at(hf)) << canonical;
    EXPECT_EQ((*t)->data, m.values.at(hf)) << canonical;
    EXPECT_EQ(w.source_types.at(canonical), "F32");
  }
  EXPECT_EQ((*w.Get("blk.0.attn_k.weight"))->shape, (std::vector<int64_t>{8, 16}));
}

TEST_F(HfCheckpointTest, ModelInfoReadsNoTensors) {
  TinyHf m;
  ModelWeights w = Load(&m, "hf_info");
  auto info = LoadModelInfo(dir_);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->tensors.empty());
  EXPECT_FALSE(w.tensors.empty());
  EXPECT_EQ(info->config.hidden_size, w.config.hidden_size);
  EXPECT_EQ(info->config.num_layers, w.config.num_layers);
  EXPECT_EQ(info->config.vocab_size, w.config.vocab_size);
  EXPECT_EQ(info->tokenizer.tokens, w.tokenizer.tokens);
}

TEST_F(HfCheckpointTest, PermutesQkRowsLikeLlamaCpp) {
  TinyHf m;
  ModelWeights w = Load(&m, "hf_permute");
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".self_attn.";
    const std::string b = "blk." + std::to_string(layer) + ".";
    const auto& q = m.values.at(p + "q_proj.weight");
    const auto& k = m.values.at(p + "k_proj.weight");
    EXPECT_EQ((*w.Get(b + "attn_q.weight"))->data, ReshapeSwapAxesPermute(q, 16, 16, 4));
    EXPECT_EQ((*w.Get(b + "attn_k.weight"))->data, ReshapeSwapAxesPermute(k, 8, 16, 2));
    EXPECT_NE((*w.Get(b + "attn_q.weight"))->data, q);  // the permutation is not the identity
  }
  // One row spelled out: head 1, head_dim 4 -> rows 4..7 come from HF rows 4, 6, 5, 7.
  const auto& q = m.values.at("model.layers.0.self_attn.q_proj.weight");
  const float* got = (*w.Get("blk.0.attn_q.weight"))->ptr();
  for (int r = 0; r < 4; ++r) {
    const int src = 4 + (r % 2) * 2 + r / 2;
    EXPECT_EQ(got[(4 + r) * 16], q[src * 16]) << r;
  }
}

// What the permutation is for: interleaved RoPE on the permuted weights gives the same attention
// scores as HF's half-split RoPE on the original weights, for every (query head, its kv head) pair.
TEST_F(HfCheckpointTest, PermutedWeightsGiveHfRopeScores) {
  TinyHf m;
  ModelWeights w = Load(&m, "hf_rope");
  const int d = 4, heads = 4, kv_heads = 2, hidden = 16;
  const double theta = 500.0;
  const auto& q_hf = m.values.at("model.layers.1.self_attn.q_proj.weight");
  const auto& k_hf = m.values.at("model.layers.1.self_attn.k_proj.weight");
  const auto& q_gg = (*w.Get("blk.1.attn_q.weight"))->data;
  const auto& k_gg = (*w.Get("blk.1.attn_k.weight"))->data;
  const std::vector<float> u = adore::testing::PseudoRandom(hidden, 7),
                           v = adore::testing::PseudoRandom(hidden, 8);
  const auto qh = MatVec(q_hf, heads * d, hidden, u), kh = MatVec(k_hf, kv_heads * d, hidden, v);
  const auto qg = MatVec(q_gg, heads * d, hidden, u), kg = MatVec(k_gg, kv_heads * d, hidden, v);
  double max_unpermuted_diff = 0;
  for (int h = 0; h < heads; ++h) {
    const int g = h / (heads / kv_heads);
    for (auto [pq, pk] : std::vector<std::pair<int, int>>{{5, 2}, {17, 17}, {40, 3}}) {
      const double want =
          Dot(RopeHalfSplit(&qh[h * d], d, pq, theta), RopeHalfSplit(&kh[g * d], d, pk, theta));
      const double got =
          Dot(RopeInterleaved(&qg[h * d], d, pq, theta), RopeInterleaved(&kg[g * d], d, pk, theta));
      EXPECT_NEAR(got, want, 1e-5 * (1 + std::fabs(want))) << "head " << h << " pos " << pq << "," << pk;
      const double wrong =
          Dot(RopeInterleaved(&qh[h * d], d, pq, theta), RopeInterleaved(&kh[g * d], d, pk, theta));
      max_unpermuted_diff = std::max(max_unpermuted_diff, std::fabs(wrong - want));
    }
  }
  EXPECT_GT(max_unpermuted_diff, 1e-3);  // without the permutation the scores differ: the test has teeth
}

TEST_F(HfCheckpointTest, ShardedCheckpointMatchesSingleFile) {
  TinyHf single, sharded;
  sharded.sharded = true;
  ModelWeights a = Load(&single, "hf_single");
  ModelWeights b = Load(&sharded, "hf_sharded");
  ASSERT_TRUE(std::filesystem::exists(dir_ + "/model-00002-of-00002.safetensors"));
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, t] : a.tensors) {
    ASSERT_TRUE(b.tensors.count(name)) << name;
    EXPECT_EQ(b.tensors.at(name).data, t.data) << name;
  }
}

TEST_F(HfCheckpointTest, HalfPrecisionWeights) {
  for (const std::string dtype : {"F16", "BF16"}) {
    TinyHf m;
    m.dtype = dtype;
    ModelWeights w = Load(&m, "hf_" + dtype);
    EXPECT_EQ(w.source_types.at("blk.0.ffn_up.weight"), dtype);
    EXPECT_EQ((*w.Get("blk.0.ffn_up.weight"))->data, m.values.at("model.layers.0.mlp.up_proj.weight"));
    EXPECT_EQ((*w.Get("blk.1.attn_q.weight"))->data,
              ReshapeSwapAxesPermute(m.values.at("model.layers.1.self_attn.q_proj.weight"), 16, 16, 4));
  }
}

TEST_F(HfCheckpointTest, TiedEmbeddings) {
  TinyHf m;
  m.tied = true;
  ModelWeights w = Load(&m, "hf_tied");
  EXPECT_TRUE(w.config.tie_embeddings);
  EXPECT_EQ(w.tensors.count("output.weight"), 0u);
  EXPECT_EQ(w.tensors.size(), 2u + 2u * 9u);
}

TEST_F(HfCheckpointTest, TokenizerSpecFromTokenizerJson) {
  TinyHf m;
  m.list_merges = true;
  ModelWeights w = Load(&m, "hf_tok");
  const TokenizerSpec& t = w.tokenizer;
  EXPECT_EQ(t.model, "gpt2");
  EXPECT_EQ(t.pre, "smollm");
  EXPECT_EQ(t.tokens, adore::testing::TinyTokens());
  EXPECT_EQ(t.merges, (std::vector<std::string>{"a b", "ab c", "\xC4\xA0 a", "d e"}));
  ASSERT_EQ(t.token_types.size(), 16u);
  for (int id : {0, 1, 2, 14, 15}) EXPECT_EQ(t.token_types[id], 3) << id;
  for (int id : {3, 7, 13}) EXPECT_EQ(t.token_types[id], 1) << id;
  EXPECT_EQ(t.bos_id, 14);  // tokenizer_config.json: "<|im_start|>"
  EXPECT_EQ(t.eos_id, 15);  // {"content": "<|im_end|>"}
  EXPECT_EQ(t.unk_id, 0);   // model.unk_token
  EXPECT_EQ(t.pad_id, -1);
  EXPECT_FALSE(t.add_bos);
  EXPECT_THAT(t.chat_template, HasSubstr("for m in messages"));

  // Without tokenizer_config.json the ids come from config.json, and merges as "a b" strings work.
  TinyHf plain;
  dir_ = FreshDir("hf_tok_plain");
  WriteTinyHf(dir_, &plain);
  std::filesystem::remove(dir_ + "/tokenizer_config.json");
  auto w2 = LoadModelWeights(dir_);
  ASSERT_TRUE(w2.ok()) << w2.status();
  EXPECT_EQ(w2->tokenizer.bos_id, 1);
  EXPECT_EQ(w2->tokenizer.eos_id, 2);
  EXPECT_EQ(w2->tokenizer.merges, t.merges);
  EXPECT_TRUE(w2->tokenizer.chat_template.empty());
}

TEST_F(HfCheckpointTest, PreTokenizerAndNewStyleRopeConfig) {
  TinyHf m;
  dir_ = FreshDir("hf_pre");
  WriteTinyHf(dir_, &m);
  std::ifstream tin(dir_ + "/tokenizer.json");
  nlohmann::json tok = nlohmann::json::parse(tin);
  tok["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}};
  WriteFile(dir_ + "/tokenizer.json", tok.dump());
  // transformers >= 5 writes rope_theta inside rope_parameters.
  std::ifstream cin(dir_ + "/config.json");
  nlohmann::json cfg = nlohmann::json::parse(cin);
  cfg.erase("rope_theta");
  cfg["rope_parameters"] = {{"rope_theta", 12345.0}, {"rope_type", "default"}};
  cfg["head_dim"] = 4;
  WriteFile(dir_ + "/config.json", cfg.dump());
  auto w = LoadModelWeights(dir_);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->tokenizer.pre, "gpt2");
  EXPECT_FLOAT_EQ(w->config.rope_theta, 12345.0f);
}

// The checkpoint written by tools/make_tiny_hf_model.py (transformers' own save_pretrained).
TEST(CommittedTinyHfTest, LoadsAndPermutesLikeRawSafetensors) {
  const std::string dir = DataPath("tiny_hf");
  if (!std::filesystem::exists(dir + "/config.json")) {
    GTEST_SKIP() << dir << " not present; run tools/make_tiny_hf_model.py";
  }
  auto w = LoadModelWeights(dir);
  ASSERT_TRUE(w.ok()) << w.status();
  const ModelConfig& c = w->config;
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_EQ(c.vocab_size, 259);
  EXPECT_FALSE(c.tie_embeddings);
  EXPECT_EQ(w->tokenizer.tokens.size(), 259u);
  EXPECT_EQ(w->tokenizer.pre, "smollm");
  EXPECT_EQ(w->tokenizer.eos_id, 258);
  EXPECT_EQ(w->tokenizer.token_types[256], 3);
  auto st = SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  auto q = st->ReadTensor("model.layers.1.self_attn.q_proj.weight");
  auto k = st->ReadTensor("model.layers.1.self_attn.k_proj.weight");
  ASSERT_TRUE(q.ok() && k.ok());
  EXPECT_EQ((*w->Get("blk.1.attn_q.weight"))->data, ReshapeSwapAxesPermute(q->data, 64, 64, 4));
  EXPECT_EQ((*w->Get("blk.1.attn_k.weight"))->data, ReshapeSwapAxesPermute(k->data, 32, 64, 2));
  EXPECT_EQ((*w->Get("output.weight"))->data, st->ReadTensor("lm_head.weight")->data);

  std::ifstream in(dir + "/golden_logits.json");
  nlohmann::json g = nlohmann::json::parse(in, nullptr, false);
  ASSERT_FALSE(g.is_discarded());
  ASSERT_EQ(g["sequences"].size(), 2u);
  for (const auto& s : g["sequences"]) {
    EXPECT_EQ(s["logits"].size(), s["token_ids"].size());
    EXPECT_EQ(s["logits"][0].size(), 259u);
  }
}

}  // namespace
}  // namespace adore
