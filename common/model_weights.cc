// LoadModelWeights: turns a GGUF file or a Hugging Face Llama checkpoint directory into one canonical
// form (GGUF tensor names, GGUF q/k row order, f32), checking every tensor against the config.
#include "common/model_weights.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/gguf.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace adore {
namespace {

using Json = nlohmann::json;
namespace fs = std::filesystem;

// Token types as numbered by llama.cpp's llama_token_type / gguf TokenType.
constexpr int32_t kTokenNormal = 1;
constexpr int32_t kTokenControl = 3;
constexpr int32_t kTokenUserDefined = 4;
constexpr int32_t kTokenUnused = 5;

// Architectures whose tensors and hyper-parameter keys match Llama's (modulo the `<arch>.` prefix).
const std::set<std::string>& SupportedArchitectures() {
  static const std::set<std::string> kArchs = {"llama", "mistral", "qwen2"};
  return kArchs;
}

std::string ShapeString(const std::vector<int64_t>& s) {
  return absl::StrCat("[", absl::StrJoin(s, ", "), "]");
}

// Prefixes a status message with the file it is about, keeping the code.
absl::Status WithFile(const std::string& path, const absl::Status& s) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
}

// Validate() allows up to 2^30 layers; a corrupt count must not make us list billions of tensor names
// before noticing they are absent, so bound it by what the checkpoint actually holds.
absl::Status CheckLayerCount(const std::string& path, const ModelConfig& c, size_t num_tensors) {
  if (static_cast<uint64_t>(c.num_layers) * 9 > num_tensors) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: num_layers = %d needs %d layer tensors but the checkpoint has only %d tensors",
                        path, c.num_layers, c.num_layers * 9, num_tensors));
  }
  return absl::OkStatus();
}

struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;  // row-major, outermost first
};

std::vector<ExpectedTensor> ExpectedTensors(const ModelConfig& c) {
  const int64_t d = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  const int64_t ff = c.intermediate_size;
  std::vector<ExpectedTensor> out = {{"token_embd.weight", {c.vocab_size, d}}, {"output_norm.weight", {d}}};
  if (!c.tie_embeddings) out.push_back({"output.weight", {c.vocab_size, d}});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    auto name = [i](const char* s) { return absl::StrCat("blk.", i, ".", s, ".weight"); };
    out.push_back({name("attn_norm"), {d}});
    out.push_back({name("attn_q"), {q, d}});
    out.push_back({name("attn_k"), {kv, d}});
    out.push_back({name("attn_v"), {kv, d}});
    out.push_back({name("attn_output"), {d, q}});
    out.push_back({name("ffn_norm"), {d}});
    out.push_back({name("ffn_gate"), {ff, d}});
    out.push_back({name("ffn_up"), {ff, d}});
    out.push_back({name("ffn_down"), {d, ff}});
  }
  return out;
}

absl::Status CheckShape(const std::string& path, const std::string& name, const std::vector<int64_t>& got,
                        const std::vector<int64_t>& want) {
  if (got == want) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat("%s: tensor '%s' has shape %s but the config implies %s",
                                                    path, name, ShapeString(got), ShapeString(want)));
}

// Reorders the rows of a [n_head * head_dim, in] q/k projection from HF's half-split RoPE layout to
// GGUF's interleaved pairs, as llama.cpp's converter does: view rows as [n_head, 2, head_dim/2] and
// swap the last two axes. Row (h, j, i) of the source lands at row (h, i, j).
void PermuteForInterleavedRope(Tensor* w, int64_t n_head) {
  const int64_t rows = w->dim(0), cols = w->dim(1), half = rows / n_head / 2;
  std::vector<float> out(w->data.size());
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t j = 0; j < 2; ++j) {
      for (int64_t i = 0; i < half; ++i) {
        const float* src = w->ptr() + ((h * 2 + j) * half + i) * cols;
        std::copy(src, src + cols, out.data() + ((h * half + i) * 2 + j) * cols);
      }
    }
  }
  w->data = std::move(out);
}

