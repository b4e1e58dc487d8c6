// Helpers for the CUDA tests: skipping without a GPU, device buffers, bf16 conversion, random inputs and
// the error measure every kernel test uses.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/adore_controller_file.h"  // RandomFloats

namespace adore::testing {

// True when a CUDA device can be used; otherwise `why` says what failed (no driver, no device...).
inline bool GpuAvailable(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    *why = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(err);
    cudaGetLastError();
    return false;
  }
  if (count == 0) {
    *why = "cudaGetDeviceCount returned 0 devices";
    return false;
  }
  return true;
}

// For a test body or SetUp(): skips (passing) when no GPU is visible, so CI without a GPU stays green.
#define ADORE_SKIP_WITHOUT_GPU()                                                      \
  do {                                                                                \
    std::string adore_why_;                                                           \
    if (!::adore::testing::GpuAvailable(&adore_why_)) {                               \
      GTEST_SKIP() << "no usable CUDA GPU (" << adore_why_ << "); CUDA test skipped"; \
    }                                                                                 \
  } while (0)

#define ADORE_ASSERT_CUDA(expr)                                            \
  do {                                                                     \
    const cudaError_t adore_err_ = (expr);                                 \
    ASSERT_EQ(adore_err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(adore_err_); \
  } while (0)

// A device array freed on destruction. Allocation failures leave it empty and fail the test.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) { Resize(n); }
  explicit DeviceBuffer(const std::vector<T>& host) { Upload(host); }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void Resize(size_t n) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    size_ = n;
    const cudaError_t err = cudaMalloc(&ptr_, std::max<size_t>(n, 1) * sizeof(T));
    EXPECT_EQ(err, cudaSuccess) << "cudaMalloc of " << n * sizeof(T) << " bytes: " << cudaGetErrorString(err);
  }
  void Upload(const std::vector<T>& host) {
    Resize(host.size());
    if (!host.empty()) {
      const cudaError_t err = cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
      EXPECT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
    }
  }
  std::vector<T> Download() const {
    std::vector<T> host(size_);
    if (size_ > 0) {
      const cudaError_t err = cudaMemcpy(host.data(), ptr_, size_ * sizeof(T), cudaMemcpyDeviceToHost);
      EXPECT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
    }
    return host;
  }
  T* get() const { return ptr_; }
  size_t size() const { return size_; }

 private:
  T* ptr_ = nullptr;
  size_t size_ = 0;
};

inline std::vector<__nv_bfloat16> ToBf16(const std::vector<float>& v) {
  std::vector<__nv_bfloat16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __float2bfloat16_rn(v[i]);
  return out;
}
inline std::vector<float> ToFloat(const std::vector<__nv_bfloat16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __bfloat162float(v[i]);
  return out;
}
// The float values a bf16 array holds: what the CPU reference must see to measure only compute error.
inline std::vector<float> RoundToBf16(const std::vector<float>& v) { return ToFloat(ToBf16(v)); }

// max |got - ref| / max |ref|: the relative error of an output array (1e-2 is the bf16 budget).
inline double RelError(const std::vector<float>& got, const std::vector<float>& ref) {
  double max_diff = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - ref[i]);
    max_diff = std::isnan(d) ? INFINITY : std::max(max_diff, d);
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(ref[i])));
  }
  return max_ref > 0.0 ? max_diff / max_ref : max_diff;
}

// <rel> and tests/data/<rel> of the source tree; $ADORE_SOURCE_DIR overrides the tree compiled in, for binaries run
// from a copy of the repository on another machine (tools/cuda_smoke.sh sets it).
inline std::string SourcePath(const std::string& rel) {
  if (const char* env = std::getenv("ADORE_SOURCE_DIR")) return std::string(env) + "/" + rel;
  return std::string(ADORE_SOURCE_DIR) + "/" + rel;
}
inline std::string SourceDataPath(const std::string& rel) { return SourcePath("tests/data/" + rel); }

}  // namespace adore::testing
