// Release policies with scripted behaviour for engine tests (CPU and CUDA).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/release_policy.h"

namespace adore::testing {

// Releases position `drop` at step `drop_step` (counted in observed steps) and rebuilds it `gap` steps
// later; never releases anything else (use a budget above the context).
class ScriptedRebuildPolicy final : public ReleasePolicy {
 public:
  ScriptedRebuildPolicy(int32_t drop, int32_t drop_step, int32_t gap) : drop_(drop), drop_step_(drop_step), gap_(gap) {}
  PolicyKind kind() const override { return PolicyKind::kAdore; }
  int64_t max_rebuild_per_step() const override { return 1; }
  absl::StatusOr<StepPlan> PlanStep(const SequenceKv& seq, int64_t, int64_t) override {
    StepPlan plan;
    if (step_ == drop_step_) {
      for (int32_t s = 0; s < seq.num_slots(); ++s) {
        if (seq.rows[s] >= 0 && seq.pos[s] == drop_) plan.release.push_back(s);
      }
    } else if (step_ == drop_step_ + gap_) {
      plan.rebuild_positions.push_back(drop_);
      plan.rebuild_tokens.push_back(tokens_[drop_]);
    }
    return plan;
  }
  absl::StatusOr<std::vector<int32_t>> SelectRelease(const SequenceKv&, int64_t) override {
    return absl::InternalError("unused");
  }
  absl::Status ObserveStep(const SequenceKv&, const StepObservation& step) override {
    tokens_.insert(tokens_.end(), step.tokens.begin(), step.tokens.end());
    ++step_;
    return absl::OkStatus();
  }

 private:
  int32_t drop_, drop_step_, gap_, step_ = 0;
  std::vector<int32_t> tokens_;
};

// Never releases; records what each step showed it: per new token the attention mass by position and the
// features of `layers`.
class RecordingPolicy final : public ReleasePolicy {
 public:
  explicit RecordingPolicy(std::vector<int32_t> layers) : layers_(std::move(layers)) {}
  PolicyKind kind() const override { return PolicyKind::kFull; }
  std::span<const int32_t> feature_layers() const override { return layers_; }
  absl::StatusOr<std::vector<int32_t>> SelectRelease(const SequenceKv&, int64_t count) override {
    if (count == 0) return std::vector<int32_t>();
    return absl::FailedPreconditionError("recording policy never releases");
  }
  absl::Status ObserveStep(const SequenceKv& seq, const StepObservation& step) override {
    for (size_t i = 0; i < step.positions.size(); ++i) {
      std::vector<float> by_pos(step.positions[i] + 1, 0.0f);
      for (int64_t s = 0; s < seq.num_slots() && s < static_cast<int64_t>(step.slot_mass[i].size()); ++s) {
        if (seq.rows[s] >= 0 && seq.pos[s] <= step.positions[i]) by_pos[seq.pos[s]] = step.slot_mass[i][s] * step.mass_scale;
      }
      mass.push_back(std::move(by_pos));
      features.emplace_back(step.features[i].begin(), step.features[i].end());
    }
    return absl::OkStatus();
  }
  std::vector<std::vector<float>> mass;      // per observed token: normalized mass by position
  std::vector<std::vector<float>> features;  // per observed token

 private:
  std::vector<int32_t> layers_;
};

}  // namespace adore::testing
