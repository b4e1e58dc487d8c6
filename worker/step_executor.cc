// StepExecutor: executes the coordinator's step plans on one engine.
#include "worker/step_executor.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <span>
#include <unordered_set>

#include "absl/strings/str_format.h"
#include "common/status.h"

namespace adore {

StepExecutor::~StepExecutor() {
  for (auto& [id, live] : seqs_) engine_.Release(live->kv);
}

void StepExecutor::End(uint64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  engine_.Release(it->second->kv);
  seqs_.erase(it);
}

uint64_t StepExecutor::SlotMapHash(uint64_t id) const {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? 0 : it->second->kv.map_hash;  // kept by PlanForward: no pass over the table
}

absl::StatusOr<WorkerStepResult> StepExecutor::Step(const WorkerStep& step) {
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& c = engine_.config();
  // Validate the whole plan before changing anything.
  std::unordered_set<uint64_t> starting;
  for (const SequenceStart& s : step.start) {
    if (seqs_.count(s.id) || !starting.insert(s.id).second) {
      return absl::InvalidArgumentError(absl::StrFormat("step: sequence %d already started", s.id));
    }
    if (s.prompt.empty()) return absl::InvalidArgumentError(absl::StrFormat("step: sequence %d has an empty prompt", s.id));
    absl::Status st = s.sampling.Validate();
    if (st.ok()) st = s.release.Validate(c.max_context);
    if (!st.ok()) return absl::Status(st.code(), absl::StrFormat("step: sequence %d: %s", s.id, st.message()));
  }
  std::unordered_set<uint64_t> decoding;
  std::vector<SequenceDecode> decode = step.decode;  // kOwnSample resolved
  for (SequenceDecode& d : decode) {
    if (!seqs_.count(d.id) || !decoding.insert(d.id).second || starting.count(d.id)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("step: sequence %d cannot decode (unknown, listed twice or starting)", d.id));
    }
    if (d.token == kOwnSample) d.token = seqs_.at(d.id)->last_sample;
    if (d.token < 0 || d.token >= engine_.config().vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat("step: sequence %d: token %d to decode is not a vocabulary id",
                                                        d.id, d.token));
    }
  }
  for (uint64_t id : step.end) {
    if (decoding.count(id)) return absl::InvalidArgumentError(absl::StrFormat("step: sequence %d both ends and decodes", id));
  }
  for (uint64_t id : step.end) End(id);

  WorkerStepResult out;
  std::vector<SequenceStepResult> results;
  for (const SequenceStart& s : step.start) {
    auto live = std::make_unique<Live>(s.sampling);
    if (s.release.kind != PolicyKind::kFull) {
      ADORE_ASSIGN_OR_RETURN(live->policy, engine_.MakePolicy(s.release));
      live->budget = s.release.kv_budget;
    }
    seqs_.emplace(s.id, std::move(live));
  }
  const int64_t vocab = c.vocab_size;
  std::vector<float> logits;
  std::unordered_map<uint64_t, int32_t> sampled;
  std::unordered_map<uint64_t, absl::Status> failed;
  auto fail = [&](uint64_t id, const absl::Status& st) {
    failed[id] = st;
    End(id);
  };

  // One forward call, with its sampling: on the engine's device when it samples there (only token ids cross
  // to the host: a [batch, vocab] logit download per step costs more than a small model's whole step),
  // else the logits come back and pick() samples row x on the host.
  const bool device_sampling = engine_.samples_on_device();
  std::vector<int32_t> device_tokens;
  std::vector<SamplingParams> params;
  auto forward = [&](std::vector<ForwardItem>& items, const std::vector<uint64_t>& owners) {
    if (!device_sampling) return engine_.Forward(std::span<ForwardItem>(items), &logits);
    params.clear();
    for (uint64_t id : owners) params.push_back(seqs_.at(id)->params);
    return engine_.ForwardSample(std::span<ForwardItem>(items), params, &device_tokens);
  };
  auto pick = [&](uint64_t id, size_t x) -> int32_t {
    if (device_sampling) return device_tokens[x];
    return seqs_.at(id)->sampler.Sample(std::span<const float>(&logits[x * vocab], vocab));
  };

  // 1. Decode tokens plus the first chunk of every plain prompt, in one call; remaining chunks follow.
  std::vector<const SequenceStart*> plain, stepped;
  for (const SequenceStart& s : step.start) (seqs_.at(s.id)->policy ? stepped : plain).push_back(&s);
  std::vector<size_t> offset(plain.size(), 0);
  bool first_call = true;
  while (true) {
    std::vector<ForwardItem> items;
    std::vector<uint64_t> owners;
    std::vector<bool> last_chunk;
    if (first_call) {
      for (const SequenceDecode& d : decode) {
        Live& l = *seqs_.at(d.id);
        items.push_back({&l.kv, std::span<const int32_t>(&d.token, 1), false, l.policy.get(), l.budget});
        owners.push_back(d.id);
        last_chunk.push_back(true);
      }
    }
    for (size_t i = 0; i < plain.size(); ++i) {
      const std::vector<int32_t>& p = plain[i]->prompt;
      if (offset[i] >= p.size() || failed.count(plain[i]->id)) continue;
      const size_t len = std::min<size_t>(options_.prefill_chunk, p.size() - offset[i]);
      items.push_back({&seqs_.at(plain[i]->id)->kv, std::span<const int32_t>(p).subspan(offset[i], len)});
      owners.push_back(plain[i]->id);
      offset[i] += len;
      last_chunk.push_back(offset[i] == p.size());
    }
    if (items.empty()) break;
    first_call = false;
    absl::Status st = forward(items, owners);
    ++out.forward_calls;
    if (!st.ok()) {
      if (st.code() == absl::StatusCode::kInvalidArgument || st.code() == absl::StatusCode::kInternal) return st;
      // Pool full or context passed: fail the prompts of this call (decodes keep their state: retry them
      // one by one so one sequence's failure does not end the others).
      for (size_t x = 0; x < items.size(); ++x) {
        std::vector<float> one;
        ForwardItem item = items[x];
        const absl::Status s1 = engine_.Forward(std::span<ForwardItem>(&item, 1), &one);
        ++out.forward_calls;
        if (!s1.ok()) {
          fail(owners[x], s1);
        } else if (last_chunk[x]) {
          sampled[owners[x]] = seqs_.at(owners[x])->sampler.Sample(std::span<const float>(one.data(), vocab));
        }
      }
      continue;
    }
    for (size_t x = 0; x < owners.size(); ++x) {
      if (last_chunk[x]) sampled[owners[x]] = pick(owners[x], x);
    }
  }

  // 2. Prompts under a releasing policy: chunks as large as the options, the engine and the policy allow
  // (the policy observes every query of a chunk), all such sequences together in each call. A call past the
  // engine's per-call bounds (RESOURCE_EXHAUSTED: a refused call changes nothing) goes again in halves, so
  // large budgets in a large batch take more calls instead of failing; a lone chunk that does not fit fails
  // its sequence.
  std::function<void(std::vector<ForwardItem>&, const std::vector<uint64_t>&, const std::vector<bool>&)> run =
      [&](std::vector<ForwardItem>& items, const std::vector<uint64_t>& owners, const std::vector<bool>& last_chunk) {
        const absl::Status st = forward(items, owners);
        ++out.forward_calls;
        if (st.code() == absl::StatusCode::kResourceExhausted && items.size() > 1) {
          const size_t half = items.size() / 2;
          for (auto [b, e] : {std::pair<size_t, size_t>{0, half}, std::pair<size_t, size_t>{half, items.size()}}) {
            std::vector<ForwardItem> part(items.begin() + b, items.begin() + e);
            run(part, std::vector<uint64_t>(owners.begin() + b, owners.begin() + e),
                std::vector<bool>(last_chunk.begin() + b, last_chunk.begin() + e));
          }
          return;
        }
        if (!st.ok()) {
          for (uint64_t id : owners) fail(id, st);
          return;
        }
        for (size_t x = 0; x < owners.size(); ++x) {
          if (last_chunk[x]) sampled[owners[x]] = pick(owners[x], x);
        }
      };
  std::vector<size_t> done(stepped.size(), 0);
  while (true) {
    std::vector<ForwardItem> items;
    std::vector<uint64_t> owners;
    std::vector<bool> last_chunk;
    for (size_t i = 0; i < stepped.size(); ++i) {
      const SequenceStart& s = *stepped[i];
      if (done[i] >= s.prompt.size() || failed.count(s.id)) continue;
      Live& l = *seqs_.at(s.id);
      items.push_back(NextPolicyPromptChunk(engine_, &l.kv, l.policy.get(), l.budget, options_.policy_prefill_chunk,
                                            s.prompt, &done[i]));
      owners.push_back(s.id);
      last_chunk.push_back(done[i] == s.prompt.size());
    }
    if (items.empty()) break;
    run(items, owners, last_chunk);
  }

  auto report = [&](uint64_t id) {
    SequenceStepResult r;
    r.id = id;
    if (auto f = failed.find(id); f != failed.end()) {
      r.status = f->second;
    } else {
      Live& l = *seqs_.at(id);
      r.token = sampled.at(id);
      l.last_sample = r.token;
      if (l.policy) r.release_stats = l.policy->stats();
      r.kv_slots = OccupiedSlots(l.kv);
    }
    out.sequences.push_back(r);
  };
  for (const SequenceStart& s : step.start) report(s.id);
  for (const SequenceDecode& d : step.decode) report(d.id);
  for (const auto& [id, live] : seqs_) out.kv_slots_used += OccupiedSlots(live->kv);
  out.step_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace adore
