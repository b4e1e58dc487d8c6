// The coordinator over an external worker (the adore.v1.Worker service, in-process on 127.0.0.1 with a
// secret): greedy generation through the worker equals the engine's own, a wrong secret is refused with
// UNAUTHENTICATED, and a worker that goes away ends the running stream with UNAVAILABLE while the server
// keeps answering.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <thread>

#include "adore/v1/adore.grpc.pb.h"
#include "adore/v1/worker.grpc.pb.h"
#include "common/model_weights.h"
#include "coordinator/grpc/server.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"
#include "tests/test_util.h"
#include "worker/cpu_engine.h"
#include "worker/generator.h"
#include "worker/grpc/worker_service.h"

namespace adore {
namespace {

constexpr char kSecret[] = "test-secret-7f3a";

class RemoteWorkerTest : public ::testing::Test {
 protected:
  void StartAll() {
    WorkerServerOptions wo;
    wo.port = 0;
    wo.secret = kSecret;
    auto w = WorkerServer::Start(wo);
    ASSERT_TRUE(w.ok()) << w.status();
    worker_ = *std::move(w);
    ServerOptions o;
    o.model = testing::ModelPath();
    o.port = 0;
    o.kv_rows = 8192;
    o.max_batch = 8;
    o.controller = std::string(ADORE_SOURCE_DIR) + "/tools/adore/controller.bin";  // loaded by the worker too
    o.workers = {worker_->address()};
    o.worker_secret = kSecret;
    auto s = EmbeddedServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    stub_ = v1::Adore::NewStub(grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    server_.reset();
    worker_.reset();
  }
  std::unique_ptr<WorkerServer> worker_;
  std::unique_ptr<EmbeddedServer> server_;
  std::unique_ptr<v1::Adore::Stub> stub_;
};

TEST_F(RemoteWorkerTest, GreedyGenerationThroughTheWorkerMatchesTheEngine) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  ASSERT_NO_FATAL_FAILURE(StartAll());
  auto weights = LoadModelWeights(testing::ModelPath());
  ASSERT_TRUE(weights.ok());
  auto tok = Tokenizer::Create(weights->tokenizer);
  ASSERT_TRUE(tok.ok());
  auto engine = CpuEngine::Create(*std::move(weights), {.kv_rows = 1024});
  ASSERT_TRUE(engine.ok());
  const std::string prompt = "The quick brown fox";
  const std::vector<int32_t> expected = testing::ReferenceGreedy(**engine, **tok, prompt, 20);

  v1::GenerateRequest req;
  req.set_text(prompt);
  req.mutable_sampling()->set_max_tokens(20);
  req.mutable_sampling()->set_temperature(0.0f);
  const testing::StreamResult got = testing::ReadGenerate(*stub_, req);
  ASSERT_TRUE(got.status.ok()) << got.status.error_message();
  EXPECT_EQ(got.tokens, expected);
  EXPECT_EQ(got.text, *(*tok)->Decode(expected, true));
  EXPECT_EQ(got.done.usage().completion_tokens(), static_cast<int64_t>(got.tokens.size()));

  // A releasing policy runs on the worker (its controller, its stats come back through the steps).
  {
    v1::GenerateRequest areq;
    std::string long_text;
    for (int i = 0; i < 6; ++i) long_text += "It was a bright cold day in April, and the clocks were striking thirteen. ";
    areq.set_text(long_text);
    areq.mutable_sampling()->set_max_tokens(8);
    areq.mutable_sampling()->set_temperature(0.0f);
    areq.mutable_release()->set_policy(v1::POLICY_ADORE);
    areq.mutable_release()->set_kv_budget(32);
    areq.mutable_release()->set_rebuild(2);
    const testing::StreamResult a = testing::ReadGenerate(*stub_, areq);
    ASSERT_TRUE(a.status.ok()) << a.status.error_message();
    const v1::GenerateDone& adone = a.done;
    EXPECT_EQ(adone.adore().policy(), v1::POLICY_ADORE);
    EXPECT_GT(adone.adore().tokens_released(), 0);
    EXPECT_LE(adone.adore().kv_slots_in_use(), 32);
  }

