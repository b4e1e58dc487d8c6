// DecodeAttention: one query per sequence over its slot table, flash-decoding (split-K) with GQA, plus the
// optional per-slot attention mass that release policies consume.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dispatch.cuh"

namespace adore::kernels {
namespace {

constexpr int kThreads = 128;
// Slots per lane group in flight before the first use; fewer for wide head tiles to bound registers.
template <int GQ>
constexpr int kUnroll = GQ >= 4 ? 2 : 4;
constexpr int kMaxSplits = 64;
constexpr float kLog2e = 1.4426950408889634f;

size_t Align256(size_t b) { return (b + 255) / 256 * 256; }

// Where the partials live inside the caller's workspace.
struct Workspace {
  float* partial_o = nullptr;   // [batch, num_heads, splits, head_dim]  unnormalized sum p * v
  float* partial_ml = nullptr;  // [batch, num_heads, splits, 2]         (max, sum p) in log2 units
  float* lse = nullptr;         // [batch, num_heads]                    log2-sum-exp of the scores
  float* scores = nullptr;      // [total_slots, num_heads]              log2-scaled scores, -inf = masked
};

size_t WorkspaceBytes(int64_t batch, int64_t num_heads, int64_t head_dim, int splits, bool mass,
                      int64_t total_slots) {
  size_t bytes = 0;
  if (splits > 1) {
    bytes += Align256(sizeof(float) * batch * num_heads * splits * head_dim);
    bytes += Align256(sizeof(float) * batch * num_heads * splits * 2);
  }
  if (mass) {
    bytes += Align256(sizeof(float) * batch * num_heads);
    bytes += Align256(sizeof(float) * total_slots * num_heads);
  }
  return bytes;
}

Workspace Carve(void* base, int64_t batch, int64_t num_heads, int64_t head_dim, int splits, bool mass) {
  Workspace w;
  char* p = static_cast<char*>(base);
  if (splits > 1) {
    w.partial_o = reinterpret_cast<float*>(p);
    p += Align256(sizeof(float) * batch * num_heads * splits * head_dim);
    w.partial_ml = reinterpret_cast<float*>(p);
    p += Align256(sizeof(float) * batch * num_heads * splits * 2);
  }
  if (mass) {
    w.lse = reinterpret_cast<float*>(p);
    p += Align256(sizeof(float) * batch * num_heads);
    w.scores = reinterpret_cast<float*>(p);
  }
  return w;
}

struct Params {
  const bf16* q;
  int64_t q_stride;
  const int32_t* q_pos;
  const bf16* k_cache;
  const bf16* v_cache;
  int64_t num_rows;
  const int32_t* slot_offsets;
  const int32_t* slot_rows;
  const int32_t* slot_pos;
  int num_heads, num_kv_heads;
  float scale_log2;  // scale * log2(e): scores live in log2 units so exp2f does the softmax
  bf16* out;
  int64_t out_stride;
  Workspace ws;
};

// What one block of the decode kernels works on. Grid (num_kv_heads * group / gq, batch, splits): block
// (x, b, split) takes query heads [h0, h0 + gq) of KV head kvh, sequence b, and the split's slot range
// [lo, hi) of that sequence's slot-table entries, which start at s_begin.
struct BlockWork {
  int b, split, num_splits, kvh, h0;
  int64_t s_begin, lo, hi;
};
__device__ __forceinline__ BlockWork BlockWorkOf(const Params& p, int gq) {
  BlockWork w;
  w.b = blockIdx.y;
  w.split = blockIdx.z;
  w.num_splits = gridDim.z;
  const int group = p.num_heads / p.num_kv_heads;
  const int tiles_per_kv = group / gq;
  w.kvh = blockIdx.x / tiles_per_kv;
  w.h0 = w.kvh * group + (blockIdx.x % tiles_per_kv) * gq;
  w.s_begin = p.slot_offsets[w.b];
  const int64_t len = p.slot_offsets[w.b + 1] - w.s_begin;
  const int64_t chunk = (len + w.num_splits - 1) / w.num_splits;
  w.lo = w.split * chunk;
  w.hi = min(len, w.lo + chunk);
  return w;
}

// Element e of head h's result: the normalized output (one split; and the head's log2-sum-exp when the
// mass is wanted) or this split's partial (unnormalized sum, max, sum of p) for DecodeMergeKernel.
template <int D>
__device__ __forceinline__ void WriteResult(const Params& p, const BlockWork& w, int h, int e, float sum_o,
                                            float mx, float sum_l) {
  if (w.num_splits == 1) {
    p.out[w.b * p.out_stride + h * D + e] = __float2bfloat16_rn(sum_l > 0.0f ? sum_o / sum_l : 0.0f);
    if (p.ws.lse != nullptr && e == 0) p.ws.lse[w.b * p.num_heads + h] = sum_l > 0.0f ? mx + log2f(sum_l) : -INFINITY;
  } else {
    const int64_t part = (static_cast<int64_t>(w.b) * p.num_heads + h) * w.num_splits + w.split;
    p.ws.partial_o[part * D + e] = sum_o;
    if (e == 0) {
      p.ws.partial_ml[part * 2] = mx;
      p.ws.partial_ml[part * 2 + 1] = sum_l;
    }
  }
}

// Grid (num_kv_heads * group / GQ, batch, splits); block = 128 threads. A "lane group" of D / 8 threads
// holds one slot's K/V row (8 elements, one 16-byte load each), so a block walks 128 / (D / 8) slots at
// once and each K/V row is read once for the GQ query heads that share it. Each lane group keeps its own
// online-softmax state per head; the block merges them in shared memory at the end, and writes either
// the final output (one split) or its split's partial for DecodeMergeKernel.
// kPrefetch: the slot-table entries of the next round of slots are loaded into registers before this
// round's K/V are used, so the K/V loads never wait on a slot-table load.
template <int D, int GQ, bool kPrefetch>
__global__ void __launch_bounds__(kThreads) DecodeLanesKernel(const Params p) {
  constexpr int kTpr = D / 8;             // threads per slot row
  constexpr int kLanes = kThreads / kTpr;  // slots processed side by side
  constexpr int U = kUnroll<GQ>;
  __shared__ float sm_m[kLanes][GQ];
  __shared__ float sm_l[kLanes][GQ];
  __shared__ float sm_acc[kLanes][GQ][D];

  const int lg = threadIdx.x / kTpr, sub = threadIdx.x % kTpr;
  const BlockWork w = BlockWorkOf(p, GQ);
  const int b = w.b, kvh = w.kvh, h0 = w.h0;
  const int64_t s_begin = w.s_begin, lo = w.lo, hi = w.hi;
  const int32_t qpos = p.q_pos[b];

  float qf[GQ][8];
#pragma unroll
  for (int g = 0; g < GQ; ++g) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p.q + b * p.q_stride + (h0 + g) * D + sub * 8);
    Bf16x8ToFloat(raw, qf[g]);
#pragma unroll
    for (int e = 0; e < 8; ++e) qf[g][e] *= p.scale_log2;
  }
  float m[GQ], l[GQ], acc[GQ][8];
#pragma unroll
  for (int g = 0; g < GQ; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;
  }

