// Fuzz target: the BPE tokenizer. Input: byte 0 picks the vocabulary (fuzz_util.h: SmolLM2's from the model
// file, two tiny ones, a byte-level one), byte 1 the operation and flags, the rest is its argument:
//   Encode of arbitrary bytes: INVALID_ARGUMENT exactly when they are not valid UTF-8; otherwise ids inside
//     the vocabulary that decode back to the text minus the bytes the vocabulary has no token for;
//   Decode of arbitrary id lists: OUT_OF_RANGE exactly when an id is outside the vocabulary; otherwise the
//     concatenation of the tokens' bytes (control tokens dropped with skip_special);
//   chat: messages cut from the rest, rendered by the chat template and encoded;
//   template: the rest (up to a NUL) parsed as a chat template (ChatTemplate::Parse: Jinja text from a model
//     file) and, when recognized, rendered.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/chat_template.h"
#include "common/tokenizer.h"
#include "common/unicode_util.h"
#include "fuzz/fuzz_util.h"

namespace {

using adore::Tokenizer;

// `text` without the bytes that have no single-byte token in the vocabulary (BPE drops them, as HF does).
std::string WithoutUnknownBytes(const Tokenizer& t, std::string_view text) {
  static thread_local const Tokenizer* cached = nullptr;
  static thread_local bool known[256];
  if (cached != &t) {
    const adore::ByteLevelAlphabet& a = adore::ByteLevelAlphabet::Get();
    for (int b = 0; b < 256; ++b) known[b] = t.TokenToId(a.Encode(static_cast<uint8_t>(b))).ok();
    cached = &t;
  }
  std::string out;
  for (char c : text) {
    if (known[static_cast<uint8_t>(c)]) out.push_back(c);
  }
  return out;
}

void CheckEncode(const Tokenizer& t, std::string_view text, bool parse_special, bool add_bos) {
  auto ids = t.Encode(text, parse_special, add_bos);
  if (!adore::IsValidUtf8(text)) {
    FUZZ_CHECK(!ids.ok() && ids.status().code() == absl::StatusCode::kInvalidArgument,
               "invalid UTF-8 not refused with INVALID_ARGUMENT");
    return;
  }
  FUZZ_CHECK(ids.ok(), "Encode of valid UTF-8 failed: %s", std::string(ids.status().message()).c_str());
  size_t first = 0;
  if (add_bos && !ids->empty() && (*ids)[0] == t.bos_id() && t.bos_id() >= 0) {
    // BOS is prepended only when the model asks for it; a text starting with the BOS text also gives it.
    first = 1;
  }
  for (int32_t id : *ids) FUZZ_CHECK(id >= 0 && id < t.vocab_size(), "id %d outside the vocabulary", id);
  std::vector<int32_t> body(ids->begin() + static_cast<std::ptrdiff_t>(first), ids->end());
  auto back = t.Decode(body, /*skip_special=*/false);
  FUZZ_CHECK(back.ok(), "Decode of Encode's ids failed: %s", std::string(back.status().message()).c_str());
  // With a BOS prepended and the text itself starting with the BOS text, the first id may be either.
  std::string want = WithoutUnknownBytes(t, text);
  if (first == 1 && *back != want) {
    auto all = t.Decode(*ids, false);
    FUZZ_CHECK(all.ok() && *all == want, "round trip (with BOS) differs");
    return;
  }
  FUZZ_CHECK(*back == want, "round trip differs: %zu bytes in, %zu expected, %zu decoded", text.size(),
             want.size(), back->size());
}

void CheckDecode(const Tokenizer& t, adore::fuzz::Input& in, bool skip_special) {
  // Ids of 16 bits, shifted so that a few fall outside [0, vocab) on both sides; the SmolLM2 vocabulary
  // (49152) is covered by 16 bits.
  const int32_t span = t.vocab_size() + 8;
  std::vector<int32_t> ids;
  bool all_valid = true;
  std::string want;
  while (in.size() >= 2) {
    const int32_t id = static_cast<int32_t>(in.U16() % span) - 4;
    ids.push_back(id);
    if (id < 0 || id >= t.vocab_size()) {
      all_valid = false;
      FUZZ_CHECK(!t.TokenBytes(id).ok(), "TokenBytes(%d) accepted an id outside the vocabulary", id);
      continue;
    }
    auto bytes = t.TokenBytes(id);
    FUZZ_CHECK(bytes.ok(), "TokenBytes(%d) failed", id);
    if (!(skip_special && t.IsSpecial(id))) want += *bytes;
  }
  auto got = t.Decode(ids, skip_special);
  if (!all_valid) {
    FUZZ_CHECK(!got.ok() && got.status().code() == absl::StatusCode::kOutOfRange,
               "Decode of an id outside the vocabulary is not OUT_OF_RANGE");
    return;
  }
  FUZZ_CHECK(got.ok(), "Decode failed: %s", std::string(got.status().message()).c_str());
  FUZZ_CHECK(*got == want, "Decode differs from the tokens' bytes");
}

void CheckChat(const Tokenizer& t, std::string_view rest) {
  // Messages separated by NUL; each starts with a role byte.
  static const char* kRoles[] = {"system", "user", "assistant", "tool", ""};
  std::vector<adore::ChatMessage> messages;
  size_t start = 0;
  while (start < rest.size() && messages.size() < 16) {
    size_t end = rest.find('\0', start);
    if (end == std::string_view::npos) end = rest.size();
    std::string_view m = rest.substr(start, end - start);
    if (!m.empty()) {
      const char* role = kRoles[static_cast<uint8_t>(m[0]) % 5];
      messages.push_back({role, std::string(m.substr(1))});
    }
    start = end + 1;
  }
  for (bool gen : {true, false}) {
    auto text = t.ApplyChatTemplate(messages, gen);
    if (!text.ok()) continue;
    auto ids = t.Encode(*text, /*parse_special=*/true, /*add_bos=*/true);
    bool valid = true;
    for (const auto& m : messages) valid = valid && adore::IsValidUtf8(m.content) && adore::IsValidUtf8(m.role);
    if (valid) {
      FUZZ_CHECK(ids.ok(), "encoding a rendered chat of valid UTF-8 failed: %s",
                 std::string(ids.status().message()).c_str());
    }
  }
}

void CheckTemplate(std::string_view rest) {
  const size_t nul = rest.find('\0');
  auto tmpl = adore::ChatTemplate::Parse(rest.substr(0, nul));
  if (!tmpl.ok()) {
    FUZZ_CHECK(tmpl.status().code() == absl::StatusCode::kFailedPrecondition,
               "a template refused with %s instead of FAILED_PRECONDITION", tmpl.status().ToString().c_str());
    return;
  }
  const std::string content = nul == std::string_view::npos ? "hi" : std::string(rest.substr(nul + 1));
  for (bool gen : {true, false}) {
    (void)tmpl->Render({{"user", content}}, gen);
    (void)tmpl->Render({{"system", "s"}, {"user", content}, {"assistant", "a"}}, gen);
    (void)tmpl->Render({}, gen);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  adore::fuzz::Input in(data, size);
  const Tokenizer& t = adore::fuzz::VocabularyFor(in.Byte());
  const uint8_t op = in.Byte();
  const bool flag_a = op & 0x10, flag_b = op & 0x20;
  switch (op % 4) {
    case 0:
    case 1:
      CheckEncode(t, in.Rest(), /*parse_special=*/flag_a, /*add_bos=*/flag_b);
      break;
    case 2:
      CheckDecode(t, in, /*skip_special=*/flag_a);
      break;
    case 3: {
      std::string_view rest = in.Rest();
      if (op & 0x40) {
        CheckTemplate(rest);
      } else {
        CheckChat(t, rest);
        (void)t.TokenToId(rest);
      }
      break;
    }
  }
  return 0;
}
