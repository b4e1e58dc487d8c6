// Malformed model files: every truncation and corruption of a tiny GGUF / HF checkpoint must give an
// error status naming the file and the offending field or tensor, never a crash.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "common/gguf.h"
#include "common/model_weights.h"
#include "common/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/tiny_model_writers.h"

namespace adore {
namespace {

using ::adore::testing::FreshDir;
using ::adore::testing::GgufBuilder;
using ::adore::testing::KvStr;
using ::adore::testing::KvU32;
using ::adore::testing::PutStr;
using ::adore::testing::PutU32;
using ::adore::testing::PutU64;
using ::adore::testing::TinyHf;
using ::adore::testing::TinyLlamaGguf;
using ::adore::testing::WriteFile;
using ::adore::testing::WriteTinyHf;
using ::testing::AllOf;
using ::testing::HasSubstr;

class MalformedGgufTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = FreshDir("malformed_gguf"); }

  // Writes `b` as <name> and loads it; returns the status (OK or the error).
  absl::Status Load(const GgufBuilder& b, const std::string& name = "tiny.gguf") {
    path_ = dir_ + "/" + name;
    WriteFile(path_, b.Build());
    auto w = LoadModelWeights(path_);
    return w.status();
  }

  std::string dir_, path_;
};

TEST_F(MalformedGgufTest, ValidTinyModelLoads) {
  GgufBuilder b = TinyLlamaGguf();
  path_ = dir_ + "/tiny.gguf";
  WriteFile(path_, b.Build());
  auto w = LoadModelWeights(path_);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->config.num_layers, 2);
  EXPECT_EQ(w->config.hidden_size, 8);
  EXPECT_EQ(w->config.head_dim, 4);
  EXPECT_EQ(w->config.vocab_size, 16);
  EXPECT_TRUE(w->config.tie_embeddings);
  EXPECT_EQ(w->tensors.size(), 2u + 2u * 9u);
  EXPECT_EQ(w->tokenizer.tokens.size(), 16u);
  EXPECT_EQ(w->tokenizer.merges.size(), 4u);
  EXPECT_EQ(w->tokenizer.eos_id, 2);
  EXPECT_EQ(w->source_types.at("token_embd.weight"), "F16");
  EXPECT_EQ(w->source_types.at("blk.1.ffn_down.weight"), "Q8_0");
  EXPECT_EQ((*w->Get("blk.1.ffn_down.weight"))->shape, (std::vector<int64_t>{8, 32}));
}

TEST_F(MalformedGgufTest, EveryTruncationFailsWithFileName) {
  const std::string full = TinyLlamaGguf().Build();
  const std::string path = dir_ + "/cut_model.gguf";
  // Every cut through the header, metadata and directory; then a stride through the tensor data
  // (where every cut takes the same path) and the last bytes.
  std::vector<size_t> cuts;
  for (size_t cut = 0; cut < full.size(); cut += (cut < 3072 ? 1 : 29)) cuts.push_back(cut);
  for (size_t k = 1; k <= 8; ++k) cuts.push_back(full.size() - k);
  for (size_t cut : cuts) {
    WriteFile(path, full.substr(0, cut));
    auto w = LoadModelWeights(path);
    ASSERT_FALSE(w.ok()) << "prefix of " << cut << " of " << full.size() << " bytes loaded";
    ASSERT_THAT(w.status().message(), HasSubstr("cut_model.gguf")) << "cut " << cut;
  }
  // The untruncated file still loads, so the failures above are the cuts.
  WriteFile(path, full);
  EXPECT_TRUE(LoadModelWeights(path).ok());
}

TEST_F(MalformedGgufTest, TruncationMidDataNamesTensorAndSizes) {
  const std::string full = TinyLlamaGguf().Build();
  const std::string path = dir_ + "/short.gguf";
  WriteFile(path, full.substr(0, full.size() - 5));
  auto f = GgufFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(f.status().message(),
              AllOf(HasSubstr("short.gguf"), HasSubstr("blk.1.ffn_down.weight"),
                    HasSubstr("runs past end of file"), HasSubstr(std::to_string(full.size() - 5))));
}

TEST_F(MalformedGgufTest, BadMagic) {
  GgufBuilder b = TinyLlamaGguf();
  b.magic = 0x58554747;  // "GGUX"
  absl::Status s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("magic")));
}