  const int64_t kv_row_stride = static_cast<int64_t>(p.num_kv_heads) * D;
  // Element offset of each of this lane group's next U slots' rows, -1 = invalid.
  int64_t next_off[U];
  auto fetch_rows = [&](int64_t base) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t s = base + u * kLanes + lg;
      next_off[u] = -1;
      if (s < hi) {
        const int32_t row = p.slot_rows[s_begin + s];
        if (row >= 0 && row < p.num_rows && p.slot_pos[s_begin + s] <= qpos) next_off[u] = row * kv_row_stride;
      }
    }
  };
  if (kPrefetch) fetch_rows(lo);
  for (int64_t base = lo; base < hi; base += kLanes * U) {
    uint4 kr[U], vr[U];
    bool valid[U];
    if (!kPrefetch) fetch_rows(base);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      valid[u] = next_off[u] >= 0;
      if (valid[u]) {
        const int64_t off = next_off[u] + kvh * D + sub * 8;
        kr[u] = *reinterpret_cast<const uint4*>(p.k_cache + off);
        vr[u] = *reinterpret_cast<const uint4*>(p.v_cache + off);
      } else {
        kr[u] = vr[u] = make_uint4(0, 0, 0, 0);
      }
    }
    if (kPrefetch) fetch_rows(base + kLanes * U);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t s = base + u * kLanes + lg;
      float kf[8], vf[8];
      Bf16x8ToFloat(kr[u], kf);
      Bf16x8ToFloat(vr[u], vf);
