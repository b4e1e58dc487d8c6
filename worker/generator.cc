// GenerateBatch: chunked prefill, then batched decode with per-sequence samplers.
#include "worker/generator.h"

#include <algorithm>
#include <chrono>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_format.h"
#include "common/status.h"

namespace adore {

namespace {
double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

absl::StatusOr<std::vector<GenerationResult>> GenerateBatch(CpuEngine& engine,
                                                            std::span<const GenerationRequest> requests,
                                                            const TokenCallback& on_token,
                                                            GenerationStats* stats, int32_t prefill_chunk) {
  const int64_t vocab = engine.config().vocab_size;
  for (size_t i = 0; i < requests.size(); ++i) {
    if (requests[i].prompt.empty()) return absl::InvalidArgumentError(absl::StrFormat("request %d: empty prompt", i));
    if (requests[i].max_tokens <= 0) {
      return absl::InvalidArgumentError(absl::StrFormat("request %d: max_tokens must be > 0", i));
    }
    ADORE_RETURN_IF_ERROR(requests[i].sampling.Validate());
  }
  GenerationStats local_stats;
  GenerationStats& st = stats ? *stats : local_stats;
  std::vector<SequenceKv> seqs(requests.size());
  absl::Cleanup release = [&] {
    for (SequenceKv& s : seqs) engine.Release(s);
  };
  std::vector<Sampler> samplers;
  for (const GenerationRequest& r : requests) samplers.emplace_back(r.sampling);
  std::vector<GenerationResult> results(requests.size());
  std::vector<int32_t> last(requests.size());
  std::vector<float> logits;

  auto accept = [&](size_t i, int32_t token) -> bool {  // returns true while the sequence goes on
    const GenerationRequest& r = requests[i];
    if (std::find(r.stop_ids.begin(), r.stop_ids.end(), token) != r.stop_ids.end()) {
      results[i].finish_reason = "stop";
      return false;
    }
    results[i].tokens.push_back(token);
    ++st.generated_tokens;
    if (on_token) on_token(static_cast<int32_t>(i), token);
    last[i] = token;
    if (static_cast<int32_t>(results[i].tokens.size()) >= r.max_tokens) {
      results[i].finish_reason = "length";
      return false;
    }
    return true;
  };

  std::vector<size_t> live;
  auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < requests.size(); ++i) {
    const std::vector<int32_t>& p = requests[i].prompt;
    for (size_t off = 0; off < p.size(); off += prefill_chunk) {
      ForwardItem item{&seqs[i], std::span<const int32_t>(p).subspan(off, std::min<size_t>(prefill_chunk, p.size() - off))};
      ADORE_RETURN_IF_ERROR(engine.Forward(std::span<ForwardItem>(&item, 1), &logits));
    }
    st.prompt_tokens += p.size();
    if (accept(i, samplers[i].Sample(std::span<const float>(logits.data(), vocab)))) live.push_back(i);
  }
  st.prefill_seconds += SecondsSince(t0);

  t0 = std::chrono::steady_clock::now();
  std::vector<ForwardItem> items;
  while (!live.empty()) {
    items.clear();
    for (size_t i : live) items.push_back(ForwardItem{&seqs[i], std::span<const int32_t>(&last[i], 1)});
    ADORE_RETURN_IF_ERROR(engine.Forward(std::span<ForwardItem>(items), &logits));
    ++st.decode_steps;
    std::vector<size_t> still;
    for (size_t j = 0; j < live.size(); ++j) {
      const size_t i = live[j];
      if (accept(i, samplers[i].Sample(std::span<const float>(&logits[j * vocab], vocab)))) {
        still.push_back(i);
      } else {
        engine.Release(seqs[i]);
      }
    }
    live.swap(still);
  }
  st.decode_seconds += SecondsSince(t0);
  return results;
}

}  // namespace adore