TEST_F(MalformedGgufTest, UnsupportedVersion) {
  for (uint32_t v : {1u, 4u, 0xFFFFFFFFu}) {
    GgufBuilder b = TinyLlamaGguf();
    b.version = v;
    absl::Status s = Load(b);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("version"))) << v;
  }
}

TEST_F(MalformedGgufTest, TensorShapeDisagreesWithConfig) {
  GgufBuilder b = TinyLlamaGguf();
  auto* t = b.Tensor("blk.0.attn_q.weight");
  t->ne = {8, 6};
  t->data.resize(8 * 6 * 4);
  absl::Status s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("blk.0.attn_q.weight"),
                                 HasSubstr("[6, 8]"), HasSubstr("[8, 8]")));
}

TEST_F(MalformedGgufTest, UnknownTensorTypeCode) {
  GgufBuilder b = TinyLlamaGguf();
  b.Tensor("blk.1.attn_v.weight")->type = 99;
  absl::Status s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("blk.1.attn_v.weight"), HasSubstr("99")));
}

TEST_F(MalformedGgufTest, RowNotWholeBlocks) {
  GgufBuilder b = TinyLlamaGguf();
  auto* t = b.Tensor("blk.0.ffn_gate.weight");  // ne [8, 32]: 8-element rows cannot be Q8_0
  t->type = 8;
  t->data.resize(34 * 8);
  absl::Status s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("blk.0.ffn_gate.weight")));
}

TEST_F(MalformedGgufTest, HugeKeyLength) {
  GgufBuilder b = TinyLlamaGguf();
  std::string raw;
  PutU64(&raw, uint64_t{1} << 62);  // key length, then nothing
  b.raw_kvs.push_back(raw);
  absl::Status s = Load(b);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("length")));
}

TEST_F(MalformedGgufTest, HugeStringValueLength) {
  GgufBuilder b = TinyLlamaGguf();
  std::string raw;
  PutStr(&raw, "general.description");
  PutU32(&raw, 8);
  PutU64(&raw, ~uint64_t{0});
  b.raw_kvs.push_back(raw);
  absl::Status s = Load(b);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("general.description")));
}

TEST_F(MalformedGgufTest, HugeArrayCounts) {
  for (uint32_t elem_type : {0u, 8u, 9u, 12u}) {
    GgufBuilder b = TinyLlamaGguf();
    std::string raw;
    PutStr(&raw, "x.big_array");
    PutU32(&raw, 9);
    PutU32(&raw, elem_type);
    PutU64(&raw, uint64_t{1} << 60);
    b.raw_kvs.push_back(raw);
    absl::Status s = Load(b);
    EXPECT_FALSE(s.ok()) << elem_type;
    EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("x.big_array"))) << elem_type;
  }
}

TEST_F(MalformedGgufTest, DeeplyNestedArrays) {
  GgufBuilder b = TinyLlamaGguf();
  std::string raw;
  PutStr(&raw, "x.nested");
  PutU32(&raw, 9);
  for (int i = 0; i < 100; ++i) {
    PutU32(&raw, 9);
    PutU64(&raw, 1);
  }
  b.raw_kvs.push_back(raw);
  absl::Status s = Load(b);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("x.nested")));
}

TEST_F(MalformedGgufTest, UnknownValueType) {
  GgufBuilder b = TinyLlamaGguf();
  b.kvs.push_back({"x.weird", 13, "abcd"});
  absl::Status s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("x.weird"), HasSubstr("13")));
}

TEST_F(MalformedGgufTest, HugeCountsInHeader) {
  GgufBuilder b = TinyLlamaGguf();
  b.tensor_count_override = uint64_t{1} << 61;
  absl::Status s = Load(b);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("tensor_count")));
  b = TinyLlamaGguf();
  b.kv_count_override = ~uint64_t{0};
  s = Load(b);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("kv_count")));
}

TEST_F(MalformedGgufTest, HugeNDims) {
  GgufBuilder b = TinyLlamaGguf();
  b.Tensor("blk.0.attn_k.weight")->n_dims_override = 1000;
  absl::Status s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("tiny.gguf"), HasSubstr("blk.0.attn_k.weight"), HasSubstr("n_dims")));
}

