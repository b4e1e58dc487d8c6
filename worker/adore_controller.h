// The ADORE release controller (docs/ADORE.md): a learned per-token score of future attention, kept for
// every past token of a sequence, cached or released, so the engine can release the lowest-scoring tokens
// and rebuild the best released ones. Float32 inference of tools/adore/train_controller.py.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace adore {

// Shape and input definition of a trained controller, read from its file (tools/adore/controller.bin).
struct AdoreControllerConfig {
  std::vector<int32_t> feature_layers;  // layers whose attn_norm output forms a token's features, in order
  int64_t hidden_size = 0;              // the model's d_model
  int64_t key_dim = 0;                  // key / query feature width
  int64_t state_dim = 0;                // GRU state width
  int64_t num_inputs = 5;               // GRU inputs per step (fixed by format version 1)
  float mass_eps = 1e-5f;               // inputs: mass_coef * log(a + mass_eps), age_coef * log1p(age), ...
  float mass_coef = 0.25f;
  float age_coef = 0.125f;
  int64_t num_sink = 4;    // protected set the controller was trained with: the first num_sink positions
  int64_t num_recent = 16;  // ... and the last num_recent positions (the current query included)

  // Floats per token handed to AdoreSequence::AddToken: feature_layers.size() * hidden_size.
  int64_t feature_dim() const { return static_cast<int64_t>(feature_layers.size()) * hidden_size; }
};

// Views of a controller's weights in PyTorch layout (valid while the controller lives): for uploading
// them to a device (kernels/cuda/adore_controller.h).
struct AdoreControllerWeights {
  std::span<const float> key_w, key_b, query_w, query_b;  // [key_dim, feature_dim], [key_dim]
  std::span<const float> gru_w_ih, gru_w_hh;              // [3 * state_dim, num_inputs | state_dim]
  std::span<const float> gru_b_ih, gru_b_hh;              // [3 * state_dim]
  std::span<const float> score_w;                         // [state_dim + num_inputs]
  float score_b = 0.0f;
};

// Trained weights; immutable after loading, shared by every sequence (and thread) of a worker.
class AdoreController {
 public:
  // Reads a controller file. NOT_FOUND when it cannot be opened; INVALID_ARGUMENT naming the file and the
  // offending field for anything malformed (bad magic or version, truncated header or data, bad JSON,
  // missing or mistyped field, a tensor of the wrong shape or outside the data, a non-finite weight).
  static absl::StatusOr<std::unique_ptr<AdoreController>> Load(const std::string& path);
  // The same from the file's bytes; `name` is used in error messages.
  static absl::StatusOr<std::unique_ptr<AdoreController>> Parse(std::string_view bytes, std::string_view name);

  const AdoreControllerConfig& config() const { return config_; }
  AdoreControllerWeights weights() const {
    return {key_w_, key_b_, query_w_, query_b_, gru_w_ih_, gru_w_hh_, gru_b_ih_, gru_b_hh_, score_w_, score_b_};
  }

  // features [feature_dim] -> key [key_dim] and query [key_dim] features (either output may be null).
  void Project(const float* features, float* key, float* query) const;

  // One controller step for `n` tokens: x [n, num_inputs] inputs, h [n, state_dim] states updated in place,
  // scores [n] written. Exposed for tests and benchmarks; AdoreSequence::Step builds x and calls this.
  void UpdateStates(const float* x, int64_t n, float* h, float* scores) const;

 private:
  AdoreController() = default;
  AdoreControllerConfig config_;
  // Row-major as in PyTorch: key_w [key_dim, feature_dim], gru_w_ih [3 * state_dim, num_inputs] (gates r, z,
  // n), gru_w_hh [3 * state_dim, state_dim], score_w [state_dim + num_inputs] over [h, x].
  std::vector<float> key_w_, key_b_, query_w_, query_b_;
  std::vector<float> gru_w_ih_, gru_w_hh_, gru_b_ih_, gru_b_hh_, score_w_;
  std::vector<float> gru_w_ih_t_, gru_w_hh_t_;  // transposed: [num_inputs | state_dim, 3 * state_dim]
  float score_b_ = 0.0f;
};

