// Byte-level BPE tokenizer (GPT-2 family) reproducing Hugging Face `tokenizers`: added tokens are split
// out first (leftmost-longest), the rest is pre-tokenized, mapped to the byte-level alphabet and merged
// by rank.
#include "common/tokenizer.h"

#include <algorithm>
#include <array>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/chat_template.h"
#include "common/status.h"
#include "common/tokenizer_pretokenize.h"
#include "common/unicode_util.h"

namespace adore {
namespace {

constexpr int32_t kTokenTypeControl = 3;
constexpr int32_t kTokenTypeUserDefined = 4;

// A token matched verbatim in the input before pre-tokenization (HF "added tokens").
struct AddedToken {
  std::string text;
  int32_t id;
  bool special;  // control token: matched only when parse_special, dropped by skip_special
};

struct MergeRule {
  int32_t rank;
  int32_t result;  // id of the merged token
};

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

class BpeTokenizer final : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Build(const TokenizerSpec& spec);

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool parse_special,
                                              bool add_bos) const override;
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids, bool skip_special) const override;
  absl::StatusOr<std::string> TokenBytes(int32_t id) const override;
  absl::StatusOr<std::string> ApplyChatTemplate(const std::vector<ChatMessage>& messages,
                                                bool add_generation_prompt) const override;
  absl::StatusOr<int32_t> TokenToId(std::string_view token) const override;

  int32_t vocab_size() const override { return static_cast<int32_t>(token_bytes_.size()); }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  bool IsSpecial(int32_t id) const override {
    return id >= 0 && id < vocab_size() && is_special_[static_cast<size_t>(id)];
  }

 private:
  // Appends the BPE tokens of one pre-tokenized word (raw bytes) to *ids.
  void EncodeWord(std::string_view word, std::vector<int32_t>* ids) const;
  absl::Status EncodeOrdinary(std::string_view text, std::vector<int32_t>* ids) const;
  // Leftmost-longest added token starting exactly at text[pos], if any.
  const AddedToken* MatchAddedToken(std::string_view text, size_t pos, bool parse_special) const;

  absl::flat_hash_map<std::string, int32_t> token_to_id_;
  std::vector<std::string> token_bytes_;  // id -> decoded bytes
  std::vector<bool> is_special_;
  std::array<int32_t, 256> byte_token_;  // id of the one-byte token for each byte, -1 if absent
  absl::flat_hash_map<uint64_t, MergeRule> merges_;
  std::array<std::vector<AddedToken>, 256> added_by_first_byte_;  // each list longest first
  std::unique_ptr<PreTokenizer> pre_;
  absl::StatusOr<ChatTemplate> chat_template_ = absl::FailedPreconditionError("no chat template");
  int32_t bos_id_ = -1, eos_id_ = -1;
  bool add_bos_ = false;
};

