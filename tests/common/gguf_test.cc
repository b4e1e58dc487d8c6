// GGUF reader and dequantizers: the real SmolLM2 file against gguf-py golden data
// (tools/make_gguf_golden.py), and every dequantizer against blocks packed by hand in this file.
#include "common/gguf.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/model_weights.h"
#include "worker/memory_budget.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace adore {
namespace {

using ::adore::testing::DataPath;
using ::adore::testing::ModelAvailable;
using ::adore::testing::ModelPath;
using ::testing::HasSubstr;

nlohmann::json LoadGolden() {
  std::ifstream in(DataPath("gguf_golden.json"));
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str(), nullptr, false);
}

std::vector<uint8_t> FromHex(const std::string& hex) {
  std::vector<uint8_t> out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = static_cast<uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  return out;
}

// 1e-6 relative, measured against the larger of |want| and the block/row magnitude: the C++ code may
// fuse d*q + m into one FMA where numpy rounds twice, which only matters when the sum cancels.
void ExpectClose(float got, double want, double scale, const std::string& what) {
  const double tol = 1e-6 * std::max(std::fabs(want), scale) + 1e-30;
  EXPECT_NEAR(got, want, tol) << what;
}

// ------------------------------------------------------------------------------------------------
// The real model file.

class SmolLm2GgufTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!ModelAvailable()) return;
    auto f = GgufFile::Open(ModelPath());
    ASSERT_TRUE(f.ok()) << f.status();
    file_ = new GgufFile(*std::move(f));
    auto w = LoadModelWeights(ModelPath());
    ASSERT_TRUE(w.ok()) << w.status();
    weights_ = new ModelWeights(*std::move(w));
  }
  static void TearDownTestSuite() {
    delete file_;
    delete weights_;
    file_ = nullptr;
    weights_ = nullptr;
  }
  void SetUp() override {
    if (!ModelAvailable()) {
      GTEST_SKIP() << "model file not found at " << ModelPath() << "; run tools/fetch-model.sh";
    }
    ASSERT_NE(file_, nullptr);
    ASSERT_NE(weights_, nullptr);
  }
  static GgufFile* file_;
  static ModelWeights* weights_;
};
GgufFile* SmolLm2GgufTest::file_ = nullptr;
ModelWeights* SmolLm2GgufTest::weights_ = nullptr;

TEST_F(SmolLm2GgufTest, ReadsHeaderAndDirectory) {
  EXPECT_EQ(file_->version(), 3u);
  EXPECT_EQ(file_->tensors().size(), 272u);
  const GgufTensorInfo* embd = file_->FindTensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->type, GgmlType::kQ8_0);
  EXPECT_EQ(embd->ne, (std::vector<int64_t>{576, 49152}));
  EXPECT_EQ(embd->nbytes, 49152u * 576 / 32 * 34);
  EXPECT_EQ(file_->FindTensor("blk.0.attn_q.weight")->type, GgmlType::kQ4_1);
  EXPECT_EQ(file_->FindTensor("blk.0.attn_norm.weight")->type, GgmlType::kF32);
  EXPECT_EQ(file_->FindTensor("output.weight"), nullptr);
  EXPECT_EQ(*file_->GetString("general.architecture"), "llama");
}

TEST_F(SmolLm2GgufTest, TypedMetadataLookups) {
  EXPECT_EQ(*file_->GetInt("llama.block_count"), 30);
  EXPECT_FLOAT_EQ(static_cast<float>(*file_->GetFloat("llama.rope.freq_base")), 100000.0f);
  EXPECT_EQ(file_->GetInt("no.such.key").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file_->GetInt("no.such.key").status().message(), HasSubstr("no.such.key"));
  EXPECT_EQ(file_->GetInt("general.architecture").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(file_->GetString("llama.block_count").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(file_->GetStringArray("tokenizer.ggml.token_type").status().code(),
            absl::StatusCode::kInvalidArgument);
  auto types = file_->GetIntArray("tokenizer.ggml.token_type");
  ASSERT_TRUE(types.ok()) << types.status();
  EXPECT_EQ(types->size(), 49152u);
}

TEST_F(SmolLm2GgufTest, ConfigMatchesSmolLm2) {
  const ModelConfig& c = weights_->config;
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.num_heads, 9);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.max_context, 8192);
  EXPECT_FLOAT_EQ(c.rope_theta, 100000.0f);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_TRUE(c.tie_embeddings);
  EXPECT_TRUE(c.Validate().ok());
}

