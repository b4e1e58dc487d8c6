// Tokenizer tests: SmolLM2's tokenizer against Hugging Face `tokenizers` golden encodings (made by
// tools/make_tokenizer_golden.py), chat-template renders, special tokens, and error handling.
#include "common/tokenizer.h"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "common/gguf.h"
#include "common/unicode_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace adore {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The tokenizer keys of a GGUF read directly with GgufFile, independently of LoadModelWeights.
absl::StatusOr<TokenizerSpec> ReadSpec(const std::string& path) {
  auto gguf = GgufFile::Open(path);
  if (!gguf.ok()) return gguf.status();
  TokenizerSpec spec;
  auto get_string = [&](const char* key, std::string* out) -> absl::Status {
    auto v = gguf->GetString(key);
    if (!v.ok()) return v.status();
    *out = *v;
    return absl::OkStatus();
  };
  auto get_int = [&](const char* key, int32_t* out) {
    if (auto v = gguf->GetInt(key); v.ok()) *out = static_cast<int32_t>(*v);
  };
  if (auto s = get_string("tokenizer.ggml.model", &spec.model); !s.ok()) return s;
  if (auto s = get_string("tokenizer.ggml.pre", &spec.pre); !s.ok()) return s;
  (void)get_string("tokenizer.chat_template", &spec.chat_template);
  auto tokens = gguf->GetStringArray("tokenizer.ggml.tokens");
  if (!tokens.ok()) return tokens.status();
  spec.tokens = *tokens;
  auto merges = gguf->GetStringArray("tokenizer.ggml.merges");
  if (!merges.ok()) return merges.status();
  spec.merges = *merges;
  if (auto types = gguf->GetIntArray("tokenizer.ggml.token_type"); types.ok()) {
    spec.token_types.assign(types->begin(), types->end());
  }
  get_int("tokenizer.ggml.bos_token_id", &spec.bos_id);
  get_int("tokenizer.ggml.eos_token_id", &spec.eos_id);
  get_int("tokenizer.ggml.padding_token_id", &spec.pad_id);
  get_int("tokenizer.ggml.unknown_token_id", &spec.unk_id);
  if (auto v = gguf->metadata().find("tokenizer.ggml.add_bos_token"); v != gguf->metadata().end()) {
    if (const bool* b = std::get_if<bool>(&v->second.v)) spec.add_bos = *b;
  }
  return spec;
}

std::vector<nlohmann::json> ReadJsonl(const std::string& path) {
  std::vector<nlohmann::json> records;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) records.push_back(nlohmann::json::parse(line));
  }
  return records;
}

std::string Quote(const std::string& s) { return nlohmann::json(s).dump(); }

std::string IdsToString(const std::vector<int32_t>& ids) { return nlohmann::json(ids).dump(); }

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!testing::ModelAvailable()) return;
    // Only the tokenizer keys are read here: ctest runs every test in its own process, and loading the
    // weights each time would cost seconds. LoaderFillsTheSameSpec checks LoadModelWeights agrees.
    auto spec = ReadSpec(testing::ModelPath());
    ASSERT_TRUE(spec.ok()) << spec.status();
    spec_ = new TokenizerSpec(*std::move(spec));
    auto tok = Tokenizer::Create(*spec_);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
    golden_ = new std::vector<nlohmann::json>(ReadJsonl(testing::DataPath("tokenizer/golden.jsonl")));
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete spec_;
    delete golden_;
    tokenizer_ = nullptr;
    spec_ = nullptr;
    golden_ = nullptr;
  }
  void SetUp() override {
    if (!testing::ModelAvailable()) {
      GTEST_SKIP() << "model not found at " << testing::ModelPath()
                   << " (run tools/fetch-model.sh or set ADORE_MODEL)";
    }
    ASSERT_NE(tokenizer_, nullptr);
  }

  // Encodes every golden case that has `field` with `tok` and expects HF's ids; reports mismatches.
  static void ExpectGoldenIds(const Tokenizer& tok, const std::string& field, bool parse_special,
                              size_t min_cases) {
    size_t compared = 0, mismatches = 0;
    std::string report;
    for (const auto& rec : *golden_) {
      if (!rec.contains(field)) continue;
      const std::string text = rec["text"];
      const std::vector<int32_t> want = rec[field];
      auto got = tok.Encode(text, parse_special);
      ++compared;
      if (got.ok() && *got == want) continue;
      if (++mismatches <= 5) {
        report += "\n  [" + rec["src"].get<std::string>() + "] " + Quote(text) + "\n    want " +
                  IdsToString(want) + "\n    got  " +
                  (got.ok() ? IdsToString(*got) : std::string(got.status().message()));
      }
    }
    std::printf("%s: %zu cases compared, %zu mismatches\n", field.c_str(), compared, mismatches);
    EXPECT_GE(compared, min_cases);
    EXPECT_EQ(mismatches, 0u) << "first mismatches:" << report;
  }

  static TokenizerSpec* spec_;
  static Tokenizer* tokenizer_;
  static std::vector<nlohmann::json>* golden_;
};

