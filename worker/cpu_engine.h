// The CPU engine: a Llama-family forward pass in float32 (BLAS matrix products) over a batch of sequences,
// each reading and writing its KV through a slot table (worker/kv_cache.h).
//
// Tensor parallelism (Megatron style): with tp_size > 1 each rank's engine keeps only its shard of the
// attention and MLP weights (its query / KV heads, its MLP columns) and its KV pool holds only its KV heads;
// the residual stream, norms, embedding and LM head are replicated. Each layer sums the ranks' partial
// attention-output and MLP-down products with one all-reduce each (float32), so every rank ends each layer
// with the same residual and computes the same logits. Every rank must issue the same Forward calls with
// the same items in the same order (a policy on the same items; only rank 0's policies plan the steps).
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_weights.h"
#include "worker/engine.h"
#include "worker/forward_plan.h"
#include "worker/kv_cache.h"
#include "worker/release_policy.h"

namespace adore {

namespace comm {
class Communicator;
}

struct CpuEngineOptions {
  int64_t kv_rows = 0;  // KV pool capacity in tokens over all sequences; 0 = max_context
  // Tensor parallelism: this engine is rank `tp_rank` of `tp_size`. num_heads, num_kv_heads and
  // intermediate_size must be divisible by tp_size. `comm` (required when tp_size > 1, not owned, must
  // outlive the engine) is the group's communicator (rank tp_rank of world tp_size, host buffers).
  int tp_rank = 0;
  int tp_size = 1;
  comm::Communicator* comm = nullptr;
};

class CpuEngine final : public Engine {
 public:
  // Takes ownership of the weights (the full model; with tp_size > 1 only this rank's shard is kept).
  // INVALID_ARGUMENT when the config is inconsistent, or for a bad tensor-parallel setup (tp_rank outside
  // [0, tp_size), a missing communicator or one of another rank / size, or num_heads, num_kv_heads or
  // intermediate_size not divisible by tp_size, naming which).
  static absl::StatusOr<std::unique_ptr<CpuEngine>> Create(ModelWeights weights,
                                                           const CpuEngineOptions& options = {});

  // Runs the tokens of every item through the model in one batch, appending their K/V to each sequence
  // (allocating pool rows). Writes logits to `logits` as [rows, vocab]: one row per item (its last token),
  // or one per token for items with all_logits, in item order. RESOURCE_EXHAUSTED when the pool is full,
  // INVALID_ARGUMENT for a bad token id, an empty item or a step longer than the item's kv_budget,
  // OUT_OF_RANGE when a position would pass the model's context, FAILED_PRECONDITION when the policy
  // cannot free enough slots; in every error case nothing is changed. With a policy the step follows its
  // plan (worker/forward_plan.h: released slots reused in place, rebuilt tokens recomputed at their
  // positions before the new ones) and ObserveStep() receives what the new tokens saw. With tensor
  // parallelism rank 0's policies plan every step and the other ranks apply rank 0's plans (broadcast,
  // PlanForward), so all ranks keep the same slot maps; the attention mass is summed over all ranks' heads
  // before any policy sees it. A communicator error is returned as is; one after planning leaves the
  // step's slots taken (the group is unusable anyway: end the sequences).
  absl::Status Forward(std::span<ForwardItem> items, std::vector<float>* logits) override;

  // Frees a sequence's rows.
  void Release(SequenceKv& seq) override { pool_.Release(seq); }
  // Every query's attention per slot is at hand (AttentionRef), so prompts under a policy go in chunks.
  int64_t max_policy_tokens_per_item() const override { return std::numeric_limits<int64_t>::max(); }

  const ModelConfig& config() const override { return weights_.config; }
  const char* backend() const override { return "cpu"; }
  // This rank's weights: the full model, or with tp_size > 1 its shard (config stays the full model's).
  const ModelWeights& weights() const { return weights_; }
  int tp_rank() const { return tp_rank_; }
  int tp_size() const { return tp_size_; }
  KvPool& pool() { return pool_; }

 private:
  struct Layer {
    const float *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *w_gate, *w_up, *w_down;
  };
  CpuEngine(ModelWeights weights, int64_t kv_rows, const CpuEngineOptions& options);
  absl::Status BindWeights();
  // Sums `count` floats over the tensor-parallel group in place (no-op when tp_size is 1).
  absl::Status AllReduce(float* data, size_t count);

  ModelWeights weights_;
  KvPool pool_;
  std::vector<Layer> layers_;
  const float* token_embd_ = nullptr;
  const float* output_norm_ = nullptr;
  const float* lm_head_ = nullptr;  // token_embd when tied
  int tp_rank_ = 0, tp_size_ = 1;
  comm::Communicator* comm_ = nullptr;
};

}  // namespace adore
