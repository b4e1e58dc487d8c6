// CpuEngine: the float32 Llama forward pass over a batch of sequences.
#include "worker/cpu_engine.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_format.h"
#include "common/status.h"
#include "kernels/ops.h"
#include "worker/comm/communicator.h"

namespace adore {

namespace k = kernels;

namespace {

// Replaces `name` ([rows, cols], row-major) with rows [r0, r0 + nr) or, when `by_cols`, columns
// [c0, c0 + nc) of every row.
absl::Status Slice(ModelWeights& w, const std::string& name, int64_t rows, int64_t cols, bool by_cols, int64_t begin,
                   int64_t count) {
  auto it = w.tensors.find(name);
  if (it == w.tensors.end()) return absl::NotFoundError(absl::StrFormat("tensor %s not found", name));
  Tensor& t = it->second;
  if (t.shape.size() != 2 || t.shape[0] != rows || t.shape[1] != cols) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tensor %s: expected shape [%d, %d] to shard it", name, rows, cols));
  }
  Tensor out;
  if (by_cols) {
    out.shape = {rows, count};
    out.data.resize(rows * count);
    for (int64_t r = 0; r < rows; ++r) std::copy_n(&t.data[r * cols + begin], count, &out.data[r * count]);
  } else {
    out.shape = {count, cols};
    out.data.assign(t.data.begin() + begin * cols, t.data.begin() + (begin + count) * cols);
  }
  t = std::move(out);
  return absl::OkStatus();
}

// Keeps rank `rank` of `size`'s shard of the attention and MLP weights (Megatron): wq / wk / wv rows and wo
// columns of its heads, w_gate / w_up rows and w_down columns of its MLP columns.
absl::Status ShardWeights(ModelWeights& w, int rank, int size) {
  const ModelConfig& c = w.config;
  const int64_t d = c.hidden_size, hd = c.head_dim, ff = c.intermediate_size;
  const int64_t q_dim = c.num_heads * hd, kv_dim = c.num_kv_heads * hd;
  const int64_t q_part = q_dim / size, kv_part = kv_dim / size, ff_part = ff / size;
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrFormat("blk.%d.", i);
    ADORE_RETURN_IF_ERROR(Slice(w, p + "attn_q.weight", q_dim, d, false, rank * q_part, q_part));
    ADORE_RETURN_IF_ERROR(Slice(w, p + "attn_k.weight", kv_dim, d, false, rank * kv_part, kv_part));
    ADORE_RETURN_IF_ERROR(Slice(w, p + "attn_v.weight", kv_dim, d, false, rank * kv_part, kv_part));
    ADORE_RETURN_IF_ERROR(Slice(w, p + "attn_output.weight", d, q_dim, true, rank * q_part, q_part));
    ADORE_RETURN_IF_ERROR(Slice(w, p + "ffn_gate.weight", ff, d, false, rank * ff_part, ff_part));
    ADORE_RETURN_IF_ERROR(Slice(w, p + "ffn_up.weight", ff, d, false, rank * ff_part, ff_part));
    ADORE_RETURN_IF_ERROR(Slice(w, p + "ffn_down.weight", d, ff, true, rank * ff_part, ff_part));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CpuEngine>> CpuEngine::Create(ModelWeights weights,
                                                             const CpuEngineOptions& options) {
  ADORE_RETURN_IF_ERROR(weights.config.Validate());
  const ModelConfig& c = weights.config;
  const int tp = options.tp_size;
  if (tp < 1 || options.tp_rank < 0 || options.tp_rank >= tp) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tensor parallelism: tp_rank %d outside [0, tp_size %d)", options.tp_rank, tp));
  }
  if (tp > 1) {
    const std::pair<const char*, int64_t> dims[] = {
        {"num_heads", c.num_heads}, {"num_kv_heads", c.num_kv_heads}, {"intermediate_size", c.intermediate_size}};
    for (const auto& [name, value] : dims) {
      if (value % tp != 0) {
        return absl::InvalidArgumentError(
            absl::StrFormat("tensor parallelism: %s %d is not divisible by tp_size %d", name, value, tp));
      }
    }
    if (options.comm == nullptr) {
      return absl::InvalidArgumentError(absl::StrFormat("tensor parallelism: tp_size %d needs a communicator", tp));
    }
    if (options.comm->world_size() != tp || options.comm->rank() != options.tp_rank) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "tensor parallelism: communicator is rank %d of %d, the engine rank %d of %d", options.comm->rank(),
          options.comm->world_size(), options.tp_rank, tp));
    }
    ADORE_RETURN_IF_ERROR(ShardWeights(weights, options.tp_rank, tp));
  }
  const int64_t kv_rows = options.kv_rows > 0 ? options.kv_rows : weights.config.max_context;
  std::unique_ptr<CpuEngine> engine(new CpuEngine(std::move(weights), kv_rows, options));
  ADORE_RETURN_IF_ERROR(engine->BindWeights());
  return engine;
}