absl::StatusOr<std::unique_ptr<Tokenizer>> BpeTokenizer::Build(const TokenizerSpec& spec) {
  if (spec.model != "gpt2") {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported tokenizer model '", spec.model, "' (only byte-level BPE 'gpt2')"));
  }
  const int32_t n = static_cast<int32_t>(spec.tokens.size());
  if (n == 0) return absl::InvalidArgumentError("tokenizer vocabulary is empty");
  if (!spec.token_types.empty() && spec.token_types.size() != spec.tokens.size()) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer has ", spec.tokens.size(), " tokens but ",
                                                   spec.token_types.size(), " token types"));
  }
  for (auto [name, id] : {std::pair{"bos", spec.bos_id},
                          {"eos", spec.eos_id},
                          {"pad", spec.pad_id},
                          {"unk", spec.unk_id}}) {
    if (id < -1 || id >= n) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " token id ", id, " is outside the vocabulary of ", n));
    }
  }
  auto t = std::unique_ptr<BpeTokenizer>(new BpeTokenizer());
  ADORE_ASSIGN_OR_RETURN(t->pre_, PreTokenizer::Create(spec.pre));
  t->bos_id_ = spec.bos_id;
  t->eos_id_ = spec.eos_id;
  t->add_bos_ = spec.add_bos;

  const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::Get();
  t->token_to_id_.reserve(spec.tokens.size());
  t->token_bytes_.resize(spec.tokens.size());
  t->is_special_.assign(spec.tokens.size(), false);
  for (int32_t id = 0; id < n; ++id) {
    const std::string& text = spec.tokens[id];
    if (!IsValidUtf8(text)) {
      return absl::InvalidArgumentError(absl::StrCat("token ", id, " is not valid UTF-8"));
    }
    // A text listed twice keeps its first id, as in llama.cpp (HF vocabularies are maps: no duplicates).
    t->token_to_id_.emplace(text, id);
    // HF's ByteLevel decoder maps a token through the alphabet, or keeps its text as-is when any code
    // point falls outside it (control tokens such as "<|im end|>" with a plain space).
    if (!alphabet.DecodeText(text, &t->token_bytes_[id])) t->token_bytes_[id] = text;
  }
  // Added tokens: control and user-defined types. Without types, the declared special ids stand in.
  std::vector<AddedToken> added;
  if (!spec.token_types.empty()) {
    for (int32_t id = 0; id < n; ++id) {
      const int32_t type = spec.token_types[id];
      if (type == kTokenTypeControl || type == kTokenTypeUserDefined) {
        added.push_back({spec.tokens[id], id, type == kTokenTypeControl});
      }
    }
  } else {
    for (int32_t id : {spec.bos_id, spec.eos_id, spec.pad_id, spec.unk_id}) {
      if (id >= 0) added.push_back({spec.tokens[id], id, true});
    }
  }
  for (AddedToken& a : added) {
    if (a.special) t->is_special_[a.id] = true;
    if (a.text.empty()) continue;
    auto& bucket = t->added_by_first_byte_[static_cast<uint8_t>(a.text[0])];
    const bool duplicate =
        std::any_of(bucket.begin(), bucket.end(), [&](const AddedToken& b) { return b.text == a.text; });
    if (!duplicate) bucket.push_back(std::move(a));
  }
  for (auto& bucket : t->added_by_first_byte_) {
    std::stable_sort(bucket.begin(), bucket.end(), [](const AddedToken& a, const AddedToken& b) {
      return a.text.size() > b.text.size();
    });
  }
  // HF builds words from the single-character tokens; a byte without one is dropped (no unk, no byte
  // fallback). SmolLM2 lacks 21 of them (e.g. 0x04, 0x1D, 0xC0), so such bytes vanish there too.
  for (int b = 0; b < 256; ++b) {
    auto it = t->token_to_id_.find(alphabet.Encode(static_cast<uint8_t>(b)));
    t->byte_token_[b] = it == t->token_to_id_.end() ? -1 : it->second;
  }
  t->merges_.reserve(spec.merges.size());
  for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
    const std::string& merge = spec.merges[rank];
    const size_t space = merge.find(' ', 1);
    if (space == std::string::npos || merge.find(' ', space + 1) != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("merge ", rank, " '", merge, "' is not 'a b'"));
    }
    const std::string left = merge.substr(0, space), right = merge.substr(space + 1);
    const auto l = t->token_to_id_.find(left), r = t->token_to_id_.find(right),
               m = t->token_to_id_.find(left + right);
    if (l == t->token_to_id_.end() || r == t->token_to_id_.end() || m == t->token_to_id_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("merge ", rank, " '", merge, "' names a token that is not in the vocabulary"));
    }
    // A repeated pair takes its last rank, as HF's merge map does.
    t->merges_[PairKey(l->second, r->second)] = {static_cast<int32_t>(rank), m->second};
  }
  t->chat_template_ = ChatTemplate::Parse(spec.chat_template);
  return std::unique_ptr<Tokenizer>(std::move(t));
}

const AddedToken* BpeTokenizer::MatchAddedToken(std::string_view text, size_t pos,
                                                bool parse_special) const {
  for (const AddedToken& a : added_by_first_byte_[static_cast<uint8_t>(text[pos])]) {
    if (a.special && !parse_special) continue;
    if (text.compare(pos, a.text.size(), a.text) == 0) return &a;
  }
  return nullptr;
}

