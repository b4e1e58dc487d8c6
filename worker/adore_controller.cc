// AdoreController: loading the controller file, feature projection and the per-step GRU update;
// AdoreSequence: per-token controller state of one sequence and its release / rebuild plan.
#include "worker/adore_controller.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numeric>
#include <sstream>

#include "absl/strings/str_format.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace adore {

namespace {

using Json = nlohmann::json;

constexpr char kMagic[8] = {'A', 'D', 'O', 'R', 'E', 'C', 'T', 'L'};
constexpr uint32_t kVersion = 1;
constexpr int64_t kNumInputs = 5;  // format version 1: [log mass, cached, log age, affinity, log acc]

absl::Status Bad(std::string_view name, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrFormat("controller file %s: %s", name, what));
}

uint32_t ReadU32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);  // little-endian hosts only (x86-64, aarch64)
  return v;
}

// The gate math below vectorizes only without -ftrapping-math (GCC will not if-convert the clamp's float
// compares otherwise); nothing here relies on FP exceptions.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

// exp(v) with ~2 ulp error, written as plain arithmetic so the compiler vectorizes the gate loops
// (std::exp / std::tanh calls do not vectorize without -ffast-math, and they dominated the step's cost).
inline float FastExp(float v) {
  v = v < -87.0f ? -87.0f : v;  // conditional selects, not std::min/max: those keep the loop scalar
  v = v > 88.0f ? 88.0f : v;
  // Round to nearest by the 1.5 * 2^23 trick (plain arithmetic, vectorizes; |v * log2 e| < 2^22).
  const float n = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (v - n * 0.693359375f) + n * 2.12194440e-4f;  // v - n ln2, in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}
inline float FastSigmoid(float v) { return 1.0f / (1.0f + FastExp(-v)); }
inline float FastTanh(float v) { return 1.0f - 2.0f / (FastExp(2.0f * v) + 1.0f); }

// One GRU step and score for n tokens; the hot loop of AdoreSequence::Step (see the pragma above).
void GruScoreRows(const float* x, int64_t n, int64_t ni, int64_t sd, const float* w_ih_t, const float* w_hh_t,
                  const float* b_ih, const float* b_hh, const float* score_w, float score_b, float* h,
                  float* scores) {
  const int64_t g3 = 3 * sd;
  std::vector<float> gi(g3), gh(g3);
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x + t * ni;
    float* ht = h + t * sd;
    // Gate pre-activations, accumulated over inputs with the transposed weights so each inner loop runs
    // over the 3 * state_dim outputs (vectorized).
    std::copy_n(b_ih, g3, gi.data());
    std::copy_n(b_hh, g3, gh.data());
    for (int64_t i = 0; i < ni; ++i) {
      const float xi = xt[i];
      const float* w = &w_ih_t[i * g3];
      for (int64_t o = 0; o < g3; ++o) gi[o] += w[o] * xi;
    }
    for (int64_t i = 0; i < sd; ++i) {
      const float hi = ht[i];
      const float* w = &w_hh_t[i * g3];
      for (int64_t o = 0; o < g3; ++o) gh[o] += w[o] * hi;
    }
    const float* __restrict a = gi.data();
    const float* __restrict b = gh.data();
    float* __restrict hs = ht;
    for (int64_t o = 0; o < sd; ++o) {  // torch.nn.GRUCell: gates r, z, n
      const float r = FastSigmoid(a[o] + b[o]);
      const float z = FastSigmoid(a[sd + o] + b[sd + o]);
      const float c = FastTanh(a[2 * sd + o] + r * b[2 * sd + o]);
      hs[o] = (1.0f - z) * c + z * hs[o];
    }
    float s = score_b;
    for (int64_t o = 0; o < sd; ++o) s += score_w[o] * ht[o];
    for (int64_t i = 0; i < ni; ++i) s += score_w[sd + i] * xt[i];
    scores[t] = s;
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

}  // namespace

absl::StatusOr<std::unique_ptr<AdoreController>> AdoreController::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("controller file %s: cannot be opened", path));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return Bad(path, "read error");
  return Parse(ss.str(), path);
}

