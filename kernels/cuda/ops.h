// The engine's op set, CUDA bf16 versions (one kernel per kernels/cuda/<op>.cu); kernels/ops.h holds the
// CPU float32 reference each one is tested against. Host-only header: plain C++ code may include it.
// Every launcher validates its arguments and returns INVALID_ARGUMENT (launching nothing) on a bad shape or
// a missing pointer, INTERNAL when the launch itself fails. Launches are asynchronous on `stream`; errors
// inside a running kernel surface at the next synchronizing CUDA call. Index arrays (ids, rows, slot
// tables, offsets) live in device memory; the launchers never read them, so every bound the host must
// know (max lengths, totals) is an explicit field.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace adore::kernels {

using bf16 = __nv_bfloat16;

// out[i, :] = table[ids[i], :]: token embedding, also used as a row gather of any bf16 matrix. Exactly one
// of out_f32 / out_bf16 is set. An id outside [0, vocab) yields a zero row (the launcher cannot read
// device ids; the engine checks token ids on the host first).
struct EmbeddingArgs {
  const bf16* table = nullptr;   // [vocab, dim]
  int64_t vocab = 0, dim = 0;
  const int32_t* ids = nullptr;  // [n]
  int64_t n = 0;
  float* out_f32 = nullptr;      // [n, dim], or
  bf16* out_bf16 = nullptr;      // [n, dim]
};
absl::Status Embedding(const EmbeddingArgs& args, cudaStream_t stream);

// residual += x (when x is set); out = residual / rms(residual) * weight, per row.
// The residual stream is float32 on purpose: it accumulates every layer's attention and MLP output, and
// bf16 (8 mantissa bits) would round away small layer updates against a large running sum and drift
// from the float32 CPU engine over 30+ layers. It costs 4 bytes per hidden element per token, which is
// nothing next to the weights and the KV cache. Matrix products add into it directly (cuBLAS with a
// float32 C and beta = 1), so `x` is only needed when the update arrives in bf16.
struct AddRmsNormArgs {
  float* residual = nullptr;    // [n, dim], updated in place when x is set
  const bf16* x = nullptr;      // [n, dim] or null
  const bf16* weight = nullptr;  // [dim]
  int64_t n = 0, dim = 0;
  float eps = 1e-5f;
  bf16* out = nullptr;          // [n, dim]
};
absl::Status AddRmsNorm(const AddRmsNormArgs& args, cudaStream_t stream);

// Rotary embedding on interleaved pairs (x[2j], x[2j+1]) of each head, in place; angle =
// pos * theta^(-2j / rot_dim) in float32 as RopeRef. Heads are `num_heads` consecutive blocks of head_dim
// at the start of each row, so Q and K of a fused QKV row (Q heads then K heads) rotate in one launch.
struct RopeArgs {
  bf16* x = nullptr;                 // [n, row_stride]; head h of row i at x + i * row_stride + h * head_dim
  int64_t row_stride = 0;
  const int32_t* positions = nullptr;  // [n]
  int64_t n = 0, num_heads = 0, head_dim = 0, rot_dim = 0;
  float theta = 10000.0f;
  // Optional, KvWrite fused in (one launch instead of two): after rotating row i, copy its K heads
  // [kv_first_head, kv_first_head + num_kv_heads) and its V columns [v_offset, v_offset + num_kv_heads *
  // head_dim) into pool row kv_rows[i] (-1 or >= num_kv_rows: none), the same bytes KvWrite would copy.
  const int32_t* kv_rows = nullptr;  // [n]; nullptr: rotate only
  int64_t kv_first_head = 0, num_kv_heads = 0, v_offset = 0;
  bf16* k_cache = nullptr;  // [num_kv_rows, num_kv_heads * head_dim]
  bf16* v_cache = nullptr;
  int64_t num_kv_rows = 0;
};
absl::Status Rope(const RopeArgs& args, cudaStream_t stream);

// out = silu(gate) * up, elementwise over the first `width` columns of each row. Strides let gate and up
// be the two halves of a fused [n, 2 * width] gate/up product.
struct SwiGluArgs {
  const bf16* gate = nullptr;  // [n, gate_stride]
  const bf16* up = nullptr;    // [n, up_stride]
  bf16* out = nullptr;         // [n, out_stride]
  int64_t n = 0, width = 0, gate_stride = 0, up_stride = 0, out_stride = 0;
};
absl::Status SwiGlu(const SwiGluArgs& args, cudaStream_t stream);

// Scatters new K/V rows into the pool: cache[rows[i]] = src[i]. rows[i] = -1 (or >= num_rows) skips
// token i.
struct KvWriteArgs {
  const bf16* k = nullptr;  // [n, src_stride], first row_dim columns
  const bf16* v = nullptr;  // [n, src_stride]
  int64_t src_stride = 0;
  const int32_t* rows = nullptr;  // [n]
  int64_t n = 0, row_dim = 0;     // row_dim = num_kv_heads * head_dim
  bf16* k_cache = nullptr;        // [num_rows, row_dim]
  bf16* v_cache = nullptr;        // [num_rows, row_dim]
  int64_t num_rows = 0;
};
absl::Status KvWrite(const KvWriteArgs& args, cudaStream_t stream);

