// CudaEngine: the bf16 Llama forward pass on one GPU over a batch of sequences with slot tables.
#include "worker/cuda/cuda_engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <tuple>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "kernels/cuda/cuda_status.h"

namespace adore {

namespace k = kernels;

namespace {

constexpr int64_t kMaxGridRows = 65535;  // row counts that become a grid's y dimension
constexpr int64_t kMaxFeatureLayers = 4;        // distinct layers whose features the policies of one call want
constexpr size_t kMaxGraphs = 256;               // captured decode shapes kept per engine
constexpr size_t kMaxSeenGraphShapes = 4096;     // shapes seen once (not captured yet) remembered
constexpr int kDecodeSplitsPerItem = 16;
// Device adore: protected positions (sinks + recent) a device policy may have, and the plan outputs'
// capacity per sequence (rebuild list <= max_rebuild + protected; release <= that + the new token).
constexpr int64_t kAdoreMaxProtected = 64;
constexpr int64_t kAdorePlanCapacity = kMaxRebuild + kAdoreMaxProtected + 1;
// adore_idx_: kAdoreIndexArrays int32 arrays of max_batch + 1 entries (per sequence), then two of
// max_mass_tokens_ (per new token: key rows, mass offsets).
constexpr int64_t kAdoreIndexArrays = 8;
constexpr int64_t kMaxPolicyChunk = kCudaMaxPolicyChunk;  // the plan outputs hold a chunk's releases

size_t Align256(size_t b) { return (b + 255) / 256 * 256; }
int64_t AlignInts(int64_t n) { return (n + 15) / 16 * 16; }  // 64-byte aligned int32 regions

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

absl::Status CheckTensorParallel(const CudaEngineOptions& o) {
  if (o.tp_size < 1 || o.tp_rank < 0 || o.tp_rank >= o.tp_size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("CUDA engine options: tp_rank %d is not in [0, tp_size %d)", o.tp_rank, o.tp_size));
  }
  if (o.tp_size > 1 && (o.comm == nullptr || o.comm->world_size() != o.tp_size || o.comm->rank() != o.tp_rank)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CUDA engine options: tp_size %d needs a communicator of that world size with rank %d", o.tp_size,
        o.tp_rank));
  }
  return absl::OkStatus();
}

absl::Status CheckConfig(const ModelConfig& c) {
  ADORE_RETURN_IF_ERROR(c.Validate());
  if (c.head_dim != 64 && c.head_dim != 128) {
    return absl::InvalidArgumentError(
        absl::StrFormat("CUDA engine: head_dim %d is not supported (64 or 128)", c.head_dim));
  }
  return absl::OkStatus();
}

}  // namespace

// Where one call's index arrays live in indices_ (device) / host_indices_ (pinned), and the counts the
// launchers need. Tokens are laid out as: the new token of each decode item with a policy (attention mass
// wanted), then the other decode items' tokens, then the prefill groups' tokens (prefill items, and the
// rebuilt tokens of policy items, which run as prefill groups of their own).
struct CudaEngine::Plan {
  int64_t n = 0, num_mass_decode = 0, num_decode = 0, num_prefill = 0, num_logit_rows = 0;
  int64_t max_decode_slots = 0, max_mass_decode_slots = 0, max_prefill_q = 0, mass_slots = 0;
  const int32_t* tokens = nullptr;        // [n]
  const int32_t* positions = nullptr;     // [n]
  const int32_t* rows = nullptr;          // [n] pool row of each new token
  const int32_t* logit_rows = nullptr;    // [num_logit_rows] token index of each logit row, item order
  const int32_t* dec_slot_off = nullptr;  // [num_decode + 1]
  const int32_t* pre_q_off = nullptr;     // [num_prefill + 1] relative to the first prefill token
  const int32_t* pre_slot_off = nullptr;  // [num_prefill + 1]
  const int32_t* slot_rows = nullptr;     // [total_slots] decode tables, then prefill tables
  const int32_t* slot_pos = nullptr;      // [total_slots]
  std::vector<int32_t> feature_layers;    // layers whose normed input is copied for the mass decode tokens
};