absl::StatusOr<std::unique_ptr<AdoreController>> AdoreController::Parse(std::string_view bytes,
                                                                        std::string_view name) {
  if (bytes.size() < 16 || std::memcmp(bytes.data(), kMagic, 8) != 0) {
    return Bad(name, "not a controller file (magic 'ADORECTL' missing)");
  }
  const uint32_t version = ReadU32(bytes.data() + 8);
  if (version != kVersion) {
    return Bad(name, absl::StrFormat("version: %d is not supported (expected %d)", version, kVersion));
  }
  const uint64_t header_len = ReadU32(bytes.data() + 12);
  if (16 + header_len > bytes.size()) {
    return Bad(name, absl::StrFormat("header: %d bytes announced, file has %d after the preamble", header_len,
                                     bytes.size() - 16));
  }
  const Json j = Json::parse(bytes.substr(16, header_len), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Bad(name, "header: not a JSON object");
  const std::string_view data = bytes.substr(16 + header_len);

  std::unique_ptr<AdoreController> c(new AdoreController());
  AdoreControllerConfig& cfg = c->config_;
  auto get_int = [&](const char* field, int64_t lo, int64_t hi, int64_t* out) -> absl::Status {
    auto it = j.find(field);
    if (it == j.end() || !it->is_number_integer()) return Bad(name, absl::StrFormat("%s: missing or not an integer", field));
    const int64_t v = it->get<int64_t>();
    if (v < lo || v > hi) return Bad(name, absl::StrFormat("%s: %d outside [%d, %d]", field, v, lo, hi));
    *out = v;
    return absl::OkStatus();
  };
  auto get_float = [&](const char* field, float* out) -> absl::Status {
    auto it = j.find(field);
    if (it == j.end() || !it->is_number()) return Bad(name, absl::StrFormat("%s: missing or not a number", field));
    const double v = it->get<double>();
    if (!std::isfinite(v)) return Bad(name, absl::StrFormat("%s: not finite", field));
    *out = static_cast<float>(v);
    return absl::OkStatus();
  };
  {
    auto it = j.find("feature_layers");
    if (it == j.end() || !it->is_array() || it->empty() || it->size() > 64) {
      return Bad(name, "feature_layers: missing, empty or not an array of at most 64 layers");
    }
    for (const Json& l : *it) {
      if (!l.is_number_integer() || l.get<int64_t>() < 0 || l.get<int64_t>() > 4096) {
        return Bad(name, "feature_layers: every entry must be a layer index in [0, 4096]");
      }
      cfg.feature_layers.push_back(static_cast<int32_t>(l.get<int64_t>()));
    }
  }
  ADORE_RETURN_IF_ERROR(get_int("hidden_size", 1, 1 << 16, &cfg.hidden_size));
  ADORE_RETURN_IF_ERROR(get_int("key_dim", 1, 1024, &cfg.key_dim));
  ADORE_RETURN_IF_ERROR(get_int("state_dim", 1, 1024, &cfg.state_dim));
  ADORE_RETURN_IF_ERROR(get_int("num_inputs", kNumInputs, kNumInputs, &cfg.num_inputs));
  ADORE_RETURN_IF_ERROR(get_int("num_sink", 0, 1 << 20, &cfg.num_sink));
  ADORE_RETURN_IF_ERROR(get_int("num_recent", 0, 1 << 20, &cfg.num_recent));
  ADORE_RETURN_IF_ERROR(get_float("mass_eps", &cfg.mass_eps));
  ADORE_RETURN_IF_ERROR(get_float("mass_coef", &cfg.mass_coef));
  ADORE_RETURN_IF_ERROR(get_float("age_coef", &cfg.age_coef));
  if (!(cfg.mass_eps > 0.0f)) return Bad(name, "mass_eps: must be positive");

  auto tensors = j.find("tensors");
  if (tensors == j.end() || !tensors->is_array()) return Bad(name, "tensors: missing or not an array");
  const int64_t f = cfg.feature_dim(), kd = cfg.key_dim, sd = cfg.state_dim, ni = cfg.num_inputs;
  struct Want {
    const char* name;
    std::vector<int64_t> shape;
    std::vector<float>* dst;
  };
  std::vector<float> score_b;
  const Want wants[] = {
      {"key_proj.weight", {kd, f}, &c->key_w_},        {"key_proj.bias", {kd}, &c->key_b_},
      {"query_proj.weight", {kd, f}, &c->query_w_},    {"query_proj.bias", {kd}, &c->query_b_},
      {"gru.weight_ih", {3 * sd, ni}, &c->gru_w_ih_},  {"gru.weight_hh", {3 * sd, sd}, &c->gru_w_hh_},
      {"gru.bias_ih", {3 * sd}, &c->gru_b_ih_},        {"gru.bias_hh", {3 * sd}, &c->gru_b_hh_},
      {"score.weight", {1, sd + ni}, &c->score_w_},    {"score.bias", {1}, &score_b},
  };
  for (const Want& w : wants) {
    const Json* entry = nullptr;
    for (const Json& t : *tensors) {
      if (t.is_object() && t.contains("name") && t["name"].is_string() && t["name"].get<std::string>() == w.name) {
        entry = &t;
        break;
      }
    }
    if (entry == nullptr) return Bad(name, absl::StrFormat("tensor %s: missing", w.name));
    if (!entry->contains("shape") || !(*entry)["shape"].is_array() || !entry->contains("offset") ||
        !(*entry)["offset"].is_number_unsigned()) {
      return Bad(name, absl::StrFormat("tensor %s: needs a 'shape' array and a non-negative 'offset'", w.name));
    }
    std::vector<int64_t> shape;
    for (const Json& d : (*entry)["shape"]) {
      if (!d.is_number_integer()) return Bad(name, absl::StrFormat("tensor %s: shape entries must be integers", w.name));
      shape.push_back(d.get<int64_t>());
    }
    if (shape != w.shape) {
      std::string got, want;
      for (int64_t d : shape) got += absl::StrFormat("%s%d", got.empty() ? "" : ",", d);
      for (int64_t d : w.shape) want += absl::StrFormat("%s%d", want.empty() ? "" : ",", d);
      return Bad(name, absl::StrFormat("tensor %s: shape [%s], expected [%s]", w.name, got, want));
    }
    const uint64_t offset = (*entry)["offset"].get<uint64_t>();
    const uint64_t count = std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
    if (offset % 4 != 0 || offset > data.size() || count * 4 > data.size() - offset) {
      return Bad(name, absl::StrFormat("tensor %s: %d floats at byte %d run past the %d bytes of data", w.name,
                                       count, offset, data.size()));
    }
    w.dst->resize(count);
    std::memcpy(w.dst->data(), data.data() + offset, count * 4);
    for (float v : *w.dst) {
      if (!std::isfinite(v)) return Bad(name, absl::StrFormat("tensor %s: holds a non-finite value", w.name));
    }
  }
  c->score_b_ = score_b[0];
  // Transposed GRU weights: [inputs, 3 * state_dim], so UpdateStates' inner loops run over the outputs.
  auto transpose = [](const std::vector<float>& w, int64_t rows, int64_t cols) {
    std::vector<float> t(w.size());
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t col = 0; col < cols; ++col) t[col * rows + r] = w[r * cols + col];
    }
    return t;
  };
  c->gru_w_ih_t_ = transpose(c->gru_w_ih_, 3 * sd, ni);
  c->gru_w_hh_t_ = transpose(c->gru_w_hh_, 3 * sd, sd);
  return c;
}

