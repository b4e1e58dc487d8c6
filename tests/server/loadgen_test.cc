// adore-loadgen's core (tools/loadgen.h) against an in-process adore-server on 127.0.0.1 (CPU engine):
// every request of a concurrent run is timed and counted, the JSON row carries the bench/results fields,
// the release settings reach the server, server-side failures are counted with their gRPC codes, rounds
// repeat the requests with figures (and the server's memory) per round, and a run that cannot start says why; against a scripted server, the protocol faults a real one should never
// commit are errors, not hangs.
#include "tools/loadgen.h"

#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "coordinator/grpc/server.h"
#include "coordinator/histogram.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace adore {
namespace {

using loadgen::LoadOptions;
using loadgen::LoadReport;
using loadgen::RequestRecord;

class LoadgenTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!testing::ModelAvailable()) return;
    ServerOptions o;
    o.model = testing::ModelPath();
    o.port = 0;
    o.kv_rows = 4096;
    o.max_batch = 8;
    auto s = EmbeddedServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = s->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    if (server_ == nullptr) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  }
  static LoadOptions Options() {
    LoadOptions o;
    o.server = server_->address();
    o.requests = 8;
    o.concurrency = 4;
    o.prompt_tokens = 8;
    o.max_tokens = 8;
    o.progress_s = 0.0;
    o.connect_timeout_s = 10.0;
    o.deadline_s = 120.0;
    return o;
  }
  static EmbeddedServer* server_;
};
EmbeddedServer* LoadgenTest::server_ = nullptr;

TEST_F(LoadgenTest, ConcurrentRunCountsEveryRequestAndToken) {
  LoadOptions o = Options();
  o.warmup = 2;
  auto report = loadgen::RunLoad(o);
  ASSERT_TRUE(report.ok()) << report.status();
  const LoadReport& r = *report;
  EXPECT_EQ(r.requests, 8);
  EXPECT_EQ(r.ok, 8);
  EXPECT_EQ(r.errors, 0);
  EXPECT_EQ(r.warmup_errors, 0);
  EXPECT_GT(r.model.vocab_size(), 0);
  ASSERT_EQ(r.records.size(), 8u);
  int64_t tokens = 0;
  int64_t itl_samples = 0;
  for (const RequestRecord& rec : r.records) {
    SCOPED_TRACE(rec.index);
    EXPECT_TRUE(rec.ok) << rec.error;
    EXPECT_EQ(rec.code, grpc::StatusCode::OK);
    EXPECT_EQ(rec.prompt_tokens, 8);
    EXPECT_GE(rec.output_tokens, 1);
    EXPECT_LE(rec.output_tokens, 8);
    // Greedy continuations of random ids rarely hit an end token; when one does, the request is shorter.
    if (rec.finish_reason == v1::FINISH_REASON_LENGTH) {
      EXPECT_EQ(rec.output_tokens, 8);
    }
    EXPECT_GT(rec.ttft_ms, 0.0);
    EXPECT_GE(rec.latency_ms, rec.ttft_ms);
    // One inter-token sample per token after the first, however the server grouped them into deltas.
    EXPECT_EQ(static_cast<int64_t>(rec.itl_ms.size()), rec.output_tokens - 1);
    tokens += rec.output_tokens;
    itl_samples += static_cast<int64_t>(rec.itl_ms.size());
  }
  EXPECT_EQ(r.output_tokens, tokens);
  EXPECT_EQ(r.input_tokens, 64);
  EXPECT_EQ(r.finished_length + r.finished_stop, 8);
  EXPECT_DOUBLE_EQ(r.mean_output_tokens, tokens / 8.0);
  EXPECT_EQ(r.ttft_ms.count, 8);
  EXPECT_EQ(r.itl_ms.count, itl_samples);
  EXPECT_GT(r.wall_s, 0.0);
  EXPECT_NEAR(r.output_tok_s, tokens / r.wall_s, 1e-6);
  EXPECT_LE(r.ttft_ms.p50, r.ttft_ms.p90);
  EXPECT_LE(r.ttft_ms.p90, r.ttft_ms.p99);
  EXPECT_EQ(r.policy, "full");  // the server's default

  const nlohmann::json row = loadgen::ReportRow(o, r, "unit test");
  for (const char* field :
       {"requests", "concurrency", "prompt_tokens", "max_tokens", "ok", "errors", "wall_s", "output_tok_s",
        "input_tok_s", "ttft_ms_p50", "ttft_ms_p90", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p90", "itl_ms_p99",
        "mean_output_tokens", "policy", "kv_budget", "rebuild", "label"}) {
    EXPECT_TRUE(row.contains(field)) << field;
  }
  EXPECT_EQ(row["requests"], 8);
  EXPECT_EQ(row["concurrency"], 4);
  EXPECT_EQ(row["prompt_tokens"], 8);
  EXPECT_EQ(row["max_tokens"], 8);
  EXPECT_EQ(row["ok"], 8);
  EXPECT_EQ(row["errors"], 0);
  EXPECT_EQ(row["policy"], "full");
  EXPECT_EQ(row["label"], "unit test");
  EXPECT_TRUE(row["ttft_ms_p50"].is_number());
  EXPECT_TRUE(row["itl_ms_p99"].is_number());
  // The server's steps during the measured requests (GetStats before and after; the warmup's are not
  // counted): at least the longest request's tokens, at most one per token and per prompt.
  int64_t longest = 0;
  for (const RequestRecord& rec : r.records) longest = std::max(longest, rec.output_tokens);
  EXPECT_GE(r.server.steps, longest);
  EXPECT_LE(r.server.steps, tokens + 8);
  EXPECT_EQ(row["steps"], r.server.steps);
  EXPECT_GT(r.server.step_ms_mean, 0.0);
  EXPECT_EQ(r.server.comm_ms_per_step, 0.0) << "one rank: no collectives";
  EXPECT_EQ(r.server.slot_map_checks, 0);

  const std::string summary = loadgen::FormatSummary(o, r);
  EXPECT_NE(summary.find("8 ok, 0 failed"), std::string::npos) << summary;
}