// ---------------------------------------------------------------------------------------------------
// GGUF

absl::Status ReadGgufTokenizer(const GgufFile& f, TokenizerSpec* tok) {
  ADORE_ASSIGN_OR_RETURN(tok->model, f.GetString("tokenizer.ggml.model"));
  if (f.Has("tokenizer.ggml.pre")) {
    ADORE_ASSIGN_OR_RETURN(tok->pre, f.GetString("tokenizer.ggml.pre"));
  }
  ADORE_ASSIGN_OR_RETURN(tok->tokens, f.GetStringArray("tokenizer.ggml.tokens"));
  if (f.Has("tokenizer.ggml.token_type")) {
    ADORE_ASSIGN_OR_RETURN(std::vector<int64_t> types, f.GetIntArray("tokenizer.ggml.token_type"));
    if (types.size() != tok->tokens.size()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: tokenizer.ggml.token_type has %d entries but tokenizer.ggml.tokens has %d",
                          f.path(), types.size(), tok->tokens.size()));
    }
    tok->token_types.assign(types.begin(), types.end());
  }
  if (f.Has("tokenizer.ggml.merges") || tok->model == "gpt2") {
    ADORE_ASSIGN_OR_RETURN(tok->merges, f.GetStringArray("tokenizer.ggml.merges"));
  }
  const std::pair<const char*, int32_t*> ids[] = {{"tokenizer.ggml.bos_token_id", &tok->bos_id},
                                                  {"tokenizer.ggml.eos_token_id", &tok->eos_id},
                                                  {"tokenizer.ggml.padding_token_id", &tok->pad_id},
                                                  {"tokenizer.ggml.unknown_token_id", &tok->unk_id}};
  for (const auto& [key, dst] : ids) {
    if (!f.Has(key)) continue;
    ADORE_ASSIGN_OR_RETURN(int64_t id, f.GetInt(key));
    if (id < 0 || id >= static_cast<int64_t>(tok->tokens.size())) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: %s = %d is not a token id (vocabulary has %d tokens)", f.path(), key, id, tok->tokens.size()));
    }
    *dst = static_cast<int32_t>(id);
  }
  if (f.Has("tokenizer.ggml.add_bos_token")) {
    const auto* b = std::get_if<bool>(&f.metadata().at("tokenizer.ggml.add_bos_token").v);
    if (b == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: metadata 'tokenizer.ggml.add_bos_token' is not a bool", f.path()));
    }
    tok->add_bos = *b;
  }
  if (f.Has("tokenizer.chat_template")) {
    ADORE_ASSIGN_OR_RETURN(tok->chat_template, f.GetString("tokenizer.chat_template"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ReadGgufConfig(const GgufFile& f) {
  ModelConfig c;
  ADORE_ASSIGN_OR_RETURN(c.architecture, f.GetString("general.architecture"));
  if (!SupportedArchitectures().count(c.architecture)) {
    return absl::UnimplementedError(absl::StrFormat(
        "%s: general.architecture '%s' is not supported (llama, mistral, qwen2)", f.path(), c.architecture));
  }
  if (f.Has("general.name")) {
    ADORE_ASSIGN_OR_RETURN(c.name, f.GetString("general.name"));
  }
  const std::string a = c.architecture + ".";
  ADORE_ASSIGN_OR_RETURN(c.num_layers, f.GetInt(a + "block_count"));
  ADORE_ASSIGN_OR_RETURN(c.max_context, f.GetInt(a + "context_length"));
  ADORE_ASSIGN_OR_RETURN(c.hidden_size, f.GetInt(a + "embedding_length"));
  ADORE_ASSIGN_OR_RETURN(c.intermediate_size, f.GetInt(a + "feed_forward_length"));
  ADORE_ASSIGN_OR_RETURN(c.num_heads, f.GetInt(a + "attention.head_count"));
  c.num_kv_heads = c.num_heads;
  if (f.Has(a + "attention.head_count_kv")) {
    ADORE_ASSIGN_OR_RETURN(c.num_kv_heads, f.GetInt(a + "attention.head_count_kv"));
  }
  if (f.Has(a + "rope.freq_base")) {
    ADORE_ASSIGN_OR_RETURN(double theta, f.GetFloat(a + "rope.freq_base"));
    c.rope_theta = static_cast<float>(theta);
  }
  ADORE_ASSIGN_OR_RETURN(double eps, f.GetFloat(a + "attention.layer_norm_rms_epsilon"));
  c.rms_norm_eps = static_cast<float>(eps);
  if (f.Has(a + "attention.key_length")) {
    ADORE_ASSIGN_OR_RETURN(c.head_dim, f.GetInt(a + "attention.key_length"));
  } else if (f.Has(a + "rope.dimension_count")) {
    ADORE_ASSIGN_OR_RETURN(c.head_dim, f.GetInt(a + "rope.dimension_count"));
  } else if (c.num_heads > 0) {
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (f.Has(a + "vocab_size")) {
    ADORE_ASSIGN_OR_RETURN(c.vocab_size, f.GetInt(a + "vocab_size"));
  }
  c.tie_embeddings = f.FindTensor("output.weight") == nullptr;
  return c;
}

absl::StatusOr<ModelWeights> LoadGguf(const std::string& path, bool read_tensors) {
  ADORE_ASSIGN_OR_RETURN(GgufFile f, GgufFile::Open(path));
  ModelWeights w;
  ADORE_ASSIGN_OR_RETURN(w.config, ReadGgufConfig(f));
  ADORE_RETURN_IF_ERROR(ReadGgufTokenizer(f, &w.tokenizer));
  if (w.config.vocab_size == 0) w.config.vocab_size = static_cast<int64_t>(w.tokenizer.tokens.size());
  if (static_cast<int64_t>(w.tokenizer.tokens.size()) > w.config.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: tokenizer.ggml.tokens has %d tokens but %s.vocab_size is %d", path,
                        w.tokenizer.tokens.size(), w.config.architecture, w.config.vocab_size));
  }
  ADORE_RETURN_IF_ERROR(WithFile(path, w.config.Validate()));
  ADORE_RETURN_IF_ERROR(CheckLayerCount(path, w.config, f.tensors().size()));

  const std::vector<ExpectedTensor> expected = ExpectedTensors(w.config);
  std::set<std::string> expected_names;
  for (const auto& e : expected) expected_names.insert(e.name);
  for (const GgufTensorInfo& t : f.tensors()) {
    if (expected_names.count(t.name)) continue;
    if (absl::EndsWith(t.name, ".bias")) {
      return absl::UnimplementedError(
          absl::StrFormat("%s: tensor '%s': bias tensors are not supported", path, t.name));
    }
    return absl::UnimplementedError(
        absl::StrFormat("%s: tensor '%s' is not part of a %s model this loader supports", path, t.name,
                        w.config.architecture));
  }
  for (const auto& e : expected) {
    const GgufTensorInfo* info = f.FindTensor(e.name);
    if (info == nullptr) {
      return absl::NotFoundError(absl::StrFormat("%s: missing tensor '%s'", path, e.name));
    }
    ADORE_RETURN_IF_ERROR(
        CheckShape(path, e.name, std::vector<int64_t>(info->ne.rbegin(), info->ne.rend()), e.shape));
  }
  for (const auto& e : expected) {
    if (!read_tensors) break;
    ADORE_ASSIGN_OR_RETURN(Tensor t, f.ReadTensor(e.name));
    w.source_types[e.name] = GgmlTypeName(f.FindTensor(e.name)->type);
    w.tensors.emplace(e.name, std::move(t));
  }
  return w;
}

// ---------------------------------------------------------------------------------------------------
// Hugging Face directory

absl::StatusOr<Json> ReadJsonFile(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return absl::NotFoundError(absl::StrFormat("%s: no such file", path));
  // tokenizer.json of large-vocabulary models is ~10 MB; anything far beyond that is not ours.
  if (fs::file_size(path, ec) > (uint64_t{256} << 20)) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: file too large for a JSON config", path));
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  if (!in) return absl::DataLossError(absl::StrFormat("%s: read error", path));
  Json j = Json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: not a valid JSON object", path));
  }
  return j;
}

// Integer field of a JSON object: NOT_FOUND (naming file and field) when required and absent.
absl::StatusOr<int64_t> JsonInt(const Json& j, const std::string& path, const char* field,
                                std::optional<int64_t> fallback) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    return absl::NotFoundError(absl::StrFormat("%s: missing field '%s'", path, field));
  }
  if (!it->is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: field '%s' is not an integer", path, field));
  }
  return it->get<int64_t>();
}

