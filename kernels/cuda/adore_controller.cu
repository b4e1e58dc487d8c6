// The ADORE controller on the GPU (interfaces, layout and costs in kernels/cuda/adore_controller.h):
// AdoreProject (key / query features), AdoreStep (GRU update of every token of a batch of sequences) and
// AdorePlanRelease (release / rebuild plan, one block per sequence), matching worker/adore_controller.cc.
#include "kernels/cuda/adore_controller.h"

#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_status.h"

namespace adore::kernels {
namespace {

constexpr int kNumInputs = 5;  // controller format version 1: [log mass, cached, log age, affinity, log acc]

__device__ __forceinline__ int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t Max64(int64_t a, int64_t b) { return a > b ? a : b; }

// ---------------------------------------------------------------------------------------------------
// AdoreProject: one block per kProjItems tokens. The tokens' features are staged in shared memory (in
// their input type, zero-padded to padded_feature_dim); warp w computes outputs w, w + 8, ... of the
// 2 * key_dim projection rows (key rows, then query rows), each lane striding the row with 16-byte weight
// loads and keeping one sum per token, then a warp reduction.

constexpr int kProjThreads = 256;
constexpr int kProjWarps = kProjThreads / 32;
constexpr int kProjItems = 8;
constexpr size_t kProjMaxSmem = 192 * 1024;

struct ProjParams {
  const float* w;  // [2 * kd, fp]
  const float* b;  // [2 * kd]
  int kd, sd, f, fp;
  int64_t n, feature_stride;
  const int32_t* key_rows;
  const int32_t* query_rows;
  float* keys;
  float* states;
  float* acc;
  float* scores;
  int64_t num_rows;
  float* queries;
  int64_t num_query_rows;
};

__device__ __forceinline__ float4 Load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 Load4(const __nv_bfloat16* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}

template <typename In>
__global__ void __launch_bounds__(kProjThreads) ProjectKernel(const ProjParams p, const In* __restrict__ features) {
  extern __shared__ __align__(16) unsigned char proj_smem[];
  In* feat = reinterpret_cast<In*>(proj_smem);  // [kProjItems, fp]
  const int64_t item0 = static_cast<int64_t>(blockIdx.x) * kProjItems;
  const int items = static_cast<int>(Min64(kProjItems, p.n - item0));
  const In zero = static_cast<In>(0.0f);
  for (int e = threadIdx.x; e < kProjItems * p.fp; e += kProjThreads) {
    const int t = e / p.fp, c = e - t * p.fp;
    feat[e] = (t < items && c < p.f) ? features[(item0 + t) * p.feature_stride + c] : zero;
  }
  // A new token's state starts at h = 0, acc = 0, score = 0 (AdoreSequence::AddToken).
  for (int e = threadIdx.x; e < items * (p.sd + 2); e += kProjThreads) {
    const int t = e / (p.sd + 2), c = e - t * (p.sd + 2);
    const int64_t row = p.key_rows[item0 + t];
    if (row < 0 || row >= p.num_rows) continue;
    if (c < p.sd) {
      p.states[row * p.sd + c] = 0.0f;
    } else if (c == p.sd) {
      p.acc[row] = 0.0f;
    } else {
      p.scores[row] = 0.0f;
    }
  }
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int f4 = p.fp / 4;
  for (int o = warp; o < 2 * p.kd; o += kProjWarps) {
    const float* wrow = p.w + static_cast<int64_t>(o) * p.fp;
    float sum[kProjItems];
#pragma unroll
    for (int t = 0; t < kProjItems; ++t) sum[t] = 0.0f;
    for (int i = lane; i < f4; i += 32) {
      const float4 w = __ldg(reinterpret_cast<const float4*>(wrow) + i);
#pragma unroll
      for (int t = 0; t < kProjItems; ++t) {
        const float4 x = Load4(feat + t * p.fp + 4 * i);
        sum[t] = fmaf(w.x, x.x, sum[t]);
        sum[t] = fmaf(w.y, x.y, sum[t]);
        sum[t] = fmaf(w.z, x.z, sum[t]);
        sum[t] = fmaf(w.w, x.w, sum[t]);
      }
    }
#pragma unroll
    for (int t = 0; t < kProjItems; ++t) sum[t] = WarpSum(sum[t]);
    if (lane == 0) {
      const float bias = p.b[o];
#pragma unroll
      for (int t = 0; t < kProjItems; ++t) {
        if (t >= items) break;
        const float v = sum[t] + bias;
        if (o < p.kd) {
          const int64_t row = p.key_rows[item0 + t];
          if (row >= 0 && row < p.num_rows) p.keys[row * p.kd + o] = v;
        } else {
          const int64_t qrow = p.query_rows != nullptr ? p.query_rows[item0 + t] : item0 + t;
          if (qrow >= 0 && qrow < p.num_query_rows) p.queries[qrow * p.kd + (o - p.kd)] = v;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// AdoreStep. ScatterSlotsKernel: slot_of_row[state_base[b] + pos] = s for every occupied slot s of a
// stepping sequence. StepKernel: one thread per token row; the GRU / score weights are kernel parameters
// (constant bank operands in the fully unrolled gate loops), the queries pass through shared memory in
// tiles of kQTile.

constexpr int kScatterThreads = 256;
constexpr int kStepThreads = 256;
constexpr int kQTile = 16;

struct StepCommon {
  float score_b, mass_eps, mass_coef, age_coef, inv_sqrt_kd, mass_scale;
  const float* keys;
  float* states;
  float* acc;
  float* scores;
  int64_t num_rows;
  const float* queries;
  const int32_t* state_base;
  const int32_t* q_first;
  const int32_t* q_offsets;
  const int32_t* slot_offsets;
  const int32_t* slot_rows;
  const int32_t* slot_pos;
  const int32_t* table_ends;  // null: slot_offsets[b + 1]
  const float* slot_mass;
  int64_t mass_stride;
  const int32_t* query_mass;  // null: query j's masses at j * mass_stride + slot
  const int32_t* slot_of_row;
};

template <int SD>
struct StepParams {
  float w_ih[3 * SD * kNumInputs];  // PyTorch layout [3 * SD, 5]
  float w_hh[3 * SD * SD];          // [3 * SD, SD]
  float b_ih[3 * SD];
  float b_hh[3 * SD];
  float score_w[SD + kNumInputs];
  StepCommon c;
};

__global__ void __launch_bounds__(kScatterThreads)
    ScatterSlotsKernel(const int32_t* __restrict__ slot_offsets, const int32_t* __restrict__ table_ends,
                       const int32_t* __restrict__ slot_rows,
                       const int32_t* __restrict__ slot_pos, const int32_t* __restrict__ state_base,
                       const int32_t* __restrict__ q_first, const int32_t* __restrict__ q_offsets,
                       int32_t* __restrict__ slot_of_row, int64_t num_rows) {
  const int b = blockIdx.y;
  const int nq = q_offsets[b + 1] - q_offsets[b];
  if (nq <= 0) return;
  const int64_t n_pos = static_cast<int64_t>(q_first[b]) + nq;
  const int64_t s = slot_offsets[b] + static_cast<int64_t>(blockIdx.x) * kScatterThreads + threadIdx.x;
  if (s >= (table_ends != nullptr ? table_ends[b] : slot_offsets[b + 1])) return;
  const int32_t pos = slot_pos[s];
  if (slot_rows[s] < 0 || pos < 0 || pos >= n_pos) return;
  const int64_t row = static_cast<int64_t>(state_base[b]) + pos;
  if (row >= 0 && row < num_rows) slot_of_row[row] = static_cast<int32_t>(s);
}

// The gates' 48 exponentials and divisions per token dominate the step's instruction count, so they use
// the hardware approximations (ex2.approx after one multiply, rcp.approx): relative error ~1e-6 on the
// gate values, far inside the 1e-4 the CPU comparison allows (measured: states within ~1e-6). exp is
// clamped to [-87, 88] as the CPU's FastExp, so both saturate alike.
__device__ __forceinline__ float ClampedExp(float v) { return __expf(fminf(fmaxf(v, -87.0f), 88.0f)); }
__device__ __forceinline__ float Sigmoid(float v) { return __fdividef(1.0f, 1.0f + ClampedExp(-v)); }
__device__ __forceinline__ float Tanh(float v) { return 1.0f - __fdividef(2.0f, ClampedExp(2.0f * v) + 1.0f); }

template <int KD, int SD>
__global__ void __launch_bounds__(kStepThreads) StepKernel(const __grid_constant__ StepParams<SD> p) {
  static_assert(KD % 4 == 0 && SD % 4 == 0, "16-byte row loads");
  __shared__ __align__(16) float qs[kQTile * KD];
  const StepCommon& c = p.c;
  const int b = blockIdx.y;
  const int q0 = c.q_offsets[b];
  const int nq = c.q_offsets[b + 1] - q0;
  if (nq <= 0) return;
  const int qf = c.q_first[b];
  const int n_pos = qf + nq;  // positions 0 .. n_pos - 1 take part
  const int row0 = blockIdx.x * kStepThreads;
  if (row0 >= n_pos) return;  // block-uniform
  const int i = row0 + static_cast<int>(threadIdx.x);
  const int64_t row = static_cast<int64_t>(c.state_base[b]) + i;
  const bool active = i < n_pos && row >= 0 && row < c.num_rows;

  float h[SD], key[KD], acc = 0.0f, score = 0.0f;
  bool cached = false;
  int32_t slot = 0;
  if (active) {
#pragma unroll
    for (int d = 0; d < SD; d += 4) {
      const float4 v = *reinterpret_cast<const float4*>(c.states + row * SD + d);
      h[d] = v.x, h[d + 1] = v.y, h[d + 2] = v.z, h[d + 3] = v.w;
    }
#pragma unroll
    for (int d = 0; d < KD; d += 4) {
      const float4 v = *reinterpret_cast<const float4*>(c.keys + row * KD + d);
      key[d] = v.x, key[d + 1] = v.y, key[d + 2] = v.z, key[d + 3] = v.w;
    }
    acc = c.acc[row];
    // Trust the scattered entry only if it names an occupied slot of this table holding position i.
    const int32_t s = c.slot_of_row[row];
    const int32_t end = c.table_ends != nullptr ? c.table_ends[b] : c.slot_offsets[b + 1];
    if (s >= c.slot_offsets[b] && s < end && c.slot_rows[s] >= 0 && c.slot_pos[s] == i) {
      cached = true;
      slot = s;
    }
  }
  const float x1 = cached ? 1.0f : 0.0f;
  // Token i takes part in queries j >= i - qf; the block's first token decides the first tile.
  for (int jt = max(0, row0 - qf); jt < nq; jt += kQTile) {
    const int tile = min(kQTile, nq - jt);
    __syncthreads();  // the previous tile is consumed
    for (int e = threadIdx.x; e < tile * KD; e += kStepThreads) {
      qs[e] = c.queries[static_cast<int64_t>(q0 + jt) * KD + e];
    }
    __syncthreads();
    if (!active) continue;
    for (int j = max(jt, i - qf); j < jt + tile; ++j) {
      const float* q = qs + (j - jt) * KD;
      const int age = qf + j - i;
      const int64_t at = c.query_mass != nullptr ? c.query_mass[q0 + j] + (slot - c.slot_offsets[b])
                                                 : static_cast<int64_t>(j) * c.mass_stride + slot;
      const float m = cached ? c.slot_mass[at] : 0.0f;
      const float a = __fmul_rn(m, c.mass_scale);
      acc = __fadd_rn(acc, a);
      float aff = 0.0f;
#pragma unroll
      for (int d = 0; d < KD; ++d) aff = fmaf(key[d], q[d], aff);
      float x[kNumInputs];
      x[0] = c.mass_coef * logf(a + c.mass_eps);
      x[1] = x1;
      x[2] = c.age_coef * log1pf(static_cast<float>(age));
      x[3] = aff * c.inv_sqrt_kd;
      x[4] = c.mass_coef * logf(acc + c.mass_eps);
      // torch.nn.GRUCell, gates r, z, n; sums in the CPU's order (bias, then inputs in index order).
      float hn[SD];
#pragma unroll
      for (int o = 0; o < SD; ++o) {
        float ir = p.b_ih[o], iz = p.b_ih[SD + o], in = p.b_ih[2 * SD + o];
#pragma unroll
        for (int k = 0; k < kNumInputs; ++k) {
          ir = fmaf(p.w_ih[o * kNumInputs + k], x[k], ir);
          iz = fmaf(p.w_ih[(SD + o) * kNumInputs + k], x[k], iz);
          in = fmaf(p.w_ih[(2 * SD + o) * kNumInputs + k], x[k], in);
        }
        float hr = p.b_hh[o], hz = p.b_hh[SD + o], hh = p.b_hh[2 * SD + o];
#pragma unroll
        for (int k = 0; k < SD; ++k) {
          hr = fmaf(p.w_hh[o * SD + k], h[k], hr);
          hz = fmaf(p.w_hh[(SD + o) * SD + k], h[k], hz);
          hh = fmaf(p.w_hh[(2 * SD + o) * SD + k], h[k], hh);
        }
        const float r = Sigmoid(ir + hr);
        const float z = Sigmoid(iz + hz);
        const float nn = Tanh(in + r * hh);
        hn[o] = (1.0f - z) * nn + z * h[o];
      }
      float s = c.score_b;
#pragma unroll
      for (int o = 0; o < SD; ++o) {
        h[o] = hn[o];
        s = fmaf(p.score_w[o], h[o], s);
      }
#pragma unroll
      for (int k = 0; k < kNumInputs; ++k) s = fmaf(p.score_w[SD + k], x[k], s);
      score = s;
    }
  }
  if (!active) return;  // every active token took part in at least its own query (i - qf < nq)
#pragma unroll
  for (int d = 0; d < SD; d += 4) {
    *reinterpret_cast<float4*>(c.states + row * SD + d) = make_float4(h[d], h[d + 1], h[d + 2], h[d + 3]);
  }
  c.acc[row] = acc;
  c.scores[row] = score;
}

template <int KD, int SD>
absl::Status LaunchStep(const AdoreStepArgs& a, const StepCommon& common, cudaStream_t stream) {
  const DeviceAdoreWeights& w = *a.weights;
  StepParams<SD> p;
  std::copy(w.gru_w_ih().begin(), w.gru_w_ih().end(), p.w_ih);
  std::copy(w.gru_w_hh().begin(), w.gru_w_hh().end(), p.w_hh);
  std::copy(w.gru_b_ih().begin(), w.gru_b_ih().end(), p.b_ih);
  std::copy(w.gru_b_hh().begin(), w.gru_b_hh().end(), p.b_hh);
  std::copy(w.score_w().begin(), w.score_w().end(), p.score_w);
  p.c = common;
  const dim3 grid(static_cast<unsigned>(CeilDiv(a.max_positions, kStepThreads)), static_cast<unsigned>(a.num_seqs));
  StepKernel<KD, SD><<<grid, kStepThreads, 0, stream>>>(p);
  return LaunchStatus("AdoreStep StepKernel");
}

template <int KD>
absl::Status DispatchStateDim(const AdoreStepArgs& a, const StepCommon& common, cudaStream_t stream) {
  switch (a.weights->state_dim()) {
    case 8:
      return LaunchStep<KD, 8>(a, common, stream);
    case 16:
      return LaunchStep<KD, 16>(a, common, stream);
    case 32:
      return LaunchStep<KD, 32>(a, common, stream);
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("AdoreStep: state_dim ", a.weights->state_dim(), " is not supported (8, 16 or 32)"));
  }
}

// ---------------------------------------------------------------------------------------------------
// AdorePlanRelease: one block per sequence. The cached flags of positions 0..n-1 form a bitmap in dynamic
// shared memory; every quantity is recomputed from the scores (L2) in each pass rather than stored, so the
// shared footprint does not grow with n beyond the bitmap.

constexpr int kPlanThreads = 512;
constexpr int kSortCap = 2048;
constexpr uint64_t kNoKey = ~0ull;  // above every key: keys' low word is a position < 2^31

using PlanScan = cub::BlockScan<uint32_t, kPlanThreads>;

struct PlanShared {
  typename PlanScan::TempStorage scan;
  uint32_t hist[256];
  uint64_t sort[kSortCap];
  uint32_t counter;
  int sel_digit;
  uint32_t sel_remaining, sel_count;
};

struct PlanParams {
  const float* scores;
  int64_t num_rows;
  const int32_t* state_base;
  const int32_t* num_scored;
  const int32_t* budget;
  const int32_t* num_new;
  int64_t max_positions, max_rebuild, num_sink, num_recent;
  const int32_t* slot_offsets;
  const int32_t* table_ends;  // null: slot_offsets[b + 1]
  const int32_t* slot_rows;
  const int32_t* slot_pos;
  int32_t* release;
  int64_t release_capacity;
  int32_t* rebuild;
  int64_t rebuild_capacity;
  int32_t* num_release;
  int32_t* num_rebuild;
  int32_t* status;
};

// Orders positions as PlanRelease's comparator: higher score first, ties to the later position (a larger
// key is better). -0 and +0 compare equal on the CPU, so they share a key prefix here.
__device__ __forceinline__ uint64_t ScoreKey(float s, int pos) {
  uint32_t u = __float_as_uint(s);
  if ((u & 0x7FFFFFFFu) == 0) u = 0;
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<uint64_t>(u) << 32) | static_cast<uint32_t>(pos);
}

// Members of [lo, hi) (pred(i) true), counted; every thread gets the count. Block-uniform loop.
template <typename Pred>
__device__ uint32_t CountMembers(int lo, int hi, Pred pred) {
  uint32_t total = 0;
  for (int base = lo; base < hi; base += kPlanThreads) {
    const int i = base + static_cast<int>(threadIdx.x);
    total += __syncthreads_count(i < hi && pred(i));
  }
  return total;
}

// The k-th largest key (1 <= k <= member count) among i in [lo, hi) with key_of(i, &key) true, as a
// threshold T: the members with key >= T are exactly the k largest. Radix select, 8 bits per pass from
// the top; stops when the chosen bin is taken whole (T then has zeros below the decided digits).
template <typename KeyOf>
__device__ uint64_t KthLargest(int lo, int hi, uint32_t k, KeyOf key_of, PlanShared& sh) {
  uint64_t prefix = 0, mask = 0;
  uint32_t remaining = k;
  for (int shift = 56; shift >= 0; shift -= 8) {
    __syncthreads();  // the previous pass (or call) is done with hist and sel_*
    for (int d = threadIdx.x; d < 256; d += kPlanThreads) sh.hist[d] = 0;
    __syncthreads();
    for (int i = lo + static_cast<int>(threadIdx.x); i < hi; i += kPlanThreads) {
      uint64_t key;
      if (key_of(i, &key) && (key & mask) == prefix) atomicAdd(&sh.hist[(key >> shift) & 255], 1u);
    }
    __syncthreads();
    // Thread t holds digit 255 - t: the exclusive sum is the count of larger digits.
    const uint32_t v = threadIdx.x < 256 ? sh.hist[255 - threadIdx.x] : 0u;
    uint32_t above = 0;
    PlanScan(sh.scan).ExclusiveSum(v, above);
    if (threadIdx.x < 256 && v > 0 && above < remaining && remaining <= above + v) {
      sh.sel_digit = 255 - static_cast<int>(threadIdx.x);
      sh.sel_remaining = remaining - above;
      sh.sel_count = v;
    }
    __syncthreads();
    prefix |= static_cast<uint64_t>(sh.sel_digit) << shift;
    mask |= 0xFFull << shift;
    remaining = sh.sel_remaining;
    if (sh.sel_count == remaining) break;  // the whole bin is in: prefix is the threshold
  }
  return prefix;
}

// Sorts P (a power of two, <= kSortCap) keys of sh.sort ascending. Starts and ends with a barrier.
__device__ void BitonicSort(int P, PlanShared& sh) {
  __syncthreads();
  for (int k = 2; k <= P; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int e = threadIdx.x; e < P; e += kPlanThreads) {
        const int partner = e ^ j;
        if (partner > e) {
          const uint64_t x = sh.sort[e], y = sh.sort[partner];
          const bool ascending = (e & k) == 0;
          if ((x > y) == ascending) {
            sh.sort[e] = y;
            sh.sort[partner] = x;
          }
        }
      }
      __syncthreads();
    }
  }
}

// Writes the `total` members (sort_key_of(i, &key) true) of [lo, hi) in ascending sort-key order, as
// decode(key), to out[0 .. min(total, cap)). Chunks of kSortCap: each chunk's upper bound is a radix
// select among the members not yet written.
template <typename SortKeyOf, typename Decode>
__device__ void WriteSorted(int lo, int hi, uint32_t total, SortKeyOf sort_key_of, Decode decode, int32_t* out,
                            int64_t cap, PlanShared& sh) {
  const uint32_t want = static_cast<uint32_t>(Min64(total, Max64(cap, 0)));
  uint32_t written = 0;
  uint64_t lower = 0;  // members with a sort key >= lower are not written yet
  while (written < want) {
    const uint32_t left = total - written;
    const uint32_t take = min(min(left, static_cast<uint32_t>(kSortCap)), want - written);
    const bool bounded = take < left;
    uint64_t ceiling = 0;  // exclusive, when bounded: the (left - take) largest remaining are >= it
    if (bounded) {
      ceiling = KthLargest(lo, hi, left - take, [&](int i, uint64_t* key) {
        return sort_key_of(i, key) && *key >= lower;
      }, sh);
    }
    __syncthreads();
    if (threadIdx.x == 0) sh.counter = 0;
    __syncthreads();
    for (int i = lo + static_cast<int>(threadIdx.x); i < hi; i += kPlanThreads) {
      uint64_t key;
      if (sort_key_of(i, &key) && key >= lower && (!bounded || key < ceiling)) {
        const uint32_t slot = atomicAdd(&sh.counter, 1u);
        if (slot < kSortCap) sh.sort[slot] = key;
      }
    }
    int P = 1;
    while (P < static_cast<int>(take)) P <<= 1;
    __syncthreads();
    for (int e = static_cast<int>(take) + threadIdx.x; e < P; e += kPlanThreads) sh.sort[e] = kNoKey;
    BitonicSort(P, sh);
    for (int e = threadIdx.x; e < static_cast<int>(take); e += kPlanThreads) out[written + e] = decode(sh.sort[e]);
    written += take;
    lower = ceiling;
  }
}

__global__ void __launch_bounds__(kPlanThreads) PlanKernel(const PlanParams p) {
  __shared__ PlanShared sh;
  extern __shared__ uint32_t cached_bits[];
  const int b = blockIdx.x;
  const int64_t n = max(p.num_scored[b], 0);
  const int64_t budget = p.budget[b], num_new = p.num_new[b];
  auto finish = [&](int32_t status, int64_t num_release, int64_t num_rebuild) {
    if (threadIdx.x == 0) {
      p.status[b] = status;
      p.num_release[b] = static_cast<int32_t>(num_release);
      p.num_rebuild[b] = static_cast<int32_t>(num_rebuild);
    }
  };
  if (n + num_new <= budget) return finish(kAdorePlanOk, 0, 0);  // everything fits
  if (n > p.max_positions) return finish(kAdorePlanTooLong, 0, 0);
  const int base_row = p.state_base[b];
  if (base_row < 0 || base_row + n > p.num_rows) return finish(kAdorePlanTooLong, 0, 0);
  const int words = static_cast<int>((n + 31) / 32);
  for (int w = threadIdx.x; w < words; w += kPlanThreads) cached_bits[w] = 0;
  __syncthreads();
  bool bad = false;
  const int64_t table_end = p.table_ends != nullptr ? p.table_ends[b] : p.slot_offsets[b + 1];
  for (int64_t s = p.slot_offsets[b] + threadIdx.x; s < table_end; s += kPlanThreads) {
    if (p.slot_rows[s] < 0) continue;
    const int32_t pos = p.slot_pos[s];
    if (pos < 0 || pos >= n) {
      bad = true;
    } else {
      atomicOr(&cached_bits[pos >> 5], 1u << (pos & 31));
    }
  }
  if (__syncthreads_or(bad)) return finish(kAdorePlanUnscoredSlot, 0, 0);

  const int sink_end = static_cast<int>(Min64(p.num_sink, n));
  const int recent_begin = static_cast<int>(Max64(sink_end, n - p.num_recent));
  const int64_t num_prot = sink_end + (n - recent_begin);
  const int64_t free = budget - num_new - num_prot;
  if (free < 0) return finish(kAdorePlanBudgetTooSmall, 0, 0);

  const float* scores = p.scores + base_row;
  auto cached = [&](int i) -> bool { return (cached_bits[i >> 5] >> (i & 31)) & 1u; };
  auto key_at = [&](int i) -> uint64_t { return ScoreKey(scores[i], i); };
  const int lo = sink_end, hi = recent_begin;  // the unprotected positions
  const uint32_t num_cached = CountMembers(lo, hi, cached);
  const uint32_t num_released = static_cast<uint32_t>(hi - lo) - num_cached;

  // Released candidates: the top max_rebuild released positions (threshold tr).
  uint64_t tr = kNoKey;
  if (p.max_rebuild > 0 && num_released > 0) {
    tr = num_released <= p.max_rebuild
             ? 0
             : KthLargest(lo, hi, static_cast<uint32_t>(p.max_rebuild), [&](int i, uint64_t* key) {
                 if (cached(i)) return false;
                 *key = key_at(i);
                 return true;
               }, sh);
  }
  const int64_t num_cand = num_cached + Min64(p.max_rebuild, num_released);
  // Kept candidates: the top `free` (threshold tf).
  uint64_t tf = 0;
  if (free < num_cand) {
    tf = free == 0 ? kNoKey : KthLargest(lo, hi, static_cast<uint32_t>(free), [&](int i, uint64_t* key) {
      *key = key_at(i);
      return cached(i) || *key >= tr;
    }, sh);
  }

  // Release: cached candidates below tf, lowest first.
  auto release_key = [&](int i, uint64_t* key) {
    if (!cached(i)) return false;
    *key = key_at(i);
    return *key < tf;
  };
  const uint32_t num_release = CountMembers(lo, hi, [&](int i) {
    uint64_t k;
    return release_key(i, &k);
  });
  WriteSorted(lo, hi, num_release, release_key, [](uint64_t k) { return static_cast<int32_t>(k & 0xFFFFFFFFu); },
              p.release + static_cast<int64_t>(b) * p.release_capacity, p.release_capacity, sh);

  // Rebuild: released protected positions in ascending order (an ordered compaction), then the released
  // candidates kept, highest first (ascending ~key).
  int32_t* rebuild = p.rebuild + static_cast<int64_t>(b) * p.rebuild_capacity;
  uint32_t num_prot_rebuild = 0;
  for (int64_t base = 0; base < num_prot; base += kPlanThreads) {
    const int64_t v = base + threadIdx.x;
    const int pos = static_cast<int>(v < sink_end ? v : recent_begin + (v - sink_end));
    const uint32_t flag = (v < num_prot && !cached(pos)) ? 1u : 0u;
    uint32_t before = 0, in_tile = 0;
    __syncthreads();  // sh.scan reuse
    PlanScan(sh.scan).ExclusiveSum(flag, before, in_tile);
    if (flag && num_prot_rebuild + before < p.rebuild_capacity) rebuild[num_prot_rebuild + before] = pos;
    num_prot_rebuild += in_tile;
  }
  auto rebuild_key = [&](int i, uint64_t* key) {
    if (cached(i)) return false;
    const uint64_t k = key_at(i);
    *key = ~k;
    return k >= tr && k >= tf;
  };
  const uint32_t num_cand_rebuild = CountMembers(lo, hi, [&](int i) {
    uint64_t k;
    return rebuild_key(i, &k);
  });
  const int64_t rest = Max64(0, p.rebuild_capacity - num_prot_rebuild);
  WriteSorted(lo, hi, num_cand_rebuild, rebuild_key, [](uint64_t k) { return static_cast<int32_t>(~k & 0xFFFFFFFFu); },
              rebuild + Min64(num_prot_rebuild, p.rebuild_capacity), rest, sh);
  finish(kAdorePlanOk, num_release, static_cast<int64_t>(num_prot_rebuild) + num_cand_rebuild);
}

bool SupportedKeyDim(int64_t kd) { return kd == 16 || kd == 32 || kd == 64; }
bool SupportedStateDim(int64_t sd) { return sd == 8 || sd == 16 || sd == 32; }

}  // namespace

// ---------------------------------------------------------------------------------------------------
// DeviceAdoreWeights

DeviceAdoreWeights::~DeviceAdoreWeights() { Free(); }

DeviceAdoreWeights::DeviceAdoreWeights(DeviceAdoreWeights&& o) noexcept { *this = std::move(o); }

DeviceAdoreWeights& DeviceAdoreWeights::operator=(DeviceAdoreWeights&& o) noexcept {
  if (this != &o) {
    Free();
    proj_w_ = std::exchange(o.proj_w_, nullptr);
    proj_b_ = std::exchange(o.proj_b_, nullptr);
    feature_dim_ = o.feature_dim_;
    padded_feature_dim_ = o.padded_feature_dim_;
    key_dim_ = o.key_dim_;
    state_dim_ = o.state_dim_;
    mass_eps_ = o.mass_eps_;
    mass_coef_ = o.mass_coef_;
    age_coef_ = o.age_coef_;
    gru_w_ih_ = std::move(o.gru_w_ih_);
    gru_w_hh_ = std::move(o.gru_w_hh_);
    gru_b_ih_ = std::move(o.gru_b_ih_);
    gru_b_hh_ = std::move(o.gru_b_hh_);
    score_w_ = std::move(o.score_w_);
    score_b_ = o.score_b_;
  }
  return *this;
}

void DeviceAdoreWeights::Free() {
  if (proj_w_ != nullptr) cudaFree(proj_w_);
  proj_w_ = proj_b_ = nullptr;
}

absl::Status DeviceAdoreWeights::Upload(const HostAdoreWeights& w) {
  const int64_t f = w.feature_dim, kd = w.key_dim, sd = w.state_dim;
  if (w.num_inputs != kNumInputs) {
    return absl::InvalidArgumentError(absl::StrCat("DeviceAdoreWeights: num_inputs ", w.num_inputs, ", expected 5"));
  }
  if (f <= 0 || f > (1 << 20)) {
    return absl::InvalidArgumentError(absl::StrCat("DeviceAdoreWeights: feature_dim ", f, " out of range"));
  }
  if (!SupportedKeyDim(kd)) {
    return absl::InvalidArgumentError(
        absl::StrCat("DeviceAdoreWeights: key_dim ", kd, " is not supported (16, 32 or 64)"));
  }
  if (!SupportedStateDim(sd)) {
    return absl::InvalidArgumentError(
        absl::StrCat("DeviceAdoreWeights: state_dim ", sd, " is not supported (8, 16 or 32)"));
  }
  if (!(w.mass_eps > 0.0f)) return absl::InvalidArgumentError("DeviceAdoreWeights: mass_eps must be positive");
  const struct {
    const char* name;
    std::span<const float> span;
    int64_t want;
  } checks[] = {
      {"key_w", w.key_w, kd * f},           {"key_b", w.key_b, kd},
      {"query_w", w.query_w, kd * f},       {"query_b", w.query_b, kd},
      {"gru_w_ih", w.gru_w_ih, 3 * sd * kNumInputs}, {"gru_w_hh", w.gru_w_hh, 3 * sd * sd},
      {"gru_b_ih", w.gru_b_ih, 3 * sd},     {"gru_b_hh", w.gru_b_hh, 3 * sd},
      {"score_w", w.score_w, sd + kNumInputs},
  };
  for (const auto& c : checks) {
    if (static_cast<int64_t>(c.span.size()) != c.want) {
      return absl::InvalidArgumentError(absl::StrCat("DeviceAdoreWeights: ", c.name, " has ", c.span.size(),
                                                     " floats, expected ", c.want));
    }
  }
  const int64_t fp = (f + 3) / 4 * 4;
  std::vector<float> host(2 * kd * fp + 2 * kd, 0.0f);
  for (int64_t o = 0; o < kd; ++o) {
    std::copy_n(w.key_w.data() + o * f, f, host.data() + o * fp);
    std::copy_n(w.query_w.data() + o * f, f, host.data() + (kd + o) * fp);
  }
  std::copy(w.key_b.begin(), w.key_b.end(), host.data() + 2 * kd * fp);
  std::copy(w.query_b.begin(), w.query_b.end(), host.data() + 2 * kd * fp + kd);
  Free();
  float* dev = nullptr;
  ADORE_CUDA_RETURN_IF_ERROR(cudaMalloc(&dev, host.size() * sizeof(float)));
  proj_w_ = dev;
  proj_b_ = dev + 2 * kd * fp;
  ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpy(dev, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
  feature_dim_ = f;
  padded_feature_dim_ = fp;
  key_dim_ = kd;
  state_dim_ = sd;
  mass_eps_ = w.mass_eps;
  mass_coef_ = w.mass_coef;
  age_coef_ = w.age_coef;
  gru_w_ih_.assign(w.gru_w_ih.begin(), w.gru_w_ih.end());
  gru_w_hh_.assign(w.gru_w_hh.begin(), w.gru_w_hh.end());
  gru_b_ih_.assign(w.gru_b_ih.begin(), w.gru_b_ih.end());
  gru_b_hh_.assign(w.gru_b_hh.begin(), w.gru_b_hh.end());
  score_w_.assign(w.score_w.begin(), w.score_w.end());
  score_b_ = w.score_b;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// Launchers

absl::Status AdoreProject(const AdoreProjectArgs& a, cudaStream_t stream) {
  if (a.weights == nullptr || a.weights->empty()) {
    return absl::InvalidArgumentError("AdoreProject: uploaded weights are required");
  }
  if ((a.features_bf16 == nullptr) == (a.features_f32 == nullptr)) {
    return absl::InvalidArgumentError("AdoreProject: exactly one of features_bf16 / features_f32 must be set");
  }
  const DeviceAdoreWeights& w = *a.weights;
  if (a.key_rows == nullptr || a.queries == nullptr || a.state.keys == nullptr || a.state.states == nullptr ||
      a.state.acc == nullptr || a.state.scores == nullptr) {
    return absl::InvalidArgumentError("AdoreProject: key_rows, queries and the state arrays are required");
  }
  if (a.n < 0 || a.n > (int64_t{1} << 31) - 1 || a.feature_stride < w.feature_dim() || a.state.num_rows < 0 ||
      a.num_query_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("AdoreProject: bad shape n=", a.n, " feature_stride=",
                                                   a.feature_stride, " feature_dim=", w.feature_dim(),
                                                   " num_rows=", a.state.num_rows));
  }
  const size_t elem = a.features_bf16 != nullptr ? sizeof(__nv_bfloat16) : sizeof(float);
  const size_t smem = kProjItems * static_cast<size_t>(w.padded_feature_dim()) * elem;
  if (smem > kProjMaxSmem) {
    return absl::InvalidArgumentError(absl::StrCat("AdoreProject: feature_dim ", w.feature_dim(),
                                                   " needs ", smem, " bytes of shared memory (at most ",
                                                   kProjMaxSmem, ")"));
  }
  if (a.n == 0) return absl::OkStatus();
  ProjParams p;
  p.w = w.proj_w();
  p.b = w.proj_b();
  p.kd = static_cast<int>(w.key_dim());
  p.sd = static_cast<int>(w.state_dim());
  p.f = static_cast<int>(w.feature_dim());
  p.fp = static_cast<int>(w.padded_feature_dim());
  p.n = a.n;
  p.feature_stride = a.feature_stride;
  p.key_rows = a.key_rows;
  p.query_rows = a.query_rows;
  p.keys = a.state.keys;
  p.states = a.state.states;
  p.acc = a.state.acc;
  p.scores = a.state.scores;
  p.num_rows = a.state.num_rows;
  p.queries = a.queries;
  p.num_query_rows = a.num_query_rows;
  const unsigned grid = static_cast<unsigned>(CeilDiv(a.n, kProjItems));
  if (a.features_bf16 != nullptr) {
    if (smem > 48 * 1024) {
      ADORE_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(ProjectKernel<__nv_bfloat16>,
                                                      cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    }
    ProjectKernel<__nv_bfloat16><<<grid, kProjThreads, smem, stream>>>(p, a.features_bf16);
  } else {
    if (smem > 48 * 1024) {
      ADORE_CUDA_RETURN_IF_ERROR(
          cudaFuncSetAttribute(ProjectKernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    }
    ProjectKernel<float><<<grid, kProjThreads, smem, stream>>>(p, a.features_f32);
  }
  return LaunchStatus("AdoreProject ProjectKernel");
}

absl::Status AdoreStep(const AdoreStepArgs& a, cudaStream_t stream) {
  if (a.weights == nullptr || a.weights->empty()) {
    return absl::InvalidArgumentError("AdoreStep: uploaded weights are required");
  }
  const AdoreStateArrays& st = a.state;
  if (st.keys == nullptr || st.states == nullptr || st.acc == nullptr || st.scores == nullptr ||
      a.queries == nullptr || a.state_base == nullptr || a.q_first == nullptr || a.q_offsets == nullptr ||
      a.slot_offsets == nullptr || a.slot_rows == nullptr || a.slot_pos == nullptr || a.slot_mass == nullptr ||
      a.slot_of_row == nullptr) {
    return absl::InvalidArgumentError(
        "AdoreStep: state arrays, queries, state_base, q_first, q_offsets, slot tables, slot_mass and "
        "slot_of_row are required");
  }
  if (a.num_seqs < 0 || a.num_seqs > 65535 || a.max_positions < 0 || a.max_positions > (int64_t{1} << 31) - 1 ||
      a.max_slots < 0 || a.max_slots > (int64_t{1} << 31) - 1 || a.mass_stride < 0 || st.num_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("AdoreStep: bad shape num_seqs=", a.num_seqs,
                                                   " max_positions=", a.max_positions, " max_slots=", a.max_slots,
                                                   " mass_stride=", a.mass_stride, " num_rows=", st.num_rows));
  }
  if (!IsAligned(st.keys, 16) || !IsAligned(st.states, 16)) {
    return absl::InvalidArgumentError("AdoreStep: keys and states must be 16-byte aligned");
  }
  if (a.num_seqs == 0 || a.max_positions == 0) return absl::OkStatus();
  const DeviceAdoreWeights& w = *a.weights;
  if (a.max_slots > 0) {
    const dim3 grid(static_cast<unsigned>(CeilDiv(a.max_slots, kScatterThreads)), static_cast<unsigned>(a.num_seqs));
    ScatterSlotsKernel<<<grid, kScatterThreads, 0, stream>>>(a.slot_offsets, a.table_ends, a.slot_rows, a.slot_pos,
                                                             a.state_base, a.q_first, a.q_offsets, a.slot_of_row,
                                                             st.num_rows);
    ADORE_RETURN_IF_ERROR(LaunchStatus("AdoreStep ScatterSlotsKernel"));
  }
  StepCommon c;
  c.score_b = w.score_b();
  c.mass_eps = w.mass_eps();
  c.mass_coef = w.mass_coef();
  c.age_coef = w.age_coef();
  c.inv_sqrt_kd = 1.0f / std::sqrt(static_cast<float>(w.key_dim()));  // as the CPU computes it
  c.mass_scale = a.mass_scale;
  c.keys = st.keys;
  c.states = st.states;
  c.acc = st.acc;
  c.scores = st.scores;
  c.num_rows = st.num_rows;
  c.queries = a.queries;
  c.state_base = a.state_base;
  c.q_first = a.q_first;
  c.q_offsets = a.q_offsets;
  c.slot_offsets = a.slot_offsets;
  c.table_ends = a.table_ends;
  c.slot_rows = a.slot_rows;
  c.slot_pos = a.slot_pos;
  c.slot_mass = a.slot_mass;
  c.mass_stride = a.mass_stride;
  c.query_mass = a.query_mass;
  c.slot_of_row = a.slot_of_row;
  switch (w.key_dim()) {
    case 16:
      return DispatchStateDim<16>(a, c, stream);
    case 32:
      return DispatchStateDim<32>(a, c, stream);
    case 64:
      return DispatchStateDim<64>(a, c, stream);
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("AdoreStep: key_dim ", w.key_dim(), " is not supported (16, 32 or 64)"));
  }
}

absl::Status AdorePlanRelease(const AdorePlanArgs& a, cudaStream_t stream) {
  if (a.scores == nullptr || a.state_base == nullptr || a.num_scored == nullptr || a.budget == nullptr ||
      a.num_new == nullptr || a.slot_offsets == nullptr || a.slot_rows == nullptr || a.slot_pos == nullptr ||
      a.num_release == nullptr || a.num_rebuild == nullptr || a.status == nullptr ||
      (a.release == nullptr && a.release_capacity > 0) || (a.rebuild == nullptr && a.rebuild_capacity > 0)) {
    return absl::InvalidArgumentError(
        "AdorePlanRelease: scores, state_base, num_scored, budget, num_new, slot tables, counts, status and "
        "the output lists of nonzero capacity are required");
  }
  if (a.num_seqs < 0 || a.num_seqs > (int64_t{1} << 31) - 1 || a.max_positions < 0 ||
      a.max_positions > (int64_t{1} << 20) || a.max_rebuild < 0 || a.num_sink < 0 || a.num_recent < 0 ||
      a.release_capacity < 0 || a.rebuild_capacity < 0 || a.num_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AdorePlanRelease: bad shape num_seqs=", a.num_seqs, " max_positions=", a.max_positions,
        " (at most 2^20) max_rebuild=", a.max_rebuild, " num_sink=", a.num_sink, " num_recent=", a.num_recent,
        " release_capacity=", a.release_capacity, " rebuild_capacity=", a.rebuild_capacity));
  }
  if (a.num_seqs == 0) return absl::OkStatus();
  if (a.num_rows <= 0) return absl::InvalidArgumentError("AdorePlanRelease: num_rows (of scores) is required");
  PlanParams p;
  p.scores = a.scores;
  p.num_rows = a.num_rows;
  p.state_base = a.state_base;
  p.num_scored = a.num_scored;
  p.budget = a.budget;
  p.num_new = a.num_new;
  p.max_positions = a.max_positions;
  p.max_rebuild = a.max_rebuild;
  p.num_sink = a.num_sink;
  p.num_recent = a.num_recent;
  p.slot_offsets = a.slot_offsets;
  p.table_ends = a.table_ends;
  p.slot_rows = a.slot_rows;
  p.slot_pos = a.slot_pos;
  p.release = a.release;
  p.release_capacity = a.release_capacity;
  p.rebuild = a.rebuild;
  p.rebuild_capacity = a.rebuild_capacity;
  p.num_release = a.num_release;
  p.num_rebuild = a.num_rebuild;
  p.status = a.status;
  const size_t smem = static_cast<size_t>(CeilDiv(a.max_positions, 32)) * sizeof(uint32_t);
  if (smem > 32 * 1024) {
    ADORE_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(PlanKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  }
  PlanKernel<<<static_cast<unsigned>(a.num_seqs), kPlanThreads, smem, stream>>>(p);
  return LaunchStatus("AdorePlanRelease PlanKernel");
}

}  // namespace adore::kernels
