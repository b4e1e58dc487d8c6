// The CPU engine: a Llama-family forward pass in float32 (BLAS matrix products) over a batch of sequences,
// each reading and writing its KV through a slot table (worker/kv_cache.h).
#pragma once

#include <cstdint>
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

struct CpuEngineOptions {
  int64_t kv_rows = 0;  // KV pool capacity in tokens over all sequences; 0 = max_context
};

class CpuEngine final : public Engine {
 public:
  // Takes ownership of the weights. INVALID_ARGUMENT when the config is inconsistent.
  static absl::StatusOr<std::unique_ptr<CpuEngine>> Create(ModelWeights weights,
                                                           const CpuEngineOptions& options = {});

  // Runs the tokens of every item through the model in one batch, appending their K/V to each sequence
  // (allocating pool rows). Writes logits to `logits` as [rows, vocab]: one row per item (its last token),
  // or one per token for items with all_logits, in item order. RESOURCE_EXHAUSTED when the pool is full,
  // INVALID_ARGUMENT for a bad token id, an empty item or a step longer than the item's kv_budget,
  // OUT_OF_RANGE when a position would pass the model's context, FAILED_PRECONDITION when the policy
  // cannot free enough slots; in every error case nothing is changed. With a policy the step follows its
  // plan (worker/forward_plan.h: released slots reused in place, rebuilt tokens recomputed at their
  // positions before the new ones) and ObserveStep() receives what the new tokens saw.
  absl::Status Forward(std::span<ForwardItem> items, std::vector<float>* logits) override;

  // Frees a sequence's rows.
  void Release(SequenceKv& seq) override { pool_.Release(seq); }

  const ModelConfig& config() const override { return weights_.config; }
  const char* backend() const override { return "cpu"; }
  const ModelWeights& weights() const { return weights_; }
  KvPool& pool() { return pool_; }

 private:
  struct Layer {
    const float *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *w_gate, *w_up, *w_down;
  };
  CpuEngine(ModelWeights weights, int64_t kv_rows);
  absl::Status BindWeights();

  ModelWeights weights_;
  KvPool pool_;
  std::vector<Layer> layers_;
  const float* token_embd_ = nullptr;
  const float* output_norm_ = nullptr;
  const float* lm_head_ = nullptr;  // token_embd when tied
};

}  // namespace adore