absl::StatusOr<double> JsonFloat(const Json& j, const std::string& path, const char* field, double fallback) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: field '%s' is not a number", path, field));
  }
  return it->get<double>();
}

absl::StatusOr<ModelConfig> ReadHfConfig(const std::string& path, const Json& j) {
  ModelConfig c;
  static const std::map<std::string, std::string> kArchByClass = {
      {"LlamaForCausalLM", "llama"}, {"MistralForCausalLM", "mistral"}, {"Qwen2ForCausalLM", "qwen2"}};
  if (auto it = j.find("architectures"); it != j.end() && it->is_array() && !it->empty()) {
    const std::string cls = (*it)[0].is_string() ? (*it)[0].get<std::string>() : "";
    auto arch = kArchByClass.find(cls);
    if (arch == kArchByClass.end()) {
      return absl::UnimplementedError(
          absl::StrFormat("%s: architectures[0] '%s' is not supported (LlamaForCausalLM, MistralForCausalLM, "
                          "Qwen2ForCausalLM)",
                          path, cls));
    }
    c.architecture = arch->second;
  }
  // Llama 3.1-style frequency scaling changes the RoPE math; refuse rather than run it wrong.
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    if (!it->is_object()) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: field '%s' is not an object", path, key));
    }
    auto type = it->find("rope_type");
    if (type == it->end()) type = it->find("type");
    if (type != it->end() && !(type->is_string() && type->get<std::string>() == "default")) {
      return absl::UnimplementedError(absl::StrFormat(
          "%s: field '%s' asks for RoPE type %s; only the default is supported", path, key, type->dump()));
    }
  }
  ADORE_ASSIGN_OR_RETURN(c.hidden_size, JsonInt(j, path, "hidden_size", std::nullopt));
  ADORE_ASSIGN_OR_RETURN(c.num_layers, JsonInt(j, path, "num_hidden_layers", std::nullopt));
  ADORE_ASSIGN_OR_RETURN(c.num_heads, JsonInt(j, path, "num_attention_heads", std::nullopt));
  ADORE_ASSIGN_OR_RETURN(c.num_kv_heads, JsonInt(j, path, "num_key_value_heads", c.num_heads));
  ADORE_ASSIGN_OR_RETURN(c.intermediate_size, JsonInt(j, path, "intermediate_size", std::nullopt));
  ADORE_ASSIGN_OR_RETURN(c.vocab_size, JsonInt(j, path, "vocab_size", std::nullopt));
  // Defaults below are transformers' LlamaConfig defaults.
  ADORE_ASSIGN_OR_RETURN(c.max_context, JsonInt(j, path, "max_position_embeddings", 2048));
  ADORE_ASSIGN_OR_RETURN(c.head_dim,
                         JsonInt(j, path, "head_dim", c.num_heads > 0 ? c.hidden_size / c.num_heads : 0));
  double theta = 10000.0;
  if (auto rp = j.find("rope_parameters"); rp != j.end() && rp->is_object()) {
    ADORE_ASSIGN_OR_RETURN(theta, JsonFloat(*rp, path, "rope_theta", theta));  // transformers >= 5
  }
  ADORE_ASSIGN_OR_RETURN(theta, JsonFloat(j, path, "rope_theta", theta));
  c.rope_theta = static_cast<float>(theta);
  ADORE_ASSIGN_OR_RETURN(double eps, JsonFloat(j, path, "rms_norm_eps", 1e-6));
  c.rms_norm_eps = static_cast<float>(eps);
  if (auto it = j.find("tie_word_embeddings"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: field 'tie_word_embeddings' is not a bool", path));
    }
    c.tie_embeddings = it->get<bool>();
  }
  if (auto it = j.find("_name_or_path"); it != j.end() && it->is_string()) c.name = it->get<std::string>();
  ADORE_RETURN_IF_ERROR(WithFile(path, c.Validate()));
  return c;
}

