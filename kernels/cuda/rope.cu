// Rope: rotary position embedding on interleaved pairs, in place on bf16 (Q and K heads of a fused row).
#include "absl/strings/str_cat.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_status.h"

namespace adore::kernels {
namespace {

// One block per token; a thread per (pair j, head group). The angle of pair j is computed once and applied
// to every head. Float32 math as RopeRef: inv_freq = theta^(-2j / rot_dim), angle = pos * inv_freq, then
// precise sincosf (angles reach thousands of radians; the fast intrinsic would lose them).
__global__ void RopeKernel(bf16* __restrict__ x,  // [n, row_stride]
                           int64_t row_stride,
                           const int32_t* __restrict__ positions,  // [n]
                           int num_heads, int head_dim, int rot_dim, float theta) {
  const int64_t i = blockIdx.x;
  const int half = rot_dim / 2;
  const float pos = static_cast<float>(positions[i]);
  bf16* row = x + i * row_stride;
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    const float inv_freq = powf(theta, -2.0f * static_cast<float>(j) / static_cast<float>(rot_dim));
    float s, c;
    sincosf(pos * inv_freq, &s, &c);
    for (int h = threadIdx.y; h < num_heads; h += blockDim.y) {
      __nv_bfloat162* p = reinterpret_cast<__nv_bfloat162*>(row + static_cast<int64_t>(h) * head_dim + 2 * j);
      const float2 v = __bfloat1622float2(*p);
      *p = __floats2bfloat162_rn(v.x * c - v.y * s, v.x * s + v.y * c);
    }
  }
}

}  // namespace

absl::Status Rope(const RopeArgs& a, cudaStream_t stream) {
  if (a.x == nullptr || a.positions == nullptr) return absl::InvalidArgumentError("Rope: x and positions are required");
  if (a.n < 0 || a.n > (int64_t{1} << 31) - 1 || a.num_heads <= 0 || a.head_dim <= 0 || a.head_dim % 2 != 0 ||
      a.rot_dim <= 0 || a.rot_dim % 2 != 0 || a.rot_dim > a.head_dim || a.num_heads > (1 << 20) ||
      a.head_dim > (1 << 20) || a.row_stride < a.num_heads * a.head_dim || a.row_stride % 2 != 0 ||
      !(a.theta > 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("Rope: bad shape n=", a.n, " num_heads=", a.num_heads,
                                                   " head_dim=", a.head_dim, " rot_dim=", a.rot_dim,
                                                   " row_stride=", a.row_stride, " theta=", a.theta));
  }
  if (!IsAligned(a.x, 4)) return absl::InvalidArgumentError("Rope: x must be 4-byte aligned");
  if (a.n == 0) return absl::OkStatus();
  const int half = static_cast<int>(a.rot_dim / 2);
  const int tx = std::min(half, 64);
  const int ty = static_cast<int>(std::min<int64_t>(a.num_heads, std::max(1, 256 / tx)));
  RopeKernel<<<a.n, dim3(tx, ty), 0, stream>>>(a.x, a.row_stride, a.positions, static_cast<int>(a.num_heads),
                                              static_cast<int>(a.head_dim), static_cast<int>(a.rot_dim), a.theta);
  return LaunchStatus("RopeKernel");
}

}  // namespace adore::kernels
