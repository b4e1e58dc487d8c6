// GPT-2 style byte-level BPE tokenizer driven by a model's vocab, merges and pre-tokenizer, with special
// tokens and the chat template. Output is byte-identical to Hugging Face `tokenizers` for the same model.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_weights.h"

namespace adore {

struct ChatMessage {
  std::string role;     // "system", "user", "assistant"
  std::string content;
};

class Tokenizer {
 public:
  // INVALID_ARGUMENT when the spec is unusable (unknown model type or pre-tokenizer, a merge naming a
  // token not in the vocab, ...).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(const TokenizerSpec& spec);
  virtual ~Tokenizer() = default;

  // Encodes UTF-8 text. Special tokens written in the text (e.g. "<|im_start|>") map to their ids when
  // `parse_special` is true, as HF does by default. Adds BOS only when `add_bos` and the model wants it.
  // INVALID_ARGUMENT on invalid UTF-8.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool parse_special = true,
                                                      bool add_bos = false) const = 0;
  // Decodes ids to bytes (may end inside a UTF-8 sequence; see TokenText for streaming).
  // Control tokens are rendered as their text unless `skip_special`. OUT_OF_RANGE on a bad id.
  virtual absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids,
                                             bool skip_special = false) const = 0;
  // The raw bytes of one token (what it contributes to the decoded text).
  virtual absl::StatusOr<std::string> TokenBytes(int32_t id) const = 0;
  // The id of the token whose vocabulary text is exactly `token` (e.g. "<|im_end|>" for a stop token).
  // NOT_FOUND when there is none.
  virtual absl::StatusOr<int32_t> TokenToId(std::string_view token) const = 0;

  // Renders messages with the model's chat template (ChatML for SmolLM2), ending with the assistant
  // prompt when `add_generation_prompt`. FAILED_PRECONDITION when the model has no template this
  // implementation understands.
  virtual absl::StatusOr<std::string> ApplyChatTemplate(const std::vector<ChatMessage>& messages,
                                                        bool add_generation_prompt = true) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual bool IsSpecial(int32_t id) const = 0;  // control tokens (EOS, <|im_end|>, ...)
};

// The tokens that end a generation: EOS, and the ChatML end of turn `<|im_end|>` when the vocabulary has
// it and it differs from EOS.
std::vector<int32_t> EndOfGenerationIds(const Tokenizer& tokenizer);

}  // namespace adore
