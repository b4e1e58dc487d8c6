// One release schedule for all tensor-parallel ranks: PlanForward with a communicator lets rank 0's policies
// plan and the other ranks apply rank 0's plans (broadcast over Gloo, ranks as threads on 127.0.0.1). The
// ranks' own policies are given other minds here; their slot maps must still stay identical, rank 0's
// errors must reach every rank, and a plan a rank's state cannot take must be refused there. No model.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "worker/comm/gloo_communicator.h"
#include "worker/comm/tcp_store.h"
#include "worker/forward_plan.h"
#include "worker/kv_cache.h"
#include "worker/release_policy.h"

namespace adore {
namespace {

constexpr int64_t kBudget = 6;

ModelConfig Config() {
  ModelConfig c;
  c.vocab_size = 5000;
  c.max_context = 256;
  return c;
}

// Releases one slot per overflowing token: the oldest (or the newest) occupied one outside the first
// position; with `rebuild_at` > 0 it also brings back position 1 (token id 1000 + 1, as fed below) once
// the sequence reaches that position. Counts how often it was asked to plan.
class ChoosyPolicy final : public ReleasePolicy {
 public:
  ChoosyPolicy(bool newest, int32_t rebuild_at = 0) : newest_(newest), rebuild_at_(rebuild_at) {}
  int64_t max_rebuild_per_step() const override { return 1; }  // a bound: every rank can take rank 0's rebuild
  PolicyKind kind() const override { return PolicyKind::kWindow; }
  absl::StatusOr<StepPlan> PlanStep(const SequenceKv& seq, int64_t num_new, int64_t budget) override {
    ++plan_calls;
    if (fail_with.has_value()) return *fail_with;
    StepPlan plan;
    const bool rebuild = rebuild_at_ > 0 && seq.next_pos == rebuild_at_ &&
                         std::find(seq.pos.begin(), seq.pos.end(), 1) == seq.pos.end();
    if (rebuild) {
      plan.rebuild_positions.push_back(1);
      plan.rebuild_tokens.push_back(1001);
    }
    int64_t over = OccupiedSlots(seq) + num_new + static_cast<int64_t>(plan.rebuild_positions.size()) - budget;
    std::vector<int32_t> order;
    for (int32_t s = 0; s < seq.num_slots(); ++s) {
      if (seq.rows[s] >= 0 && seq.pos[s] > 0) order.push_back(s);
    }
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return newest_ ? seq.pos[a] > seq.pos[b] : seq.pos[a] < seq.pos[b];
    });
    for (size_t i = 0; i < order.size() && over > 0; ++i, --over) plan.release.push_back(order[i]);
    return plan;
  }
  absl::StatusOr<std::vector<int32_t>> SelectRelease(const SequenceKv&, int64_t) override {
    return absl::InternalError("unused");
  }

  int plan_calls = 0;
  std::optional<absl::Status> fail_with;  // set: PlanStep returns this error

 private:
  bool newest_;
  int32_t rebuild_at_;
};

// Creates `world` Gloo communicators in threads (they must rendezvous concurrently) and runs `body` on
// each rank's thread. False (after recording failures) when a rank could not join.
bool RunRanks(int world, const std::string& group, const std::function<void(comm::Communicator&)>& body) {
  absl::StatusOr<std::unique_ptr<comm::TcpStoreServer>> server = comm::TcpStoreServer::Start("127.0.0.1", 0);
  if (!server.ok()) {
    ADD_FAILURE() << server.status();
    return false;
  }
  std::atomic<bool> ok{true};
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      comm::GlooCommunicatorOptions o;
      o.rank = r;
      o.world_size = world;
      o.store_port = (*server)->port();
      o.listen_host = "127.0.0.1";
      o.group = group;
      o.connect_timeout = absl::Seconds(20);
      o.op_timeout = absl::Seconds(20);
      absl::StatusOr<std::unique_ptr<comm::GlooCommunicator>> c = comm::GlooCommunicator::Create(o);
      if (!c.ok()) {
        ADD_FAILURE() << "rank " << r << ": " << c.status();
        ok = false;
        return;
      }
      body(**c);
    });
  }
  for (std::thread& t : threads) t.join();
  return ok;
}

// Two sequences fed one token per step (token id 1000 + position): `a` under `policy` with kv_budget 6,
// `b` without a policy. Records both slot-map hashes after every step.
struct Trace {
  SequenceKv a, b;
  std::vector<uint64_t> hashes;
  std::vector<int32_t> tokens_a;  // every token run for `a` (rebuilt ones included), in run order
  absl::Status status;
};