void BpeTokenizer::EncodeWord(std::string_view word, std::vector<int32_t>* ids) const {
  // Symbols form a linked list over the word; merged-away symbols get id -1.
  struct Symbol {
    int32_t id;
    int32_t prev, next;
  };
  struct Candidate {
    int32_t rank;
    int32_t pos;  // left symbol
    int32_t left, right;
    // Lowest rank first, then leftmost: the order HF's heap pops merges in.
    bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap_storage;
  symbols.clear();
  for (char c : word) {
    const int32_t id = byte_token_[static_cast<uint8_t>(c)];
    if (id < 0) continue;
    const int32_t pos = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, pos - 1, pos + 1});
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;
  if (symbols.size() == 1) {
    ids->push_back(symbols[0].id);
    return;
  }
  // A binary heap over a reused buffer (std::priority_queue cannot hand its storage back).
  std::vector<Candidate>& heap = heap_storage;
  heap.clear();
  auto consider = [&](int32_t pos) {
    const int32_t next = symbols[pos].next;
    if (next < 0) return;
    auto it = merges_.find(PairKey(symbols[pos].id, symbols[next].id));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, pos, symbols[pos].id, symbols[next].id});
    std::push_heap(heap.begin(), heap.end());
  };
  for (int32_t pos = 0; pos + 1 < static_cast<int32_t>(symbols.size()); ++pos) consider(pos);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    // Stale entries: the left symbol was merged away or changed, or its right neighbour did.
    if (left.id != top.left || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    if (right.id != top.right) continue;
    left.id = merges_.find(PairKey(top.left, top.right))->second.result;
    right.id = -1;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  for (int32_t pos = 0; pos >= 0; pos = symbols[pos].next) ids->push_back(symbols[pos].id);
}

absl::Status BpeTokenizer::EncodeOrdinary(std::string_view text, std::vector<int32_t>* ids) const {
  thread_local std::vector<std::string_view> words;
  words.clear();
  ADORE_RETURN_IF_ERROR(pre_->Split(text, &words));
  for (std::string_view word : words) EncodeWord(word, ids);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> BpeTokenizer::Encode(std::string_view text, bool parse_special,
                                                          bool add_bos) const {
  if (const size_t bad = FirstInvalidUtf8Offset(text); bad != text.size()) {
    return absl::InvalidArgumentError(absl::StrCat("text is not valid UTF-8 at byte ", bad));
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_bos && add_bos_ && bos_id_ >= 0) ids.push_back(bos_id_);
  // Added tokens are cut out first; the text between them is tokenized independently, so the
  // pre-tokenizer regex never sees across an added token.
  size_t start = 0;
  for (size_t pos = 0; pos < text.size(); ++pos) {
    const AddedToken* added = MatchAddedToken(text, pos, parse_special);
    if (added == nullptr) continue;
    if (pos > start) ADORE_RETURN_IF_ERROR(EncodeOrdinary(text.substr(start, pos - start), &ids));
    ids.push_back(added->id);
    start = pos + added->text.size();
    pos = start - 1;
  }
  if (start < text.size()) ADORE_RETURN_IF_ERROR(EncodeOrdinary(text.substr(start), &ids));
  return ids;
}

absl::StatusOr<std::string> BpeTokenizer::Decode(const std::vector<int32_t>& ids,
                                                 bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) {
      return absl::OutOfRangeError(
          absl::StrCat("token id ", id, " is outside the vocabulary of ", vocab_size()));
    }
    if (skip_special && is_special_[id]) continue;
    out += token_bytes_[id];
  }
  return out;
}

absl::StatusOr<std::string> BpeTokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) {
    return absl::OutOfRangeError(
        absl::StrCat("token id ", id, " is outside the vocabulary of ", vocab_size()));
  }
  return token_bytes_[id];
}

absl::StatusOr<std::string> BpeTokenizer::ApplyChatTemplate(const std::vector<ChatMessage>& messages,
                                                            bool add_generation_prompt) const {
  if (!chat_template_.ok()) return chat_template_.status();
  return chat_template_->Render(messages, add_generation_prompt);
}

absl::StatusOr<int32_t> BpeTokenizer::TokenToId(std::string_view token) const {
  // Debian's Abseil is built with its own string_view, so heterogeneous lookup takes absl::string_view.
  auto it = token_to_id_.find(absl::string_view(token.data(), token.size()));
  if (it == token_to_id_.end()) {
    return absl::NotFoundError(absl::StrCat("no token '", std::string(token), "'"));
  }
  return it->second;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Create(const TokenizerSpec& spec) {
  return BpeTokenizer::Build(spec);
}

std::vector<int32_t> EndOfGenerationIds(const Tokenizer& tokenizer) {
  std::vector<int32_t> ids = {tokenizer.eos_id()};
  if (auto im_end = tokenizer.TokenToId("<|im_end|>"); im_end.ok() && *im_end != tokenizer.eos_id()) {
    ids.push_back(*im_end);
  }
  return ids;
}

}  // namespace adore
