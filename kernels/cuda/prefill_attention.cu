// PrefillAttention: a chunk's queries over their sequence's slot table, causal by position, as a tiled
// flash attention (online softmax, bf16 tensor-core products) with the GQA group packed into rows: the
// mma.sync kernel (default) that keeps scores and probabilities in registers and pipelines its K/V tiles,
// or the WMMA kernel that stages them in shared memory. Both compute the same values in the same order.
#include <mma.h>

#include <climits>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/mma.cuh"

namespace adore::kernels {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kBM = 64;  // packed query rows (token, head of the group) per block: 16 per warp
constexpr int kBN = 64;  // slots per K/V tile
constexpr int kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

// Shared-memory layout. Row pitches are padded by 16 bytes (bf16) / 16 bytes (f32) so that the 16-row
// fragment loads do not hit one bank; every region starts on a 32-byte boundary as WMMA requires.
template <int D>
struct Layout {
  static constexpr int kQp = D + 8;    // Q, K, V pitch (bf16)
  static constexpr int kSp = kBN + 4;  // scores pitch (f32)
  static constexpr int kPp = kBN + 8;  // probabilities pitch (bf16)
  static constexpr int kOp = D + 4;    // output accumulator pitch (f32)
  static constexpr size_t q = 0;
  static constexpr size_t k = q + sizeof(bf16) * kBM * kQp;
  static constexpr size_t v = k + sizeof(bf16) * kBN * kQp;
  static constexpr size_t s = v + sizeof(bf16) * kBN * kQp;
  static constexpr size_t p = s + sizeof(float) * kBM * kSp;
  static constexpr size_t o = p + sizeof(bf16) * kBM * kPp;
  static constexpr size_t m = o + sizeof(float) * kBM * kOp;
  static constexpr size_t l = m + sizeof(float) * kBM;
  static constexpr size_t qpos = l + sizeof(float) * kBM;
  static constexpr size_t srow = qpos + sizeof(int) * kBM;
  static constexpr size_t spos = srow + sizeof(int) * kBN;
  static constexpr size_t misc = spos + sizeof(int) * kBN;
  static constexpr size_t bytes = misc + sizeof(int) * 4;
  static_assert(k % 32 == 0 && v % 32 == 0 && s % 32 == 0 && p % 32 == 0 && o % 32 == 0);
};

struct Params {
  const bf16* q;
  int64_t q_stride;
  const int32_t* q_pos;
  const int32_t* q_offsets;
  const bf16* k_cache;
  const bf16* v_cache;
  int64_t num_rows;
  const int32_t* slot_offsets;
  const int32_t* slot_rows;
  const int32_t* slot_pos;
  int num_heads, num_kv_heads;
  float scale_log2;
  bf16* out;
  int64_t out_stride;
};

// The packed rows one block works on: grid (query-row tiles, num_kv_heads, num_seqs); packed row r is
// token r / group, head kvh * group + r % group of sequence seq; the block takes [row0, row0 + kBM).
struct BlockRows {
  int seq, kvh, group;
  int64_t q_begin, num_packed, row0, s_begin, num_slots;
};
__device__ __forceinline__ BlockRows BlockRowsOf(const Params& p) {
  BlockRows b;
  b.seq = blockIdx.z;
  b.kvh = blockIdx.y;
  b.group = p.num_heads / p.num_kv_heads;
  b.q_begin = p.q_offsets[b.seq];
  b.num_packed = (p.q_offsets[b.seq + 1] - b.q_begin) * b.group;
  b.row0 = static_cast<int64_t>(blockIdx.x) * kBM;
  b.s_begin = p.slot_offsets[b.seq];
  b.num_slots = p.slot_offsets[b.seq + 1] - b.s_begin;
  return b;
}

// The block's kBM query rows into shared memory (`pitch` bf16 per row), zeros past the sequence's rows.
template <int D>
__device__ __forceinline__ void LoadQueryTile(const Params& p, const BlockRows& b, bf16* sq, int pitch) {
  for (int idx = threadIdx.x; idx < kBM * (D / 8); idx += kThreads) {
    const int r = idx / (D / 8), c = (idx % (D / 8)) * 8;
    const int64_t pr = b.row0 + r;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (pr < b.num_packed) {
      const int64_t i = pr / b.group;
      const int h = b.kvh * b.group + static_cast<int>(pr % b.group);
      val = *reinterpret_cast<const uint4*>(p.q + (b.q_begin + i) * p.q_stride + static_cast<int64_t>(h) * D + c);
    }
    *reinterpret_cast<uint4*>(sq + r * pitch + c) = val;
  }
}

// Slot-table entry threadIdx.x of tile `tile` (threads < kBN; the others get an empty slot). The mma kernel
// fetches a tile's entries into registers a tile ahead of their store, so the global loads' latency passes
// under a tile's products.
struct SlotEntry {
  int row = -1, pos = INT_MAX;  // pool row (-1 = empty) and position (INT_MAX when empty: no row sees it)
};
__device__ __forceinline__ SlotEntry FetchSlot(const Params& p, const BlockRows& b, int64_t tile) {
  SlotEntry e;
  const int64_t s = tile * kBN + threadIdx.x;
  if (threadIdx.x < kBN && s < b.num_slots) {
    const int row = __ldg(p.slot_rows + b.s_begin + s), pos = __ldg(p.slot_pos + b.s_begin + s);
    if (row >= 0 && row < p.num_rows) e = {row, pos};
  }
  return e;
}
// Threads < kBN: tile `tile`'s entries into the shared arrays; returns whether any row of the block can see
// the thread's slot (0 for the other threads).
__device__ __forceinline__ int LoadSlotTile(const Params& p, const BlockRows& b, int64_t tile, int max_qpos, int* srow,
                                            int* spos) {
  if (threadIdx.x >= kBN) return 0;
  const SlotEntry e = FetchSlot(p, b, tile);
  srow[threadIdx.x] = e.row;
  spos[threadIdx.x] = e.pos;
  return e.row >= 0 && e.pos <= max_qpos;
}

// Grid (query-row tiles, num_kv_heads, num_seqs); 4 warps, each owning 16 packed rows (row r = token
// r / group, head kvh * group + r % group). Per 64-slot tile: the block gathers K/V rows through the slot
// table into shared memory; each warp computes its 16 x 64 scores (Q fragments stay in registers), applies
// the mask and the online softmax row by row, rescales its rows of the f32 output accumulator and adds
// P V. Warps touch only their own rows, so only the K/V tile loads need block barriers.
template <int D>
__global__ void __launch_bounds__(kThreads) PrefillWmmaKernel(const Params p) {
  using L = Layout<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sq = reinterpret_cast<bf16*>(smem + L::q);
  bf16* sk = reinterpret_cast<bf16*>(smem + L::k);
  bf16* sv = reinterpret_cast<bf16*>(smem + L::v);
  float* ss = reinterpret_cast<float*>(smem + L::s);
  bf16* sp = reinterpret_cast<bf16*>(smem + L::p);
  float* so = reinterpret_cast<float*>(smem + L::o);
  float* sm = reinterpret_cast<float*>(smem + L::m);
  float* sl = reinterpret_cast<float*>(smem + L::l);
  int* sqpos = reinterpret_cast<int*>(smem + L::qpos);
  int* srow = reinterpret_cast<int*>(smem + L::srow);
  int* spos = reinterpret_cast<int*>(smem + L::spos);
  int* smisc = reinterpret_cast<int*>(smem + L::misc);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const BlockRows b = BlockRowsOf(p);
  const int kvh = b.kvh, group = b.group;
  const int64_t q_begin = b.q_begin, num_packed = b.num_packed, row0 = b.row0, num_slots = b.num_slots;
  if (row0 >= num_packed) return;  // uniform over the block, before any barrier

  LoadQueryTile<D>(p, b, sq, L::kQp);
  for (int idx = threadIdx.x; idx < kBM * L::kOp; idx += kThreads) so[idx] = 0.0f;
  int my_qpos = INT_MIN;
  if (threadIdx.x < kBM) {
    const int64_t pr = row0 + threadIdx.x;
    if (pr < num_packed) my_qpos = p.q_pos[q_begin + pr / group];
    sqpos[threadIdx.x] = my_qpos;
    sm[threadIdx.x] = -INFINITY;
    sl[threadIdx.x] = 0.0f;
  }
  const int warp_max = __reduce_max_sync(0xffffffffu, my_qpos);
  if (lane == 0) smisc[warp] = warp_max;
  __syncthreads();
  const int max_qpos = max(max(smisc[0], smisc[1]), max(smisc[2], smisc[3]));

  wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> qa[D / 16];
#pragma unroll
  for (int kt = 0; kt < D / 16; ++kt) wmma::load_matrix_sync(qa[kt], sq + warp * 16 * L::kQp + kt * 16, L::kQp);

  const int64_t kv_row_stride = static_cast<int64_t>(p.num_kv_heads) * D;
  for (int64_t t0 = 0; t0 < num_slots; t0 += kBN) {
    const int visible = LoadSlotTile(p, b, t0 / kBN, max_qpos, srow, spos);
    if (!__syncthreads_or(visible)) continue;  // every slot of the tile is empty or in every row's future

    for (int idx = threadIdx.x; idx < kBN * (D / 8); idx += kThreads) {
      const int j = idx / (D / 8), c = (idx % (D / 8)) * 8;
      const int row = srow[j];
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (row >= 0) {  // empty slots load zeros: their P is 0 but 0 * NaN garbage would not be
        const int64_t off = row * kv_row_stride + static_cast<int64_t>(kvh) * D + c;
        kv = *reinterpret_cast<const uint4*>(p.k_cache + off);
        vv = *reinterpret_cast<const uint4*>(p.v_cache + off);
      }
      *reinterpret_cast<uint4*>(sk + j * L::kQp + c) = kv;
      *reinterpret_cast<uint4*>(sv + j * L::kQp + c) = vv;
    }
    __syncthreads();

    // Scores of this warp's 16 rows against the 64 slots.
#pragma unroll
    for (int nt = 0; nt < kBN / 16; ++nt) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int kt = 0; kt < D / 16; ++kt) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> kb;
        wmma::load_matrix_sync(kb, sk + nt * 16 * L::kQp + kt * 16, L::kQp);
        wmma::mma_sync(acc, qa[kt], kb, acc);
      }
      wmma::store_matrix_sync(ss + warp * 16 * L::kSp + nt * 16, acc, L::kSp, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax, one row at a time across the warp (lane handles slots lane and lane + 32).
    const bool vis0_slot = srow[lane] >= 0, vis1_slot = srow[lane + 32] >= 0;
    const int pos0 = spos[lane], pos1 = spos[lane + 32];
    for (int r = 0; r < 16; ++r) {
      const int R = warp * 16 + r;
      const int qp = sqpos[R];
      const float x0 = vis0_slot && pos0 <= qp ? ss[R * L::kSp + lane] * p.scale_log2 : -INFINITY;
      const float x1 = vis1_slot && pos1 <= qp ? ss[R * L::kSp + lane + 32] * p.scale_log2 : -INFINITY;
      const float m_old = sm[R];
      const float m_new = fmaxf(m_old, WarpMax(fmaxf(x0, x1)));
      float alpha = 1.0f, p0 = 0.0f, p1 = 0.0f;
      if (m_new != -INFINITY) {
        alpha = Exp2Ftz(m_old - m_new);
        p0 = Exp2Ftz(x0 - m_new);
        p1 = Exp2Ftz(x1 - m_new);
      }
      sp[R * L::kPp + lane] = __float2bfloat16_rn(p0);
      sp[R * L::kPp + lane + 32] = __float2bfloat16_rn(p1);
      const float row_sum = WarpSum(p0 + p1);
      for (int e = lane; e < D; e += 32) so[R * L::kOp + e] *= alpha;
      // Every lane has read sm[R] above; the shuffles between do not order shared-memory accesses
      // (compute-sanitizer racecheck reported the read / write pair as a hazard), so the warp meets first.
      __syncwarp();
      if (lane == 0) {
        sm[R] = m_new;
        sl[R] = __fmaf_rn(sl[R], alpha, row_sum);
      }
    }
    __syncwarp();

    // O += P V for this warp's rows.
    wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> pa[kBN / 16];
#pragma unroll
    for (int kt = 0; kt < kBN / 16; ++kt) wmma::load_matrix_sync(pa[kt], sp + warp * 16 * L::kPp + kt * 16, L::kPp);
#pragma unroll
    for (int dt = 0; dt < D / 16; ++dt) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      float* o_tile = so + warp * 16 * L::kOp + dt * 16;
      wmma::load_matrix_sync(acc, o_tile, L::kOp, wmma::mem_row_major);
#pragma unroll
      for (int kt = 0; kt < kBN / 16; ++kt) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> vb;
        wmma::load_matrix_sync(vb, sv + kt * 16 * L::kQp + dt * 16, L::kQp);
        wmma::mma_sync(acc, pa[kt], vb, acc);
      }
      wmma::store_matrix_sync(o_tile, acc, L::kOp, wmma::mem_row_major);
    }
    __syncthreads();  // the next tile overwrites K, V and the slot arrays
  }
  __syncwarp();

  for (int r = 0; r < 16; ++r) {
    const int R = warp * 16 + r;
    const int64_t pr = row0 + R;
    if (pr >= num_packed) break;
    const int64_t i = pr / group;
    const int h = kvh * group + static_cast<int>(pr % group);
    const float inv = sl[R] > 0.0f ? 1.0f / sl[R] : 0.0f;
    bf16* dst = p.out + (q_begin + i) * p.out_stride + static_cast<int64_t>(h) * D;
    for (int e = lane; e < D; e += 32) dst[e] = __float2bfloat16_rn(so[R * L::kOp + e] * inv);
  }
}


