// UTF-8 helpers for the tokenizer: strict validation, code point encode/decode, and the GPT-2 byte-level
// alphabet that maps every byte to a printable code point so byte strings can live in a text vocab.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace adore {

// True when `s` is well-formed UTF-8 (no overlongs, surrogates, or code points above U+10FFFF), i.e.
// what a Python `str` or a Rust `&str` can hold.
bool IsValidUtf8(std::string_view s);

// Byte offset of the first invalid sequence in `s`, or s.size() when valid. Used for error messages.
size_t FirstInvalidUtf8Offset(std::string_view s);

// Decodes the code point starting at s[*pos] and advances *pos past it. `s` must be valid UTF-8.
uint32_t NextCodePoint(std::string_view s, size_t* pos);

// Appends the UTF-8 encoding of `cp` (must be <= 0x10FFFF).
void AppendUtf8(uint32_t cp, std::string* out);

// The GPT-2 byte-level alphabet: printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100.. in byte order (so a space is "Ġ", U+0120). Both directions are precomputed once.
class ByteLevelAlphabet {
 public:
  static const ByteLevelAlphabet& Get();

  // UTF-8 text of the code point standing for byte `b`.
  const std::string& Encode(uint8_t b) const { return byte_to_text_[b]; }
  // Byte-level text of a whole byte string.
  std::string EncodeBytes(std::string_view bytes) const;
  // The byte a code point stands for, or -1 when it is not in the alphabet.
  int DecodeCodePoint(uint32_t cp) const { return cp < cp_to_byte_.size() ? cp_to_byte_[cp] : -1; }
  // Maps byte-level text back to bytes; false (leaving *out unspecified) when any code point is not in
  // the alphabet.
  bool DecodeText(std::string_view text, std::string* out) const;

 private:
  ByteLevelAlphabet();
  std::array<std::string, 256> byte_to_text_;
  std::array<int16_t, 324> cp_to_byte_;  // the alphabet's code points all lie below U+0144
};

}  // namespace adore
