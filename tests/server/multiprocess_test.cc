// The distributed runtime as deployed: the built adore-server and adore-worker binaries as separate
// processes on loopback. Two workers (Gloo, TP=2) and one worker (TP=1) must give the single-process
// engine's one-at-a-time greedy tokens, under full attention and under adore (kv_budget below the prompt,
// with and without rebuild), with the coordinator comparing the ranks' slot-map hashes every step. The
// workers are listed (adore-server --workers) or register themselves (adore-server --expect_workers 2,
// adore-worker --coordinator, one asking for rank 1): both give the same tokens.
//
// SmolLM2's 9 query / 3 KV heads do not split over 2 ranks, so the model is first widened to 12 / 4 heads
// with zero heads (tests/server/padded_heads_model.h: the same function; every run, the reference
// included, uses that file).
#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "adore/v1/adore.grpc.pb.h"
#include "adore/v1/worker.grpc.pb.h"
#include "common/model_weights.h"
#include "common/tokenizer.h"
#include "coordinator/grpc/adore_service.h"
#include "gtest/gtest.h"
#include "tests/server/child_process.h"
#include "tests/server/padded_heads_model.h"
#include "tests/server/server_test_util.h"
#include "tests/test_util.h"
#include "worker/adore_controller.h"
#include "worker/cpu_engine.h"
#include "worker/grpc/worker_service.h"
#include "worker/memory_budget.h"

namespace adore {
namespace {

using testing::Child;

constexpr char kSecret[] = "multiprocess-secret-5d1e";
constexpr int64_t kBudget = 32;

struct Case {
  std::string text;
  int max_tokens;
  PolicyKind policy = PolicyKind::kFull;  // adore runs at kv_budget 32
  int rebuild = 0;
};

// What one deployment (server + `tp` workers) answered.
struct Deployment {
  std::vector<testing::StreamResult> results;  // per case
  v1::ServerStats stats;                       // after all cases
  std::vector<v1::WorkerHealthResponse> health;  // per rank, after all cases
  std::string logs;                            // every process's output, for failure messages
};

// How the coordinator finds its workers.
enum class Discovery {
  kListed,      // the workers start first; adore-server --workers names them in rank order
  kRegistered,  // adore-server --expect_workers starts first; each adore-worker --coordinator registers
};

// VmHWM (peak resident set) of a live process, in bytes; -1 when it cannot be read.
int64_t PeakResidentBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return 1024 * std::stoll(line.substr(6));  // "VmHWM:   12345 kB"
  }
  return -1;
}