// Updates slot tables kept on the GPU between calls by the entries a call changed: for each entry i,
// slot_rows[index] = row and slot_pos[index] = pos, with (index, row, pos) = entries[3 i .. 3 i + 2].
// An index outside [0, capacity) skips the entry. Entries must name distinct indices.
struct SlotTableUpdateArgs {
  const int32_t* entries = nullptr;  // [n, 3]
  int64_t n = 0;
  int32_t* slot_rows = nullptr;  // [capacity]
  int32_t* slot_pos = nullptr;   // [capacity]
  int64_t capacity = 0;
};
absl::Status SlotTableUpdate(const SlotTableUpdateArgs& args, cudaStream_t stream);

// Slot tables of a batch in CSR form: sequence b owns entries [slot_offsets[b], slot_offsets[b + 1]) of
// slot_rows / slot_pos. Entry s is visible to a query at position p iff slot_rows[s] is in
// [0, num_rows) and slot_pos[s] <= p (rows of -1 are empty slots). Query head h reads KV head
// h / (num_heads / num_kv_heads) (GQA). Masks exactly like kernels::AttentionRef; a query that sees no
// slot gets a zero output.

// Decode attention: one query per sequence (its newest token, whose K/V were already written and added
// to its slot table), flash-decoding style: each sequence's slots are split into chunks processed by
// separate blocks, each computing a partial softmax (max, sum, weighted V), merged by a second kernel,
// so a batch of a few long sequences still fills the GPU. Supported head_dim: 64, 128.
// The kernels compute the same result (A/B on the H200: docs/BENCHMARKS.md). kAuto: kMma where a block
// takes two or more query heads per KV head, kChunked for one (MHA).
// kLanes: each group of head_dim / 8 threads walks slots with direct 16-byte K/V loads from the slot
// table's rows. kLanesPrefetch: the same with the next round's slot-table entries loaded while this
// round's K/V are in flight, 0-8% faster. kChunked: lanes_prefetch over rounds of 2 slots per lane group,
// each round one softmax chunk (one rescale of the running max and sum per round instead of per slot) and
// fewer registers, so more blocks stay resident: 1.2-1.8x lanes_prefetch's K/V bandwidth (3.3-3.9 TB/s
// with one query head per KV head at batch 64). kMma: per warp a cp.async ring of 16-slot K/V tiles in
// shared memory and mma.sync bf16 tensor-core products with the GQA group as the MMA's rows: 2.0-3.4 TB/s
// at GQA 3-4, where the lane kernels' registers (the group's queries and outputs) bound the bytes in
// flight to 1.0-2.2 TB/s. kPipelined: 32- or 64-slot K/V tiles gathered into shared memory by cp.async
// for the whole block, CUDA-core arithmetic; slower than lanes at every shape measured.
enum class DecodeAttentionKernel { kAuto, kLanes, kLanesPrefetch, kPipelined, kChunked, kMma };
absl::StatusOr<DecodeAttentionKernel> ParseDecodeAttentionKernel(std::string_view name);

struct DecodeAttentionArgs {
  const bf16* q = nullptr;  // [batch, q_stride]; head h at q + b * q_stride + h * head_dim
  int64_t q_stride = 0;
  const int32_t* q_pos = nullptr;         // [batch]
  const bf16* k_cache = nullptr;          // [num_rows, num_kv_heads, head_dim]
  const bf16* v_cache = nullptr;          // [num_rows, num_kv_heads, head_dim]
  int64_t num_rows = 0;
  const int32_t* slot_offsets = nullptr;  // [batch + 1]
  const int32_t* slot_rows = nullptr;     // [total_slots]
  const int32_t* slot_pos = nullptr;      // [total_slots]
  int64_t batch = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t max_slots = 0;    // host-known bound on any sequence's slot count (sizes the split)
  int64_t total_slots = 0;  // slot_offsets[batch]; needed only with slot_attn_mass
  float scale = 0.0f;       // usually 1 / sqrt(head_dim)
  bf16* out = nullptr;      // [batch, out_stride]; head h at out + b * out_stride + h * head_dim
  int64_t out_stride = 0;
  // Optional: += probability each slot received, summed over the heads (one query per sequence). Costs
  // a score buffer in the workspace and one more small kernel.
  float* slot_attn_mass = nullptr;  // [total_slots] or null
  // Scratch for the split partials (and the scores when slot_attn_mass is set); see
  // DecodeAttentionWorkspaceBytes. The launcher lowers the split count to what fits.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  int num_splits = 0;  // 0 = choose from the SM count and max_slots; > 0 forces (tests)
  DecodeAttentionKernel kernel = DecodeAttentionKernel::kAuto;
};
// Workspace bytes for `max_splits` chunks per sequence; total_slots only matters with slot_attn_mass.
size_t DecodeAttentionWorkspaceBytes(int64_t batch, int64_t num_heads, int64_t head_dim, int max_splits,
                                     int64_t total_slots_with_mass);