#pragma unroll
      for (int g = 0; g < GQ; ++g) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) dot = fmaf(qf[g][e], kf[e], dot);
#pragma unroll
        for (int o = kTpr / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        const float score = valid[u] ? dot : -INFINITY;
        if (p.ws.scores != nullptr && sub == 0 && s < hi) p.ws.scores[(s_begin + s) * p.num_heads + h0 + g] = score;
        if (valid[u]) {
          const float m_new = fmaxf(m[g], score);
          const float alpha = exp2f(m[g] - m_new);
          const float pr = exp2f(score - m_new);
          l[g] = l[g] * alpha + pr;
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(pr, vf[e], acc[g][e] * alpha);
          m[g] = m_new;
        }
      }
    }
  }

  // Merge the lane groups.
#pragma unroll
  for (int g = 0; g < GQ; ++g) {
    if (sub == 0) {
      sm_m[lg][g] = m[g];
      sm_l[lg][g] = l[g];
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) sm_acc[lg][g][sub * 8 + e] = acc[g][e];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < GQ * D; idx += kThreads) {
    const int g = idx / D, e = idx % D;
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < kLanes; ++i) mx = fmaxf(mx, sm_m[i][g]);
    float sum_l = 0.0f, sum_o = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int i = 0; i < kLanes; ++i) {
        const float w = exp2f(sm_m[i][g] - mx);  // 0 for lane groups that saw nothing
        sum_l += sm_l[i][g] * w;
        sum_o += sm_acc[i][g][e] * w;
      }
    }
    WriteResult<D>(p, w, h0 + g, e, sum_o, mx, sum_l);
  }
}

