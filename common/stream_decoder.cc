// StreamDecoder: byte accumulation with a UTF-8 boundary check.
#include "common/stream_decoder.h"

namespace adore {

size_t CompleteUtf8Prefix(const std::string& s) {
  // Walk back over at most 3 continuation bytes to the last lead byte and check its sequence is whole.
  const size_t n = s.size();
  size_t i = n;
  int continuation = 0;
  while (i > 0 && continuation < 4) {
    const unsigned char c = s[i - 1];
    if ((c & 0xC0) != 0x80) break;
    --i;
    ++continuation;
  }
  if (i == 0) return continuation > 0 ? n : 0;  // only continuation bytes: invalid, pass through
  const unsigned char lead = s[i - 1];
  int need = 0;
  if (lead < 0x80) need = 0;
  else if ((lead & 0xE0) == 0xC0) need = 1;
  else if ((lead & 0xF0) == 0xE0) need = 2;
  else if ((lead & 0xF8) == 0xF0) need = 3;
  else return n;  // invalid lead byte: nothing to wait for
  return continuation >= need ? n : i - 1;
}

absl::StatusOr<std::string> StreamDecoder::Add(int32_t token) {
  if (skip_special_ && tokenizer_.IsSpecial(token)) return std::string();
  absl::StatusOr<std::string> bytes = tokenizer_.TokenBytes(token);
  if (!bytes.ok()) return bytes.status();
  pending_ += *bytes;
  const size_t done = CompleteUtf8Prefix(pending_);
  std::string out = pending_.substr(0, done);
  pending_.erase(0, done);
  return out;
}

std::string StreamDecoder::Flush() {
  std::string out = pending_.empty() ? "" : "\xEF\xBF\xBD";
  pending_.clear();
  return out;
}

}  // namespace adore