TEST_F(SmolLm2GgufTest, TokenizerSpec) {
  const TokenizerSpec& t = weights_->tokenizer;
  EXPECT_EQ(t.model, "gpt2");
  EXPECT_EQ(t.pre, "smollm");
  EXPECT_EQ(t.tokens.size(), 49152u);
  EXPECT_EQ(t.token_types.size(), 49152u);
  EXPECT_EQ(t.merges.size(), 48900u);
  EXPECT_EQ(t.bos_id, 1);
  EXPECT_EQ(t.eos_id, 2);
  EXPECT_EQ(t.unk_id, 0);
  EXPECT_EQ(t.pad_id, 2);
  EXPECT_FALSE(t.add_bos);
  EXPECT_EQ(t.tokens[1], "<|im_start|>");
  EXPECT_EQ(t.tokens[2], "<|im_end|>");
  EXPECT_EQ(t.token_types[1], 3);
  EXPECT_THAT(t.chat_template, HasSubstr("<|im_start|>"));
}

TEST_F(SmolLm2GgufTest, WeightsHaveCanonicalNamesAndShapes) {
  EXPECT_EQ(weights_->tensors.size(), 2u + 30u * 9u);
  auto embd = weights_->Get("token_embd.weight");
  ASSERT_TRUE(embd.ok());
  EXPECT_EQ((*embd)->shape, (std::vector<int64_t>{49152, 576}));
  EXPECT_EQ((*embd)->data.size(), 49152u * 576u);
  EXPECT_EQ((*weights_->Get("blk.29.ffn_down.weight"))->shape, (std::vector<int64_t>{576, 1536}));
  EXPECT_EQ((*weights_->Get("blk.0.attn_k.weight"))->shape, (std::vector<int64_t>{192, 576}));
  EXPECT_EQ(weights_->source_types.at("token_embd.weight"), "Q8_0");
  EXPECT_EQ(weights_->source_types.at("blk.3.ffn_up.weight"), "Q4_1");
  EXPECT_EQ(weights_->source_types.at("output_norm.weight"), "F32");
  EXPECT_EQ(weights_->Get("output.weight").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SmolLm2GgufTest, DequantizedRowsMatchGgufPy) {
  const nlohmann::json g = LoadGolden();
  ASSERT_FALSE(g.is_discarded()) << "bad " << DataPath("gguf_golden.json");
  for (const auto& [name, spec] : g["model"]["tensors"].items()) {
    auto t = file_->ReadTensor(name);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(GgmlTypeName(file_->FindTensor(name)->type), spec["type"].get<std::string>());
    const int64_t row_len = spec["ne"][0].get<int64_t>();
    ASSERT_EQ(t->dim(-1), row_len);
    for (const auto& row : spec["rows"]) {
      const int64_t r = row["row"].get<int64_t>();
      const float* x = t->ptr() + r * row_len;
      double sum = 0, abs_sum = 0, absmax = 0;
      for (int64_t i = 0; i < row_len; ++i) {
        sum += x[i];
        abs_sum += std::fabs(x[i]);
        absmax = std::max(absmax, static_cast<double>(std::fabs(x[i])));
      }
      const std::string what = name + " row " + std::to_string(r);
      const auto& values = row["values"];
      for (size_t i = 0; i < values.size(); ++i) {
        ExpectClose(x[i], values[i].get<double>(), absmax, what + " col " + std::to_string(i));
      }
      EXPECT_NEAR(abs_sum, row["abs_sum"].get<double>(), 1e-6 * row["abs_sum"].get<double>()) << what;
      EXPECT_NEAR(sum, row["sum"].get<double>(), 1e-6 * row["abs_sum"].get<double>()) << what;
    }
  }
}

TEST_F(SmolLm2GgufTest, WholeTensorSumsMatchGgufPy) {
  const nlohmann::json g = LoadGolden();
  for (const auto& [name, spec] : g["model"]["whole"].items()) {
    auto t = file_->ReadTensor(name);
    ASSERT_TRUE(t.ok()) << t.status();
    double sum = 0, abs_sum = 0, sq_sum = 0;
    for (float v : t->data) {
      sum += v;
      abs_sum += std::fabs(v);
      sq_sum += static_cast<double>(v) * v;
    }
    const double ref_abs = spec["abs_sum"].get<double>();
    EXPECT_NEAR(sum, spec["sum"].get<double>(), 1e-6 * ref_abs) << name;
    EXPECT_NEAR(abs_sum, ref_abs, 1e-6 * ref_abs) << name;
    EXPECT_NEAR(sq_sum, spec["sq_sum"].get<double>(), 1e-6 * spec["sq_sum"].get<double>()) << name;
  }
}

// What a coordinator with workers loads: LoadModelWeights' config and tokenizer, no tensor data; the
// float32 weight size the memory budget uses then comes from the config and equals the real tensors'.
TEST_F(SmolLm2GgufTest, ModelInfoIsTheConfigAndTokenizerWithoutTensors) {
  auto info = LoadModelInfo(ModelPath());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->tensors.empty());
  EXPECT_TRUE(info->source_types.empty());
  const ModelConfig &a = info->config, &b = weights_->config;
  EXPECT_EQ(a.architecture, b.architecture);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.max_context, b.max_context);
  EXPECT_EQ(a.tie_embeddings, b.tie_embeddings);
  EXPECT_EQ(info->tokenizer.tokens, weights_->tokenizer.tokens);
  EXPECT_EQ(info->tokenizer.merges, weights_->tokenizer.merges);
  EXPECT_EQ(info->tokenizer.eos_id, weights_->tokenizer.eos_id);
  EXPECT_EQ(info->tokenizer.chat_template, weights_->tokenizer.chat_template);
  EXPECT_EQ(WeightsFloatBytes(*info), WeightsFloatBytes(*weights_));
  EXPECT_EQ(LoadModelInfo("/nonexistent/model.gguf").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SmolLm2GgufTest, ReadTensorUnknownNameIsNotFound) {
  auto t = file_->ReadTensor("blk.99.attn_q.weight");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(t.status().message(), HasSubstr("blk.99.attn_q.weight"));
}

