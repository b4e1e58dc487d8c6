// GenerateBatch: chunked prefill, then batched decode with per-sequence samplers.
#include "worker/generator.h"

#include <algorithm>
#include <chrono>
#include <memory>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_format.h"
#include "common/status.h"

namespace adore {

namespace {
double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

absl::StatusOr<std::vector<GenerationResult>> GenerateBatch(Engine& engine,
                                                            std::span<const GenerationRequest> requests,
                                                            const TokenCallback& on_token,
                                                            GenerationStats* stats, int32_t prefill_chunk,
                                                            int64_t policy_prefill_chunk) {
  const int64_t vocab = engine.config().vocab_size;
  for (size_t i = 0; i < requests.size(); ++i) {
    if (requests[i].prompt.empty()) return absl::InvalidArgumentError(absl::StrFormat("request %d: empty prompt", i));
    if (requests[i].max_tokens <= 0) {
      return absl::InvalidArgumentError(absl::StrFormat("request %d: max_tokens must be > 0", i));
    }
    ADORE_RETURN_IF_ERROR(requests[i].sampling.Validate());
    absl::Status rs = requests[i].release.Validate(engine.config().max_context);
    if (!rs.ok()) return absl::Status(rs.code(), absl::StrFormat("request %d: %s", i, rs.message()));
  }
  // One policy per request with a releasing policy; null = full attention.
  std::vector<std::unique_ptr<ReleasePolicy>> policies(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    if (requests[i].release.kind == PolicyKind::kFull) continue;
    ADORE_ASSIGN_OR_RETURN(policies[i], engine.MakePolicy(requests[i].release));
  }

  GenerationStats local_stats;
  GenerationStats& st = stats ? *stats : local_stats;
  std::vector<SequenceKv> seqs(requests.size());
  absl::Cleanup release = [&] {
    for (SequenceKv& s : seqs) engine.Release(s);
  };
  auto make_item = [&](size_t i, std::span<const int32_t> tokens) {
    return ForwardItem{&seqs[i], tokens, false, policies[i].get(), policies[i] ? requests[i].release.kv_budget : 0};
  };
  std::vector<Sampler> samplers;
  for (const GenerationRequest& r : requests) samplers.emplace_back(r.sampling);
  std::vector<GenerationResult> results(requests.size());
  auto finish = [&](size_t i) {  // record a request's KV figures before its sequence is released
    if (policies[i]) results[i].release_stats = policies[i]->stats();
    results[i].kv_slots = OccupiedSlots(seqs[i]);
  };
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
  auto end = [&](size_t i) {
    finish(i);
    engine.Release(seqs[i]);
  };

  std::vector<size_t> live;
  auto t0 = std::chrono::steady_clock::now();
  std::vector<size_t> stepped;  // requests whose prompt goes in policy chunks
  for (size_t i = 0; i < requests.size(); ++i) {
    const std::vector<int32_t>& p = requests[i].prompt;
    st.prompt_tokens += p.size();
    if (policies[i]) {
      stepped.push_back(i);
      continue;
    }
    for (size_t off = 0; off < p.size(); off += prefill_chunk) {
      ForwardItem item{&seqs[i], std::span<const int32_t>(p).subspan(off, std::min<size_t>(prefill_chunk, p.size() - off))};
      ADORE_RETURN_IF_ERROR(engine.Forward(std::span<ForwardItem>(&item, 1), &logits));
    }
    if (accept(i, samplers[i].Sample(std::span<const float>(logits.data(), vocab)))) {
      live.push_back(i);
    } else {
      end(i);
    }
  }
  std::vector<ForwardItem> items;
  std::vector<size_t> owners;
  std::vector<size_t> done(requests.size(), 0);
  while (true) {
    items.clear();
    owners.clear();
    for (size_t i : stepped) {
      const std::vector<int32_t>& p = requests[i].prompt;
      if (done[i] >= p.size()) continue;
      items.push_back(NextPolicyPromptChunk(engine, &seqs[i], policies[i].get(), requests[i].release.kv_budget,
                                            policy_prefill_chunk, p, &done[i]));
      owners.push_back(i);
    }
    if (items.empty()) break;
    ADORE_RETURN_IF_ERROR(engine.Forward(std::span<ForwardItem>(items), &logits));
    for (size_t x = 0; x < owners.size(); ++x) {
      const size_t i = owners[x];
      if (done[i] != requests[i].prompt.size()) continue;
      if (accept(i, samplers[i].Sample(std::span<const float>(&logits[x * vocab], vocab)))) {
        live.push_back(i);
      } else {
        end(i);
      }
    }
  }
  std::sort(live.begin(), live.end());
  st.prefill_seconds += SecondsSince(t0);

  t0 = std::chrono::steady_clock::now();
  while (!live.empty()) {
    items.clear();
    for (size_t i : live) items.push_back(make_item(i, std::span<const int32_t>(&last[i], 1)));
    ADORE_RETURN_IF_ERROR(engine.Forward(std::span<ForwardItem>(items), &logits));
    ++st.decode_steps;
    std::vector<size_t> still;
    for (size_t j = 0; j < live.size(); ++j) {
      const size_t i = live[j];
      if (accept(i, samplers[i].Sample(std::span<const float>(&logits[j * vocab], vocab)))) {
        still.push_back(i);
      } else {
        end(i);
      }
    }
    live.swap(still);
  }
  st.decode_seconds += SecondsSince(t0);
  return results;
}

}  // namespace adore