CudaEngine::~CudaEngine() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  blas_.reset();
  if (arena_ != nullptr) cudaFree(arena_);
  if (indices_ != nullptr) cudaFree(indices_);
  if (host_indices_ != nullptr) cudaFreeHost(host_indices_);
  if (slot_updates_ != nullptr) cudaFree(slot_updates_);
  if (host_slot_updates_ != nullptr) cudaFreeHost(host_slot_updates_);
  if (host_sample_params_ != nullptr) cudaFreeHost(host_sample_params_);
  if (host_sampled_ != nullptr) cudaFreeHost(host_sampled_);
  if (host_mass_ != nullptr) cudaFreeHost(host_mass_);
  if (host_features_ != nullptr) cudaFreeHost(host_features_);
  if (adore_idx_ != nullptr) cudaFree(adore_idx_);
  if (adore_out_ != nullptr) cudaFree(adore_out_);
  if (adore_queries_ != nullptr) cudaFree(adore_queries_);
  if (host_adore_idx_ != nullptr) cudaFreeHost(host_adore_idx_);
  if (host_adore_out_ != nullptr) cudaFreeHost(host_adore_out_);
  adore_.reset();
  pool_.reset();
  weights_.reset();
  if (adore_start_ != nullptr) cudaEventDestroy(adore_start_);
  if (adore_stop_ != nullptr) cudaEventDestroy(adore_stop_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::StatusOr<std::unique_ptr<CudaEngine>> CudaEngine::Create(const ModelWeights& weights,
                                                               const CudaEngineOptions& options) {
  ADORE_RETURN_IF_ERROR(CheckConfig(weights.config));
  ADORE_RETURN_IF_ERROR(CheckTensorParallel(options));
  ADORE_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  std::unique_ptr<CudaEngine> engine(new CudaEngine());
  ADORE_ASSIGN_OR_RETURN(engine->weights_, CudaWeights::Upload(weights, options.tp_rank, options.tp_size));
  return Finish(std::move(engine), options);
}

absl::StatusOr<std::unique_ptr<CudaEngine>> CudaEngine::CreateSynthetic(const ModelConfig& config, uint64_t seed,
                                                                        const CudaEngineOptions& options) {
  ADORE_RETURN_IF_ERROR(CheckConfig(config));
  ADORE_RETURN_IF_ERROR(CheckTensorParallel(options));
  ADORE_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  std::unique_ptr<CudaEngine> engine(new CudaEngine());
  ADORE_ASSIGN_OR_RETURN(engine->weights_, CudaWeights::Synthetic(config, seed, options.tp_rank, options.tp_size));
  return Finish(std::move(engine), options);
}

void SetCudaPolicyChunk(int64_t chunk, CudaEngineOptions* o) {
  if (chunk > 1) o->policy_chunk = std::min(chunk, kCudaMaxPolicyChunk);
}

absl::StatusOr<std::unique_ptr<CudaEngine>> CudaEngine::Finish(std::unique_ptr<CudaEngine> engine,
                                                               const CudaEngineOptions& options) {
  CudaEngineOptions& o = engine->options_;
  o = options;
  if (o.max_tokens <= 0 || o.max_tokens > kMaxGridRows || o.max_batch <= 0 || o.max_batch > kMaxGridRows ||
      o.max_logit_rows <= 0 || o.max_slots < 0 || o.max_mass_slots < 0 || o.kv_rows < 0 || o.kv_bytes < 0 ||
      !(o.kv_memory_fraction > 0.0 && o.kv_memory_fraction <= 1.0) || o.policy_chunk < 1 ||
      o.policy_chunk > kMaxPolicyChunk) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CUDA engine options: max_tokens %d and max_batch %d must be in [1, %d], max_logit_rows %d >= 1, "
        "kv_memory_fraction %g in (0, 1], policy_chunk %d in [1, %d]",
        o.max_tokens, o.max_batch, kMaxGridRows, o.max_logit_rows, o.kv_memory_fraction, o.policy_chunk,
        kMaxPolicyChunk));
  }
  if (o.policy_chunk > 1) {
    // A chunk's tokens each read (and observe) their own copy of the item's table, RunForward's bound
    // len x (budget + len) per item: room for max_batch chunks at kCudaChunkBudget (max_slots likewise,
    // once the pool is sized).
    o.max_mass_slots =
        std::max(o.max_mass_slots, o.max_batch * o.policy_chunk * (kCudaChunkBudget + o.policy_chunk + 1));
  }
  engine->max_mass_tokens_ =
      o.policy_chunk > 1 ? std::max(o.max_batch, std::min(o.max_batch * o.policy_chunk, o.max_tokens)) : o.max_batch;
  engine->max_decode_groups_ = o.max_batch + (o.policy_chunk > 1 ? engine->max_mass_tokens_ : 0);
  ADORE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&engine->stream_, cudaStreamNonBlocking));
  if (o.time_calls) {
    ADORE_CUDA_RETURN_IF_ERROR(cudaEventCreate(&engine->adore_start_));
    ADORE_CUDA_RETURN_IF_ERROR(cudaEventCreate(&engine->adore_stop_));
  }
  ADORE_ASSIGN_OR_RETURN(engine->blas_, k::Blas::Create());
  ADORE_RETURN_IF_ERROR(engine->AllocateWorkspaces());
  if (o.adore_controller != nullptr) ADORE_RETURN_IF_ERROR(engine->SetUpDeviceAdore());

  const ModelConfig& c = engine->config();
  const int64_t kv_dim = engine->weights_->local_kv_heads() * c.head_dim;  // this rank's KV heads
  // A row of the pool, plus its share of the slot-table staging when max_slots follows kv_rows.
  const int64_t row_bytes = CudaKvPool::BytesPerRow(c.num_layers, kv_dim);
  const int64_t index_bytes_per_row = o.max_slots == 0 ? 2 * 2 * 4 : 0;
  int64_t rows = o.kv_rows;
  if (rows == 0 && o.kv_bytes > 0) rows = o.kv_bytes / row_bytes;
  if (rows == 0) {
    size_t free_bytes = 0, total_bytes = 0;
    ADORE_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
    rows = static_cast<int64_t>(static_cast<double>(free_bytes) * o.kv_memory_fraction) /
           (row_bytes + index_bytes_per_row);
  }
  rows = std::min<int64_t>(rows, (int64_t{1} << 31) - 1);
  if (rows <= 0) return absl::ResourceExhaustedError("CUDA engine: no device memory left for the KV pool");
  ADORE_ASSIGN_OR_RETURN(engine->pool_, CudaKvPool::Create(c.num_layers, rows, kv_dim));
  if (o.max_slots == 0) o.max_slots = 2 * rows + o.max_tokens;
  if (o.policy_chunk > 1) {  // as max_mass_slots above: (len + 1) x (budget + len) per item
    o.max_slots = std::max(o.max_slots, o.max_batch * (o.policy_chunk + 1) * (kCudaChunkBudget + o.policy_chunk) +
                                            o.max_tokens);
  }

  // Index staging: tokens, positions, rows (max_tokens each), logit rows, three offset arrays (decode
  // groups, prefill queries, prefill tables), slot tables.
  const int64_t ints = 3 * AlignInts(o.max_tokens) + AlignInts(o.max_logit_rows) +
                       AlignInts(engine->max_decode_groups_ + 1) + 2 * AlignInts(o.max_batch + 1) +
                       2 * AlignInts(o.max_slots);
  engine->indices_capacity_ = static_cast<size_t>(ints);
  // cuda_runtime_api.h (plain C++) only has the void** forms.
  auto as_void = [](auto** p) { return reinterpret_cast<void**>(p); };
  ADORE_CUDA_RETURN_IF_ERROR(cudaMalloc(as_void(&engine->indices_), ints * sizeof(int32_t)));
  ADORE_CUDA_RETURN_IF_ERROR(cudaMallocHost(as_void(&engine->host_indices_), ints * sizeof(int32_t)));
  // Changed slot-table entries per call (more fall back to uploading every table): a decode step changes
  // one or two slots per sequence, a rebuild a few more.
  engine->max_slot_updates_ = 4 * o.max_tokens + 2 * o.max_batch;
  ADORE_CUDA_RETURN_IF_ERROR(cudaMalloc(as_void(&engine->slot_updates_), engine->max_slot_updates_ * 3 * sizeof(int32_t)));
  ADORE_CUDA_RETURN_IF_ERROR(
      cudaMallocHost(as_void(&engine->host_slot_updates_), engine->max_slot_updates_ * 3 * sizeof(int32_t)));
  ADORE_CUDA_RETURN_IF_ERROR(
      cudaMallocHost(as_void(&engine->host_sample_params_), o.max_batch * sizeof(k::GpuSamplingParams)));
  ADORE_CUDA_RETURN_IF_ERROR(cudaMallocHost(as_void(&engine->host_sampled_), o.max_batch * sizeof(int32_t)));
  ADORE_CUDA_RETURN_IF_ERROR(cudaMallocHost(as_void(&engine->host_mass_), std::max<int64_t>(1, o.max_mass_slots) * sizeof(float)));
  ADORE_CUDA_RETURN_IF_ERROR(cudaMallocHost(as_void(&engine->host_features_), kMaxFeatureLayers * engine->max_mass_tokens_ *
                                                                              c.hidden_size * sizeof(k::bf16)));
  ADORE_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return engine;
}

absl::Status CudaEngine::AllocateWorkspaces() {
  const ModelConfig& c = config();
  const CudaEngineOptions& o = options_;
  const int64_t T = o.max_tokens, L = o.max_logit_rows, B = o.max_batch;
  // This rank's shard of the heads and the MLP (all of them without tensor parallelism).
  const int64_t nh = weights_->local_heads(), d = c.hidden_size, q_dim = nh * c.head_dim;
  const int64_t kv_dim = weights_->local_kv_heads() * c.head_dim, ff = weights_->local_ff();
  attn_workspace_bytes_ =
      std::max(k::DecodeAttentionWorkspaceBytes(B, nh, c.head_dim, kDecodeSplitsPerItem, o.max_mass_slots),
               k::DecodeAttentionWorkspaceBytes(1, nh, c.head_dim, 64, 0));
  const size_t sizes[] = {
      Align256(sizeof(float) * T * d),                 // residual
      Align256(sizeof(k::bf16) * T * d),               // hidden
      Align256(sizeof(k::bf16) * T * (q_dim + 2 * kv_dim)),  // qkv
      Align256(sizeof(k::bf16) * T * q_dim),           // attn
      Align256(sizeof(k::bf16) * T * 2 * ff),          // gate_up
      Align256(sizeof(k::bf16) * T * ff),              // act
      Align256(sizeof(k::bf16) * L * d),               // selected
      Align256(sizeof(float) * L * c.vocab_size),      // logits
      Align256(attn_workspace_bytes_),                 // decode partials
      Align256(sizeof(k::GpuSamplingParams) * B),      // sample params
      Align256(sizeof(int32_t) * B),                   // sampled tokens
      Align256(sizeof(float) * std::max<int64_t>(1, o.max_mass_slots)),  // attention mass
      Align256(sizeof(k::bf16) * kMaxFeatureLayers * max_mass_tokens_ * d),  // policy features
  };
  size_t total = 0;
  for (size_t s : sizes) total += s;
  const absl::Status st = k::CudaStatus(cudaMalloc(&arena_, total), "cudaMalloc(workspaces)");
  if (!st.ok()) {
    arena_ = nullptr;
    return absl::Status(st.code(), absl::StrFormat("%s: %.2f GiB of workspaces for max_tokens %d, max_logit_rows %d",
                                                   std::string(st.message()), total / 1073741824.0, T, L));
  }
  char* p = static_cast<char*>(arena_);
  size_t i = 0;
  auto next = [&]() {
    char* at = p;
    p += sizes[i++];
    return at;
  };
  residual_ = reinterpret_cast<float*>(next());
  hidden_ = reinterpret_cast<k::bf16*>(next());
  qkv_ = reinterpret_cast<k::bf16*>(next());
  attn_ = reinterpret_cast<k::bf16*>(next());
  gate_up_ = reinterpret_cast<k::bf16*>(next());
  act_ = reinterpret_cast<k::bf16*>(next());
  selected_ = reinterpret_cast<k::bf16*>(next());
  logits_ = reinterpret_cast<float*>(next());
  attn_workspace_ = next();
  sample_params_ = reinterpret_cast<k::GpuSamplingParams*>(next());
  sampled_ = reinterpret_cast<int32_t*>(next());
  mass_ = reinterpret_cast<float*>(next());
  features_ = reinterpret_cast<k::bf16*>(next());
  return absl::OkStatus();
}

