// Pre-tokenizers for byte-level BPE: split text into the words that BPE merges never cross, matching the
// Hugging Face `tokenizers` pipeline that a GGUF `tokenizer.ggml.pre` name stands for.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace adore {

class PreTokenizer {
 public:
  // `pre` is tokenizer.ggml.pre:
  //   "gpt2", "default"     GPT-2 regex (HF ByteLevel(use_regex=true))
  //   "smollm"              every \p{N} code point isolated (HF Digits(individual_digits=true)), then
  //   GPT-2 "llama-bpe", "llama3" Llama-3 regex (HF Split(Isolated) + ByteLevel(use_regex=false))
  // INVALID_ARGUMENT for any other name.
  static absl::StatusOr<std::unique_ptr<PreTokenizer>> Create(std::string_view pre);
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Appends the words of `text` (views into it, in order, covering it exactly) to *words. `text` must be
  // valid UTF-8 (not re-checked). Thread-safe. INTERNAL if the regex engine fails (e.g. out of memory).
  absl::Status Split(std::string_view text, std::vector<std::string_view>* words) const;

 private:
  struct Regex;
  PreTokenizer() = default;
  static absl::Status FindNext(const Regex& re, std::string_view text, size_t start, bool* found,
                               size_t* match_begin, size_t* match_end);
  static absl::Status SplitWithRegex(const Regex& re, std::string_view text,
                                     std::vector<std::string_view>* words);

  std::unique_ptr<Regex> digits_;  // set when digits are isolated before the word regex runs
  std::unique_ptr<Regex> words_;
};

}  // namespace adore
