// DeviceAdoreRuntime and DeviceAdorePolicy: ADORE's controller state on the GPU (see device_adore.h).
#include "worker/cuda/device_adore.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_format.h"
#include "common/status.h"
#include "kernels/cuda/cuda_status.h"

namespace adore {

absl::StatusOr<std::shared_ptr<DeviceAdoreRuntime>> DeviceAdoreRuntime::Create(const AdoreController& controller,
                                                                               int64_t lanes, int64_t max_positions) {
  if (lanes <= 0 || max_positions <= 0 || lanes * max_positions > (int64_t{1} << 31) - 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "device adore: %d lanes of %d positions (their product must be a positive int32)", lanes, max_positions));
  }
  std::shared_ptr<DeviceAdoreRuntime> rt(new DeviceAdoreRuntime());
  rt->controller_ = &controller;
  rt->lanes_ = lanes;
  rt->max_positions_ = max_positions;
  ADORE_RETURN_IF_ERROR(rt->weights_.Upload(kernels::HostAdoreWeightsFrom(controller)));
  const int64_t rows = lanes * max_positions, kd = controller.config().key_dim, sd = controller.config().state_dim;
  const int64_t floats = rows * (kd + sd + 2);
  const size_t bytes = sizeof(float) * floats + sizeof(int32_t) * rows;
  const absl::Status st = kernels::CudaStatus(cudaMalloc(&rt->arena_, bytes), "cudaMalloc(adore state)");
  if (!st.ok()) {
    rt->arena_ = nullptr;
    return absl::Status(st.code(), absl::StrFormat("%s: %.2f GiB of controller state for %d lanes x %d positions",
                                                   std::string(st.message()), bytes / 1073741824.0, lanes,
                                                   max_positions));
  }
  float* f = static_cast<float*>(rt->arena_);
  rt->state_.keys = f;
  rt->state_.states = f + rows * kd;
  rt->state_.acc = f + rows * (kd + sd);
  rt->state_.scores = f + rows * (kd + sd + 1);
  rt->state_.num_rows = rows;
  rt->slot_of_row_ = reinterpret_cast<int32_t*>(f + floats);
  rt->free_lanes_.reserve(lanes);
  for (int64_t l = lanes - 1; l >= 0; --l) rt->free_lanes_.push_back(static_cast<int32_t>(l));
  return rt;
}

DeviceAdoreRuntime::~DeviceAdoreRuntime() {
  if (arena_ != nullptr) cudaFree(arena_);
}

absl::Status DeviceAdoreRuntime::WriteLaneState(int32_t lane, int64_t rows, std::span<const float> keys,
                                                std::span<const float> states, std::span<const float> acc,
                                                std::span<const float> scores) const {
  const int64_t kd = controller_->config().key_dim, sd = controller_->config().state_dim;
  if (lane < 0 || lane >= lanes_ || rows < 0 || rows > max_positions_ ||
      static_cast<int64_t>(keys.size()) != rows * kd || static_cast<int64_t>(states.size()) != rows * sd ||
      static_cast<int64_t>(acc.size()) != rows || static_cast<int64_t>(scores.size()) != rows) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "device adore: lane state of %d rows for lane %d (of %d, %d positions each) with %d keys, %d states, %d acc, "
        "%d scores", rows, lane, lanes_, max_positions_, keys.size(), states.size(), acc.size(), scores.size()));
  }
  const int64_t row0 = static_cast<int64_t>(lane) * max_positions_;
  for (const auto& [dst, src] : {std::pair{state_.keys + row0 * kd, keys}, std::pair{state_.states + row0 * sd, states},
                                 std::pair{state_.acc + row0, acc}, std::pair{state_.scores + row0, scores}}) {
    ADORE_RETURN_IF_ERROR(kernels::CudaStatus(
        cudaMemcpy(dst, src.data(), src.size() * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy(adore lane)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int32_t> DeviceAdoreRuntime::AcquireLane() {
  std::lock_guard<std::mutex> lock(mu_);
  if (free_lanes_.empty()) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "device adore: all %d controller lanes are in use (more adore sequences than the engine's adore_lanes)",
        lanes_));
  }
  const int32_t lane = free_lanes_.back();
  free_lanes_.pop_back();
  return lane;
}

void DeviceAdoreRuntime::ReleaseLane(int32_t lane) {
  std::lock_guard<std::mutex> lock(mu_);
  free_lanes_.push_back(lane);
}

DeviceAdorePolicy::DeviceAdorePolicy(std::shared_ptr<DeviceAdoreRuntime> runtime, int32_t lane,
                                     const ReleaseConfig& config)
    : runtime_(std::move(runtime)), lane_(lane), max_rebuild_(config.rebuild), num_sink_(config.num_sink),
      num_recent_(config.num_recent > 0 ? config.num_recent : runtime_->controller().config().num_recent) {
  for (int64_t l : runtime_->controller().config().feature_layers) layers_.push_back(static_cast<int32_t>(l));
}

DeviceAdorePolicy::~DeviceAdorePolicy() { runtime_->ReleaseLane(lane_); }

absl::StatusOr<StepPlan> DeviceAdorePolicy::PlanStep(const SequenceKv& seq, int64_t num_new, int64_t budget) {
  StepPlan out;
  if (!planned_) {  // before the first step: nothing scored, nothing to release or rebuild
    if (OccupiedSlots(seq) + num_new <= budget) return out;
    return absl::FailedPreconditionError("adore policy (device): no plan for a step that must release");
  }
  if (num_new != planned_new_ || budget != planned_budget_) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "adore policy (device): the device planned a step of %d new token(s) within %d slots, not %d within %d",
        planned_new_, planned_budget_, num_new, budget));
  }
  switch (planned_status_) {
    case kernels::kAdorePlanOk:
      break;
    case kernels::kAdorePlanBudgetTooSmall:
      return absl::InvalidArgumentError(absl::StrFormat(
          "adore policy: budget %d cannot hold %d protected and %d new tokens", budget, num_sink_ + num_recent_,
          num_new));
    case kernels::kAdorePlanUnscoredSlot:
      return absl::FailedPreconditionError("adore policy (device): a cached position was never scored");
    default:
      return absl::InternalError(absl::StrFormat("adore policy (device): plan status %d", planned_status_));
  }
  // Positions -> slots of the current table: the slot that position was placed in, if the table still
  // holds it there; else a scan (positions placed outside PlanForward, e.g. an adopted history).
  for (int32_t p : planned_release_) {
    int32_t slot = -1;
    if (p >= 0 && static_cast<size_t>(p) < slot_of_pos_.size()) {
      const int32_t s = slot_of_pos_[p];
      if (s >= 0 && s < seq.num_slots() && seq.rows[s] >= 0 && seq.pos[s] == p) slot = s;
    }
    for (int64_t s = 0; s < seq.num_slots() && slot < 0; ++s) {
      if (seq.rows[s] >= 0 && seq.pos[s] == p) slot = static_cast<int32_t>(s);
    }
    if (slot < 0) {
      return absl::InternalError(absl::StrFormat("adore policy (device): planned release of position %d, not cached", p));
    }
    out.release.push_back(slot);
  }
  for (int32_t p : planned_rebuild_) {
    if (p < 0 || p >= static_cast<int32_t>(tokens_.size()) || tokens_[p] < 0) {
      return absl::FailedPreconditionError(absl::StrFormat("adore policy: no token id recorded at position %d", p));
    }
    out.rebuild_positions.push_back(p);
    out.rebuild_tokens.push_back(tokens_[p]);
  }
  return out;
}

