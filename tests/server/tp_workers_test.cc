// Tensor parallelism across worker processes (CPU backend, Gloo): three Worker services in-process on
// ephemeral ports, the coordinator (EmbeddedServer) over them as ranks 0..2 of SmolLM2 (9 heads, 3 KV heads).
// Greedy generation, requests under heavy_hitter and adore (rebuild 4) with a budget below their prompt, equals the single-process
// engine's own; two ranks (which do not divide 9 heads) are refused with INVALID_ARGUMENT naming num_heads.
// The same group as embedded workers (ServerOptions::embedded_workers = 3: the server starts the ranks
// itself, with pipelined steps) generates the same tokens.
#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "adore/v1/adore.grpc.pb.h"
#include "adore/v1/worker.grpc.pb.h"
#include "common/model_weights.h"
#include "coordinator/grpc/server.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"
#include "tests/test_util.h"
#include "worker/adore_controller.h"
#include "worker/cpu_engine.h"
#include "worker/generator.h"
#include "worker/grpc/worker_service.h"

namespace adore {
namespace {

constexpr char kSecret[] = "tp-secret-91c2";

// comm_hosts[i]: rank i's Gloo address (--comm_host); empty = the default.
std::vector<std::unique_ptr<WorkerServer>> StartWorkers(int n, const std::vector<std::string>& comm_hosts = {}) {
  std::vector<std::unique_ptr<WorkerServer>> workers;
  for (int i = 0; i < n; ++i) {
    WorkerServerOptions wo;
    wo.port = 0;
    wo.secret = kSecret;
    if (i < static_cast<int>(comm_hosts.size())) wo.comm_listen_host = comm_hosts[i];
    auto w = WorkerServer::Start(wo);
    EXPECT_TRUE(w.ok()) << w.status();
    if (!w.ok()) return {};
    workers.push_back(*std::move(w));
  }
  return workers;
}

ServerOptions Options(const std::vector<std::unique_ptr<WorkerServer>>& workers) {
  ServerOptions o;
  o.model = testing::ModelPath();
  o.port = 0;
  o.kv_rows = 2048;
  o.max_batch = 8;
  for (const auto& w : workers) o.workers.push_back(w->address());
  o.controller = std::string(ADORE_SOURCE_DIR) + "/tools/adore/controller.bin";
  o.worker_secret = kSecret;
  return o;
}

struct Case {
  std::string text;
  int max_tokens;
  PolicyKind policy = PolicyKind::kFull;  // releasing policies run at kv_budget 32 (adore with rebuild 4)
};

// The group meets at addresses given explicitly, as across hosts (--rendezvous_host, --comm_host): other
// loopback addresses than 127.0.0.1, one per rank and one for the coordinator's rendezvous store.
TEST(TpWorkersTest, ThreeRanksGenerateWhatOneEngineDoes) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  auto workers = StartWorkers(3, {"127.0.0.3", "127.0.0.4", "127.0.0.5"});
  ASSERT_EQ(workers.size(), 3u);
  ServerOptions so = Options(workers);
  so.rendezvous_host = "127.0.0.2";
  auto server = EmbeddedServer::Start(so);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::Adore::NewStub(grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));

  std::string long_text;
  for (int i = 0; i < 3; ++i) long_text += "It was a bright cold day in April, and the clocks were striking thirteen. ";
  const std::vector<Case> cases = {
      {"The quick brown fox", 12},
      {"1, 2, 3, 4, 5,", 10},
      {long_text, 10, PolicyKind::kHeavyHitter},
      {long_text, 10, PolicyKind::kAdore},
  };
  auto controller = AdoreController::Load(std::string(ADORE_SOURCE_DIR) + "/tools/adore/controller.bin");
  ASSERT_TRUE(controller.ok()) << controller.status();

  const testing::ReferenceModel ref = testing::LoadReferenceModel();
  ASSERT_NE(ref.engine, nullptr);
  CpuEngine& engine = *ref.engine;
  const Tokenizer& tok = *ref.tokenizer;
  std::vector<std::vector<int32_t>> expected;  // one at a time, as the server runs them below
  for (const Case& c : cases) {
    ReleaseConfig release;
    if (c.policy != PolicyKind::kFull) {
      ASSERT_GT(tok.Encode(c.text, false, true)->size(), 32u);
      release = {.kind = c.policy, .kv_budget = 32, .rebuild = c.policy == PolicyKind::kAdore ? 4 : 0,
                 .controller = controller->get()};
    }
    expected.push_back(testing::ReferenceGreedy(engine, tok, c.text, c.max_tokens, release));
  }