absl::Status CudaEngine::SetUpDeviceAdore() {
  const ModelConfig& c = config();
  const AdoreController& ctl = *options_.adore_controller;
  if (ctl.config().hidden_size != c.hidden_size) {
    return absl::InvalidArgumentError(absl::StrFormat("adore controller: hidden size %d, the model has %d",
                                                      ctl.config().hidden_size, c.hidden_size));
  }
  for (int32_t l : ctl.config().feature_layers) {
    if (l < 0 || l >= c.num_layers) {
      return absl::InvalidArgumentError(absl::StrFormat("adore controller: feature layer %d, the model has %d",
                                                        l, c.num_layers));
    }
  }
  if (static_cast<int64_t>(ctl.config().feature_layers.size()) > kMaxFeatureLayers) {
    return absl::InvalidArgumentError("adore controller: more feature layers than the engine copies out");
  }
  if (options_.adore_lanes <= 0) return absl::InvalidArgumentError("adore_lanes: must be > 0");
  ADORE_ASSIGN_OR_RETURN(adore_, DeviceAdoreRuntime::Create(ctl, options_.adore_lanes, c.max_context));
  const int64_t B = options_.max_batch;
  auto as_void = [](auto** p) { return reinterpret_cast<void**>(p); };
  const int64_t idx = kAdoreIndexArrays * (B + 1) + 2 * max_mass_tokens_, out = B * (2 * kAdorePlanCapacity + 3);
  ADORE_CUDA_RETURN_IF_ERROR(cudaMalloc(as_void(&adore_idx_), idx * sizeof(int32_t)));
  ADORE_CUDA_RETURN_IF_ERROR(cudaMallocHost(as_void(&host_adore_idx_), idx * sizeof(int32_t)));
  ADORE_CUDA_RETURN_IF_ERROR(cudaMalloc(as_void(&adore_out_), out * sizeof(int32_t)));
  ADORE_CUDA_RETURN_IF_ERROR(cudaMallocHost(as_void(&host_adore_out_), out * sizeof(int32_t)));
  ADORE_CUDA_RETURN_IF_ERROR(
      cudaMalloc(as_void(&adore_queries_), max_mass_tokens_ * ctl.config().key_dim * sizeof(float)));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ReleasePolicy>> CudaEngine::MakePolicy(const ReleaseConfig& config) {
  const bool device = adore_ != nullptr && config.kind == PolicyKind::kAdore &&
                      config.controller == options_.adore_controller;
  if (!device) return MakeReleasePolicy(config);
  const int64_t recent = config.num_recent > 0 ? config.num_recent : config.controller->config().num_recent;
  if (config.num_sink < 0 || recent < 0 || config.num_sink + recent > kAdoreMaxProtected) {
    return MakeReleasePolicy(config);  // a protected set beyond the device plan's capacity: run on the host
  }
  ADORE_ASSIGN_OR_RETURN(const int32_t lane, adore_->AcquireLane());
  return std::unique_ptr<ReleasePolicy>(new DeviceAdorePolicy(adore_, lane, config));
}

absl::StatusOr<int64_t> CudaEngine::RunForward(std::span<ForwardItem> items, bool sampling) {
  const ModelConfig& c = config();
  const CudaEngineOptions& o = options_;
  ADORE_CUDA_RETURN_IF_ERROR(cudaSetDevice(o.device));
  // Validate everything, with each policy's worst case (kMaxRebuild rebuilt tokens, a slot table of
  // max(slots + 1, budget) read by the decode and the rebuild group), before touching any state.
  ADORE_ASSIGN_OR_RETURN(const ForwardShape shape, CheckForwardItems(items, c));
  int64_t max_tokens = shape.num_tokens, max_slots = shape.num_slots, max_mass_slots = 0, mass_tokens = 0;
  // Features are copied token-major [mass token][layer][hidden]; the device controller reads a token's
  // layers in its own order, so with any device adore item that order comes first.
  std::vector<int32_t> feature_layers;
  auto is_device = [&](const ForwardItem& it) {
    const auto* d = dynamic_cast<const DeviceAdorePolicy*>(it.policy);
    return d != nullptr && d->runtime() == adore_.get();
  };
  if (adore_ != nullptr && std::any_of(items.begin(), items.end(), is_device)) {
    for (int64_t l : adore_->controller().config().feature_layers) feature_layers.push_back(static_cast<int32_t>(l));
  }
  for (size_t i = 0; i < items.size(); ++i) {
    const ForwardItem& it = items[i];
    if (sampling && it.all_logits) {
      return absl::InvalidArgumentError(absl::StrFormat("forward item %d: all_logits cannot be sampled", i));
    }
    if (it.policy == nullptr) continue;
    const int64_t len = static_cast<int64_t>(it.tokens.size());
    if (len > o.policy_chunk) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "forward item %d: with a release policy this CUDA engine takes at most %d new token(s) per call "
          "(CudaEngineOptions::policy_chunk), got %d",
          i, o.policy_chunk, len));
    }
    // Each new token is a decode query over its own copy of the table; rebuilt tokens read one more.
    const int64_t table = std::max<int64_t>(it.seq->num_slots() + len, it.kv_budget);
    max_tokens += it.policy->max_rebuild_per_step();
    max_slots += (len + 1) * table;
    max_mass_slots += len * table;
    mass_tokens += len;
    for (int32_t l : it.policy->feature_layers()) {
      if (l < 0 || l >= c.num_layers) {
        return absl::InvalidArgumentError(absl::StrFormat("forward item %d: policy wants features of layer %d", i, l));
      }
      if (std::find(feature_layers.begin(), feature_layers.end(), l) == feature_layers.end()) {
        feature_layers.push_back(l);
      }
    }
  }
  if (static_cast<int64_t>(items.size()) > o.max_batch || max_tokens > o.max_tokens ||
      shape.num_logit_rows > o.max_logit_rows || max_slots > o.max_slots || max_mass_slots > o.max_mass_slots ||
      mass_tokens > max_mass_tokens_ || static_cast<int64_t>(feature_layers.size()) > kMaxFeatureLayers) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "forward call of %d items, up to %d tokens, %d logit rows, %d slots, %d observed slots, %d observed "
        "tokens and %d feature layers exceeds the engine's max_batch %d, max_tokens %d, max_logit_rows %d, "
        "max_slots %d, max_mass_slots %d, %d observed tokens or %d feature layers",
        items.size(), max_tokens, shape.num_logit_rows, max_slots, max_mass_slots, mass_tokens,
        feature_layers.size(), o.max_batch, o.max_tokens, o.max_logit_rows, o.max_slots, o.max_mass_slots,
        max_mass_tokens_, kMaxFeatureLayers));
  }
  // The pinned staging is rewritten below; a call that failed midway may still be copying from it.
  ADORE_RETURN_IF_ERROR(WaitStream());
  pending_adore_.clear();
  timings_ = CallTimings{};
  adore_timed_ = false;
  const auto plan_start = std::chrono::steady_clock::now();
  ADORE_ASSIGN_OR_RETURN(const PlannedForward pf,
                         PlanForward(items, c, pool_->rows(), options_.tp_size > 1 ? options_.comm : nullptr));
  if (options_.time_calls) {
    timings_.plan_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - plan_start).count();
  }

  // Token groups in launch order: decode with mass (policy items' new token), other decode items, then
  // prefill groups (prefill items, then policy items' rebuilt tokens).
  struct Group {
    size_t item;
    int64_t first, count;  // tokens [first, first + count) of the item's PlannedItem
  };
  std::vector<Group> groups;
  // Device adore items first (their controller launches read the first slot tables and masses), grouped by
  // their plan parameters (one plan launch per group), then the host policies' items.
  std::vector<size_t> device_items;
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].policy != nullptr && is_device(items[i])) device_items.push_back(i);
  }
  std::stable_sort(device_items.begin(), device_items.end(), [&](size_t a, size_t b) {
    const auto* x = static_cast<const DeviceAdorePolicy*>(items[a].policy);
    const auto* y = static_cast<const DeviceAdorePolicy*>(items[b].policy);
    return std::make_tuple(x->max_rebuild(), x->num_sink(), x->num_recent()) <
           std::make_tuple(y->max_rebuild(), y->num_sink(), y->num_recent());
  });
  // One decode group per new token of a policy item (a prompt chunk: several, consecutive), each over the
  // whole table; the decode kernel hides the slots later than its query.
  auto add_new_tokens = [&](size_t i) {
    for (int64_t x = pf.items[i].num_rebuild; x < static_cast<int64_t>(pf.items[i].tokens.size()); ++x) {
      groups.push_back({i, x, 1});
    }
  };
  for (size_t i : device_items) add_new_tokens(i);
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].policy != nullptr && !is_device(items[i])) add_new_tokens(i);
  }
  Plan plan;
  plan.num_mass_decode = static_cast<int64_t>(groups.size());
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].policy == nullptr && pf.items[i].tokens.size() == 1) groups.push_back({i, 0, 1});
  }
  plan.num_decode = static_cast<int64_t>(groups.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const int64_t len = static_cast<int64_t>(pf.items[i].tokens.size());
    if (items[i].policy == nullptr && len > 1) groups.push_back({i, 0, len});
  }
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].policy != nullptr && pf.items[i].num_rebuild > 0) groups.push_back({i, 0, pf.items[i].num_rebuild});
  }
  plan.num_prefill = static_cast<int64_t>(groups.size()) - plan.num_decode;
  plan.n = pf.num_tokens;
  plan.num_logit_rows = pf.num_logit_rows;
  plan.feature_layers = feature_layers;
  int64_t total_slots = 0;
  for (const Group& g : groups) total_slots += items[g.item].seq->num_slots();

  // Fixed offsets (from the capacities), so a captured CUDA graph's pointers stay valid for every call.
  const int64_t n = plan.n;
  const int64_t off_tokens = 0, off_pos = AlignInts(o.max_tokens), off_rows = 2 * AlignInts(o.max_tokens);
  const int64_t off_logit = 3 * AlignInts(o.max_tokens), off_dec = off_logit + AlignInts(o.max_logit_rows);
  const int64_t off_preq = off_dec + AlignInts(max_decode_groups_ + 1);
  const int64_t off_pres = off_preq + AlignInts(o.max_batch + 1);
  const int64_t off_srows = off_pres + AlignInts(o.max_batch + 1);
  const int64_t off_spos = off_srows + AlignInts(o.max_slots);
  if (static_cast<size_t>(off_spos + total_slots) > indices_capacity_ || n > o.max_tokens) {
    return absl::InternalError("index staging overflow");
  }
  int32_t* h = host_indices_;

  // token_index[first_token[i] + j]: where token j of item i's PlannedItem sits in the call's token order.
  std::vector<int64_t> first_token(items.size() + 1, 0);
  for (size_t i = 0; i < items.size(); ++i) {
    first_token[i + 1] = first_token[i] + static_cast<int64_t>(pf.items[i].tokens.size());
  }
  std::vector<int32_t> token_index(static_cast<size_t>(first_token.back()));
  std::vector<int64_t> mass_offset(items.size(), 0), mass_token(items.size(), 0);
  int64_t t = 0, cursor = 0;
  std::vector<int64_t> table_at(groups.size());  // where each group's slot table starts in the staging
  h[off_dec] = 0;
  h[off_pres] = h[off_preq] = 0;
  for (size_t j = 0; j < groups.size(); ++j) {
    const Group& g = groups[j];
    const PlannedItem& p = pf.items[g.item];
    const SequenceKv& seq = *items[g.item].seq;
    const bool decode = static_cast<int64_t>(j) < plan.num_decode;
    for (int64_t x = g.first; x < g.first + g.count; ++x, ++t) {
      h[off_tokens + t] = p.tokens[x];
      h[off_pos + t] = p.positions[x];
      h[off_rows + t] = p.rows[x];
      token_index[first_token[g.item] + x] = static_cast<int32_t>(t);
    }
    if (static_cast<int64_t>(j) < plan.num_mass_decode && g.first == p.num_rebuild) {  // the item's first
      mass_offset[g.item] = cursor;
      mass_token[g.item] = static_cast<int64_t>(j);
    }
    table_at[j] = cursor;  // the slot table is copied below, in parallel
    cursor += seq.num_slots();
    if (decode) {
      h[off_dec + j + 1] = static_cast<int32_t>(cursor);
      if (static_cast<int64_t>(j) < plan.num_mass_decode) {
        plan.max_mass_decode_slots = std::max(plan.max_mass_decode_slots, seq.num_slots());
        plan.mass_slots = cursor;
      } else {
        plan.max_decode_slots = std::max(plan.max_decode_slots, seq.num_slots());
      }
    } else {
      const int64_t idx = static_cast<int64_t>(j) - plan.num_decode;
      if (idx == 0) h[off_pres] = static_cast<int32_t>(cursor - seq.num_slots());  // after the decode tables
      plan.max_prefill_q = std::max(plan.max_prefill_q, g.count);
      h[off_pres + idx + 1] = static_cast<int32_t>(cursor);
      h[off_preq + idx + 1] = static_cast<int32_t>(t - plan.num_decode);
    }
  }
  // The slot tables. Where the GPU still holds this layout from the last call and only that call's plans
  // changed the tables since, the changed entries go up (SlotTableUpdate); else every group's table is
  // staged (the bulk of the host's bytes: 4,096 sequences of 1,024 slots are 32 MB), on several threads.
  const int64_t num_groups = static_cast<int64_t>(groups.size());
  // Per group: does the GPU hold its table from the last call, changed since by that call's plan only?
  std::vector<uint8_t> held(groups.size(), 0);
  int64_t num_updates = 0;
  for (int64_t j = 0; j < num_groups; ++j) {
    const SequenceKv& seq = *items[groups[j].item].seq;
    if (staged_.size() == groups.size()) {
      const StagedTable& st = staged_[j];
      held[j] = st.seq == &seq && st.version + 1 == seq.version && st.num_slots == seq.num_slots() &&
                st.at == table_at[j];
    }
    // A held table sends its changed entries, another one all of its entries.
    num_updates += held[j] ? static_cast<int64_t>(pf.items[groups[j].item].changed_slots.size()) : seq.num_slots();
  }
  // Entries are 3 ints against 2 per slot of a full upload.
  const bool update_only = num_updates <= max_slot_updates_ && 3 * num_updates < 2 * total_slots;
  staged_.clear();  // rewritten below once the tables are on their way
  if (update_only) {
    int32_t* u = host_slot_updates_;
    for (int64_t j = 0; j < num_groups; ++j) {
      const SequenceKv& seq = *items[groups[j].item].seq;
      auto put = [&](int64_t slot) {
        *u++ = static_cast<int32_t>(table_at[j] + slot);
        *u++ = seq.rows[slot];
        *u++ = seq.pos[slot];
      };
      if (held[j]) {
        for (int32_t slot : pf.items[groups[j].item].changed_slots) put(slot);
      } else {
        for (int64_t slot = 0; slot < seq.num_slots(); ++slot) put(slot);
      }
    }
    ++num_slot_table_updates_;
  } else {
    const int threads = HostThreadsForItems(num_groups);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t j = 0; j < num_groups; ++j) {
      const SequenceKv& seq = *items[groups[j].item].seq;
      std::copy(seq.rows.begin(), seq.rows.end(), h + off_srows + table_at[j]);
      std::copy(seq.pos.begin(), seq.pos.end(), h + off_spos + table_at[j]);
    }
  }
  int64_t r = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const PlannedItem& p = pf.items[i];
    const int64_t end = static_cast<int64_t>(p.tokens.size());
    for (int64_t x = items[i].all_logits ? p.num_rebuild : end - 1; x < end; ++x) {
      h[off_logit + r++] = token_index[first_token[i] + x];
    }
  }

  // Decode calls run as CUDA graphs. Without policies the batch is padded to a bucket with empty items (no
  // slots, KV row -1 so nothing is written) and the slot bound rounded up, so one captured graph serves many
  // calls. With policies (their tokens' attention mass and features are gathered) the shape is taken as it
  // is: under a release policy the tables stay at their budget, so the same shape comes back every step.
  const int64_t real_logit_rows = plan.num_logit_rows;
  const bool graph = o.cuda_graphs && !graphs_failed_ && plan.num_prefill == 0 &&
                     plan.num_logit_rows == plan.num_decode;
  if (graph && plan.num_mass_decode == 0) {
    // Small batches run unpadded (empty items would lower the decode kernel's split count: measured 2x
    // slower at batch 1 on the 7B shape); larger ones pad to a multiple of 16.
    int64_t bucket = plan.num_decode <= 16 ? plan.num_decode : (plan.num_decode + 15) / 16 * 16;
    bucket = std::min({bucket, o.max_batch, o.max_tokens, o.max_logit_rows});
    for (int64_t j = plan.num_decode; j < bucket; ++j) {
      h[off_tokens + j] = 0;
      h[off_pos + j] = 0;
      h[off_rows + j] = -1;
      h[off_dec + j + 1] = static_cast<int32_t>(cursor);
      h[off_logit + j] = static_cast<int32_t>(j);
    }
    plan.n = plan.num_decode = plan.num_logit_rows = bucket;
    plan.max_decode_slots = (plan.max_decode_slots + 511) / 512 * 512;
  }
  if (update_only) {
    ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(indices_, host_indices_, off_srows * sizeof(int32_t),
                                               cudaMemcpyHostToDevice, stream_));
    if (num_updates > 0) {
      ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(slot_updates_, host_slot_updates_, num_updates * 3 * sizeof(int32_t),
                                                 cudaMemcpyHostToDevice, stream_));
      ADORE_RETURN_IF_ERROR(k::SlotTableUpdate({.entries = slot_updates_, .n = num_updates,
                                                .slot_rows = indices_ + off_srows, .slot_pos = indices_ + off_spos,
                                                .capacity = total_slots},
                                               stream_));
    }
  } else {
    ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(indices_, host_indices_, (off_srows + total_slots) * sizeof(int32_t),
                                               cudaMemcpyHostToDevice, stream_));
    if (total_slots > 0) {
      ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(indices_ + off_spos, host_indices_ + off_spos,
                                                 total_slots * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    }
  }
  staged_.reserve(groups.size());
  for (int64_t j = 0; j < num_groups; ++j) {
    const SequenceKv& seq = *items[groups[j].item].seq;
    staged_.push_back({&seq, seq.version, seq.num_slots(), table_at[j]});
  }
  plan.tokens = indices_ + off_tokens;
  plan.positions = indices_ + off_pos;
  plan.rows = indices_ + off_rows;
  plan.logit_rows = indices_ + off_logit;
  plan.dec_slot_off = indices_ + off_dec;
  plan.pre_q_off = indices_ + off_preq;
  plan.pre_slot_off = indices_ + off_pres;
  plan.slot_rows = indices_ + off_srows;
  plan.slot_pos = indices_ + off_spos;
  if (options_.time_calls) {
    timings_.stage_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - plan_start).count() -
        timings_.plan_ms;
  }
  if (graph) {
    ADORE_RETURN_IF_ERROR(RunDecodeGraph(plan));
  } else {
    ADORE_RETURN_IF_ERROR(RunLayers(plan));
  }
  if (!device_items.empty()) {
    adore_timed_ = options_.time_calls;
    if (adore_timed_) ADORE_CUDA_RETURN_IF_ERROR(cudaEventRecord(adore_start_, stream_));
    ADORE_RETURN_IF_ERROR(RunDeviceAdore(items, pf, plan, device_items, mass_offset));
    if (adore_timed_) ADORE_CUDA_RETURN_IF_ERROR(cudaEventRecord(adore_stop_, stream_));
  }
  if (plan.num_mass_decode > static_cast<int64_t>(device_items.size())) {
    ADORE_RETURN_IF_ERROR(ObservePolicies(items, pf, plan, mass_offset, mass_token));  // device ones record ids
  } else {
    for (size_t i : device_items) {  // no host policy: skip the mass and feature downloads
      const PlannedItem& p = pf.items[i];
      const auto first = static_cast<size_t>(p.num_rebuild);
      static_cast<DeviceAdorePolicy*>(items[i].policy)
          ->RecordTokens(std::span<const int32_t>(p.positions).subspan(first),
                         std::span<const int32_t>(p.tokens).subspan(first));
    }
  }
  return real_logit_rows;
}

