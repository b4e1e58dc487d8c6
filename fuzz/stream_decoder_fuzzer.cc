// Fuzz target: incremental detokenization for streaming (common/stream_decoder.h). Input: byte 0 picks the
// vocabulary (fuzz_util.h), byte 1 the flags, the rest is a token sequence (16-bit ids, a few outside the
// vocabulary; one byte per id for the byte-level vocabulary 3, whose ids 0..255 are the 256 bytes, so any
// byte sequence streams). Checked: every delta and the flush are valid UTF-8, a bad id is OUT_OF_RANGE and
// changes nothing, and the concatenation equals the whole sequence decoded at once with U+FFFD replacement
// (fuzz_util.h's independent reference; equal to the plain decode when that is valid UTF-8).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/stream_decoder.h"
#include "common/tokenizer.h"
#include "common/unicode_util.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  adore::fuzz::Input in(data, size);
  const uint8_t choice = in.Byte() % adore::fuzz::kNumVocabularies;
  const adore::Tokenizer& t = adore::fuzz::VocabularyFor(choice);
  const uint8_t flags = in.Byte();
  const bool skip_special = flags & 1;
  const bool byte_ids = choice == 3;

  adore::StreamDecoder decoder(t, skip_special);
  std::vector<int32_t> valid_ids;
  std::string streamed;
  const int32_t span = t.vocab_size() + 8;
  while (byte_ids ? !in.empty() : in.size() >= 2) {
    const int32_t id = byte_ids ? static_cast<int32_t>(in.Byte()) : static_cast<int32_t>(in.U16() % span) - 4;
    auto delta = decoder.Add(id);
    if (id < 0 || id >= t.vocab_size()) {
      FUZZ_CHECK(!delta.ok() && delta.status().code() == absl::StatusCode::kOutOfRange,
                 "Add(%d) outside the vocabulary of %d is not OUT_OF_RANGE", id, t.vocab_size());
      continue;
    }
    FUZZ_CHECK(delta.ok(), "Add(%d) failed: %s", id, std::string(delta.status().message()).c_str());
    FUZZ_CHECK(adore::IsValidUtf8(*delta), "delta after token #%zu (id %d) is not valid UTF-8",
               valid_ids.size(), id);
    valid_ids.push_back(id);
    streamed += *delta;
  }
  const std::string tail = decoder.Flush();
  FUZZ_CHECK(adore::IsValidUtf8(tail), "Flush() is not valid UTF-8");
  FUZZ_CHECK(!decoder.has_pending(), "bytes still pending after Flush()");
  streamed += tail;

  auto whole = t.Decode(valid_ids, skip_special);
  FUZZ_CHECK(whole.ok(), "Decode failed: %s", std::string(whole.status().message()).c_str());
  const std::string want = adore::fuzz::ReferenceUtf8Lossy(*whole);
  if (adore::IsValidUtf8(*whole)) {
    FUZZ_CHECK(want == *whole, "the reference changed valid UTF-8");
  }
  FUZZ_CHECK(streamed == want, "streamed text (%zu bytes) differs from the whole decode (%zu bytes, %zu raw)",
             streamed.size(), want.size(), whole->size());
  return 0;
}