// HF parameter name -> canonical name. nullopt for tensors that carry no weights we need (cached RoPE
// tables); UNIMPLEMENTED for real parameters this engine cannot use (biases, unknown modules).
absl::StatusOr<std::optional<std::string>> CanonicalName(const std::string& hf, const ModelConfig& c,
                                                         const std::string& path) {
  if (hf == "model.embed_tokens.weight") return std::optional<std::string>("token_embd.weight");
  if (hf == "model.norm.weight") return std::optional<std::string>("output_norm.weight");
  if (hf == "lm_head.weight") return std::optional<std::string>("output.weight");
  static const std::map<std::string, std::string> kLayerParts = {
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
      {"input_layernorm.weight", "attn_norm.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"}};
  std::vector<std::string> parts = absl::StrSplit(hf, absl::MaxSplits('.', 3));
  int64_t layer = -1;
  if (parts.size() == 4 && parts[0] == "model" && parts[1] == "layers" &&
      absl::SimpleAtoi(parts[2], &layer) && layer >= 0 && layer < c.num_layers) {
    if (auto it = kLayerParts.find(parts[3]); it != kLayerParts.end()) {
      return std::optional<std::string>(absl::StrCat("blk.", layer, ".", it->second));
    }
    if (parts[3] == "self_attn.rotary_emb.inv_freq") return std::optional<std::string>();
  }
  if (absl::EndsWith(hf, ".bias")) {
    return absl::UnimplementedError(
        absl::StrFormat("%s: tensor '%s': bias tensors are not supported", path, hf));
  }
  return absl::UnimplementedError(absl::StrFormat(
      "%s: tensor '%s' is not part of a %s model this loader supports", path, hf, c.architecture));
}