TokenizerSpec* TokenizerTest::spec_ = nullptr;
Tokenizer* TokenizerTest::tokenizer_ = nullptr;
std::vector<nlohmann::json>* TokenizerTest::golden_ = nullptr;

TEST_F(TokenizerTest, LoaderFillsTheSameSpec) {
  auto weights = LoadModelWeights(testing::ModelPath());
  ASSERT_TRUE(weights.ok()) << weights.status();
  const TokenizerSpec& loaded = weights->tokenizer;
  EXPECT_EQ(loaded.model, spec_->model);
  EXPECT_EQ(loaded.pre, spec_->pre);
  EXPECT_EQ(loaded.tokens, spec_->tokens);
  EXPECT_EQ(loaded.token_types, spec_->token_types);
  EXPECT_EQ(loaded.merges, spec_->merges);
  EXPECT_EQ(loaded.bos_id, spec_->bos_id);
  EXPECT_EQ(loaded.eos_id, spec_->eos_id);
  EXPECT_EQ(loaded.pad_id, spec_->pad_id);
  EXPECT_EQ(loaded.unk_id, spec_->unk_id);
  EXPECT_EQ(loaded.add_bos, spec_->add_bos);
  EXPECT_EQ(loaded.chat_template, spec_->chat_template);
}

TEST_F(TokenizerTest, EncodesGoldenSetLikeHuggingFace) {
  ExpectGoldenIds(*tokenizer_, "ids", /*parse_special=*/true, 10000);
}

TEST_F(TokenizerTest, EncodesSpecialTokensAsTextWhenNotParsing) {
  ExpectGoldenIds(*tokenizer_, "ids_plain", /*parse_special=*/false, 100);
}

TEST_F(TokenizerTest, OtherPreTokenizersMatchHuggingFace) {
  for (const char* pre : {"gpt2", "llama3"}) {
    TokenizerSpec spec = *spec_;
    spec.pre = pre;
    auto tok = Tokenizer::Create(spec);
    ASSERT_TRUE(tok.ok()) << tok.status();
    ExpectGoldenIds(**tok, std::string("ids_") + pre, /*parse_special=*/true, 500);
  }
}

TEST_F(TokenizerTest, EncodesTenThousandLinesQuickly) {
  std::vector<std::string> texts;
  for (const auto& rec : *golden_) texts.push_back(rec["text"]);
  size_t bytes = 0, tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  for (const std::string& text : texts) {
    auto ids = tokenizer_->Encode(text);
    ASSERT_TRUE(ids.ok());
    bytes += text.size();
    tokens += ids->size();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("encoded %zu lines (%zu bytes, %zu tokens) in %.3f s: %.0f lines/s, %.1f MB/s\n",
              texts.size(), bytes, tokens, seconds, texts.size() / seconds, bytes / seconds / 1e6);
#ifdef NDEBUG
  EXPECT_LT(seconds, 5.0);  // about 0.2 s on one core in Release; unoptimized/sanitized builds are exempt
#endif
}

TEST_F(TokenizerTest, DecodesGoldenIdsBackToText) {
  size_t mismatches = 0;
  for (const auto& rec : *golden_) {
    const std::vector<int32_t> ids = rec["ids"];
    const std::string want = rec.contains("decoded") ? rec["decoded"] : rec["text"];
    auto got = tokenizer_->Decode(ids);
    ASSERT_TRUE(got.ok()) << got.status();
    if (*got != want && ++mismatches <= 5)
      ADD_FAILURE() << "decode " << Quote(want) << " got " << Quote(*got);
    if (rec.contains("skip")) {
      auto skipped = tokenizer_->Decode(ids, /*skip_special=*/true);
      ASSERT_TRUE(skipped.ok());
      EXPECT_EQ(*skipped, rec["skip"].get<std::string>());
    }
    // Streaming: the per-token bytes concatenate to the decoded text.
    std::string streamed;
    for (int32_t id : ids) streamed += *tokenizer_->TokenBytes(id);
    EXPECT_EQ(streamed, *got);
  }
  EXPECT_EQ(mismatches, 0u);
}

TEST_F(TokenizerTest, HandlesLongRunsInOneLine) {
  // Long runs stress the regex backtracking (whitespace lookahead) and the BPE heap.
  std::string mixed;
  for (int i = 0; i < 20000; ++i) mixed += "caf\xC3\xA9 \xF0\x9F\x98\x80\xC2\xA0 ";
  const std::vector<std::string> texts = {"a" + std::string(200000, ' ') + "b", std::string(200000, 'x'),
                                          std::string(100000, '7'), std::string(50000, '\t') + "\n",
                                          mixed};
  for (const std::string& text : texts) {
    auto ids = tokenizer_->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*tokenizer_->Decode(*ids), text);
  }
}

