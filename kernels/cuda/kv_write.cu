// KvWrite: scatters the new tokens' K/V rows into the pool by physical row index (-1 = skip).
// SlotTableUpdate: writes a call's changed slot-table entries into the tables kept on the GPU.
#include "absl/strings/str_cat.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_status.h"

namespace adore::kernels {
namespace {

// One block per token; K and V rows copied with 16-byte moves when VEC = 8.
template <int VEC>
__global__ void KvWriteKernel(const bf16* __restrict__ k, const bf16* __restrict__ v,  // [n, src_stride]
                              int64_t src_stride,
                              const int32_t* __restrict__ rows,  // [n]
                              int64_t row_dim,
                              bf16* __restrict__ k_cache, bf16* __restrict__ v_cache,  // [num_rows, row_dim]
                              int64_t num_rows) {
  const int64_t i = blockIdx.x;
  const int32_t row = rows[i];
  if (row < 0 || row >= num_rows) return;
  CopyKvRow<VEC>(k + i * src_stride, v + i * src_stride, k_cache + static_cast<int64_t>(row) * row_dim,
                 v_cache + static_cast<int64_t>(row) * row_dim, row_dim, threadIdx.x, blockDim.x);
}

__global__ void SlotTableUpdateKernel(const int32_t* __restrict__ entries, int64_t n, int32_t* __restrict__ slot_rows,
                                      int32_t* __restrict__ slot_pos, int64_t capacity) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int32_t index = entries[3 * i];
  if (index < 0 || index >= capacity) return;
  slot_rows[index] = entries[3 * i + 1];
  slot_pos[index] = entries[3 * i + 2];
}

}  // namespace

absl::Status SlotTableUpdate(const SlotTableUpdateArgs& a, cudaStream_t stream) {
  if (a.entries == nullptr || a.slot_rows == nullptr || a.slot_pos == nullptr) {
    return absl::InvalidArgumentError("SlotTableUpdate: entries, slot_rows and slot_pos are required");
  }
  if (a.n < 0 || a.n > (int64_t{1} << 31) - 1 || a.capacity < 0) {
    return absl::InvalidArgumentError(absl::StrCat("SlotTableUpdate: bad shape n=", a.n, " capacity=", a.capacity));
  }
  if (a.n == 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  SlotTableUpdateKernel<<<CeilDiv(a.n, kThreads), kThreads, 0, stream>>>(a.entries, a.n, a.slot_rows, a.slot_pos,
                                                                         a.capacity);
  return LaunchStatus("SlotTableUpdateKernel");
}

absl::Status KvWrite(const KvWriteArgs& a, cudaStream_t stream) {
  if (a.k == nullptr || a.v == nullptr || a.rows == nullptr || a.k_cache == nullptr || a.v_cache == nullptr) {
    return absl::InvalidArgumentError("KvWrite: k, v, rows, k_cache and v_cache are required");
  }
  if (a.n < 0 || a.n > (int64_t{1} << 31) - 1 || a.row_dim <= 0 || a.src_stride < a.row_dim || a.num_rows <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KvWrite: bad shape n=", a.n, " row_dim=", a.row_dim,
                                                   " src_stride=", a.src_stride, " num_rows=", a.num_rows));
  }
  if (a.n == 0) return absl::OkStatus();
  const bool vec = a.row_dim % 8 == 0 && a.src_stride % 8 == 0 && IsAligned(a.k, 16) && IsAligned(a.v, 16) &&
                   IsAligned(a.k_cache, 16) && IsAligned(a.v_cache, 16);
  const int threads = static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(32, CeilDiv(a.row_dim, vec ? 8 : 1))));
  const auto kernel = vec ? KvWriteKernel<8> : KvWriteKernel<1>;
  kernel<<<a.n, threads, 0, stream>>>(a.k, a.v, a.src_stride, a.rows, a.row_dim, a.k_cache, a.v_cache, a.num_rows);
  return LaunchStatus("KvWriteKernel");
}

}  // namespace adore::kernels
