// Incremental detokenization for streaming: turns a growing list of token ids into text deltas that are
// always whole UTF-8 characters (a character split across tokens is held back until it completes).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "common/tokenizer.h"

namespace adore {

class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = true)
      : tokenizer_(tokenizer), skip_special_(skip_special) {}

  // Adds one token; returns the text that became complete (possibly empty). OUT_OF_RANGE on a bad id.
  absl::StatusOr<std::string> Add(int32_t token);
  // Whatever is still held back at the end of the stream (an incomplete character becomes U+FFFD).
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::string pending_;  // bytes of an incomplete UTF-8 character
};

// Length of the longest prefix of `s` that does not end inside a UTF-8 sequence.
size_t CompleteUtf8Prefix(const std::string& s);

}  // namespace adore
