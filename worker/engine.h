// What evaluation and serving code needs from an engine, whichever backend runs it (CpuEngine,
// CudaEngine): batched forward calls over sequences with slot tables, and releasing a sequence's rows.
#pragma once

#include <span>
#include <vector>

#include "absl/status/status.h"
#include "common/model_config.h"
#include "worker/forward_plan.h"
#include "worker/kv_cache.h"

namespace adore {

class Engine {
 public:
  virtual ~Engine() = default;
  // Runs the items' tokens in one batch and writes their logits [rows, vocab] (see CpuEngine::Forward).
  virtual absl::Status Forward(std::span<ForwardItem> items, std::vector<float>* logits) = 0;
  // Frees a sequence's rows.
  virtual void Release(SequenceKv& seq) = 0;
  virtual const ModelConfig& config() const = 0;
  virtual const char* backend() const = 0;  // "cpu", "cuda"
};

}  // namespace adore
