// SwiGlu: out = silu(gate) * up on bf16 rows (gate and up may be the halves of one fused product).
#include "absl/strings/str_cat.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_status.h"

namespace adore::kernels {
namespace {

constexpr int kThreads = 256;

// Grid (column blocks, rows). VEC = 8: 16-byte loads/stores (width and strides % 8 == 0, aligned bases).
template <int VEC>
__global__ void __launch_bounds__(kThreads) SwiGluKernel(const bf16* __restrict__ gate, int64_t gate_stride,
                                                         const bf16* __restrict__ up, int64_t up_stride,
                                                         bf16* __restrict__ out, int64_t out_stride,
                                                         int64_t width) {
  const int64_t row = blockIdx.y;
  const int64_t j = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * VEC;
  if (j >= width) return;
  const bf16* g = gate + row * gate_stride + j;
  const bf16* u = up + row * up_stride + j;
  bf16* o = out + row * out_stride + j;
  if constexpr (VEC == 8) {
    float gf[8], uf[8], of[8];
    Bf16x8ToFloat(*reinterpret_cast<const uint4*>(g), gf);
    Bf16x8ToFloat(*reinterpret_cast<const uint4*>(u), uf);
#pragma unroll
    for (int e = 0; e < 8; ++e) of[e] = gf[e] / (1.0f + expf(-gf[e])) * uf[e];
    *reinterpret_cast<uint4*>(o) = FloatToBf16x8(of);
  } else {
    const float gv = __bfloat162float(*g);
    *o = __float2bfloat16_rn(gv / (1.0f + expf(-gv)) * __bfloat162float(*u));
  }
}

}  // namespace

absl::Status SwiGlu(const SwiGluArgs& a, cudaStream_t stream) {
  if (a.gate == nullptr || a.up == nullptr || a.out == nullptr) {
    return absl::InvalidArgumentError("SwiGlu: gate, up and out are required");
  }
  if (a.n < 0 || a.n > 65535 || a.width <= 0 || a.gate_stride < a.width || a.up_stride < a.width ||
      a.out_stride < a.width) {
    return absl::InvalidArgumentError(absl::StrCat("SwiGlu: bad shape n=", a.n, " width=", a.width, " strides=",
                                                   a.gate_stride, "/", a.up_stride, "/", a.out_stride,
                                                   " (n at most 65535 rows per call)"));
  }
  if (a.n == 0) return absl::OkStatus();
  const bool vec = a.width % 8 == 0 && a.gate_stride % 8 == 0 && a.up_stride % 8 == 0 && a.out_stride % 8 == 0 &&
                   IsAligned(a.gate, 16) && IsAligned(a.up, 16) && IsAligned(a.out, 16);
  const int v = vec ? 8 : 1;
  const dim3 grid(static_cast<unsigned>(CeilDiv(a.width, int64_t{kThreads} * v)), static_cast<unsigned>(a.n));
  if (vec) {
    SwiGluKernel<8><<<grid, kThreads, 0, stream>>>(a.gate, a.gate_stride, a.up, a.up_stride, a.out, a.out_stride,
                                                   a.width);
  } else {
    SwiGluKernel<1><<<grid, kThreads, 0, stream>>>(a.gate, a.gate_stride, a.up, a.up_stride, a.out, a.out_stride,
                                                   a.width);
  }
  return LaunchStatus("SwiGluKernel");
}

}  // namespace adore::kernels