void AdoreController::Project(const float* features, float* key, float* query) const {
  const int64_t f = config_.feature_dim(), kd = config_.key_dim;
  for (int pass = 0; pass < 2; ++pass) {
    float* out = pass == 0 ? key : query;
    if (out == nullptr) continue;
    const float* w = pass == 0 ? key_w_.data() : query_w_.data();
    const float* b = pass == 0 ? key_b_.data() : query_b_.data();
    for (int64_t o = 0; o < kd; ++o) {
      const float* row = w + o * f;
      float s = 0.0f;
      for (int64_t i = 0; i < f; ++i) s += row[i] * features[i];
      out[o] = s + b[o];
    }
  }
}

void AdoreController::UpdateStates(const float* x, int64_t n, float* h, float* scores) const {
  GruScoreRows(x, n, config_.num_inputs, config_.state_dim, gru_w_ih_t_.data(), gru_w_hh_t_.data(),
               gru_b_ih_.data(), gru_b_hh_.data(), score_w_.data(), score_b_, h, scores);
}

AdoreSequence::AdoreSequence(const AdoreController& controller) : ctl_(controller) {}

absl::Status AdoreSequence::AddToken(std::span<const float> features) {
  const AdoreControllerConfig& c = ctl_.config();
  if (static_cast<int64_t>(features.size()) != c.feature_dim()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "adore controller: token features have %d floats, expected %d (%d layers x %d)", features.size(),
        c.feature_dim(), c.feature_layers.size(), c.hidden_size));
  }
  const int64_t kd = c.key_dim;
  keys_.resize((num_tokens_ + 1) * kd);
  queries_.resize(queries_.size() + kd);
  ctl_.Project(features.data(), &keys_[num_tokens_ * kd], &queries_[queries_.size() - kd]);
  states_.resize((num_tokens_ + 1) * c.state_dim, 0.0f);
  acc_.push_back(0.0f);
  scores_.push_back(0.0f);
  ++num_tokens_;
  return absl::OkStatus();
}

