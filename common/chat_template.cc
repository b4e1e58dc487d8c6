// ChatML template recognition and rendering (see chat_template.h).
#include "common/chat_template.h"

#include <cctype>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace adore {
namespace {

// One {{ ... }} or {% ... %} tag, reduced to tokens.
struct Tag {
  bool is_block = false;          // {% %} (else {{ }})
  std::vector<std::string> toks;  // string literals keep their quotes: 'value' (unescaped value)
};

absl::Status NotUnderstood(std::string_view what) {
  return absl::FailedPreconditionError(absl::StrCat(
      "chat template not supported (only ChatML-style templates are rendered): ", std::string(what)));
}

bool IsIdentStart(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool IsIdentChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// Splits a tag body into tokens. String literals are unescaped as Jinja (Python) does and re-quoted with
// single quotes, so 'a' and "a" compare equal; `x.y` becomes `x [ 'y' ]`, as Jinja treats them alike.
absl::StatusOr<std::vector<std::string>> LexTagBody(std::string_view body) {
  std::vector<std::string> toks;
  size_t i = 0;
  while (i < body.size()) {
    const char c = body[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
    } else if (c == '\'' || c == '"') {
      std::string value;
      size_t j = i + 1;
      while (j < body.size() && body[j] != c) {
        if (body[j] == '\\' && j + 1 < body.size()) {
          const char e = body[j + 1];
          switch (e) {
            case 'n':
              value += '\n';
              break;
            case 't':
              value += '\t';
              break;
            case 'r':
              value += '\r';
              break;
            case '\\':
            case '\'':
            case '"':
              value += e;
              break;
            default:
              return NotUnderstood(absl::StrCat("string escape \\", std::string(1, e)));
          }
          j += 2;
        } else {
          value += body[j++];
        }
      }
      if (j >= body.size()) return NotUnderstood("unterminated string literal");
      toks.push_back(absl::StrCat("'", value, "'"));
      i = j + 1;
    } else if (IsIdentStart(c) || std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      while (j < body.size() && IsIdentChar(body[j])) ++j;
      toks.emplace_back(body.substr(i, j - i));
      i = j;
    } else if (c == '.' && i + 1 < body.size() && IsIdentStart(body[i + 1])) {
      size_t j = i + 1;
      while (j < body.size() && IsIdentChar(body[j])) ++j;
      toks.push_back("[");
      toks.push_back(absl::StrCat("'", std::string(body.substr(i + 1, j - i - 1)), "'"));
      toks.push_back("]");
      i = j;
    } else if (i + 1 < body.size() && (body.substr(i, 2) == "!=" || body.substr(i, 2) == "==")) {
      toks.emplace_back(body.substr(i, 2));
      i += 2;
    } else {
      toks.emplace_back(1, c);
      ++i;
    }
  }
  return toks;
}

std::string Canonical(const std::vector<std::string>& toks) { return absl::StrJoin(toks, " "); }

// Canonical form of a block tag written in template syntax, e.g. "if add_generation_prompt".
std::string CanonicalSource(std::string_view source) {
  auto toks = LexTagBody(source);
  return toks.ok() ? Canonical(*toks) : std::string();
}

bool IsLiteral(const std::string& tok) { return tok.size() >= 2 && tok.front() == '\''; }
std::string LiteralValue(const std::string& tok) { return tok.substr(1, tok.size() - 2); }

// Whitespace Jinja strips from the template text between two tags: `-` markers strip all of it,
// trim_blocks drops the newline after a block tag, lstrip_blocks the indentation before one.
struct TagEdges {
  bool block = false, trim_left = false, trim_right = false, no_lstrip = false;
};

std::string_view StripText(std::string_view text, const TagEdges* before, const TagEdges* after) {
  auto is_space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  // Both cuts are decided on the original text (lstrip looks for the line start even when trim_blocks
  // removed the newline before it), then applied together.
  size_t begin = 0, end = text.size();
  if (before != nullptr && before->trim_right) {
    while (begin < text.size() && is_space(text[begin])) ++begin;
  } else if (before != nullptr && before->block && !text.empty() && text.front() == '\n') {
    begin = 1;
  }
  if (after != nullptr && after->trim_left) {
    while (end > 0 && is_space(text[end - 1])) --end;
  } else if (after != nullptr && after->block && !after->no_lstrip) {
    size_t indent = end;
    while (indent > 0 && (text[indent - 1] == ' ' || text[indent - 1] == '\t')) --indent;
    // Only indentation at the start of a line is stripped, not spaces after other text or a tag.
    if ((indent == 0 && before == nullptr) || (indent > 0 && text[indent - 1] == '\n')) end = indent;
  }
  return begin < end ? text.substr(begin, end - begin) : std::string_view();
}

// Splits the template into tags; fails if any text outside tags survives whitespace control.
absl::StatusOr<std::vector<Tag>> LexTemplate(std::string_view jinja) {
  std::vector<Tag> tags;
  std::vector<TagEdges> edges;
  std::vector<std::string_view> texts;  // texts[i] precedes tags[i]; one more trails the last tag
  size_t pos = 0;
  while (true) {
    size_t open = jinja.find('{', pos);
    while (open != std::string_view::npos && open + 1 < jinja.size() && jinja[open + 1] != '{' &&
           jinja[open + 1] != '%' && jinja[open + 1] != '#') {
      open = jinja.find('{', open + 1);
    }
    if (open == std::string_view::npos || open + 1 >= jinja.size()) {
      texts.push_back(jinja.substr(pos));
      break;
    }
    texts.push_back(jinja.substr(pos, open - pos));
    const char kind = jinja[open + 1];
    const std::string_view close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t end = open + 2;
    char quote = 0;
    while (end + 1 < jinja.size()) {
      const char c = jinja[end];
      if (quote != 0) {
        if (c == '\\') {
          ++end;  // an escaped character cannot close the literal
        } else if (c == quote) {
          quote = 0;
        }
      } else if (kind != '#' && (c == '\'' || c == '"')) {
        quote = c;
      } else if (jinja.substr(end, 2) == close) {
        break;
      }
      ++end;
    }
    if (end + 1 >= jinja.size()) return NotUnderstood("unterminated tag");
    std::string_view body = jinja.substr(open + 2, end - open - 2);
    TagEdges e;
    e.block = kind != '{';
    if (!body.empty() && (body.front() == '-' || body.front() == '+')) {
      e.trim_left = body.front() == '-';
      e.no_lstrip = body.front() == '+';
      body.remove_prefix(1);
    }
    if (!body.empty() && (body.back() == '-' || body.back() == '+')) {
      e.trim_right = body.back() == '-';
      body.remove_suffix(1);
    }
    edges.push_back(e);
    Tag tag;
    tag.is_block = kind == '%';
    if (kind != '#') {  // comments render nothing but still take part in whitespace control
      auto toks = LexTagBody(body);
      if (!toks.ok()) return toks.status();
      tag.toks = std::move(toks).value();
    }
    tags.push_back(std::move(tag));
    pos = end + 2;
  }
  for (size_t i = 0; i < texts.size(); ++i) {
    const TagEdges* before = i > 0 ? &edges[i - 1] : nullptr;
    const TagEdges* after = i < edges.size() ? &edges[i] : nullptr;
    if (!StripText(texts[i], before, after).empty()) {
      return NotUnderstood(absl::StrCat("text outside tags: \"", std::string(texts[i]), "\""));
    }
  }
  std::vector<Tag> kept;
  for (Tag& t : tags) {
    if (t.is_block || !t.toks.empty()) kept.push_back(std::move(t));  // drop comments
  }
  return kept;
}

// An output tag `{{ a + b + ... }}` whose operands are literals or message['role'] / message['content'].
absl::StatusOr<std::vector<ChatTemplate::Part>> ParseConcat(const Tag& tag) {
  if (tag.is_block) return NotUnderstood(absl::StrCat("unexpected {% ", Canonical(tag.toks), " %}"));
  std::vector<ChatTemplate::Part> parts;
  std::vector<std::string> operand;
  auto flush = [&]() -> absl::Status {
    const std::string c = Canonical(operand);
    ChatTemplate::Part part;
    if (operand.size() == 1 && IsLiteral(operand[0])) {
      if (!parts.empty() && parts.back().kind == ChatTemplate::Part::kLiteral) {
        parts.back().text += LiteralValue(operand[0]);
        operand.clear();
        return absl::OkStatus();
      }
      part = {ChatTemplate::Part::kLiteral, LiteralValue(operand[0])};
    } else if (c == CanonicalSource("message['role']")) {
      part = {ChatTemplate::Part::kRole, ""};
    } else if (c == CanonicalSource("message['content']")) {
      part = {ChatTemplate::Part::kContent, ""};
    } else {
      return NotUnderstood(absl::StrCat("expression {{ ", Canonical(tag.toks), " }}"));
    }
    parts.push_back(std::move(part));
    operand.clear();
    return absl::OkStatus();
  };
  for (const std::string& t : tag.toks) {
    if (t == "+") {
      if (auto s = flush(); !s.ok()) return s;
    } else {
      operand.push_back(t);
    }
  }
  if (auto s = flush(); !s.ok()) return s;
  return parts;
}

// A `{{ 'literal' }}` output tag.
absl::StatusOr<std::string> ParseLiteral(const Tag& tag) {
  auto parts = ParseConcat(tag);
  if (!parts.ok()) return parts.status();
  if (parts->size() != 1 || (*parts)[0].kind != ChatTemplate::Part::kLiteral) {
    return NotUnderstood(absl::StrCat("expected a string literal, got {{ ", Canonical(tag.toks), " }}"));
  }
  return (*parts)[0].text;
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(std::string_view jinja) {
  if (jinja.empty()) return absl::FailedPreconditionError("the model has no chat template");
  if (jinja.find("<|im_start|>") == std::string_view::npos) {
    return NotUnderstood("no <|im_start|> (not a ChatML template)");
  }
  auto lexed = LexTemplate(jinja);
  if (!lexed.ok()) return lexed.status();
  const std::vector<Tag>& tags = *lexed;
  size_t i = 0;
  auto at_block = [&](std::string_view source) {
    return i < tags.size() && tags[i].is_block && Canonical(tags[i].toks) == CanonicalSource(source);
  };
  auto expect_block = [&](std::string_view source) -> absl::Status {
    if (at_block(source)) {
      ++i;
      return absl::OkStatus();
    }
    if (i >= tags.size()) return NotUnderstood(absl::StrCat("missing {% ", std::string(source), " %}"));
    return NotUnderstood(absl::StrCat("expected {% ", std::string(source), " %} at tag ", i, ", got ",
                                      Canonical(tags[i].toks)));
  };

  ChatTemplate t;
  if (auto s = expect_block("for message in messages"); !s.ok()) return s;
  if (at_block("if loop.first and messages[0]['role'] != 'system'")) {
    ++i;
    if (i >= tags.size()) return NotUnderstood("template ends inside the system-prompt block");
    auto system = ParseLiteral(tags[i++]);
    if (!system.ok()) return system.status();
    t.default_system_ = std::move(system).value();
    if (auto s = expect_block("endif"); !s.ok()) return s;
  }
  if (i >= tags.size()) return NotUnderstood("template ends before the message expression");
  auto parts = ParseConcat(tags[i++]);
  if (!parts.ok()) return parts.status();
  t.message_parts_ = std::move(parts).value();
  if (auto s = expect_block("endfor"); !s.ok()) return s;
  if (at_block("if add_generation_prompt")) {
    ++i;
    if (i >= tags.size()) return NotUnderstood("template ends inside the generation-prompt block");
    auto prompt = ParseLiteral(tags[i++]);
    if (!prompt.ok()) return prompt.status();
    t.generation_prompt_ = std::move(prompt).value();
    if (auto s = expect_block("endif"); !s.ok()) return s;
  }
  if (i != tags.size()) return NotUnderstood(absl::StrCat("unexpected tag ", Canonical(tags[i].toks)));
  return t;
}

std::string ChatTemplate::Render(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt) const {
  std::string out;
  for (size_t m = 0; m < messages.size(); ++m) {
    if (m == 0 && default_system_.has_value() && messages[0].role != "system") out += *default_system_;
    for (const Part& part : message_parts_) {
      switch (part.kind) {
        case Part::kLiteral:
          out += part.text;
          break;
        case Part::kRole:
          out += messages[m].role;
          break;
        case Part::kContent:
          out += messages[m].content;
          break;
      }
    }
  }
  if (add_generation_prompt && generation_prompt_.has_value()) out += *generation_prompt_;
  return out;
}

}  // namespace adore