void Steps(int steps, ReleasePolicy* policy, RowAllocator& rows, comm::Communicator* comm, Trace* run) {
  const ModelConfig c = Config();
  for (int i = 0; i < steps; ++i) {
    const int32_t ta = 1000 + run->a.next_pos, tb = 1000 + run->b.next_pos;
    std::vector<ForwardItem> items = {{&run->a, std::span<const int32_t>(&ta, 1), false, policy, kBudget},
                                      {&run->b, std::span<const int32_t>(&tb, 1)}};
    absl::StatusOr<PlannedForward> plan = PlanForward(std::span<ForwardItem>(items), c, rows, comm);
    if (!plan.ok()) {
      run->status = plan.status();
      return;
    }
    run->tokens_a.insert(run->tokens_a.end(), plan->items[0].tokens.begin(), plan->items[0].tokens.end());
    run->hashes.push_back(SlotMapHash(run->a) ^ (SlotMapHash(run->b) * 31));
  }
}

TEST(PlanBroadcastTest, FollowersApplyRankZerosPlansWhenTheirPoliciesDisagree) {
  constexpr int kWorld = 2, kSteps = 24;
  // Alone, the two minds disagree: released oldest-first vs newest-first gives other slot maps.
  Trace alone0, alone1;
  {
    ChoosyPolicy oldest(/*newest=*/false, /*rebuild_at=*/15), newest(/*newest=*/true);
    RowAllocator rows0(64), rows1(64);
    Steps(kSteps, &oldest, rows0, nullptr, &alone0);
    Steps(kSteps, &newest, rows1, nullptr, &alone1);
    ASSERT_TRUE(alone0.status.ok()) << alone0.status;
    ASSERT_TRUE(alone1.status.ok()) << alone1.status;
    ASSERT_NE(alone0.hashes, alone1.hashes);
  }

  std::vector<Trace> runs(kWorld);
  std::vector<ReleaseStats> stats(kWorld);
  std::vector<int> plan_calls(kWorld);
  std::vector<int64_t> free_rows(kWorld);
  std::vector<comm::CommStats> comm_stats(kWorld);
  ASSERT_TRUE(RunRanks(kWorld, "plan-disagree", [&](comm::Communicator& comm) {
    const int r = comm.rank();
    // Rank 0 thinks like alone0; rank 1 the other way round (and would never rebuild).
    ChoosyPolicy policy(/*newest=*/r != 0, /*rebuild_at=*/r == 0 ? 15 : 0);
    RowAllocator rows(64);
    Steps(kSteps, &policy, rows, &comm, &runs[r]);
    stats[r] = policy.stats();
    plan_calls[r] = policy.plan_calls;
    free_rows[r] = rows.num_free();
    comm_stats[r] = comm.Stats();
  }));
  for (int r = 0; r < kWorld; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    ASSERT_TRUE(runs[r].status.ok()) << runs[r].status;
    // Rank 0's schedule, on every rank: the same slot maps as rank 0 deciding alone, the same tokens run
    // (the rebuilt one included) and the same stats.
    EXPECT_EQ(runs[r].hashes, alone0.hashes);
    EXPECT_EQ(runs[r].a.pos, alone0.a.pos);
    EXPECT_EQ(runs[r].a.rows, alone0.a.rows);
    EXPECT_EQ(runs[r].tokens_a, alone0.tokens_a);
    EXPECT_EQ(stats[r].released, kSteps + 1 - kBudget);
    EXPECT_EQ(stats[r].rebuilt, 1);
    EXPECT_EQ(free_rows[r], free_rows[0]);
    // One length and one payload broadcast per call (every call has a policy here).
    EXPECT_EQ(comm_stats[r][comm::CommOp::kBroadcast].calls, 2 * kSteps);
  }
  EXPECT_EQ(plan_calls[0], kSteps);
  EXPECT_EQ(plan_calls[1], 0) << "a follower must not ask its policy";
}

