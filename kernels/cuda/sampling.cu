// Sample: greedy / temperature + top-k + top-p token sampling on the GPU, one block per row of logits
// (algorithm documented at SampleArgs in kernels/cuda/ops.h).
#include <cub/block/block_scan.cuh>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_status.h"

namespace adore::kernels {
namespace {

constexpr int kThreads = 512;
constexpr float kLog2e = 1.4426950408889634f;
constexpr double kFixedOne = 1099511627776.0;  // 2^40: probability 1 in the fixed-point masses

using ull = unsigned long long;
using ScanU64 = cub::BlockScan<ull, kThreads>;
using ScanF32 = cub::BlockScan<float, kThreads>;

struct Shared {
  union {
    typename ScanU64::TempStorage scan_u64;
    typename ScanF32::TempStorage scan_f32;
  } temp;
  ull hist[256];
  ull warp_max[kThreads / 32];
  float reduce[32];
  int digit;
  int lowest;
  ull remaining;
  int pick;
};

// NaN counts as -inf so it never wins and never takes mass.
__device__ __forceinline__ float LogitAt(const float* row, int64_t i) {
  const float x = row[i];
  return isnan(x) ? -INFINITY : x;
}

// Orders tokens as the CPU sampler sorts them: logit descending, then id ascending; no two keys are equal.
__device__ __forceinline__ ull SortKey(float logit, int64_t id) {
  uint32_t u = __float_as_uint(logit);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<ull>(u) << 32) | static_cast<ull>(0xFFFFFFFFu - static_cast<uint32_t>(id));
}

__device__ __forceinline__ ull SplitMix64(ull x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__device__ ull BlockMaxU64(ull v, Shared& sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const ull other = __shfl_xor_sync(0xffffffffu, v, o);
    v = other > v ? other : v;
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) sh.warp_max[threadIdx.x >> 5] = v;
  __syncthreads();
  ull best = 0;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) best = sh.warp_max[w] > best ? sh.warp_max[w] : best;
  return best;
}

// Radix select over the keys >= floor_key: returns the key c with weight(keys > c) < target <=
// weight(keys >= c), one 8-bit digit per pass from the top. `weight` maps a logit to an integer weight,
// so the histograms (shared-memory atomics) are exact and order-independent. If the weights never reach
// target (rounding), returns the smallest key with nonzero weight.
template <typename WeightFn>
__device__ ull RadixSelect(const float* row, int64_t vocab, ull floor_key, ull target, WeightFn weight, Shared& sh) {
  ull prefix = 0, mask = 0, remaining = target;
  for (int shift = 56; shift >= 0; shift -= 8) {
    __syncthreads();  // the previous pass's readers are done with hist and digit
    for (int i = threadIdx.x; i < 256; i += kThreads) sh.hist[i] = 0;
    if (threadIdx.x == 0) {
      sh.digit = -1;
      sh.lowest = 256;
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
      const float x = LogitAt(row, i);
      const ull key = SortKey(x, i);
      if (key >= floor_key && (key & mask) == prefix) {
        const ull w = weight(x);
        if (w != 0) atomicAdd(&sh.hist[(key >> shift) & 255], w);
      }
    }
    __syncthreads();
    // Thread t looks at digit 255 - t, so the exclusive scan gives the weight of all larger digits.
    const ull v = threadIdx.x < 256 ? sh.hist[255 - threadIdx.x] : 0;
    ull above = 0;
    ScanU64(sh.temp.scan_u64).ExclusiveSum(v, above);
    if (threadIdx.x < 256 && v > 0) {
      const int d = 255 - static_cast<int>(threadIdx.x);
      if (above < remaining && remaining <= above + v) {
        sh.digit = d;
        sh.remaining = remaining - above;
      }
      atomicMin(&sh.lowest, d);
    }
    __syncthreads();
    if (threadIdx.x == 0 && sh.digit < 0) {
      const int d = sh.lowest < 256 ? sh.lowest : 0;
      sh.digit = d;
      sh.remaining = sh.hist[d] > 0 ? sh.hist[d] : 1;
    }
    __syncthreads();
    prefix |= static_cast<ull>(sh.digit) << shift;
    mask |= 0xFFull << shift;
    remaining = sh.remaining;
  }
  return prefix;
}

