// What evaluation and serving code needs from an engine, whichever backend runs it (CpuEngine,
// CudaEngine): batched forward calls over sequences with slot tables, and releasing a sequence's rows.
#pragma once

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
  // Frees a sequence's rows.
  virtual void Release(SequenceKv& seq) = 0;
  virtual const ModelConfig& config() const = 0;
  virtual const char* backend() const = 0;  // "cpu", "cuda"
};

}  // namespace adore