// ---- The pipelined kernel ----------------------------------------------------------------------------
// Grid and Params as DecodeLanesKernel. A block walks its slot range in tiles of kTile slots: the K and V
// rows of a tile are gathered through the slot table into shared memory by cp.async (16 bytes per
// instruction, zero-filled for invalid slots), kStages tiles in flight, and the slot rows of the tile after
// those are loaded into registers one iteration ahead, so no thread waits on the slot table. Per tile:
// (A) every thread dots a D / kParts slice of one slot's K with the GQ queries; (B) one warp per head
// finishes the scores, updates the running max and sum and writes the probabilities; (C) every thread
// accumulates a pair of output dims over a share of the tile's slots for the GQ heads.
namespace pipe {

constexpr int kStages = 4;
template <int D>
constexpr int kTile = D == 128 ? 32 : 64;  // 8 KiB of K and 8 KiB of V per tile
template <int D>
constexpr int kRowElems = D + 8;  // 16-byte pad: the 8 threads of a quarter warp hit distinct banks
template <int D>
constexpr int kParts = kThreads / kTile<D>;  // threads per slot in phase A
template <int D>
constexpr int kChunksPerRow = D / 8;
template <int D>
constexpr int kChunks = kTile<D> * kChunksPerRow<D> / kThreads;  // K (and V) 16-byte copies per thread per tile
template <int D>
constexpr int kPairGroups = kThreads / (D / 2);  // slot groups in phase C
constexpr int kWarps = kThreads / 32;
template <int GQ>
constexpr int kHeadsPerWarp = (GQ + kWarps - 1) / kWarps;

template <int D, int GQ>
struct Smem {
  bf16 k[kStages][kTile<D>][kRowElems<D>];
  bf16 v[kStages][kTile<D>][kRowElems<D>];
  float q[GQ][D];
  float part[kParts<D>][GQ][kTile<D>];
  float prob[GQ][kTile<D>];
  float alpha[GQ];
  int valid[kStages][kTile<D>];
  float red[kPairGroups<D>][GQ][D];
  float m[GQ], l[GQ];
};

__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool fill) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(fill ? 16 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <int D, int GQ>
__global__ void __launch_bounds__(kThreads, 2) DecodePipelinedKernel(const Params p) {
  constexpr int T = kTile<D>, P = kParts<D>, C = kChunks<D>, G = kPairGroups<D>;
  constexpr int kSlice = D / P;  // dims per thread in phase A
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Smem<D, GQ>& sm = *reinterpret_cast<Smem<D, GQ>*>(smem_raw);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const BlockWork w = BlockWorkOf(p, GQ);
  const int b = w.b, kvh = w.kvh, h0 = w.h0;
  const int64_t s_begin = w.s_begin, lo = w.lo, hi = w.hi;
  const int num_tiles = hi > lo ? static_cast<int>((hi - lo + T - 1) / T) : 0;
  const int32_t qpos = p.q_pos[b];
  const int64_t kv_row_stride = static_cast<int64_t>(p.num_kv_heads) * D;
  const bf16* k_base = p.k_cache + kvh * D;
  const bf16* v_base = p.v_cache + kvh * D;

  for (int i = tid; i < GQ * D; i += kThreads) {
    const int g = i / D, e = i % D;
    sm.q[g][e] = __bfloat162float(p.q[b * p.q_stride + (h0 + g) * D + e]) * p.scale_log2;
  }

  // This thread's copies: chunk c = tid + j * kThreads -> slot c / kChunksPerRow, column c % kChunksPerRow.
  const int col = tid % kChunksPerRow<D>;
  const int slot0 = tid / kChunksPerRow<D>;
  constexpr int kSlotStep = kThreads / kChunksPerRow<D>;
  int64_t next_row[C];  // element offset of the chunk's row, -1 = invalid
  auto load_rows = [&](int tile) {
#pragma unroll
    for (int j = 0; j < C; ++j) {
      const int64_t s = lo + static_cast<int64_t>(tile) * T + slot0 + j * kSlotStep;
      next_row[j] = -1;
      if (tile < num_tiles && s < hi) {
        const int32_t row = p.slot_rows[s_begin + s];
        if (row >= 0 && row < p.num_rows && p.slot_pos[s_begin + s] <= qpos) next_row[j] = row * kv_row_stride;
      }
    }
  };
  auto issue = [&](int tile) {
    if (tile >= num_tiles) return;
    const int st = tile % kStages;
#pragma unroll
    for (int j = 0; j < C; ++j) {
      const int slot = slot0 + j * kSlotStep;
      const bool ok = next_row[j] >= 0;
      const int64_t off = (ok ? next_row[j] : 0) + col * 8;
      CpAsync16(&sm.k[st][slot][col * 8], k_base + off, ok);
      CpAsync16(&sm.v[st][slot][col * 8], v_base + off, ok);
      if (col == 0) sm.valid[st][slot] = ok;
    }
  };

  // Prologue: tiles 0 .. kStages - 2 in flight, the rows of tile kStages - 1 in registers.
  load_rows(0);
#pragma unroll
  for (int t = 0; t < kStages - 1; ++t) {
    issue(t);
    CpAsyncCommit();
    load_rows(t + 1);
  }

  float m_run[kHeadsPerWarp<GQ>], l_run[kHeadsPerWarp<GQ>];
#pragma unroll
  for (int i = 0; i < kHeadsPerWarp<GQ>; ++i) {
    m_run[i] = -INFINITY;
    l_run[i] = 0.0f;
  }
  float acc[GQ][2];
#pragma unroll
  for (int g = 0; g < GQ; ++g) acc[g][0] = acc[g][1] = 0.0f;
  const int pair = tid % (D / 2), pgroup = tid / (D / 2);
  const int a_slot = tid % T, a_part = tid / T;

  for (int t = 0; t < num_tiles; ++t) {
    issue(t + kStages - 1);
    CpAsyncCommit();
    load_rows(t + kStages);
    CpAsyncWait<kStages - 1>();
    __syncthreads();
    const int st = t % kStages;

    // (A) partial dot products.
    {
      float dot[GQ];
#pragma unroll
      for (int g = 0; g < GQ; ++g) dot[g] = 0.0f;
      const bf16* krow = &sm.k[st][a_slot][a_part * kSlice];
#pragma unroll
      for (int c8 = 0; c8 < kSlice / 8; ++c8) {
        float kf[8];
        Bf16x8ToFloat(*reinterpret_cast<const uint4*>(krow + c8 * 8), kf);
#pragma unroll
        for (int g = 0; g < GQ; ++g) {
          const float4 qa = *reinterpret_cast<const float4*>(&sm.q[g][a_part * kSlice + c8 * 8]);
          const float4 qb = *reinterpret_cast<const float4*>(&sm.q[g][a_part * kSlice + c8 * 8 + 4]);
          dot[g] = fmaf(qa.x, kf[0], dot[g]);
          dot[g] = fmaf(qa.y, kf[1], dot[g]);
          dot[g] = fmaf(qa.z, kf[2], dot[g]);
          dot[g] = fmaf(qa.w, kf[3], dot[g]);
          dot[g] = fmaf(qb.x, kf[4], dot[g]);
          dot[g] = fmaf(qb.y, kf[5], dot[g]);
          dot[g] = fmaf(qb.z, kf[6], dot[g]);
          dot[g] = fmaf(qb.w, kf[7], dot[g]);
        }
      }
#pragma unroll
      for (int g = 0; g < GQ; ++g) sm.part[a_part][g][a_slot] = dot[g];
    }
    __syncthreads();

    // (B) scores, running max and sum, probabilities: warp w owns heads w, w + kWarps, ...
    const int64_t tile_lo = lo + static_cast<int64_t>(t) * T;
#pragma unroll
    for (int i = 0; i < kHeadsPerWarp<GQ>; ++i) {
      const int g = warp + i * kWarps;
      if (g < GQ) {
        float sc[T / 32];
        float tmax = -INFINITY;
#pragma unroll
        for (int r = 0; r < T / 32; ++r) {
          const int j = lane + r * 32;
          float v = 0.0f;
#pragma unroll
          for (int q = 0; q < P; ++q) v += sm.part[q][g][j];
          sc[r] = sm.valid[st][j] ? v : -INFINITY;
          if (p.ws.scores != nullptr && tile_lo + j < hi) p.ws.scores[(s_begin + tile_lo + j) * p.num_heads + h0 + g] = sc[r];
          tmax = fmaxf(tmax, sc[r]);
        }
        tmax = WarpMax(tmax);
        const float m_new = fmaxf(m_run[i], tmax);
        const float alpha = m_new == -INFINITY ? 1.0f : exp2f(m_run[i] - m_new);
        float psum = 0.0f;
#pragma unroll
        for (int r = 0; r < T / 32; ++r) {
          const float pr = sc[r] == -INFINITY ? 0.0f : exp2f(sc[r] - m_new);
          sm.prob[g][lane + r * 32] = pr;
          psum += pr;
        }
        psum = WarpSum(psum);
        l_run[i] = l_run[i] * alpha + psum;
        m_run[i] = m_new;
        if (lane == 0) sm.alpha[g] = alpha;
      }
    }
    __syncthreads();

    // (C) weighted V: this thread's dim pair over slots pgroup, pgroup + G, ...
    {
#pragma unroll
      for (int g = 0; g < GQ; ++g) {
        const float a = sm.alpha[g];
        acc[g][0] *= a;
        acc[g][1] *= a;
      }
#pragma unroll
      for (int jj = 0; jj < T / G; ++jj) {
        const int j = pgroup + jj * G;
        const float2 vf = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&sm.v[st][j][pair * 2]));
#pragma unroll
        for (int g = 0; g < GQ; ++g) {
          const float pr = sm.prob[g][j];
          acc[g][0] = fmaf(pr, vf.x, acc[g][0]);
          acc[g][1] = fmaf(pr, vf.y, acc[g][1]);
        }
      }
    }
    __syncthreads();  // stage st is refilled by the next iteration's issue
  }
  CpAsyncWait<0>();  // no copy may land after the block exits

  // Merge the slot groups; write the output or this split's partial.
