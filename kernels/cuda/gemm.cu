// Blas::Linear: row-major y = x w^T through cublasGemmEx (bf16 in, f32 compute).
#include "kernels/cuda/gemm.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda/cuda_status.h"

namespace adore::kernels {

absl::StatusOr<std::unique_ptr<Blas>> Blas::Create(size_t workspace_bytes) {
  std::unique_ptr<Blas> blas(new Blas());
  ADORE_RETURN_IF_ERROR(CublasStatus(cublasCreate(&blas->handle_), "cublasCreate"));
  if (workspace_bytes > 0) {
    ADORE_CUDA_RETURN_IF_ERROR(cudaMalloc(&blas->workspace_, workspace_bytes));
    blas->workspace_bytes_ = workspace_bytes;
    ADORE_RETURN_IF_ERROR(CublasStatus(cublasSetWorkspace(blas->handle_, blas->workspace_, workspace_bytes),
                                       "cublasSetWorkspace"));
  }
  // Products stay in float32 accumulation; no reduced-precision split-K reductions.
  ADORE_RETURN_IF_ERROR(CublasStatus(
      cublasSetMathMode(blas->handle_, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                                                 CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)),
      "cublasSetMathMode"));
  return blas;
}

Blas::~Blas() {
  if (handle_ != nullptr) cublasDestroy(handle_);
  if (workspace_ != nullptr) cudaFree(workspace_);
}

absl::Status Blas::Linear(const LinearArgs& a, cudaStream_t stream) {
  if (a.x == nullptr || a.w == nullptr || (a.y_bf16 == nullptr) == (a.y_f32 == nullptr)) {
    return absl::InvalidArgumentError("Linear: x, w and exactly one of y_bf16 / y_f32 are required");
  }
  const int64_t x_stride = a.x_stride > 0 ? a.x_stride : a.in;
  const int64_t y_stride = a.y_stride > 0 ? a.y_stride : a.out;
  constexpr int64_t kMax = (int64_t{1} << 31) - 1;
  if (a.n < 0 || a.in <= 0 || a.out <= 0 || a.n > kMax || a.in > kMax || a.out > kMax || x_stride < a.in ||
      y_stride < a.out || x_stride > kMax || y_stride > kMax) {
    return absl::InvalidArgumentError(absl::StrCat("Linear: bad shape n=", a.n, " in=", a.in, " out=", a.out,
                                                   " x_stride=", x_stride, " y_stride=", y_stride));
  }
  if (a.n == 0) return absl::OkStatus();
  ADORE_RETURN_IF_ERROR(CublasStatus(cublasSetStream(handle_, stream), "cublasSetStream"));
  const float alpha = 1.0f, beta = a.accumulate ? 1.0f : 0.0f;
  // Row-major y[n, out] is column-major y^T[out, n] = w (col-major [in, out], transposed) * x^T.
  void* y = a.y_f32 != nullptr ? static_cast<void*>(a.y_f32) : static_cast<void*>(a.y_bf16);
  const cudaDataType_t y_type = a.y_f32 != nullptr ? CUDA_R_32F : CUDA_R_16BF;
  return CublasStatus(
      cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(a.out), static_cast<int>(a.n),
                   static_cast<int>(a.in), &alpha, a.w, CUDA_R_16BF, static_cast<int>(a.in), a.x, CUDA_R_16BF,
                   static_cast<int>(x_stride), &beta, y, y_type, static_cast<int>(y_stride), CUBLAS_COMPUTE_32F,
                   CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx");
}

}  // namespace adore::kernels