// ------------------------------------------------------------------------------------------------
// Dequantizers against gguf-py on random blocks (all supported types, incl. those not in the model).

TEST(DequantizeTest, MatchesGgufPyOnRandomBlocks) {
  const nlohmann::json g = LoadGolden();
  ASSERT_FALSE(g.is_discarded());
  const std::vector<std::string> types = {"F32",  "F16",  "BF16", "Q4_0", "Q4_1", "Q5_0",
                                          "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"};
  for (const std::string& name : types) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(g["blocks"].contains(name));
    const auto& b = g["blocks"][name];
    const GgmlType type = static_cast<GgmlType>(b["code"].get<uint32_t>());
    EXPECT_STREQ(GgmlTypeName(type), name.c_str());
    const int64_t n = b["n"].get<int64_t>();
    const std::vector<uint8_t> raw = FromHex(b["hex"].get<std::string>());
    ASSERT_EQ(*GgmlTypeBytes(type, n), raw.size());
    std::vector<float> out(n);
    ASSERT_TRUE(Dequantize(type, raw.data(), n, out.data()).ok());
    double absmax = 0;
    for (const auto& v : b["expected"]) absmax = std::max(absmax, std::fabs(v.get<double>()));
    for (int64_t i = 0; i < n; ++i) {
      ExpectClose(out[i], b["expected"][i].get<double>(), absmax, name + "[" + std::to_string(i) + "]");
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Dequantizers against blocks packed here from chosen quants and scales (layouts from the GGUF spec).

void PutHalf(std::vector<uint8_t>* b, size_t at, uint16_t h) {
  (*b)[at] = h & 0xFF;
  (*b)[at + 1] = h >> 8;
}
constexpr uint16_t kHalfQuarter = 0x3400;   // 0.25
constexpr uint16_t kHalfEighth = 0x3000;    // 0.125
constexpr uint16_t kHalfMinusOne = 0xBC00;  // -1.0

std::vector<float> DequantizeBlock(GgmlType t, const std::vector<uint8_t>& block, int64_t n) {
  std::vector<float> out(n);
  absl::Status s = Dequantize(t, block.data(), n, out.data());
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

TEST(DequantizeTest, F16AndBf16BitPatterns) {
  const std::vector<std::pair<uint16_t, float>> halves = {{0x3C00, 1.0f},
                                                          {0xC000, -2.0f},
                                                          {0x7BFF, 65504.0f},
                                                          {0x0400, std::ldexp(1.0f, -14)},
                                                          {0x0001, std::ldexp(1.0f, -24)},
                                                          {0x03FF, 1023 * std::ldexp(1.0f, -24)},
                                                          {0x8000, -0.0f},
                                                          {0x3555, 0.333251953125f},
                                                          {0x7C00, INFINITY},
                                                          {0xFC00, -INFINITY}};
  for (const auto& [bits, want] : halves) {
    std::vector<uint8_t> b(2);
    PutHalf(&b, 0, bits);
    EXPECT_EQ(DequantizeBlock(GgmlType::kF16, b, 1)[0], want) << std::hex << bits;
  }
  std::vector<uint8_t> nan(2);
  PutHalf(&nan, 0, 0x7E00);
  EXPECT_TRUE(std::isnan(DequantizeBlock(GgmlType::kF16, nan, 1)[0]));
  const std::vector<std::pair<uint16_t, float>> bf = {{0x3F80, 1.0f}, {0xC0A0, -5.0f}, {0x3E20, 0.15625f}};
  for (const auto& [bits, want] : bf) {
    std::vector<uint8_t> b(2);
    PutHalf(&b, 0, bits);
    EXPECT_EQ(DequantizeBlock(GgmlType::kBF16, b, 1)[0], want) << std::hex << bits;
  }
}

TEST(DequantizeTest, Q4_0AndQ4_1) {
  std::vector<uint8_t> b(18);
  PutHalf(&b, 0, kHalfQuarter);
  std::vector<int> q(32);
  for (int i = 0; i < 32; ++i) q[i] = (i * 7 + 3) % 16;
  // Element i < 16 is the low nibble of byte i, element i + 16 the high nibble.
  for (int i = 0; i < 16; ++i) b[2 + i] = static_cast<uint8_t>(q[i] | (q[i + 16] << 4));
  auto y = DequantizeBlock(GgmlType::kQ4_0, b, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], 0.25f * (q[i] - 8)) << i;

  std::vector<uint8_t> b1(20);
  PutHalf(&b1, 0, kHalfQuarter);
  PutHalf(&b1, 2, kHalfMinusOne);
  for (int i = 0; i < 16; ++i) b1[4 + i] = b[2 + i];
  y = DequantizeBlock(GgmlType::kQ4_1, b1, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], 0.25f * q[i] - 1.0f) << i;
}

TEST(DequantizeTest, Q5_0AndQ5_1) {
  std::vector<int> q(32);
  for (int i = 0; i < 32; ++i) q[i] = (i * 11 + 5) % 32;
  uint32_t qh = 0;
  std::vector<uint8_t> qs(16);
  for (int i = 0; i < 16; ++i) qs[i] = static_cast<uint8_t>((q[i] & 15) | ((q[i + 16] & 15) << 4));
  for (int i = 0; i < 32; ++i) qh |= static_cast<uint32_t>(q[i] >> 4) << i;  // bit 4 of element i
  std::vector<uint8_t> b(22);
  PutHalf(&b, 0, kHalfEighth);
  std::memcpy(&b[2], &qh, 4);
  std::memcpy(&b[6], qs.data(), 16);
  auto y = DequantizeBlock(GgmlType::kQ5_0, b, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], 0.125f * (q[i] - 16)) << i;

  std::vector<uint8_t> b1(24);
  PutHalf(&b1, 0, kHalfEighth);
  PutHalf(&b1, 2, kHalfMinusOne);
  std::memcpy(&b1[4], &qh, 4);
  std::memcpy(&b1[8], qs.data(), 16);
  y = DequantizeBlock(GgmlType::kQ5_1, b1, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], 0.125f * q[i] - 1.0f) << i;
}

