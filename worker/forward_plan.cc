// Validation and slot planning of a forward call, shared by the CPU and CUDA engines; under tensor
// parallelism rank 0 plans and broadcasts its plans to the other ranks.
#include "worker/forward_plan.h"

#include <algorithm>
#include <cstring>
#include <string>

#include <omp.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "common/status.h"
#include "worker/comm/communicator.h"

namespace adore {

int HostThreadsForItems(int64_t num_items) {
  if (num_items < kParallelItems) return 1;
  return std::max(1, std::min(omp_get_max_threads(), kMaxHostThreads));
}

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
absl::Status CheckPlan(size_t item, const SequenceKv& seq, const StepPlan& plan, int64_t num_new, int64_t budget,
                       int64_t max_rebuild) {
  // A step releases a few slots (at most the rebuilt and new tokens' count plus a bounded excess): a
  // pairwise duplicate check costs less than a pass over the slot table every step.
  for (size_t a = 0; a < plan.release.size(); ++a) {
    const int32_t s = plan.release[a];
    const bool repeated = std::find(plan.release.begin(), plan.release.begin() + a, s) != plan.release.begin() + a;
    if (s < 0 || s >= seq.num_slots() || seq.rows[s] < 0 || repeated) {
      return absl::InternalError(absl::StrFormat("forward item %d: policy released slot %d, not a distinct occupied slot",
                                                 item, s));
    }
  }
  if (plan.rebuild_positions.size() != plan.rebuild_tokens.size()) {
    return absl::InternalError(absl::StrFormat("forward item %d: policy rebuild plan has %d positions, %d tokens", item,
                                               plan.rebuild_positions.size(), plan.rebuild_tokens.size()));
  }
  if (static_cast<int64_t>(plan.rebuild_positions.size()) > max_rebuild) {
    return absl::InternalError(absl::StrFormat("forward item %d: policy rebuilds %d tokens, over its bound of %d",
                                               item, plan.rebuild_positions.size(), max_rebuild));
  }
  for (int32_t p : plan.rebuild_positions) {
    if (p < 0 || p >= seq.next_pos) {
      return absl::InternalError(absl::StrFormat("forward item %d: policy rebuilds position %d, not a past token", item, p));
    }
  }
  // The slot count bounds the occupied count: where that bound fits, the table is not walked (a pass over
  // every table each step is memory traffic: 16 MB at 4,096 sequences of 1,024 slots).
  const int64_t added = static_cast<int64_t>(plan.rebuild_positions.size()) + num_new -
                        static_cast<int64_t>(plan.release.size());
  if (seq.num_slots() + added <= budget) return absl::OkStatus();
  const int64_t after = OccupiedSlots(seq) + added;
  if (after > budget) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "forward item %d: the policy's plan leaves %d slots occupied, over the kv_budget of %d", item, after,
        budget));
  }
  return absl::OkStatus();
}

// What a call will do, decided before any state changes: every item's plan, in item order (empty for
// items without a policy), and the pool rows it takes.
struct Decision {
  ForwardShape shape;
  std::vector<StepPlan> plans;
  std::vector<int32_t> fresh_rows;
};

// Pool rows an item's plan needs beyond the released slots it reuses (rows of empty slots are taken as
// well): one per rebuilt or new token past the released slots.
int64_t FreshRowsOf(const ForwardItem& item, const StepPlan& plan) {
  const int64_t entries = static_cast<int64_t>(item.tokens.size()) + static_cast<int64_t>(plan.rebuild_positions.size());
  return std::max<int64_t>(0, entries - static_cast<int64_t>(plan.release.size()));
}

int64_t FreshRows(std::span<const ForwardItem> items, const std::vector<StepPlan>& plans) {
  int64_t num_fresh = 0;
  for (size_t i = 0; i < items.size(); ++i) num_fresh += FreshRowsOf(items[i], plans[i]);
  return num_fresh;
}

