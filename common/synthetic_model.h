// Synthetic models: random weights of a known Llama-family shape, named by a model "path" of the form
// `synthetic:<shape>[:<max_context>]` (shapes: smollm2-135m, llama2-7b, llama3-8b). They let the serving
// stack (adore-server, adore-worker) and the benchmarks run at real model sizes without weight files. The
// CUDA engine generates the weights on the GPU (CudaEngine::CreateSynthetic); the coordinator gets the shape
// and a stand-in byte-level tokenizer (below), so prompts are given as token ids and the output text is a
// readable rendering of the ids.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/model_weights.h"

namespace adore {

inline constexpr std::string_view kSyntheticModelPrefix = "synthetic:";

ModelConfig Llama2_7BConfig();     // 4096 hidden, 32 layers, 32 heads (MHA), 11008 MLP, 32000 vocab
ModelConfig Llama3_8BConfig();     // 4096 hidden, 32 layers, 32 heads / 8 KV heads, 14336 MLP, 128256 vocab
ModelConfig SmolLM2_135MConfig();  // 576 hidden, 30 layers, 9 heads / 3 KV heads, 1536 MLP, 49152 vocab, tied

// The shape called `name` (smollm2-135m, llama2-7b, llama3-8b); INVALID_ARGUMENT naming the known ones.
absl::StatusOr<ModelConfig> SyntheticShape(std::string_view name);

bool IsSyntheticModel(std::string_view path);

// The config named by `synthetic:<shape>[:<max_context>]` (max_context overrides the shape's: RoPE runs at
// any position). INVALID_ARGUMENT for a malformed spec, an unknown shape or a max_context outside
// [16, 1048576].
absl::StatusOr<ModelConfig> SyntheticModelConfig(std::string_view spec);

// A byte-level BPE vocabulary of `vocab_size` (>= 256) tokens without merges: ids 0..255 are the 256 bytes
// (any text encodes, one token per byte), id i >= 256 decodes to " w<i>". No EOS, so generation runs to
// max_tokens or a stop string.
TokenizerSpec SyntheticTokenizer(int64_t vocab_size);

// What the coordinator loads for a synthetic model: the config and the stand-in tokenizer, no tensors.
absl::StatusOr<ModelWeights> SyntheticModelInfo(std::string_view spec);

}  // namespace adore
