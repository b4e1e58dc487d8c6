// What evaluation and serving code needs from an engine, whichever backend runs it (CpuEngine,
// CudaEngine): batched forward calls over sequences with slot tables, and releasing a sequence's rows.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "common/model_config.h"
#include "worker/forward_plan.h"
#include "worker/kv_cache.h"
#include "worker/release_policy.h"
#include "worker/sampler.h"

namespace adore {

class Engine {
 public:
  virtual ~Engine() = default;
  // Runs the items' tokens in one batch and writes their logits [rows, vocab] (see CpuEngine::Forward).
  virtual absl::Status Forward(std::span<ForwardItem> items, std::vector<float>* logits) = 0;
  // Engines that sample on their device (CudaEngine): Forward, then one token per item drawn there from its
  // last logit row with params[i], so only the token ids reach the host (not [items, vocab] logits). Draws are
  // stateless (the seed mixed with the position), so they differ from the host Sampler's stream.
  virtual bool samples_on_device() const { return false; }
  // The release policy for one sequence this engine will run. The default is MakeReleasePolicy (the policy
  // runs on the host); an engine may return its own implementation (CudaEngine: adore with the controller
  // on the GPU), which only that engine can run.
  virtual absl::StatusOr<std::unique_ptr<ReleasePolicy>> MakePolicy(const ReleaseConfig& config) {
    return MakeReleasePolicy(config);
  }
  virtual absl::Status ForwardSample(std::span<ForwardItem> items, std::span<const SamplingParams> params,
                                     std::vector<int32_t>* tokens) {
    (void)items, (void)params, (void)tokens;
    return absl::UnimplementedError("this engine samples on the host: call Forward and use a Sampler");
  }
  // New tokens an item under a releasing policy may bring per forward call (the CUDA engine's decode
  // kernels report one query's attention per item, so its prompts under a policy go token by token).
  virtual int64_t max_policy_tokens_per_item() const { return 1; }
  // Frees a sequence's rows.
  virtual void Release(SequenceKv& seq) = 0;
  virtual const ModelConfig& config() const = 0;
  virtual const char* backend() const = 0;  // "cpu", "cuda"
};

// Prompt tokens per forward call for a sequence under `policy` at `budget`: `chunk`, bounded by the engine
// and the policy, at least 1. Before each chunk the policy releases room for all of it, so the chunk's
// tokens see what the policy kept plus the chunk's earlier tokens (1: token by token, as in decoding).
inline constexpr int64_t kDefaultPolicyPrefillChunk = 32;
// A deployment's policy_prefill_chunk option (LoadRequest, adore-server) as tokens: 0 = the default.
inline int64_t PolicyPrefillChunkOption(int64_t option) { return option > 0 ? option : kDefaultPolicyPrefillChunk; }
inline int64_t PolicyPromptChunk(const Engine& engine, const ReleasePolicy& policy, int64_t budget, int64_t chunk) {
  return std::max<int64_t>(
      1, std::min({chunk, engine.max_policy_tokens_per_item(), policy.max_new_per_step(budget)}));
}

// The forward item of a prompt's next chunk under `policy` (PolicyPromptChunk tokens from *done, which
// advances past them), its next_new the length of the call after it: the chunk that follows, or 1 (the
// first decode step). Engines that plan a step ahead rely on that count.
inline ForwardItem NextPolicyPromptChunk(const Engine& engine, SequenceKv* seq, ReleasePolicy* policy, int64_t budget,
                                         int64_t chunk_option, std::span<const int32_t> prompt, size_t* done) {
  const size_t chunk = static_cast<size_t>(PolicyPromptChunk(engine, *policy, budget, chunk_option));
  const size_t len = std::min(chunk, prompt.size() - *done);
  ForwardItem item{seq, prompt.subspan(*done, len), false, policy, budget};
  *done += len;
  item.next_new = static_cast<int64_t>(std::max<size_t>(1, std::min(chunk, prompt.size() - *done)));
  return item;
}

}  // namespace adore
