// ModelConfig::Validate: rejects configs the engines cannot run before any tensor is allocated.
#include "common/model_config.h"

#include <cmath>
#include <initializer_list>
#include <utility>

#include "absl/strings/str_format.h"

namespace adore {
namespace {

// Every dimension stays below 2^30 so that the product of any two fits int64 without overflow checks
// in shape arithmetic downstream.
constexpr int64_t kMaxDim = int64_t{1} << 30;

absl::Status CheckDim(const char* field, int64_t v) {
  if (v <= 0 || v > kMaxDim) {
    return absl::InvalidArgumentError(
        absl::StrFormat("model config: %s = %d is out of range (1..%d)", field, v, kMaxDim));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ModelConfig::Validate() const {
  for (const auto& [field, v] : {std::pair<const char*, int64_t>{"vocab_size", vocab_size},
                                 {"hidden_size", hidden_size},
                                 {"num_layers", num_layers},
                                 {"num_heads", num_heads},
                                 {"num_kv_heads", num_kv_heads},
                                 {"head_dim", head_dim},
                                 {"intermediate_size", intermediate_size},
                                 {"max_context", max_context}}) {
    absl::Status s = CheckDim(field, v);
    if (!s.ok()) return s;
  }
  if (num_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model config: num_heads (%d) is not a multiple of num_kv_heads (%d)", num_heads, num_kv_heads));
  }
  // RoPE rotates pairs of dimensions.
  if (head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("model config: head_dim = %d must be even for RoPE", head_dim));
  }
  if (num_heads * head_dim > kMaxDim) {
    return absl::InvalidArgumentError(
        absl::StrFormat("model config: num_heads * head_dim = %d is out of range", num_heads * head_dim));
  }
  if (!std::isfinite(rope_theta) || rope_theta <= 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrFormat("model config: rope_theta = %g must be positive and finite", rope_theta));
  }
  if (!std::isfinite(rms_norm_eps) || rms_norm_eps <= 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrFormat("model config: rms_norm_eps = %g must be positive and finite", rms_norm_eps));
  }
  return absl::OkStatus();
}

}  // namespace adore