CpuEngine::CpuEngine(ModelWeights weights, int64_t kv_rows, const CpuEngineOptions& options)
    : weights_(std::move(weights)),
      pool_(weights_.config.num_layers, kv_rows, weights_.config.num_kv_heads / options.tp_size,
            weights_.config.head_dim),
      tp_rank_(options.tp_rank),
      tp_size_(options.tp_size),
      comm_(options.tp_size > 1 ? options.comm : nullptr) {}

absl::Status CpuEngine::AllReduce(float* data, size_t count) {
  if (comm_ == nullptr || count == 0) return absl::OkStatus();
  return comm_->AllReduceSum(data, count, comm::CommDataType::kFloat32, /*stream=*/nullptr);
}

absl::Status CpuEngine::BindWeights() {
  auto get = [this](const std::string& name) -> absl::StatusOr<const float*> {
    ADORE_ASSIGN_OR_RETURN(const Tensor* t, weights_.Get(name));
    return t->ptr();
  };
  ADORE_ASSIGN_OR_RETURN(token_embd_, get("token_embd.weight"));
  ADORE_ASSIGN_OR_RETURN(output_norm_, get("output_norm.weight"));
  if (weights_.config.tie_embeddings) {
    lm_head_ = token_embd_;
  } else {
    ADORE_ASSIGN_OR_RETURN(lm_head_, get("output.weight"));
  }
  layers_.resize(weights_.config.num_layers);
  for (int64_t i = 0; i < weights_.config.num_layers; ++i) {
    const std::string p = absl::StrFormat("blk.%d.", i);
    Layer& l = layers_[i];
    ADORE_ASSIGN_OR_RETURN(l.attn_norm, get(p + "attn_norm.weight"));
    ADORE_ASSIGN_OR_RETURN(l.wq, get(p + "attn_q.weight"));
    ADORE_ASSIGN_OR_RETURN(l.wk, get(p + "attn_k.weight"));
    ADORE_ASSIGN_OR_RETURN(l.wv, get(p + "attn_v.weight"));
    ADORE_ASSIGN_OR_RETURN(l.wo, get(p + "attn_output.weight"));
    ADORE_ASSIGN_OR_RETURN(l.ffn_norm, get(p + "ffn_norm.weight"));
    ADORE_ASSIGN_OR_RETURN(l.w_gate, get(p + "ffn_gate.weight"));
    ADORE_ASSIGN_OR_RETURN(l.w_up, get(p + "ffn_up.weight"));
    ADORE_ASSIGN_OR_RETURN(l.w_down, get(p + "ffn_down.weight"));
  }
  return absl::OkStatus();
}

