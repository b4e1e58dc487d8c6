// The baseline release policies: full (never releases), window (StreamingLLM) and heavy_hitter (H2O).
#include "worker/release_policy.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_format.h"
#include "common/status.h"
#include "worker/adore_controller.h"

namespace adore {

absl::StatusOr<PolicyKind> ParsePolicyKind(std::string_view name) {
  if (name == "full") return PolicyKind::kFull;
  if (name == "window") return PolicyKind::kWindow;
  if (name == "heavy_hitter") return PolicyKind::kHeavyHitter;
  if (name == "adore") return PolicyKind::kAdore;
  return absl::InvalidArgumentError(absl::StrFormat(
      "policy: unknown value '%s' (expected full, window, heavy_hitter or adore)", std::string(name)));
}

const char* PolicyKindName(PolicyKind kind) {
  switch (kind) {
    case PolicyKind::kFull: return "full";
    case PolicyKind::kWindow: return "window";
    case PolicyKind::kHeavyHitter: return "heavy_hitter";
    case PolicyKind::kAdore: return "adore";
  }
  return "unknown";
}

absl::Status ReleaseConfig::Validate(int64_t max_context) const {
  if (kind == PolicyKind::kFull) {
    if (rebuild != 0) return absl::InvalidArgumentError("rebuild: must be 0 for policy 'full'");
    return absl::OkStatus();
  }
  if (kv_budget < 16 || kv_budget > max_context) {
    return absl::InvalidArgumentError(absl::StrFormat("kv_budget: must be in [16, %d] for policy '%s', got %d",
                                                      max_context, PolicyKindName(kind), kv_budget));
  }
  if (rebuild < 0 || rebuild > kMaxRebuild) {
    return absl::InvalidArgumentError(absl::StrFormat("rebuild: must be in [0, %d], got %d", kMaxRebuild, rebuild));
  }
  if (rebuild != 0 && kind != PolicyKind::kAdore) {
    return absl::InvalidArgumentError(
        absl::StrFormat("rebuild: only policy 'adore' rebuilds released tokens, got %d for '%s'", rebuild,
                        PolicyKindName(kind)));
  }
  if (num_sink < 0 || num_sink >= kv_budget / 2) {
    return absl::InvalidArgumentError(
        absl::StrFormat("num_sink: must be in [0, kv_budget / 2), got %d", num_sink));
  }
  if (num_recent < 0 || num_recent >= kv_budget) {
    return absl::InvalidArgumentError(absl::StrFormat("num_recent: must be in [0, kv_budget), got %d", num_recent));
  }
  return absl::OkStatus();
}

absl::Status ReleasePolicy::ObserveStep(const SequenceKv& seq, const StepObservation& step) {
  std::vector<float> mass(seq.num_slots(), 0.0f);
  for (std::span<const float> m : step.slot_mass) {
    for (size_t s = 0; s < m.size() && s < mass.size(); ++s) mass[s] += m[s];
  }
  Observe(seq, mass);
  return absl::OkStatus();
}

int64_t OccupiedSlots(const SequenceKv& seq) {
  return std::count_if(seq.rows.begin(), seq.rows.end(), [](int32_t r) { return r >= 0; });
}

absl::StatusOr<StepPlan> ReleasePolicy::PlanStep(const SequenceKv& seq, int64_t num_new, int64_t budget) {
  StepPlan plan;
  const int64_t over = std::max<int64_t>(0, OccupiedSlots(seq) + num_new - budget);
  if (over > 0) {
    ADORE_ASSIGN_OR_RETURN(const std::vector<int32_t> release, SelectRelease(seq, over));
    plan.release.assign(release.begin(), release.end());
  }
  return plan;
}

namespace {

// Occupied slots, oldest position first.
std::vector<int32_t> SlotsByPosition(const SequenceKv& seq) {
  std::vector<int32_t> slots;
  for (int32_t s = 0; s < seq.num_slots(); ++s) {
    if (seq.rows[s] >= 0) slots.push_back(s);
  }
  std::sort(slots.begin(), slots.end(), [&](int32_t a, int32_t b) { return seq.pos[a] < seq.pos[b]; });
  return slots;
}

absl::Status TooFew(const char* policy, int64_t count, int64_t candidates) {
  return absl::FailedPreconditionError(absl::StrFormat(
      "%s policy: %d slots must be released but only %d are not protected", policy, count, candidates));
}

class FullPolicy final : public ReleasePolicy {
 public:
  PolicyKind kind() const override { return PolicyKind::kFull; }
  absl::StatusOr<std::vector<int32_t>> SelectRelease(const SequenceKv&, int64_t count) override {
    if (count == 0) return std::vector<int32_t>();
    return absl::FailedPreconditionError("full policy never releases tokens");
  }
};

// StreamingLLM: keep the first `num_sink` tokens and the most recent ones; release the oldest of the rest.
class WindowPolicy final : public ReleasePolicy {
 public:
  explicit WindowPolicy(int64_t num_sink) : num_sink_(num_sink) {}
  PolicyKind kind() const override { return PolicyKind::kWindow; }
  int64_t max_new_per_step(int64_t budget) const override { return budget - num_sink_; }
  absl::StatusOr<std::vector<int32_t>> SelectRelease(const SequenceKv& seq, int64_t count) override {
    std::vector<int32_t> slots = SlotsByPosition(seq);
    std::vector<int32_t> out;
    for (int32_t s : slots) {
      if (static_cast<int64_t>(out.size()) == count) break;
      if (seq.pos[s] < num_sink_) continue;
      out.push_back(s);
    }
    if (static_cast<int64_t>(out.size()) < count) return TooFew("window", count, out.size());
    return out;
  }