TEST_F(MalformedGgufTest, DimensionProductOverflows) {
  GgufBuilder b = TinyLlamaGguf();
  b.Tensor("blk.0.attn_k.weight")->ne = {uint64_t{1} << 40, uint64_t{1} << 40};
  absl::Status s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("blk.0.attn_k.weight")));
  b = TinyLlamaGguf();
  b.Tensor("blk.0.attn_k.weight")->ne = {8, 0};
  s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("blk.0.attn_k.weight"));
}

TEST_F(MalformedGgufTest, TensorDataPastEndOfFile) {
  GgufBuilder b = TinyLlamaGguf();
  b.Tensor("blk.0.attn_v.weight")->offset_override = uint64_t{1} << 40;
  absl::Status s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("blk.0.attn_v.weight"),
                                 HasSubstr("runs past end of file")));
  // An offset that makes offset + nbytes wrap around 2^64 must not slip through.
  b = TinyLlamaGguf();
  b.Tensor("blk.0.attn_v.weight")->offset_override = ~uint64_t{0} - 31;
  s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("blk.0.attn_v.weight"));
}

TEST_F(MalformedGgufTest, OverlappingOffsets) {
  GgufBuilder b = TinyLlamaGguf();
  b.Tensor("blk.0.attn_k.weight")->offset_override = 0;  // on top of token_embd.weight
  absl::Status s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("blk.0.attn_k.weight"),
                                 HasSubstr("token_embd.weight"), HasSubstr("overlaps")));
}

TEST_F(MalformedGgufTest, MisalignedOffset) {
  GgufBuilder b = TinyLlamaGguf();
  b.Tensor("output_norm.weight")->offset_override = 260;
  absl::Status s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("tiny.gguf"), HasSubstr("output_norm.weight"), HasSubstr("alignment")));
}

TEST_F(MalformedGgufTest, BadAlignmentKey) {
  GgufBuilder b = TinyLlamaGguf();
  b.SetKv(KvU32("general.alignment", 24));
  absl::Status s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("general.alignment")));
}

TEST_F(MalformedGgufTest, MissingRequiredMetadata) {
  for (const char* key :
       {"general.architecture", "llama.block_count", "llama.embedding_length", "llama.attention.head_count",
        "llama.feed_forward_length", "llama.context_length", "llama.attention.layer_norm_rms_epsilon",
        "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"}) {
    GgufBuilder b = TinyLlamaGguf();
    b.RemoveKey(key);
    absl::Status s = Load(b);
    EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << key;
    EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr(key)));
  }
}

TEST_F(MalformedGgufTest, MetadataOfWrongType) {
  GgufBuilder b = TinyLlamaGguf();
  b.SetKv(KvStr("llama.block_count", "two"));
  absl::Status s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("llama.block_count")));
}

TEST_F(MalformedGgufTest, InconsistentConfig) {
  GgufBuilder b = TinyLlamaGguf();
  b.SetKv(KvU32("llama.attention.head_count_kv", 3));  // 2 heads are not a multiple of 3
  absl::Status s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("num_kv_heads")));
  b = TinyLlamaGguf();
  b.SetKv(KvU32("llama.block_count", 0));
  s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("num_layers")));
}

TEST_F(MalformedGgufTest, TokenIdOutOfRange) {
  GgufBuilder b = TinyLlamaGguf();
  b.SetKv(KvU32("tokenizer.ggml.eos_token_id", 16));
  absl::Status s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("tokenizer.ggml.eos_token_id")));
}

TEST_F(MalformedGgufTest, MissingTensor) {
  GgufBuilder b = TinyLlamaGguf();
  b.RemoveTensor("blk.1.ffn_up.weight");
  absl::Status s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("blk.1.ffn_up.weight")));
}

TEST_F(MalformedGgufTest, DuplicateKeyAndTensor) {
  GgufBuilder b = TinyLlamaGguf();
  b.kvs.push_back(KvU32("llama.block_count", 2));
  absl::Status s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("llama.block_count")));
  b = TinyLlamaGguf();
  b.tensors.push_back(b.tensors[1]);
  s = Load(b);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr(b.tensors[1].name)));
}

