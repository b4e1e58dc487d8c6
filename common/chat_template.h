// Chat templates without a Jinja engine: recognizes the ChatML family
// (`<|im_start|>role\ncontent<|im_end|>`, optionally with a default system prompt) by the structure of
// its tags, and renders it exactly as transformers' apply_chat_template does (Jinja with trim_blocks and
// lstrip_blocks).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tokenizer.h"

namespace adore {

class ChatTemplate {
 public:
  // Recognizes templates of the shape
  //   {% for message in messages %}
  //     [{% if loop.first and messages[0]['role'] != 'system' %}{{ '<default system turn>' }}{% endif
  //     %}]
  //     {{ <'literal' | message['role'] | message['content'], joined by +> }}
  //   {% endfor %}
  //   [{% if add_generation_prompt %}{{ '<assistant prompt>' }}{% endif %}]
  // with any whitespace control, using `<|im_start|>`. FAILED_PRECONDITION for anything else (including
  // text outside tags that Jinja would emit), naming what was not understood.
  static absl::StatusOr<ChatTemplate> Parse(std::string_view jinja);

  std::string Render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

  // One piece of the per-message expression.
  struct Part {
    enum Kind { kLiteral, kRole, kContent } kind;
    std::string text;  // for kLiteral
  };

 private:
  std::optional<std::string> default_system_;  // emitted first when messages[0] is not a system turn
  std::vector<Part> message_parts_;
  std::optional<std::string> generation_prompt_;  // emitted last when add_generation_prompt
};

}  // namespace adore
