// DecodeAttention: one query per sequence over its slot table, flash-decoding (split-K) with GQA, plus the
// optional per-slot attention mass that release policies consume.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/mma.cuh"

namespace adore::kernels {
namespace {

constexpr int kThreads = 128;
// Slots per lane group in flight before the first use; fewer for wide head tiles to bound registers.
template <int GQ>
constexpr int kUnroll = GQ >= 4 ? 2 : 4;
// Slots per lane group per round (one softmax chunk) in the chunked lanes kernel. Two: the registers, not
// the instruction-level parallelism, set how many bytes are in flight: on the H200 (adore-attn-layout,
// bench/results/decode_attention_chunked.json) 2 beat 3, 4, 6 and 8 by 0-50% (fewer registers, more
// resident blocks) and tied 1 on MHA. ADORE_DECODE_CHUNK_SLOTS overrides it (A/B builds).
#ifdef ADORE_DECODE_CHUNK_SLOTS
constexpr int kChunkSlots = ADORE_DECODE_CHUNK_SLOTS;
#else
constexpr int kChunkSlots = 2;
#endif
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

// The query heads [h0, h0 + GQ) of sequence b, this thread's 8 elements of each (element sub * 8 on),
// scaled by scale * log2(e).
template <int D, int GQ>
__device__ __forceinline__ void LoadQuerySlice(const Params& p, const BlockWork& w, int sub, float (&qf)[GQ][8]) {
#pragma unroll
  for (int g = 0; g < GQ; ++g) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p.q + w.b * p.q_stride + (w.h0 + g) * D + sub * 8);
    Bf16x8ToFloat(raw, qf[g]);
#pragma unroll
    for (int e = 0; e < 8; ++e) qf[g][e] *= p.scale_log2;
  }
}

// The pool rows of lane group lg's U slots base + u * kLanes + lg (u < U), -1 where the slot is past the
// split, empty, out of the pool or not yet visible to the query.
template <int U, int kLanes>
__device__ __forceinline__ void FetchSlotRows(const Params& p, const BlockWork& w, int lg, int32_t qpos,
                                              int64_t base, int32_t (&rows)[U]) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t s = base + u * kLanes + lg;
    rows[u] = -1;
    if (s < w.hi) {
      const int32_t row = p.slot_rows[w.s_begin + s];
      if (row >= 0 && row < p.num_rows && p.slot_pos[w.s_begin + s] <= qpos) rows[u] = row;
    }
  }
}

// The block's N partial softmaxes per head (running max m and sum l in log2 units, unnormalized output
// acc), merged and written (WriteResult). Callers fill the arrays and __syncthreads() first.
template <int D, int GQ, int N>
__device__ __forceinline__ void CombinePartials(const Params& p, const BlockWork& w, const float (&sm_m)[N][GQ],
                                                const float (&sm_l)[N][GQ], const float (&sm_acc)[N][GQ][D]) {
  for (int idx = threadIdx.x; idx < GQ * D; idx += kThreads) {
    const int g = idx / D, e = idx % D;
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < N; ++i) mx = fmaxf(mx, sm_m[i][g]);
    float sum_l = 0.0f, sum_o = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const float wgt = exp2f(sm_m[i][g] - mx);  // 0 for partials that saw nothing
        sum_l += sm_l[i][g] * wgt;
        sum_o += sm_acc[i][g][e] * wgt;
      }
    }
    WriteResult<D>(p, w, w.h0 + g, e, sum_o, mx, sum_l);
  }
}

// End of the lane-group kernels: every lane group holds its own online-softmax state (m, l, unnormalized
// acc over its 8 output elements) per head; the block merges them in shared memory.
template <int D, int GQ, int kLanes>
__device__ __forceinline__ void MergeLaneGroups(const Params& p, const BlockWork& w, int lg, int sub,
                                                const float (&m)[GQ], const float (&l)[GQ],
                                                const float (&acc)[GQ][8]) {
  __shared__ float sm_m[kLanes][GQ];
  __shared__ float sm_l[kLanes][GQ];
  __shared__ float sm_acc[kLanes][GQ][D];
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
  CombinePartials<D, GQ, kLanes>(p, w, sm_m, sm_l, sm_acc);
}

