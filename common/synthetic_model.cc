// Synthetic model shapes and the stand-in tokenizer (see synthetic_model.h).
#include "common/synthetic_model.h"

#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/unicode_util.h"

namespace adore {

ModelConfig Llama2_7BConfig() {
  ModelConfig c;
  c.name = "Llama-2-7B shape (synthetic)";
  c.vocab_size = 32000;
  c.hidden_size = 4096;
  c.num_layers = 32;
  c.num_heads = 32;
  c.num_kv_heads = 32;
  c.head_dim = 128;
  c.intermediate_size = 11008;
  c.max_context = 4096;
  c.rope_theta = 10000.0f;
  c.rms_norm_eps = 1e-5f;
  return c;
}

ModelConfig Llama3_8BConfig() {
  ModelConfig c;
  c.name = "Llama-3-8B shape (synthetic)";
  c.vocab_size = 128256;
  c.hidden_size = 4096;
  c.num_layers = 32;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.intermediate_size = 14336;
  c.max_context = 8192;
  c.rope_theta = 500000.0f;
  c.rms_norm_eps = 1e-5f;
  return c;
}

ModelConfig SmolLM2_135MConfig() {
  ModelConfig c;
  c.name = "SmolLM2-135M shape (synthetic)";
  c.vocab_size = 49152;
  c.hidden_size = 576;
  c.num_layers = 30;
  c.num_heads = 9;
  c.num_kv_heads = 3;
  c.head_dim = 64;
  c.intermediate_size = 1536;
  c.max_context = 8192;
  c.rope_theta = 100000.0f;
  c.rms_norm_eps = 1e-5f;
  c.tie_embeddings = true;
  return c;
}

absl::StatusOr<ModelConfig> SyntheticShape(std::string_view name) {
  if (name == "llama2-7b") return Llama2_7BConfig();
  if (name == "llama3-8b") return Llama3_8BConfig();
  if (name == "smollm2-135m") return SmolLM2_135MConfig();
  return absl::InvalidArgumentError(
      absl::StrFormat("synthetic model: unknown shape '%s' (smollm2-135m, llama2-7b, llama3-8b)", name));
}

bool IsSyntheticModel(std::string_view path) { return path.substr(0, kSyntheticModelPrefix.size()) == kSyntheticModelPrefix; }

absl::StatusOr<ModelConfig> SyntheticModelConfig(std::string_view spec) {
  if (!IsSyntheticModel(spec)) {
    return absl::InvalidArgumentError(absl::StrFormat("'%s' does not start with %s", spec, kSyntheticModelPrefix));
  }
  std::string_view rest = spec.substr(kSyntheticModelPrefix.size());
  const size_t colon = rest.find(':');
  absl::StatusOr<ModelConfig> c = SyntheticShape(rest.substr(0, colon));
  if (!c.ok() || colon == std::string_view::npos) return c;
  int64_t ctx = 0;
  if (!absl::SimpleAtoi(std::string(rest.substr(colon + 1)), &ctx) || ctx < 16 || ctx > (int64_t{1} << 20)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "synthetic model '%s': max_context '%s' is not an integer in [16, 1048576]", spec, rest.substr(colon + 1)));
  }
  c->max_context = ctx;
  return c;
}

TokenizerSpec SyntheticTokenizer(int64_t vocab_size) {
  TokenizerSpec t;
  t.model = "gpt2";
  t.pre = "default";
  const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::Get();
  t.tokens.reserve(static_cast<size_t>(vocab_size));
  for (int b = 0; b < 256 && b < vocab_size; ++b) t.tokens.push_back(alphabet.Encode(static_cast<uint8_t>(b)));
  for (int64_t id = 256; id < vocab_size; ++id) t.tokens.push_back(alphabet.EncodeBytes(absl::StrCat(" w", id)));
  return t;
}

absl::StatusOr<ModelWeights> SyntheticModelInfo(std::string_view spec) {
  ModelWeights w;
  if (absl::StatusOr<ModelConfig> c = SyntheticModelConfig(spec); c.ok()) {
    w.config = *std::move(c);
  } else {
    return c.status();
  }
  w.tokenizer = SyntheticTokenizer(w.config.vocab_size);
  return w;
}

}  // namespace adore
