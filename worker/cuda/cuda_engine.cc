// CudaEngine: the bf16 Llama forward pass on one GPU over a batch of sequences with slot tables.
#include "worker/cuda/cuda_engine.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "common/status.h"
#include "kernels/cuda/cuda_status.h"

namespace adore {

namespace k = kernels;

namespace {

constexpr int64_t kMaxGridRows = 65535;  // row counts that become a grid's y dimension
constexpr int kDecodeSplitsPerItem = 16;  // decode partials budget per item (a lone sequence may use 64)

size_t Align256(size_t b) { return (b + 255) / 256 * 256; }
int64_t AlignInts(int64_t n) { return (n + 15) / 16 * 16; }  // 64-byte aligned int32 regions

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
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

ModelConfig Llama2_7BConfig() {
  ModelConfig c;
  c.name = "Llama-2-7B shape (synthetic)";
  c.vocab_size = 32000;
  c.hidden_size = 4096;
  c.num_layers = 32;
  c.num_heads = 32;
  c.num_kv_heads = 32;
  c.head_dim = 128;
  c.intermediate_size = 11008;
  c.max_context = 4096;
  c.rope_theta = 10000.0f;
  c.rms_norm_eps = 1e-5f;
  return c;
}

ModelConfig Llama3_8BConfig() {
  ModelConfig c;
  c.name = "Llama-3-8B shape (synthetic)";
  c.vocab_size = 128256;
  c.hidden_size = 4096;
  c.num_layers = 32;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.intermediate_size = 14336;
  c.max_context = 8192;
  c.rope_theta = 500000.0f;
  c.rms_norm_eps = 1e-5f;
  return c;
}

// Where one call's index arrays live in indices_ (device) / host_indices_ (pinned), and the counts the
// launchers need. Decode items' tokens come first in token order, then the prefill items'.
struct CudaEngine::Plan {
  int64_t n = 0, num_decode = 0, num_prefill = 0, num_logit_rows = 0;
  int64_t max_decode_slots = 0, max_prefill_q = 0;
  const int32_t* tokens = nullptr;        // [n]
  const int32_t* positions = nullptr;     // [n]
  const int32_t* rows = nullptr;          // [n] pool row of each new token
  const int32_t* logit_rows = nullptr;    // [num_logit_rows] token index of each logit row, item order
  const int32_t* dec_slot_off = nullptr;  // [num_decode + 1]
  const int32_t* pre_q_off = nullptr;     // [num_prefill + 1] relative to the first prefill token
  const int32_t* pre_slot_off = nullptr;  // [num_prefill + 1]
  const int32_t* slot_rows = nullptr;     // [total_slots] decode tables, then prefill tables
  const int32_t* slot_pos = nullptr;      // [total_slots]
};

CudaEngine::~CudaEngine() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  blas_.reset();
  if (arena_ != nullptr) cudaFree(arena_);
  if (indices_ != nullptr) cudaFree(indices_);
  if (host_indices_ != nullptr) cudaFreeHost(host_indices_);
  if (host_sample_params_ != nullptr) cudaFreeHost(host_sample_params_);
  if (host_sampled_ != nullptr) cudaFreeHost(host_sampled_);
  pool_.reset();
  weights_.reset();
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::StatusOr<std::unique_ptr<CudaEngine>> CudaEngine::Create(const ModelWeights& weights,
                                                               const CudaEngineOptions& options) {
  ADORE_RETURN_IF_ERROR(CheckConfig(weights.config));
  ADORE_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  std::unique_ptr<CudaEngine> engine(new CudaEngine());
  ADORE_ASSIGN_OR_RETURN(engine->weights_, CudaWeights::Upload(weights));
  return Finish(std::move(engine), options);
}

absl::StatusOr<std::unique_ptr<CudaEngine>> CudaEngine::CreateSynthetic(const ModelConfig& config, uint64_t seed,
                                                                        const CudaEngineOptions& options) {
  ADORE_RETURN_IF_ERROR(CheckConfig(config));
  ADORE_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  std::unique_ptr<CudaEngine> engine(new CudaEngine());
  ADORE_ASSIGN_OR_RETURN(engine->weights_, CudaWeights::Synthetic(config, seed));
  return Finish(std::move(engine), options);
}

absl::StatusOr<std::unique_ptr<CudaEngine>> CudaEngine::Finish(std::unique_ptr<CudaEngine> engine,
                                                               const CudaEngineOptions& options) {
  CudaEngineOptions& o = engine->options_;
  o = options;
  if (o.max_tokens <= 0 || o.max_tokens > kMaxGridRows || o.max_batch <= 0 || o.max_batch > kMaxGridRows ||
      o.max_logit_rows <= 0 || o.max_slots < 0 || o.kv_rows < 0 || o.kv_bytes < 0 ||
      !(o.kv_memory_fraction > 0.0 && o.kv_memory_fraction <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CUDA engine options: max_tokens %d and max_batch %d must be in [1, %d], max_logit_rows %d >= 1, "
        "kv_memory_fraction %g in (0, 1]",
        o.max_tokens, o.max_batch, kMaxGridRows, o.max_logit_rows, o.kv_memory_fraction));
  }
  ADORE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&engine->stream_, cudaStreamNonBlocking));
  ADORE_ASSIGN_OR_RETURN(engine->blas_, k::Blas::Create());
  ADORE_RETURN_IF_ERROR(engine->AllocateWorkspaces());

  const ModelConfig& c = engine->config();
  const int64_t kv_dim = c.num_kv_heads * c.head_dim;
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

  // Index staging: tokens, positions, rows (max_tokens each), logit rows, three offset arrays, slot tables.
  const int64_t ints = 3 * AlignInts(o.max_tokens) + AlignInts(o.max_logit_rows) + 3 * AlignInts(o.max_batch + 1) +
                       2 * AlignInts(o.max_slots);
  engine->indices_capacity_ = static_cast<size_t>(ints);
  // cuda_runtime_api.h (plain C++) only has the void** forms.
  auto as_void = [](auto** p) { return reinterpret_cast<void**>(p); };
  ADORE_CUDA_RETURN_IF_ERROR(cudaMalloc(as_void(&engine->indices_), ints * sizeof(int32_t)));
  ADORE_CUDA_RETURN_IF_ERROR(cudaMallocHost(as_void(&engine->host_indices_), ints * sizeof(int32_t)));
  ADORE_CUDA_RETURN_IF_ERROR(
      cudaMallocHost(as_void(&engine->host_sample_params_), o.max_batch * sizeof(k::GpuSamplingParams)));
  ADORE_CUDA_RETURN_IF_ERROR(cudaMallocHost(as_void(&engine->host_sampled_), o.max_batch * sizeof(int32_t)));
  ADORE_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return engine;
}

