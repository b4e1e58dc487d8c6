// FillUniform: deterministic pseudo-random bf16 fill (hash of seed and index) for synthetic weights.
#include "absl/strings/str_cat.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_status.h"

namespace adore::kernels {
namespace {

__device__ __forceinline__ uint64_t Mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Grid-stride; each element's value depends only on (seed, index), so the fill is the same for any
// launch shape and any device.
__global__ void FillUniformKernel(bf16* __restrict__ out, int64_t n, float low, float span, uint64_t seed) {
  const uint64_t key = Mix64(seed);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float u = static_cast<float>(Mix64(key ^ static_cast<uint64_t>(i)) >> 40) * (1.0f / 16777216.0f);
    out[i] = __float2bfloat16_rn(low + span * u);
  }
}

}  // namespace

absl::Status FillUniform(const FillUniformArgs& a, cudaStream_t stream) {
  if (a.out == nullptr && a.n > 0) return absl::InvalidArgumentError("FillUniform: out is required");
  if (a.n < 0 || !(a.high >= a.low)) {
    return absl::InvalidArgumentError(
        absl::StrCat("FillUniform: bad n=", a.n, " or range [", a.low, ", ", a.high, "]"));
  }
  if (a.n == 0) return absl::OkStatus();
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>(CeilDiv(a.n, threads), 32 * int64_t{CurrentDeviceSmCount()});
  FillUniformKernel<<<blocks, threads, 0, stream>>>(a.out, a.n, a.low, a.high - a.low, a.seed);
  return LaunchStatus("FillUniformKernel");
}

}  // namespace adore::kernels