 private:
  int64_t num_sink_;
};

// H2O: every slot accumulates the attention it receives; the most recent `num_recent` tokens are kept, and
// among the others the ones with the least accumulated attention are released.
class HeavyHitterPolicy final : public ReleasePolicy {
 public:
  explicit HeavyHitterPolicy(int64_t num_recent) : num_recent_(num_recent) {}
  PolicyKind kind() const override { return PolicyKind::kHeavyHitter; }
  int64_t max_new_per_step(int64_t budget) const override { return budget - num_recent_; }
  void Observe(const SequenceKv& seq, std::span<const float> slot_mass) override {
    if (score_.size() < slot_mass.size()) score_.resize(slot_mass.size(), 0.0);
    for (size_t s = 0; s < slot_mass.size(); ++s) score_[s] += slot_mass[s];
  }
  absl::StatusOr<std::vector<int32_t>> SelectRelease(const SequenceKv& seq, int64_t count) override {
    if (count == 0) return std::vector<int32_t>();
    std::vector<int32_t> slots = SlotsByPosition(seq);
    const int64_t candidates = std::max<int64_t>(0, static_cast<int64_t>(slots.size()) - num_recent_);
    if (candidates < count) return TooFew("heavy_hitter", count, candidates);
    slots.resize(candidates);  // drop the recent window
    if (score_.size() < static_cast<size_t>(seq.num_slots())) score_.resize(seq.num_slots(), 0.0);
    // Least accumulated attention first; ties release the older token.
    std::stable_sort(slots.begin(), slots.end(), [&](int32_t a, int32_t b) { return score_[a] < score_[b]; });
    slots.resize(count);
    return slots;
  }
  void OnSlotReused(int32_t slot) override {
    if (static_cast<size_t>(slot) < score_.size()) score_[slot] = 0.0;
  }

 private:
  int64_t num_recent_;
  std::vector<double> score_;  // per slot
};

// ADORE: the learned controller scores every token (cached or released) each step; the lowest-scoring
// cached tokens outside the protected set (sinks + recent) are released, and with rebuild = R > 0 up to R
// released tokens whose score now beats cached ones come back (recomputed at their positions).
class AdorePolicy final : public ReleasePolicy {
 public:
  AdorePolicy(const AdoreController& controller, const ReleaseConfig& config)
      : seq_state_(controller), max_rebuild_(config.rebuild), num_sink_(config.num_sink),
        num_recent_(config.num_recent > 0 ? config.num_recent : controller.config().num_recent) {
    for (int64_t l : controller.config().feature_layers) layers_.push_back(static_cast<int32_t>(l));
  }
  PolicyKind kind() const override { return PolicyKind::kAdore; }
  std::span<const int32_t> feature_layers() const override { return layers_; }
  // Protected positions are never released (the sinks always protected, a recent position cached since it
  // was added), so a plan rebuilds at most the R best released candidates.
  int64_t max_rebuild_per_step() const override { return max_rebuild_; }
  int64_t max_new_per_step(int64_t budget) const override { return budget - num_sink_ - num_recent_; }