#pragma unroll
  for (int g = 0; g < GQ; ++g) {
    sm.red[pgroup][g][pair * 2] = acc[g][0];
    sm.red[pgroup][g][pair * 2 + 1] = acc[g][1];
  }
#pragma unroll
  for (int i = 0; i < kHeadsPerWarp<GQ>; ++i) {
    const int g = warp + i * kWarps;
    if (g < GQ && lane == 0) {
      sm.m[g] = m_run[i];
      sm.l[g] = l_run[i];
    }
  }
  __syncthreads();
  for (int idx = tid; idx < GQ * D; idx += kThreads) {
    const int g = idx / D, e = idx % D;
    float o = 0.0f;
#pragma unroll
    for (int q = 0; q < G; ++q) o += sm.red[q][g][e];
    const float mx = sm.m[g], sum_l = sm.l[g];
    WriteResult<D>(p, w, h0 + g, e, o, mx, sum_l);
  }
}

// Raises the kernel's dynamic shared-memory limit once per device.
template <int D, int GQ>
absl::Status PreparePipelined() {
  static std::atomic<bool> done[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return absl::InternalError("DecodeAttention: cudaGetDevice failed");
  if (dev >= 0 && dev < 64 && done[dev].load(std::memory_order_acquire)) return absl::OkStatus();
  const cudaError_t e = cudaFuncSetAttribute(DecodePipelinedKernel<D, GQ>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(sizeof(Smem<D, GQ>)));
  if (e != cudaSuccess) {
    return absl::InternalError(absl::StrCat("DecodeAttention: cannot give the pipelined kernel ",
                                            sizeof(Smem<D, GQ>), " bytes of shared memory: ", cudaGetErrorString(e)));
  }
  if (dev >= 0 && dev < 64) done[dev].store(true, std::memory_order_release);
  return absl::OkStatus();
}

}  // namespace pipe

