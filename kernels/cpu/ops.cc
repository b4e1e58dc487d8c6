// CPU float32 implementations of the engine's op set (see kernels/ops.h).
#include "kernels/ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace adore::kernels {

bool EmbeddingRef(const float* table, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n,
                  float* out) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) return false;
    std::copy_n(table + static_cast<int64_t>(ids[i]) * dim, dim, out + i * dim);
  }
  return true;
}

void RmsNormRef(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float* row = x + i * dim;
    double sum_sq = 0.0;
    for (int64_t j = 0; j < dim; ++j) sum_sq += static_cast<double>(row[j]) * row[j];
    const float inv = 1.0f / std::sqrt(static_cast<float>(sum_sq / dim) + eps);
    for (int64_t j = 0; j < dim; ++j) out[i * dim + j] = row[j] * inv * weight[j];
  }
}

void AddRmsNormRef(float* residual, const float* x, const float* weight, int64_t n, int64_t dim,
                   float eps, float* out) {
  if (x != nullptr) {
    for (int64_t i = 0; i < n * dim; ++i) residual[i] += x[i];
  }
  RmsNormRef(residual, weight, n, dim, eps, out);
}

void MatMulRef(const float* x, const float* w, int64_t n, int64_t in, int64_t out, float* y,
               bool accumulate) {
  const float beta = accumulate ? 1.0f : 0.0f;
  if (n == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, w, in, x, 1, beta, y, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in, beta, y, out);
  }
}

void RopeRef(float* x, const int32_t* positions, int64_t n, int64_t num_heads, int64_t head_dim,
             int64_t rot_dim, float theta) {
  std::vector<float> inv_freq(rot_dim / 2);
  for (int64_t j = 0; j < rot_dim / 2; ++j) {
    inv_freq[j] = std::pow(theta, -2.0f * static_cast<float>(j) / static_cast<float>(rot_dim));
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < rot_dim / 2; ++j) {
      // Angles in float like the references (HF computes pos * inv_freq in fp32).
      const float angle = static_cast<float>(positions[i]) * inv_freq[j];
      const float c = std::cos(angle), s = std::sin(angle);
      for (int64_t h = 0; h < num_heads; ++h) {
        float* p = x + (i * num_heads + h) * head_dim + 2 * j;
        const float a = p[0], b = p[1];
        p[0] = a * c - b * s;
        p[1] = a * s + b * c;
      }
    }
  }
}

void SwiGluRef(const float* gate, const float* up, int64_t n, int64_t width, float* out) {
  for (int64_t i = 0; i < n * width; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void AttentionRef(const AttentionArgs& a) {
  const int64_t group = a.num_heads / a.num_kv_heads;
  const int64_t d = a.head_dim;
  std::vector<float> local;
  float* probs = a.scratch;
  if (probs == nullptr) {
    local.resize(a.num_slots);
    probs = local.data();
  }
  for (int64_t i = 0; i < a.num_q; ++i) {
    for (int64_t h = 0; h < a.num_heads; ++h) {
      const float* q = a.q + (i * a.num_heads + h) * d;
      const int64_t kvh = h / group;
      float max_score = -INFINITY;
      for (int64_t s = 0; s < a.num_slots; ++s) {
        const int32_t row = a.slot_rows[s];
        if (row < 0 || a.slot_pos[s] > a.q_pos[i]) {
          probs[s] = -INFINITY;
          continue;
        }
        const float* k = a.k_cache + (static_cast<int64_t>(row) * a.num_kv_heads + kvh) * d;
        float dot = 0.0f;
        // Reassociating the sum lets the compiler vectorize it (strict IEEE order would not).
#pragma omp simd reduction(+ : dot)
        for (int64_t t = 0; t < d; ++t) dot += q[t] * k[t];
        probs[s] = dot * a.scale;
        max_score = std::max(max_score, probs[s]);
      }
      float* o = a.out + (i * a.num_heads + h) * d;
      std::fill_n(o, d, 0.0f);
      if (max_score == -INFINITY) continue;  // nothing visible: output zeros
      double denom = 0.0;
      for (int64_t s = 0; s < a.num_slots; ++s) {
        probs[s] = probs[s] == -INFINITY ? 0.0f : std::exp(probs[s] - max_score);
        denom += probs[s];
      }
      const float inv = static_cast<float>(1.0 / denom);
      for (int64_t s = 0; s < a.num_slots; ++s) {
        if (probs[s] == 0.0f) continue;
        const float p = probs[s] * inv;
        const float* v = a.v_cache + (static_cast<int64_t>(a.slot_rows[s]) * a.num_kv_heads + kvh) * d;
        for (int64_t t = 0; t < d; ++t) o[t] += p * v[t];
        if (a.slot_attn_mass != nullptr) a.slot_attn_mass[s] += p;
      }
    }
  }
}

}  // namespace adore::kernels
