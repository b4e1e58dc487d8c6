// A model as the engines see it: config, tokenizer spec and f32 weights under canonical (GGUF) names.
// Loads GGUF files and Hugging Face checkpoints (config.json + *.safetensors) into the same form.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/tensor.h"

namespace adore {

// What the BPE tokenizer needs; filled from GGUF `tokenizer.ggml.*` keys or from tokenizer.json.
struct TokenizerSpec {
  std::string model = "gpt2";          // tokenizer.ggml.model
  std::string pre = "default";         // tokenizer.ggml.pre: selects the pre-tokenizer regex
  std::vector<std::string> tokens;     // id -> token text (byte-level encoded)
  std::vector<int32_t> token_types;    // 1 normal, 3 control, 4 user-defined, 6 byte...; may be empty
  std::vector<std::string> merges;     // "a b" pairs, by rank
  int32_t bos_id = -1, eos_id = -1, pad_id = -1, unk_id = -1;
  bool add_bos = false;
  std::string chat_template;           // Jinja text from tokenizer.chat_template; may be empty
};

// Canonical tensor names (GGUF): token_embd.weight, output_norm.weight, output.weight (absent when tied),
// blk.{i}.attn_norm.weight, blk.{i}.attn_q.weight, .attn_k, .attn_v, .attn_output, blk.{i}.ffn_norm.weight,
// .ffn_gate, .ffn_up, .ffn_down. Linear weights are [out_features, in_features]. attn_q / attn_k rows are
// in GGUF's order (pairs for interleaved RoPE), i.e. the HF weights permuted as llama.cpp's converter does.
struct ModelWeights {
  ModelConfig config;
  TokenizerSpec tokenizer;
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> source_types;  // tensor name -> stored type (e.g. "Q4_1"), informational

  // NOT_FOUND naming the tensor when missing.
  absl::StatusOr<const Tensor*> Get(const std::string& name) const;
};

// Loads `path`: a .gguf file, or a directory with config.json + model.safetensors (or sharded
// model-*.safetensors with an index) + tokenizer.json. Checks every expected tensor exists with the shape
// the config implies; errors name the file and the tensor or field.
absl::StatusOr<ModelWeights> LoadModelWeights(const std::string& path);

// The same file checks, config and tokenizer as LoadModelWeights, without reading any tensor data
// (`tensors` and `source_types` stay empty): for a process that only tokenizes and schedules, such as a
// coordinator whose workers load the model.
absl::StatusOr<ModelWeights> LoadModelInfo(const std::string& path);

}  // namespace adore
