// Tensor parallelism of the CPU engine: SmolLM2 (9 heads, 3 KV heads, MLP 1536) split over 3 ranks, run as
// threads of this process talking Gloo over loopback (TcpStore rendezvous on an ephemeral port). Every rank
// must produce the single-rank engine's logits and greedy tokens, and under a release policy every rank
// must take the same decisions (identical slot maps) as each other and the same tokens as one rank, also
// when the ranks' own policies would decide otherwise (rank 0 plans for all of them).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/model_weights.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "worker/comm/gloo_communicator.h"
#include "worker/comm/tcp_store.h"
#include "worker/cpu_engine.h"
#include "worker/kv_cache.h"
#include "worker/release_policy.h"

namespace adore {
namespace {

constexpr int kTp = 3;
constexpr int64_t kKvRows = 512;

int32_t Argmax(const std::vector<float>& logits, int64_t vocab) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.begin() + vocab) - logits.begin());
}

double RelDiff(const std::vector<float>& a, const std::vector<float>& ref) {
  if (a.size() != ref.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (static_cast<double>(a[i]) - ref[i]) * (static_cast<double>(a[i]) - ref[i]);
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// What one run (one rank, or the single-rank reference) saw at each step.
struct Trace {
  std::vector<std::vector<float>> logits;        // per step, [vocab]
  std::vector<int32_t> tokens;                   // greedy token per step
  std::vector<std::vector<int32_t>> positions;   // per step, seq.pos after the step
  std::vector<uint64_t> hashes;                  // per step, SlotMapHash after the step
  absl::Status status;
};

// Runs `steps` forward steps: step 0 feeds `prompt`; later steps feed either the next token of `stream`
// (when not empty) or the previous greedy token.
void RunSteps(CpuEngine& engine, const std::vector<int32_t>& prompt, const std::vector<int32_t>& stream, int steps,
              ReleasePolicy* policy, int64_t budget, Trace* trace) {
  SequenceKv seq;
  std::vector<float> logits;
  const int64_t vocab = engine.config().vocab_size;
  int32_t token = -1;
  for (int i = 0; i < steps; ++i) {
    std::vector<int32_t> step;
    if (i == 0) {
      step = prompt;
    } else {
      step = {stream.empty() ? token : stream[i]};
    }
    ForwardItem item{&seq, step, false, policy, budget};
    absl::Status s = engine.Forward(std::span<ForwardItem>(&item, 1), &logits);
    if (!s.ok()) {
      trace->status = s;
      break;
    }
    token = Argmax(logits, vocab);
    trace->logits.push_back(logits);
    trace->tokens.push_back(token);
    trace->positions.push_back(seq.pos);
    trace->hashes.push_back(SlotMapHash(seq));
  }
  engine.Release(seq);
}

class TpCpuEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!testing::ModelAvailable()) return;
    auto weights = LoadModelWeights(testing::ModelPath());
    ASSERT_TRUE(weights.ok()) << weights.status();
    weights_ = new ModelWeights(*std::move(weights));
    auto engine = CpuEngine::Create(*weights_, CpuEngineOptions{.kv_rows = kKvRows});
    ASSERT_TRUE(engine.ok()) << engine.status();
    reference_ = engine->release();
  }
  static void TearDownTestSuite() {
    delete reference_;
    delete weights_;
    reference_ = nullptr;
    weights_ = nullptr;
  }
  void SetUp() override {
    if (reference_ == nullptr) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  }

  // Starts `world` ranks as threads, each with its Gloo communicator and its sharded engine, and runs
  // `body` on each. False (after recording failures) when a rank could not be set up.
  static bool RunRanks(int world, const std::string& group, const std::function<void(int, CpuEngine&)>& body) {
    absl::StatusOr<std::unique_ptr<comm::TcpStoreServer>> server = comm::TcpStoreServer::Start("127.0.0.1", 0);
    if (!server.ok()) {
      ADD_FAILURE() << server.status();
      return false;
    }
    std::atomic<bool> ok{true};
    std::vector<std::thread> threads;
    const auto start = std::chrono::steady_clock::now();
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        comm::GlooCommunicatorOptions o;
        o.rank = r;
        o.world_size = world;
        o.store_host = "127.0.0.1";
        o.store_port = (*server)->port();
        o.listen_host = "127.0.0.1";
        o.group = group;
        o.connect_timeout = absl::Seconds(30);
        o.op_timeout = absl::Seconds(60);
        absl::StatusOr<std::unique_ptr<comm::GlooCommunicator>> c = comm::GlooCommunicator::Create(o);
        if (!c.ok()) {
          ADD_FAILURE() << "rank " << r << ": " << c.status();
          ok = false;
          return;
        }
        // Every rank creates its engine; a failure here would leave the others waiting in collectives,
        // so all must succeed (they do the same checks on the same config).
        auto engine = CpuEngine::Create(
            *weights_, CpuEngineOptions{.kv_rows = kKvRows, .tp_rank = r, .tp_size = world, .comm = c->get()});
        if (!engine.ok()) {
          ADD_FAILURE() << "rank " << r << ": " << engine.status();
          ok = false;
          return;
        }
        const double setup_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        body(r, **engine);
        if (r == 0) {
          std::printf("rank 0: setup %.2f s, run %.2f s; %s\n", setup_s,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() - setup_s,
                      (*c)->Stats().DebugString().c_str());
        }
      });
    }
    for (std::thread& t : threads) t.join();
    return ok;
  }

  static ModelWeights* weights_;
  static CpuEngine* reference_;
};
ModelWeights* TpCpuEngineTest::weights_ = nullptr;
CpuEngine* TpCpuEngineTest::reference_ = nullptr;