absl::Status DecodeAttention(const DecodeAttentionArgs& args, cudaStream_t stream);

// Prefill attention: the queries of each sequence's chunk (their K/V already written and appended to the
// slot table) over all the sequence's slots, causal by position, flash-attention style: 64-row query
// tiles (the GQA group's heads packed as rows, so each K/V tile is loaded once per KV head) stream 64-slot
// K/V tiles through shared memory with an online softmax, tensor-core products (bf16, f32
// accumulate); no [queries, slots] matrix ever exists in memory. K/V tiles whose slots are all later than
// every query of the tile are skipped. Supported head_dim: 64, 128.
// kMma (kAuto): flash-attention-2 style, scores / probabilities / output in mma.sync register fragments,
// the next K/V tile arriving by cp.async while the current one is multiplied, each block stopping at its
// last visible slot. kWmma: WMMA products with scores, probabilities and output staged in shared memory,
// one tile at a time. The two round and sum in the same order, so their outputs are bit-identical (the
// kernel test checks it); kMma is the faster one.
enum class PrefillAttentionKernel { kAuto, kWmma, kMma };
absl::StatusOr<PrefillAttentionKernel> ParsePrefillAttentionKernel(std::string_view name);

struct PrefillAttentionArgs {
  const bf16* q = nullptr;  // [total_q, q_stride]; head h of query i at q + i * q_stride + h * head_dim
  int64_t q_stride = 0;
  const int32_t* q_pos = nullptr;         // [total_q]
  const int32_t* q_offsets = nullptr;     // [num_seqs + 1]: sequence b owns query rows [q_offsets[b], q_offsets[b+1])
  const bf16* k_cache = nullptr;          // [num_rows, num_kv_heads, head_dim]
  const bf16* v_cache = nullptr;          // [num_rows, num_kv_heads, head_dim]
  int64_t num_rows = 0;
  const int32_t* slot_offsets = nullptr;  // [num_seqs + 1]
  const int32_t* slot_rows = nullptr;     // [total_slots]
  const int32_t* slot_pos = nullptr;      // [total_slots]
  int64_t num_seqs = 0, max_q = 0;        // max_q: host-known bound on any sequence's query count
  int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  float scale = 0.0f;
  bf16* out = nullptr;  // [total_q, out_stride]; head h of query i at out + i * out_stride + h * head_dim
  int64_t out_stride = 0;
  PrefillAttentionKernel kernel = PrefillAttentionKernel::kAuto;
};
absl::Status PrefillAttention(const PrefillAttentionArgs& args, cudaStream_t stream);

// Per-row sampling parameters as the kernel reads them (device memory). temperature <= 0 = greedy.
struct GpuSamplingParams {
  float temperature = 0.0f;
  int32_t top_k = 0;   // 0 (or >= vocab) = no limit
  float top_p = 1.0f;  // (0, 1]; 1 = no limit
  uint32_t reserved = 0;
  uint64_t seed = 0;   // the draw is a pure function of (logits, params, seed)
};

// One token per row of logits, one thread block per row; the exact algorithm:
//  1. Greedy (temperature <= 0, or top_k == 1): the argmax, ties to the lowest id.
//  2. Otherwise every token gets a 64-bit sort key (order-preserving bits of its logit, then the
//     complement of its id), so keys order tokens exactly as the CPU sampler sorts them (logit
//     descending, id ascending) with no ties. The top-k cut is the k-th largest key, found by an 8-pass
//     radix select (256-bin histograms of integer counts).
//  3. p_i = exp((logit_i - max) / temperature) over the kept tokens; total = their sum.
//  4. Top-p (when < 1): the cut is the key c such that the mass of keys above c is < top_p * total and
//     reaching c is >= top_p * total (the CPU's "smallest prefix whose mass reaches top_p"), found by the
//     same radix select on masses converted to 2^-40 fixed point (integer atomics, so deterministic).
//  5. Draw u = uniform[0, 1) from splitmix64(seed) times the kept mass; walk the kept tokens in id order
//     (each thread owns a contiguous id range; a block scan of per-thread sums picks the range) and
//     return the first token whose cumulative mass exceeds u (the argmax if rounding leaves none).
// Every reduction has a fixed order, so the same inputs and seed give the same token on every run.
struct SampleArgs {
  const float* logits = nullptr;  // [batch, logits_stride], first vocab columns
  int64_t logits_stride = 0;
  int64_t batch = 0, vocab = 0;
  const GpuSamplingParams* params = nullptr;  // [batch]
  int32_t* out_tokens = nullptr;              // [batch]
};
absl::Status Sample(const SampleArgs& args, cudaStream_t stream);

// Fills out[i] with a uniform value in [low, high] from a hash of (seed, i): synthetic weights for
// benchmarks at real model sizes without weight files. low == high gives a constant.
struct FillUniformArgs {
  bf16* out = nullptr;  // [n]
  int64_t n = 0;
  float low = 0.0f, high = 0.0f;
  uint64_t seed = 0;
};
absl::Status FillUniform(const FillUniformArgs& args, cudaStream_t stream);

}  // namespace adore::kernels