TEST_F(TokenizerTest, ParsesSpecialTokensOnlyWhenAsked) {
  const std::string text = "<|im_start|>user\nHi<|im_end|>";
  auto parsed = tokenizer_->Encode(text, /*parse_special=*/true);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->front(), 1);
  EXPECT_EQ(parsed->back(), 2);
  auto plain = tokenizer_->Encode(text, /*parse_special=*/false);
  ASSERT_TRUE(plain.ok());
  EXPECT_GT(plain->size(), parsed->size());
  for (int32_t id : *plain) EXPECT_FALSE(tokenizer_->IsSpecial(id)) << id;
  EXPECT_EQ(*tokenizer_->Decode(*plain), text);
  EXPECT_EQ(*tokenizer_->Decode(*parsed, /*skip_special=*/true), "user\nHi");
  // Longest match wins and partial markers stay text.
  EXPECT_THAT(*tokenizer_->Encode("<|im_end|><|endoftext|>"), ElementsAre(2, 0));
  auto partial = tokenizer_->Encode("<|im_start");
  ASSERT_TRUE(partial.ok());
  for (int32_t id : *partial) EXPECT_FALSE(tokenizer_->IsSpecial(id));
}

TEST_F(TokenizerTest, AddsBosOnlyWhenTheModelWantsIt) {
  EXPECT_EQ(*tokenizer_->Encode("hi", true, /*add_bos=*/true), *tokenizer_->Encode("hi"));
  TokenizerSpec spec = *spec_;
  spec.add_bos = true;
  auto tok = Tokenizer::Create(spec);
  ASSERT_TRUE(tok.ok());
  auto ids = (*tok)->Encode("hi", true, /*add_bos=*/true);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->front(), spec.bos_id);
  EXPECT_EQ(*(*tok)->Encode(""), std::vector<int32_t>{});
}

TEST_F(TokenizerTest, RejectsInvalidUtf8) {
  for (const std::string bad : {std::string("\xff"), std::string("abc\x80"), std::string("\xc3"),
                                std::string("\xc0\xaf"),          // overlong '/'
                                std::string("\xed\xa0\x80"),      // surrogate U+D800
                                std::string("\xf4\x90\x80\x80"),  // above U+10FFFF
                                std::string("ok \xe2\x82 no")}) {
    auto ids = tokenizer_->Encode(bad);
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument) << absl::CHexEscape(bad);
  }
  EXPECT_TRUE(tokenizer_->Encode(std::string("nul\0inside", 10)).ok());
}