// Grid (num_kv_heads * group / GQ, batch, splits); block = 128 threads. A "lane group" of D / 8 threads
// holds one slot's K/V row (8 elements, one 16-byte load each), so a block walks 128 / (D / 8) slots at
// once and each K/V row is read once for the GQ query heads that share it. Each lane group keeps its own
// online-softmax state per head; the block merges them in shared memory at the end, and writes either
// the final output (one split) or its split's partial for DecodeMergeKernel.
// kPrefetch: the slot-table entries of the next round of slots are loaded into registers before this
// round's K/V are used, so the K/V loads never wait on a slot-table load.
// kChunk: a lane group's round of U slots is one softmax chunk: the U x GQ scores are computed side by side
// (independent dot products and shuffle reductions), then each head's running max and sum are rescaled once
// per round, not once per slot. Without it every slot's update waits on the previous slot's through the
// running max (a serial chain of exp2, multiply and add per slot and head), which leaves the warps idle
// on latency at GQA >= 3.
template <int D, int GQ, bool kPrefetch, bool kChunk = false>
__global__ void __launch_bounds__(kThreads) DecodeLanesKernel(const Params p) {
  constexpr int kTpr = D / 8;             // threads per slot row
  constexpr int kLanes = kThreads / kTpr;  // slots processed side by side
  constexpr int U = kChunk ? kChunkSlots : kUnroll<GQ>;

  const int lg = threadIdx.x / kTpr, sub = threadIdx.x % kTpr;
  const BlockWork w = BlockWorkOf(p, GQ);
  const int b = w.b, kvh = w.kvh, h0 = w.h0;
  const int64_t s_begin = w.s_begin, lo = w.lo, hi = w.hi;
  const int32_t qpos = p.q_pos[b];

  float qf[GQ][8];
  LoadQuerySlice<D, GQ>(p, w, sub, qf);
  float m[GQ], l[GQ], acc[GQ][8];
#pragma unroll
  for (int g = 0; g < GQ; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;
  }

  const int64_t kv_row_stride = static_cast<int64_t>(p.num_kv_heads) * D;
  int32_t next_row[U];  // pool rows of this lane group's next U slots, -1 = invalid
  auto fetch_rows = [&](int64_t base) { FetchSlotRows<U, kLanes>(p, w, lg, qpos, base, next_row); };
  if (kPrefetch) fetch_rows(lo);
  for (int64_t base = lo; base < hi; base += kLanes * U) {
    uint4 kr[U], vr[U];
    bool valid[U];
    if (!kPrefetch) fetch_rows(base);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      valid[u] = next_row[u] >= 0;
      if (valid[u]) {
        const int64_t off = next_row[u] * kv_row_stride + kvh * D + sub * 8;
        kr[u] = *reinterpret_cast<const uint4*>(p.k_cache + off);
        vr[u] = *reinterpret_cast<const uint4*>(p.v_cache + off);
      } else {
        kr[u] = vr[u] = make_uint4(0, 0, 0, 0);
      }
    }
    if (kPrefetch) fetch_rows(base + kLanes * U);
    if constexpr (kChunk) {
      float sc[U][GQ];  // scores, then probabilities
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float kf[8];
        Bf16x8ToFloat(kr[u], kf);
#pragma unroll
        for (int g = 0; g < GQ; ++g) {
          float dot = 0.0f;
#pragma unroll
          for (int e = 0; e < 8; ++e) dot = fmaf(qf[g][e], kf[e], dot);
          sc[u][g] = dot;
        }
      }
#pragma unroll
      for (int o = kTpr / 2; o > 0; o >>= 1) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
#pragma unroll
          for (int g = 0; g < GQ; ++g) sc[u][g] += __shfl_xor_sync(0xffffffffu, sc[u][g], o);
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t s = base + u * kLanes + lg;
#pragma unroll
        for (int g = 0; g < GQ; ++g) {
          if (!valid[u]) sc[u][g] = -INFINITY;
          if (p.ws.scores != nullptr && sub == 0 && s < hi) {
            p.ws.scores[(s_begin + s) * p.num_heads + h0 + g] = sc[u][g];
          }
        }
      }
