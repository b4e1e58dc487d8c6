// The engine's op set, CPU float32 versions: the CPU backend's implementation and the reference every
// CUDA kernel (kernels/cuda/<op>.cu) is tested against. Math only: no I/O, no policy.
#pragma once

#include <cstdint>

namespace adore::kernels {

// out[i, :] = table[ids[i], :]. Returns false when an id is outside [0, vocab).
bool EmbeddingRef(const float* table,  // [vocab, dim]
                  int64_t vocab, int64_t dim,
                  const int32_t* ids,  // [n]
                  int64_t n,
                  float* out);         // [n, dim]

// out = x / rms(x) * weight, per row.
void RmsNormRef(const float* x,       // [n, dim]
                const float* weight,  // [dim]
                int64_t n, int64_t dim, float eps,
                float* out);          // [n, dim]

// Fused residual add + RMSNorm: residual += x; out = rmsnorm(residual) * weight. x may be null (no add).
void AddRmsNormRef(float* residual,      // [n, dim], updated in place
                   const float* x,       // [n, dim] or null
                   const float* weight,  // [dim]
                   int64_t n, int64_t dim, float eps,
                   float* out);          // [n, dim]

// y = x * w^T (+ y when accumulate): a Linear layer with PyTorch's [out, in] weight layout. BLAS sgemm.
void MatMulRef(const float* x,  // [n, in]
               const float* w,  // [out, in]
               int64_t n, int64_t in, int64_t out,
               float* y,        // [n, out]
               bool accumulate = false);

// Rotary embedding on interleaved pairs (x[2j], x[2j+1]) of each head, in place: the GGUF / llama.cpp
// layout of Llama Q/K weights. Angle = pos * theta^(-2j / rot_dim) for pair j < rot_dim / 2.
void RopeRef(float* x,                 // [n, num_heads, head_dim]
             const int32_t* positions,  // [n]
             int64_t n, int64_t num_heads, int64_t head_dim, int64_t rot_dim, float theta);

// out = silu(gate) * up, elementwise.
void SwiGluRef(const float* gate,  // [n, width]
               const float* up,    // [n, width]
               int64_t n, int64_t width,
               float* out);        // [n, width]

// Attention of one sequence's queries over its KV slots, read through a slot table; GQA (query head h reads
// KV head h / (num_heads / num_kv_heads)); causal by position (slot s is visible to query i iff
// slot_pos[s] <= q_pos[i]; rows of -1 are empty slots). Covers prefill (a chunk whose own K/V were
// already written to slots) and decode (num_q = 1).
struct AttentionArgs {
  const float* q = nullptr;         // [num_q, num_heads, head_dim]
  const int32_t* q_pos = nullptr;   // [num_q]
  const float* k_cache = nullptr;   // [num_rows, num_kv_heads, head_dim]
  const float* v_cache = nullptr;   // [num_rows, num_kv_heads, head_dim]
  const int32_t* slot_rows = nullptr;  // [num_slots] physical row, -1 = empty
  const int32_t* slot_pos = nullptr;   // [num_slots] token position held by the slot
  int64_t num_q = 0, num_slots = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  float scale = 0.0f;               // usually 1/sqrt(head_dim)
  float* out = nullptr;             // [num_q, num_heads, head_dim]
  // Optional: += attention probability each slot received, summed over heads and queries (the signal
  // heavy-hitter and ADORE policies consume).
  float* slot_attn_mass = nullptr;  // [num_slots] or null
  float* scratch = nullptr;         // [num_slots] floats of workspace
};
void AttentionRef(const AttentionArgs& args);

}  // namespace adore::kernels