// Starts `tp` adore-worker processes and adore-server over them, sends every case at once (continuous
// batching mixes them), then reads the server's stats and the workers' health (in rank order).
void Deploy(int tp, const std::string& model, const std::string& dir, const std::vector<Case>& cases,
            Deployment* out, Discovery discovery = Discovery::kListed) {
  const auto t_start = std::chrono::steady_clock::now();
  const std::string secret_file = dir + "/secret";
  std::ofstream(secret_file) << kSecret << "\n";
  std::vector<std::unique_ptr<Child>> workers;
  std::vector<std::string> addresses;
  auto logs = [&](Child* server) {
    std::string all;
    if (server != nullptr) all += server->Logs();
    for (const auto& w : workers) all += w->Logs();
    return all;
  };
  const std::string tag = absl::StrCat(discovery == Discovery::kListed ? "tp" : "reg-tp", tp);
  std::vector<std::string> server_args = {
      ADORE_SERVER_BIN, "--model=" + model, "--port=0", "--kv_rows=2048", "--max_batch=8",
      "--controller=" + std::string(ADORE_SOURCE_DIR) + "/tools/adore/controller.bin",
      "--worker_secret_file=" + secret_file};
  std::vector<std::string> worker_args = {ADORE_WORKER_BIN, "--port=0", "--secret_file=" + secret_file};
  absl::StatusOr<std::unique_ptr<Child>> server = absl::UnknownError("not started");
  if (discovery == Discovery::kRegistered) {
    // The coordinator first: it serves the registration on its port and prints it.
    server_args.push_back(absl::StrCat("--expect_workers=", tp));
    server_args.push_back("--expect_workers_timeout_s=60");
    server = Child::Start(tag + "-server", server_args, dir);
    ASSERT_TRUE(server.ok()) << server.status();
    absl::StatusOr<std::string> coordinator =
        (*server)->WaitForWordAfter("waiting for workers to register on ", absl::Seconds(30));
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    worker_args.push_back("--coordinator=" + *coordinator);
  }
  for (int r = 0; r < tp; ++r) {
    std::vector<std::string> args = worker_args;
    // Registered: the first worker asks for the last rank, the others take the lowest free one.
    if (discovery == Discovery::kRegistered && r == 0 && tp > 1) args.push_back(absl::StrCat("--rank=", tp - 1));
    auto w = Child::Start(absl::StrCat(tag, "-worker", r), args, dir);
    ASSERT_TRUE(w.ok()) << w.status();
    workers.push_back(*std::move(w));
  }
  for (const auto& w : workers) {  // each prints its address once it serves
    absl::StatusOr<std::string> addr = w->WaitForWordAfter("serving adore.v1.Worker on ", absl::Seconds(30));
    ASSERT_TRUE(addr.ok()) << addr.status();
    addresses.push_back(*addr);
  }
  if (discovery == Discovery::kRegistered) {
    // Each worker prints the rank it was given; the addresses go into rank order.
    std::vector<std::string> by_rank(tp);
    for (int i = 0; i < tp; ++i) {
      absl::StatusOr<std::string> rank = workers[i]->WaitForWordAfter("as rank ", absl::Seconds(30));
      ASSERT_TRUE(rank.ok()) << rank.status() << (*server)->Logs();
      int r = -1;
      ASSERT_TRUE(absl::SimpleAtoi(*rank, &r) && r >= 0 && r < tp) << *rank;
      EXPECT_EQ(r, i == 0 ? tp - 1 : i - 1) << "worker " << i << ": the requested rank, else the lowest free";
      ASSERT_TRUE(by_rank[r].empty()) << "rank " << r << " given twice";
      by_rank[r] = addresses[i];
    }
    addresses = by_rank;
  } else {
    server_args.push_back("--workers=" + absl::StrJoin(addresses, ","));
    server = Child::Start(tag + "-server", server_args, dir);
    ASSERT_TRUE(server.ok()) << server.status();
  }
  // The server bootstraps and loads every worker before it prints its own address.
  absl::StatusOr<std::string> addr =
      (*server)->WaitForWordAfter("serving adore.v1.Adore and grpc.health.v1 on ", absl::Seconds(60));
  ASSERT_TRUE(addr.ok()) << addr.status() << logs(nullptr);
  {
    // The coordinator of external workers reads the model's config and tokenizer, not its tensors: its
    // peak resident memory stays far below the float32 weights its workers hold.
    auto info = LoadModelInfo(model);
    ASSERT_TRUE(info.ok()) << info.status();
    const int64_t peak = PeakResidentBytes((*server)->pid());
    ASSERT_GT(peak, 0) << "no VmHWM for the server process";
    EXPECT_LT(peak, WeightsFloatBytes(*info) / 2) << "adore-server peak RSS " << peak << " bytes";
  }
  if (discovery == Discovery::kRegistered) {
    const std::string server_log = (*server)->Logs();
    for (int i = 1; i <= tp; ++i) {
      EXPECT_NE(server_log.find(absl::StrCat("worker ", i, "/", tp, " registered: ")), std::string::npos) << server_log;
    }
  }

  const auto t_ready = std::chrono::steady_clock::now();
  auto channel = grpc::CreateChannel(*addr, grpc::InsecureChannelCredentials());
  auto stub = v1::Adore::NewStub(channel);
  out->results.resize(cases.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < cases.size(); ++i) {
    clients.emplace_back([&, i] {
      v1::GenerateRequest req;
      req.set_text(cases[i].text);
      req.mutable_sampling()->set_max_tokens(cases[i].max_tokens);
      req.mutable_sampling()->set_temperature(0.0f);
      if (cases[i].policy != PolicyKind::kFull) {
        req.mutable_release()->set_policy(PolicyToProto(cases[i].policy));
        req.mutable_release()->set_kv_budget(kBudget);
        req.mutable_release()->set_rebuild(cases[i].rebuild);
      }
      out->results[i] = testing::ReadGenerate(*stub, req, /*deadline_ms=*/120000);
    });
  }
  for (std::thread& t : clients) t.join();
  const auto t_done = std::chrono::steady_clock::now();

  // A stream's final message can reach its client before the scheduler has counted that step (it books a
  // step's stats, slot-map checks included, after handing out its events): read the stats once no request
  // is active any more.
  const absl::Time stats_deadline = absl::Now() + absl::Seconds(10);
  while (true) {
    grpc::ClientContext sctx;
    const grpc::Status st = stub->GetStats(&sctx, v1::GetStatsRequest(), &out->stats);
    ASSERT_TRUE(st.ok()) << st.error_message();
    if (out->stats.active_requests() == 0 && out->stats.queued_requests() == 0) break;
    ASSERT_LT(absl::Now(), stats_deadline) << "requests still active: " << out->stats.ShortDebugString();
    absl::SleepFor(absl::Milliseconds(20));
  }
  // The sequences that finished are ended on the workers by one more step, which may still be running:
  // read the ranks' health once none holds a live sequence, all at the same step.
  const absl::Time health_deadline = absl::Now() + absl::Seconds(10);
  while (true) {
    out->health.assign(addresses.size(), v1::WorkerHealthResponse());
    bool settled = true;
    for (size_t r = 0; r < addresses.size(); ++r) {
      auto wstub = v1::Worker::NewStub(grpc::CreateChannel(addresses[r], grpc::InsecureChannelCredentials()));
      grpc::ClientContext hctx;
      hctx.AddMetadata(kWorkerSecretKey, kSecret);
      const grpc::Status hs = wstub->Health(&hctx, v1::WorkerHealthRequest(), &out->health[r]);
      ASSERT_TRUE(hs.ok()) << "rank " << r << ": " << hs.error_message();
      settled = settled && out->health[r].live_sequences() == 0 &&
                out->health[r].last_step_id() == out->health[0].last_step_id();
    }
    if (settled || absl::Now() > health_deadline) break;  // the test's expectations report what differs
    absl::SleepFor(absl::Milliseconds(20));
  }
  (*server)->Stop();  // before the workers: it ends its streams first
  for (auto& w : workers) w->Stop();
  std::printf("%s: up in %.1f s, generation %.1f s, stop %.1f s\n", tag.c_str(),
              std::chrono::duration<double>(t_ready - t_start).count(),
              std::chrono::duration<double>(t_done - t_ready).count(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t_done).count());
  out->logs = logs(server->get());
}

