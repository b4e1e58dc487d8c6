// KV release policies: which of a sequence's slots to free when its fixed budget of `m` slots is full.
// One decision per step serves every layer and head (uniform schedule), so a policy sees one slot map.
// Policies are small classes behind one interface, created per sequence from a ReleaseConfig.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"
#include "worker/kv_cache.h"

namespace adore {
class AdoreController;
}

namespace adore {

enum class PolicyKind { kFull, kWindow, kHeavyHitter, kAdore };

// "full", "window", "heavy_hitter", "adore"; INVALID_ARGUMENT naming the value otherwise.
absl::StatusOr<PolicyKind> ParsePolicyKind(std::string_view name);
const char* PolicyKindName(PolicyKind kind);

// Upper bound of ReleaseConfig::rebuild (tokens recomputed per step).
constexpr int64_t kMaxRebuild = 64;

struct ReleaseConfig {
  PolicyKind kind = PolicyKind::kFull;
  int64_t kv_budget = 0;   // m: slots per sequence; ignored by kFull
  int64_t rebuild = 0;     // R: released tokens recomputed per step (adore only)
  int64_t num_sink = 4;    // window: the first tokens kept forever (StreamingLLM's attention sinks)
  // heavy_hitter: slots kept for the most recent tokens; the rest of the budget goes to the heavy hitters.
  // 0 = half the budget (H2O's default split).
  int64_t num_recent = 0;
  // adore: the trained controller (must outlive the policies made from this config).
  const AdoreController* controller = nullptr;

  // INVALID_ARGUMENT naming the field: kv_budget outside [16, max_context] for a releasing policy,
  // rebuild outside [0, 64] or set for a policy that does not rebuild, num_sink / num_recent too large.
  absl::Status Validate(int64_t max_context) const;
};

// What a policy decides before a step: slots whose tokens leave the cache, and released tokens that come
// back (their K/V recomputed at their original positions alongside the step's new tokens).
// A decode step releases and rebuilds a few slots: the lists live inline up to kInlineSlots entries, so that
// planning thousands of sequences a step does not allocate (malloc was about half of PlanForward's time).
inline constexpr size_t kInlineSlots = 8;
using SlotList = absl::InlinedVector<int32_t, kInlineSlots>;

struct StepPlan {
  SlotList release;            // slots to free; new and rebuilt tokens reuse them in place
  SlotList rebuild_positions;  // released positions to recompute this step
  SlotList rebuild_tokens;     // their token ids (same order)
};

// Per-sequence counters, returned with a request's result.
struct ReleaseStats {
  int64_t released = 0;  // tokens whose slots were freed
  int64_t rebuilt = 0;   // released tokens recomputed and cached again
};

class ReleasePolicy {
 public:
  virtual ~ReleasePolicy() = default;
  virtual PolicyKind kind() const = 0;

  // Plans the coming step of `num_new` tokens so that at most `budget` slots are occupied after it. The
  // default releases exactly the overflow through SelectRelease and rebuilds nothing. Must not change
  // the policy's state (a failed step must change nothing).
  virtual absl::StatusOr<StepPlan> PlanStep(const SequenceKv& seq, int64_t num_new, int64_t budget);

  // After a forward step: the attention probability each slot received, summed over layers, heads and
  // the step's queries (indexed like seq.rows). Slot count may have grown since the last call.
  virtual void Observe(const SequenceKv& seq, std::span<const float> slot_mass) {}

  // Chooses exactly `count` distinct occupied slots of `seq` to release so that the tokens of the coming
  // step can take them in place. Does not change the policy's state (a failed step must change nothing).
  // FAILED_PRECONDITION when the policy's protected set leaves fewer than `count` candidates.
  virtual absl::StatusOr<std::vector<int32_t>> SelectRelease(const SequenceKv& seq, int64_t count) = 0;

  // Slot `slot` now holds a new token (its per-slot state restarts).
  virtual void OnSlotReused(int32_t slot) {}
  // Slot `slot` now holds the token at `pos` (every token a step places, in a reused or an appended slot;
  // after OnSlotReused where the slot was reused).
  virtual void OnSlotFilled(int32_t slot, int32_t pos) {}

  // The most new tokens one step may bring at `budget`: the policy's protected tokens must fit beside them
  // (an engine call with more fails FAILED_PRECONDITION). Prompts under a policy go in chunks up to this.
  virtual int64_t max_new_per_step(int64_t budget) const { return budget; }

  // The most tokens PlanStep may ask to rebuild in one step (engines reserve room for them); a plan that
  // asks for more is refused (INTERNAL).
  virtual int64_t max_rebuild_per_step() const { return 0; }

  // Layers whose attn_norm output (the q/k/v input) the policy wants for every new token; empty = none.
  virtual std::span<const int32_t> feature_layers() const { return {}; }

  // What one forward step showed, per new token of the sequence in position order.
  struct StepObservation {
    std::vector<int32_t> positions;                 // the step's new tokens (rebuilt ones are not included)
    std::vector<int32_t> tokens;                    // their ids
    std::vector<std::span<const float>> slot_mass;  // per new token: [num_slots] attention it gave each slot
    std::vector<std::span<const float>> features;   // per new token: [feature_layers().size() * hidden]
    float mass_scale = 1.0f;                        // 1 / (num_layers * num_heads)
  };
  // After a forward step. The default sums the masses and calls Observe(). An error means the policy's
  // state could not follow the step (the sequence should be ended).
  virtual absl::Status ObserveStep(const SequenceKv& seq, const StepObservation& step);

  const ReleaseStats& stats() const { return stats_; }
  void RecordStep(int64_t released, int64_t rebuilt) {  // called by the engine once a plan is applied
    stats_.released += released;
    stats_.rebuilt += rebuilt;
  }

 private:
  ReleaseStats stats_;
};

// Occupied slots of a sequence (rows >= 0).
int64_t OccupiedSlots(const SequenceKv& seq);

// The policy object for one sequence.
absl::StatusOr<std::unique_ptr<ReleasePolicy>> MakeReleasePolicy(const ReleaseConfig& config);

}  // namespace adore
