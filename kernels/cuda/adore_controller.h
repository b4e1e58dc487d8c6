// The ADORE release controller (docs/ADORE.md, worker/adore_controller.{h,cc}) on the GPU: feature
// projection, the per-step GRU update of every token of hundreds of sequences, and the release / rebuild
// plan, all without the host. Semantics are those of AdoreSequence::AddToken / Step / PlanRelease; the
// tests (tests/cuda/adore_controller_test.cu) hold the kernels to the CPU reference. Host-only header.
//
// Conventions as in kernels/cuda/ops.h: launchers validate their arguments and return INVALID_ARGUMENT
// (launching nothing) on a bad shape or a missing pointer, INTERNAL when a launch fails; launches are
// asynchronous on `stream`; index arrays live in device memory and are never read by the launchers, so
// every bound the host must know is an explicit field.
//
// Device-side layout. Each sequence owns a contiguous range of "state rows": position p of sequence b
// lives at row state_base[b] + p, for positions that were ever added (cached or released), so a
// sequence needs as many rows as its longest length (tokens are indexed by position, never by slot). The
// per-token state is four float32 arrays indexed by row (AdoreStateArrays): key feature [key_dim], GRU
// state [state_dim], accumulated mass and latest score: (key_dim + state_dim + 2) * 4 = 200 bytes with
// the shipped controller (key_dim 32, state_dim 16), as on the CPU. Query features are used once, in
// their token's own step, so they live in a per-step buffer indexed by query row, not in the state.
//
// Per decode step for B sequences (the engine's order):
//   1. DecodeAttention with slot_attn_mass (zeroed, then += over the layers): mass per slot.
//   2. AdoreProject on the new tokens' features (attn_norm outputs at the controller's layers): key rows
//      and a fresh state (h = 0, acc = 0, score = 0) at their state rows; query rows for the step.
//   3. AdoreStep: every token 0..q of every sequence is updated and rescored (cached or not).
//   4. AdorePlanRelease before the next forward: positions to release and to rebuild per sequence.
//
// Cost per decode step (bytes per token row, key_dim 32, state_dim 16, one query per sequence):
//   AdoreStep reads the key (128 B), GRU state (64), acc (4), its slot_of_row entry (4) and, for cached
//   tokens, slot_rows / slot_pos / slot_mass of its slot (12, a gather), and writes state, acc and score
//   (72 B): about 280 B, ~1,100 FMAs (the GRU / score weights are kernel parameters, i.e. constant-bank
//   operands) plus 3 logs and 48 exps / reciprocals per token. 256 sequences x 4,096 tokens = 1M token
//   rows = ~290 MB: ~65 us of HBM bandwidth, ~35 us of FP32 FMA throughput; measured on the H200
//   (AdoreControllerCudaTest.DecodeStepCostAt256Sequences): 213 us, i.e. bound by instruction latency at
//   the 25% occupancy its 111 registers allow, not by memory.
//   AdorePlanRelease reads each scored position's score (4 B) once per radix-select pass (up to 8 passes
//   per select, usually 3-4 with distinct scores; two selects, one more per 2,048 released tokens): ~20-40
//   B per position from L2, plus the slot table once (8 B per slot); measured 50 us for 256 sequences x
//   4,096 positions (1,024 cached each, one new token).
//   AdoreProject reads each new token's features (feature_dim * 2 B) and, per block of 8 tokens, both
//   projection matrices (2 * 32 * 1728 * 4 = 442 KB, from L2): ~14 MB of L2 traffic for 256 tokens;
//   measured 43 us for 256 tokens (only 32 blocks: splitting the 64 outputs over blocks would fill the GPU).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"

