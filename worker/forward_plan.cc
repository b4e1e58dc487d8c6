// Validation and slot planning of a forward call, shared by the CPU and CUDA engines.
#include "worker/forward_plan.h"

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"
#include "common/status.h"

namespace adore {

absl::StatusOr<ForwardShape> CheckForwardItems(std::span<const ForwardItem> items, const ModelConfig& c) {
  if (items.empty()) return absl::InvalidArgumentError("forward call with no items");
  ForwardShape shape;
  absl::flat_hash_map<const SequenceKv*, size_t> seen;  // sequence -> first item (every step: linear)
  seen.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const ForwardItem& it = items[i];
    if (it.seq == nullptr || it.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat("forward item %d has no sequence or no tokens", i));
    }
    if (auto [at, fresh] = seen.emplace(it.seq, i); !fresh) {
      return absl::InvalidArgumentError(absl::StrFormat("forward items %d and %d share one sequence", at->second, i));
    }
    for (int32_t t : it.tokens) {
      if (t < 0 || t >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrFormat("forward item %d: token id %d outside the vocabulary [0, %d)",
                                                          i, t, c.vocab_size));
      }
    }
    const int64_t len = it.tokens.size();
    if (it.seq->next_pos + len > c.max_context) {
      return absl::OutOfRangeError(absl::StrFormat(
          "forward item %d: sequence would reach position %d, past the model's context of %d tokens", i,
          it.seq->next_pos + len, c.max_context));
    }
    shape.num_tokens += len;
    shape.num_logit_rows += it.all_logits ? len : 1;
    shape.num_slots += it.seq->num_slots() + len;
  }
  return shape;
}

namespace {

// Checks a policy's plan against the sequence before anything is applied.
absl::Status CheckPlan(size_t item, const SequenceKv& seq, const StepPlan& plan, int64_t num_new, int64_t budget) {
  std::vector<uint8_t> seen(seq.num_slots(), 0);
  for (int32_t s : plan.release) {
    if (s < 0 || s >= seq.num_slots() || seq.rows[s] < 0 || seen[s]) {
      return absl::InternalError(absl::StrFormat("forward item %d: policy released slot %d, not a distinct occupied slot",
                                                 item, s));
    }
    seen[s] = 1;
  }
  if (plan.rebuild_positions.size() != plan.rebuild_tokens.size()) {
    return absl::InternalError(absl::StrFormat("forward item %d: policy rebuild plan has %d positions, %d tokens", item,
                                               plan.rebuild_positions.size(), plan.rebuild_tokens.size()));
  }
  for (int32_t p : plan.rebuild_positions) {
    if (p < 0 || p >= seq.next_pos) {
      return absl::InternalError(absl::StrFormat("forward item %d: policy rebuilds position %d, not a past token", item, p));
    }
  }
  const int64_t after = OccupiedSlots(seq) - static_cast<int64_t>(plan.release.size()) +
                        static_cast<int64_t>(plan.rebuild_positions.size()) + num_new;
  if (after > budget) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "forward item %d: the policy's plan leaves %d slots occupied, over the kv_budget of %d", item, after,
        budget));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PlannedForward> PlanForward(std::span<ForwardItem> items, const ModelConfig& c, RowAllocator& rows) {
  ADORE_ASSIGN_OR_RETURN(const ForwardShape shape, CheckForwardItems(items, c));
  PlannedForward out;
  out.items.resize(items.size());
  out.num_logit_rows = shape.num_logit_rows;

  // Decide every item's plan and count the fresh rows before changing anything.
  std::vector<StepPlan> plans(items.size());
  std::vector<int64_t> fresh(items.size(), 0);
  int64_t num_fresh = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const ForwardItem& it = items[i];
    const SequenceKv& seq = *it.seq;
    const int64_t len = it.tokens.size();
    if (it.policy != nullptr) {
      if (len > it.kv_budget) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "forward item %d: %d tokens in one step exceed its kv_budget of %d slots", i, len, it.kv_budget));
      }
      ADORE_ASSIGN_OR_RETURN(plans[i], it.policy->PlanStep(seq, len, it.kv_budget));
      ADORE_RETURN_IF_ERROR(CheckPlan(i, seq, plans[i], len, it.kv_budget));
    }
    const int64_t entries = len + static_cast<int64_t>(plans[i].rebuild_positions.size());
    fresh[i] = std::max<int64_t>(0, entries - static_cast<int64_t>(plans[i].release.size()));
    num_fresh += fresh[i];
  }
  ADORE_ASSIGN_OR_RETURN(std::vector<int32_t> fresh_rows, rows.Allocate(num_fresh));

  int64_t next_fresh = 0;
  std::vector<int32_t> freed;
  for (size_t i = 0; i < items.size(); ++i) {
    ForwardItem& it = items[i];
    SequenceKv& seq = *it.seq;
    const StepPlan& plan = plans[i];
    PlannedItem& p = out.items[i];
    p.num_rebuild = static_cast<int64_t>(plan.rebuild_positions.size());
    p.num_released = static_cast<int64_t>(plan.release.size());
    for (int64_t r = 0; r < p.num_rebuild; ++r) {
      p.tokens.push_back(plan.rebuild_tokens[r]);
      p.positions.push_back(plan.rebuild_positions[r]);
    }
    for (int32_t tok : it.tokens) {
      p.tokens.push_back(tok);
      p.positions.push_back(seq.next_pos++);
    }
    // Slots to fill, in order: released ones, empty ones, then appended.
    std::vector<int32_t> targets(plan.release.begin(), plan.release.end());
    for (int32_t s = 0; s < seq.num_slots(); ++s) {
      if (seq.rows[s] < 0) targets.push_back(s);
    }
    size_t next_target = 0;
    for (size_t t = 0; t < p.tokens.size(); ++t) {
      if (next_target < targets.size()) {
        const int32_t slot = targets[next_target++];
        if (seq.rows[slot] < 0) seq.rows[slot] = fresh_rows[next_fresh++];
        p.rows.push_back(seq.rows[slot]);
        seq.pos[slot] = p.positions[t];
        if (it.policy != nullptr) it.policy->OnSlotReused(slot);
      } else {
        p.rows.push_back(fresh_rows[next_fresh++]);
        seq.rows.push_back(p.rows.back());
        seq.pos.push_back(p.positions[t]);
      }
    }
    // Released slots nobody took: empty them and give their rows back.
    for (; next_target < plan.release.size(); ++next_target) {
      const int32_t slot = targets[next_target];
      freed.push_back(seq.rows[slot]);
      seq.rows[slot] = -1;
    }
    if (it.policy != nullptr) it.policy->RecordStep(p.num_released, p.num_rebuild);
    out.num_tokens += static_cast<int64_t>(p.tokens.size());
    out.num_slots += seq.num_slots();
  }
  rows.Free(freed);
  return out;
}

}  // namespace adore
