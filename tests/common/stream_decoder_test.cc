// The streaming detokenizer: UTF-8 boundaries, and invalid bytes decoded the way Hugging Face tokenizers
// and Python decode them (errors="replace": one U+FFFD per maximal invalid subpart), so that every delta
// is valid UTF-8 and the deltas add up to the replacement decoding of all the tokens' bytes.
#include "common/stream_decoder.h"

#include <random>

#include "common/unicode_util.h"
#include "gtest/gtest.h"

namespace adore {
namespace {

// Byte strings and what Python 3 gives for bytes.decode("utf-8", errors="replace"), re-encoded as UTF-8
// (generated with python3: hand-picked cases, then random strings over lead, continuation and invalid
// bytes with random.Random(7)).
struct Golden {
  std::string bytes, decoded;
};
const Golden kGolden[] = {
    {"", ""},
    {"\x61\x62\x63", "\x61\x62\x63"},
    {"\xE2\x82\xAC", "\xE2\x82\xAC"},
    {"\x80", "\xEF\xBF\xBD"},
    {"\x61\x80\x62", "\x61\xEF\xBF\xBD\x62"},
    {"\xBF\xBF", "\xEF\xBF\xBD\xEF\xBF\xBD"},
    {"\xC0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD"},
    {"\xC1\xBF", "\xEF\xBF\xBD\xEF\xBF\xBD"},
    {"\xE0\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
    {"\xE0\xA0\x80", "\xE0\xA0\x80"},
    {"\xED\xA0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
    {"\xED\x9F\xBF", "\xED\x9F\xBF"},
    {"\xF0\x80\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
    {"\xF0\x90\x80\x80", "\xF0\x90\x80\x80"},
    {"\xF4\x8F\xBF\xBF", "\xF4\x8F\xBF\xBF"},
    {"\xF4\x90\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
    {"\xF5\x80", "\xEF\xBF\xBD\xEF\xBF\xBD"},
    {"\xFF\xFE", "\xEF\xBF\xBD\xEF\xBF\xBD"},
    {"\xE2\x82\x41", "\xEF\xBF\xBD\x41"},
    {"\xE2\x82", "\xEF\xBF\xBD"},
    {"\xF0\x9F\x98", "\xEF\xBF\xBD"},
    {"\xCE\xCE\xB1", "\xEF\xBF\xBD\xCE\xB1"},
    {"\xF0\x9F\x98\x80\x80", "\xF0\x9F\x98\x80\xEF\xBF\xBD"},
    {"\x78\xC3", "\x78\xEF\xBF\xBD"},
    {"\xE2\x82\xE2\x82\xAC", "\xEF\xBF\xBD\xE2\x82\xAC"},
    {"\x90\xE0\x20\x80\xF4\x8F\xDF\xF5\x20\xF0\xA0", "\xEF\xBF\xBD\xEF\xBF\xBD\x20\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\x20\xEF\xBF\xBD"},
    {"\x80\xE2\xE2\x80\xBF\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xE2\x80\xBF\xEF\xBF\xBD"},
    {"\xE2\x20\xF5\x8F\xBF\xF5\x20\xF5\xF5\xE0\x20\xBF\x20\xF4", "\xEF\xBF\xBD\x20\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\x20\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\x20\xEF\xBF\xBD\x20\xEF\xBF\xBD"},
    {"\xC2\xE2\x90\xF4\x8F\xF5\xC2\xF4", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
    {"\x8F\xF5\xF5\xA0\xDF\x8F\xF4\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xDF\x8F\xEF\xBF\xBD"},
    {"\xFF\xA0\xEF\xF4\xE2\xCE", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
    {"\xF5\xED\xDF\xC2\xBF\x9F\xBF\x80\xF5\xC2\xF0\xEF\xCE", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xC2\xBF\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
    {"\xC2\xFF\x80\x8F\xF0\xE2\x9F\xCE\x90\xEF\xE2\x20\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xCE\x90\xEF\xBF\xBD\xEF\xBF\xBD\x20\xEF\xBF\xBD"},
    {"\xF5\xCE\xCE\xDF\xFF\xEF\xF5\xED\x80\x80\xC0\xEF\x80\x20", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xED\x80\x80\xEF\xBF\xBD\xEF\xBF\xBD\x20"},
    {"\xF5\xED\xC2\xE0\xDF\x41\xED\xDF\x9F\xFF", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\x41\xEF\xBF\xBD\xDF\x9F\xEF\xBF\xBD"},
    {"\xEF\x20\xA0\xC2\x90\xBF\xE0", "\xEF\xBF\xBD\x20\xEF\xBF\xBD\xC2\x90\xEF\xBF\xBD\xEF\xBF\xBD"},
    {"\xEF\x80\x9F\xED\xE0\xF4\xC0\x90\xE2\xF4\xC0\xE2", "\xEF\x80\x9F\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
};

// A tokenizer whose token i is the byte string vocab[i] (only what StreamDecoder uses is real).
class BytesTokenizer final : public Tokenizer {
 public:
  explicit BytesTokenizer(std::vector<std::string> vocab, int32_t special = -1)
      : vocab_(std::move(vocab)), special_(special) {}
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view, bool, bool) const override {
    return absl::UnimplementedError("Encode");
  }
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids, bool skip_special) const override {
    std::string out;
    for (int32_t id : ids) {
      if (!(skip_special && IsSpecial(id))) out += vocab_.at(id);
    }
    return out;
  }
  absl::StatusOr<std::string> TokenBytes(int32_t id) const override {
    if (id < 0 || id >= vocab_size()) return absl::OutOfRangeError("id");
    return vocab_[id];
  }
  absl::StatusOr<int32_t> TokenToId(std::string_view) const override { return absl::NotFoundError("TokenToId"); }
  absl::StatusOr<std::string> ApplyChatTemplate(const std::vector<ChatMessage>&, bool) const override {
    return absl::FailedPreconditionError("no template");
  }
  int32_t vocab_size() const override { return static_cast<int32_t>(vocab_.size()); }
  int32_t bos_id() const override { return -1; }
  int32_t eos_id() const override { return special_; }
  bool IsSpecial(int32_t id) const override { return id == special_; }

 private:
  std::vector<std::string> vocab_;
  int32_t special_;
};

// Streams `tokens` through a StreamDecoder; every delta must be valid UTF-8. Returns the concatenation.
std::string Stream(const Tokenizer& tok, const std::vector<int32_t>& tokens, const std::string& what) {
  StreamDecoder d(tok);
  std::string all;
  for (size_t i = 0; i < tokens.size(); ++i) {
    absl::StatusOr<std::string> piece = d.Add(tokens[i]);
    EXPECT_TRUE(piece.ok()) << piece.status();
    if (!piece.ok()) return all;
    EXPECT_TRUE(IsValidUtf8(*piece)) << what << ": delta " << i << " is not valid UTF-8";
    all += *piece;
  }
  const std::string last = d.Flush();
  EXPECT_TRUE(IsValidUtf8(last)) << what << ": the flush is not valid UTF-8";
  return all + last;
}

TEST(StreamDecoderTest, CompleteUtf8PrefixHoldsBackSplitCharacters) {
  EXPECT_EQ(CompleteUtf8Prefix(""), 0u);
  EXPECT_EQ(CompleteUtf8Prefix("abc"), 3u);
  const std::string euro = "\xE2\x82\xAC";  // 3 bytes
  EXPECT_EQ(CompleteUtf8Prefix("a" + euro), 4u);
  EXPECT_EQ(CompleteUtf8Prefix("a" + euro.substr(0, 1)), 1u);
  EXPECT_EQ(CompleteUtf8Prefix("a" + euro.substr(0, 2)), 1u);
  const std::string emoji = "\xF0\x9F\x98\x80";  // 4 bytes
  EXPECT_EQ(CompleteUtf8Prefix(emoji.substr(0, 3)), 0u);
  EXPECT_EQ(CompleteUtf8Prefix(emoji), 4u);
  EXPECT_EQ(CompleteUtf8Prefix("x\xC3"), 1u);
  // Bytes that can never complete are not held back.
  EXPECT_EQ(CompleteUtf8Prefix("x\x80"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("x\xE0\x80"), 3u);  // E0 80 is the start of an overlong form
  EXPECT_EQ(CompleteUtf8Prefix("x\xED\xA0"), 3u);  // a surrogate
  EXPECT_EQ(CompleteUtf8Prefix("x\xF5"), 2u);
}

// Each golden byte string streamed one byte per token, and in every split into two tokens: each delta is
// valid UTF-8 and the whole equals Python's decoding.
TEST(StreamDecoderTest, DeltasAreValidUtf8AndEqualPythonsReplacementDecoding) {
  for (const Golden& g : kGolden) {
    std::vector<std::string> vocab;
    std::vector<int32_t> tokens;
    for (char c : g.bytes) {
      tokens.push_back(static_cast<int32_t>(vocab.size()));
      vocab.push_back(std::string(1, c));
    }
    const BytesTokenizer by_byte(vocab);
    EXPECT_EQ(Stream(by_byte, tokens, "byte by byte"), g.decoded) << "input of " << g.bytes.size() << " bytes";
    for (size_t cut = 0; cut <= g.bytes.size(); ++cut) {
      const BytesTokenizer two({g.bytes.substr(0, cut), g.bytes.substr(cut)});
      EXPECT_EQ(Stream(two, {0, 1}, "two tokens"), g.decoded) << "cut at " << cut;
    }
  }
}

TEST(StreamDecoderTest, Utf8LossyEqualsPythonsReplacementDecoding) {
  for (const Golden& g : kGolden) {
    EXPECT_EQ(Utf8Lossy(g.bytes), g.decoded) << "input of " << g.bytes.size() << " bytes";
    if (IsValidUtf8(g.bytes)) EXPECT_EQ(Utf8Lossy(g.bytes), g.bytes);
  }
}

// Random byte tokens (weighted toward lead and continuation bytes), random token lengths, a special token
// (skipped) here and there: the deltas are valid UTF-8 and add up to Utf8Lossy of the non-special bytes.
TEST(StreamDecoderTest, RandomTokenStreamsAddUpToTheWholeDecoding) {
  std::mt19937 rng(12345);
  const unsigned char kBytes[] = {'a', ' ', 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xCE, 0xDF,
                                  0xE0, 0xE2, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF};
  std::vector<std::string> vocab;
  for (int i = 0; i < 200; ++i) {
    std::string t;
    const int len = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < len; ++k) t += static_cast<char>(kBytes[rng() % sizeof(kBytes)]);
    vocab.push_back(t);
  }
  vocab.push_back("<special>");
  const int32_t special = static_cast<int32_t>(vocab.size()) - 1;
  const BytesTokenizer tok(vocab, special);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<int32_t> tokens;
    std::string bytes;
    const int n = 1 + static_cast<int>(rng() % 12);
    for (int i = 0; i < n; ++i) {
      const int32_t t = rng() % 10 == 0 ? special : static_cast<int32_t>(rng() % special);
      tokens.push_back(t);
      if (t != special) bytes += vocab[t];
    }
    const std::string got = Stream(tok, tokens, "trial " + std::to_string(trial));
    EXPECT_EQ(got, Utf8Lossy(bytes)) << "trial " << trial;
    EXPECT_TRUE(IsValidUtf8(got));
  }
}

TEST(StreamDecoderTest, IncompleteCharacterIsHeldBackThenFlushedAsReplacement) {
  const BytesTokenizer tok({"a\xE2\x82", "\xAC", "\xF0\x9F"});
  StreamDecoder d(tok);
  EXPECT_EQ(*d.Add(0), "a");
  EXPECT_TRUE(d.has_pending());
  EXPECT_EQ(*d.Add(1), "\xE2\x82\xAC");
  EXPECT_FALSE(d.has_pending());
  EXPECT_EQ(*d.Add(2), "");
  EXPECT_EQ(d.Flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(d.Flush(), "");
  EXPECT_EQ(d.Add(7).status().code(), absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace adore
