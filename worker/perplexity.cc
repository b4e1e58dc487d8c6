// Sliding-window perplexity on the CPU engine.
#include "worker/perplexity.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <cmath>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_format.h"
#include "common/status.h"

namespace adore {

namespace {

// Targets scored per forward call. Bounds the logits buffer (rows x vocab floats: 100 MB at 512 rows for
// a 49k vocabulary) while keeping the LM-head product large enough for BLAS.
constexpr int64_t kScoreChunk = 512;

}  // namespace

absl::Status PerplexityOptions::Validate() const {
  if (context < 2) return absl::InvalidArgumentError(absl::StrFormat("context must be >= 2, got %d", context));
  if (stride < 1 || stride > context) {
    return absl::InvalidArgumentError(
        absl::StrFormat("stride must be in [1, context = %d], got %d", context, stride));
  }
  return absl::OkStatus();
}

std::vector<PerplexityWindow> PlanPerplexityWindows(int64_t num_tokens, const PerplexityOptions& options) {
  std::vector<PerplexityWindow> windows;
  if (num_tokens < 2) return windows;
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < num_tokens; begin += options.stride) {
    const int64_t end = std::min(begin + options.context, num_tokens);
    windows.push_back(PerplexityWindow{begin, std::max(prev_end, begin + 1), end});
    prev_end = end;
    if (end == num_tokens) break;
  }
  return windows;
}

double TokenNll(std::span<const float> logits, int32_t target) {
  double max_logit = logits[0];
  for (float v : logits) max_logit = std::max(max_logit, static_cast<double>(v));
  double sum = 0.0;
  for (float v : logits) sum += std::exp(static_cast<double>(v) - max_logit);
  return max_logit + std::log(sum) - static_cast<double>(logits[target]);
}

absl::StatusOr<PerplexityResult> ComputePerplexity(Engine& engine, std::span<const int32_t> tokens,
                                                   const PerplexityOptions& options,
                                                   const PerplexityProgress& on_window) {
  ADORE_RETURN_IF_ERROR(options.Validate());
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n < 2) return absl::InvalidArgumentError(absl::StrFormat("need at least 2 tokens, got %d", n));
  const int64_t vocab = engine.config().vocab_size;
  // The last target is never fed to the model, so the engine would not check it.
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrFormat("token %d has id %d outside the vocabulary [0, %d)", i, tokens[i], vocab));
    }
  }
  const std::vector<PerplexityWindow> windows = PlanPerplexityWindows(n, options);
  const auto t0 = std::chrono::steady_clock::now();

  PerplexityResult result;
  result.num_tokens = n;
  result.num_windows = static_cast<int64_t>(windows.size());
  std::vector<float> logits;
  for (size_t w = 0; w < windows.size(); ++w) {
    const PerplexityWindow& win = windows[w];
    SequenceKv seq;
    absl::Cleanup release = [&] { engine.Release(seq); };
    // Target t is predicted by the logits of token t - 1, so the window feeds [begin, end - 1): the
    // context part [begin, score_begin - 1) without logits, then the scored part with a row per token.
    if (const int64_t ctx = win.score_begin - 1 - win.begin; ctx > 0) {
      ForwardItem item{&seq, tokens.subspan(win.begin, ctx), /*all_logits=*/false};
      ADORE_RETURN_IF_ERROR(engine.Forward(std::span<ForwardItem>(&item, 1), &logits));
    }
    for (int64_t first = win.score_begin; first < win.end; first += kScoreChunk) {
      const int64_t count = std::min(kScoreChunk, win.end - first);
      ForwardItem item{&seq, tokens.subspan(first - 1, count), /*all_logits=*/true};
      ADORE_RETURN_IF_ERROR(engine.Forward(std::span<ForwardItem>(&item, 1), &logits));
      for (int64_t j = 0; j < count; ++j) {
        result.nll_sum += TokenNll(std::span<const float>(&logits[j * vocab], vocab), tokens[first + j]);
      }
      result.num_scored += count;
    }
    result.tokens_processed += win.end - 1 - win.begin;
    if (on_window) on_window(static_cast<int64_t>(w) + 1, result.num_windows, result.tokens_processed);
  }
  result.mean_nll = result.nll_sum / static_cast<double>(result.num_scored);
  result.ppl = std::exp(result.mean_nll);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

