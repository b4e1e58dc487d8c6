// ADORE with its controller on the GPU, for the CUDA engine: the controller's per-token state of every
// sequence lives in device memory and every forward call runs the controller's kernels
// (kernels/cuda/adore_controller.h: AdoreProject, AdoreStep, AdorePlanRelease) on the engine's stream, so
// a decode step moves only the next step's release plan (a few positions per sequence) to the host, with
// the sampled tokens. Same semantics as the host AdorePolicy (worker/release_policy.cc); the GPU kernels
// match the CPU controller within 1e-5 (tests/cuda/adore_controller_test.cu).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cuda/adore_controller.h"
#include "worker/adore_controller.h"
#include "worker/release_policy.h"

namespace adore {

// The device side shared by one engine and its DeviceAdorePolicy objects (shared_ptr, so a policy that
// outlives the engine can still return its lane). A lane is the state of one sequence: max_positions
// token rows (indexed by position, released tokens included), 200 bytes each with the shipped controller.
class DeviceAdoreRuntime {
 public:
  // Uploads the controller and allocates `lanes` lanes of `max_positions` rows on the current device.
  // RESOURCE_EXHAUSTED when the memory is not there; INVALID_ARGUMENT for a controller the kernels do
  // not support.
  static absl::StatusOr<std::shared_ptr<DeviceAdoreRuntime>> Create(const AdoreController& controller, int64_t lanes,
                                                                    int64_t max_positions);
  ~DeviceAdoreRuntime();
  DeviceAdoreRuntime(const DeviceAdoreRuntime&) = delete;
  DeviceAdoreRuntime& operator=(const DeviceAdoreRuntime&) = delete;

  // A free lane; RESOURCE_EXHAUSTED when every lane is taken (more adore sequences than lanes).
  absl::StatusOr<int32_t> AcquireLane();
  void ReleaseLane(int32_t lane);

  const AdoreController& controller() const { return *controller_; }
  const kernels::DeviceAdoreWeights& weights() const { return weights_; }
  kernels::AdoreStateArrays state() const { return state_; }
  int64_t max_positions() const { return max_positions_; }
  int64_t lanes() const { return lanes_; }
  int32_t* slot_of_row() const { return slot_of_row_; }  // scratch [lanes * max_positions]

  // Benchmarks: writes the first `rows` positions of a lane's per-token state (host arrays in the state
  // layout: keys [rows, key_dim], GRU states [rows, state_dim], accumulated mass and last score [rows]), as if
  // its sequence had been observed that far. Synchronous. INVALID_ARGUMENT for sizes that do not match.
  absl::Status WriteLaneState(int32_t lane, int64_t rows, std::span<const float> keys, std::span<const float> states,
                              std::span<const float> acc, std::span<const float> scores) const;

 private:
  DeviceAdoreRuntime() = default;
  const AdoreController* controller_ = nullptr;
  kernels::DeviceAdoreWeights weights_;
  kernels::AdoreStateArrays state_;
  void* arena_ = nullptr;  // state arrays and slot_of_row
  int32_t* slot_of_row_ = nullptr;
  int64_t lanes_ = 0, max_positions_ = 0;
  std::mutex mu_;
  std::vector<int32_t> free_lanes_;  // guarded by mu_
};

// The adore policy of one sequence whose controller runs on the GPU of the engine that made it
// (CudaEngine::MakePolicy). Only that engine can run it: it plans each step from the plan the device
// computed at the end of the previous call (for the item's ForwardItem::next_new tokens at the same budget:
// one for a decode step, the next chunk's length for a prompt chunk).
class DeviceAdorePolicy final : public ReleasePolicy {
 public:
  DeviceAdorePolicy(std::shared_ptr<DeviceAdoreRuntime> runtime, int32_t lane, const ReleaseConfig& config);
  ~DeviceAdorePolicy() override;

  PolicyKind kind() const override { return PolicyKind::kAdore; }
  std::span<const int32_t> feature_layers() const override { return layers_; }
  int64_t max_rebuild_per_step() const override { return max_rebuild_; }  // as the host AdorePolicy

  // The device's plan for this step: FAILED_PRECONDITION when the step is not the one planned for (other
  // than the planned number of new tokens at the planned budget), INVALID_ARGUMENT when the budget cannot hold the protected
  // tokens and the new one (as the host policy), INTERNAL for a plan the device could not make.
  absl::StatusOr<StepPlan> PlanStep(const SequenceKv& seq, int64_t num_new, int64_t budget) override;
  // Records the step's token ids by position (for rebuild); the controller itself observed on the device.
  absl::Status ObserveStep(const SequenceKv& seq, const StepObservation& step) override;
  absl::StatusOr<std::vector<int32_t>> SelectRelease(const SequenceKv& seq, int64_t count) override;

  // Benchmarks (decode over a prompt that was not computed): takes `seq` (positions 0..next_pos-1, of which
  // its slot table caches some; `tokens` are their ids) as already observed, its lane state written with
  // DeviceAdoreRuntime::WriteLaneState, and plans the next step of one new token within `budget` slots by
  // releasing the oldest unprotected cached positions; the device plans every step after that.
  // INVALID_ARGUMENT when tokens do not cover the sequence or the budget cannot hold the protected tokens.
  absl::Status AdoptHistory(const SequenceKv& seq, std::span<const int32_t> tokens, int64_t budget);

  // For the engine.
  const DeviceAdoreRuntime* runtime() const { return runtime_.get(); }
  int32_t lane() const { return lane_; }
  int64_t max_rebuild() const { return max_rebuild_; }
  int64_t num_sink() const { return num_sink_; }
  int64_t num_recent() const { return num_recent_; }
  int64_t num_steps() const { return num_steps_; }  // positions 0..num_steps-1 have been scored
  void RecordTokens(std::span<const int32_t> positions, std::span<const int32_t> tokens);
  void OnSlotFilled(int32_t slot, int32_t pos) override;
  // What the device planned at the end of a call whose last new token is at position num_steps - 1, for a
  // following step of `num_new` tokens within `budget` slots (release / rebuild: positions).
  void SetNextPlan(int64_t num_steps, int64_t num_new, int64_t budget, int32_t status,
                   std::span<const int32_t> release, std::span<const int32_t> rebuild);

 private:
  std::shared_ptr<DeviceAdoreRuntime> runtime_;
  int32_t lane_;
  int64_t max_rebuild_, num_sink_, num_recent_;
  std::vector<int32_t> layers_;
  std::vector<int32_t> tokens_;  // token id by position (for rebuild)
  // The slot last filled with each position (OnSlotFilled; -1 = none seen): PlanStep maps a planned
  // release to its slot through it, checked against the table (a scan where the check fails).
  std::vector<int32_t> slot_of_pos_;
  int64_t num_steps_ = 0;
  // The plan for the coming step.
  bool planned_ = false;
  int64_t planned_new_ = 0, planned_budget_ = 0;
  int32_t planned_status_ = 0;
  std::vector<int32_t> planned_release_, planned_rebuild_;  // positions
};

}  // namespace adore
