// Synthetic model specs and the stand-in tokenizer the coordinator uses for them.
#include "common/synthetic_model.h"

#include "common/tokenizer.h"
#include "gtest/gtest.h"

namespace adore {
namespace {

TEST(SyntheticModelTest, ParsesShapeAndContext) {
  auto c = SyntheticModelConfig("synthetic:llama3-8b");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->vocab_size, 128256);
  EXPECT_EQ(c->max_context, 8192);
  c = SyntheticModelConfig("synthetic:llama2-7b:32768");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_heads, 32);
  EXPECT_EQ(c->max_context, 32768);
  EXPECT_TRUE(c->Validate().ok());
  EXPECT_TRUE(IsSyntheticModel("synthetic:smollm2-135m"));
  EXPECT_FALSE(IsSyntheticModel("models/synthetic:x.gguf"));
}

TEST(SyntheticModelTest, RejectsBadSpecsNamingTheProblem) {
  for (const char* bad : {"synthetic:", "synthetic:gpt-5", "synthetic:llama2-7b:", "synthetic:llama2-7b:8",
                          "synthetic:llama2-7b:abc", "llama2-7b"}) {
    auto c = SyntheticModelConfig(bad);
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_NE(SyntheticModelConfig("synthetic:gpt-5").status().message().find("llama2-7b"), std::string::npos);
}

TEST(SyntheticModelTest, TokenizerEncodesAnyTextAsBytesAndRendersHighIds) {
  auto info = SyntheticModelInfo("synthetic:llama2-7b");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->tensors.empty());
  ASSERT_EQ(info->tokenizer.tokens.size(), 32000u);
  auto tok = Tokenizer::Create(info->tokenizer);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("héllo");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->size(), 6u);  // one token per UTF-8 byte
  auto text = (*tok)->Decode(*ids);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "héllo");
  text = (*tok)->Decode({300, 31999});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, " w300 w31999");
  EXPECT_EQ((*tok)->eos_id(), -1);
}

}  // namespace
}  // namespace adore