TEST_F(TpCpuEngineTest, RejectsSizesThatDoNotDivideTheModel) {
  ModelWeights config_only;  // the checks come before any tensor is touched: no need to copy the model
  config_only.config = weights_->config;
  const ModelConfig& c = config_only.config;
  ASSERT_EQ(c.num_heads % 3, 0);
  ASSERT_EQ(c.num_kv_heads % 3, 0);
  ASSERT_EQ(c.intermediate_size % 3, 0);
  ASSERT_NE(c.num_heads % 2, 0);
  auto engine = CpuEngine::Create(config_only, CpuEngineOptions{.kv_rows = 16, .tp_rank = 0, .tp_size = 2});
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(engine.status().message().find("num_heads"), std::string::npos) << engine.status();
  // A divisible size still needs a communicator, and a rank inside the group.
  engine = CpuEngine::Create(config_only, CpuEngineOptions{.kv_rows = 16, .tp_rank = 0, .tp_size = 3});
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument) << engine.status();
  engine = CpuEngine::Create(config_only, CpuEngineOptions{.kv_rows = 16, .tp_rank = 3, .tp_size = 3});
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument) << engine.status();
}

TEST_F(TpCpuEngineTest, ShardedRanksMatchOneRankGreedyDecode) {
  std::vector<int32_t> prompt;
  for (int i = 0; i < 24; ++i) prompt.push_back(1000 + (i * 37) % 5000);
  constexpr int kSteps = 1 + 16;  // prefill, then 16 greedy decode steps
  Trace ref;
  RunSteps(*reference_, prompt, {}, kSteps, nullptr, 0, &ref);
  ASSERT_TRUE(ref.status.ok()) << ref.status;

  std::vector<Trace> traces(kTp);
  std::vector<int64_t> pool_stride(kTp, 0);
  ASSERT_TRUE(RunRanks(kTp, "tp-greedy", [&](int r, CpuEngine& engine) {
    pool_stride[r] = engine.pool().row_stride();
    RunSteps(engine, prompt, {}, kSteps, nullptr, 0, &traces[r]);
  }));
  const ModelConfig& c = weights_->config;
  for (int r = 0; r < kTp; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    EXPECT_EQ(pool_stride[r], c.num_kv_heads / kTp * c.head_dim) << "KV pool holds only the rank's heads";
    ASSERT_TRUE(traces[r].status.ok()) << traces[r].status;
    ASSERT_EQ(traces[r].logits.size(), ref.logits.size());
    double worst = 0;
    for (size_t s = 0; s < ref.logits.size(); ++s) worst = std::max(worst, RelDiff(traces[r].logits[s], ref.logits[s]));
    EXPECT_LE(worst, 1e-4) << "worst ||logits - ref|| / ||ref|| over the steps";
    EXPECT_EQ(traces[r].tokens, ref.tokens);
    std::printf("rank %d: worst relative logit difference %.3g\n", r, worst);
  }
  // All-reduce leaves the same bytes everywhere, so the ranks' logits agree exactly.
  for (int r = 1; r < kTp; ++r) EXPECT_EQ(traces[r].logits, traces[0].logits) << "rank " << r;
}

