// CudaKvPool: one device allocation for every layer's K/V rows, plus the host-side free-row stack.
#include "worker/cuda/cuda_kv_pool.h"

#include <cuda_runtime_api.h>

#include "absl/strings/str_format.h"
#include "kernels/cuda/cuda_status.h"

namespace adore {

absl::StatusOr<std::unique_ptr<CudaKvPool>> CudaKvPool::Create(int64_t num_layers, int64_t num_rows,
                                                               int64_t row_dim) {
  if (num_layers <= 0 || num_rows <= 0 || row_dim <= 0 || num_rows > (int64_t{1} << 31) - 1) {
    return absl::InvalidArgumentError(absl::StrFormat("KV pool: bad shape layers=%d rows=%d row_dim=%d",
                                                      num_layers, num_rows, row_dim));
  }
  std::unique_ptr<CudaKvPool> pool(new CudaKvPool());
  pool->num_layers_ = num_layers;
  pool->num_rows_ = num_rows;
  pool->row_dim_ = row_dim;
  const size_t bytes = static_cast<size_t>(BytesPerRow(num_layers, row_dim)) * num_rows;
  absl::Status st =
      kernels::CudaStatus(cudaMalloc(reinterpret_cast<void**>(&pool->base_), bytes), "cudaMalloc(KV pool)");
  if (!st.ok()) {
    pool->base_ = nullptr;
    return absl::Status(st.code(), absl::StrFormat("%s: %d rows, %.2f GiB", st.message(), num_rows,
                                                   bytes / 1073741824.0));
  }
  // Zeroed so that no row ever holds NaN bit patterns, whatever a kernel does with an unwritten row.
  ADORE_CUDA_RETURN_IF_ERROR(cudaMemset(pool->base_, 0, bytes));
  pool->rows_ = RowAllocator(num_rows);
  return pool;
}

CudaKvPool::~CudaKvPool() {
  if (base_ != nullptr) cudaFree(base_);
}

}  // namespace adore
