// StreamDecoder: byte accumulation with UTF-8 decoding by maximal subparts (Unicode 15, section 3.9,
// "U+FFFD Substitution of Maximal Subparts"; the practice of Python's and Rust's lossy decoders).
#include "common/stream_decoder.h"

#include <algorithm>

namespace adore {

namespace {

enum class Seq { kValid, kInvalid, kIncomplete };

struct SeqResult {
  Seq kind;
  size_t length;  // kValid: the character's bytes; kInvalid: the maximal subpart (>= 1); kIncomplete: bytes left
};

// Classifies the sequence starting at s[i] (i < s.size()). The well-formed byte sequences (Unicode
// Table 3-7): the second byte's range depends on the lead byte (it excludes overlongs, surrogates and
// code points above U+10FFFF); later bytes are 80..BF.
SeqResult Classify(std::string_view s, size_t i) {
  const unsigned char lead = static_cast<unsigned char>(s[i]);
  if (lead < 0x80) return {Seq::kValid, 1};
  int need;                           // continuation bytes after the lead
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 1;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 2;
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 3;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
  } else {
    return {Seq::kInvalid, 1};  // 80..BF (stray continuation), C0, C1 (overlong), F5..FF
  }
  for (int k = 1; k <= need; ++k) {
    if (i + k >= s.size()) return {Seq::kIncomplete, s.size() - i};
    const unsigned char c = static_cast<unsigned char>(s[i + k]);
    const bool ok = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) return {Seq::kInvalid, static_cast<size_t>(k)};  // the lead and the valid bytes after it
  }
  return {Seq::kValid, static_cast<size_t>(need + 1)};
}

}  // namespace

size_t DecodeUtf8Replacing(std::string_view bytes, bool final, std::string* out) {
  size_t i = 0;
  while (i < bytes.size()) {
    // ASCII runs are the common case: copy them whole.
    size_t j = i;
    while (j < bytes.size() && static_cast<unsigned char>(bytes[j]) < 0x80) ++j;
    out->append(bytes.data() + i, j - i);
    i = j;
    if (i == bytes.size()) break;
    const SeqResult r = Classify(bytes, i);
    switch (r.kind) {
      case Seq::kValid:
        out->append(bytes.data() + i, r.length);
        break;
      case Seq::kInvalid:
        out->append(kReplacementCharacter);
        break;
      case Seq::kIncomplete:
        if (!final) return i;
        out->append(kReplacementCharacter);
        break;
    }
    i += r.length;
  }
  return i;
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  DecodeUtf8Replacing(bytes, /*final=*/true, &out);
  return out;
}

size_t CompleteUtf8Prefix(std::string_view s) {
  // Only the last 3 bytes can begin an incomplete sequence. A byte that begins one is a lead byte, which
  // no earlier sequence can take as its continuation, so the decoder reaches it as a sequence start.
  for (size_t back = std::min<size_t>(3, s.size()); back > 0; --back) {
    const size_t i = s.size() - back;
    if (Classify(s, i).kind == Seq::kIncomplete) return i;
  }
  return s.size();
}

absl::StatusOr<std::string> StreamDecoder::Add(int32_t token) {
  if (skip_special_ && tokenizer_.IsSpecial(token)) return std::string();
  absl::StatusOr<std::string> bytes = tokenizer_.TokenBytes(token);
  if (!bytes.ok()) return bytes.status();
  pending_ += *bytes;
  std::string out;
  const size_t done = DecodeUtf8Replacing(pending_, /*final=*/false, &out);
  pending_.erase(0, done);
  return out;
}

std::string StreamDecoder::Flush() {
  std::string out;
  DecodeUtf8Replacing(pending_, /*final=*/true, &out);
  pending_.clear();
  return out;
}

}  // namespace adore