// Lookups that never throw: nlohmann's value() throws on a type mismatch, and input is untrusted.
std::string JsonStr(const Json& j, const char* key) {
  if (!j.is_object()) return "";
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}
bool JsonBool(const Json& j, const char* key, bool fallback) {
  if (!j.is_object()) return fallback;
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

// Token text of a tokenizer_config.json entry: "text" or {"content": "text"}; empty when null/absent.
std::string SpecialTokenText(const Json& cfg, const char* field) {
  auto it = cfg.find(field);
  if (it == cfg.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  return "";
}

// "smollm" for SmolLM2's Sequence[Digits(individual_digits), ByteLevel]; "gpt2" for a lone ByteLevel.
std::string PreTokenizerName(const Json& pre) {
  if (!pre.is_object()) return "default";
  const std::string type = JsonStr(pre, "type");
  if (type == "ByteLevel") return "gpt2";
  if (type != "Sequence") return "default";
  auto seq = pre.find("pretokenizers");
  if (seq == pre.end() || !seq->is_array()) return "default";
  bool digits = false, byte_level = false;
  for (const Json& p : *seq) {
    if (!p.is_object()) continue;
    const std::string t = JsonStr(p, "type");
    if (t == "Digits" && JsonBool(p, "individual_digits", false)) digits = true;
    if (t == "ByteLevel") byte_level = true;
  }
  if (digits && byte_level && seq->size() == 2) return "smollm";
  if (byte_level && seq->size() == 1) return "gpt2";
  return "default";
}

absl::Status ReadHfTokenizer(const std::string& dir, const Json& config, ModelWeights* w) {
  const std::string path = (fs::path(dir) / "tokenizer.json").string();
  ADORE_ASSIGN_OR_RETURN(Json j, ReadJsonFile(path));
  TokenizerSpec& tok = w->tokenizer;
  const Json& model = j.contains("model") ? j["model"] : Json();
  if (!model.is_object() || (model.contains("type") && JsonStr(model, "type") != "BPE")) {
    return absl::UnimplementedError(absl::StrFormat("%s: model.type must be BPE", path));
  }
  auto vocab = model.find("vocab");
  if (vocab == model.end() || !vocab->is_object()) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: model.vocab is missing or not an object", path));
  }
  const int64_t n = w->config.vocab_size;
  tok.tokens.assign(static_cast<size_t>(n), "");
  tok.token_types.assign(static_cast<size_t>(n), 0);
  auto place = [&](const std::string& text, const Json& id_json, int32_t type, bool allow_reuse) {
    if (!id_json.is_number_unsigned() || id_json.get<uint64_t>() >= static_cast<uint64_t>(n)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: token '%s' has id %s outside the model's vocab_size %d", path, text, id_json.dump(), n));
    }
    const size_t id = id_json.get<size_t>();
    if (tok.token_types[id] != 0 && !(allow_reuse && tok.tokens[id] == text)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: token id %d is used by both '%s' and '%s'", path, id, tok.tokens[id], text));
    }
    tok.tokens[id] = text;
    tok.token_types[id] = type;
    return absl::OkStatus();
  };
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    ADORE_RETURN_IF_ERROR(place(it.key(), it.value(), kTokenNormal, false));
  }
  if (auto added = j.find("added_tokens"); added != j.end() && added->is_array()) {
    for (const Json& a : *added) {
      if (!a.is_object() || !a.contains("id") || !a.contains("content") || !a["content"].is_string()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: added_tokens entry %s lacks id/content", path, a.dump()));
      }
      const bool special = JsonBool(a, "special", false);
      ADORE_RETURN_IF_ERROR(
          place(a["content"].get<std::string>(), a["id"], special ? kTokenControl : kTokenUserDefined, true));
    }
  }
  // Ids no token claims become placeholders, as llama.cpp's converter writes them.
  for (int64_t i = 0; i < n; ++i) {
    if (tok.token_types[i] == 0) {
      tok.tokens[i] = absl::StrCat("[PAD", i, "]");
      tok.token_types[i] = kTokenUnused;
    }
  }
  if (auto merges = model.find("merges"); merges != model.end() && merges->is_array()) {
    tok.merges.reserve(merges->size());
    for (const Json& m : *merges) {
      if (m.is_string()) {
        tok.merges.push_back(m.get<std::string>());
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        tok.merges.push_back(absl::StrCat(m[0].get<std::string>(), " ", m[1].get<std::string>()));
      } else {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: merge %s is neither \"a b\" nor [\"a\", \"b\"]", path, m.dump()));
      }
    }
  }
  tok.model = "gpt2";
  tok.pre = PreTokenizerName(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : Json());

  std::map<std::string, int32_t> id_of;
  for (int64_t i = 0; i < n; ++i) id_of.emplace(tok.tokens[i], static_cast<int32_t>(i));
  Json tcfg = Json::object();
  const std::string tcfg_path = (fs::path(dir) / "tokenizer_config.json").string();
  if (fs::exists(tcfg_path)) {
    ADORE_ASSIGN_OR_RETURN(tcfg, ReadJsonFile(tcfg_path));
  }
  // Special ids: tokenizer_config.json names the token text; config.json only has ids.
  const struct {
    const char* tcfg_field;
    const char* config_field;
    int32_t* dst;
  } specials[] = {{"bos_token", "bos_token_id", &tok.bos_id},
                  {"eos_token", "eos_token_id", &tok.eos_id},
                  {"pad_token", "pad_token_id", &tok.pad_id},
                  {"unk_token", nullptr, &tok.unk_id}};
  for (const auto& s : specials) {
    const std::string text = SpecialTokenText(tcfg, s.tcfg_field);
    if (!text.empty()) {
      auto it = id_of.find(text);
      if (it == id_of.end()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: %s '%s' is not in the vocabulary", tcfg_path, s.tcfg_field, text));
      }
      *s.dst = it->second;
      continue;
    }
    if (s.config_field == nullptr) continue;
    auto it = config.find(s.config_field);
    if (it == config.end() || it->is_null()) continue;
    const Json& v = it->is_array() && !it->empty() ? (*it)[0] : *it;  // eos may be a list of ids
    if (!v.is_number_unsigned() || v.get<uint64_t>() >= static_cast<uint64_t>(n)) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: field '%s' = %s is not a token id",
                                                        (fs::path(dir) / "config.json").string(),
                                                        s.config_field, it->dump()));
    }
    *s.dst = v.get<int32_t>();
  }
  if (tok.unk_id < 0) {
    if (auto unk = model.find("unk_token"); unk != model.end() && unk->is_string()) {
      if (auto it = id_of.find(unk->get<std::string>()); it != id_of.end()) tok.unk_id = it->second;
    }
  }
  if (auto it = tcfg.find("add_bos_token"); it != tcfg.end() && it->is_boolean())
    tok.add_bos = it->get<bool>();
  if (auto it = tcfg.find("chat_template"); it != tcfg.end()) {
    if (it->is_string()) {
      tok.chat_template = it->get<std::string>();
    } else if (it->is_array()) {  // [{"name": ..., "template": ...}]: take "default", else the first
      for (const Json& t : *it) {
        if (!t.is_object() || !t.contains("template") || !t["template"].is_string()) continue;
        if (tok.chat_template.empty() || JsonStr(t, "name") == "default") {
          tok.chat_template = t["template"].get<std::string>();
        }
      }
    }
  }
  // transformers >= 4.47 may save the template as its own file instead.
  const fs::path jinja = fs::path(dir) / "chat_template.jinja";
  if (tok.chat_template.empty() && fs::is_regular_file(jinja)) {
    std::ifstream in(jinja, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    tok.chat_template = ss.str();
  }
  return absl::OkStatus();
}