absl::Status CudaEngine::RunDecodeGraph(const Plan& plan) {
  const GraphKey key(plan.num_decode, plan.max_decode_slots, plan.num_mass_decode, plan.max_mass_decode_slots,
                     plan.mass_slots, plan.feature_layers);
  auto it = graphs_.find(key);
  if (it != graphs_.end()) {
    ++graph_launches_;
    return k::CudaStatus(cudaGraphLaunch(it->second, stream_), "cudaGraphLaunch");
  }
  // First call of a shape runs eagerly (cuBLAS picks and sets up its kernels outside any capture); the
  // second captures the shape's graph. A capture that fails turns graphs off for this engine. Shapes seen
  // once are forgotten past a bound (policy shapes change every step while the tables fill).
  if (graph_shapes_seen_.size() >= kMaxSeenGraphShapes) graph_shapes_seen_.clear();
  if (graph_shapes_seen_.insert(key).second || graphs_.size() >= kMaxGraphs) return RunLayers(plan);
  cudaGraph_t g = nullptr;
  cudaGraphExec_t exec = nullptr;
  cudaError_t err = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
  absl::Status st = err == cudaSuccess ? RunLayers(plan) : k::CudaStatus(err, "cudaStreamBeginCapture");
  if (err == cudaSuccess) {
    const cudaError_t end = cudaStreamEndCapture(stream_, &g);
    if (st.ok() && end != cudaSuccess) st = k::CudaStatus(end, "cudaStreamEndCapture");
  }
  if (st.ok()) st = k::CudaStatus(cudaGraphInstantiate(&exec, g, 0), "cudaGraphInstantiate");
  if (g != nullptr) cudaGraphDestroy(g);
  if (!st.ok()) {
    cudaGetLastError();  // clear the capture's error state
    graphs_failed_ = true;
    std::fprintf(stderr, "CUDA engine: CUDA graph capture failed (%s); decoding without graphs\n",
                 std::string(st.message()).c_str());
    return RunLayers(plan);
  }
  graphs_.emplace(key, exec);
  ++graph_launches_;
  return k::CudaStatus(cudaGraphLaunch(exec, stream_), "cudaGraphLaunch");
}