TEST(MultiProcessTest, TwoWorkerProcessesGenerateWhatOneWorkerAndOneEngineDo) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  const auto t0 = std::chrono::steady_clock::now();
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / ("multiprocess." + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string model = (dir / "smollm2-12h.gguf").string();
  const auto t_write = std::chrono::steady_clock::now();
  const absl::Status padded = testing::WritePaddedHeadsModel(testing::ModelPath(), model, 12, 4);
  ASSERT_TRUE(padded.ok()) << padded;
  std::printf("padded model written in %.1f s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t_write).count());

  std::string long_text;
  for (int i = 0; i < 2; ++i) long_text += "It was a bright cold day in April, and the clocks were striking thirteen. ";
  // Prompts under adore just over the budget: they are fed one token per step (the policy sees every
  // query), which is what this test spends most of its time on.
  const std::vector<Case> cases = {
      {"The quick brown fox", 10},
      {"1, 2, 3, 4, 5,", 8},
      {long_text, 8, PolicyKind::kAdore, /*rebuild=*/4},
      {"Once upon a time, in a small village by the sea, there lived an old fisherman who every morning "
       "rowed out past the lighthouse before the sun was up.",
       8, PolicyKind::kAdore, /*rebuild=*/0},
  };

  // The reference: the single-process engine on the padded model, one request at a time.
  std::vector<std::vector<int32_t>> expected;
  {
    auto controller = AdoreController::Load(std::string(ADORE_SOURCE_DIR) + "/tools/adore/controller.bin");
    ASSERT_TRUE(controller.ok()) << controller.status();
    auto weights = LoadModelWeights(model);
    ASSERT_TRUE(weights.ok()) << weights.status();
    ASSERT_EQ(weights->config.num_heads, 12);
    ASSERT_EQ(weights->config.num_kv_heads, 4);
    ASSERT_EQ(weights->config.head_dim, 64);
    auto tok = Tokenizer::Create(weights->tokenizer);
    ASSERT_TRUE(tok.ok()) << tok.status();
    auto engine = CpuEngine::Create(*std::move(weights), {.kv_rows = 2048});
    ASSERT_TRUE(engine.ok()) << engine.status();
    for (const Case& c : cases) {
      ReleaseConfig release;
      if (c.policy != PolicyKind::kFull) {
        ASSERT_GT((*tok)->Encode(c.text, false, true)->size(), static_cast<size_t>(kBudget)) << c.text;
        release = {.kind = c.policy, .kv_budget = kBudget, .rebuild = c.rebuild, .controller = controller->get()};
      }
      expected.push_back(testing::ReferenceGreedy(**engine, **tok, c.text, c.max_tokens, release));
      ASSERT_FALSE(expected.back().empty());
      std::printf("case %zu: %zu prompt tokens, %zu generated\n", expected.size() - 1,
                  (*tok)->Encode(c.text, false, true)->size(), expected.back().size());
    }
  }
  const double reference_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  Deployment tp2, tp1, reg2;
  Deploy(2, model, dir.string(), cases, &tp2);
  ASSERT_FALSE(::testing::Test::HasFatalFailure()) << tp2.logs;
  const double tp2_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() - reference_s;
  Deploy(1, model, dir.string(), cases, &tp1);
  ASSERT_FALSE(::testing::Test::HasFatalFailure()) << tp1.logs;
  const double tp1_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() - reference_s - tp2_s;
  Deploy(2, model, dir.string(), cases, &reg2, Discovery::kRegistered);
  ASSERT_FALSE(::testing::Test::HasFatalFailure()) << reg2.logs;
  std::printf("reference %.1f s, TP=2 deployment %.1f s, TP=1 deployment %.1f s, registered TP=2 %.1f s\n",
              reference_s, tp2_s, tp1_s,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() - reference_s - tp2_s -
                  tp1_s);

  int64_t streamed = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    const testing::StreamResult& a = tp2.results[i];
    const testing::StreamResult& b = tp1.results[i];
    ASSERT_TRUE(a.status.ok()) << "TP=2: " << a.status.error_message() << "\n" << tp2.logs;
    ASSERT_TRUE(b.status.ok()) << "TP=1: " << b.status.error_message() << "\n" << tp1.logs;
    EXPECT_EQ(a.tokens, expected[i]) << "TP=2 vs the single-process engine";
    EXPECT_EQ(b.tokens, expected[i]) << "TP=1 vs the single-process engine";
    const testing::StreamResult& c = reg2.results[i];
    ASSERT_TRUE(c.status.ok()) << "registered TP=2: " << c.status.error_message() << "\n" << reg2.logs;
    EXPECT_EQ(c.tokens, a.tokens) << "registered workers vs listed workers (TP=2)";
    streamed += static_cast<int64_t>(a.tokens.size());
    if (cases[i].policy != PolicyKind::kFull) {
      // Rank 0's release stats, which the coordinator reports, are those of one rank.
      EXPECT_GT(a.done.adore().tokens_released(), 0);
      EXPECT_LE(a.done.adore().kv_slots_in_use(), kBudget);
      EXPECT_EQ(a.done.adore().tokens_released(), b.done.adore().tokens_released());
      EXPECT_EQ(a.done.adore().tokens_rebuilt(), b.done.adore().tokens_rebuilt());
      if (cases[i].rebuild == 0) EXPECT_EQ(a.done.adore().tokens_rebuilt(), 0);
    }
  }
  // Every step's outputs went through the coordinator's cross-rank slot-map comparison and agreed (a
  // mismatch fails the step with INTERNAL): at least one per streamed token.
  EXPECT_EQ(tp2.stats.requests().ok(), static_cast<int64_t>(cases.size())) << tp2.logs;
  EXPECT_EQ(tp2.stats.requests().internal(), 0);
  EXPECT_GE(tp2.stats.slot_map_checks_total(), streamed) << tp2.logs;
  EXPECT_EQ(tp1.stats.slot_map_checks_total(), 0) << "one rank: nothing to compare";
  EXPECT_GT(tp2.stats.tokens_released_total(), 0);
  // GetStats has one entry per rank, each with the worker's own timing: every step, and the collectives
  // (Gloo all-reduces) that only a group of two runs.
  ASSERT_EQ(tp2.stats.workers_size(), 2) << tp2.stats.DebugString();
  ASSERT_EQ(tp1.stats.workers_size(), 1) << tp1.stats.DebugString();
  for (int r = 0; r < 2; ++r) {
    const v1::WorkerStats& w = tp2.stats.workers(r);
    EXPECT_EQ(w.rank(), r);
    EXPECT_NE(w.address().find("127.0.0.1:"), std::string::npos) << w.address();
    EXPECT_EQ(w.steps(), tp2.stats.workers(0).steps());
    EXPECT_GE(w.steps(), static_cast<int64_t>(cases.size()));
    EXPECT_GT(w.step_ms_total(), 0.0);
    EXPECT_GT(w.comm_ms_total(), 0.0) << "rank " << r << ": no collective time reported";
    EXPECT_LT(w.comm_ms_total(), w.step_ms_total());
    EXPECT_NEAR(w.mean_step_ms(), w.step_ms_total() / w.steps(), 1e-6 * w.step_ms_total());
    EXPECT_GE(w.p99_step_ms(), w.mean_step_ms() / 10);
  }
  EXPECT_EQ(tp1.stats.workers(0).comm_ms_total(), 0.0) << "one rank: no collectives";
  EXPECT_GT(tp1.stats.workers(0).step_ms_total(), 0.0);
  // Both ranks ran every step, as one group of two.
  ASSERT_EQ(tp2.health.size(), 2u);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(tp2.health[r].state(), v1::WORKER_STATE_READY) << "rank " << r;
    EXPECT_EQ(tp2.health[r].rank(), r);
    EXPECT_EQ(tp2.health[r].world_size(), 2);
    EXPECT_EQ(tp2.health[r].last_step_id(), tp2.health[0].last_step_id());
  }
  EXPECT_GE(tp2.health[0].last_step_id(), 10u);
  // The registered group ran the same way: both ranks at the same step, each with the rank it was given.
  EXPECT_EQ(reg2.stats.requests().ok(), static_cast<int64_t>(cases.size())) << reg2.logs;
  EXPECT_GE(reg2.stats.slot_map_checks_total(), streamed) << reg2.logs;
  ASSERT_EQ(reg2.health.size(), 2u);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(reg2.health[r].state(), v1::WORKER_STATE_READY) << "rank " << r;
    EXPECT_EQ(reg2.health[r].rank(), r);
    EXPECT_EQ(reg2.health[r].world_size(), 2);
    EXPECT_EQ(reg2.health[r].last_step_id(), reg2.health[0].last_step_id());
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace adore
