// The CUDA engine: the Llama-family forward pass in bf16 (cuBLAS products, kernels/cuda ops) over a batch
// of sequences mixing prefill chunks and decode tokens, each reading and writing its KV through a slot
// table into one preallocated GPU pool. Same contract as CpuEngine, plus sampling on the GPU.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <tuple>
#include <utility>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/model_weights.h"
#include "common/synthetic_model.h"  // the shapes benchmarked with synthetic weights
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/ops.h"
#include "worker/engine.h"
#include "worker/forward_plan.h"
#include "worker/cuda/cuda_kv_pool.h"
#include "worker/cuda/device_adore.h"
#include "worker/comm/communicator.h"
#include "worker/cuda/cuda_weights.h"
#include "worker/sampler.h"

namespace adore {

inline constexpr int64_t kCudaMaxPolicyChunk = 64;  // CudaEngineOptions::policy_chunk's upper bound
// The per-sequence KV budget the chunk path's slot bounds are sized for (a call of max_batch chunks at
// larger budgets fails RESOURCE_EXHAUSTED).
inline constexpr int64_t kCudaChunkBudget = 1024;

// Every buffer a forward call needs is allocated once from these bounds; a call past one fails with
// RESOURCE_EXHAUSTED instead of allocating (so the decode path never calls cudaMalloc).
struct CudaEngineOptions {
  int64_t max_tokens = 2048;     // tokens per Forward call (prefill chunks + decode tokens)
  int64_t max_batch = 128;       // items (sequences) per Forward call
  int64_t max_logit_rows = 256;  // logit rows per Forward call (one per item, or per token with all_logits)
  int64_t max_slots = 0;         // slot-table entries per call, summed over items; 0 = 2 * kv_rows + max_tokens
  int64_t max_mass_slots = 1 << 20;  // slots of the items with a release policy per call (attention mass)
  // Decode calls (one token per item, no prefill and no rebuild) replay captured CUDA graphs: without
  // policies one per (batch bucket, slot bound bucket); with policies (attention mass and features wanted)
  // one per exact shape (batch, slot bounds, observed slots, feature layers), which repeats once every
  // table is at its budget. The first call of a shape runs eagerly.
  bool cuda_graphs = true;
  // Which decode attention kernel runs (both compute the same; see kernels/cuda/ops.h). A/B benchmarks.
  kernels::DecodeAttentionKernel decode_attention = kernels::DecodeAttentionKernel::kAuto;
  kernels::PrefillAttentionKernel prefill_attention = kernels::PrefillAttentionKernel::kAuto;
  // KV pool size in rows (tokens over all sequences). 0: kv_bytes / bytes per row, or when that is 0 too,
  // kv_memory_fraction of the device memory still free after weights and workspaces.
  int64_t kv_rows = 0;
  int64_t kv_bytes = 0;
  double kv_memory_fraction = 0.9;
  int device = 0;  // CUDA device ordinal
  // Tensor parallelism (Megatron, see CudaWeights): this engine is rank tp_rank of tp_size and `comm` (not
  // owned; NCCL on this engine's device, world size tp_size) carries the two all-reduces per layer (float32
  // residual updates) and the all-reduce of the policies' attention masses. Every rank must be handed the
  // same Forward calls in the same order; each computes the full logits (the LM head is replicated).
  int tp_rank = 0;
  int tp_size = 1;
  comm::Communicator* comm = nullptr;
  // ADORE on the GPU: with a controller (not owned; must outlive the engine), MakePolicy returns adore
  // policies whose controller runs on this GPU (DeviceAdorePolicy) for up to `adore_lanes` sequences at a
  // time (controller state: adore_lanes x max_context x ~200 bytes, taken before the KV pool is sized).
  const AdoreController* adore_controller = nullptr;
  int64_t adore_lanes = 256;
  // Prompt tokens an item under a release policy may bring per call (max_policy_tokens_per_item), 1 to
  // kMaxPolicyChunk. Above 1 a chunk's tokens run as decode queries of their sequence, each over its own
  // copy of the slot table (causal by position), so the attention mass of every query reaches the policy.
  int64_t policy_chunk = 1;
  // Record CallTimings for every call (the controller's GPU time through CUDA events): benchmarks.
  bool time_calls = false;
};

// Where one forward call's time went, with CudaEngineOptions::time_calls (else all zero).
struct CallTimings {
  double plan_ms = 0;        // host, GPU idle: the release plans (policies' PlanStep), their checks and
                             // application to the slot tables (PlanForward), and the device plans' return
  double stage_ms = 0;       // host, GPU idle: the call's index arrays and every item's slot table staged
                             // for upload (KV management together with plan_ms)
  double controller_ms = 0;  // GPU: the device adore controller's kernels (projection, GRU step, plans)
};


// Turns on the chunk path for a requested prompt chunk (PolicyPrefillChunkOption of a LoadRequest's or a
// server's policy_prefill_chunk; <= 1: off): policy_chunk = min(chunk, kCudaMaxPolicyChunk). The engine then
// sizes its per-call bounds for max_batch chunks at a kCudaChunkBudget-slot budget.
void SetCudaPolicyChunk(int64_t chunk, CudaEngineOptions* options);

class CudaEngine final : public Engine {
 public:
  // Copies the weights to the GPU as bf16 (the caller may drop its f32 copy afterwards).
  // INVALID_ARGUMENT for an inconsistent config or a head_dim other than 64 / 128; FAILED_PRECONDITION
  // without a usable GPU; RESOURCE_EXHAUSTED when weights, workspaces and the KV pool do not fit.
  static absl::StatusOr<std::unique_ptr<CudaEngine>> Create(const ModelWeights& weights,
                                                            const CudaEngineOptions& options = {});
  // Same, with random bf16 weights of `config`'s shape generated on the GPU (benchmarks at real model
  // sizes without weight files; see CudaWeights::Synthetic). Deterministic in `seed`.
  static absl::StatusOr<std::unique_ptr<CudaEngine>> CreateSynthetic(const ModelConfig& config, uint64_t seed,
                                                                     const CudaEngineOptions& options = {});
  ~CudaEngine();
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  // As CpuEngine::Forward: runs every item's tokens in one batch, appends their K/V to each sequence and
  // writes logits [rows, vocab] (one row per item, or one per token with all_logits, in item order).
  // Items of one token go through the split-K decode kernel, longer ones through the prefill kernel.
  // Items with a release policy take up to CudaEngineOptions::policy_chunk new tokens per call: the step
  // follows the policy's plan (worker/forward_plan.h); rebuilt tokens run as a prefill group at their
  // positions; each new token runs as a decode query (the decode kernel masks slots later than the query)
  // whose launch sums the attention each slot received over heads and layers, and the policy's feature
  // layers' normed inputs are copied out, both handed to the policy (ObserveStep) before the call returns.
  // RESOURCE_EXHAUSTED when the pool is full or a CudaEngineOptions bound is passed, INVALID_ARGUMENT
  // for a bad token id or an empty item, OUT_OF_RANGE past the model's context: nothing changes then.
  // INTERNAL for a CUDA failure (the sequences may then hold rows of this call: release them).
  absl::Status Forward(std::span<ForwardItem> items, std::vector<float>* logits) override;