TEST_F(MalformedGgufTest, UnsupportedTensorsAndArchitecture) {
  GgufBuilder b = TinyLlamaGguf();
  b.tensors.push_back({"blk.0.attn_q.bias", 0, {8}, std::string(32, '\0')});
  absl::Status s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("blk.0.attn_q.bias"), HasSubstr("bias")));
  b = TinyLlamaGguf();
  b.SetKv(KvStr("general.architecture", "gpt2"));
  s = Load(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("tiny.gguf"), HasSubstr("gpt2")));
  // A type whose size is known but which we cannot dequantize: fails at read time, naming the tensor.
  b = TinyLlamaGguf();
  auto* t = b.Tensor("blk.0.ffn_down.weight");
  t->type = 10;  // Q2_K
  t->ne = {256, 1};
  t->data.assign(84, '\0');
  path_ = dir_ + "/q2k.gguf";
  WriteFile(path_, b.Build());
  auto f = GgufFile::Open(path_);
  ASSERT_TRUE(f.ok()) << f.status();
  auto r = f->ReadTensor("blk.0.ffn_down.weight");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(),
              AllOf(HasSubstr("q2k.gguf"), HasSubstr("blk.0.ffn_down.weight"), HasSubstr("Q2_K")));
}

TEST_F(MalformedGgufTest, MissingFileIsNotFound) {
  auto w = LoadModelWeights(dir_ + "/nope.gguf");
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr("nope.gguf"));
}

// Random byte corruption anywhere in the file: whatever the outcome, no crash and errors name the file.
TEST_F(MalformedGgufTest, RandomByteFlipsNeverCrash) {
  const std::string full = TinyLlamaGguf().Build();
  const std::string path = dir_ + "/flipped.gguf";
  uint32_t x = 12345;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string bytes = full;
    for (int k = 0; k < 3; ++k) {
      x = x * 1664525u + 1013904223u;
      const size_t pos = (x >> 8) % std::min<size_t>(bytes.size(), 1200);  // mostly header/directory
      x = x * 1664525u + 1013904223u;
      bytes[pos] = static_cast<char>(x >> 24);
    }
    WriteFile(path, bytes);
    auto w = LoadModelWeights(path);
    if (!w.ok()) ASSERT_THAT(w.status().message(), HasSubstr("flipped.gguf")) << "iter " << iter;
  }
}

// ------------------------------------------------------------------------------------------------
// Safetensors / HF directories.

class MalformedHfTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = FreshDir("malformed_hf");
    WriteTinyHf(dir_, &model_);
    st_path_ = dir_ + "/model.safetensors";
    std::ifstream in(st_path_, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    st_bytes_ = ss.str();
  }
  // Replaces model.safetensors with an 8-byte length + `header` + `data`.
  void WriteSt(const std::string& header, const std::string& data = "") {
    std::string s;
    PutU64(&s, header.size());
    WriteFile(st_path_, s + header + data);
  }
  std::string dir_, st_path_, st_bytes_;
  TinyHf model_;
};

TEST_F(MalformedHfTest, ValidCheckpointLoads) {
  auto w = LoadModelWeights(dir_);
  ASSERT_TRUE(w.ok()) << w.status();
}

TEST_F(MalformedHfTest, EveryTruncationFailsWithFileName) {
  uint64_t header_len = 0;
  std::memcpy(&header_len, st_bytes_.data(), 8);
  for (size_t cut = 0; cut < st_bytes_.size(); cut += (cut < 8 + header_len + 64 ? 1 : 37)) {
    WriteFile(st_path_, st_bytes_.substr(0, cut));
    auto w = LoadModelWeights(dir_);
    ASSERT_FALSE(w.ok()) << "prefix of " << cut << " bytes loaded";
    ASSERT_THAT(w.status().message(), HasSubstr("model.safetensors")) << "cut " << cut;
  }
}

