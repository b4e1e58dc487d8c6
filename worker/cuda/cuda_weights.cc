// CudaWeights: model weights as one bf16 device arena (upload, synthetic fill, download for checks).
#include "worker/cuda/cuda_weights.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_format.h"
#include "common/status.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/ops.h"

namespace adore {
namespace {

// Round to nearest even, as __float2bfloat16_rn; NaN stays NaN.
uint16_t FloatToBf16Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float Bf16BitsToFloat(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

CudaWeights::~CudaWeights() {
  if (arena_ != nullptr) cudaFree(arena_);
}

absl::Status CudaWeights::Allocate(const ModelConfig& c, int tp_rank, int tp_size) {
  ADORE_RETURN_IF_ERROR(c.Validate());
  if (tp_size < 1 || tp_rank < 0 || tp_rank >= tp_size) {
    return absl::InvalidArgumentError(absl::StrFormat("tensor parallel rank %d of %d", tp_rank, tp_size));
  }
  if (c.num_heads % tp_size != 0 || c.num_kv_heads % tp_size != 0 || c.intermediate_size % tp_size != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "tensor parallel size %d must divide the heads (%d), KV heads (%d) and MLP width (%d) of %s", tp_size,
        c.num_heads, c.num_kv_heads, c.intermediate_size, c.name));
  }
  config_ = c;
  tp_rank_ = tp_rank;
  tp_size_ = tp_size;
  const int64_t d = c.hidden_size, hd = c.head_dim;
  const int64_t q_dim = c.num_heads * hd, kv_dim = c.num_kv_heads * hd, ff = c.intermediate_size;
  const int64_t lq = q_dim / tp_size, lkv = kv_dim / tp_size, lff = ff / tp_size;
  int64_t cursor = 0;
  // `aligned` starts a new matrix on a 256-byte boundary; the pieces of a stacked matrix (Q/K/V, gate/up)
  // follow each other with no gap. A shard takes rows [row0, row0 + rows) and columns [col0, col0 + cols).
  auto add = [&](const std::string& name, int64_t rows, int64_t cols, bool aligned, int64_t row0 = 0,
                 int64_t col0 = 0, int64_t full_rows = -1, int64_t full_cols = -1) {
    if (aligned) cursor = (cursor + 127) / 128 * 128;
    slices_.push_back({name, cursor, rows, cols, row0, col0, full_rows < 0 ? rows : full_rows,
                       full_cols < 0 ? cols : full_cols});
    cursor += rows * cols;
    return slices_.size() - 1;
  };
  const size_t embd = add("token_embd.weight", c.vocab_size, d, true);
  const size_t out_norm = add("output_norm.weight", 1, d, true);
  const size_t head = c.tie_embeddings ? embd : add("output.weight", c.vocab_size, d, true);
  struct LayerSlices { size_t attn_norm, wq, wo, ffn_norm, gate, down; };
  std::vector<LayerSlices> ls(c.num_layers);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrFormat("blk.%d.", i);
    ls[i].attn_norm = add(p + "attn_norm.weight", 1, d, true);
    ls[i].wq = add(p + "attn_q.weight", lq, d, true, tp_rank * lq, 0, q_dim);
    add(p + "attn_k.weight", lkv, d, false, tp_rank * lkv, 0, kv_dim);
    add(p + "attn_v.weight", lkv, d, false, tp_rank * lkv, 0, kv_dim);
    ls[i].wo = add(p + "attn_output.weight", d, lq, true, 0, tp_rank * lq, d, q_dim);
    ls[i].ffn_norm = add(p + "ffn_norm.weight", 1, d, true);
    ls[i].gate = add(p + "ffn_gate.weight", lff, d, true, tp_rank * lff, 0, ff);
    add(p + "ffn_up.weight", lff, d, false, tp_rank * lff, 0, ff);
    ls[i].down = add(p + "ffn_down.weight", d, lff, true, 0, tp_rank * lff, d, ff);
  }
  bytes_ = static_cast<size_t>(cursor) * sizeof(__nv_bfloat16);
  const absl::Status st =
      kernels::CudaStatus(cudaMalloc(reinterpret_cast<void**>(&arena_), bytes_), "cudaMalloc(weights)");
  if (!st.ok()) {
    arena_ = nullptr;
    return absl::Status(st.code(), absl::StrFormat("%s: %.2f GiB of weights", std::string(st.message()),
                                                   bytes_ / 1073741824.0));
  }
  auto at = [&](size_t slice) -> const __nv_bfloat16* { return arena_ + slices_[slice].offset; };
  token_embd_ = at(embd);
  output_norm_ = at(out_norm);
  lm_head_ = at(head);
  layers_.resize(c.num_layers);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    layers_[i] = {at(ls[i].attn_norm), at(ls[i].wq), at(ls[i].wo), at(ls[i].ffn_norm), at(ls[i].gate),
                  at(ls[i].down)};
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CudaWeights>> CudaWeights::Upload(const ModelWeights& weights, int tp_rank,
                                                                 int tp_size) {
  std::unique_ptr<CudaWeights> w(new CudaWeights());
  ADORE_RETURN_IF_ERROR(w->Allocate(weights.config, tp_rank, tp_size));
  std::vector<uint16_t> staging;
  for (const Slice& s : w->slices_) {
    ADORE_ASSIGN_OR_RETURN(const Tensor* t, weights.Get(s.name));
    if (t->numel() != s.full_rows * s.full_cols || static_cast<int64_t>(t->data.size()) != t->numel()) {
      return absl::InvalidArgumentError(absl::StrFormat("tensor %s has %d elements, the config implies %d x %d",
                                                        s.name, t->numel(), s.full_rows, s.full_cols));
    }
    staging.resize(s.rows * s.cols);
    for (int64_t r = 0; r < s.rows; ++r) {
      const float* src = t->data.data() + (s.row0 + r) * s.full_cols + s.col0;
      for (int64_t x = 0; x < s.cols; ++x) staging[r * s.cols + x] = FloatToBf16Bits(src[x]);
    }
    ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpy(w->arena_ + s.offset, staging.data(), staging.size() * 2,
                                          cudaMemcpyHostToDevice));
  }
  return w;
}

