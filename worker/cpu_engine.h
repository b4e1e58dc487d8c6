// The CPU engine: a Llama-family forward pass in float32 (BLAS matrix products) over a batch of sequences,
// each reading and writing its KV through a slot table (worker/kv_cache.h).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_weights.h"
#include "worker/kv_cache.h"
#include "worker/release_policy.h"

namespace adore {

// One sequence's share of a forward call: `tokens` are appended at positions seq->next_pos...
struct ForwardItem {
  SequenceKv* seq = nullptr;
  std::span<const int32_t> tokens;
  bool all_logits = false;  // logits for every token (evaluation) instead of the last one only
  // Optional KV budget: when the sequence would exceed `kv_budget` slots, `policy` picks slots to release
  // and the new tokens overwrite them in place. Null policy = unbounded (full attention).
  ReleasePolicy* policy = nullptr;
  int64_t kv_budget = 0;
};

// What both engines check first in a forward call: every item has a sequence and tokens, the ids are in
// the vocabulary and no position passes the model's context. INVALID_ARGUMENT / OUT_OF_RANGE naming the
// item otherwise. Counts what the call needs.
struct ForwardShape {
  int64_t num_tokens = 0;      // over all items
  int64_t num_logit_rows = 0;  // one per item, or one per token for all_logits items
  int64_t num_slots = 0;       // slots of all items' sequences after the call, without release
};
absl::StatusOr<ForwardShape> CheckForwardItems(std::span<const ForwardItem> items, const ModelConfig& config);

struct CpuEngineOptions {
  int64_t kv_rows = 0;  // KV pool capacity in tokens over all sequences; 0 = max_context
};

class CpuEngine {
 public:
  // Takes ownership of the weights. INVALID_ARGUMENT when the config is inconsistent.
  static absl::StatusOr<std::unique_ptr<CpuEngine>> Create(ModelWeights weights,
                                                           const CpuEngineOptions& options = {});

  // Runs the tokens of every item through the model in one batch, appending their K/V to each sequence
  // (allocating pool rows). Writes logits to `logits` as [rows, vocab]: one row per item (its last token),
  // or one per token for items with all_logits, in item order. RESOURCE_EXHAUSTED when the pool is full,
  // INVALID_ARGUMENT for a bad token id, an empty item or a step longer than the item's kv_budget,
  // OUT_OF_RANGE when a position would pass the model's context, FAILED_PRECONDITION when the policy
  // cannot free enough slots; in every error case nothing is changed. With a policy, Observe() receives
  // the attention mass per slot after the step.
  absl::Status Forward(std::span<ForwardItem> items, std::vector<float>* logits);

  // Frees a sequence's rows.
  void Release(SequenceKv& seq) { pool_.Release(seq); }

  const ModelConfig& config() const { return weights_.config; }
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
