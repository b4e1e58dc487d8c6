// KV storage of the CUDA engine: bf16 K and V rows of every layer in one device allocation, handed out
// to sequences by physical row index. Sequences keep their slot tables (worker/kv_cache.h SequenceKv) on
// the host; attention kernels read rows through them, so nothing is ever compacted or copied.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/kv_cache.h"

namespace adore {

class CudaKvPool {
 public:
  // Allocates (and zeroes) `num_rows` rows of `row_dim` bf16 for K and for V in each layer on the current
  // device. RESOURCE_EXHAUSTED when the memory is not there, INVALID_ARGUMENT for a bad shape.
  static absl::StatusOr<std::unique_ptr<CudaKvPool>> Create(int64_t num_layers, int64_t num_rows, int64_t row_dim);
  ~CudaKvPool();
  CudaKvPool(const CudaKvPool&) = delete;
  CudaKvPool& operator=(const CudaKvPool&) = delete;

  // Bytes one row costs over all layers (K and V).
  static int64_t BytesPerRow(int64_t num_layers, int64_t row_dim) { return num_layers * 2 * row_dim * 2; }

  // Takes `n` free rows; RESOURCE_EXHAUSTED (taking none) when fewer are free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int64_t n) { return rows_.Allocate(n); }
  // Returns every row of `seq` to the pool and clears it.
  void Release(SequenceKv& seq) { rows_.Release(seq); }
  RowAllocator& rows() { return rows_; }

  __nv_bfloat16* k(int64_t layer) { return base_ + (2 * layer) * num_rows_ * row_dim_; }  // [num_rows, row_dim]
  __nv_bfloat16* v(int64_t layer) { return base_ + (2 * layer + 1) * num_rows_ * row_dim_; }
  int64_t num_rows() const { return num_rows_; }
  int64_t num_free() const { return rows_.num_free(); }
  int64_t row_dim() const { return row_dim_; }

 private:
  CudaKvPool() = default;
  int64_t num_layers_ = 0, num_rows_ = 0, row_dim_ = 0;
  __nv_bfloat16* base_ = nullptr;
  RowAllocator rows_;
};

}  // namespace adore
