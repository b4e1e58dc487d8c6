// PCRE2 implementation of the pre-tokenizer regexes (see tokenizer_pretokenize.h).
#include "common/tokenizer_pretokenize.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/status.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace adore {
namespace {

// HF compiles these patterns with Oniguruma, whose Unicode \s is the White_Space property. PCRE2's UCP
// \s is \p{Z} plus \t..\r, which lacks U+0085 (NEL), so the class is spelled out instead of using \s /
// \S.
#define ADORE_WS "\\t-\\r\\x{85}\\p{Z}"

constexpr char kGpt2Pattern[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" ADORE_WS
                                "\\p{L}\\p{N}]+"
                                "|[" ADORE_WS "]+(?![^" ADORE_WS "])|[" ADORE_WS "]+";

constexpr char kLlama3Pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
    "| ?[^" ADORE_WS "\\p{L}\\p{N}]+[\\r\\n]*|[" ADORE_WS
    "]*[\\r\\n]+"
    "|[" ADORE_WS "]+(?![^" ADORE_WS "])|[" ADORE_WS "]+";

constexpr char kDigitPattern[] = "\\p{N}";

#undef ADORE_WS

// Per-thread match state: pcre2_match needs writable match data, and the JIT a stack larger than its
// 32 KiB default for long whitespace runs under the (?!...) lookahead.
struct MatchScratch {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  MatchScratch() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, nullptr);
    if (context != nullptr && jit_stack != nullptr) pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

MatchScratch& Scratch() {
  thread_local MatchScratch scratch;
  return scratch;
}

}  // namespace

struct PreTokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }

  static absl::StatusOr<std::unique_ptr<Regex>> Compile(const char* pattern) {
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    auto re = std::make_unique<Regex>();
    re->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                             PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
    if (re->code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      return absl::InternalError(absl::StrCat("pre-tokenizer regex does not compile at offset ",
                                              error_offset, ": ", reinterpret_cast<char*>(message)));
    }
    // The JIT is an optimization only: without it (e.g. no JIT support on the platform) the
    // interpreter gives the same matches.
    pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE);
    return re;
  }
};

PreTokenizer::~PreTokenizer() = default;

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::Create(std::string_view pre) {
  std::unique_ptr<PreTokenizer> p(new PreTokenizer());
  const char* pattern = nullptr;
  if (pre == "gpt2" || pre == "default") {
    pattern = kGpt2Pattern;
  } else if (pre == "smollm") {
    pattern = kGpt2Pattern;
    auto digits = Regex::Compile(kDigitPattern);
    if (!digits.ok()) return digits.status();
    p->digits_ = std::move(digits).value();
  } else if (pre == "llama-bpe" || pre == "llama3") {
    pattern = kLlama3Pattern;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported pre-tokenizer '", std::string(pre),
                     "' (known: gpt2, default, smollm, llama-bpe, llama3)"));
  }
  auto words = Regex::Compile(pattern);
  if (!words.ok()) return words.status();
  p->words_ = std::move(words).value();
  return p;
}

// Finds the first match of `re` in `text` at or after `start`; *found is false when there is none.
absl::Status PreTokenizer::FindNext(const Regex& re, std::string_view text, size_t start, bool* found,
                                    size_t* match_begin, size_t* match_end) {
  MatchScratch& scratch = Scratch();
  if (scratch.data == nullptr) return absl::InternalError("pcre2: cannot allocate match data");
  // The subject is exactly `text`, so lookaheads stop at its end as they do on HF's split pieces.
  const int rc = pcre2_match(re.code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), start,
                             PCRE2_NO_UTF_CHECK, scratch.data, scratch.context);
  if (rc == PCRE2_ERROR_NOMATCH) {
    *found = false;
    return absl::OkStatus();
  }
  if (rc < 0) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(rc, message, sizeof(message));
    return absl::InternalError(
        absl::StrCat("pre-tokenizer regex failed: ", reinterpret_cast<char*>(message)));
  }
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(scratch.data);
  *found = true;
  *match_begin = ovector[0];
  *match_end = ovector[1];
  return absl::OkStatus();
}

absl::Status PreTokenizer::SplitWithRegex(const Regex& re, std::string_view text,
                                          std::vector<std::string_view>* words) {
  size_t start = 0;
  while (start < text.size()) {
    bool found = false;
    size_t match_begin = 0, match_end = 0;
    ADORE_RETURN_IF_ERROR(FindNext(re, text, start, &found, &match_begin, &match_end));
    if (!found) break;
    // HF's Isolated split keeps the unmatched stretch before a match as a word of its own.
    if (match_begin > start) words->push_back(text.substr(start, match_begin - start));
    if (match_end == match_begin) {
      // None of the patterns can match empty; guard against looping anyway by moving one code point on.
      match_end = match_begin + 1;
      while (match_end < text.size() && (static_cast<uint8_t>(text[match_end]) & 0xC0) == 0x80) {
        ++match_end;
      }
    }
    words->push_back(text.substr(match_begin, match_end - match_begin));
    start = match_end;
  }
  if (start < text.size()) words->push_back(text.substr(start));
  return absl::OkStatus();
}

absl::Status PreTokenizer::Split(std::string_view text, std::vector<std::string_view>* words) const {
  if (digits_ == nullptr) return SplitWithRegex(*words_, text, words);
  // Digits(individual_digits=true): each numeric code point becomes a word, and the word regex runs on
  // the stretches between them without seeing across.
  size_t start = 0;
  while (start < text.size()) {
    bool found = false;
    size_t digit_begin = 0, digit_end = 0;
    ADORE_RETURN_IF_ERROR(FindNext(*digits_, text, start, &found, &digit_begin, &digit_end));
    if (!found) break;
    if (digit_begin > start) {
      ADORE_RETURN_IF_ERROR(SplitWithRegex(*words_, text.substr(start, digit_begin - start), words));
    }
    words->push_back(text.substr(digit_begin, digit_end - digit_begin));
    start = digit_end;
  }
  if (start < text.size()) ADORE_RETURN_IF_ERROR(SplitWithRegex(*words_, text.substr(start), words));
  return absl::OkStatus();
}

}  // namespace adore
