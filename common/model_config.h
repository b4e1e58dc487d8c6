// Hyper-parameters of a Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2), read from a model file.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace adore {

struct ModelConfig {
  std::string architecture = "llama";
  std::string name;            // general.name, informational
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;     // d_model
  int64_t num_layers = 0;
  int64_t num_heads = 0;       // query heads
  int64_t num_kv_heads = 0;    // GQA: num_heads % num_kv_heads == 0
  int64_t head_dim = 0;        // hidden_size / num_heads unless the file says otherwise
  int64_t intermediate_size = 0;  // SwiGLU inner width
  int64_t max_context = 0;     // trained context length
  float rope_theta = 10000.0f;
  float rms_norm_eps = 1e-5f;
  bool tie_embeddings = false;  // LM head shares token_embd.weight

  // Checks that the numbers are positive and consistent; names the offending field on error.
  absl::Status Validate() const;
};

}  // namespace adore