#pragma unroll
      for (int g = 0; g < GQ; ++g) {
        float m_new = m[g];
#pragma unroll
        for (int u = 0; u < U; ++u) m_new = fmaxf(m_new, sc[u][g]);
        // Nothing visible yet: no update (and no -inf - -inf). Otherwise exp2(-inf) = 0 drops invalid slots
        // and, on the first visible chunk, the empty state.
        const float alpha = m_new == -INFINITY ? 1.0f : exp2f(m[g] - m_new);
        float psum = 0.0f;
#pragma unroll
        for (int u = 0; u < U; ++u) {
          sc[u][g] = m_new == -INFINITY ? 0.0f : exp2f(sc[u][g] - m_new);
          psum += sc[u][g];
        }
        l[g] = l[g] * alpha + psum;
        m[g] = m_new;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] *= alpha;
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float vf[8];
        Bf16x8ToFloat(vr[u], vf);
#pragma unroll
        for (int g = 0; g < GQ; ++g) {
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(sc[u][g], vf[e], acc[g][e]);
        }
      }
    } else {
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
  }

  MergeLaneGroups<D, GQ, kLanes>(p, w, lg, sub, m, l, acc);
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

template <int D, int GQ>
absl::Status PreparePipelined() {
  return RaiseSharedMemory<DecodePipelinedKernel<D, GQ>>(sizeof(Smem<D, GQ>), "pipelined");
}

}  // namespace pipe

// ---- The tensor-core kernel --------------------------------------------------------------------------
// Grid and Params as DecodeLanesKernel; 4 warps per block, each walking every 4th 16-slot tile of the
// block's range on its own, so no block-wide barrier is needed until the end. Per warp: a ring of kStages
// K/V tiles in shared memory filled by cp.async through the slot table (16 bytes per copy, zero-filled for
// invalid slots; the slot rows of the tile after the next one are loaded into registers meanwhile), and
// flash-attention arithmetic on mma.sync m16n8k16 (bf16 in, float32 accumulate) with the GQ query heads as
// the 16 rows of the A operand (rows >= GQ are zero):
//   S (16 x 16 slots) = Q K^T    ldmatrix of the K tile as the B operand
//   online softmax on S's accumulator fragments (each row = one head, spread over a quad of lanes)
//   O (16 x D) += P V            P's fragments reused as the A operand (bf16 value + bf16 remainder, two
//                                MMAs), ldmatrix.trans of the V tile as B
// The dot products and weighted sums cost a few dozen tensor-core instructions per tile, and the bytes in
// flight live in shared memory, not in registers, so neither bounds the K/V rate the way the registers of
// the lane kernels do at GQA >= 3.
namespace mma {

constexpr int kTile = 16;  // slots per warp tile
constexpr int kWarps = kThreads / 32;
template <int D>
constexpr int kStages = D == 128 ? 3 : 4;  // 104 KiB (D = 128) or 74 KiB (D = 64) per block: 2-3 blocks per SM
template <int D>
constexpr int kPitch = D + 8;  // bf16 per shared row: 16-byte pad, so 8 rows of an ldmatrix hit distinct banks

template <int D>
struct alignas(16) WarpRing {  // 16-byte aligned for cp.async and ldmatrix in every warp's ring
  bf16 k[kStages<D>][kTile][kPitch<D>];
  bf16 v[kStages<D>][kTile][kPitch<D>];
  uint32_t mask[kStages<D>];  // bit i: slot i of the stage's tile is visible
};
template <int D, int GQ>
struct Merge {  // reuses the rings once every warp is done
  float m[kWarps][GQ];
  float l[kWarps][GQ];
  float acc[kWarps][GQ][D];
};
template <int D, int GQ>
constexpr size_t kSmemBytes = sizeof(WarpRing<D>) * kWarps > sizeof(Merge<D, GQ>) ? sizeof(WarpRing<D>) * kWarps
                                                                                  : sizeof(Merge<D, GQ>);

// c += a * b for one m16n8k16 tile whose A rows g + 8 (the second half) are zero: the group's heads are
// rows 0..7.
__device__ __forceinline__ void Mma(float (&c)[4], uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
  Mma16816(c, a0, 0u, a2, 0u, b0, b1);
}

template <int D, int GQ>
__global__ void __launch_bounds__(kThreads) DecodeMmaKernel(const Params p) {
  static_assert(GQ <= 8, "the group's heads are the rows 0..7 of the MMA's A operand");
  constexpr int S = kStages<D>;
  constexpr int kChunks = kTile * (D / 8) / 32;  // 16-byte copies of K (and of V) per lane per tile
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;  // fragment row (head) and column pair
  WarpRing<D>& ring = reinterpret_cast<WarpRing<D>*>(smem_raw)[warp];

  const BlockWork w = BlockWorkOf(p, GQ);
  const int32_t qpos = p.q_pos[w.b];
  const int64_t kv_row_stride = static_cast<int64_t>(p.num_kv_heads) * D;
  const int64_t kv_col = static_cast<int64_t>(w.kvh) * D;
  const int block_tiles = w.hi > w.lo ? static_cast<int>((w.hi - w.lo + kTile - 1) / kTile) : 0;
  const int my_tiles = block_tiles > warp ? (block_tiles - 1 - warp) / kWarps + 1 : 0;

  // Q as A fragments: row g = head h0 + g, columns ks * 16 + 2t (+1) and + 8; zero rows past the group.
  uint32_t qa[D / 16][2];
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    qa[ks][0] = qa[ks][1] = 0u;
    if (g < GQ) {
      const bf16* q = p.q + w.b * p.q_stride + (w.h0 + g) * D + ks * 16 + 2 * t;
      qa[ks][0] = *reinterpret_cast<const uint32_t*>(q);
      qa[ks][1] = *reinterpret_cast<const uint32_t*>(q + 8);
    }
  }