TEST_F(TokenizerTest, ReportsVocabularyFacts) {
  EXPECT_EQ(tokenizer_->vocab_size(), 49152);
  EXPECT_EQ(tokenizer_->bos_id(), 1);
  EXPECT_EQ(tokenizer_->eos_id(), 2);
  EXPECT_TRUE(tokenizer_->IsSpecial(2));
  EXPECT_TRUE(tokenizer_->IsSpecial(16));
  EXPECT_FALSE(tokenizer_->IsSpecial(17));
  EXPECT_FALSE(tokenizer_->IsSpecial(-1));
  EXPECT_EQ(*tokenizer_->TokenToId("<|im_end|>"), 2);
  EXPECT_EQ(tokenizer_->TokenToId("no such token").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*tokenizer_->TokenBytes(*tokenizer_->TokenToId("Ġthe")), " the");
  EXPECT_EQ(tokenizer_->Decode({49152}).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(tokenizer_->TokenBytes(-1).status().code(), absl::StatusCode::kOutOfRange);
}

TEST_F(TokenizerTest, RendersChatTemplatesLikeTransformers) {
  size_t compared = 0;
  std::map<std::string, std::unique_ptr<Tokenizer>> by_template;
  for (const auto& rec : ReadJsonl(testing::DataPath("tokenizer/chat.jsonl"))) {
    std::vector<ChatMessage> messages;
    for (const auto& m : rec["messages"]) messages.push_back({m["role"], m["content"]});
    const bool add_generation_prompt = rec["add_generation_prompt"];
    const std::string want = rec["text"];
    const Tokenizer* tok = tokenizer_;
    if (rec["template"] != "model") {
      std::unique_ptr<Tokenizer>& other = by_template[rec["template"]];
      if (other == nullptr) {
        TokenizerSpec spec = *spec_;
        spec.chat_template = rec["template"];
        auto created = Tokenizer::Create(spec);
        ASSERT_TRUE(created.ok()) << created.status();
        other = *std::move(created);
      }
      tok = other.get();
    }
    auto got = tok->ApplyChatTemplate(messages, add_generation_prompt);
    ASSERT_TRUE(got.ok()) << got.status() << "\ntemplate: " << rec["template"];
    EXPECT_EQ(*got, want) << "template: " << rec["template"];
    if (rec.contains("ids")) EXPECT_EQ(*tok->Encode(*got), rec["ids"].get<std::vector<int32_t>>());
    ++compared;
  }
  std::printf("chat renders compared: %zu\n", compared);
  EXPECT_GE(compared, 100u);
}

TEST_F(TokenizerTest, RefusesChatTemplatesItCannotRender) {
  const std::vector<std::string> templates = {
      "",
      // Llama 3: not ChatML.
      "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
      " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}",
      // ChatML markers but logic this renderer does not run (filters, tools).
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
      "message['content'] | trim"
      " + '<|im_end|>\n'}}{% endfor %}",
      "{% if tools %}x{% endif %}{% for message in messages %}{{'<|im_start|>' + message['role'] + "
      "'\n' +"
      " message['content'] + '<|im_end|>\n'}}{% endfor %}",
      // Text outside tags that Jinja would emit.
      "Conversation:\n{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' +"
      " message['content'] + '<|im_end|>\n'}}{% endfor %}",
  };
  for (const std::string& t : templates) {
    TokenizerSpec spec = *spec_;
    spec.chat_template = t;
    auto tok = Tokenizer::Create(spec);
    ASSERT_TRUE(tok.ok()) << tok.status();
    auto rendered = (*tok)->ApplyChatTemplate({{"user", "hi"}});
    EXPECT_EQ(rendered.status().code(), absl::StatusCode::kFailedPrecondition) << t;
  }
}

TEST_F(TokenizerTest, RejectsUnusableSpecs) {
  TokenizerSpec spec = *spec_;
  spec.pre = "no-such-pre";
  auto tok = Tokenizer::Create(spec);
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("no-such-pre"));

  spec = *spec_;
  spec.model = "llama";
  EXPECT_EQ(Tokenizer::Create(spec).status().code(), absl::StatusCode::kInvalidArgument);

  spec = *spec_;
  spec.merges.push_back("Ġthe notatoken");
  EXPECT_EQ(Tokenizer::Create(spec).status().code(), absl::StatusCode::kInvalidArgument);

  spec = *spec_;
  spec.eos_id = 1 << 20;
  EXPECT_EQ(Tokenizer::Create(spec).status().code(), absl::StatusCode::kInvalidArgument);

  spec = *spec_;
  spec.token_types.pop_back();
  EXPECT_EQ(Tokenizer::Create(spec).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ByteLevelAlphabetTest, RoundTripsEveryByte) {
  const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::Get();
  EXPECT_EQ(alphabet.Encode(' '), "\xC4\xA0");  // "Ġ"
  EXPECT_EQ(alphabet.Encode('A'), "A");
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  std::string back;
  ASSERT_TRUE(alphabet.DecodeText(alphabet.EncodeBytes(all), &back));
  EXPECT_EQ(back, all);
  EXPECT_FALSE(alphabet.DecodeText("a b", &back));  // a plain space is not in the alphabet
}

}  // namespace
}  // namespace adore