absl::Status CudaEngine::RunDeviceAdore(std::span<ForwardItem> items, const PlannedForward& pf, const Plan& plan,
                                        std::span<const size_t> device_items, std::span<const int64_t> mass_offset) {
  const ModelConfig& c = config();
  const int64_t nd = static_cast<int64_t>(device_items.size()), B1 = options_.max_batch + 1;
  const int64_t C = kAdorePlanCapacity, P = adore_->max_positions(), d = c.hidden_size;
  // Index arrays (pinned host, then one upload): per device item b, in group order, then per new token x
  // (the items' new tokens in group order: the mass tokens' order, so the features' rows).
  int32_t* h = host_adore_idx_;
  int32_t *table_begin = h, *state_base = h + B1, *q_first = h + 2 * B1, *q_offsets = h + 3 * B1;
  int32_t *num_scored = h + 4 * B1, *budget = h + 5 * B1, *num_new = h + 6 * B1, *table_ends = h + 7 * B1;
  int32_t *key_rows = h + kAdoreIndexArrays * B1, *query_mass = key_rows + max_mass_tokens_;
  int64_t max_positions = 0, x = 0;
  bool chunked = false;  // an item brings several new tokens: per-query tables and masses
  for (int64_t b = 0; b < nd; ++b) {
    const size_t i = device_items[b];
    const auto* policy = static_cast<const DeviceAdorePolicy*>(items[i].policy);
    const PlannedItem& p = pf.items[i];
    const int64_t first = p.num_rebuild, len = p.num_new(), ns = items[i].seq->num_slots();
    chunked |= len > 1;
    state_base[b] = policy->lane() * static_cast<int32_t>(P);
    q_first[b] = p.positions[first];  // the first new token (rebuilt ones come first)
    q_offsets[b] = static_cast<int32_t>(x);
    for (int64_t j = 0; j < len; ++j, ++x) {
      key_rows[x] = state_base[b] + p.positions[first + j];
      query_mass[x] = static_cast<int32_t>(mass_offset[i] + j * ns);  // group j's copy of the table
    }
    table_begin[b] = static_cast<int32_t>(mass_offset[i]);
    table_ends[b] = static_cast<int32_t>(mass_offset[i] + ns);
    num_scored[b] = p.positions.back() + 1;
    budget[b] = static_cast<int32_t>(items[i].kv_budget);
    num_new[b] = static_cast<int32_t>(std::max<int64_t>(1, items[i].next_new));  // the next call's step
    max_positions = std::max<int64_t>(max_positions, num_scored[b]);
  }
  q_offsets[nd] = static_cast<int32_t>(x);
  ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(adore_idx_, host_adore_idx_,
                                             (kAdoreIndexArrays * B1 + 2 * max_mass_tokens_) * sizeof(int32_t),
                                             cudaMemcpyHostToDevice, stream_));
  const int32_t* dev = adore_idx_;
  const int32_t* dev_key_rows = dev + kAdoreIndexArrays * B1;
  // One new token per item: the decode groups' CSR tables are the items' tables and the masses follow them.
  // A chunk: each item's first copy of its table, and each query's own copy of the masses.
  const int32_t* step_tables = chunked ? dev : plan.dec_slot_off;
  const int32_t* step_table_ends = chunked ? dev + 7 * B1 : nullptr;
  const kernels::AdoreStateArrays state = adore_->state();
  ADORE_RETURN_IF_ERROR(k::AdoreProject({.weights = &adore_->weights(),
                                         .features_bf16 = features_,
                                         .feature_stride = static_cast<int64_t>(plan.feature_layers.size()) * d,
                                         .n = x,
                                         .key_rows = dev_key_rows,
                                         .state = state,
                                         .queries = adore_queries_,
                                         .num_query_rows = max_mass_tokens_},
                                        stream_));
  ADORE_RETURN_IF_ERROR(k::AdoreStep({.weights = &adore_->weights(),
                                      .state = state,
                                      .queries = adore_queries_,
                                      .num_seqs = nd,
                                      .state_base = dev + B1,
                                      .q_first = dev + 2 * B1,
                                      .q_offsets = dev + 3 * B1,
                                      .max_positions = max_positions,
                                      .slot_offsets = step_tables,
                                      .slot_rows = plan.slot_rows,
                                      .slot_pos = plan.slot_pos,
                                      .max_slots = plan.max_mass_decode_slots,
                                      .slot_mass = mass_,
                                      .mass_stride = plan.mass_slots,
                                      .mass_scale = 1.0f / static_cast<float>(c.num_layers * c.num_heads),
                                      .slot_of_row = adore_->slot_of_row(),
                                      .table_ends = step_table_ends,
                                      .query_mass = chunked ? dev_key_rows + max_mass_tokens_ : nullptr},
                                     stream_));
  // The next step's plans, one launch per run of items with the same (rebuild, sinks, recent window).
  const int64_t B = options_.max_batch;
  int32_t *release = adore_out_, *rebuild = adore_out_ + B * C, *nrel = adore_out_ + 2 * B * C;
  int32_t *nreb = nrel + B, *status = nrel + 2 * B;
  for (int64_t b0 = 0; b0 < nd;) {
    const auto* first = static_cast<const DeviceAdorePolicy*>(items[device_items[b0]].policy);
    int64_t b1 = b0 + 1;
    while (b1 < nd) {
      const auto* x = static_cast<const DeviceAdorePolicy*>(items[device_items[b1]].policy);
      if (x->max_rebuild() != first->max_rebuild() || x->num_sink() != first->num_sink() ||
          x->num_recent() != first->num_recent()) {
        break;
      }
      ++b1;
    }
    ADORE_RETURN_IF_ERROR(k::AdorePlanRelease({.scores = state.scores,
                                               .num_rows = state.num_rows,
                                               .num_seqs = b1 - b0,
                                               .state_base = dev + B1 + b0,
                                               .num_scored = dev + 4 * B1 + b0,
                                               .budget = dev + 5 * B1 + b0,
                                               .num_new = dev + 6 * B1 + b0,
                                               .max_positions = max_positions,
                                               .max_rebuild = first->max_rebuild(),
                                               .num_sink = first->num_sink(),
                                               .num_recent = first->num_recent(),
                                               .slot_offsets = step_tables + b0,
                                               .table_ends = chunked ? step_table_ends + b0 : nullptr,
                                               .slot_rows = plan.slot_rows,
                                               .slot_pos = plan.slot_pos,
                                               .release = release + b0 * C,
                                               .release_capacity = C,
                                               .rebuild = rebuild + b0 * C,
                                               .rebuild_capacity = C,
                                               .num_release = nrel + b0,
                                               .num_rebuild = nreb + b0,
                                               .status = status + b0},
                                              stream_));
    b0 = b1;
  }
  int32_t* ho = host_adore_out_;
  for (const auto& [src, dst, count] : {std::tuple{release, ho, nd * C}, std::tuple{rebuild, ho + B * C, nd * C},
                                        std::tuple{nrel, ho + 2 * B * C, nd}, std::tuple{nreb, ho + 2 * B * C + B, nd},
                                        std::tuple{status, ho + 2 * B * C + 2 * B, nd}}) {
    ADORE_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst, src, static_cast<size_t>(count) * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  }
  for (int64_t b = 0; b < nd; ++b) {
    const size_t i = device_items[b];
    pending_adore_.push_back(
        {static_cast<DeviceAdorePolicy*>(items[i].policy), num_scored[b], num_new[b], budget[b], b});
  }
  return absl::OkStatus();
}