// The mma.sync kernel: the rows and K/V tiles of PrefillWmmaKernel, flash-attention-2 style, and the same
// arithmetic in the same order, so its output is bit-identical to the WMMA kernel's (the kernel test
// checks this): each warp keeps its 16 rows' scores, probabilities and output accumulators in mma.sync
// m16n8k16 fragments (registers) instead of shared memory. S = Q K^T from ldmatrix of the K tile; the mask
// and the online softmax on S's accumulator fragments (a row spread over a quad of lanes), with each row's
// sum taken in the order of the WMMA kernel's warp-wide butterfly; P's fragments, rounded to bf16 as the
// WMMA kernel rounds them, are the A operand of O += P V, with V by ldmatrix.trans. Where the WMMA kernel
// waits for each tile, this one pipelines: the next tile's K/V rows arrive by cp.async into a second stage
// while the current one is multiplied, and the slot-table entries two tiles ahead are read meanwhile.
// The block first finds its last visible slot, so a causal prompt's blocks stop at their diagonal rather
// than scanning every later tile; tiles wholly in every row's past skip the mask; and blocks run heaviest
// first (the last query rows see the most slots), so the light ones fill the tail.
namespace fa2 {

constexpr int kStages = 2;    // K/V tiles: the one multiplied and the one arriving
constexpr int kSlotBufs = 3;  // slot-table tiles: multiplied, arriving, and the next one's addresses
static_assert(kBM == kBN, "the query tile is staged in a K buffer");

template <int D>
struct Smem {
  static constexpr int kPitch = D + 8;  // bf16 per row: 16-byte pad, so the 8 rows of an ldmatrix hit distinct banks
  bf16 k[kStages][kBN][kPitch];         // k[1] holds the query tile until its fragments are in registers
  bf16 v[kStages][kBN][kPitch];
  int row[kSlotBufs][kBN];              // pool row, -1 = empty
  int pos[kSlotBufs][kBN];              // position, INT_MAX for an empty slot (so no row sees it)
  int tile_max_pos[kSlotBufs][kBN / 32];
  int qpos_max[4], last_slot[4];
};

// ... and into the buffer, with the tile's largest position per warp of slots.
__device__ __forceinline__ void StoreSlot(const SlotEntry& e, int* row_buf, int* pos_buf, int* max_buf) {
  if (threadIdx.x >= kBN) return;
  row_buf[threadIdx.x] = e.row;
  pos_buf[threadIdx.x] = e.pos;
  const int mx = __reduce_max_sync(0xffffffffu, e.pos);
  if (threadIdx.x % 32 == 0) max_buf[threadIdx.x / 32] = mx;
}

// Registers sized for 3 resident blocks per SM (up to 168 per thread), which the 71 KiB of shared memory at
// head_dim 128 also allows.
template <int D>
__global__ void __launch_bounds__(kThreads, 3) PrefillMmaKernel(const Params p) {
  using S = Smem<D>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  S& sm = *reinterpret_cast<S*>(smem_raw);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  // Heaviest first: the grid's (row tile, KV head) pairs in order of decreasing row tile.
  const int64_t linear = blockIdx.x + static_cast<int64_t>(gridDim.x) * blockIdx.y;
  BlockRows b = BlockRowsOf(p);
  b.kvh = static_cast<int>(linear % gridDim.y);
  b.row0 = static_cast<int64_t>(gridDim.x - 1 - linear / gridDim.y) * kBM;
  const int kvh = b.kvh, group = b.group;
  const int64_t q_begin = b.q_begin, num_packed = b.num_packed, row0 = b.row0, num_slots = b.num_slots;
  if (row0 >= num_packed) return;  // uniform over the block, before any barrier

  LoadQueryTile<D>(p, b, &sm.k[1][0][0], S::kPitch);
  // Positions of this lane's two fragment rows (g and g + 8 of the warp's 16), the warp's smallest (for
  // the mask) and the block's largest (for the last visible slot).
  auto row_qpos = [&](int r) {
    const int64_t pr = row0 + r;
    return pr < num_packed ? p.q_pos[q_begin + pr / group] : INT_MIN;
  };
  const int qpos0 = row_qpos(warp * 16 + g), qpos1 = row_qpos(warp * 16 + g + 8);
  const int warp_min = __reduce_min_sync(0xffffffffu, min(qpos0, qpos1));
  const int warp_max = __reduce_max_sync(0xffffffffu, max(qpos0, qpos1));
  if (lane == 0) sm.qpos_max[warp] = warp_max;
  __syncthreads();
  const int max_qpos = max(max(sm.qpos_max[0], sm.qpos_max[1]), max(sm.qpos_max[2], sm.qpos_max[3]));

  const int mi = lane / 8, mr = lane % 8;  // ldmatrix: the matrix this lane addresses and its row
  uint32_t qa[D / 16][4];
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    LdMatrixX4(qa[ks], &sm.k[1][warp * 16 + lane % 16][ks * 16 + (lane / 16) * 8]);
  }
  // The last slot any row of the block can see: tiles after it hold only empty slots and the rows' future.
  // Scanned from the end in rounds, stopping at the first round with a visible slot: a causal prompt's
  // later blocks (the heavy ones) find theirs in the first round or two.
  int last = -1;
  constexpr int kScan = 8;  // slot entries per thread per round: 16 loads in flight
  constexpr int64_t kRound = kThreads * kScan;
  for (int64_t base = (num_slots - 1) / kRound * kRound; base >= 0; base -= kRound) {
    int rows[kScan], poss[kScan];
#pragma unroll
    for (int u = 0; u < kScan; ++u) {
      const int64_t s = base + u * kThreads + threadIdx.x;
      rows[u] = s < num_slots ? __ldg(p.slot_rows + b.s_begin + s) : -1;
      poss[u] = s < num_slots ? __ldg(p.slot_pos + b.s_begin + s) : INT_MAX;
    }
#pragma unroll
    for (int u = 0; u < kScan; ++u) {
      if (rows[u] >= 0 && rows[u] < p.num_rows && poss[u] <= max_qpos) {
        last = static_cast<int>(base + u * kThreads + threadIdx.x);
      }
    }
    if (__syncthreads_or(last >= 0)) break;  // uniform: every thread sees the same answer
  }
  last = __reduce_max_sync(0xffffffffu, last);
  if (lane == 0) sm.last_slot[warp] = last;
  __syncthreads();  // also: every warp's query fragments are in registers, so k[1] is free
  last = max(max(sm.last_slot[0], sm.last_slot[1]), max(sm.last_slot[2], sm.last_slot[3]));
  const int num_tiles = (last + kBN) / kBN;