// Grid (num_heads, batch), D threads: combines the splits' partial softmaxes of one (sequence, head).
template <int D>
__global__ void __launch_bounds__(D) DecodeMergeKernel(const Params p, int num_splits) {
  const int h = blockIdx.x, b = blockIdx.y, e = threadIdx.x;
  const int64_t part0 = (static_cast<int64_t>(b) * p.num_heads + h) * num_splits;
  float mx = -INFINITY;
  for (int s = 0; s < num_splits; ++s) mx = fmaxf(mx, p.ws.partial_ml[(part0 + s) * 2]);
  float sum_l = 0.0f, sum_o = 0.0f;
  if (mx != -INFINITY) {
    for (int s = 0; s < num_splits; ++s) {
      const float w = exp2f(p.ws.partial_ml[(part0 + s) * 2] - mx);
      sum_l += p.ws.partial_ml[(part0 + s) * 2 + 1] * w;
      sum_o += p.ws.partial_o[(part0 + s) * D + e] * w;
    }
  }
  p.out[b * p.out_stride + h * D + e] = __float2bfloat16_rn(sum_l > 0.0f ? sum_o / sum_l : 0.0f);
  if (p.ws.lse != nullptr && e == 0) p.ws.lse[b * p.num_heads + h] = sum_l > 0.0f ? mx + log2f(sum_l) : -INFINITY;
}

// Grid (slot blocks, batch): mass[s] += sum over heads of exp2(score - lse), i.e. each head's softmax
// probability of the slot.
__global__ void DecodeMassKernel(const Params p, float* __restrict__ mass) {
  const int b = blockIdx.y;
  const int64_t s_begin = p.slot_offsets[b];
  const int64_t len = p.slot_offsets[b + 1] - s_begin;
  const int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= len) return;
  const float* sc = p.ws.scores + (s_begin + s) * p.num_heads;
  const float* lse = p.ws.lse + static_cast<int64_t>(b) * p.num_heads;
  float sum = 0.0f;
  for (int h = 0; h < p.num_heads; ++h) {
    if (sc[h] != -INFINITY && lse[h] != -INFINITY) sum += exp2f(sc[h] - lse[h]);
  }
  mass[s_begin + s] += sum;
}

}  // namespace