// Checks the call, asks each item's policy for its plan, checks it and takes the pool rows (the
// single-rank path and rank 0). The items' plans are independent (a policy plans its own sequence), so
// they are made in parallel; the error reported is the first item's in call order, as in a serial loop.
absl::StatusOr<Decision> Decide(std::span<ForwardItem> items, const ModelConfig& c, RowAllocator& rows) {
  Decision d;
  ADORE_ASSIGN_OR_RETURN(d.shape, CheckForwardItems(items, c));
  d.plans.resize(items.size());
  const int64_t num_items = static_cast<int64_t>(items.size());
  std::vector<absl::Status> status(items.size());
  const int threads = HostThreadsForItems(num_items);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < num_items; ++i) {
    const ForwardItem& it = items[i];
    if (it.policy == nullptr) continue;
    const int64_t len = it.tokens.size();
    if (len > it.kv_budget) {
      status[i] = absl::InvalidArgumentError(absl::StrFormat(
          "forward item %d: %d tokens in one step exceed its kv_budget of %d slots", i, len, it.kv_budget));
      continue;
    }
    absl::StatusOr<StepPlan> plan = it.policy->PlanStep(*it.seq, len, it.kv_budget);
    if (!plan.ok()) {
      status[i] = plan.status();
      continue;
    }
    d.plans[i] = *std::move(plan);
    status[i] = CheckPlan(i, *it.seq, d.plans[i], len, it.kv_budget, it.policy->max_rebuild_per_step());
  }
  for (const absl::Status& st : status) ADORE_RETURN_IF_ERROR(st);
  ADORE_ASSIGN_OR_RETURN(d.fresh_rows, rows.Allocate(FreshRows(items, d.plans)));
  return d;
}

bool HasEmptySlot(const SequenceKv& seq) {
  int32_t lowest = 0;
  for (int32_t r : seq.rows) lowest = std::min(lowest, r);
  return lowest < 0;
}

// Writes the checked plans into the slot tables (nothing can fail any more). Each item touches only its
// own sequence, policy and share of the fresh rows (a prefix sum of what each needs), so the items are
// applied in parallel; the rows freed are given back in item order.
PlannedForward ApplyPlans(std::span<ForwardItem> items, const std::vector<StepPlan>& plans,
                          const std::vector<int32_t>& fresh_rows, int64_t num_logit_rows, RowAllocator& rows) {
  PlannedForward out;
  out.items.resize(items.size());
  out.num_logit_rows = num_logit_rows;
  const int64_t num_items = static_cast<int64_t>(items.size());
  // Item i takes fresh rows [first_fresh[i], first_fresh[i + 1]) (FreshRowsOf: an empty slot it fills or an
  // appended one per token beyond its released slots).
  std::vector<int64_t> first_fresh(items.size() + 1, 0);
  for (size_t i = 0; i < items.size(); ++i) first_fresh[i + 1] = first_fresh[i] + FreshRowsOf(items[i], plans[i]);
  std::vector<std::vector<int32_t>> freed(items.size());
  const int threads = HostThreadsForItems(num_items);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < num_items; ++i) {
    ForwardItem& it = items[i];
    SequenceKv& seq = *it.seq;
    const StepPlan& plan = plans[i];
    PlannedItem& p = out.items[i];
    int64_t next_fresh = first_fresh[i];
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
    // Slots to fill, in order: released ones, empty ones, then appended. The empty ones are looked for only
    // when the released ones do not suffice, and only in a table that has one (a vectorized minimum: a
    // decode step of a full cache or of full attention does not walk its table element by element).
    SlotList targets(plan.release.begin(), plan.release.end());
    if (p.tokens.size() > targets.size() && HasEmptySlot(seq)) {
      for (int32_t s = 0; s < seq.num_slots(); ++s) {
        if (seq.rows[s] < 0) targets.push_back(s);
      }
    }
    size_t next_target = 0;
    for (size_t t = 0; t < p.tokens.size(); ++t) {
      if (next_target < targets.size()) {
        const int32_t slot = targets[next_target++];
        seq.SetSlot(slot, seq.rows[slot] < 0 ? fresh_rows[next_fresh++] : seq.rows[slot], p.positions[t]);
        p.rows.push_back(seq.rows[slot]);
        p.changed_slots.push_back(slot);
        if (it.policy != nullptr) it.policy->OnSlotReused(slot);
      } else {
        p.rows.push_back(fresh_rows[next_fresh++]);
        p.changed_slots.push_back(static_cast<int32_t>(seq.num_slots()));
        seq.AppendSlot(p.rows.back(), p.positions[t]);
      }
      if (it.policy != nullptr) it.policy->OnSlotFilled(p.changed_slots.back(), p.positions[t]);
    }
    // Released slots nobody took: empty them and give their rows back.
    for (; next_target < plan.release.size(); ++next_target) {
      const int32_t slot = targets[next_target];
      freed[i].push_back(seq.rows[slot]);
      seq.SetSlot(slot, -1, seq.pos[slot]);
      p.changed_slots.push_back(slot);
    }
    ++seq.version;
    if (it.policy != nullptr) it.policy->RecordStep(p.num_released, p.num_rebuild);
  }
  std::vector<int32_t> all_freed;
  for (size_t i = 0; i < items.size(); ++i) {
    out.num_tokens += static_cast<int64_t>(out.items[i].tokens.size());
    out.num_slots += items[i].seq->num_slots();
    all_freed.insert(all_freed.end(), freed[i].begin(), freed[i].end());
  }
  rows.Free(all_freed);
  return out;
}

