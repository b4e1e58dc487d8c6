// AddRmsNorm: fused residual add (float32 residual stream) + RMSNorm with a bf16 weight, bf16 output.
#include "absl/strings/str_cat.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_status.h"

namespace adore::kernels {
namespace {

constexpr int kThreads = 256;

// One block per row. Pass 1 adds x into the residual and sums squares; pass 2 rereads the residual (the
// same thread's own writes, from L1/L2) and scales. VEC = 4 moves a float4 of residual and 8 bytes of
// bf16 per step (dim % 4 == 0, aligned rows); VEC = 1 is the general fallback.
template <int VEC>
__global__ void __launch_bounds__(kThreads) AddRmsNormKernel(float* __restrict__ residual,   // [n, dim]
                                                             const bf16* __restrict__ x,      // [n, dim] or null
                                                             const bf16* __restrict__ weight,  // [dim]
                                                             int64_t dim, float eps,
                                                             bf16* __restrict__ out) {        // [n, dim]
  __shared__ float shared[32];
  const int64_t row = blockIdx.x;
  float* r = residual + row * dim;
  const bf16* xr = x != nullptr ? x + row * dim : nullptr;
  bf16* o = out + row * dim;
  float sum_sq = 0.0f;
  for (int64_t j = static_cast<int64_t>(threadIdx.x) * VEC; j < dim; j += kThreads * VEC) {
    if constexpr (VEC == 4) {
      float4 v = *reinterpret_cast<const float4*>(r + j);
      if (xr != nullptr) {
        const uint2 raw = *reinterpret_cast<const uint2*>(xr + j);
        const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
        const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
        v.x += a.x;
        v.y += a.y;
        v.z += b.x;
        v.w += b.y;
        *reinterpret_cast<float4*>(r + j) = v;
      }
      sum_sq += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    } else {
      float v = r[j];
      if (xr != nullptr) {
        v += __bfloat162float(xr[j]);
        r[j] = v;
      }
      sum_sq += v * v;
    }
  }
  const float inv = rsqrtf(BlockSum(sum_sq, shared) / static_cast<float>(dim) + eps);
  for (int64_t j = static_cast<int64_t>(threadIdx.x) * VEC; j < dim; j += kThreads * VEC) {
    if constexpr (VEC == 4) {
      const float4 v = *reinterpret_cast<const float4*>(r + j);
      const uint2 wraw = *reinterpret_cast<const uint2*>(weight + j);
      const float2 w0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&wraw.x));
      const float2 w1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&wraw.y));
      uint2 packed;
      *reinterpret_cast<__nv_bfloat162*>(&packed.x) = __floats2bfloat162_rn(v.x * inv * w0.x, v.y * inv * w0.y);
      *reinterpret_cast<__nv_bfloat162*>(&packed.y) = __floats2bfloat162_rn(v.z * inv * w1.x, v.w * inv * w1.y);
      *reinterpret_cast<uint2*>(o + j) = packed;
    } else {
      o[j] = __float2bfloat16_rn(r[j] * inv * __bfloat162float(weight[j]));
    }
  }
}

}  // namespace

absl::Status AddRmsNorm(const AddRmsNormArgs& a, cudaStream_t stream) {
  if (a.residual == nullptr || a.weight == nullptr || a.out == nullptr) {
    return absl::InvalidArgumentError("AddRmsNorm: residual, weight and out are required");
  }
  if (a.n < 0 || a.dim <= 0 || a.n > (int64_t{1} << 31) - 1 || !(a.eps >= 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("AddRmsNorm: bad shape n=", a.n, " dim=", a.dim, " eps=", a.eps));
  }
  if (a.n == 0) return absl::OkStatus();
  const bool vec = a.dim % 4 == 0 && IsAligned(a.residual, 16) && IsAligned(a.weight, 8) && IsAligned(a.out, 8) &&
                   (a.x == nullptr || IsAligned(a.x, 8));
  if (vec) {
    AddRmsNormKernel<4><<<a.n, kThreads, 0, stream>>>(a.residual, a.x, a.weight, a.dim, a.eps, a.out);
  } else {
    AddRmsNormKernel<1><<<a.n, kThreads, 0, stream>>>(a.residual, a.x, a.weight, a.dim, a.eps, a.out);
  }
  return LaunchStatus("AddRmsNormKernel");
}

}  // namespace adore::kernels