void CudaEngine::FinishDeviceAdore() {
  const auto start = std::chrono::steady_clock::now();
  if (adore_timed_) {  // the stream was synchronized: both events are complete
    float ms = 0.0f;
    if (cudaEventElapsedTime(&ms, adore_start_, adore_stop_) == cudaSuccess) timings_.controller_ms = ms;
  }
  absl::Cleanup timed = [&] {
    if (options_.time_calls) {
      timings_.plan_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    }
  };
  const int64_t B = options_.max_batch, C = kAdorePlanCapacity;
  const int32_t* ho = host_adore_out_;
  for (const PendingPlan& p : pending_adore_) {
    const int32_t nrel = ho[2 * B * C + p.index], nreb = ho[2 * B * C + B + p.index];
    int32_t status = ho[2 * B * C + 2 * B + p.index];
    if (nrel > C || nreb > C) status = -1;  // more than the outputs hold: refused by PlanStep (INTERNAL)
    p.policy->SetNextPlan(p.num_steps, p.num_new, p.budget, status,
                          std::span<const int32_t>(ho + p.index * C, std::min<int64_t>(nrel, C)),
                          std::span<const int32_t>(ho + B * C + p.index * C, std::min<int64_t>(nreb, C)));
  }
  pending_adore_.clear();
}