// Wire form of a call's plans, rank 0 -> the other ranks, as int32 words in host byte order (every rank
// runs the same build on the same architecture):
//   status code, message length in bytes, the message (padded to whole words); when the code is OK:
//   number of items, then per item: n_release, the released slots, n_rebuild, the rebuilt positions,
//   their token ids.
void PutWord(std::string* out, int32_t v) { out->append(reinterpret_cast<const char*>(&v), sizeof(v)); }

std::string EncodePlans(const absl::Status& status, const std::vector<StepPlan>& plans) {
  std::string out;
  PutWord(&out, static_cast<int32_t>(status.code()));
  const absl::string_view message = status.message();
  PutWord(&out, static_cast<int32_t>(message.size()));
  out.append(message.data(), message.size());
  out.resize((out.size() + sizeof(int32_t) - 1) / sizeof(int32_t) * sizeof(int32_t), '\0');
  if (!status.ok()) return out;
  PutWord(&out, static_cast<int32_t>(plans.size()));
  for (const StepPlan& p : plans) {
    PutWord(&out, static_cast<int32_t>(p.release.size()));
    for (int32_t s : p.release) PutWord(&out, s);
    PutWord(&out, static_cast<int32_t>(p.rebuild_positions.size()));
    for (int32_t pos : p.rebuild_positions) PutWord(&out, pos);
    for (int32_t tok : p.rebuild_tokens) PutWord(&out, tok);
  }
  return out;
}

// A call's plans as rank 0 sent them, or its error.
struct SentPlans {
  absl::Status status;
  std::vector<StepPlan> plans;
};

// Reads what EncodePlans wrote; INTERNAL when the bytes do not parse (they come from rank 0's own
// encoder, so that would be a bug or memory corruption, not bad input).
absl::StatusOr<SentPlans> DecodePlans(absl::string_view bytes) {
  size_t at = 0;
  auto word = [&](int32_t* v) {
    if (bytes.size() - at < sizeof(int32_t)) return false;
    std::memcpy(v, bytes.data() + at, sizeof(int32_t));
    at += sizeof(int32_t);
    return true;
  };
  const absl::Status malformed = absl::InternalError(
      absl::StrFormat("tensor parallelism: rank 0's step plan (%d bytes) does not parse", bytes.size()));
  int32_t code = 0, length = 0;
  if (!word(&code) || !word(&length) || length < 0 || bytes.size() - at < static_cast<size_t>(length)) {
    return malformed;
  }
  SentPlans out;
  out.status = absl::Status(static_cast<absl::StatusCode>(code), bytes.substr(at, length));
  at += (static_cast<size_t>(length) + sizeof(int32_t) - 1) / sizeof(int32_t) * sizeof(int32_t);
  if (at > bytes.size()) return malformed;
  if (!out.status.ok()) return out;
  int32_t num_items = 0;
  if (!word(&num_items) || num_items < 0) return malformed;
  out.plans.resize(num_items);
  for (StepPlan& p : out.plans) {
    int32_t n = 0;
    if (!word(&n) || n < 0) return malformed;
    p.release.resize(n);
    for (int32_t& s : p.release) {
      if (!word(&s)) return malformed;
    }
    if (!word(&n) || n < 0) return malformed;
    p.rebuild_positions.resize(n);
    p.rebuild_tokens.resize(n);
    for (int32_t& pos : p.rebuild_positions) {
      if (!word(&pos)) return malformed;
    }
    for (int32_t& tok : p.rebuild_tokens) {
      if (!word(&tok)) return malformed;
    }
  }
  if (at != bytes.size()) return malformed;
  return out;
}