  // Forward, then one token per item sampled on the GPU from its last logit row (only the token ids
  // cross to the host). params[i] applies to items[i]; the draw's seed is params.seed mixed with the
  // sequence's position, so a seeded generation repeats exactly. INVALID_ARGUMENT for bad params, a
  // params/items size mismatch or an item with all_logits.
  absl::Status ForwardSample(std::span<ForwardItem> items, std::span<const SamplingParams> params,
                             std::vector<int32_t>* tokens) override;
  bool samples_on_device() const override { return true; }

  // Adore with this engine's controller (CudaEngineOptions::adore_controller) runs on the GPU
  // (DeviceAdorePolicy); every other policy is the host one (MakeReleasePolicy).
  absl::StatusOr<std::unique_ptr<ReleasePolicy>> MakePolicy(const ReleaseConfig& config) override;

  int64_t max_policy_tokens_per_item() const override { return options_.policy_chunk; }
  // Frees a sequence's rows.
  void Release(SequenceKv& seq) override { pool_->Release(seq); }

  // The weights as float32 ModelWeights (see CudaWeights::Download).
  absl::StatusOr<ModelWeights> ExportWeights() const { return weights_->Download(); }

  const ModelConfig& config() const override { return weights_->config(); }
  const char* backend() const override { return "cuda"; }
  int tp_rank() const { return options_.tp_rank; }
  int tp_size() const { return options_.tp_size; }
  CudaKvPool& pool() { return *pool_; }
  cudaStream_t stream() const { return stream_; }
  // The last call's timings (CudaEngineOptions::time_calls).
  const CallTimings& last_timings() const { return timings_; }
  // Calls so far whose slot tables went up as changed entries (the GPU kept the previous call's tables)
  // rather than whole: for tests and benchmarks.
  int64_t num_slot_table_updates() const { return num_slot_table_updates_; }
  // Calls whose layers ran as a replayed CUDA graph (CudaEngineOptions::cuda_graphs).
  int64_t graph_launches() const { return graph_launches_; }

 private:
  struct Plan;  // one call's host-side layout (defined in the .cc)
  CudaEngine() = default;
  static absl::StatusOr<std::unique_ptr<CudaEngine>> Finish(std::unique_ptr<CudaEngine> engine,
                                                           const CudaEngineOptions& options);
  absl::Status AllocateWorkspaces();
  // Waits for stream_ (through the communicator's bounded wait under tensor parallelism).
  absl::Status WaitStream();
  absl::Status SetUpDeviceAdore();  // the controller runtime and its per-call buffers
  // Validates, allocates rows, uploads the indices and runs the model; logits end in logits_ rows.
  absl::StatusOr<int64_t> RunForward(std::span<ForwardItem> items, bool sampling);
  absl::Status RunLayers(const Plan& plan);
  // RunLayers through the shape's captured graph (capturing it on the shape's second call).
  absl::Status RunDecodeGraph(const Plan& plan);
  // Downloads the step's attention masses and features and hands them to the items' policies.
  absl::Status ObservePolicies(std::span<ForwardItem> items, const PlannedForward& pf, const Plan& plan,
                               std::span<const int64_t> mass_offset, std::span<const int64_t> mass_token);
  // The GPU controller for the DeviceAdorePolicy items (the first mass-decode groups): project the new
  // tokens' features, step every token of their sequences, plan the next step and start copying the plans
  // to the host; FinishDeviceAdore hands them to the policies once the stream has synchronized.
  absl::Status RunDeviceAdore(std::span<ForwardItem> items, const PlannedForward& pf, const Plan& plan,
                              std::span<const size_t> device_items, std::span<const int64_t> mass_offset);
  void FinishDeviceAdore();