absl::Status AdoreSequence::Step(int64_t query_pos, std::span<const float> mass, std::span<const uint8_t> cached,
                                 float mass_scale) {
  const AdoreControllerConfig& c = ctl_.config();
  if (query_pos <= last_query_ || query_pos >= num_tokens_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "adore controller: step for position %d, expected one in (%d, %d)", query_pos, last_query_, num_tokens_));
  }
  const int64_t n = query_pos + 1;
  if (static_cast<int64_t>(mass.size()) != n || static_cast<int64_t>(cached.size()) != n) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "adore controller: step at position %d needs %d masses and cached flags, got %d and %d", query_pos, n,
        mass.size(), cached.size()));
  }
  const int64_t kd = c.key_dim, ni = c.num_inputs;
  // Query feature of `query_pos`: pending ones are stored in position order from last_query_ + 1.
  const float* q = &queries_[(query_pos - last_query_ - 1) * kd];
  const float inv_sqrt_kd = 1.0f / std::sqrt(static_cast<float>(kd));
  while (static_cast<int64_t>(age_term_.size()) < n) {
    age_term_.push_back(c.age_coef * std::log1p(static_cast<float>(age_term_.size())));
  }
  x_.resize(n * ni);
  for (int64_t i = 0; i < n; ++i) {
    const float a = mass[i] * mass_scale;
    acc_[i] += a;
    const float* k = &keys_[i * kd];
    float aff = 0.0f;
    for (int64_t d = 0; d < kd; ++d) aff += k[d] * q[d];
    float* x = &x_[i * ni];
    x[0] = c.mass_coef * std::log(a + c.mass_eps);
    x[1] = cached[i] ? 1.0f : 0.0f;
    x[2] = age_term_[query_pos - i];
    x[3] = aff * inv_sqrt_kd;
    x[4] = c.mass_coef * std::log(acc_[i] + c.mass_eps);
  }
  ctl_.UpdateStates(x_.data(), n, states_.data(), scores_.data());
  queries_.erase(queries_.begin(), queries_.begin() + (query_pos - last_query_) * kd);
  last_query_ = query_pos;
  return absl::OkStatus();
}

std::span<const float> AdoreSequence::state(int64_t pos) const {
  const int64_t sd = ctl_.config().state_dim;
  return {&states_[pos * sd], static_cast<size_t>(sd)};
}

std::span<const float> AdoreSequence::key_feature(int64_t pos) const {
  const int64_t kd = ctl_.config().key_dim;
  return {&keys_[pos * kd], static_cast<size_t>(kd)};
}

absl::StatusOr<AdoreReleasePlan> AdoreSequence::PlanRelease(std::span<const uint8_t> cached, int64_t budget,
                                                            int64_t num_new, int64_t max_rebuild, int64_t num_sink,
                                                            int64_t num_recent) const {
  const int64_t n = num_steps();
  if (static_cast<int64_t>(cached.size()) != n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("adore controller: plan needs %d cached flags, got %d", n, cached.size()));
  }
  if (num_new < 0 || max_rebuild < 0 || num_sink < 0 || num_recent < 0) {
    return absl::InvalidArgumentError("adore controller: plan arguments must be non-negative");
  }
  AdoreReleasePlan plan;
  if (n + num_new <= budget) return plan;  // everything fits: keep all (nothing was ever released)
  std::vector<uint8_t> prot(n, 0);
  int64_t num_prot = 0;
  for (int64_t i = 0; i < n; ++i) {
    prot[i] = i < num_sink || i >= n - num_recent;
    num_prot += prot[i];
  }
  const int64_t free = budget - num_new - num_prot;
  if (free < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "adore controller: budget %d cannot hold %d protected and %d new tokens", budget, num_prot, num_new));
  }
  // Higher score first; ties to the later position.
  auto better = [&](int32_t a, int32_t b) { return scores_[a] != scores_[b] ? scores_[a] > scores_[b] : a > b; };
  std::vector<int32_t> cand, released;
  for (int32_t i = 0; i < n; ++i) {
    if (prot[i]) continue;
    (cached[i] ? cand : released).push_back(i);
  }
  if (max_rebuild > 0 && !released.empty()) {
    const int64_t r = std::min<int64_t>(max_rebuild, released.size());
    std::partial_sort(released.begin(), released.begin() + r, released.end(), better);
    cand.insert(cand.end(), released.begin(), released.begin() + r);
  }
  std::sort(cand.begin(), cand.end(), better);
  std::vector<uint8_t> keep(prot);
  for (int64_t j = 0; j < std::min<int64_t>(free, cand.size()); ++j) keep[cand[j]] = 1;
  for (auto it = cand.rbegin(); it != cand.rend(); ++it) {  // lowest score first
    if (cached[*it] && !keep[*it]) plan.release.push_back(*it);
  }
  for (int32_t i : cand) {  // highest score first
    if (!cached[i] && keep[i]) plan.rebuild.push_back(i);
  }
  // Protected tokens that were released (e.g. a larger num_recent than before) come back first.
  for (int32_t i = n - 1; i >= 0; --i) {
    if (prot[i] && !cached[i]) plan.rebuild.insert(plan.rebuild.begin(), i);
  }
  return plan;
}

}  // namespace adore