namespace adore::kernels {

// The controller's weights and constants on the host, as AdoreController holds them (PyTorch layout,
// row-major): the caller fills the spans, which need only live through DeviceAdoreWeights::Upload. With
// a public accessor on AdoreController (see HostAdoreWeightsFrom below) this is a few assignments.
struct HostAdoreWeights {
  int64_t feature_dim = 0;  // config().feature_dim(): num feature layers * hidden_size
  int64_t key_dim = 0;      // supported: 16, 32, 64
  int64_t state_dim = 0;    // supported: 8, 16, 32
  int64_t num_inputs = 5;   // must be 5 (format version 1)
  float mass_eps = 1e-5f, mass_coef = 0.25f, age_coef = 0.125f;
  std::span<const float> key_w, key_b;      // [key_dim, feature_dim], [key_dim]
  std::span<const float> query_w, query_b;  // [key_dim, feature_dim], [key_dim]
  std::span<const float> gru_w_ih;          // [3 * state_dim, 5], gates r, z, n
  std::span<const float> gru_w_hh;          // [3 * state_dim, state_dim]
  std::span<const float> gru_b_ih, gru_b_hh;  // [3 * state_dim] each
  std::span<const float> score_w;           // [state_dim + 5] over [h, x]
  float score_b = 0.0f;
};

// Fills HostAdoreWeights from a controller that exposes its weights through
//   struct AdoreControllerWeights { std::span<const float> key_w, key_b, query_w, query_b, gru_w_ih,
//                                   gru_w_hh, gru_b_ih, gru_b_hh, score_w; float score_b; };
//   AdoreControllerWeights AdoreController::weights() const;
// (a template so this header compiles before that accessor exists; instantiate it with AdoreController).
template <typename Controller>
HostAdoreWeights HostAdoreWeightsFrom(const Controller& c) {
  const auto& cfg = c.config();
  const auto w = c.weights();
  HostAdoreWeights h;
  h.feature_dim = cfg.feature_dim();
  h.key_dim = cfg.key_dim;
  h.state_dim = cfg.state_dim;
  h.num_inputs = cfg.num_inputs;
  h.mass_eps = cfg.mass_eps;
  h.mass_coef = cfg.mass_coef;
  h.age_coef = cfg.age_coef;
  h.key_w = w.key_w;
  h.key_b = w.key_b;
  h.query_w = w.query_w;
  h.query_b = w.query_b;
  h.gru_w_ih = w.gru_w_ih;
  h.gru_w_hh = w.gru_w_hh;
  h.gru_b_ih = w.gru_b_ih;
  h.gru_b_hh = w.gru_b_hh;
  h.score_w = w.score_w;
  h.score_b = w.score_b;
  return h;
}

// The controller on the device, uploaded once per worker and shared by every launch (read-only).
// Device memory: the two projections as one float32 matrix [2 * key_dim, padded feature_dim] (key rows,
// then query rows; each row zero-padded to a multiple of 4 floats for 16-byte loads) and their biases
// [2 * key_dim]. The GRU and score weights (~4.5 KB with state_dim 16) stay on the host and travel as
// kernel parameters of every AdoreStep launch, so the kernel reads them from the constant cache.
class DeviceAdoreWeights {
 public:
  DeviceAdoreWeights() = default;
  ~DeviceAdoreWeights();
  DeviceAdoreWeights(DeviceAdoreWeights&& other) noexcept;
  DeviceAdoreWeights& operator=(DeviceAdoreWeights&& other) noexcept;
  DeviceAdoreWeights(const DeviceAdoreWeights&) = delete;
  DeviceAdoreWeights& operator=(const DeviceAdoreWeights&) = delete;

  // Checks every shape (INVALID_ARGUMENT naming the field, or an unsupported key_dim / state_dim) and
  // copies the weights to the current device (synchronously). Replaces a previous upload.
  absl::Status Upload(const HostAdoreWeights& w);