// Where a canonical tensor lives in an HF checkpoint: which shard, under which HF name.
struct HfTensorSource {
  size_t shard;
  std::string hf_name;
};

// config.json first (it sizes everything), then model.safetensors or the shards named by
// model.safetensors.index.json, shape checks, tokenizer.json, and finally the tensor data.
absl::StatusOr<ModelWeights> LoadHfDirectory(const std::string& dir, bool read_tensors) {
  const std::string config_path = (fs::path(dir) / "config.json").string();
  ADORE_ASSIGN_OR_RETURN(Json config_json, ReadJsonFile(config_path));
  ModelWeights w;
  ADORE_ASSIGN_OR_RETURN(w.config, ReadHfConfig(config_path, config_json));

  std::vector<SafetensorsFile> shards;
  std::map<std::string, size_t> shard_of_file;
  std::vector<std::pair<std::string, size_t>> listed;  // hf name -> shard
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single_path = fs::path(dir) / "model.safetensors";
  if (fs::exists(index_path)) {
    ADORE_ASSIGN_OR_RETURN(Json index, ReadJsonFile(index_path.string()));
    auto map = index.find("weight_map");
    if (map == index.end() || !map->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: missing or non-object 'weight_map'", index_path.string()));
    }
    for (auto it = map->begin(); it != map->end(); ++it) {
      const std::string file = it.value().is_string() ? it.value().get<std::string>() : "";
      // Shards must sit beside the index: no paths that escape the checkpoint directory.
      if (file.empty() || file.find('/') != std::string::npos || file == "..") {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: weight_map['%s'] is not a plain file name", index_path.string(), it.key()));
      }
      if (!shard_of_file.count(file)) {
        ADORE_ASSIGN_OR_RETURN(SafetensorsFile s, SafetensorsFile::Open((fs::path(dir) / file).string()));
        shard_of_file[file] = shards.size();
        shards.push_back(std::move(s));
      }
      const size_t shard = shard_of_file[file];
      if (shards[shard].Find(it.key()) == nullptr) {
        return absl::NotFoundError(absl::StrFormat("%s: tensor '%s' listed in %s is not in the file",
                                                   shards[shard].path(), it.key(), index_path.string()));
      }
      listed.emplace_back(it.key(), shard);
    }
  } else if (fs::exists(single_path)) {
    ADORE_ASSIGN_OR_RETURN(SafetensorsFile s, SafetensorsFile::Open(single_path.string()));
    for (const auto& t : s.tensors()) listed.emplace_back(t.name, 0);
    shards.push_back(std::move(s));
  } else {
    return absl::NotFoundError(
        absl::StrFormat("%s: no model.safetensors or model.safetensors.index.json", dir));
  }

  ADORE_RETURN_IF_ERROR(CheckLayerCount(config_path, w.config, listed.size()));
  std::map<std::string, HfTensorSource> sources;
  for (const auto& [hf, shard] : listed) {
    ADORE_ASSIGN_OR_RETURN(std::optional<std::string> name,
                           CanonicalName(hf, w.config, shards[shard].path()));
    if (!name) continue;
    // A tied checkpoint may still carry lm_head; the config decides, as in transformers.
    if (*name == "output.weight" && w.config.tie_embeddings) continue;
    sources[*name] = {shard, hf};
  }
  const std::vector<ExpectedTensor> expected = ExpectedTensors(w.config);
  for (const ExpectedTensor& e : expected) {
    auto it = sources.find(e.name);
    if (it == sources.end()) {
      return absl::NotFoundError(absl::StrFormat("%s: missing tensor '%s'", dir, e.name));
    }
    const SafetensorsFile& s = shards[it->second.shard];
    ADORE_RETURN_IF_ERROR(
        CheckShape(s.path(), it->second.hf_name, s.Find(it->second.hf_name)->shape, e.shape));
  }
  // After the shape checks, so vocab_size is bounded by the embedding actually stored.
  ADORE_RETURN_IF_ERROR(ReadHfTokenizer(dir, config_json, &w));
  for (const ExpectedTensor& e : expected) {
    if (!read_tensors) break;
    const HfTensorSource& src = sources.at(e.name);
    const SafetensorsFile& s = shards[src.shard];
    const SafetensorsTensorInfo* info = s.Find(src.hf_name);
    ADORE_ASSIGN_OR_RETURN(Tensor t, s.ReadTensor(src.hf_name));
    if (absl::EndsWith(e.name, ".attn_q.weight")) PermuteForInterleavedRope(&t, w.config.num_heads);
    if (absl::EndsWith(e.name, ".attn_k.weight")) PermuteForInterleavedRope(&t, w.config.num_kv_heads);
    w.source_types[e.name] = info->dtype;
    w.tensors.emplace(e.name, std::move(t));
  }
  return w;
}

}  // namespace

absl::StatusOr<const Tensor*> ModelWeights::Get(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) {
    return absl::NotFoundError(absl::StrFormat("model has no tensor '%s'", name));
  }
  return &it->second;
}

namespace {

absl::StatusOr<ModelWeights> Load(const std::string& path, bool read_tensors) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return LoadHfDirectory(path, read_tensors);
  if (!fs::exists(path, ec))
    return absl::NotFoundError(absl::StrFormat("%s: no such file or directory", path));
  return LoadGguf(path, read_tensors);
}

}  // namespace

absl::StatusOr<ModelWeights> LoadModelWeights(const std::string& path) { return Load(path, true); }

absl::StatusOr<ModelWeights> LoadModelInfo(const std::string& path) { return Load(path, false); }

}  // namespace adore