absl::Status CudaEngine::ObservePolicies(std::span<ForwardItem> items, const PlannedForward& pf, const Plan& plan,
                                         std::span<const int64_t> mass_offset,
                                         std::span<const int64_t> mass_token) {
  const ModelConfig& c = config();
  const int64_t d = c.hidden_size, nm = plan.num_mass_decode, nf = static_cast<int64_t>(plan.feature_layers.size());
  ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_mass_, mass_, plan.mass_slots * sizeof(float),
                                             cudaMemcpyDeviceToHost, stream_));
  if (nf > 0) {
    ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_features_, features_, nf * nm * d * sizeof(k::bf16),
                                               cudaMemcpyDeviceToHost, stream_));
  }
  ADORE_RETURN_IF_ERROR(WaitStream());
  // Features per mass token (a policy item's new token, by group) in its policy's own layer order, as float
  // (features_ is [mass token, layer, hidden]); masses: the token's own copy of its item's table.
  std::vector<std::vector<float>> features(static_cast<size_t>(nm));
  const uint16_t* raw = reinterpret_cast<const uint16_t*>(host_features_);
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].policy == nullptr) continue;
    for (int64_t j = 0; j < pf.items[i].num_new(); ++j) {
      const int64_t g = mass_token[i] + j;
      for (int32_t l : items[i].policy->feature_layers()) {
        const int64_t li =
            std::find(plan.feature_layers.begin(), plan.feature_layers.end(), l) - plan.feature_layers.begin();
        const uint16_t* src = raw + (g * nf + li) * d;
        for (int64_t e = 0; e < d; ++e) {
          const uint32_t bits = static_cast<uint32_t>(src[e]) << 16;
          float f;
          std::memcpy(&f, &bits, sizeof(f));
          features[g].push_back(f);
        }
      }
    }
  }
  return ObserveForward(
      items, pf, 1.0f / static_cast<float>(c.num_layers * c.num_heads),
      [&](size_t i, int64_t t) {
        const int64_t ns = items[i].seq->num_slots();
        return std::span<const float>(host_mass_ + mass_offset[i] + (t - pf.items[i].num_rebuild) * ns,
                                      static_cast<size_t>(ns));
      },
      [&](size_t i, int64_t t) {
        return std::span<const float>(features[mass_token[i] + t - pf.items[i].num_rebuild]);
      });
}