  float o[D / 8][4];
#pragma unroll
  for (int nb = 0; nb < D / 8; ++nb) o[nb][0] = o[nb][1] = o[nb][2] = o[nb][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;  // rows g and g + 8

  // K/V copies: thread x moves 16-byte column chunk x % (D / 8) of rows x / (D / 8) + r * kRowsPerPass.
  constexpr int kChunks = D / 8, kRowsPerPass = kThreads / kChunks, kPasses = kBN / kRowsPerPass;
  constexpr uint32_t kStageBytes = sizeof(bf16) * kBN * S::kPitch, kPassBytes = sizeof(bf16) * kRowsPerPass * S::kPitch;
  const int my_j = threadIdx.x / kChunks, my_c = (threadIdx.x % kChunks) * 8;
  // Byte addresses: one 32 x 32 -> 64-bit multiply-add per copy (row * row bytes + this thread's column).
  const uint32_t row_bytes = static_cast<uint32_t>(p.num_kv_heads) * D * sizeof(bf16);
  const uint64_t k_src = reinterpret_cast<uint64_t>(p.k_cache + static_cast<int64_t>(kvh) * D + my_c);
  const uint64_t v_src = reinterpret_cast<uint64_t>(p.v_cache + static_cast<int64_t>(kvh) * D + my_c);
  const uint32_t k_dst = static_cast<uint32_t>(__cvta_generic_to_shared(&sm.k[0][my_j][my_c]));
  const uint32_t v_dst = static_cast<uint32_t>(__cvta_generic_to_shared(&sm.v[0][my_j][my_c]));
  auto issue_kv = [&](int stage, int buf) {
#pragma unroll
    for (int r = 0; r < kPasses; ++r) {
      const int row = sm.row[buf][my_j + r * kRowsPerPass];
      const uint64_t off = static_cast<uint64_t>(static_cast<uint32_t>(max(row, 0))) * row_bytes;  // empty: row 0, zero-filled
      const uint32_t d = stage * kStageBytes + r * kPassBytes;
      CpAsync16(k_dst + d, reinterpret_cast<const void*>(k_src + off), row >= 0);
      CpAsync16(v_dst + d, reinterpret_cast<const void*>(v_src + off), row >= 0);
    }
  };
  if (num_tiles > 0) StoreSlot(FetchSlot(p, b, 0), sm.row[0], sm.pos[0], sm.tile_max_pos[0]);
  if (num_tiles > 1) StoreSlot(FetchSlot(p, b, 1), sm.row[1], sm.pos[1], sm.tile_max_pos[1]);
  __syncthreads();
  if (num_tiles > 0) issue_kv(0, 0);
  CpAsyncCommit();

  for (int tile = 0; tile < num_tiles; ++tile) {
    const int stage = tile & 1, buf = tile % kSlotBufs;
    // Stage stage ^ 1 was last read before the previous tile's closing barrier, and the next tile's slot
    // entries were stored before it.
    if (tile + 1 < num_tiles) issue_kv(stage ^ 1, (tile + 1) % kSlotBufs);
    CpAsyncCommit();
    const SlotEntry ahead = tile + 2 < num_tiles ? FetchSlot(p, b, tile + 2) : SlotEntry{};
    CpAsyncWait<1>();  // this tile's K/V (all but the group just committed)
    __syncthreads();

    // S = Q K^T for the warp's 16 rows and the tile's kBN slots: [n-block of 8 slots][fragment].
    float s[kBN / 8][4];
#pragma unroll
    for (int nb = 0; nb < kBN / 8; ++nb) s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
#pragma unroll
      for (int np = 0; np < kBN / 16; ++np) {
        uint32_t kb[4];
        LdMatrixX4(kb, &sm.k[stage][np * 16 + (mi / 2) * 8 + mr][ks * 16 + (mi % 2) * 8]);
        Mma16816(s[2 * np], qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3], kb[0], kb[1]);
        Mma16816(s[2 * np + 1], qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3], kb[2], kb[3]);
      }
    }
    // Log2 units; the mask (empty slot, or a slot after the row's position) only where some slot of the
    // tile is after some row of the warp (a warp-uniform branch). Then the running max per row.
    if (max(sm.tile_max_pos[buf][0], sm.tile_max_pos[buf][1]) > warp_min) {
#pragma unroll
      for (int nb = 0; nb < kBN / 8; ++nb) {
        const int2 pos = *reinterpret_cast<const int2*>(&sm.pos[buf][nb * 8 + 2 * t]);
        s[nb][0] = pos.x > qpos0 ? -INFINITY : s[nb][0] * p.scale_log2;
        s[nb][1] = pos.y > qpos0 ? -INFINITY : s[nb][1] * p.scale_log2;
        s[nb][2] = pos.x > qpos1 ? -INFINITY : s[nb][2] * p.scale_log2;
        s[nb][3] = pos.y > qpos1 ? -INFINITY : s[nb][3] * p.scale_log2;
      }
    } else {
#pragma unroll
      for (int nb = 0; nb < kBN / 8; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nb][e] *= p.scale_log2;
      }
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nb = 0; nb < kBN / 8; ++nb) {
      mx0 = fmaxf(mx0, fmaxf(s[nb][0], s[nb][1]));
      mx1 = fmaxf(mx1, fmaxf(s[nb][2], s[nb][3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
    const float a0 = n0 == -INFINITY ? 1.0f : Exp2Ftz(m0 - n0), a1 = n1 == -INFINITY ? 1.0f : Exp2Ftz(m1 - n1);
    // A row with no visible slot yet (max -inf) has only -inf scores, and 2^(-inf - 0) = 0.
    const float sub0 = n0 == -INFINITY ? 0.0f : n0, sub1 = n1 == -INFINITY ? 0.0f : n1;
#pragma unroll
    for (int nb = 0; nb < kBN / 8; ++nb) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        s[nb][i] = Exp2Ftz(s[nb][i] - sub0);
        s[nb][2 + i] = Exp2Ftz(s[nb][2 + i] - sub1);
      }
    }
    // Row sums in the WMMA kernel's order: it adds slots j and j + 32 in lane j and then runs the warp
    // butterfly over j with offsets 16, 8, 4, 2, 1. Here slot j = 8 nb + 2 t + i, so offsets 16 and 8 flip
    // bits of nb (in this lane), 4 and 2 flip bits of t (lanes xor 2 and 1 of the quad) and 1 flips i.
    float sum0, sum1;
    {
      float w0[2], w1[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float v0[4], v1[4];
#pragma unroll
        for (int nb = 0; nb < 4; ++nb) {
          v0[nb] = s[nb][i] + s[nb + 4][i];
          v1[nb] = s[nb][2 + i] + s[nb + 4][2 + i];
        }
        w0[i] = (v0[0] + v0[2]) + (v0[1] + v0[3]);
        w1[i] = (v1[0] + v1[2]) + (v1[1] + v1[3]);
        w0[i] += __shfl_xor_sync(0xffffffffu, w0[i], 2);
        w1[i] += __shfl_xor_sync(0xffffffffu, w1[i], 2);
        w0[i] += __shfl_xor_sync(0xffffffffu, w0[i], 1);
        w1[i] += __shfl_xor_sync(0xffffffffu, w1[i], 1);
      }
      sum0 = w0[0] + w0[1];
      sum1 = w1[0] + w1[1];
    }
    l0 = __fmaf_rn(l0, a0, sum0);
    l1 = __fmaf_rn(l1, a1, sum1);
    m0 = n0;
    m1 = n1;
    if (!__all_sync(0xffffffffu, a0 == 1.0f && a1 == 1.0f)) {  // once the maxima settle, most tiles skip this
#pragma unroll
      for (int nb = 0; nb < D / 8; ++nb) {
        o[nb][0] *= a0;
        o[nb][1] *= a0;
        o[nb][2] *= a1;
        o[nb][3] *= a1;
      }
    }
    // O += P V, 16 slots per k-step: P's two n-blocks of 8 slots, rounded to bf16, form the A fragment.
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      const uint32_t pa0 = PackBf16x2(s[2 * kk][0], s[2 * kk][1]);
      const uint32_t pa1 = PackBf16x2(s[2 * kk][2], s[2 * kk][3]);
      const uint32_t pa2 = PackBf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      const uint32_t pa3 = PackBf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t vb[4];
        LdMatrixX4Trans(vb, &sm.v[stage][kk * 16 + (mi % 2) * 8 + mr][dp * 16 + (mi / 2) * 8]);
        Mma16816(o[2 * dp], pa0, pa1, pa2, pa3, vb[0], vb[1]);
        Mma16816(o[2 * dp + 1], pa0, pa1, pa2, pa3, vb[2], vb[3]);
      }
    }
    // Buffer (tile + 2) % 3 was last read by the previous tile's products.
    if (tile + 2 < num_tiles) {
      const int nbuf = (tile + 2) % kSlotBufs;
      StoreSlot(ahead, sm.row[nbuf], sm.pos[nbuf], sm.tile_max_pos[nbuf]);
    }
    __syncthreads();  // the next tile's loads overwrite this stage
  }

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t pr = row0 + warp * 16 + g + half * 8;
    if (pr >= num_packed) continue;
    const float l = half == 0 ? l0 : l1;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const int64_t i = pr / group;
    const int h = kvh * group + static_cast<int>(pr % group);
    bf16* dst = p.out + (q_begin + i) * p.out_stride + static_cast<int64_t>(h) * D;
