// Matrix products of the CUDA backend through cuBLAS: bf16 inputs, float32 accumulation, bf16 or float32
// output. Host-only header.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace adore::kernels {

// y = x * w^T (+ y when accumulate): a Linear layer with PyTorch's [out, in] weight layout, as MatMulRef.
// Exactly one of y_bf16 / y_f32 is set. Row strides (in elements) let x be a slice of a wider activation
// and y a slice of a wider output; 0 means dense (in / out).
struct LinearArgs {
  const __nv_bfloat16* x = nullptr;  // [n, x_stride], first `in` columns
  const __nv_bfloat16* w = nullptr;  // [out, in]
  int64_t n = 0, in = 0, out = 0;
  int64_t x_stride = 0;
  __nv_bfloat16* y_bf16 = nullptr;  // [n, y_stride], or
  float* y_f32 = nullptr;           // [n, y_stride]
  int64_t y_stride = 0;
  bool accumulate = false;  // y += x w^T (float32 y keeps a float32 residual stream exact)
};

// Owns a cuBLAS handle and its workspace (preallocated, so products never allocate and can be captured
// in a CUDA graph). One per thread/stream user; not thread-safe.
class Blas {
 public:
  // FAILED_PRECONDITION without a usable GPU, RESOURCE_EXHAUSTED when the workspace cannot be allocated.
  static absl::StatusOr<std::unique_ptr<Blas>> Create(size_t workspace_bytes = size_t{32} << 20);
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // INVALID_ARGUMENT for a bad shape or missing pointer (nothing launched), INTERNAL for a cuBLAS failure.
  absl::Status Linear(const LinearArgs& args, cudaStream_t stream);

 private:
  Blas() = default;
  cublasHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

}  // namespace adore::kernels
