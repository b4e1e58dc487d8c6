// Device helpers shared by the kernels: warp/block reductions and 16-byte bf16 vector packing.
#pragma once

#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/ops.h"

namespace adore::kernels {

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread gets the result. `shared` holds >= 32 floats; blockDim.x is a multiple
// of 32. Fixed reduction order, so the result is deterministic.
__device__ __forceinline__ float BlockSum(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, num_warps = blockDim.x >> 5;
  v = WarpSum(v);
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < num_warps ? shared[lane] : 0.0f;
  return WarpSum(v);
}

// 8 bf16 (one 16-byte load) to float and back.
__device__ __forceinline__ void Bf16x8ToFloat(const uint4& u, float f[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 p = __bfloat1622float2(h[i]);
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}

__device__ __forceinline__ uint4 FloatToBf16x8(const float f[8]) {
  uint4 u;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  return u;
}

// A token's K and V rows (`len` bf16 each) into their pool rows, thread `tid` of `nthreads`. VEC = 8 moves
// 16 bytes at a time (every pointer 16-byte aligned, len a multiple of 8); VEC = 1 one element.
template <int VEC>
__device__ __forceinline__ void CopyKvRow(const bf16* __restrict__ ks, const bf16* __restrict__ vs, bf16* __restrict__ kd,
                                          bf16* __restrict__ vd, int64_t len, int tid, int nthreads) {
  for (int64_t j = static_cast<int64_t>(tid) * VEC; j < len; j += static_cast<int64_t>(nthreads) * VEC) {
    if constexpr (VEC == 8) {
      *reinterpret_cast<uint4*>(kd + j) = *reinterpret_cast<const uint4*>(ks + j);
      *reinterpret_cast<uint4*>(vd + j) = *reinterpret_cast<const uint4*>(vs + j);
    } else {
      kd[j] = ks[j];
      vd[j] = vs[j];
    }
  }
}

inline bool IsAligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Multiprocessor count of the current device, cached per device (132 if it cannot be read).
inline int CurrentDeviceSmCount() {
  static std::atomic<int> cache[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 132;
  int sms = cache[dev].load(std::memory_order_relaxed);
  if (sms > 0) return sms;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) sms = 132;
  cache[dev].store(sms, std::memory_order_relaxed);
  return sms;
}

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Raises Kernel's dynamic shared-memory limit to `bytes`, once per device (the attribute call costs a
// driver round trip: not on every launch).
template <auto Kernel>
absl::Status RaiseSharedMemory(size_t bytes, const char* name) {
  static std::atomic<bool> done[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return absl::InternalError("cudaGetDevice failed");
  if (dev >= 0 && dev < 64 && done[dev].load(std::memory_order_acquire)) return absl::OkStatus();
  const cudaError_t e =
      cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (e != cudaSuccess) {
    return absl::InternalError(absl::StrCat("cannot give the ", name, " kernel ", bytes,
                                            " bytes of shared memory: ", cudaGetErrorString(e)));
  }
  if (dev >= 0 && dev < 64) done[dev].store(true, std::memory_order_release);
  return absl::OkStatus();
}

}  // namespace adore::kernels