#pragma unroll
    for (int nb = 0; nb < D / 8; ++nb) {
      *reinterpret_cast<uint32_t*>(dst + nb * 8 + 2 * t) = PackBf16x2(o[nb][2 * half] * inv, o[nb][2 * half + 1] * inv);
    }
  }
}

}  // namespace fa2

}  // namespace

absl::StatusOr<PrefillAttentionKernel> ParsePrefillAttentionKernel(std::string_view name) {
  if (name == "auto") return PrefillAttentionKernel::kAuto;
  if (name == "wmma") return PrefillAttentionKernel::kWmma;
  if (name == "mma") return PrefillAttentionKernel::kMma;
  return absl::InvalidArgumentError(
      absl::StrCat("prefill attention kernel \"", std::string(name), "\": expected auto, wmma or mma"));
}

absl::Status PrefillAttention(const PrefillAttentionArgs& a, cudaStream_t stream) {
  if (a.q == nullptr || a.q_pos == nullptr || a.q_offsets == nullptr || a.k_cache == nullptr ||
      a.v_cache == nullptr || a.slot_offsets == nullptr || a.slot_rows == nullptr || a.slot_pos == nullptr ||
      a.out == nullptr) {
    return absl::InvalidArgumentError("PrefillAttention: q, q_pos, q_offsets, caches, slot table and out are required");
  }
  if (a.num_seqs < 0 || a.num_seqs > 65535 || a.max_q < 0 || a.num_heads <= 0 || a.num_kv_heads <= 0 ||
      a.num_heads % a.num_kv_heads != 0 || a.num_heads > 4096 || a.num_rows <= 0 ||
      a.q_stride < a.num_heads * a.head_dim || a.out_stride < a.num_heads * a.head_dim || a.q_stride % 8 != 0 ||
      !(a.scale > 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PrefillAttention: bad shape num_seqs=", a.num_seqs, " max_q=", a.max_q, " num_heads=", a.num_heads,
        " num_kv_heads=", a.num_kv_heads, " head_dim=", a.head_dim, " q_stride=", a.q_stride,
        " out_stride=", a.out_stride, " num_rows=", a.num_rows, " scale=", a.scale));
  }
  if (!IsAligned(a.q, 16) || !IsAligned(a.k_cache, 16) || !IsAligned(a.v_cache, 16)) {
    return absl::InvalidArgumentError("PrefillAttention: q and the caches must be 16-byte aligned");
  }
  if (a.num_seqs == 0 || a.max_q == 0) return absl::OkStatus();
  const int64_t group = a.num_heads / a.num_kv_heads;
  const int64_t tiles = CeilDiv(a.max_q * group, kBM);
  if (tiles > (int64_t{1} << 31) - 1) return absl::InvalidArgumentError("PrefillAttention: max_q too large");

  Params p;
  p.q = a.q;
  p.q_stride = a.q_stride;
  p.q_pos = a.q_pos;
  p.q_offsets = a.q_offsets;
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

  return ADORE_DISPATCH_HEAD_DIM(a.head_dim, HEAD_DIM, [&]() -> absl::Status {
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(a.num_kv_heads),
                    static_cast<unsigned>(a.num_seqs));
    if (a.kernel != PrefillAttentionKernel::kWmma) {
      constexpr size_t kSmem = sizeof(fa2::Smem<HEAD_DIM>);
      ADORE_RETURN_IF_ERROR(RaiseSharedMemory<fa2::PrefillMmaKernel<HEAD_DIM>>(kSmem, "mma prefill"));
      fa2::PrefillMmaKernel<HEAD_DIM><<<grid, kThreads, kSmem, stream>>>(p);
      return LaunchStatus("PrefillMmaKernel");
    }
    constexpr size_t kSmem = Layout<HEAD_DIM>::bytes;
    ADORE_RETURN_IF_ERROR(RaiseSharedMemory<PrefillWmmaKernel<HEAD_DIM>>(kSmem, "wmma prefill"));
    PrefillWmmaKernel<HEAD_DIM><<<grid, kThreads, kSmem, stream>>>(p);
    return LaunchStatus("PrefillWmmaKernel");
  });
}

}  // namespace adore::kernels
