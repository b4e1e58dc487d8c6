// How a memory budget (bytes one rank may use for weights, KV pool and workspaces together) becomes a KV
// pool: the Worker API's LoadRequest.memory_budget_bytes and adore-server's --memory_budget_bytes.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "common/model_weights.h"

namespace adore {

// float32 bytes of the model's weights (a synthetic model's from its shape: it has no tensors loaded).
int64_t WeightsFloatBytes(const ModelWeights& weights);

// CPU engine: the KV pool rows the budget holds after the float32 weights (workspaces are small next to
// them), `slot_bytes` per row. RESOURCE_EXHAUSTED "memory_budget_bytes" below 16 rows.
absl::StatusOr<int64_t> CpuKvRowsForBudget(int64_t budget_bytes, int64_t weights_float_bytes, int64_t slot_bytes);

// CUDA engine: the KV pool bytes the budget holds after the bf16 weights, less a 10% margin for the
// workspaces. RESOURCE_EXHAUSTED "memory_budget_bytes" when nothing is left.
absl::StatusOr<int64_t> CudaKvBytesForBudget(int64_t budget_bytes, int64_t weights_float_bytes);

}  // namespace adore
