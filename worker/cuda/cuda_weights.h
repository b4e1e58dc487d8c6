// A Llama-family model's weights on the GPU in bf16, in the layout the CUDA engine runs: Q/K/V stacked
// into one [q_dim + 2 kv_dim, hidden] matrix and gate/up into one [2 ff, hidden] matrix, so each is one
// product. Filled from a loaded model (ModelWeights, f32) or with synthetic random values.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/model_weights.h"

namespace adore {

struct CudaLayerWeights {
  const __nv_bfloat16* attn_norm = nullptr;  // [hidden]
  const __nv_bfloat16* wqkv = nullptr;       // [q_dim + 2 * kv_dim, hidden]: attn_q, attn_k, attn_v rows
  const __nv_bfloat16* wo = nullptr;         // [hidden, q_dim]
  const __nv_bfloat16* ffn_norm = nullptr;   // [hidden]
  const __nv_bfloat16* w_gate_up = nullptr;  // [2 * ff, hidden]: ffn_gate rows then ffn_up rows
  const __nv_bfloat16* w_down = nullptr;     // [hidden, ff]
};

class CudaWeights {
 public:
  // Converts every tensor to bf16 (round to nearest even) and copies it to the current device.
  // NOT_FOUND / INVALID_ARGUMENT naming the tensor when one is missing or has the wrong size;
  // RESOURCE_EXHAUSTED when the device memory is short.
  static absl::StatusOr<std::unique_ptr<CudaWeights>> Upload(const ModelWeights& weights);

  // Random weights for `config` generated on the device (no host copy): linear weights uniform in
  // +-1/sqrt(in_features), embeddings uniform in +-1, norm weights 1. Deterministic in `seed`.
  static absl::StatusOr<std::unique_ptr<CudaWeights>> Synthetic(const ModelConfig& config, uint64_t seed);

  // The weights back as float32 ModelWeights under their GGUF names (for checking the GPU engine against
  // the CPU engine on synthetic weights). No tokenizer.
  absl::StatusOr<ModelWeights> Download() const;

  ~CudaWeights();
  CudaWeights(const CudaWeights&) = delete;
  CudaWeights& operator=(const CudaWeights&) = delete;

  const ModelConfig& config() const { return config_; }
  size_t bytes() const { return bytes_; }
  const __nv_bfloat16* token_embd() const { return token_embd_; }    // [vocab, hidden]
  const __nv_bfloat16* output_norm() const { return output_norm_; }  // [hidden]
  const __nv_bfloat16* lm_head() const { return lm_head_; }          // [vocab, hidden]; token_embd when tied
  const CudaLayerWeights& layer(int64_t i) const { return layers_[i]; }

 private:
  // One named slice of the arena: `rows` x `cols` elements at `offset`.
  struct Slice {
    std::string name;
    int64_t offset = 0, rows = 0, cols = 0;
  };
  CudaWeights() = default;
  // Lays out every tensor in one arena (each slice 256-byte aligned), allocates it and binds pointers.
  absl::Status Allocate(const ModelConfig& config);

  ModelConfig config_;
  __nv_bfloat16* arena_ = nullptr;
  size_t bytes_ = 0;
  std::vector<Slice> slices_;
  const __nv_bfloat16* token_embd_ = nullptr;
  const __nv_bfloat16* output_norm_ = nullptr;
  const __nv_bfloat16* lm_head_ = nullptr;
  std::vector<CudaLayerWeights> layers_;
};

}  // namespace adore