absl::StatusOr<PerplexityResult> ComputeStreamingPerplexity(Engine& engine, std::span<const int32_t> tokens,
                                                            const ReleaseConfig& config,
                                                            const PerplexityProgress& on_step) {
  const std::span<const int32_t> streams[] = {tokens};
  return ComputeStreamingPerplexityBatch(engine, streams, config, on_step);
}

absl::StatusOr<PerplexityResult> ComputeStreamingPerplexityBatch(Engine& engine,
                                                                 std::span<const std::span<const int32_t>> streams,
                                                                 const ReleaseConfig& config,
                                                                 const PerplexityProgress& on_step) {
  if (streams.empty()) return absl::InvalidArgumentError("streaming perplexity needs at least one stream");
  for (size_t b = 0; b < streams.size(); ++b) {
    if (streams[b].size() < 2) {
      return absl::InvalidArgumentError(absl::StrFormat("streaming perplexity: stream %d has fewer than 2 tokens", b));
    }
  }
  ADORE_RETURN_IF_ERROR(config.Validate(engine.config().max_context));
  const size_t num = streams.size();
  std::vector<std::unique_ptr<ReleasePolicy>> policies(num);
  if (config.kind != PolicyKind::kFull) {
    for (auto& p : policies) {
      ADORE_ASSIGN_OR_RETURN(p, engine.MakePolicy(config));
    }
  }
  const int64_t vocab = engine.config().vocab_size;
  const auto t0 = std::chrono::steady_clock::now();
  PerplexityResult r;
  r.num_windows = static_cast<int64_t>(num);
  int64_t longest = 0, total_steps = 0;
  for (std::span<const int32_t> s : streams) {
    r.num_tokens += static_cast<int64_t>(s.size());
    longest = std::max<int64_t>(longest, s.size());
    total_steps += static_cast<int64_t>(s.size()) - 1;
  }
  std::vector<SequenceKv> seqs(num);
  absl::Cleanup release = [&] {
    for (SequenceKv& s : seqs) engine.Release(s);
  };
  std::vector<float> logits;
  std::vector<ForwardItem> items;
  std::vector<size_t> owners;
  for (int64_t t = 0; t + 1 < longest; ++t) {
    items.clear();
    owners.clear();
    for (size_t b = 0; b < num; ++b) {
      if (t + 1 >= static_cast<int64_t>(streams[b].size())) continue;
      items.push_back({&seqs[b], streams[b].subspan(t, 1), false, policies[b].get(), policies[b] ? config.kv_budget : 0});
      owners.push_back(b);
    }
    ADORE_RETURN_IF_ERROR(engine.Forward(std::span<ForwardItem>(items), &logits));
    double step_nll = 0.0;
    const int64_t num_owners = static_cast<int64_t>(owners.size());
#pragma omp parallel for reduction(+ : step_nll) if (num_owners > 1)
    for (int64_t x = 0; x < num_owners; ++x) {
      step_nll += TokenNll(std::span<const float>(&logits[x * vocab], vocab), streams[owners[x]][t + 1]);
    }
    r.nll_sum += step_nll;
    r.num_scored += static_cast<int64_t>(owners.size());
    r.tokens_processed += static_cast<int64_t>(owners.size());
    if (on_step && ((t + 1) % 256 == 0 || t + 2 == longest)) on_step(r.num_scored, total_steps, r.tokens_processed);
  }
  for (size_t b = 0; b < num; ++b) {
    if (policies[b]) {
      r.released += policies[b]->stats().released;
      r.rebuilt += policies[b]->stats().rebuilt;
    }
    r.max_kv_slots = std::max(r.max_kv_slots, OccupiedSlots(seqs[b]));
  }
  r.mean_nll = r.nll_sum / r.num_scored;
  r.ppl = std::exp(r.mean_nll);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace adore