TEST_F(TpCpuEngineTest, HeavyHitterDecisionsAgreeAcrossRanks) {
  constexpr int64_t kBudget = 24;
  constexpr int kLen = 60;
  std::vector<int32_t> stream;
  for (int i = 0; i < kLen; ++i) stream.push_back(1000 + (i * 53) % 7000);
  const std::vector<int32_t> first = {stream[0]};
  const ReleaseConfig config{.kind = PolicyKind::kHeavyHitter, .kv_budget = kBudget};

  Trace ref;
  {
    auto policy = MakeReleasePolicy(config);
    ASSERT_TRUE(policy.ok()) << policy.status();
    RunSteps(*reference_, first, stream, kLen, policy->get(), kBudget, &ref);
    ASSERT_TRUE(ref.status.ok()) << ref.status;
    EXPECT_GT((*policy)->stats().released, 0) << "the stream must overflow the budget";
  }

  std::vector<Trace> traces(kTp);
  ASSERT_TRUE(RunRanks(kTp, "tp-heavy-hitter", [&](int r, CpuEngine& engine) {
    auto policy = MakeReleasePolicy(config);
    if (!policy.ok()) {
      traces[r].status = policy.status();
      return;  // every rank fails the same way, so none is left waiting in a collective
    }
    RunSteps(engine, first, stream, kLen, policy->get(), kBudget, &traces[r]);
  }));
  for (int r = 0; r < kTp; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    ASSERT_TRUE(traces[r].status.ok()) << traces[r].status;
    ASSERT_EQ(traces[r].tokens.size(), static_cast<size_t>(kLen));
    EXPECT_EQ(traces[r].tokens, ref.tokens);
    // Every rank took the same release decisions at every step.
    EXPECT_EQ(traces[r].hashes, traces[0].hashes);
    EXPECT_EQ(traces[r].positions, traces[0].positions);
    for (const std::vector<int32_t>& pos : traces[r].positions) {
      EXPECT_LE(static_cast<int64_t>(pos.size()), kBudget);
    }
  }
  int differing = 0;
  for (size_t s = 0; s < ref.positions.size() && s < traces[0].positions.size(); ++s) {
    if (ref.positions[s] != traces[0].positions[s]) ++differing;
  }
  std::printf("steps whose slot map differs from one rank's: %d of %d\n", differing, kLen);
  EXPECT_EQ(differing, 0);
}

// Refuses to plan: a follower rank must never ask its policy.
class NeverAskedPolicy final : public ReleasePolicy {
 public:
  PolicyKind kind() const override { return PolicyKind::kWindow; }
  absl::StatusOr<std::vector<int32_t>> SelectRelease(const SequenceKv&, int64_t) override {
    return absl::InternalError("a follower rank asked its own policy to plan");
  }
};

TEST_F(TpCpuEngineTest, RanksFollowRankZerosPlansWhenTheirPoliciesDisagree) {
  constexpr int64_t kBudget = 24;
  constexpr int kLen = 40;
  std::vector<int32_t> stream;
  for (int i = 0; i < kLen; ++i) stream.push_back(1000 + (i * 53) % 7000);
  const std::vector<int32_t> first = {stream[0]};
  const ReleaseConfig heavy{.kind = PolicyKind::kHeavyHitter, .kv_budget = kBudget};
  const ReleaseConfig window{.kind = PolicyKind::kWindow, .kv_budget = kBudget};

  // On one rank, the two policies keep different tokens.
  Trace ref, ref_window;
  {
    auto policy = MakeReleasePolicy(heavy);
    ASSERT_TRUE(policy.ok()) << policy.status();
    RunSteps(*reference_, first, stream, kLen, policy->get(), kBudget, &ref);
    ASSERT_TRUE(ref.status.ok()) << ref.status;
    auto other = MakeReleasePolicy(window);
    ASSERT_TRUE(other.ok()) << other.status();
    RunSteps(*reference_, first, stream, kLen, other->get(), kBudget, &ref_window);
    ASSERT_TRUE(ref_window.status.ok()) << ref_window.status;
    ASSERT_NE(ref.hashes, ref_window.hashes) << "the policies must disagree for this test to mean anything";
  }

  // Rank 0 runs heavy_hitter, rank 1 the window policy, rank 2 one that fails if ever asked.
  std::vector<Trace> traces(kTp);
  std::vector<ReleaseStats> stats(kTp);
  ASSERT_TRUE(RunRanks(kTp, "tp-disagree", [&](int r, CpuEngine& engine) {
    std::unique_ptr<ReleasePolicy> policy;
    if (r == 2) {
      policy = std::make_unique<NeverAskedPolicy>();
    } else {
      auto made = MakeReleasePolicy(r == 0 ? heavy : window);
      if (!made.ok()) {
        traces[r].status = made.status();
        return;  // MakeReleasePolicy of these configs cannot fail on one rank only
      }
      policy = *std::move(made);
    }
    RunSteps(engine, first, stream, kLen, policy.get(), kBudget, &traces[r]);
    stats[r] = policy->stats();
  }));
  for (int r = 0; r < kTp; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    ASSERT_TRUE(traces[r].status.ok()) << traces[r].status;
    EXPECT_EQ(traces[r].tokens, ref.tokens);
    // Rank 0's (heavy_hitter) schedule on every rank: one rank's positions, the same maps everywhere
    // (rows too, which the shared reference engine allocates differently).
    EXPECT_EQ(traces[r].positions, ref.positions);
    EXPECT_EQ(traces[r].hashes, traces[0].hashes);
    EXPECT_EQ(stats[r].released, stats[0].released);
  }
  EXPECT_GT(stats[0].released, 0);
}

}  // namespace
}  // namespace adore