absl::Status CudaEngine::RunLayers(const Plan& p) {
  const ModelConfig& c = config();
  // This rank's heads and MLP columns (the whole model when tp_size is 1).
  const int64_t n = p.n, d = c.hidden_size, hd = c.head_dim, nh = weights_->local_heads();
  const int64_t nkv = weights_->local_kv_heads(), ff = weights_->local_ff();
  const int64_t q_dim = nh * hd, kv_dim = nkv * hd, qkv_dim = q_dim + 2 * kv_dim;
  const float eps = c.rms_norm_eps, scale = 1.0f / std::sqrt(static_cast<float>(hd));
  cudaStream_t s = stream_;
  // Tensor parallelism: a rank's attention-output and down products are partial sums over its heads / MLP
  // columns. Rank 0 adds its partial to the residual, the others overwrite the residual with theirs, and one
  // float32 all-reduce of the residual then leaves residual + the sum of all partials on every rank (in the
  // same bytes everywhere, so every rank samples the same token).
  const bool tp = options_.tp_size > 1;
  const bool accumulate = options_.tp_rank == 0;
  auto all_reduce_residual = [&]() -> absl::Status {
    if (!tp) return absl::OkStatus();
    return options_.comm->AllReduceSum(residual_, static_cast<size_t>(n * d), comm::CommDataType::kFloat32, s);
  };
  if (p.num_mass_decode > 0) {
    ADORE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(mass_, 0, p.mass_slots * sizeof(float), s));
  }

  ADORE_RETURN_IF_ERROR(k::Embedding(
      {.table = weights_->token_embd(), .vocab = c.vocab_size, .dim = d, .ids = p.tokens, .n = n, .out_f32 = residual_},
      s));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const CudaLayerWeights& w = weights_->layer(l);
    ADORE_RETURN_IF_ERROR(k::AddRmsNorm(
        {.residual = residual_, .weight = w.attn_norm, .n = n, .dim = d, .eps = eps, .out = hidden_}, s));
    const int64_t nf = static_cast<int64_t>(p.feature_layers.size());
    for (int64_t f = 0; f < nf; ++f) {  // policies' features, token-major: the mass tokens come first
      if (p.feature_layers[f] != l) continue;
      ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(features_ + f * d, nf * d * sizeof(k::bf16), hidden_,
                                                   d * sizeof(k::bf16), d * sizeof(k::bf16), p.num_mass_decode,
                                                   cudaMemcpyDeviceToDevice, s));
    }
    ADORE_RETURN_IF_ERROR(
        blas_->Linear({.x = hidden_, .w = w.wqkv, .n = n, .in = d, .out = qkv_dim, .y_bf16 = qkv_}, s));
    // Q and K heads are adjacent at the start of each QKV row: one launch rotates both and copies the rotated
    // K and the V of each token into its pool row.
    ADORE_RETURN_IF_ERROR(k::Rope({.x = qkv_, .row_stride = qkv_dim, .positions = p.positions, .n = n,
                                   .num_heads = nh + nkv, .head_dim = hd, .rot_dim = hd, .theta = c.rope_theta,
                                   .kv_rows = p.rows, .kv_first_head = nh, .num_kv_heads = nkv,
                                   .v_offset = q_dim + kv_dim, .k_cache = pool_->k(l), .v_cache = pool_->v(l),
                                   .num_kv_rows = pool_->num_rows()},
                                  s));
    // Decode: the policy items' tokens (attention mass per slot accumulated over layers), then the rest.
    for (int pass = 0; pass < 2; ++pass) {
      const int64_t first = pass == 0 ? 0 : p.num_mass_decode;
      const int64_t count = pass == 0 ? p.num_mass_decode : p.num_decode - p.num_mass_decode;
      if (count == 0) continue;
      k::DecodeAttentionArgs a;
      a.q = qkv_ + first * qkv_dim;
      a.q_stride = qkv_dim;
      a.q_pos = p.positions + first;
      a.k_cache = pool_->k(l);
      a.v_cache = pool_->v(l);
      a.num_rows = pool_->num_rows();
      a.slot_offsets = p.dec_slot_off + first;
      a.slot_rows = p.slot_rows;
      a.slot_pos = p.slot_pos;
      a.batch = count;
      a.num_heads = nh;
      a.num_kv_heads = nkv;
      a.head_dim = hd;
      a.max_slots = pass == 0 ? p.max_mass_decode_slots : p.max_decode_slots;
      a.scale = scale;
      a.out = attn_ + first * q_dim;
      a.out_stride = q_dim;
      a.workspace = attn_workspace_;
      a.workspace_bytes = attn_workspace_bytes_;
      a.kernel = options_.decode_attention;
      if (pass == 0) {
        a.slot_attn_mass = mass_;
        a.total_slots = p.mass_slots;
      }
      ADORE_RETURN_IF_ERROR(k::DecodeAttention(a, s));
    }
    if (p.num_prefill > 0) {
      k::PrefillAttentionArgs a;
      a.q = qkv_ + p.num_decode * qkv_dim;
      a.q_stride = qkv_dim;
      a.q_pos = p.positions + p.num_decode;
      a.q_offsets = p.pre_q_off;
      a.k_cache = pool_->k(l);
      a.v_cache = pool_->v(l);
      a.num_rows = pool_->num_rows();
      a.slot_offsets = p.pre_slot_off;
      a.slot_rows = p.slot_rows;
      a.slot_pos = p.slot_pos;
      a.num_seqs = p.num_prefill;
      a.max_q = p.max_prefill_q;
      a.num_heads = nh;
      a.num_kv_heads = nkv;
      a.head_dim = hd;
      a.scale = scale;
      a.out = attn_ + p.num_decode * q_dim;
      a.out_stride = q_dim;
      a.kernel = options_.prefill_attention;
      ADORE_RETURN_IF_ERROR(k::PrefillAttention(a, s));
    }
    // The residual stream is float32: the output projections add straight into it.
    ADORE_RETURN_IF_ERROR(blas_->Linear(
        {.x = attn_, .w = w.wo, .n = n, .in = q_dim, .out = d, .y_f32 = residual_, .accumulate = accumulate}, s));
    ADORE_RETURN_IF_ERROR(all_reduce_residual());
    ADORE_RETURN_IF_ERROR(k::AddRmsNorm(
        {.residual = residual_, .weight = w.ffn_norm, .n = n, .dim = d, .eps = eps, .out = hidden_}, s));
    ADORE_RETURN_IF_ERROR(
        blas_->Linear({.x = hidden_, .w = w.w_gate_up, .n = n, .in = d, .out = 2 * ff, .y_bf16 = gate_up_}, s));
    ADORE_RETURN_IF_ERROR(k::SwiGlu({.gate = gate_up_, .up = gate_up_ + ff, .out = act_, .n = n, .width = ff,
                                     .gate_stride = 2 * ff, .up_stride = 2 * ff, .out_stride = ff},
                                    s));
    ADORE_RETURN_IF_ERROR(blas_->Linear(
        {.x = act_, .w = w.w_down, .n = n, .in = ff, .out = d, .y_f32 = residual_, .accumulate = accumulate}, s));
    ADORE_RETURN_IF_ERROR(all_reduce_residual());
  }
  if (tp && p.num_mass_decode > 0) {  // each rank summed its own heads' attention: the policies want all heads
    ADORE_RETURN_IF_ERROR(options_.comm->AllReduceSum(mass_, static_cast<size_t>(p.mass_slots),
                                                      comm::CommDataType::kFloat32, s));
  }
  // Final norm over every token (cheap), then gather the rows whose logits are wanted.
  ADORE_RETURN_IF_ERROR(k::AddRmsNorm(
      {.residual = residual_, .weight = weights_->output_norm(), .n = n, .dim = d, .eps = eps, .out = hidden_}, s));
  ADORE_RETURN_IF_ERROR(k::Embedding({.table = hidden_, .vocab = n, .dim = d, .ids = p.logit_rows,
                                      .n = p.num_logit_rows, .out_bf16 = selected_},
                                     s));
  return blas_->Linear({.x = selected_, .w = weights_->lm_head(), .n = p.num_logit_rows, .in = d,
                        .out = c.vocab_size, .y_f32 = logits_},
                       s);
}

absl::Status CudaEngine::WaitStream() {
  // Under tensor parallelism the stream holds collectives: a peer that died mid-step would leave them, and a
  // plain synchronize, waiting forever. The communicator waits with its op timeout and aborts the group
  // instead (the worker then leaves it and joins the next one).
  if (options_.tp_size > 1) ADORE_RETURN_IF_ERROR(options_.comm->Synchronize(stream_));
  ADORE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::Status CudaEngine::Forward(std::span<ForwardItem> items, std::vector<float>* logits) {
  ADORE_ASSIGN_OR_RETURN(const int64_t rows, RunForward(items, /*sampling=*/false));
  const int64_t vocab = config().vocab_size;
  logits->resize(rows * vocab);
  ADORE_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(logits->data(), logits_, rows * vocab * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  ADORE_RETURN_IF_ERROR(WaitStream());
  FinishDeviceAdore();
  return absl::OkStatus();
}

absl::Status CudaEngine::ForwardSample(std::span<ForwardItem> items, std::span<const SamplingParams> params,
                                       std::vector<int32_t>* tokens) {
  if (params.size() != items.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%d sampling params for %d forward items", params.size(), items.size()));
  }
  for (const SamplingParams& sp : params) ADORE_RETURN_IF_ERROR(sp.Validate());
  ADORE_ASSIGN_OR_RETURN(const int64_t rows, RunForward(items, /*sampling=*/true));
  for (int64_t i = 0; i < rows; ++i) {
    const SamplingParams& sp = params[i];
    k::GpuSamplingParams& g = host_sample_params_[i];
    g.temperature = sp.temperature;
    g.top_k = sp.top_k;
    g.top_p = sp.top_p;
    g.reserved = 0;
    g.seed = SplitMix64(sp.seed ^ SplitMix64(static_cast<uint64_t>(items[i].seq->next_pos)));
  }
  ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(sample_params_, host_sample_params_, rows * sizeof(k::GpuSamplingParams),
                                             cudaMemcpyHostToDevice, stream_));
  const int64_t vocab = config().vocab_size;
  ADORE_RETURN_IF_ERROR(k::Sample({.logits = logits_, .logits_stride = vocab, .batch = rows, .vocab = vocab,
                                   .params = sample_params_, .out_tokens = sampled_},
                                  stream_));
  ADORE_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(host_sampled_, sampled_, rows * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  ADORE_RETURN_IF_ERROR(WaitStream());
  FinishDeviceAdore();
  tokens->assign(host_sampled_, host_sampled_ + rows);
  return absl::OkStatus();
}

}  // namespace adore