absl::StatusOr<std::unique_ptr<CudaWeights>> CudaWeights::Synthetic(const ModelConfig& config, uint64_t seed,
                                                                    int tp_rank, int tp_size) {
  std::unique_ptr<CudaWeights> w(new CudaWeights());
  ADORE_RETURN_IF_ERROR(w->Allocate(config, tp_rank, tp_size));
  for (size_t i = 0; i < w->slices_.size(); ++i) {
    const Slice& s = w->slices_[i];
    float bound = 1.0f / std::sqrt(static_cast<float>(s.full_cols));  // the whole layer's fan-in
    float low = -bound, high = bound;
    if (EndsWith(s.name, "norm.weight")) {
      low = high = 1.0f;
    } else if (s.name == "token_embd.weight") {
      low = -1.0f;
      high = 1.0f;
    }
    kernels::FillUniformArgs a;
    a.out = w->arena_ + s.offset;
    a.n = s.rows * s.cols;
    a.low = low;
    a.high = high;
    // A tensor every rank holds whole (embeddings, norms, a replicated output) must be the same on every
    // rank, or the ranks' hidden states and samples part; a shard gets its rank's own values.
    const bool replicated = s.rows == s.full_rows && s.cols == s.full_cols;
    a.seed = seed * 0x9E3779B97F4A7C15ull + i + (replicated ? 0 : 0x100000ull * static_cast<uint64_t>(tp_rank));
    ADORE_RETURN_IF_ERROR(kernels::FillUniform(a, nullptr));
  }
  ADORE_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return w;
}

absl::StatusOr<ModelWeights> CudaWeights::Download() const {
  if (tp_size_ > 1) {
    return absl::FailedPreconditionError(
        absl::StrFormat("weights: rank %d of %d holds a shard; download the whole model from a tp_size 1 copy",
                        tp_rank_, tp_size_));
  }
  ModelWeights out;
  out.config = config_;
  std::vector<uint16_t> staging;
  for (const Slice& s : slices_) {
    staging.resize(s.rows * s.cols);
    ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpy(staging.data(), arena_ + s.offset, staging.size() * 2,
                                          cudaMemcpyDeviceToHost));
    Tensor t;
    t.shape = s.rows == 1 ? std::vector<int64_t>{s.cols} : std::vector<int64_t>{s.rows, s.cols};
    t.data.resize(staging.size());
    for (size_t i = 0; i < staging.size(); ++i) t.data[i] = Bf16BitsToFloat(staging[i]);
    out.tensors[s.name] = std::move(t);
  }
  return out;
}

}  // namespace adore