__global__ void __launch_bounds__(kThreads) SampleKernel(const float* __restrict__ logits,  // [batch, stride]
                                                         int64_t stride, int64_t vocab,
                                                         const GpuSamplingParams* __restrict__ params,  // [batch]
                                                         int32_t* __restrict__ out) {                    // [batch]
  __shared__ Shared sh;
  const int b = blockIdx.x;
  const float* row = logits + static_cast<int64_t>(b) * stride;
  const GpuSamplingParams prm = params[b];

  ull best = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    const ull key = SortKey(LogitAt(row, i), i);
    best = key > best ? key : best;
  }
  best = BlockMaxU64(best, sh);
  const int32_t argmax = static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(best & 0xFFFFFFFFull));
  const float max_logit = LogitAt(row, argmax);
  if (!(prm.temperature > 0.0f) || prm.top_k == 1 || max_logit == -INFINITY) {
    if (threadIdx.x == 0) out[b] = argmax;
    return;
  }

  ull floor_key = 0;
  if (prm.top_k > 0 && prm.top_k < vocab) {
    floor_key = RadixSelect(row, vocab, 0, static_cast<ull>(prm.top_k), [](float) -> ull { return 1; }, sh);
  }
  const float k2 = kLog2e / prm.temperature;
  auto prob = [&](float x) { return exp2f((x - max_logit) * k2); };  // unnormalized, <= 1

  if (prm.top_p < 1.0f) {
    float local = 0.0f;
    for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
      const float x = LogitAt(row, i);
      if (SortKey(x, i) >= floor_key) local += prob(x);
    }
    const float total = BlockSum(local, sh.reduce);
    const float fixed_scale = static_cast<float>(kFixedOne) / total;
    const double target_d = static_cast<double>(prm.top_p) * kFixedOne;
    const ull target = target_d < 1.0 ? 1 : static_cast<ull>(target_d);
    floor_key = RadixSelect(row, vocab, floor_key, target,
                            [&](float x) -> ull { return __float2ull_rn(prob(x) * fixed_scale); }, sh);
  }

  // Draw: thread t owns ids [t * chunk, (t + 1) * chunk); a scan of the per-thread masses finds the range
  // holding u, whose owner walks it in id order.
  const int64_t chunk = (vocab + kThreads - 1) / kThreads;
  const int64_t begin = min(vocab, static_cast<int64_t>(threadIdx.x) * chunk);
  const int64_t end = min(vocab, begin + chunk);
  float local = 0.0f;
  for (int64_t i = begin; i < end; ++i) {
    const float x = LogitAt(row, i);
    if (SortKey(x, i) >= floor_key) local += prob(x);
  }
  float before = 0.0f, kept_mass = 0.0f;
  __syncthreads();
  ScanF32(sh.temp.scan_f32).ExclusiveSum(local, before, kept_mass);
  if (threadIdx.x == 0) sh.pick = 0x7FFFFFFF;
  __syncthreads();
  const float u01 = static_cast<float>(SplitMix64(prm.seed) >> 40) * (1.0f / 16777216.0f);
  const float u = u01 * kept_mass;
  if (local > 0.0f && before <= u && u < before + local) {
    // The walk re-adds from `before`, so rounding can leave u just past its last token: take that one.
    float cum = before;
    int64_t chosen = -1;
    for (int64_t i = begin; i < end; ++i) {
      const float x = LogitAt(row, i);
      if (SortKey(x, i) < floor_key) continue;
      cum += prob(x);
      chosen = i;
      if (u < cum) break;
    }
    if (chosen >= 0) atomicMin(&sh.pick, static_cast<int>(chosen));
  }
  __syncthreads();
  if (threadIdx.x == 0) out[b] = sh.pick != 0x7FFFFFFF ? sh.pick : argmax;
}

}  // namespace

absl::Status Sample(const SampleArgs& a, cudaStream_t stream) {
  if (a.logits == nullptr || a.params == nullptr || a.out_tokens == nullptr) {
    return absl::InvalidArgumentError("Sample: logits, params and out_tokens are required");
  }
  if (a.batch < 0 || a.batch > (int64_t{1} << 31) - 1 || a.vocab <= 0 || a.vocab > 0x7FFFFFFE ||
      a.logits_stride < a.vocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("Sample: bad shape batch=", a.batch, " vocab=", a.vocab, " logits_stride=", a.logits_stride));
  }
  if (a.batch == 0) return absl::OkStatus();
  SampleKernel<<<a.batch, kThreads, 0, stream>>>(a.logits, a.logits_stride, a.vocab, a.params, a.out_tokens);
  return LaunchStatus("SampleKernel");
}

}  // namespace adore::kernels