  for (size_t i = 0; i < cases.size(); ++i) {
    v1::GenerateRequest req;
    req.set_text(cases[i].text);
    req.mutable_sampling()->set_max_tokens(cases[i].max_tokens);
    req.mutable_sampling()->set_temperature(0.0f);
    if (cases[i].policy != PolicyKind::kFull) {
      req.mutable_release()->set_policy(PolicyToProto(cases[i].policy));
      req.mutable_release()->set_kv_budget(32);
      if (cases[i].policy == PolicyKind::kAdore) req.mutable_release()->set_rebuild(4);
    }
    const testing::StreamResult got = testing::ReadGenerate(*stub, req, /*deadline_ms=*/60000);
    ASSERT_TRUE(got.status.ok()) << "case " << i << ": " << got.status.error_message();
    const std::vector<int32_t>& tokens = got.tokens;
    const v1::GenerateDone& done = got.done;
    EXPECT_EQ(tokens, expected[i]) << "case " << i;
    if (cases[i].policy != PolicyKind::kFull) {
      EXPECT_GT(done.adore().tokens_released(), 0);
      EXPECT_LE(done.adore().kv_slots_in_use(), 32);
    }
  }

  // Every rank ran the steps, in the group of three.
  for (int rank = 0; rank < 3; ++rank) {
    auto wstub = v1::Worker::NewStub(grpc::CreateChannel(workers[rank]->address(), grpc::InsecureChannelCredentials()));
    v1::WorkerHealthResponse h;
    grpc::ClientContext hctx;
    hctx.AddMetadata(kWorkerSecretKey, kSecret);
    ASSERT_TRUE(wstub->Health(&hctx, v1::WorkerHealthRequest(), &h).ok());
    EXPECT_EQ(h.state(), v1::WORKER_STATE_READY);
    EXPECT_EQ(h.rank(), rank);
    EXPECT_EQ(h.world_size(), 3);
    EXPECT_GE(h.last_step_id(), 20u);
  }
  server->reset();
  workers.clear();
}

TEST(TpWorkersTest, ThreeEmbeddedRanksGenerateWhatOneEngineDoes) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  ServerOptions o = Options({});
  o.worker_secret.clear();
  o.embedded_workers = 3;
  // Pipelined steps here (the test above drives its ranks one step at a time): every rank decodes its own
  // samples, and the coordinator checks their tokens and slot maps against rank 0's.
  o.pipeline_steps = true;
  auto server = EmbeddedServer::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::Adore::NewStub(grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
  auto controller = AdoreController::Load(o.controller);
  ASSERT_TRUE(controller.ok()) << controller.status();
  const testing::ReferenceModel ref = testing::LoadReferenceModel();
  ASSERT_NE(ref.engine, nullptr);
  CpuEngine& engine = *ref.engine;
  const Tokenizer& tok = *ref.tokenizer;
  std::string long_text;
  for (int i = 0; i < 3; ++i) long_text += "It was a bright cold day in April, and the clocks were striking thirteen. ";
  for (const Case& c : std::vector<Case>{{"The quick brown fox", 12}, {long_text, 10, PolicyKind::kAdore}}) {
    ReleaseConfig release;
    v1::GenerateRequest req;
    req.set_text(c.text);
    req.mutable_sampling()->set_max_tokens(c.max_tokens);
    req.mutable_sampling()->set_temperature(0.0f);
    if (c.policy == PolicyKind::kAdore) {
      release = {.kind = c.policy, .kv_budget = 32, .rebuild = 4, .controller = controller->get()};
      req.mutable_release()->set_policy(PolicyToProto(c.policy));
      req.mutable_release()->set_kv_budget(32);
      req.mutable_release()->set_rebuild(4);
    }
    const std::vector<int32_t> expected = testing::ReferenceGreedy(engine, tok, c.text, c.max_tokens, release);
    const testing::StreamResult got = testing::ReadGenerate(*stub, req, /*deadline_ms=*/60000);
    ASSERT_TRUE(got.status.ok()) << got.status.error_message();
    EXPECT_EQ(got.tokens, expected) << c.text.substr(0, 20);
    if (c.policy == PolicyKind::kAdore) EXPECT_GT(got.done.adore().tokens_released(), 0);
  }
  v1::GetModelInfoRequest mreq;
  v1::ModelInfo info;
  grpc::ClientContext mctx;
  ASSERT_TRUE(stub->GetModelInfo(&mctx, mreq, &info).ok());
  EXPECT_EQ(info.backend(), v1::BACKEND_CPU);
}

TEST(TpWorkersTest, EmbeddedWorkersOptionsAreChecked) {
  ServerOptions o;
  o.model = "unused";
  o.port = 0;
  o.embedded_workers = 0;
  auto bad = EmbeddedServer::Start(o);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("embedded_workers"), std::string::npos) << bad.status();
  o.embedded_workers = 2;
  o.workers = {"127.0.0.1:1"};
  bad = EmbeddedServer::Start(o);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("embedded_workers"), std::string::npos) << bad.status();
}

TEST(TpWorkersTest, TwoRanksAreRefusedNamingNumHeads) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  auto workers = StartWorkers(2);
  ASSERT_EQ(workers.size(), 2u);
  auto server = EmbeddedServer::Start(Options(workers));
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument) << server.status();
  EXPECT_NE(server.status().message().find("num_heads"), std::string::npos) << server.status();
}

}  // namespace
}  // namespace adore