  // Slot rows of this warp's local tile j: lane i < 16 holds slot i's pool row, -1 = not visible.
  auto fetch = [&](int j) -> int32_t {
    int32_t row = -1;
    const int64_t s = w.lo + static_cast<int64_t>(warp + j * kWarps) * kTile + lane;
    if (j < my_tiles && lane < kTile && s < w.hi) {
      row = p.slot_rows[w.s_begin + s];
      if (row < 0 || row >= p.num_rows || p.slot_pos[w.s_begin + s] > qpos) row = -1;
    }
    return row;
  };
  auto issue = [&](int j, int32_t my_row) {
    const int st = j % S;
    const uint32_t mask = __ballot_sync(0xffffffffu, my_row >= 0);
    if (lane == 0) ring.mask[st] = mask;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int chunk = lane + 32 * c, slot = chunk / (D / 8), col = chunk % (D / 8);
      const int32_t row = __shfl_sync(0xffffffffu, my_row, slot);
      const bool ok = row >= 0;
      const int64_t off = (ok ? row * kv_row_stride : 0) + kv_col + col * 8;
      CpAsync16(&ring.k[st][slot][col * 8], p.k_cache + off, ok);
      CpAsync16(&ring.v[st][slot][col * 8], p.v_cache + off, ok);
    }
  };

  float m = -INFINITY, l = 0.0f;  // row g's running max and this lane's share of its sum
  float o[D / 8][4];              // O fragments: [n-block of 8 dims][row g: 2t, 2t+1 | row g + 8: unused]
#pragma unroll
  for (int nb = 0; nb < D / 8; ++nb) o[nb][0] = o[nb][1] = o[nb][2] = o[nb][3] = 0.0f;

  int32_t next_row = fetch(0);
#pragma unroll
  for (int j = 0; j < S - 1; ++j) {
    if (j < my_tiles) issue(j, next_row);
    CpAsyncCommit();
    next_row = fetch(j + 1);
  }
  const int mi = lane / 8, mr = lane % 8;  // ldmatrix: the matrix this lane addresses and its row
  for (int j = 0; j < my_tiles; ++j) {
    if (j + S - 1 < my_tiles) issue(j + S - 1, next_row);
    CpAsyncCommit();
    next_row = fetch(j + S);
    CpAsyncWait<S - 1>();
    __syncwarp();
    const int st = j % S;
    const int64_t tile_lo = w.lo + static_cast<int64_t>(warp + j * kWarps) * kTile;

    // S = Q K^T: K's rows are the B operand's columns (n = slot), ldmatrix without transpose.
    float sc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t kb[4];
      LdMatrixX4(kb, &ring.k[st][(mi / 2) * 8 + mr][ks * 16 + (mi % 2) * 8]);
      Mma(sc[0], qa[ks][0], qa[ks][1], kb[0], kb[1]);
      Mma(sc[1], qa[ks][0], qa[ks][1], kb[2], kb[3]);
    }
    // Row g's scores at slots nb * 8 + 2t + i, in log2 units; masked slots -inf.
    const uint32_t mask = ring.mask[st];
    float s4[4];
    float tmax = -INFINITY;