// Which tokens change state before the next step: positions to release (free their slots) and released
// positions to rebuild (recompute their K/V together with the new tokens).
struct AdoreReleasePlan {
  std::vector<int32_t> release;  // cached positions, lowest score first
  std::vector<int32_t> rebuild;  // released positions, highest score first
};

// One sequence's controller state, indexed by token position 0, 1, ... (not by KV slot). Per token it
// keeps the key feature, the GRU state, the accumulated attention and the latest score (200 bytes with
// key_dim 32, state_dim 16); released tokens keep theirs, so they stay scored and can be rebuilt.
// Not thread-safe; one per sequence, owned by the thread that runs the sequence.
class AdoreSequence {
 public:
  // `controller` must outlive the sequence.
  explicit AdoreSequence(const AdoreController& controller);

  int64_t num_tokens() const { return num_tokens_; }
  int64_t num_steps() const { return last_query_ + 1; }  // positions 0..num_steps()-1 have been scored

  // Registers the token at position num_tokens(). `features` [num_feature_layers, hidden_size]: the token's
  // attn_norm output (RmsNorm(x) * attn_norm.weight, the input of its q/k/v projections) at each of
  // config().feature_layers, in that order. Call it when the token is first computed (prefill or decode),
  // not again when it is rebuilt. INVALID_ARGUMENT on a size mismatch.
  absl::Status AddToken(std::span<const float> features);

  // One step for the query token at `query_pos` (added, later than the last step's; normally one step per
  // token, so prefill calls it for each prompt token in order). Updates every token at positions
  // 0..query_pos, cached or not, and rescores them.
  //   mass[i]   (i in [0, query_pos]): attention the token at position i received from this query, summed
  //             over layers and heads; 0 for tokens not in the cache.
  //   cached[i] (same range): 1 when the token's K/V was in the cache for this query (the query itself
  //             and tokens rebuilt in this step included).
  //   mass_scale: multiplies mass into the controller's input a; pass 1 / (num_layers * num_heads), so the
  //             masses of the cached tokens sum to 1 (as in training).
  // INVALID_ARGUMENT for a bad position or span size; nothing changes then.
  absl::Status Step(int64_t query_pos, std::span<const float> mass, std::span<const uint8_t> cached,
                    float mass_scale);

  // Scores of positions 0..num_steps()-1 after the latest step (higher = keep).
  std::span<const float> scores() const { return {scores_.data(), static_cast<size_t>(num_steps())}; }
  std::span<const float> state(int64_t pos) const;        // GRU state [state_dim]
  std::span<const float> key_feature(int64_t pos) const;  // [key_dim]

  // Plans the next step: `num_new` tokens will be appended and the cache holds at most `budget` slots.
  // cached [num_steps()] = current cache flags. When every scored token plus the new ones fit, nothing
  // is released. Otherwise the protected positions (the first num_sink, the last num_recent of the scored
  // ones) are kept, then the best of the cached tokens and the `max_rebuild` best released ones by score,
  // up to budget - num_new in all; cached tokens left out are released, released tokens let in are rebuilt.
  // Ties go to the later position. INVALID_ARGUMENT for a bad size or a budget the protected set and
  // the new tokens do not fit in.
  absl::StatusOr<AdoreReleasePlan> PlanRelease(std::span<const uint8_t> cached, int64_t budget, int64_t num_new,
                                               int64_t max_rebuild, int64_t num_sink, int64_t num_recent) const;

 private:
  const AdoreController& ctl_;
  int64_t num_tokens_ = 0;
  int64_t last_query_ = -1;
  std::vector<float> keys_;    // [num_tokens, key_dim]
  std::vector<float> states_;  // [num_tokens, state_dim]
  std::vector<float> acc_;     // [num_tokens] accumulated a
  std::vector<float> scores_;  // [num_tokens]
  std::vector<float> queries_;  // [num_tokens - num_steps, key_dim] query features not yet stepped
  std::vector<float> x_;        // scratch [num_tokens, num_inputs]
  std::vector<float> age_term_;  // age_coef * log1p(age), by age
};

}  // namespace adore