absl::Status CudaEngine::AllocateWorkspaces() {
  const ModelConfig& c = config();
  const CudaEngineOptions& o = options_;
  const int64_t T = o.max_tokens, L = o.max_logit_rows, B = o.max_batch;
  const int64_t d = c.hidden_size, q_dim = c.num_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  const int64_t ff = c.intermediate_size;
  attn_workspace_bytes_ =
      std::max(k::DecodeAttentionWorkspaceBytes(B, c.num_heads, c.head_dim, kDecodeSplitsPerItem, 0),
               k::DecodeAttentionWorkspaceBytes(1, c.num_heads, c.head_dim, 64, 0));
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
  return absl::OkStatus();
}

absl::StatusOr<int64_t> CudaEngine::RunForward(std::span<ForwardItem> items, bool sampling) {
  const ModelConfig& c = config();
  const CudaEngineOptions& o = options_;
  ADORE_CUDA_RETURN_IF_ERROR(cudaSetDevice(o.device));
  // Validate everything before touching any state, so a failed call changes nothing.
  ADORE_ASSIGN_OR_RETURN(const ForwardShape shape, CheckForwardItems(items, c));
  const int64_t n = shape.num_tokens, num_logit_rows = shape.num_logit_rows, total_slots = shape.num_slots;
  for (size_t i = 0; i < items.size(); ++i) {
    if (sampling && items[i].all_logits) {
      return absl::InvalidArgumentError(absl::StrFormat("forward item %d: all_logits cannot be sampled", i));
    }
    if (items[i].policy != nullptr) {
      return absl::UnimplementedError(absl::StrFormat(
          "forward item %d: release policies (kv_budget) are not supported by the CUDA engine yet", i));
    }
  }
  if (static_cast<int64_t>(items.size()) > o.max_batch || n > o.max_tokens || num_logit_rows > o.max_logit_rows ||
      total_slots > o.max_slots) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "forward call of %d items, %d tokens, %d logit rows, %d slots exceeds the engine's max_batch %d, "
        "max_tokens %d, max_logit_rows %d or max_slots %d",
        items.size(), n, num_logit_rows, total_slots, o.max_batch, o.max_tokens, o.max_logit_rows, o.max_slots));
  }
  // The pinned staging is rewritten below; a call that failed midway may still be copying from it.
  ADORE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  ADORE_ASSIGN_OR_RETURN(std::vector<int32_t> new_rows, pool_->Allocate(n));

  // Decode items (one token) first, then prefill items; logit rows stay in item order.
  std::vector<size_t> order;
  order.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].tokens.size() == 1) order.push_back(i);
  }
  Plan plan;
  plan.n = n;
  plan.num_decode = static_cast<int64_t>(order.size());
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].tokens.size() != 1) order.push_back(i);
  }
  plan.num_prefill = static_cast<int64_t>(items.size()) - plan.num_decode;
  plan.num_logit_rows = num_logit_rows;

  const int64_t off_tokens = 0, off_pos = off_tokens + AlignInts(n), off_rows = off_pos + AlignInts(n);
  const int64_t off_logit = off_rows + AlignInts(n), off_dec = off_logit + AlignInts(num_logit_rows);
  const int64_t off_preq = off_dec + AlignInts(plan.num_decode + 1);
  const int64_t off_pres = off_preq + AlignInts(plan.num_prefill + 1);
  const int64_t off_srows = off_pres + AlignInts(plan.num_prefill + 1);
  const int64_t off_spos = off_srows + AlignInts(total_slots);
  const int64_t used = off_spos + total_slots;
  if (static_cast<size_t>(used) > indices_capacity_) return absl::InternalError("index staging overflow");
  int32_t* h = host_indices_;

  std::vector<int64_t> item_start(items.size());
  int64_t t = 0, cursor = 0;
  for (size_t j = 0; j < order.size(); ++j) {
    const ForwardItem& it = items[order[j]];
    SequenceKv& seq = *it.seq;
    item_start[order[j]] = t;
    for (int32_t tok : it.tokens) {
      h[off_tokens + t] = tok;
      h[off_pos + t] = seq.next_pos++;
      h[off_rows + t] = new_rows[t];
      seq.rows.push_back(new_rows[t]);
      seq.pos.push_back(h[off_pos + t]);
      ++t;
    }
    const bool decode = static_cast<int64_t>(j) < plan.num_decode;
    const int64_t idx = decode ? static_cast<int64_t>(j) : static_cast<int64_t>(j) - plan.num_decode;
    h[(decode ? off_dec : off_pres) + idx] = static_cast<int32_t>(cursor);
    if (!decode) h[off_preq + idx] = static_cast<int32_t>(item_start[order[j]] - plan.num_decode);
    std::copy(seq.rows.begin(), seq.rows.end(), h + off_srows + cursor);
    std::copy(seq.pos.begin(), seq.pos.end(), h + off_spos + cursor);
    cursor += seq.num_slots();
    if (decode) {
      plan.max_decode_slots = std::max(plan.max_decode_slots, seq.num_slots());
      h[off_dec + idx + 1] = static_cast<int32_t>(cursor);
    } else {
      plan.max_prefill_q = std::max<int64_t>(plan.max_prefill_q, it.tokens.size());
      h[off_pres + idx + 1] = static_cast<int32_t>(cursor);
      h[off_preq + idx + 1] = static_cast<int32_t>(t - plan.num_decode);
    }
  }
  if (plan.num_decode == 0) h[off_dec] = 0;
  if (plan.num_prefill == 0) h[off_pres] = h[off_preq] = 0;
  int64_t r = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const int64_t len = static_cast<int64_t>(items[i].tokens.size());
    if (items[i].all_logits) {
      for (int64_t x = 0; x < len; ++x) h[off_logit + r++] = static_cast<int32_t>(item_start[i] + x);
    } else {
      h[off_logit + r++] = static_cast<int32_t>(item_start[i] + len - 1);
    }
  }

  ADORE_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(indices_, host_indices_, used * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  plan.tokens = indices_ + off_tokens;
  plan.positions = indices_ + off_pos;
  plan.rows = indices_ + off_rows;
  plan.logit_rows = indices_ + off_logit;
  plan.dec_slot_off = indices_ + off_dec;
  plan.pre_q_off = indices_ + off_preq;
  plan.pre_slot_off = indices_ + off_pres;
  plan.slot_rows = indices_ + off_srows;
  plan.slot_pos = indices_ + off_spos;
  ADORE_RETURN_IF_ERROR(RunLayers(plan));
  return num_logit_rows;
}