  CudaEngineOptions options_;
  std::unique_ptr<CudaWeights> weights_;
  std::unique_ptr<CudaKvPool> pool_;
  std::unique_ptr<kernels::Blas> blas_;
  cudaStream_t stream_ = nullptr;

  // Device workspaces, carved from one allocation (sizes from options_).
  void* arena_ = nullptr;
  float* residual_ = nullptr;           // [max_tokens, hidden]
  kernels::bf16* hidden_ = nullptr;     // [max_tokens, hidden] normed activations
  kernels::bf16* qkv_ = nullptr;        // [max_tokens, q_dim + 2 kv_dim]
  kernels::bf16* attn_ = nullptr;       // [max_tokens, q_dim]
  kernels::bf16* gate_up_ = nullptr;    // [max_tokens, 2 ff]
  kernels::bf16* act_ = nullptr;        // [max_tokens, ff]
  kernels::bf16* selected_ = nullptr;   // [max_logit_rows, hidden]
  float* logits_ = nullptr;             // [max_logit_rows, vocab]
  void* attn_workspace_ = nullptr;      // decode split partials
  size_t attn_workspace_bytes_ = 0;
  int32_t* indices_ = nullptr;          // per-call index arrays (layout in Plan)
  size_t indices_capacity_ = 0;         // int32 elements
  // The slot tables in indices_ after the last call, in its group order (empty: none usable). A call with
  // the same groups, whose sequences only that call's plans changed since (SequenceKv::version), uploads
  // just the changed entries (SlotTableUpdate) instead of every table.
  struct StagedTable {
    const SequenceKv* seq;
    uint64_t version;
    int64_t num_slots, at;
  };
  std::vector<StagedTable> staged_;
  int32_t* slot_updates_ = nullptr;       // [max_slot_updates_, 3] (index, row, pos)
  int32_t* host_slot_updates_ = nullptr;  // pinned mirror
  int64_t max_slot_updates_ = 0;
  int64_t num_slot_table_updates_ = 0;  // calls that sent changed entries instead of every table
  // Policy items' new tokens per call (each a decode query with mass and features): max_batch, or with
  // policy chunks min(max_batch * policy_chunk, max_tokens). Decode groups per call: max_batch + that.
  int64_t max_mass_tokens_ = 0, max_decode_groups_ = 0;
  kernels::GpuSamplingParams* sample_params_ = nullptr;  // [max_batch]
  int32_t* sampled_ = nullptr;                            // [max_batch]
  float* mass_ = nullptr;                                 // [max_mass_slots] attention mass per slot
  kernels::bf16* features_ = nullptr;                     // [kMaxFeatureLayers, max_batch, hidden]

  // Device adore (null without a controller): per-call index arrays and plan outputs (device + pinned host).
  std::shared_ptr<DeviceAdoreRuntime> adore_;
  int32_t* adore_idx_ = nullptr;
  int32_t* host_adore_idx_ = nullptr;
  int32_t* adore_out_ = nullptr;
  int32_t* host_adore_out_ = nullptr;
  float* adore_queries_ = nullptr;  // [max_batch, key_dim]
  struct PendingPlan {
    DeviceAdorePolicy* policy;
    int64_t num_steps, num_new, budget, index;  // index: the item's row in the plan outputs
  };
  std::vector<PendingPlan> pending_adore_;
  CallTimings timings_;
  cudaEvent_t adore_start_ = nullptr, adore_stop_ = nullptr;  // with time_calls
  bool adore_timed_ = false;  // the events of this call were recorded

  // A decode graph's shape: the Plan's counts and bounds its launches bake in, and the feature layers.
  using GraphKey = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, std::vector<int32_t>>;
  std::map<GraphKey, cudaGraphExec_t> graphs_;
  std::set<GraphKey> graph_shapes_seen_;
  int64_t graph_launches_ = 0;
  bool graphs_failed_ = false;

  // Pinned host mirrors, so uploads and downloads are true async copies.
  int32_t* host_indices_ = nullptr;
  kernels::GpuSamplingParams* host_sample_params_ = nullptr;
  int32_t* host_sampled_ = nullptr;
  float* host_mass_ = nullptr;
  kernels::bf16* host_features_ = nullptr;
};

}  // namespace adore