#pragma unroll
    for (int nb = 0; nb < 2; ++nb) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int slot = nb * 8 + 2 * t + i;
        const float v = (mask >> slot) & 1u ? sc[nb][i] * p.scale_log2 : -INFINITY;
        s4[nb * 2 + i] = v;
        tmax = fmaxf(tmax, v);
        if (p.ws.scores != nullptr && g < GQ && tile_lo + slot < w.hi) {
          p.ws.scores[(w.s_begin + tile_lo + slot) * p.num_heads + w.h0 + g] = v;
        }
      }
    }
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
    const float m_new = fmaxf(m, tmax);
    const float alpha = m_new == -INFINITY ? 1.0f : exp2f(m - m_new);
    float pr[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) pr[i] = m_new == -INFINITY ? 0.0f : exp2f(s4[i] - m_new);
    l = l * alpha + (pr[0] + pr[1] + pr[2] + pr[3]);
    m = m_new;
    // O = O * alpha + P V: P's accumulator layout is the A operand's (columns 2t, 2t + 1 and + 8); P goes
    // in as a rounded part and a remainder (SplitBf16x2).
    uint32_t pa0, pa2, pr0, pr2;
    SplitBf16x2(pr[0], pr[1], pa0, pr0);
    SplitBf16x2(pr[2], pr[3], pa2, pr2);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t vb[4];
      LdMatrixX4Trans(vb, &ring.v[st][(mi % 2) * 8 + mr][dp * 16 + (mi / 2) * 8]);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        o[2 * dp + h][0] *= alpha;
        o[2 * dp + h][1] *= alpha;
        Mma(o[2 * dp + h], pa0, pa2, vb[2 * h], vb[2 * h + 1]);
        Mma(o[2 * dp + h], pr0, pr2, vb[2 * h], vb[2 * h + 1]);
      }
    }
    __syncwarp();  // the next iteration's copies refill this stage
  }
  CpAsyncWait<0>();
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);

  __syncthreads();  // every warp is done with its ring: the merge area overlays them
  Merge<D, GQ>& mg = *reinterpret_cast<Merge<D, GQ>*>(smem_raw);
  if (g < GQ) {
    if (t == 0) {
      mg.m[warp][g] = m;
      mg.l[warp][g] = l;
    }
#pragma unroll
    for (int nb = 0; nb < D / 8; ++nb) {
      mg.acc[warp][g][nb * 8 + 2 * t] = o[nb][0];
      mg.acc[warp][g][nb * 8 + 2 * t + 1] = o[nb][1];
    }
  }
  __syncthreads();
  CombinePartials<D, GQ, kWarps>(p, w, mg.m, mg.l, mg.acc);
}

template <int D, int GQ>
absl::Status PrepareMma() {
  return RaiseSharedMemory<DecodeMmaKernel<D, GQ>>(kSmemBytes<D, GQ>, "tensor-core");
}

}  // namespace mma

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
  if (name == "chunked") return DecodeAttentionKernel::kChunked;
  if (name == "mma") return DecodeAttentionKernel::kMma;
  return absl::InvalidArgumentError(absl::StrCat("decode attention kernel \"", std::string(name),
                                                 "\": expected auto, lanes, lanes_prefetch, chunked, mma or pipelined"));
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
      } else if (a.kernel == DecodeAttentionKernel::kLanesPrefetch) {
        DecodeLanesKernel<HEAD_DIM, GROUP_TILE, true><<<grid, kThreads, 0, stream>>>(p);
        ADORE_RETURN_IF_ERROR(LaunchStatus("DecodeLanesKernel"));
      } else if (a.kernel == DecodeAttentionKernel::kChunked ||
                 (a.kernel == DecodeAttentionKernel::kAuto && GROUP_TILE == 1)) {
        DecodeLanesKernel<HEAD_DIM, GROUP_TILE, true, true><<<grid, kThreads, 0, stream>>>(p);
        ADORE_RETURN_IF_ERROR(LaunchStatus("DecodeLanesKernel(chunked)"));
      } else if (a.kernel == DecodeAttentionKernel::kMma || a.kernel == DecodeAttentionKernel::kAuto) {
        ADORE_RETURN_IF_ERROR((mma::PrepareMma<HEAD_DIM, GROUP_TILE>()));
        mma::DecodeMmaKernel<HEAD_DIM, GROUP_TILE>
            <<<grid, kThreads, mma::kSmemBytes<HEAD_DIM, GROUP_TILE>, stream>>>(p);
        ADORE_RETURN_IF_ERROR(LaunchStatus("DecodeMmaKernel"));
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