TEST(DequantizeTest, Q8_0) {
  std::vector<uint8_t> b(34 * 2);
  PutHalf(&b, 0, kHalfQuarter);
  PutHalf(&b, 34, kHalfMinusOne);
  for (int i = 0; i < 32; ++i) {
    b[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(i * 8 - 128));
    b[36 + i] = static_cast<uint8_t>(static_cast<int8_t>(100 - i));
  }
  auto y = DequantizeBlock(GgmlType::kQ8_0, b, 64);
  for (int i = 0; i < 32; ++i) {
    EXPECT_EQ(y[i], 0.25f * (i * 8 - 128)) << i;
    EXPECT_EQ(y[32 + i], -1.0f * (100 - i)) << i;
  }
}

// Packs eight 6-bit (scale, min) pairs the way K-quants store them in 12 bytes.
std::vector<uint8_t> PackScalesK4(const int sc[8], const int mn[8]) {
  std::vector<uint8_t> s(12, 0);
  for (int j = 0; j < 4; ++j) {
    s[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    s[j + 4] = static_cast<uint8_t>(mn[j] | ((mn[j + 4] >> 4) << 6));
    s[j + 8] = static_cast<uint8_t>((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
  }
  return s;
}

TEST(DequantizeTest, Q4_KAndQ5_K) {
  const int sc[8] = {1, 63, 17, 32, 45, 2, 60, 33}, mn[8] = {0, 5, 63, 40, 31, 16, 1, 50};
  const std::vector<uint8_t> scales = PackScalesK4(sc, mn);
  std::vector<int> q(256);
  for (int i = 0; i < 256; ++i) q[i] = (i * 37 + 11) % 32;
  // Sub-block s (32 elements) of the 4-bit part lives in bytes 32*(s/2).., low nibble if s is even.
  std::vector<uint8_t> qs(128, 0), qh(32, 0);
  for (int s = 0; s < 8; ++s) {
    for (int l = 0; l < 32; ++l) {
      const int v = q[s * 32 + l];
      qs[(s / 2) * 32 + l] |= static_cast<uint8_t>((v & 15) << ((s % 2) * 4));
      qh[l] |= static_cast<uint8_t>((v >> 4) << s);  // fifth bit of sub-block s: bit s of qh[l]
    }
  }
  std::vector<uint8_t> b4(144);
  PutHalf(&b4, 0, kHalfQuarter);
  PutHalf(&b4, 2, kHalfEighth);
  std::copy(scales.begin(), scales.end(), b4.begin() + 4);
  std::copy(qs.begin(), qs.end(), b4.begin() + 16);
  auto y = DequantizeBlock(GgmlType::kQ4_K, b4, 256);
  for (int i = 0; i < 256; ++i) {
    const int s = i / 32;
    EXPECT_EQ(y[i], 0.25f * sc[s] * (q[i] & 15) - 0.125f * mn[s]) << i;
  }

  std::vector<uint8_t> b5(176);
  PutHalf(&b5, 0, kHalfQuarter);
  PutHalf(&b5, 2, kHalfEighth);
  std::copy(scales.begin(), scales.end(), b5.begin() + 4);
  std::copy(qh.begin(), qh.end(), b5.begin() + 16);
  std::copy(qs.begin(), qs.end(), b5.begin() + 48);
  y = DequantizeBlock(GgmlType::kQ5_K, b5, 256);
  for (int i = 0; i < 256; ++i) {
    const int s = i / 32;
    EXPECT_EQ(y[i], 0.25f * sc[s] * q[i] - 0.125f * mn[s]) << i;
  }
}

TEST(DequantizeTest, Q6_K) {
  std::vector<int> q(256);
  for (int i = 0; i < 256; ++i) q[i] = (i * 29 + 7) % 64;
  int8_t scales[16];
  for (int i = 0; i < 16; ++i) scales[i] = static_cast<int8_t>(i * 13 - 100);
  std::vector<uint8_t> b(210, 0);
  // Element i: half h = i / 128, quarter k = (i % 128) / 32, l = i % 32. Low 4 bits in
  // ql[64h + 32(k%2) + l] (low nibble for k < 2), high 2 bits at bit 2k of qh[32h + l];
  // scale scales[8h + 2k + l/16].
  for (int i = 0; i < 256; ++i) {
    const int h = i / 128, k = (i % 128) / 32, l = i % 32;
    b[64 * h + 32 * (k % 2) + l] |= static_cast<uint8_t>((q[i] & 15) << (k < 2 ? 0 : 4));
    b[128 + 32 * h + l] |= static_cast<uint8_t>((q[i] >> 4) << (2 * k));
  }
  std::memcpy(&b[192], scales, 16);
  PutHalf(&b, 208, kHalfEighth);
  auto y = DequantizeBlock(GgmlType::kQ6_K, b, 256);
  for (int i = 0; i < 256; ++i) {
    const int h = i / 128, k = (i % 128) / 32, l = i % 32;
    EXPECT_EQ(y[i], 0.125f * scales[8 * h + 2 * k + l / 16] * (q[i] - 32)) << i;
  }
}

TEST(DequantizeTest, BlockSizesAndErrors) {
  EXPECT_EQ(*GgmlTypeBytes(GgmlType::kF32, 10), 40u);
  EXPECT_EQ(*GgmlTypeBytes(GgmlType::kQ4_0, 64), 36u);
  EXPECT_EQ(*GgmlTypeBytes(GgmlType::kQ4_1, 32), 20u);
  EXPECT_EQ(*GgmlTypeBytes(GgmlType::kQ5_0, 32), 22u);
  EXPECT_EQ(*GgmlTypeBytes(GgmlType::kQ5_1, 32), 24u);
  EXPECT_EQ(*GgmlTypeBytes(GgmlType::kQ8_0, 32), 34u);
  EXPECT_EQ(*GgmlTypeBytes(GgmlType::kQ2_K, 256), 84u);
  EXPECT_EQ(*GgmlTypeBytes(GgmlType::kQ3_K, 256), 110u);
  EXPECT_EQ(*GgmlTypeBytes(GgmlType::kQ4_K, 256), 144u);
  EXPECT_EQ(*GgmlTypeBytes(GgmlType::kQ5_K, 256), 176u);
  EXPECT_EQ(*GgmlTypeBytes(GgmlType::kQ6_K, 512), 420u);
  EXPECT_FALSE(GgmlTypeBytes(GgmlType::kQ4_K, 100).ok());
  EXPECT_FALSE(GgmlTypeBytes(static_cast<GgmlType>(77), 32).ok());
  float out[256];
  uint8_t zeros[256] = {};
  EXPECT_EQ(Dequantize(GgmlType::kQ8_0, zeros, 31, out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Dequantize(GgmlType::kQ2_K, zeros, 256, out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Dequantize(static_cast<GgmlType>(77), zeros, 1, out).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adore