  // The worker saw the steps and ended the sequences.
  auto wstub = v1::Worker::NewStub(grpc::CreateChannel(worker_->address(), grpc::InsecureChannelCredentials()));
  v1::WorkerHealthResponse h;
  for (int i = 0; i < 100; ++i) {
    grpc::ClientContext hctx;
    hctx.AddMetadata(kWorkerSecretKey, kSecret);
    ASSERT_TRUE(wstub->Health(&hctx, v1::WorkerHealthRequest(), &h).ok());
    if (h.live_sequences() == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(h.state(), v1::WORKER_STATE_READY);
  EXPECT_GE(h.last_step_id(), 20u);
  EXPECT_EQ(h.live_sequences(), 0);
}

TEST_F(RemoteWorkerTest, WrongSecretIsUnauthenticated) {
  WorkerServerOptions wo;
  wo.port = 0;
  wo.secret = kSecret;
  auto w = WorkerServer::Start(wo);
  ASSERT_TRUE(w.ok()) << w.status();
  auto stub = v1::Worker::NewStub(grpc::CreateChannel((*w)->address(), grpc::InsecureChannelCredentials()));
  for (const char* secret : {static_cast<const char*>("wrong"), static_cast<const char*>(""), static_cast<const char*>(nullptr)}) {
    {
      grpc::ClientContext ctx;
      if (secret != nullptr) ctx.AddMetadata(kWorkerSecretKey, secret);
      v1::WorkerHealthResponse h;
      EXPECT_EQ(stub->Health(&ctx, v1::WorkerHealthRequest(), &h).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    }
    {
      grpc::ClientContext ctx;
      if (secret != nullptr) ctx.AddMetadata(kWorkerSecretKey, secret);
      v1::LoadRequest load;
      load.set_model_path(testing::ModelPath());
      v1::LoadResponse resp;
      EXPECT_EQ(stub->Load(&ctx, load, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    }
    {
      grpc::ClientContext ctx;
      if (secret != nullptr) ctx.AddMetadata(kWorkerSecretKey, secret);
      v1::StepResult resp;
      EXPECT_EQ(stub->Step(&ctx, v1::StepRequest(), &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    }
  }
  grpc::ClientContext ctx;
  ctx.AddMetadata(kWorkerSecretKey, kSecret);
  v1::WorkerHealthResponse h;
  ASSERT_TRUE(stub->Health(&ctx, v1::WorkerHealthRequest(), &h).ok());
  EXPECT_EQ(h.state(), v1::WORKER_STATE_EMPTY);
  // The right secret before Load: steps are refused as FAILED_PRECONDITION, not UNAUTHENTICATED.
  grpc::ClientContext sctx;
  sctx.AddMetadata(kWorkerSecretKey, kSecret);
  v1::StepRequest step;
  step.set_step_id(1);
  v1::StepResult sr;
  EXPECT_EQ(stub->Step(&sctx, step, &sr).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(RemoteWorkerTest, StoppedWorkerEndsTheStreamWithUnavailable) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  ASSERT_NO_FATAL_FAILURE(StartAll());
  v1::GenerateRequest req;
  req.set_text("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,");  // greedy counting goes on for long
  req.mutable_sampling()->set_max_tokens(2000);
  req.mutable_sampling()->set_temperature(0.0f);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto reader = stub_->Generate(&ctx, req);
  v1::GenerateResponse r;
  ASSERT_TRUE(reader->Read(&r)) << "the stream should start";
  const std::string worker_address = worker_->address();
  const auto t0 = std::chrono::steady_clock::now();
  worker_->Shutdown();
  while (reader->Read(&r)) {
  }
  const grpc::Status st = reader->Finish();
  const double elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_NE(st.error_message().find(worker_address), std::string::npos) << st.error_message();
  EXPECT_LT(elapsed_s, 2.0);

  grpc::ClientContext ictx;
  v1::ModelInfo info;
  const grpc::Status ist = stub_->GetModelInfo(&ictx, v1::GetModelInfoRequest(), &info);
  ASSERT_TRUE(ist.ok()) << ist.error_message();
  EXPECT_EQ(info.vocab_size(), 49152);
  // New requests fail fast with UNAVAILABLE while the worker is gone.
  grpc::ClientContext gctx;
  gctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::GenerateRequest again;
  again.set_text("hello");
  again.mutable_sampling()->set_max_tokens(4);
  auto reader2 = stub_->Generate(&gctx, again);
  while (reader2->Read(&r)) {
  }
  EXPECT_EQ(reader2->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace adore