  absl::Status ObserveStep(const SequenceKv& seq, const StepObservation& step) override {
    for (size_t i = 0; i < step.positions.size(); ++i) {
      if (step.positions[i] != seq_state_.num_tokens()) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "adore policy: token at position %d arrived, expected %d", step.positions[i], seq_state_.num_tokens()));
      }
      ADORE_RETURN_IF_ERROR(seq_state_.AddToken(step.features[i]));
      tokens_.push_back(i < step.tokens.size() ? step.tokens[i] : -1);
    }
    for (size_t i = 0; i < step.positions.size(); ++i) {
      const int32_t q = step.positions[i];
      mass_.assign(q + 1, 0.0f);
      cached_.assign(q + 1, 0);
      for (int64_t s = 0; s < seq.num_slots(); ++s) {
        const int32_t p = seq.pos[s];
        if (seq.rows[s] < 0 || p > q) continue;
        cached_[p] = 1;
        if (static_cast<size_t>(s) < step.slot_mass[i].size()) mass_[p] = step.slot_mass[i][s];
      }
      ADORE_RETURN_IF_ERROR(seq_state_.Step(q, mass_, cached_, step.mass_scale));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<StepPlan> PlanStep(const SequenceKv& seq, int64_t num_new, int64_t budget) override {
    StepPlan out;
    if (OccupiedSlots(seq) + num_new <= budget && max_rebuild_ == 0) return out;
    const int64_t scored = seq_state_.num_steps();
    std::vector<uint8_t> cached(scored, 0);
    std::vector<int32_t> slot_of(scored, -1);
    for (int64_t s = 0; s < seq.num_slots(); ++s) {
      if (seq.rows[s] < 0) continue;
      const int32_t p = seq.pos[s];
      if (p >= scored) {
        return absl::FailedPreconditionError(absl::StrFormat("adore policy: position %d was never scored", p));
      }
      cached[p] = 1;
      slot_of[p] = static_cast<int32_t>(s);
    }
    ADORE_ASSIGN_OR_RETURN(AdoreReleasePlan plan,
                           seq_state_.PlanRelease(cached, budget, num_new, max_rebuild_, num_sink_, num_recent_));
    for (int32_t p : plan.release) out.release.push_back(slot_of[p]);
    for (int32_t p : plan.rebuild) {
      if (p >= static_cast<int32_t>(tokens_.size()) || tokens_[p] < 0) {
        return absl::FailedPreconditionError(absl::StrFormat("adore policy: no token id recorded at position %d", p));
      }
      out.rebuild_positions.push_back(p);
      out.rebuild_tokens.push_back(tokens_[p]);
    }
    return out;
  }

  absl::StatusOr<std::vector<int32_t>> SelectRelease(const SequenceKv& seq, int64_t count) override {
    // Only reached through the base PlanStep, which this policy replaces.
    return absl::InternalError("adore policy: SelectRelease is not used (PlanStep plans the step)");
  }

 private:
  AdoreSequence seq_state_;
  int64_t max_rebuild_, num_sink_, num_recent_;
  std::vector<int32_t> layers_;
  std::vector<int32_t> tokens_;  // token id by position (for rebuild)
  std::vector<float> mass_;      // scratch, by position
  std::vector<uint8_t> cached_;  // scratch, by position
};

}  // namespace

absl::StatusOr<std::unique_ptr<ReleasePolicy>> MakeReleasePolicy(const ReleaseConfig& config) {
  switch (config.kind) {
    case PolicyKind::kFull:
      return std::unique_ptr<ReleasePolicy>(new FullPolicy());
    case PolicyKind::kWindow:
      return std::unique_ptr<ReleasePolicy>(new WindowPolicy(config.num_sink));
    case PolicyKind::kHeavyHitter:
      return std::unique_ptr<ReleasePolicy>(
          new HeavyHitterPolicy(config.num_recent > 0 ? config.num_recent : config.kv_budget / 2));
    case PolicyKind::kAdore:
      if (config.controller == nullptr) {
        return absl::FailedPreconditionError("policy 'adore': no controller loaded (tools/adore/controller.bin)");
      }
      return std::unique_ptr<ReleasePolicy>(new AdorePolicy(*config.controller, config));
  }
  return absl::InvalidArgumentError("unknown policy kind");
}

}  // namespace adore
