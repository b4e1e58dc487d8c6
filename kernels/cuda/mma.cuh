// PTX helpers shared by the attention kernels: cp.async copies into shared memory, ldmatrix fragment
// loads and the m16n8k16 bf16 tensor-core product (sm_80+).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace adore::kernels {

// 16 bytes global -> shared, asynchronous; fill = false writes zeros (gmem must still be a valid address).
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool fill) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(fill ? 16 : 0));
}
// The same with the shared-memory destination as a 32-bit shared address (from __cvta_generic_to_shared).
__device__ __forceinline__ void CpAsync16(uint32_t smem_addr, const void* gmem, bool fill) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr), "l"(gmem), "r"(fill ? 16 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {  // until at most N committed groups are pending
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8 x 8 bf16 matrices; lane L gives the address of row L % 8 of matrix L / 8. Without .trans lane l
// receives row l / 4, columns 2 (l % 4) and + 1 of each; with .trans, column l / 4, rows 2 (l % 4) and + 1.
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* smem) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* smem) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// c (16 x 8, float) += a (16 x 16, bf16, row-major) * b (16 x 8, bf16). Fragments, with g = lane / 4 and
// t = lane % 4: a0 = (row g, cols 2t, 2t + 1), a1 = row g + 8, a2 = cols + 8, a3 = both; b0 = (rows 2t,
// 2t + 1, col g), b1 = rows + 8; c0, c1 = (row g, cols 2t, 2t + 1), c2, c3 = row g + 8.
__device__ __forceinline__ void Mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// 2^x, one MUFU.EX2: the hardware approximation exp2f uses, without exp2f's rescaling for results below
// 2^-126 (those flush to 0). Attention probabilities that small add nothing next to the row maximum's 1.
__device__ __forceinline__ float Exp2Ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t PackBf16x2(float x, float y) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// (x, y) as a pair of bf16x2 operands whose sum is (x, y) to about 16 bits: the rounded value and the
// rounded remainder.
__device__ __forceinline__ void SplitBf16x2(float x, float y, uint32_t& hi, uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
  const float2 hf = __bfloat1622float2(h);
  const __nv_bfloat162 r = __floats2bfloat162_rn(x - hf.x, y - hf.y);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = *reinterpret_cast<const uint32_t*>(&r);
}

}  // namespace adore::kernels
