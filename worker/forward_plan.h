// What a forward call asks of an engine and how its tokens map onto the sequences' slot tables. Both
// engines validate and plan a call with these functions before computing anything, so a bad call or a
// full pool changes nothing, and a release policy's decisions (released slots, rebuilt tokens) are applied
// the same way on every backend, and, under tensor parallelism, on every rank (rank 0 decides).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "worker/kv_cache.h"
#include "worker/release_policy.h"

namespace adore {

namespace comm {
class Communicator;
}

// Threads for a call's per-item host work (planning, applying plans, staging slot tables): 1 below
// kParallelItems items (a thread team costs more than the loop; measured on the 7B shape at 210 items),
// else OpenMP's thread count (OMP_NUM_THREADS) up to kMaxHostThreads (16 threads on the H200 host planned
// 4,096 items only 1.9x faster than one, and slowed 210 items from 0.34 to 2.0 ms).
inline constexpr int64_t kParallelItems = 256;
inline constexpr int kMaxHostThreads = 8;
int HostThreadsForItems(int64_t num_items);

// One sequence's share of a forward call: `tokens` are appended at positions seq->next_pos...
struct ForwardItem {
  SequenceKv* seq = nullptr;
  std::span<const int32_t> tokens;
  bool all_logits = false;  // logits for every token (evaluation) instead of the last one only
  // Optional KV budget: when the sequence would exceed `kv_budget` slots, `policy` picks slots to release
  // (and, for adore with rebuild, released tokens to recompute) and the step's tokens overwrite the
  // released slots in place. Null policy = unbounded (full attention).
  ReleasePolicy* policy = nullptr;
  int64_t kv_budget = 0;
  // New tokens the item's next call will bring (1: a decode step). Engines that plan the next step at the
  // end of this one (the CUDA engine's device adore) plan for this many; prompt chunks set it.
  int64_t next_new = 1;
};

// What both engines check first in a forward call: every item has a sequence and tokens, the ids are in
// the vocabulary and no position passes the model's context. INVALID_ARGUMENT / OUT_OF_RANGE naming the
// item otherwise. Counts what the call needs.
struct ForwardShape {
  int64_t num_tokens = 0;      // over all items
  int64_t num_logit_rows = 0;  // one per item, or one per token for all_logits items
  int64_t num_slots = 0;       // slots of all items' sequences after the call, without release
};
absl::StatusOr<ForwardShape> CheckForwardItems(std::span<const ForwardItem> items, const ModelConfig& config);

// One item's tokens as the engine runs them: the rebuilt tokens first (at their original positions, no
// logits), then the item's new tokens (positions seq->next_pos...).
struct PlannedItem {
  SlotList tokens;  // inline up to kInlineSlots entries (a decode step's token and a few rebuilt ones)
  SlotList positions;
  SlotList rows;  // pool row receiving each token's K/V
  int64_t num_rebuild = 0;    // leading tokens that are rebuilt, not new
  int64_t num_released = 0;   // slots released by this step
  // Slots whose (row, pos) this call set: the released and empty slots it refilled, the released ones it
  // emptied and the ones it appended (slot order of the sequence's table after the call).
  SlotList changed_slots;
  int64_t num_new() const { return static_cast<int64_t>(tokens.size()) - num_rebuild; }
};

struct PlannedForward {
  std::vector<PlannedItem> items;  // same order as the call's items
  int64_t num_tokens = 0;          // new + rebuilt, over all items
  int64_t num_logit_rows = 0;
  int64_t num_slots = 0;           // slot-table entries of all items after the call
};

// Validates the call (CheckForwardItems, then each policy's plan: INVALID_ARGUMENT for a step longer than
// the item's kv_budget, FAILED_PRECONDITION when the policy cannot free enough slots), takes pool rows
// (RESOURCE_EXHAUSTED when too few are free) and only then applies the plans: released slots are reused
// in place by the step's tokens (rebuilt first), empty slots next, then new slots are appended; released
// slots left over are emptied and their rows freed; next_pos advances past the new tokens; each policy's
// stats record the step. On error nothing has changed. The items are planned and applied on
// HostThreadsForItems threads (each policy plans only its own sequence; errors are reported in item order).
//
// Tensor parallelism (`comm` given, world size > 1; not owned, host buffers): one release schedule for
// all shards. Rank 0 asks its policies and broadcasts every item's plan (or its error) to the group; the
// other ranks apply rank 0's plans without asking their own policies (PlanStep), so the ranks cannot
// diverge even where their policies would decide differently (float ties, a policy state gone astray).
// Every rank calls OnSlotReused / RecordStep with the plan it applied, so every rank's ReleaseStats equal
// rank 0's. Rank 0's errors (the ones above, decided before anything is broadcast) come back on every
// rank with the same code and message, so the ranks' callers take the same branch before their next
// collective. Each rank still checks every plan against its own slot tables (distinct occupied slots,
// past positions, kv_budget) and takes its own pool rows: a plan that fails there, or a call rank 0
// planned that this rank's CheckForwardItems rejects, is INTERNAL (the ranks' states diverged; rank 0
// will then wait in its next collective until the op timeout, and the group must be rebuilt). Every rank
// must make the same calls with the same items, with a policy on the same items: a call without any
// policy broadcasts nothing (full attention costs no extra collective). A communicator error is returned
// as is (the group is then unusable); nothing has changed on this rank.
absl::StatusOr<PlannedForward> PlanForward(std::span<ForwardItem> items, const ModelConfig& config,
                                           RowAllocator& rows, comm::Communicator* comm = nullptr);

// After the step's compute: hands each policy what its new tokens saw. `mass(i, t)` / `features(i, t)` give
// the attention mass per slot and the feature rows of token t of item i's PlannedItem (new tokens only;
// both callables must be safe to call from several threads). Items are observed in parallel (OpenMP);
// an error means a policy's state could not follow (the sequence should be ended): the first one is
// returned.
//
// Under tensor parallelism every rank's policies observe, on the same numbers (the engines all-reduce the
// mass first). The followers' policies are never asked to plan, but observing keeps every rank's return
// status the same: a policy whose state cannot follow fails on every rank alike, so the callers stay in
// step around the collectives that follow. The controller's work is thus repeated on each rank, in
// parallel with the others.
template <typename MassFn, typename FeatureFn>
absl::Status ObserveForward(std::span<ForwardItem> items, const PlannedForward& plan, float mass_scale,
                            MassFn mass, FeatureFn features) {
  std::vector<absl::Status> status(items.size());
  const int64_t num_items = static_cast<int64_t>(items.size());
#pragma omp parallel for schedule(dynamic, 1) if (num_items > 1)
  for (int64_t i = 0; i < num_items; ++i) {
    if (items[i].policy == nullptr) continue;
    const PlannedItem& p = plan.items[i];
    ReleasePolicy::StepObservation step;
    step.mass_scale = mass_scale;
    for (int64_t t = p.num_rebuild; t < static_cast<int64_t>(p.tokens.size()); ++t) {
      step.positions.push_back(p.positions[t]);
      step.tokens.push_back(p.tokens[t]);
      step.slot_mass.push_back(mass(i, t));
      step.features.push_back(features(i, t));
    }
    status[i].Update(items[i].policy->ObserveStep(*items[i].seq, step));
  }
  for (absl::Status& st : status) {
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace adore
