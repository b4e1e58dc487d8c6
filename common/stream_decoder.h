// Incremental detokenization for streaming: turns a growing list of token ids into text deltas that are
// always valid UTF-8. Bytes are decoded the way Hugging Face tokenizers decode a whole sequence (Rust's
// String::from_utf8_lossy, Python's bytes.decode("utf-8", errors="replace")): every maximal invalid
// subpart (a stray continuation byte, an overlong form, a surrogate, a sequence cut short by a byte that
// cannot continue it) becomes one U+FFFD. Only a sequence that is still incomplete at the end of what has
// arrived is held back until the next token; Flush() turns it into U+FFFD. So the concatenation of all
// deltas equals Utf8Lossy(all tokens' bytes).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/tokenizer.h"

namespace adore {

class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = true)
      : tokenizer_(tokenizer), skip_special_(skip_special) {}

  // Adds one token; returns the text that became final (possibly empty), valid UTF-8. OUT_OF_RANGE on a
  // bad id.
  absl::StatusOr<std::string> Add(int32_t token);
  // Whatever is still held back at the end of the stream (an incomplete character becomes U+FFFD).
  std::string Flush();
  // True when bytes of an incomplete character are held back.
  bool has_pending() const { return !pending_.empty(); }

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::string pending_;  // bytes of an incomplete (so far valid) UTF-8 sequence, at most 3
};

// U+FFFD REPLACEMENT CHARACTER in UTF-8.
inline constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";

// Decodes `bytes` as UTF-8 into `out` (appending), replacing every maximal invalid subpart with one U+FFFD,
// and stops before a trailing sequence that is valid so far but incomplete (unless `final`, which turns it
// into one U+FFFD too). Returns the number of bytes consumed; the rest is that incomplete tail (<= 3 bytes).
size_t DecodeUtf8Replacing(std::string_view bytes, bool final, std::string* out);

// The whole of `bytes` decoded with replacement: what Python's bytes.decode("utf-8", errors="replace")
// and Hugging Face tokenizers' decode give. Always valid UTF-8; equal to `bytes` when that is valid.
std::string Utf8Lossy(std::string_view bytes);

// Length of the longest prefix of `s` that does not end inside an incomplete (so far valid) UTF-8
// sequence. Invalid bytes do not hold anything back (they are the decoder's to replace).
size_t CompleteUtf8Prefix(std::string_view s);

}  // namespace adore