TEST_F(LoadgenTest, TextPromptAndReleaseSettingsReachTheServer) {
  LoadOptions o = Options();
  o.requests = 4;
  o.concurrency = 2;
  o.prompt_text = "It was a bright cold day in April, and the clocks were striking thirteen.";
  o.policy = v1::POLICY_WINDOW;
  o.kv_budget = 16;
  auto report = loadgen::RunLoad(o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->ok, 4);
  EXPECT_EQ(report->policy, "window");
  EXPECT_EQ(report->kv_budget, 16);
  // The same text for every request: the same prompt length.
  for (const RequestRecord& rec : report->records) EXPECT_EQ(rec.prompt_tokens, report->records[0].prompt_tokens);
  EXPECT_GT(report->records[0].prompt_tokens, 10);
  const nlohmann::json row = loadgen::ReportRow(o, *report, "");
  EXPECT_EQ(row["prompt_tokens"], report->records[0].prompt_tokens);
  EXPECT_EQ(row["kv_budget"], 16);
}

TEST_F(LoadgenTest, ServerErrorsAreCountedWithTheirCodes) {
  LoadOptions o = Options();
  o.requests = 3;
  o.policy = v1::POLICY_WINDOW;
  o.kv_budget = 8;  // below min_kv_budget (16): every request fails with INVALID_ARGUMENT
  auto report = loadgen::RunLoad(o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->ok, 0);
  EXPECT_EQ(report->errors, 3);
  for (const RequestRecord& rec : report->records) {
    EXPECT_FALSE(rec.ok);
    EXPECT_EQ(rec.code, grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(rec.error.rfind("INVALID_ARGUMENT: release.kv_budget", 0), 0u) << rec.error;
  }
  // No samples: the percentiles are null in the row, not numbers made up.
  const nlohmann::json row = loadgen::ReportRow(o, *report, "");
  EXPECT_TRUE(row["ttft_ms_p50"].is_null());
  EXPECT_EQ(row["errors"], 3);
}

TEST_F(LoadgenTest, DeadlineEndsStreamsAsErrors) {
  LoadOptions o = Options();
  o.requests = 2;
  o.prompt_tokens = 64;
  o.max_tokens = 200;
  o.deadline_s = 0.001;
  auto report = loadgen::RunLoad(o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->errors, 2);
  for (const RequestRecord& rec : report->records) EXPECT_EQ(rec.code, grpc::StatusCode::DEADLINE_EXCEEDED);
}

// Rounds send the same requests again (greedy: the same tokens), with figures per round and, given the
// server's pid (here this process's), its resident memory and threads after each round.
TEST_F(LoadgenTest, RoundsRepeatTheRequestsAndReadTheServersMemory) {
  LoadOptions o = Options();
  o.requests = 3;
  o.concurrency = 3;
  o.max_tokens = 4;
  o.rounds = 2;
  o.server_pid = ::getpid();
  o.rss_settle_s = 0.0;  // this process's threads come and go with the test's
  o.keep_output = true;
  auto report = loadgen::RunLoad(o);
  ASSERT_TRUE(report.ok()) << report.status();
  const LoadReport& r = *report;
  EXPECT_EQ(r.requests, 6);
  EXPECT_EQ(r.ok, 6);
  ASSERT_EQ(r.records.size(), 6u);
  ASSERT_EQ(r.rounds.size(), 2u);
  EXPECT_GT(r.server_rss_kb_after_warmup, 0);
  for (int round = 0; round < 2; ++round) {
    EXPECT_EQ(r.rounds[round].round, round + 1);
    EXPECT_EQ(r.rounds[round].ok, 3);
    EXPECT_GT(r.rounds[round].server_rss_kb, 0);
    EXPECT_GT(r.rounds[round].server_threads, 0);
    EXPECT_EQ(r.rounds[round].ttft_ms.count, 3);
  }
  for (int i = 0; i < 3; ++i) {
    const RequestRecord &first = r.records[i], &second = r.records[3 + i];
    EXPECT_EQ(first.round, 1);
    EXPECT_EQ(second.round, 2);
    EXPECT_EQ(second.index, i);
    EXPECT_FALSE(first.tokens.empty());
    EXPECT_EQ(first.output_tokens, static_cast<int64_t>(first.tokens.size()));
    EXPECT_EQ(first.tokens, second.tokens) << "request " << i;
    EXPECT_EQ(first.text, second.text) << "request " << i;
  }
  EXPECT_NEAR(r.wall_s, r.rounds[0].wall_s + r.rounds[1].wall_s, 1e-9);
  const nlohmann::json row = loadgen::ReportRow(o, r, "");
  EXPECT_EQ(row["rounds"], 2);
  EXPECT_EQ(row["requests_per_round"], 3);
  ASSERT_EQ(row["per_round"].size(), 2u);
  EXPECT_EQ(row["per_round"][1]["ok"], 3);
  EXPECT_TRUE(row["per_round"][1]["server_rss_kb"].is_number());
  EXPECT_NE(loadgen::FormatSummary(o, r).find("round 2"), std::string::npos);

  EXPECT_EQ(loadgen::ReadProcessStatus(-1).status().code(), absl::StatusCode::kNotFound);
  o.rounds = 0;
  auto bad = loadgen::RunLoad(o);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message().rfind("rounds:", 0), 0u) << bad.status();
}

