// Rope: rotary position embedding on interleaved pairs, in place on bf16 (Q and K heads of a fused row),
// optionally copying each row's rotated K and its V into the KV pool in the same launch (KvWrite fused in).
#include "absl/strings/str_cat.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_status.h"

namespace adore::kernels {
namespace {

// Where a row's K and V go in the pool when KvWrite is fused in.
struct KvDest {
  const int32_t* rows;  // nullptr: rotate only
  int64_t k_col, v_col, row_dim, num_rows;
  bf16 *k_cache, *v_cache;
};

// One block per token; a thread per (pair j, head group). The angle of pair j is computed once and applied
// to every head. Float32 math as RopeRef: inv_freq = theta^(-2j / rot_dim), angle = pos * inv_freq, then
// precise sincosf (angles reach thousands of radians; the fast intrinsic would lose them). With a KvDest,
// the block then copies the row's rotated K and its V into the pool (VEC = 8: 16-byte moves).
template <int VEC>
__global__ void RopeKernel(bf16* __restrict__ x,  // [n, row_stride]
                           int64_t row_stride,
                           const int32_t* __restrict__ positions,  // [n]
                           int num_heads, int head_dim, int rot_dim, float theta, KvDest kv) {
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
  if (kv.rows == nullptr) return;
  const int32_t dst = kv.rows[i];
  if (dst < 0 || dst >= kv.num_rows) return;  // uniform over the block
  __syncthreads();  // the rotated K pairs, written by other threads of the block, are visible after this
  const bf16* ks = row + kv.k_col;
  const bf16* vs = row + kv.v_col;
  bf16* kd = kv.k_cache + static_cast<int64_t>(dst) * kv.row_dim;
  bf16* vd = kv.v_cache + static_cast<int64_t>(dst) * kv.row_dim;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x, nthreads = blockDim.x * blockDim.y;
  for (int64_t j = static_cast<int64_t>(tid) * VEC; j < kv.row_dim; j += static_cast<int64_t>(nthreads) * VEC) {
    if constexpr (VEC == 8) {
      *reinterpret_cast<uint4*>(kd + j) = *reinterpret_cast<const uint4*>(ks + j);
      *reinterpret_cast<uint4*>(vd + j) = *reinterpret_cast<const uint4*>(vs + j);
    } else {
      kd[j] = ks[j];
      vd[j] = vs[j];
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
  KvDest kv{};
  bool vec = false;
  if (a.kv_rows != nullptr) {
    if (a.k_cache == nullptr || a.v_cache == nullptr || a.num_kv_heads <= 0 || a.kv_first_head < 0 ||
        a.kv_first_head + a.num_kv_heads > a.num_heads || a.v_offset < a.num_heads * a.head_dim ||
        a.v_offset + a.num_kv_heads * a.head_dim > a.row_stride || a.num_kv_rows <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Rope: bad fused K/V write: kv_first_head=", a.kv_first_head, " num_kv_heads=", a.num_kv_heads,
          " v_offset=", a.v_offset, " num_kv_rows=", a.num_kv_rows, " (num_heads=", a.num_heads,
          " head_dim=", a.head_dim, " row_stride=", a.row_stride, "; caches required)"));
    }
    kv = {.rows = a.kv_rows, .k_col = a.kv_first_head * a.head_dim, .v_col = a.v_offset,
          .row_dim = a.num_kv_heads * a.head_dim, .num_rows = a.num_kv_rows, .k_cache = a.k_cache,
          .v_cache = a.v_cache};
    vec = kv.row_dim % 8 == 0 && kv.k_col % 8 == 0 && kv.v_col % 8 == 0 && a.row_stride % 8 == 0 &&
          IsAligned(a.x, 16) && IsAligned(a.k_cache, 16) && IsAligned(a.v_cache, 16);
  }
  if (a.n == 0) return absl::OkStatus();
  const int half = static_cast<int>(a.rot_dim / 2);
  const int tx = std::min(half, 64);
  const int ty = static_cast<int>(std::min<int64_t>(a.num_heads, std::max(1, 256 / tx)));
  if (vec) {
    RopeKernel<8><<<a.n, dim3(tx, ty), 0, stream>>>(a.x, a.row_stride, a.positions, static_cast<int>(a.num_heads),
                                                    static_cast<int>(a.head_dim), static_cast<int>(a.rot_dim),
                                                    a.theta, kv);
  } else {
    RopeKernel<1><<<a.n, dim3(tx, ty), 0, stream>>>(a.x, a.row_stride, a.positions, static_cast<int>(a.num_heads),
                                                    static_cast<int>(a.head_dim), static_cast<int>(a.rot_dim),
                                                    a.theta, kv);
  }
  return LaunchStatus("RopeKernel");
}

}  // namespace adore::kernels