absl::Status CpuEngine::Forward(std::span<ForwardItem> items, std::vector<float>* logits) {
  const ModelConfig& c = weights_.config;
  // Validate and plan everything before touching any state, so a failed call changes nothing. With tensor
  // parallelism rank 0's policies plan and the other ranks apply its plans (one release schedule).
  ADORE_ASSIGN_OR_RETURN(const PlannedForward plan, PlanForward(items, c, pool_.rows(), comm_));
  const int64_t n = plan.num_tokens, num_logit_rows = plan.num_logit_rows;
  // This rank's share of the heads and MLP columns (everything with tp_size 1).
  const int64_t d = c.hidden_size, hd = c.head_dim, nh = c.num_heads / tp_size_, nkv = c.num_kv_heads / tp_size_;
  const int64_t q_dim = nh * hd, kv_dim = nkv * hd, ff = c.intermediate_size / tp_size_;
  std::vector<int32_t> tokens(n), positions(n), rows(n), token_item(n);
  std::vector<int64_t> item_first(items.size());
  {
    int64_t t = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      const PlannedItem& p = plan.items[i];
      item_first[i] = t;
      for (size_t j = 0; j < p.tokens.size(); ++j, ++t) {
        tokens[t] = p.tokens[j];
        positions[t] = p.positions[j];
        rows[t] = p.rows[j];
        token_item[t] = static_cast<int32_t>(i);
      }
    }
  }
  // Attention mass per (new token, slot of its sequence), summed over layers and heads, and the attn_norm
  // rows of the layers a policy asks for, for policies (rebuilt tokens are not observed).
  std::vector<std::vector<float>> token_mass(n), token_features(n);
  for (int64_t t = 0; t < n; ++t) {
    const int32_t i = token_item[t];
    if (items[i].policy == nullptr || t - item_first[i] < plan.items[i].num_rebuild) continue;
    token_mass[t].assign(items[i].seq->num_slots(), 0.0f);
    token_features[t].assign(items[i].policy->feature_layers().size() * c.hidden_size, 0.0f);
  }

  std::vector<float> x(n * d), h(n * d), q(n * q_dim), kk(n * kv_dim), vv(n * kv_dim), attn(n * q_dim);
  std::vector<float> gate(n * ff), up(n * ff);
  // Tensor parallelism: this rank's partial product of wo / w_down, summed over ranks before the residual.
  std::vector<float> partial(tp_size_ > 1 ? n * d : 0);
  auto add_output = [&](const float* in, const float* w_out, int64_t in_dim) -> absl::Status {
    if (tp_size_ == 1) {
      k::MatMulRef(in, w_out, n, in_dim, d, x.data(), /*accumulate=*/true);
      return absl::OkStatus();
    }
    k::MatMulRef(in, w_out, n, in_dim, d, partial.data());
    ADORE_RETURN_IF_ERROR(AllReduce(partial.data(), partial.size()));
    for (int64_t i = 0; i < n * d; ++i) x[i] += partial[i];
    return absl::OkStatus();
  };
  k::EmbeddingRef(token_embd_, c.vocab_size, d, tokens.data(), n, x.data());
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  for (int64_t l = 0; l < c.num_layers; ++l) {
    const Layer& w = layers_[l];
    k::RmsNormRef(x.data(), w.attn_norm, n, d, c.rms_norm_eps, h.data());
    for (int64_t t = 0; t < n; ++t) {
      if (token_features[t].empty()) continue;
      const std::span<const int32_t> want = items[token_item[t]].policy->feature_layers();
      for (size_t j = 0; j < want.size(); ++j) {
        if (want[j] == l) std::copy_n(&h[t * d], d, &token_features[t][j * d]);
      }
    }
    k::MatMulRef(h.data(), w.wq, n, d, q_dim, q.data());
    k::MatMulRef(h.data(), w.wk, n, d, kv_dim, kk.data());
    k::MatMulRef(h.data(), w.wv, n, d, kv_dim, vv.data());
    k::RopeRef(q.data(), positions.data(), n, nh, hd, hd, c.rope_theta);
    k::RopeRef(kk.data(), positions.data(), n, nkv, hd, hd, c.rope_theta);
    float* k_cache = pool_.k(l);
    float* v_cache = pool_.v(l);
    for (int64_t t = 0; t < n; ++t) {
      std::copy_n(&kk[t * kv_dim], kv_dim, k_cache + static_cast<int64_t>(rows[t]) * kv_dim);
      std::copy_n(&vv[t * kv_dim], kv_dim, v_cache + static_cast<int64_t>(rows[t]) * kv_dim);
    }
#pragma omp parallel if (n > 1)
    {
      std::vector<float> scratch;
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < n; ++t) {
        const SequenceKv& seq = *items[token_item[t]].seq;
        scratch.resize(seq.rows.size());
        k::AttentionArgs a;
        a.q = &q[t * q_dim];
        a.q_pos = &positions[t];
        a.k_cache = k_cache;
        a.v_cache = v_cache;
        a.slot_rows = seq.rows.data();
        a.slot_pos = seq.pos.data();
        a.num_q = 1;
        a.num_slots = seq.num_slots();
        a.num_heads = nh;
        a.num_kv_heads = nkv;
        a.head_dim = hd;
        a.scale = scale;
        a.out = &attn[t * q_dim];
        a.scratch = scratch.data();
        a.slot_attn_mass = token_mass[t].empty() ? nullptr : token_mass[t].data();
        k::AttentionRef(a);
      }
    }
    ADORE_RETURN_IF_ERROR(add_output(attn.data(), w.wo, q_dim));
    k::RmsNormRef(x.data(), w.ffn_norm, n, d, c.rms_norm_eps, h.data());
    k::MatMulRef(h.data(), w.w_gate, n, d, ff, gate.data());
    k::MatMulRef(h.data(), w.w_up, n, d, ff, up.data());
    k::SwiGluRef(gate.data(), up.data(), n, ff, gate.data());
    ADORE_RETURN_IF_ERROR(add_output(gate.data(), w.w_down, ff));
  }

  // Final norm and LM head only for the rows whose logits are wanted.
  std::vector<float> sel(num_logit_rows * d);
  {
    int64_t r = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      const PlannedItem& p = plan.items[i];
      const int64_t len = p.num_new(), end = item_first[i] + static_cast<int64_t>(p.tokens.size());
      const int64_t count = items[i].all_logits ? len : 1;
      k::RmsNormRef(&x[(end - count) * d], output_norm_, count, d, c.rms_norm_eps, &sel[r * d]);
      r += count;
    }
  }
  logits->resize(num_logit_rows * c.vocab_size);
  k::MatMulRef(sel.data(), lm_head_, num_logit_rows, d, c.vocab_size, logits->data());

  // Each rank's mass covers its own heads: sum them (one all-reduce over every observed token's vector, in
  // the same order on every rank), so rank 0's policies, which plan for the group, see the mass of all
  // heads, and every rank's policies observe the same numbers (see ObserveForward).
  if (tp_size_ > 1) {
    size_t total = 0;
    for (const std::vector<float>& m : token_mass) total += m.size();
    if (total > 0) {
      std::vector<float> flat;
      flat.reserve(total);
      for (const std::vector<float>& m : token_mass) flat.insert(flat.end(), m.begin(), m.end());
      ADORE_RETURN_IF_ERROR(AllReduce(flat.data(), flat.size()));
      size_t off = 0;
      for (std::vector<float>& m : token_mass) {
        std::copy_n(flat.begin() + off, m.size(), m.begin());
        off += m.size();
      }
    }
  }
  // Scaled by the global head count: the summed mass covers all heads.
  return ObserveForward(
      items, plan, 1.0f / static_cast<float>(c.num_layers * c.num_heads),
      [&](size_t i, int64_t t) { return std::span<const float>(token_mass[item_first[i] + t]); },
      [&](size_t i, int64_t t) { return std::span<const float>(token_features[item_first[i] + t]); });
}

}  // namespace adore