// Byte flips in the safetensors header, tokenizer.json and config.json: no crash, errors name a file.
TEST_F(MalformedHfTest, RandomByteFlipsNeverCrash) {
  uint64_t header_len = 0;
  std::memcpy(&header_len, st_bytes_.data(), 8);
  std::map<std::string, std::string> originals;
  for (const char* name : {"model.safetensors", "tokenizer.json", "config.json"}) {
    std::ifstream in(dir_ + "/" + name, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    originals[name] = ss.str();
  }
  uint32_t x = 777;
  auto next = [&x]() { return x = x * 1664525u + 1013904223u; };
  for (int iter = 0; iter < 1500; ++iter) {
    const char* name = iter % 3 == 0 ? "model.safetensors" : iter % 3 == 1 ? "tokenizer.json" : "config.json";
    std::string bytes = originals[name];
    const size_t span = name[0] == 'm' ? 8 + header_len : bytes.size();
    for (int k = 0; k < 2; ++k) bytes[(next() >> 8) % span] = static_cast<char>(next() >> 24);
    WriteFile(dir_ + "/" + name, bytes);
    auto w = LoadModelWeights(dir_);
    if (!w.ok()) {
      ASSERT_THAT(w.status().message(), HasSubstr(dir_)) << "iter " << iter << ": " << w.status();
    }
    WriteFile(dir_ + "/" + name, originals[name]);
  }
}

TEST_F(MalformedHfTest, HeaderLengthPastEndOfFile) {
  std::string s = st_bytes_;
  const uint64_t huge = s.size();  // the length alone exceeds what follows it
  std::memcpy(s.data(), &huge, 8);
  WriteFile(st_path_, s);
  auto f = SafetensorsFile::Open(st_path_);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(f.status().message(), AllOf(HasSubstr("model.safetensors"), HasSubstr("header length")));
  const uint64_t enormous = ~uint64_t{0};
  std::memcpy(s.data(), &enormous, 8);
  WriteFile(st_path_, s);
  EXPECT_EQ(SafetensorsFile::Open(st_path_).status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(MalformedHfTest, BadJson) {
  for (const std::string header : {"{\"a\": [1, 2", "[1, 2, 3]", "not json at all", "{\"x\": 1}", ""}) {
    WriteSt(header);
    auto w = LoadModelWeights(dir_);
    EXPECT_FALSE(w.ok()) << header;
    EXPECT_THAT(w.status().message(), HasSubstr("model.safetensors")) << header;
  }
}

TEST_F(MalformedHfTest, UnknownAndUnsupportedDtypes) {
  WriteSt(R"({"model.norm.weight": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}})",
          std::string(8, '\0'));
  auto f = SafetensorsFile::Open(st_path_);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(f.status().message(),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("model.norm.weight"), HasSubstr("Q7")));
  WriteSt(R"({"model.norm.weight": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}})",
          std::string(8, '\0'));
  f = SafetensorsFile::Open(st_path_);
  ASSERT_TRUE(f.ok()) << f.status();
  auto t = f->ReadTensor("model.norm.weight");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(t.status().message(), AllOf(HasSubstr("model.norm.weight"), HasSubstr("I32")));
}

TEST_F(MalformedHfTest, DataOffsetsOutOfRangeOrInconsistent) {
  struct Case {
    const char* header;
    absl::StatusCode code;
  } cases[] = {
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}})", absl::StatusCode::kDataLoss},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", absl::StatusCode::kDataLoss},
      {R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})",
       absl::StatusCode::kInvalidArgument},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-1, 8]}})",
       absl::StatusCode::kInvalidArgument},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", absl::StatusCode::kInvalidArgument},
      {R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 8]}})",
       absl::StatusCode::kInvalidArgument},
      {R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})",
       absl::StatusCode::kInvalidArgument},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
       absl::StatusCode::kInvalidArgument},
      {R"({"w": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}})", absl::StatusCode::kInvalidArgument},
      {R"({"w": [1, 2]})", absl::StatusCode::kInvalidArgument},
  };
  for (const Case& c : cases) {
    WriteSt(c.header, std::string(16, '\0'));
    auto f = SafetensorsFile::Open(st_path_);
    EXPECT_EQ(f.status().code(), c.code) << c.header << " -> " << f.status();
    EXPECT_THAT(f.status().message(), AllOf(HasSubstr("model.safetensors"), HasSubstr("'"))) << c.header;
  }
}

TEST_F(MalformedHfTest, TensorShapeDisagreesWithConfig) {
  std::vector<adore::testing::StTensor> tensors;
  for (const auto& [name, v] : model_.values) {
    std::vector<int64_t> shape = model_.shapes[name];
    if (name == "model.layers.1.self_attn.v_proj.weight") shape = {shape[1], shape[0]};
    tensors.push_back({name, "F32", shape, adore::testing::F32Bytes(v)});
  }
  WriteFile(st_path_, adore::testing::SafetensorsBytes(tensors));
  auto w = LoadModelWeights(dir_);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("model.layers.1.self_attn.v_proj.weight")));
}