TEST_F(LoadgenTest, RunsThatCannotStartSayWhy) {
  LoadOptions o = Options();
  o.concurrency = 0;
  auto bad = loadgen::RunLoad(o);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message().rfind("concurrency:", 0), 0u) << bad.status();

  o = Options();
  o.prompt_tokens = 1 << 20;  // beyond the model's context
  auto too_long = loadgen::RunLoad(o);
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(too_long.status().message().rfind("prompt_tokens:", 0), 0u) << too_long.status();

  o = Options();
  o.server = "127.0.0.1:1";  // nothing listens there
  o.connect_timeout_s = 0.5;
  auto absent = loadgen::RunLoad(o);
  EXPECT_FALSE(absent.ok());
}

// A scripted stand-in for adore-server, for what the real one does not do on purpose: several tokens in
// one delta, a message that does not parse, a stream that ends OK without `done`, usage that disagrees
// with the deltas. The script is picked by sampling.max_tokens.
class ScriptedAdore final : public v1::Adore::Service {
 public:
  grpc::Status GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*, v1::ModelInfo* info) override {
    info->set_name("scripted");
    info->set_vocab_size(100);
    info->set_context_length(1000);
    info->set_backend(v1::BACKEND_CPU);
    info->set_tensor_parallel_size(1);
    info->mutable_default_release()->set_policy(v1::POLICY_FULL);
    return grpc::Status::OK;
  }
  grpc::Status Generate(grpc::ServerContext*, const v1::GenerateRequest* req,
                        grpc::ServerWriter<v1::GenerateResponse>* out) override {
    auto delta = [&](std::vector<int32_t> ids, std::string text) {
      v1::GenerateResponse r;
      r.mutable_delta()->mutable_token_ids()->Add(ids.begin(), ids.end());
      r.mutable_delta()->set_text(std::move(text));
      out->Write(r);
    };
    auto done = [&](int64_t completion) {
      v1::GenerateResponse r;
      r.mutable_done()->set_finish_reason(v1::FINISH_REASON_LENGTH);
      r.mutable_done()->mutable_usage()->set_prompt_tokens(req->token_ids().ids_size());
      r.mutable_done()->mutable_usage()->set_completion_tokens(completion);
      out->Write(r);
    };
    switch (req->sampling().max_tokens()) {
      case 3:  // one token, then two together 40 ms later
        delta({1}, "a");
        std::this_thread::sleep_for(std::chrono::milliseconds(40));
        delta({2, 3}, "bc");
        done(3);
        break;
      case 1:  // proto3 strings must be UTF-8: the client cannot parse this message
        delta({1}, "\xff");
        done(1);
        break;
      case 4:  // ends OK without done
        delta({1}, "a");
        break;
      case 5:  // usage disagrees with the deltas
        delta({1}, "a");
        done(7);
        break;
    }
    return grpc::Status::OK;
  }
};

class LoadgenScriptedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(&service_);
    server_ = b.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  void TearDown() override { server_->Shutdown(); }
  LoadReport Run(int32_t max_tokens) {
    LoadOptions o;
    o.server = "127.0.0.1:" + std::to_string(port_);
    o.requests = 2;
    o.concurrency = 2;
    o.prompt_tokens = 4;
    o.max_tokens = max_tokens;
    o.progress_s = 0.0;
    o.deadline_s = 20.0;  // a hang fails the test instead of stalling it
    auto r = loadgen::RunLoad(o);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : LoadReport();
  }
  ScriptedAdore service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(LoadgenScriptedTest, SeveralTokensInOneDeltaShareItsGap) {
  const LoadReport r = Run(3);
  ASSERT_EQ(r.ok, 2);
  for (const RequestRecord& rec : r.records) {
    EXPECT_EQ(rec.output_tokens, 3);
    ASSERT_EQ(rec.itl_ms.size(), 2u);
    EXPECT_EQ(rec.itl_ms[0], rec.itl_ms[1]);
    EXPECT_GE(rec.itl_ms[0], 15.0);  // ~40 ms over two tokens
    EXPECT_EQ(rec.prompt_tokens, 4);
  }
}

TEST_F(LoadgenScriptedTest, ProtocolFaultsAreErrorsNotHangs) {
  const struct {
    int32_t max_tokens;
    const char* error;
  } cases[] = {{1, "protocol: a message that does not parse"},
               {4, "protocol: status OK without a done message"},
               {5, "protocol: done.usage.completion_tokens 7"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.max_tokens);
    const LoadReport r = Run(c.max_tokens);
    EXPECT_EQ(r.errors, 2);
    for (const RequestRecord& rec : r.records) {
      EXPECT_EQ(rec.code, grpc::StatusCode::OK);
      EXPECT_EQ(rec.error.rfind(c.error, 0), 0u) << rec.error;
    }
  }
}