absl::Status CudaEngine::RunLayers(const Plan& p) {
  const ModelConfig& c = config();
  const int64_t n = p.n, d = c.hidden_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t q_dim = nh * hd, kv_dim = nkv * hd, qkv_dim = q_dim + 2 * kv_dim, ff = c.intermediate_size;
  const float eps = c.rms_norm_eps, scale = 1.0f / std::sqrt(static_cast<float>(hd));
  cudaStream_t s = stream_;

  ADORE_RETURN_IF_ERROR(k::Embedding(
      {.table = weights_->token_embd(), .vocab = c.vocab_size, .dim = d, .ids = p.tokens, .n = n, .out_f32 = residual_},
      s));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const CudaLayerWeights& w = weights_->layer(l);
    ADORE_RETURN_IF_ERROR(k::AddRmsNorm(
        {.residual = residual_, .weight = w.attn_norm, .n = n, .dim = d, .eps = eps, .out = hidden_}, s));
    ADORE_RETURN_IF_ERROR(
        blas_->Linear({.x = hidden_, .w = w.wqkv, .n = n, .in = d, .out = qkv_dim, .y_bf16 = qkv_}, s));
    // Q and K heads are adjacent at the start of each QKV row: one launch rotates both.
    ADORE_RETURN_IF_ERROR(k::Rope({.x = qkv_, .row_stride = qkv_dim, .positions = p.positions, .n = n,
                                   .num_heads = nh + nkv, .head_dim = hd, .rot_dim = hd, .theta = c.rope_theta},
                                  s));
    ADORE_RETURN_IF_ERROR(k::KvWrite({.k = qkv_ + q_dim, .v = qkv_ + q_dim + kv_dim, .src_stride = qkv_dim,
                                      .rows = p.rows, .n = n, .row_dim = kv_dim, .k_cache = pool_->k(l),
                                      .v_cache = pool_->v(l), .num_rows = pool_->num_rows()},
                                     s));
    if (p.num_decode > 0) {
      k::DecodeAttentionArgs a;
      a.q = qkv_;
      a.q_stride = qkv_dim;
      a.q_pos = p.positions;
      a.k_cache = pool_->k(l);
      a.v_cache = pool_->v(l);
      a.num_rows = pool_->num_rows();
      a.slot_offsets = p.dec_slot_off;
      a.slot_rows = p.slot_rows;
      a.slot_pos = p.slot_pos;
      a.batch = p.num_decode;
      a.num_heads = nh;
      a.num_kv_heads = nkv;
      a.head_dim = hd;
      a.max_slots = p.max_decode_slots;
      a.scale = scale;
      a.out = attn_;
      a.out_stride = q_dim;
      a.workspace = attn_workspace_;
      a.workspace_bytes = attn_workspace_bytes_;
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
      ADORE_RETURN_IF_ERROR(k::PrefillAttention(a, s));
    }
    // The residual stream is float32: the output projections add straight into it.
    ADORE_RETURN_IF_ERROR(blas_->Linear(
        {.x = attn_, .w = w.wo, .n = n, .in = q_dim, .out = d, .y_f32 = residual_, .accumulate = true}, s));
    ADORE_RETURN_IF_ERROR(k::AddRmsNorm(
        {.residual = residual_, .weight = w.ffn_norm, .n = n, .dim = d, .eps = eps, .out = hidden_}, s));
    ADORE_RETURN_IF_ERROR(
        blas_->Linear({.x = hidden_, .w = w.w_gate_up, .n = n, .in = d, .out = 2 * ff, .y_bf16 = gate_up_}, s));
    ADORE_RETURN_IF_ERROR(k::SwiGlu({.gate = gate_up_, .up = gate_up_ + ff, .out = act_, .n = n, .width = ff,
                                     .gate_stride = 2 * ff, .up_stride = 2 * ff, .out_stride = ff},
                                    s));
    ADORE_RETURN_IF_ERROR(blas_->Linear(
        {.x = act_, .w = w.w_down, .n = n, .in = ff, .out = d, .y_f32 = residual_, .accumulate = true}, s));
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

absl::Status CudaEngine::Forward(std::span<ForwardItem> items, std::vector<float>* logits) {
  ADORE_ASSIGN_OR_RETURN(const int64_t rows, RunForward(items, /*sampling=*/false));
  const int64_t vocab = config().vocab_size;
  logits->resize(rows * vocab);
  ADORE_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(logits->data(), logits_, rows * vocab * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  ADORE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
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
  ADORE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  tokens->assign(host_sampled_, host_sampled_ + rows);
  return absl::OkStatus();
}

}  // namespace adore
