// Embedding: gathers rows of a bf16 table (token ids -> activations, or any row gather), bf16 or f32 out.
#include "absl/strings/str_cat.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_status.h"

namespace adore::kernels {
namespace {

// One block per output row. VEC = 8 moves 16 bytes of bf16 per thread step (needs dim % 8 == 0 and
// 16-byte aligned rows); VEC = 1 is the general fallback.
template <int VEC, typename Out>
__global__ void EmbeddingKernel(const bf16* __restrict__ table,  // [vocab, dim]
                                int64_t vocab, int64_t dim,
                                const int32_t* __restrict__ ids,  // [n]
                                Out* __restrict__ out) {          // [n, dim]
  const int64_t i = blockIdx.x;
  const int32_t id = ids[i];
  const bool valid = id >= 0 && id < vocab;
  const bf16* src = table + static_cast<int64_t>(valid ? id : 0) * dim;
  Out* dst = out + i * dim;
  for (int64_t j = static_cast<int64_t>(threadIdx.x) * VEC; j < dim; j += static_cast<int64_t>(blockDim.x) * VEC) {
    if constexpr (VEC == 8) {
      float f[8];
      if (valid) {
        Bf16x8ToFloat(*reinterpret_cast<const uint4*>(src + j), f);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) f[e] = 0.0f;
      }
      if constexpr (sizeof(Out) == 4) {
        reinterpret_cast<float4*>(dst + j)[0] = make_float4(f[0], f[1], f[2], f[3]);
        reinterpret_cast<float4*>(dst + j)[1] = make_float4(f[4], f[5], f[6], f[7]);
      } else {
        *reinterpret_cast<uint4*>(dst + j) = FloatToBf16x8(f);
      }
    } else {
      const float f = valid ? __bfloat162float(src[j]) : 0.0f;
      if constexpr (sizeof(Out) == 4) {
        dst[j] = f;
      } else {
        dst[j] = __float2bfloat16_rn(f);
      }
    }
  }
}

template <typename Out>
absl::Status LaunchEmbedding(const EmbeddingArgs& a, Out* out, cudaStream_t stream) {
  const bool vec = a.dim % 8 == 0 && IsAligned(a.table, 16) && IsAligned(out, 16);
  const int threads = static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(32, CeilDiv(a.dim, vec ? 8 : 1))));
  if (vec) {
    EmbeddingKernel<8, Out><<<a.n, threads, 0, stream>>>(a.table, a.vocab, a.dim, a.ids, out);
  } else {
    EmbeddingKernel<1, Out><<<a.n, threads, 0, stream>>>(a.table, a.vocab, a.dim, a.ids, out);
  }
  return LaunchStatus("EmbeddingKernel");
}

}  // namespace

absl::Status Embedding(const EmbeddingArgs& a, cudaStream_t stream) {
  if (a.table == nullptr || a.ids == nullptr) {
    return absl::InvalidArgumentError("Embedding: table and ids are required");
  }
  if (a.vocab <= 0 || a.dim <= 0 || a.n < 0 || a.n > (int64_t{1} << 31) - 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("Embedding: bad shape vocab=", a.vocab, " dim=", a.dim, " n=", a.n));
  }
  if ((a.out_f32 == nullptr) == (a.out_bf16 == nullptr)) {
    return absl::InvalidArgumentError("Embedding: set exactly one of out_f32 and out_bf16");
  }
  if (a.n == 0) return absl::OkStatus();
  return a.out_f32 != nullptr ? LaunchEmbedding(a, a.out_f32, stream) : LaunchEmbedding(a, a.out_bf16, stream);
}

}  // namespace adore::kernels