  bool empty() const { return proj_w_ == nullptr; }
  int64_t feature_dim() const { return feature_dim_; }
  int64_t padded_feature_dim() const { return padded_feature_dim_; }
  int64_t key_dim() const { return key_dim_; }
  int64_t state_dim() const { return state_dim_; }
  float mass_eps() const { return mass_eps_; }
  float mass_coef() const { return mass_coef_; }
  float age_coef() const { return age_coef_; }
  const float* proj_w() const { return proj_w_; }  // device [2 * key_dim, padded_feature_dim]
  const float* proj_b() const { return proj_b_; }  // device [2 * key_dim]
  // Host copies of the small weights, PyTorch layout: w_ih [3sd, 5], w_hh [3sd, sd], b_ih, b_hh, score_w.
  const std::vector<float>& gru_w_ih() const { return gru_w_ih_; }
  const std::vector<float>& gru_w_hh() const { return gru_w_hh_; }
  const std::vector<float>& gru_b_ih() const { return gru_b_ih_; }
  const std::vector<float>& gru_b_hh() const { return gru_b_hh_; }
  const std::vector<float>& score_w() const { return score_w_; }
  float score_b() const { return score_b_; }

 private:
  void Free();
  float* proj_w_ = nullptr;  // one allocation: proj_w then proj_b
  float* proj_b_ = nullptr;
  int64_t feature_dim_ = 0, padded_feature_dim_ = 0, key_dim_ = 0, state_dim_ = 0;
  float mass_eps_ = 0.0f, mass_coef_ = 0.0f, age_coef_ = 0.0f;
  std::vector<float> gru_w_ih_, gru_w_hh_, gru_b_ih_, gru_b_hh_, score_w_;
  float score_b_ = 0.0f;
};

// The per-token controller state, indexed by state row (see the layout above). Contents of rows never
// registered by AdoreProject are undefined and never read.
struct AdoreStateArrays {
  float* keys = nullptr;    // [num_rows, key_dim]   key feature k_i
  float* states = nullptr;  // [num_rows, state_dim] GRU state h_i
  float* acc = nullptr;     // [num_rows]            accumulated mass a
  float* scores = nullptr;  // [num_rows]            latest score s_i
  int64_t num_rows = 0;
};

// AdoreSequence::AddToken for n new tokens at once: key = Wk u + bk into the token's state row (with
// h = 0, acc = 0, score = 0 there), query = Wq u + bq into a query row for AdoreStep. u = the token's
// features [feature_dim] = its attn_norm outputs at the controller's feature layers, concatenated in the
// order of config().feature_layers. Exactly one of features_bf16 / features_f32 is set. The bf16 form is
// what the CUDA engine has (its attn_norm output is bf16): products are exact float32 products of the bf16
// values, summed in float32 (a different order than the CPU's sequential sum: ~1e-6 relative); the CPU
// engine projects float32 attn_norm outputs, so CPU and GPU engines differ by that rounding (bf16 keeps 8
// mantissa bits: ~4e-3 relative per feature, averaging out over 1728 features). Rebuilt tokens are not
// registered again (give them key_row -1, or leave them out).
// Cost: one block per 8 tokens, each reads both projection matrices from L2 (442 KB for the shipped
// controller) and its tokens' features once; dynamic shared memory 8 * padded_feature_dim * (2 or 4) B.
// Limits: padded_feature_dim <= 12288 (bf16) / 6144 (f32).
struct AdoreProjectArgs {
  const DeviceAdoreWeights* weights = nullptr;
  const __nv_bfloat16* features_bf16 = nullptr;  // [n, feature_stride], first feature_dim columns, or
  const float* features_f32 = nullptr;           // [n, feature_stride]
  int64_t feature_stride = 0;
  int64_t n = 0;
  const int32_t* key_rows = nullptr;  // [n] state row of token i; < 0 (or >= num_rows) skips its key/state
  AdoreStateArrays state;             // keys, states, acc and scores are written at key_rows
  float* queries = nullptr;           // [num_query_rows, key_dim]
  int64_t num_query_rows = 0;
  const int32_t* query_rows = nullptr;  // [n] query row of token i (< 0 or >= num_query_rows: none);
                                        // null = row i
};
absl::Status AdoreProject(const AdoreProjectArgs& args, cudaStream_t stream);

// AdoreSequence::Step for the queries of a batch of sequences. Sequence b steps queries j = 0..nq_b-1
// (nq_b = q_offsets[b + 1] - q_offsets[b]; 0 = the sequence is left alone) at positions q_first[b] + j, in
// that order, each exactly as one CPU Step(q_first[b] + j, mass, cached, mass_scale):
//   cached_i = some slot s of the sequence has slot_rows[s] >= 0 and slot_pos[s] == i (and i <= query);
//   mass_i   = slot_mass[j * mass_stride + s] for that slot, 0 when not cached;
//   a_i = mass_i * mass_scale; acc_i += a_i; x_i = [mass_coef * log(a_i + eps), cached_i, age_coef *
//   log1p(query - i), <q_j, k_i> / sqrt(key_dim), mass_coef * log(acc_i + eps)]; h_i = GRUCell(x_i, h_i);
//   s_i = score_w . [h_i, x_i] + score_b,
// for every position i <= query (cached or released). One slot table serves all of a sequence's queries
// (the cache during the forward, the step's new tokens included); a token takes part in the queries at
// or after its own position. Decode: nq_b = 1, q_first[b] = the new token's position, slot_mass = the
// DecodeAttention slot_attn_mass (mass_stride unused). A prefill chunk: nq_b = chunk length, with
// per-query slot masses (the mass stride is the distance between two queries' rows).
// Positions of the occupied slots of one sequence must be distinct (the engine's tables are).
// A query position must follow the sequence's previous step (q_first[b] = its last query + 1, normally).
// Two kernels: a scatter of the slot tables into slot_of_row (row of position p -> slot), then one thread
// per token row that loops over the sequence's queries with its state in registers. slot_of_row needs no
// initialisation: an entry is trusted only when it names a slot of the sequence's current table that is
// occupied and holds that position, so stale entries (older tables, other sequences) are harmless.
// Supported (key_dim, state_dim): key_dim in {16, 32, 64} x state_dim in {8, 16, 32}.
struct AdoreStepArgs {
  const DeviceAdoreWeights* weights = nullptr;
  AdoreStateArrays state;                // rows 0..q_last of each sequence are read and updated
  const float* queries = nullptr;        // [*, key_dim]: query j of sequence b at row q_offsets[b] + j
  int64_t num_seqs = 0;
  const int32_t* state_base = nullptr;   // [num_seqs] state row of position 0
  const int32_t* q_first = nullptr;      // [num_seqs] position of the first query
  const int32_t* q_offsets = nullptr;    // [num_seqs + 1]
  int64_t max_positions = 0;             // host bound on q_first[b] + nq_b (positions updated) for any b
  const int32_t* slot_offsets = nullptr;  // [num_seqs + 1] CSR slot tables, as DecodeAttentionArgs
  const int32_t* slot_rows = nullptr;     // [total_slots], < 0 = empty slot
  const int32_t* slot_pos = nullptr;      // [total_slots]
  int64_t max_slots = 0;                  // host bound on any sequence's slot count
  const float* slot_mass = nullptr;       // [*, mass_stride]: mass of query j for slot s at j * mass_stride + s
  int64_t mass_stride = 0;
  float mass_scale = 1.0f;                // 1 / (num_layers * num_heads)
  int32_t* slot_of_row = nullptr;         // scratch [state.num_rows]; any contents
  // Optional, for tables that are not one CSR run (a prefill chunk fed as decode queries, each with its own
  // copy of the sequence's table, the masses laid out like the tables): sequence b's table is
  // [slot_offsets[b], table_ends[b]), and query j's mass of the table's k-th slot is at
  // slot_mass[query_mass[q_offsets[b] + j] + k]. Null: slot_offsets[b + 1] ends the table, and the masses
  // follow mass_stride.
  const int32_t* table_ends = nullptr;    // [num_seqs]
  const int32_t* query_mass = nullptr;    // [q_offsets[num_seqs]]
};
absl::Status AdoreStep(const AdoreStepArgs& args, cudaStream_t stream);

// AdoreSequence::PlanRelease(cached, budget[b], num_new[b], max_rebuild, num_sink, num_recent) for every
// sequence, one thread block each; cached = the positions of the occupied slots of the sequence's table.
// Per sequence b with n = num_scored[b] scored positions (rows state_base[b] .. + n - 1 of scores):
//  * n + num_new <= budget: empty plan (status 0).
//  * protected = [0, num_sink) u [n - num_recent, n); free = budget - num_new - |protected|; free < 0:
//    kAdorePlanBudgetTooSmall (PlanRelease's INVALID_ARGUMENT), empty plan. An occupied slot with a
//    position outside [0, n): kAdorePlanUnscoredSlot (AdorePolicy's "never scored"), empty plan.
//  * Every unprotected position gets the 64-bit key (order-preserving bits of its score, -0 as +0) << 32
//    | position: keys order positions exactly as PlanRelease's comparator (higher score first, ties to the
//    later position) with no two equal. Candidates = the cached unprotected positions and the top
//    max_rebuild released unprotected ones; the best `free` candidates are kept. Both "top k" cuts are
//    radix selects over the keys (8-bit digits from the top, 256-bin shared-memory histograms, block
//    scan; it stops as soon as the cut's bin is taken whole, usually after 3-4 of the 8 passes with
//    distinct scores): the k-th largest key, found without sorting anything.
//  * release = cached candidates below the cut, lowest score first (ascending key); rebuild = the
//    released protected positions in ascending position, then the released candidates kept, highest score
//    first. Sorted by a bitonic sort of up to 2,048 keys in shared memory; longer lists are cut into
//    chunks of 2,048 by further radix selects (a release list is at most the cached count, <= budget).
// Outputs: num_release[b] / num_rebuild[b] = the full list lengths; release[b * release_capacity + k] for
// k < min(num_release[b], release_capacity) (a short capacity keeps the lowest-scored ones, which is what
// the engine takes first), likewise rebuild (capacity max_rebuild + num_sink + num_recent suffices).
// Scores must be finite (as on the CPU, where NaN breaks the sort's ordering).
// Cost: per radix pass one read of the n scores (L2) and the cached bitmap (shared memory); with the
// budget's few releases per decode step, ~2 selects x 3-4 passes. Dynamic shared memory: a bitmap of
// max_positions bits.
enum AdorePlanStatus : int32_t {
  kAdorePlanOk = 0,
  kAdorePlanBudgetTooSmall = 1,  // the protected positions and the new tokens do not fit in the budget
  kAdorePlanUnscoredSlot = 2,    // an occupied slot holds a position outside [0, num_scored)
  kAdorePlanTooLong = 3,         // num_scored > max_positions (the launch's shared-memory bound)
};
struct AdorePlanArgs {
  const float* scores = nullptr;          // AdoreStateArrays::scores
  int64_t num_rows = 0;
  int64_t num_seqs = 0;
  const int32_t* state_base = nullptr;    // [num_seqs]
  const int32_t* num_scored = nullptr;    // [num_seqs] n: positions 0..n-1 scored (AdoreSequence::num_steps)
  const int32_t* budget = nullptr;        // [num_seqs] slots the sequence may hold (m)
  const int32_t* num_new = nullptr;       // [num_seqs] tokens the coming forward appends
  int64_t max_positions = 0;              // host bound on num_scored[b]
  int64_t max_rebuild = 0, num_sink = 4, num_recent = 16;
  const int32_t* slot_offsets = nullptr;  // [num_seqs + 1] the current slot tables (cached flags)
  const int32_t* table_ends = nullptr;    // optional [num_seqs]: table b ends here, not at slot_offsets[b + 1]
  const int32_t* slot_rows = nullptr;
  const int32_t* slot_pos = nullptr;
  int32_t* release = nullptr;             // [num_seqs, release_capacity] positions
  int64_t release_capacity = 0;
  int32_t* rebuild = nullptr;             // [num_seqs, rebuild_capacity] positions
  int64_t rebuild_capacity = 0;
  int32_t* num_release = nullptr;         // [num_seqs]
  int32_t* num_rebuild = nullptr;         // [num_seqs]
  int32_t* status = nullptr;              // [num_seqs] AdorePlanStatus
};
absl::Status AdorePlanRelease(const AdorePlanArgs& args, cudaStream_t stream);

}  // namespace adore::kernels