TEST_F(MalformedHfTest, MissingAndUnsupportedTensors) {
  std::vector<adore::testing::StTensor> tensors;
  for (const auto& [name, v] : model_.values) {
    if (name == "model.layers.0.mlp.up_proj.weight") continue;
    tensors.push_back({name, "F32", model_.shapes[name], adore::testing::F32Bytes(v)});
  }
  WriteFile(st_path_, adore::testing::SafetensorsBytes(tensors));
  auto w = LoadModelWeights(dir_);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr("blk.0.ffn_up.weight"));

  tensors.push_back({"model.layers.0.self_attn.q_proj.bias", "F32", {16}, std::string(64, '\0')});
  WriteFile(st_path_, adore::testing::SafetensorsBytes(tensors));
  w = LoadModelWeights(dir_);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(w.status().message(), AllOf(HasSubstr("model.safetensors"), HasSubstr("q_proj.bias")));
}

TEST_F(MalformedHfTest, MissingOrBadConfigField) {
  const std::string cfg_path = dir_ + "/config.json";
  std::ifstream in(cfg_path);
  const nlohmann::json good = nlohmann::json::parse(in);
  for (const char* field :
       {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"}) {
    nlohmann::json cfg = good;
    cfg.erase(field);
    WriteFile(cfg_path, cfg.dump());
    auto w = LoadModelWeights(dir_);
    EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound) << field;
    EXPECT_THAT(w.status().message(), AllOf(HasSubstr("config.json"), HasSubstr(field)));
    cfg[field] = "sixteen";
    WriteFile(cfg_path, cfg.dump());
    w = LoadModelWeights(dir_);
    EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(w.status().message(), AllOf(HasSubstr("config.json"), HasSubstr(field)));
  }
  nlohmann::json cfg = good;
  cfg["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  WriteFile(cfg_path, cfg.dump());
  auto w = LoadModelWeights(dir_);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(w.status().message(), AllOf(HasSubstr("config.json"), HasSubstr("rope_scaling")));
  WriteFile(cfg_path, "{ broken");
  w = LoadModelWeights(dir_);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("config.json"));
  std::filesystem::remove(cfg_path);
  w = LoadModelWeights(dir_);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr("config.json"));
}

TEST_F(MalformedHfTest, BadTokenizerFiles) {
  const std::string tok_path = dir_ + "/tokenizer.json";
  WriteFile(tok_path, R"({"model": {"type": "BPE", "vocab": {"a": 99}, "merges": []}})");
  auto w = LoadModelWeights(dir_);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), AllOf(HasSubstr("tokenizer.json"), HasSubstr("99")));
  WriteFile(tok_path, R"({"model": {"type": "BPE", "vocab": {"a": 1, "b": 1}, "merges": []}})");
  w = LoadModelWeights(dir_);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("tokenizer.json"));
  WriteFile(tok_path, R"({"model": {"type": "BPE", "vocab": {"a": 1}, "merges": [5]}})");
  w = LoadModelWeights(dir_);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  WriteFile(tok_path, R"({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}})");
  w = LoadModelWeights(dir_);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kUnimplemented);
  WriteFile(tok_path, R"({"model": {"type": 7, "vocab": {}}, "pre_tokenizer": {"type": 3}})");
  w = LoadModelWeights(dir_);
  EXPECT_FALSE(w.ok());
  std::filesystem::remove(tok_path);
  w = LoadModelWeights(dir_);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr("tokenizer.json"));
}

TEST_F(MalformedHfTest, BadShardIndex) {
  std::filesystem::remove(st_path_);
  auto w = LoadModelWeights(dir_);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr("model.safetensors"));
  const std::string index = dir_ + "/model.safetensors.index.json";
  WriteFile(index, R"({"weight_map": {"model.norm.weight": "../../etc/passwd"}})");
  w = LoadModelWeights(dir_);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(),
              AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("model.norm.weight")));
  WriteFile(index, R"({"weight_map": {"model.norm.weight": "model-00009-of-00009.safetensors"}})");
  w = LoadModelWeights(dir_);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr("model-00009-of-00009.safetensors"));
  WriteFile(index, R"({"nothing": 1})");
  w = LoadModelWeights(dir_);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("weight_map"));
}

}  // namespace
}  // namespace adore
