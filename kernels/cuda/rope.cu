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
  int first_head, num_heads;  // the K heads among the rotated ones
  int64_t v_col, row_dim, num_rows;
  bf16 *k_cache, *v_cache;
};

constexpr int kHeadsPerThread = 4;

// Grid (token, head block); a thread per pair j (and j + blockDim.x, ...) of kHeadsPerThread heads: heads
// blockIdx.y * blockDim.y * kHeadsPerThread + threadIdx.y + k * blockDim.y. The angle of pair j is computed
// once per thread and applied to its heads, whose pairs are all loaded before any is stored (the loads
// overlap). Float32 math as RopeRef: inv_freq = theta^(-2j / rot_dim), angle = pos * inv_freq, then
// precise sincosf (angles reach thousands of radians; the fast intrinsic would lose them). With a KvDest,
// each K head of the block is then copied with the V head of the same index into the pool (VEC = 8:
// 16-byte moves).
template <int VEC>
__global__ void RopeKernel(bf16* __restrict__ x,  // [n, row_stride]
                           int64_t row_stride,
                           const int32_t* __restrict__ positions,  // [n]
                           int num_heads, int head_dim, int rot_dim, float theta, KvDest kv) {
  const int64_t i = blockIdx.x;
  const int half = rot_dim / 2;
  const int h0 = blockIdx.y * blockDim.y * kHeadsPerThread + threadIdx.y;
  const float pos = static_cast<float>(positions[i]);
  bf16* row = x + i * row_stride;
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    const float inv_freq = powf(theta, -2.0f * static_cast<float>(j) / static_cast<float>(rot_dim));
    float s, c;
    sincosf(pos * inv_freq, &s, &c);
    float2 v[kHeadsPerThread];
#pragma unroll
    for (int k = 0; k < kHeadsPerThread; ++k) {
      const int h = h0 + k * blockDim.y;
      if (h < num_heads) {
        v[k] = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(row + static_cast<int64_t>(h) * head_dim + 2 * j));
      }
    }
#pragma unroll
    for (int k = 0; k < kHeadsPerThread; ++k) {
      const int h = h0 + k * blockDim.y;
      if (h < num_heads) {
        *reinterpret_cast<__nv_bfloat162*>(row + static_cast<int64_t>(h) * head_dim + 2 * j) =
            __floats2bfloat162_rn(v[k].x * c - v[k].y * s, v[k].x * s + v[k].y * c);
      }
    }
  }
  if (kv.rows == nullptr) return;
  const int32_t dst = kv.rows[i];
  if (dst < 0 || dst >= kv.num_rows) return;  // uniform over the block
  __syncthreads();  // a head's rotated pairs, written by the other threads of its block row, are visible now
#pragma unroll
  for (int k = 0; k < kHeadsPerThread; ++k) {
    const int kvh = h0 + k * blockDim.y - kv.first_head;  // K head kvh, copied with V head kvh
    if (kvh < 0 || kvh >= kv.num_heads) continue;
    const int64_t col = static_cast<int64_t>(kvh) * head_dim;
    CopyKvRow<VEC>(row + static_cast<int64_t>(kv.first_head) * head_dim + col, row + kv.v_col + col,
                   kv.k_cache + static_cast<int64_t>(dst) * kv.row_dim + col,
                   kv.v_cache + static_cast<int64_t>(dst) * kv.row_dim + col, head_dim, threadIdx.x, blockDim.x);
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
    kv = {.rows = a.kv_rows, .first_head = static_cast<int>(a.kv_first_head),
          .num_heads = static_cast<int>(a.num_kv_heads), .v_col = a.v_offset, .row_dim = a.num_kv_heads * a.head_dim,
          .num_rows = a.num_kv_rows, .k_cache = a.k_cache, .v_cache = a.v_cache};
    vec = a.head_dim % 8 == 0 && a.v_offset % 8 == 0 && a.row_stride % 8 == 0 && IsAligned(a.x, 16) &&
          IsAligned(a.k_cache, 16) && IsAligned(a.v_cache, 16);
  }
  if (a.n == 0) return absl::OkStatus();
  const int half = static_cast<int>(a.rot_dim / 2);
  const int tx = std::min(half, 64);
  const int ty = static_cast<int>(std::min<int64_t>(CeilDiv(a.num_heads, kHeadsPerThread), std::max(1, 256 / tx)));
  const dim3 grid(static_cast<unsigned>(a.n), static_cast<unsigned>(CeilDiv(a.num_heads, int64_t{ty} * kHeadsPerThread)));
  const auto kernel = vec ? RopeKernel<8> : RopeKernel<1>;
  kernel<<<grid, dim3(tx, ty), 0, stream>>>(a.x, a.row_stride, a.positions, static_cast<int>(a.num_heads),
                                            static_cast<int>(a.head_dim), static_cast<int>(a.rot_dim), a.theta, kv);
  return LaunchStatus("RopeKernel");
}

}  // namespace adore::kernels