TEST(LoadgenCore, RandomPromptsDifferPerRequestAndRepeat) {
  const auto a = loadgen::RandomPrompt(7, 1, 0, 32, 1000);
  EXPECT_EQ(a, loadgen::RandomPrompt(7, 1, 0, 32, 1000));
  EXPECT_NE(a, loadgen::RandomPrompt(7, 1, 1, 32, 1000));
  EXPECT_NE(a, loadgen::RandomPrompt(7, 0, 0, 32, 1000));  // warmup prompts are not the measured ones
  EXPECT_NE(a, loadgen::RandomPrompt(8, 1, 0, 32, 1000));
  for (int32_t id : loadgen::RandomPrompt(3, 1, 5, 4096, 10)) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, 10);
  }
}

TEST(LoadgenCore, PercentilesInterpolateBetweenRanks) {
  const loadgen::Percentiles p = loadgen::ComputePercentiles({5, 1, 4, 2, 3});
  EXPECT_EQ(p.count, 5);
  EXPECT_DOUBLE_EQ(p.p50, 3.0);
  EXPECT_DOUBLE_EQ(p.p90, 4.6);
  EXPECT_DOUBLE_EQ(p.p99, 4.96);
  EXPECT_TRUE(std::isnan(loadgen::ComputePercentiles({}).p50));
  EXPECT_DOUBLE_EQ(loadgen::ComputePercentiles({2.5}).p99, 2.5);
}

TEST(LoadgenCore, PolicyNames) {
  EXPECT_EQ(*loadgen::ParsePolicy("heavy_hitter"), v1::POLICY_HEAVY_HITTER);
  EXPECT_EQ(loadgen::PolicyName(v1::POLICY_ADORE), "adore");
  EXPECT_FALSE(loadgen::ParsePolicy("h2o").ok());
}

TEST(LoadgenCore, ServerCountersTakeTheSlowestRanksTimePerStep) {
  v1::ServerStats before, after;
  auto worker = [](v1::ServerStats* s, int rank, int64_t steps, double step_ms, double comm_ms) {
    v1::WorkerStats* w = s->add_workers();
    w->set_rank(rank);
    w->set_steps(steps);
    w->set_step_ms_total(step_ms);
    w->set_comm_ms_total(comm_ms);
  };
  worker(&before, 0, 10, 100.0, 5.0);
  worker(&before, 1, 10, 90.0, 20.0);
  worker(&after, 0, 30, 300.0, 25.0);   // 20 steps: 10 ms each, 1 ms in collectives
  worker(&after, 1, 30, 250.0, 80.0);   // 20 steps: 8 ms each, 3 ms in collectives
  before.set_slot_map_checks_total(7);
  after.set_slot_map_checks_total(47);
  const loadgen::ServerCounters c = loadgen::CountersBetween(before, after);
  EXPECT_EQ(c.steps, 20);
  EXPECT_DOUBLE_EQ(c.step_ms_mean, 10.0);
  EXPECT_DOUBLE_EQ(c.comm_ms_per_step, 3.0);
  EXPECT_EQ(c.slot_map_checks, 40);
  EXPECT_EQ(loadgen::CountersBetween(v1::ServerStats(), after).steps, -1) << "no worker entries: unknown";
}

TEST(HistogramTest, QuantileIsTheUpperBoundOfItsBucket) {
  Histogram h({1.0, 2.0, 4.0});
  EXPECT_EQ(h.Quantile(0.99), 0.0) << "empty";
  for (double v : {0.5, 1.5, 1.5, 3.0}) h.Observe(v);
  EXPECT_EQ(h.Quantile(0.25), 1.0);
  EXPECT_EQ(h.Quantile(0.5), 2.0);
  EXPECT_EQ(h.Quantile(0.99), 4.0);
  h.Observe(9.0);
  EXPECT_EQ(h.Quantile(0.99), std::numeric_limits<double>::infinity());
}

}  // namespace
}  // namespace adore
