// UTF-8 boundary handling of the streaming detokenizer.
#include "common/stream_decoder.h"

#include "gtest/gtest.h"

namespace adore {
namespace {

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
}

}  // namespace
}  // namespace adore