TEST(PlanBroadcastTest, RankZerosErrorsComeBackOnEveryRankAndChangeNothing) {
  constexpr int kWorld = 2;
  std::vector<absl::Status> refused(kWorld), exhausted(kWorld), after(kWorld);
  // char, not bool: vector<bool> packs the ranks' flags into one word, which their threads would race on.
  std::vector<char> unchanged(kWorld, false);
  ASSERT_TRUE(RunRanks(kWorld, "plan-errors", [&](comm::Communicator& comm) {
    const int r = comm.rank();
    ChoosyPolicy policy(/*newest=*/false);
    // Rank 0's pool is the small one: its RESOURCE_EXHAUSTED must be every rank's answer.
    RowAllocator rows(r == 0 ? 12 : 64);
    Trace run;
    Steps(4, &policy, rows, &comm, &run);
    if (!run.status.ok()) {
      after[r] = run.status;
      return;
    }
    const SequenceKv a = run.a, b = run.b;
    const int64_t free_before = rows.num_free();
    // Only rank 0's policy fails; a follower's would have planned fine.
    if (r == 0) policy.fail_with = absl::FailedPreconditionError("rank 0's policy has no candidate");
    Steps(1, &policy, rows, &comm, &run);
    refused[r] = run.status;
    policy.fail_with.reset();
    // Eight new tokens for `b` (no policy) next to `a`'s one: rank 0 has 12 - 8 rows left, too few.
    const std::vector<int32_t> prompt(8, 1234);
    const int32_t ta = 1000 + run.a.next_pos;
    std::vector<ForwardItem> items = {{&run.a, std::span<const int32_t>(&ta, 1), false, &policy, kBudget},
                                      {&run.b, prompt}};
    exhausted[r] = PlanForward(std::span<ForwardItem>(items), Config(), rows, &comm).status();
    unchanged[r] = run.a.pos == a.pos && run.a.rows == a.rows && run.a.next_pos == a.next_pos &&
                   run.b.pos == b.pos && run.b.rows == b.rows && rows.num_free() == free_before;
    // The group is still in step: the next call works everywhere.
    run.status = absl::OkStatus();
    Steps(1, &policy, rows, &comm, &run);
    after[r] = run.status;
  }));
  for (int r = 0; r < kWorld; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    EXPECT_EQ(refused[r].code(), absl::StatusCode::kFailedPrecondition) << refused[r];
    EXPECT_EQ(refused[r].message(), "rank 0's policy has no candidate");
    EXPECT_EQ(exhausted[r].code(), absl::StatusCode::kResourceExhausted) << exhausted[r];
    EXPECT_EQ(exhausted[r].message(), exhausted[0].message());
    EXPECT_TRUE(unchanged[r]) << "a refused call changes nothing";
    EXPECT_TRUE(after[r].ok()) << after[r];
  }
}

TEST(PlanBroadcastTest, AFollowerRefusesAPlanItsSlotTableCannotTake) {
  constexpr int kWorld = 2;
  std::vector<absl::Status> status(kWorld);
  ASSERT_TRUE(RunRanks(kWorld, "plan-diverged", [&](comm::Communicator& comm) {
    const int r = comm.rank();
    ChoosyPolicy policy(/*newest=*/false);
    RowAllocator rows(64);
    Trace run;
    Steps(kBudget, &policy, rows, &comm, &run);  // full budget, nothing released yet
    if (!run.status.ok()) {
      status[r] = run.status;
      return;
    }
    // Rank 1's state drifts (a slot rank 0 will release is empty there): rank 0's plan cannot apply.
    if (r == 1) {
      for (int32_t s = 0; s < run.a.num_slots(); ++s) {
        if (run.a.pos[s] == 1) {
          rows.Free(std::span<const int32_t>(&run.a.rows[s], 1));
          run.a.rows[s] = -1;
        }
      }
    }
    Steps(1, &policy, rows, &comm, &run);
    status[r] = run.status;
  }));
  EXPECT_TRUE(status[0].ok()) << status[0];
  EXPECT_EQ(status[1].code(), absl::StatusCode::kInternal) << status[1];
  EXPECT_NE(status[1].message().find("diverged"), std::string::npos) << status[1];
}

TEST(PlanBroadcastTest, CallsWithoutAPolicyBroadcastNothing) {
  constexpr int kWorld = 2;
  std::vector<int64_t> broadcasts(kWorld, -1);
  std::vector<uint64_t> hashes(kWorld);
  ASSERT_TRUE(RunRanks(kWorld, "plan-none", [&](comm::Communicator& comm) {
    RowAllocator rows(64);
    Trace run;
    Steps(10, /*policy=*/nullptr, rows, &comm, &run);
    EXPECT_TRUE(run.status.ok()) << run.status;
    broadcasts[comm.rank()] = comm.Stats()[comm::CommOp::kBroadcast].calls;
    hashes[comm.rank()] = run.hashes.empty() ? 0 : run.hashes.back();
  }));
  EXPECT_EQ(broadcasts, std::vector<int64_t>(kWorld, 0));
  EXPECT_EQ(hashes[1], hashes[0]);
}

}  // namespace
}  // namespace adore
