#include "worker/memory_budget.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace adore {

int64_t WeightsFloatBytes(const ModelWeights& w) {
  int64_t n = 0;
  for (const auto& [name, t] : w.tensors) n += t.numel();
  if (w.tensors.empty()) {
    const ModelConfig& c = w.config;
    const int64_t d = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
    n = c.vocab_size * d * (c.tie_embeddings ? 1 : 2) + d +
        c.num_layers * (d * (q + 2 * kv) + q * d + 3 * c.intermediate_size * d + 2 * d);
  }
  return n * static_cast<int64_t>(sizeof(float));
}

absl::StatusOr<int64_t> CpuKvRowsForBudget(int64_t budget_bytes, int64_t weights_float_bytes, int64_t slot_bytes) {
  const int64_t rows = (budget_bytes - weights_float_bytes) / std::max<int64_t>(slot_bytes, 1);
  if (rows < 16) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("memory_budget_bytes: %d bytes do not hold the weights (%d bytes) and the smallest KV pool "
                        "(16 slots of %d bytes)",
                        budget_bytes, weights_float_bytes, slot_bytes));
  }
  return rows;
}

absl::StatusOr<int64_t> CudaKvBytesForBudget(int64_t budget_bytes, int64_t weights_float_bytes) {
  const int64_t kv_bytes = static_cast<int64_t>(0.9 * static_cast<double>(budget_bytes - weights_float_bytes / 2));
  if (kv_bytes <= 0) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "memory_budget_bytes: %d bytes do not hold the weights (%d bytes in bf16)", budget_bytes,
        weights_float_bytes / 2));
  }
  return kv_bytes;
}

}  // namespace adore