// Rank 0's bytes to every rank: their length first (a fixed-size broadcast, so the receivers can size
// their buffer), then the bytes themselves.
absl::Status BroadcastBytes(comm::Communicator& comm, std::string* bytes) {
  int64_t size = comm.rank() == 0 ? static_cast<int64_t>(bytes->size()) : 0;
  ADORE_RETURN_IF_ERROR(comm.Broadcast(&size, sizeof(size), /*root=*/0, /*stream=*/nullptr));
  if (comm.rank() != 0) bytes->assign(static_cast<size_t>(size), '\0');
  return comm.Broadcast(bytes->data(), bytes->size(), /*root=*/0, /*stream=*/nullptr);
}

// Rank 0 under tensor parallelism: decides like a single rank, then sends the decision (or its error)
// to the other ranks.
absl::StatusOr<Decision> Lead(std::span<ForwardItem> items, const ModelConfig& c, RowAllocator& rows,
                              comm::Communicator& comm) {
  absl::StatusOr<Decision> d = Decide(items, c, rows);
  std::string bytes = EncodePlans(d.status(), d.ok() ? d->plans : std::vector<StepPlan>());
  if (absl::Status st = BroadcastBytes(comm, &bytes); !st.ok()) {
    if (d.ok()) rows.Free(d->fresh_rows);  // a failed call changes nothing
    return st;
  }
  return d;
}

// The other ranks: take rank 0's plans (or its error) instead of asking their policies, and check them
// against their own slot tables.
absl::StatusOr<Decision> Follow(std::span<ForwardItem> items, const ModelConfig& c, RowAllocator& rows,
                                comm::Communicator& comm) {
  // Checked before the broadcast but reported after it: a rank must never leave rank 0 waiting.
  const absl::StatusOr<ForwardShape> shape = CheckForwardItems(items, c);
  std::string bytes;
  ADORE_RETURN_IF_ERROR(BroadcastBytes(comm, &bytes));
  ADORE_ASSIGN_OR_RETURN(SentPlans sent, DecodePlans(bytes));
  ADORE_RETURN_IF_ERROR(sent.status);  // rank 0's error, as rank 0 returns it
  auto diverged = [&](absl::string_view what) {
    return absl::InternalError(absl::StrFormat(
        "tensor parallelism: rank %d cannot apply rank 0's step plan: %s (the ranks' states diverged)",
        comm.rank(), what));
  };
  if (!shape.ok()) return diverged(shape.status().message());
  if (sent.plans.size() != items.size()) {
    return diverged(absl::StrFormat("%d plans for %d items", sent.plans.size(), items.size()));
  }
  for (size_t i = 0; i < items.size(); ++i) {
    const ForwardItem& it = items[i];
    const StepPlan& p = sent.plans[i];
    if (it.policy == nullptr) {
      if (!p.release.empty() || !p.rebuild_positions.empty()) {
        return diverged(absl::StrFormat("forward item %d has no policy here but a plan from rank 0", i));
      }
      continue;
    }
    if (absl::Status st = CheckPlan(i, *it.seq, p, static_cast<int64_t>(it.tokens.size()), it.kv_budget,
                                    it.policy->max_rebuild_per_step());
        !st.ok()) {
      return diverged(st.message());
    }
  }
  Decision d;
  d.shape = *shape;
  d.plans = std::move(sent.plans);
  ADORE_ASSIGN_OR_RETURN(d.fresh_rows, rows.Allocate(FreshRows(items, d.plans)));
  return d;
}

}  // namespace

absl::StatusOr<PlannedForward> PlanForward(std::span<ForwardItem> items, const ModelConfig& c, RowAllocator& rows,
                                           comm::Communicator* comm) {
  // Decide every item's plan and take the rows before changing anything. Calls without a policy have
  // nothing to agree on: they skip the broadcast (every rank sees the same items, so all skip it).
  const bool shared = comm != nullptr && comm->world_size() > 1 &&
                      std::any_of(items.begin(), items.end(), [](const ForwardItem& it) { return it.policy != nullptr; });
  absl::StatusOr<Decision> d = !shared              ? Decide(items, c, rows)
                               : comm->rank() == 0 ? Lead(items, c, rows, *comm)
                                                   : Follow(items, c, rows, *comm);
  if (!d.ok()) return d.status();
  return ApplyPlans(items, d->plans, d->fresh_rows, d->shape.num_logit_rows, rows);
}

}  // namespace adore