absl::Status DeviceAdorePolicy::ObserveStep(const SequenceKv& seq, const StepObservation& step) {
  (void)seq;
  RecordTokens(step.positions, step.tokens);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> DeviceAdorePolicy::SelectRelease(const SequenceKv& seq, int64_t count) {
  (void)seq, (void)count;
  return absl::InternalError("adore policy (device): SelectRelease is not used (PlanStep plans the step)");
}

absl::Status DeviceAdorePolicy::AdoptHistory(const SequenceKv& seq, std::span<const int32_t> tokens, int64_t budget) {
  const int64_t n = seq.next_pos;
  if (static_cast<int64_t>(tokens.size()) != n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("adore policy (device): %d token ids for a sequence of %d positions", tokens.size(), n));
  }
  if (budget < num_sink_ + num_recent_ + 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "adore policy: budget %d cannot hold %d protected and 1 new token", budget, num_sink_ + num_recent_));
  }
  std::vector<int32_t> cached;
  for (int64_t s = 0; s < seq.num_slots(); ++s) {
    if (seq.rows[s] < 0) continue;
    cached.push_back(seq.pos[s]);
    OnSlotFilled(static_cast<int32_t>(s), seq.pos[s]);
  }
  std::sort(cached.begin(), cached.end());
  std::vector<int32_t> release;
  const int64_t excess = static_cast<int64_t>(cached.size()) + 1 - budget;
  for (int32_t p : cached) {  // oldest first, skipping the sinks and the recent window (the new token included)
    if (static_cast<int64_t>(release.size()) >= excess) break;
    if (p >= num_sink_ && p < n + 1 - num_recent_) release.push_back(p);
  }
  tokens_.assign(tokens.begin(), tokens.end());
  SetNextPlan(n, 1, budget, kernels::kAdorePlanOk, release, {});
  return absl::OkStatus();
}

void DeviceAdorePolicy::RecordTokens(std::span<const int32_t> positions, std::span<const int32_t> tokens) {
  for (size_t i = 0; i < positions.size(); ++i) {
    const size_t p = static_cast<size_t>(positions[i]);
    if (tokens_.size() <= p) tokens_.resize(p + 1, -1);
    tokens_[p] = i < tokens.size() ? tokens[i] : -1;
  }
}

void DeviceAdorePolicy::OnSlotFilled(int32_t slot, int32_t pos) {
  if (pos < 0) return;
  if (slot_of_pos_.size() <= static_cast<size_t>(pos)) slot_of_pos_.resize(static_cast<size_t>(pos) + 1, -1);
  slot_of_pos_[pos] = slot;
}

void DeviceAdorePolicy::SetNextPlan(int64_t num_steps, int64_t num_new, int64_t budget, int32_t status,
                                    std::span<const int32_t> release, std::span<const int32_t> rebuild) {
  num_steps_ = num_steps;
  planned_ = true;
  planned_new_ = num_new;
  planned_budget_ = budget;
  planned_status_ = status;
  planned_release_.assign(release.begin(), release.end());
  planned_rebuild_.assign(rebuild.begin(), rebuild.end());
}

}  // namespace adore
