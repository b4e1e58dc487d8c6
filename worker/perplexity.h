// Perplexity of a token stream with the Hugging Face sliding-window recipe ("Perplexity of fixed-length
// models"): windows of `context` tokens moving by `stride`, each scoring only the tokens it adds.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/engine.h"
#include "worker/release_policy.h"

namespace adore {

struct PerplexityOptions {
  int64_t context = 1024;  // window length in tokens, >= 2 and <= the model's context
  int64_t stride = 512;    // window step, in [1, context]

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// One window: the model reads tokens [begin, end) from a fresh cache and is scored on the targets
// [score_begin, end), each predicted from every earlier token of the window. Tokens [begin, score_begin)
// are context only (scored by an earlier window).
struct PerplexityWindow {
  int64_t begin = 0, score_begin = 0, end = 0;
};

// The HF loop: begin = 0, stride, 2 * stride, ...; end = min(begin + context, num_tokens); the window scores
// the targets past the previous window's end, stopping after the window that reaches num_tokens. Labels
// are shifted inside a window, so a window's first token is never its target: score_begin =
// max(previous end, begin + 1). With stride < context every token in [1, num_tokens) is scored exactly
// once; with stride == context each window's first token goes unscored, as in HF. Empty for
// num_tokens < 2. Options must be valid.
std::vector<PerplexityWindow> PlanPerplexityWindows(int64_t num_tokens, const PerplexityOptions& options);

// -log softmax(logits)[target], computed in double. `target` must be a valid index.
double TokenNll(std::span<const float> logits,  // [vocab]
                int32_t target);

struct PerplexityResult {
  int64_t num_tokens = 0;      // tokens in the stream
  int64_t num_scored = 0;      // targets scored (num_tokens - 1 when stride < context)
  int64_t num_windows = 0;
  int64_t tokens_processed = 0;  // tokens run through the model, context included
  double nll_sum = 0.0;        // sum of -log p(target | window prefix), nats
  double mean_nll = 0.0;       // nll_sum / num_scored
  double ppl = 0.0;            // exp(mean_nll)
  double seconds = 0.0;
  // Streaming runs with a release policy: tokens released / rebuilt over all streams, and the most KV
  // slots any stream held at its end.
  int64_t released = 0, rebuilt = 0, max_kv_slots = 0;
};

// Called after each window: (windows done, total windows, tokens run through the model so far).
using PerplexityProgress = std::function<void(int64_t, int64_t, int64_t)>;

// Runs every window of `tokens` through `engine` (one sequence at a time, released after each window; the
// pool needs `context` free rows). Only the scored tail's logits are computed. INVALID_ARGUMENT for bad
// options, fewer than 2 tokens or a token id outside the vocabulary; engine errors (OUT_OF_RANGE when
// `context` passes the model's context, RESOURCE_EXHAUSTED) pass through.
absl::StatusOr<PerplexityResult> ComputePerplexity(Engine& engine, std::span<const int32_t> tokens,
                                                   const PerplexityOptions& options,
                                                   const PerplexityProgress& on_window = nullptr);

// Token-by-token perplexity with a release policy active: one sequence decodes the stream one token per
// step, its cache held at `config.kv_budget` slots by the policy (unbounded for `full`); target t is scored
// from the logits of step t - 1, so every token in [1, num_tokens) is scored once, each with the whole
// (policy-filtered) history. `on_step` gets (tokens done, total, tokens done). The pool needs
// min(num_tokens, kv_budget) free rows. INVALID_ARGUMENT for a bad config or fewer than 2 tokens.
absl::StatusOr<PerplexityResult> ComputeStreamingPerplexity(Engine& engine, std::span<const int32_t> tokens,
                                                            const ReleaseConfig& config,
                                                            const PerplexityProgress& on_step = nullptr);

// The same over several streams at once, each its own sequence with its own policy, all decoding in one
// batch per step (streams may differ in length); the result pools every stream's scored tokens
// (num_windows = number of streams). The pool needs the streams' rows together.
absl::StatusOr<PerplexityResult> ComputeStreamingPerplexityBatch(Engine& engine,
                                                                 std::span<const std::span<const int32_t>> streams,
                                                                 const ReleaseConfig& config,
                                                                 const PerplexityProgress& on_step = nullptr);

}  // namespace adore
