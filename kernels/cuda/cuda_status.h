// CUDA / cuBLAS error codes as absl::Status, so launchers and the engine return errors instead of exiting.
#pragma once

#include <cublas_api.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace adore::kernels {

// OK for cudaSuccess; RESOURCE_EXHAUSTED for out-of-memory (the caller can shrink and retry);
// FAILED_PRECONDITION when there is no usable device or driver; INTERNAL otherwise. `what` names the call.
inline absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string msg = absl::StrCat(what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
  switch (err) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(msg);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice:
      return absl::FailedPreconditionError(msg);
    default:
      return absl::InternalError(msg);
  }
}

// The error of the launch just made on this thread (cudaGetLastError clears it).
inline absl::Status LaunchStatus(const char* kernel) { return CudaStatus(cudaGetLastError(), kernel); }

inline absl::Status CublasStatus(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string msg = absl::StrCat(what, ": ", cublasGetStatusString(st));
  if (st == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  if (st == CUBLAS_STATUS_NOT_INITIALIZED) return absl::FailedPreconditionError(msg);
  return absl::InternalError(msg);
}

}  // namespace adore::kernels

// Returns the CUDA error of `expr` (a cudaError_t) as a Status from the enclosing function.
#define ADORE_CUDA_RETURN_IF_ERROR(expr)                                               \
  do {                                                                                 \
    ::absl::Status adore_cuda_status_ = ::adore::kernels::CudaStatus((expr), #expr);   \
    if (!adore_cuda_status_.ok()) return adore_cuda_status_;                           \
  } while (0)
