// A Llama-family model's weights on the GPU in bf16, in the layout the CUDA engine runs: Q/K/V stacked
// into one [q_dim + 2 kv_dim, hidden] matrix and gate/up into one [2 ff, hidden] matrix, so each is one
// product. Filled from a loaded model (ModelWeights, f32) or with synthetic random values.
//
// Tensor parallelism (Megatron): rank r of `tp` ranks holds the query heads [r * H / tp, (r + 1) * H / tp),
// the matching KV heads, the same share of the MLP columns (gate/up rows, down columns) and of the attention
// output's input columns; embeddings, norms and the LM head are replicated. Each rank's attention-output
// and down products are then partial sums that the engine all-reduces.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
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
  // With tp_size > 1 only this rank's shard is kept (INVALID_ARGUMENT unless the heads, KV heads and MLP width
  // divide by tp_size).
  static absl::StatusOr<std::unique_ptr<CudaWeights>> Upload(const ModelWeights& weights, int tp_rank = 0,
                                                             int tp_size = 1);

  // Random weights for `config` generated on the device (no host copy): linear weights uniform in
  // +-1/sqrt(in_features), embeddings uniform in +-1, norm weights 1. Deterministic in `seed`.
  // With tp_size > 1: this rank's shard of the shapes (values differ from a tp_size 1 fill of the same seed).
  static absl::StatusOr<std::unique_ptr<CudaWeights>> Synthetic(const ModelConfig& config, uint64_t seed,
                                                                int tp_rank = 0, int tp_size = 1);

  // The weights back as float32 ModelWeights under their GGUF names (for checking the GPU engine against
  // the CPU engine on synthetic weights). No tokenizer. FAILED_PRECONDITION for a shard (tp_size > 1).
  absl::StatusOr<ModelWeights> Download() const;

  ~CudaWeights();
  CudaWeights(const CudaWeights&) = delete;
  CudaWeights& operator=(const CudaWeights&) = delete;

  const ModelConfig& config() const { return config_; }  // the whole model's shape
  int tp_rank() const { return tp_rank_; }
  int tp_size() const { return tp_size_; }
  // This rank's share: query heads, KV heads, MLP width.
  int64_t local_heads() const { return config_.num_heads / tp_size_; }
  int64_t local_kv_heads() const { return config_.num_kv_heads / tp_size_; }
  int64_t local_ff() const { return config_.intermediate_size / tp_size_; }
  size_t bytes() const { return bytes_; }
  const __nv_bfloat16* token_embd() const { return token_embd_; }    // [vocab, hidden]
  const __nv_bfloat16* output_norm() const { return output_norm_; }  // [hidden]
  const __nv_bfloat16* lm_head() const { return lm_head_; }          // [vocab, hidden]; token_embd when tied
  const CudaLayerWeights& layer(int64_t i) const { return layers_[i]; }

 private:
  // One named slice of the arena: `rows` x `cols` elements at `offset`, taken from the full tensor's rows
  // [row0, row0 + rows) and columns [col0, col0 + cols) (a shard's piece; the whole tensor when tp_size is 1).
  struct Slice {
    std::string name;
    int64_t offset = 0, rows = 0, cols = 0;
    int64_t row0 = 0, col0 = 0, full_rows = 0, full_cols = 0;  // the full tensor is [full_rows, full_cols]
  };
  CudaWeights() = default;
  // Lays out every tensor in one arena (each slice 256-byte aligned), allocates it and binds pointers.
  absl::Status Allocate(const ModelConfig& config, int tp_rank, int tp_size);

  ModelConfig config_;
  int tp_rank_ = 0, tp_size_ = 1;
  __nv_bfloat16* arena_ = nullptr;
  size_t bytes_ = 0;
  std::vector<Slice> slices_;
  const __nv_bfloat16* token_embd_ = nullptr;
  const __nv_bfloat16* output_norm_ = nullptr;
  const __nv_bfloat16* lm_head_ = nullptr;
  std::vector<CudaLayerWeights> layers_;
};

}  // namespace adore