absl::StatusOr<DecodeAttentionKernel> ParseDecodeAttentionKernel(std::string_view name) {
  if (name == "auto") return DecodeAttentionKernel::kAuto;
  if (name == "lanes") return DecodeAttentionKernel::kLanes;
  if (name == "pipelined") return DecodeAttentionKernel::kPipelined;
  if (name == "lanes_prefetch") return DecodeAttentionKernel::kLanesPrefetch;
  return absl::InvalidArgumentError(absl::StrCat("decode attention kernel \"", std::string(name),
                                                 "\": expected auto, lanes, lanes_prefetch or pipelined"));
}

size_t DecodeAttentionWorkspaceBytes(int64_t batch, int64_t num_heads, int64_t head_dim, int max_splits,
                                     int64_t total_slots_with_mass) {
  return WorkspaceBytes(batch, num_heads, head_dim, max_splits, total_slots_with_mass > 0, total_slots_with_mass);
}

absl::Status DecodeAttention(const DecodeAttentionArgs& a, cudaStream_t stream) {
  if (a.q == nullptr || a.q_pos == nullptr || a.k_cache == nullptr || a.v_cache == nullptr ||
      a.slot_offsets == nullptr || a.slot_rows == nullptr || a.slot_pos == nullptr || a.out == nullptr) {
    return absl::InvalidArgumentError("DecodeAttention: q, q_pos, caches, slot table and out are required");
  }
  if (a.batch < 0 || a.batch > 65535 || a.num_heads <= 0 || a.num_kv_heads <= 0 ||
      a.num_heads % a.num_kv_heads != 0 || a.num_heads > 4096 || a.num_rows <= 0 || a.max_slots < 0 ||
      a.q_stride < a.num_heads * a.head_dim || a.out_stride < a.num_heads * a.head_dim || a.q_stride % 8 != 0 ||
      a.total_slots < 0 || !(a.scale > 0.0f) || a.num_splits < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DecodeAttention: bad shape batch=", a.batch, " num_heads=", a.num_heads, " num_kv_heads=", a.num_kv_heads,
        " head_dim=", a.head_dim, " q_stride=", a.q_stride, " out_stride=", a.out_stride, " num_rows=", a.num_rows,
        " max_slots=", a.max_slots, " scale=", a.scale));
  }
  if (a.head_dim != 64 && a.head_dim != 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodeAttention: head_dim ", a.head_dim, " is not supported (64 or 128)"));
  }
  if (!IsAligned(a.q, 16) || !IsAligned(a.k_cache, 16) || !IsAligned(a.v_cache, 16)) {
    return absl::InvalidArgumentError("DecodeAttention: q and the caches must be 16-byte aligned");
  }
  const bool mass = a.slot_attn_mass != nullptr;
  if (mass && a.total_slots <= 0 && a.max_slots > 0) {
    return absl::InvalidArgumentError("DecodeAttention: total_slots is required with slot_attn_mass");
  }
  if (a.batch == 0) return absl::OkStatus();

  const int64_t group = a.num_heads / a.num_kv_heads;
  int splits = a.num_splits;
  if (splits == 0) {
    const int gq = group % 8 == 0 ? 8 : group % 4 == 0 ? 4 : group % 3 == 0 ? 3 : group % 2 == 0 ? 2 : 1;
    const int64_t base_blocks = a.batch * a.num_heads / gq;
    const int64_t target = 4 * static_cast<int64_t>(CurrentDeviceSmCount());
    int64_t s = CeilDiv(target, base_blocks);
    s = std::min<int64_t>(s, CeilDiv(std::max<int64_t>(a.max_slots, 1), 256));  // >= 256 slots per split
    splits = static_cast<int>(std::clamp<int64_t>(s, 1, kMaxSplits));
    while (splits > 1 &&
           WorkspaceBytes(a.batch, a.num_heads, a.head_dim, splits, mass, a.total_slots) > a.workspace_bytes) {
      --splits;
    }
  } else if (splits > kMaxSplits) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeAttention: num_splits ", splits, " > ", kMaxSplits));
  }
  const size_t need = WorkspaceBytes(a.batch, a.num_heads, a.head_dim, splits, mass, a.total_slots);
  if (need > 0 && (a.workspace == nullptr || a.workspace_bytes < need)) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeAttention: workspace of ", a.workspace_bytes,
                                                   " bytes, need ", need, " for ", splits, " splits"));
  }
  if (need > 0 && !IsAligned(a.workspace, 256)) {
    return absl::InvalidArgumentError("DecodeAttention: workspace must be 256-byte aligned");
  }

  Params p;
  p.q = a.q;
  p.q_stride = a.q_stride;
  p.q_pos = a.q_pos;
  p.k_cache = a.k_cache;
  p.v_cache = a.v_cache;
  p.num_rows = a.num_rows;
  p.slot_offsets = a.slot_offsets;
  p.slot_rows = a.slot_rows;
  p.slot_pos = a.slot_pos;
  p.num_heads = static_cast<int>(a.num_heads);
  p.num_kv_heads = static_cast<int>(a.num_kv_heads);
  p.scale_log2 = a.scale * kLog2e;
  p.out = a.out;
  p.out_stride = a.out_stride;
  p.ws = Carve(a.workspace, a.batch, a.num_heads, a.head_dim, splits, mass);

  return ADORE_DISPATCH_HEAD_DIM(a.head_dim, HEAD_DIM, [&] {
    return ADORE_DISPATCH_GROUP_TILE(group, GROUP_TILE, [&]() -> absl::Status {
      const dim3 grid(static_cast<unsigned>(a.num_heads / GROUP_TILE), static_cast<unsigned>(a.batch),
                      static_cast<unsigned>(splits));
      if (a.kernel == DecodeAttentionKernel::kLanes) {
        DecodeLanesKernel<HEAD_DIM, GROUP_TILE, false><<<grid, kThreads, 0, stream>>>(p);
        ADORE_RETURN_IF_ERROR(LaunchStatus("DecodeLanesKernel"));
      } else if (a.kernel == DecodeAttentionKernel::kLanesPrefetch || a.kernel == DecodeAttentionKernel::kAuto) {
        DecodeLanesKernel<HEAD_DIM, GROUP_TILE, true><<<grid, kThreads, 0, stream>>>(p);
        ADORE_RETURN_IF_ERROR(LaunchStatus("DecodeLanesKernel"));
      } else {
        ADORE_RETURN_IF_ERROR((pipe::PreparePipelined<HEAD_DIM, GROUP_TILE>()));
        pipe::DecodePipelinedKernel<HEAD_DIM, GROUP_TILE>
            <<<grid, kThreads, sizeof(pipe::Smem<HEAD_DIM, GROUP_TILE>), stream>>>(p);
        ADORE_RETURN_IF_ERROR(LaunchStatus("DecodePipelinedKernel"));
      }
      if (splits > 1) {
        DecodeMergeKernel<HEAD_DIM><<<dim3(static_cast<unsigned>(a.num_heads), static_cast<unsigned>(a.batch)),
                                      HEAD_DIM, 0, stream>>>(p, splits);
        ADORE_RETURN_IF_ERROR(LaunchStatus("DecodeMergeKernel"));
      }
      if (mass && a.max_slots > 0) {
        const dim3 mgrid(static_cast<unsigned>(CeilDiv(a.max_slots, 256)), static_cast<unsigned>(a.batch));
        DecodeMassKernel<<<mgrid, 256, 0, stream>>>(p, a.slot_attn_mass);
        ADORE_RETURN_IF_ERROR(LaunchStatus("DecodeMassKernel"));
      }
      return absl::OkStatus();
    });
  });
}

}  // namespace adore::kernels
