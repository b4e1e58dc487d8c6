// The coordinator over an external worker (the adore.v1.Worker service, in-process on 127.0.0.1 with a
// secret): greedy generation through the worker equals the engine's own, a wrong secret is refused with
// UNAUTHENTICATED, and a worker that goes away ends the running stream with UNAVAILABLE while the server
// keeps answering.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <optional>
#include <thread>

#include "adore/v1/adore.grpc.pb.h"
#include "adore/v1/worker.grpc.pb.h"
#include "common/model_weights.h"
#include "coordinator/grpc/remote_runner.h"
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
  void StartAll(bool pipeline = false) {
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
    o.pipeline_steps = pipeline;
    auto s = EmbeddedServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    stub_ = v1::Adore::NewStub(grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    server_.reset();
    worker_.reset();
  }
  // The worker's health once it holds no sequence (or after about 4 s).
  v1::WorkerHealthResponse WorkerHealthWhenIdle() {
    auto wstub = v1::Worker::NewStub(grpc::CreateChannel(worker_->address(), grpc::InsecureChannelCredentials()));
    v1::WorkerHealthResponse h;
    for (int i = 0; i < 200; ++i) {
      grpc::ClientContext hctx;
      hctx.AddMetadata(kWorkerSecretKey, kSecret);
      EXPECT_TRUE(wstub->Health(&hctx, v1::WorkerHealthRequest(), &h).ok());
      if (h.live_sequences() == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return h;
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
  const v1::WorkerHealthResponse h = WorkerHealthWhenIdle();
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

// The coordinator pipelining its steps (step n + 1 sent before step n's answer): concurrent greedy streams
// of different lengths, one cut by a stop string and one by the model's end token, equal the engine's own
// greedy decoding, and the worker ends every sequence.
TEST_F(RemoteWorkerTest, PipelinedStepsGiveTheEnginesTokens) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  ASSERT_NO_FATAL_FAILURE(StartAll(/*pipeline=*/true));
  const testing::ReferenceModel ref = testing::LoadReferenceModel();
  ASSERT_NE(ref.engine, nullptr);
  CpuEngine& engine = *ref.engine;
  const Tokenizer& tok = *ref.tokenizer;
  struct Case {
    std::string prompt;
    int max_tokens;
  };
  const std::vector<Case> cases = {{"The quick brown fox", 1},        {"Once upon a time", 2},
                                   {"1, 2, 3, 4, 5,", 17},            {"The capital of France is", 9},
                                   {"Dear Sir or Madam,", 24},        {"In the beginning", 5},
                                   {"What is the meaning of life?", 30}, {"Roses are red,", 12}};
  std::vector<testing::StreamResult> got(cases.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < cases.size(); ++i) {
    clients.emplace_back([&, i] {
      v1::GenerateRequest req;
      req.set_text(cases[i].prompt);
      req.mutable_sampling()->set_max_tokens(cases[i].max_tokens);
      req.mutable_sampling()->set_temperature(0.0f);
      got[i] = testing::ReadGenerate(*stub_, req, 120000);
    });
  }
  for (std::thread& t : clients) t.join();
  for (size_t i = 0; i < cases.size(); ++i) {
    ASSERT_TRUE(got[i].status.ok()) << i << ": " << got[i].status.error_message();
    EXPECT_EQ(got[i].tokens, testing::ReferenceGreedy(engine, tok, cases[i].prompt, cases[i].max_tokens))
        << "case " << i << " (" << cases[i].prompt << ")";
    EXPECT_EQ(got[i].done.usage().completion_tokens(), static_cast<int64_t>(got[i].tokens.size()));
  }
  // A stop string ends the output before it, while the step after it is already in the air.
  const std::vector<int32_t> counting = testing::ReferenceGreedy(engine, tok, "1, 2, 3, 4, 5,", 17);
  const std::string counted = *tok.Decode(counting, true);
  ASSERT_NE(counted.find(" 8"), std::string::npos) << counted;
  v1::GenerateRequest req;
  req.set_text("1, 2, 3, 4, 5,");
  req.mutable_sampling()->set_max_tokens(17);
  req.mutable_sampling()->set_temperature(0.0f);
  req.mutable_sampling()->add_stop(" 8");
  const testing::StreamResult stopped = testing::ReadGenerate(*stub_, req, 60000);
  ASSERT_TRUE(stopped.status.ok()) << stopped.status.error_message();
  EXPECT_EQ(stopped.text, counted.substr(0, counted.find(" 8")));
  EXPECT_EQ(stopped.done.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(stopped.done.matched_stop(), " 8");
  // The extra token of every stream that ended was dropped and its sequence ended on the worker.
  const v1::WorkerHealthResponse h = WorkerHealthWhenIdle();
  EXPECT_EQ(h.live_sequences(), 0);
  EXPECT_EQ(h.kv_slots_used(), 0);
}

// The worker side of a pipelined step protocol: a decode entry without last_token continues from the token
// the worker sampled itself, and step n + 1 may reach the worker before step n (it waits for it). Greedy
// tokens equal those of explicit last_token steps. Runs on the checked-in tiny model (no fetched model).
// A readiness check while a pipelined step is in the air (here: while Wait waits for it) must not probe the
// worker mid-step and resynchronize the step ids under it: the step after it would reuse its id, and the
// worker would answer it with the earlier step's outputs.
TEST(PipelinedRunnerTest, ChecksDuringAStepInTheAirLeaveTheStepIdsAlone) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  WorkerServerOptions wo;
  wo.debug_step_delay_ms = 400;  // every step waits this long on the worker first
  auto worker = WorkerServer::Start(wo);
  ASSERT_TRUE(worker.ok()) << worker.status();
  RemoteRunnerOptions ro;
  ro.workers = {(*worker)->address()};
  ro.pipeline = true;
  ro.check_skip_after_step_ms = 0;  // probe whenever no step is in the air
  ro.load.set_model_path(std::filesystem::absolute(testing::ModelPath()).string());
  ro.load.set_backend(v1::BACKEND_CPU);
  ro.load.mutable_default_release()->set_policy(v1::POLICY_FULL);
  ro.load.set_memory_budget_bytes(int64_t{1} << 30);
  ro.log = [](const std::string&) {};
  auto runner = RemoteStepRunner::Connect(ro);
  ASSERT_TRUE(runner.ok()) << runner.status();
  RemoteStepRunner& r = **runner;
  WorkerStep first;
  first.start.push_back({.id = 1, .prompt = {1, 2, 3}});
  r.Submit(first);
  std::atomic<bool> waiting{true};
  std::thread checker([&] {
    while (waiting) {
      EXPECT_TRUE(r.CheckWorkers().ok());
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  auto a = r.Wait();  // joins the step's send for about 400 ms while the checker probes
  waiting = false;
  checker.join();
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->sequences.size(), 1u);
  WorkerStep second;  // the next step: one more sequence starts, the first decodes
  second.start.push_back({.id = 2, .prompt = {4, 5, 6, 7}});
  second.decode.push_back({.id = 1, .token = kOwnSample});
  r.Submit(second);
  auto b = r.Wait();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->sequences.size(), 2u);
  EXPECT_TRUE(r.CheckWorkers().ok());
}

TEST(PipelinedWorkerTest, OwnSamplesAndOutOfOrderStepsGiveTheSameTokens) {
  auto w = WorkerServer::Start({.port = 0, .secret = kSecret});
  ASSERT_TRUE(w.ok()) << w.status();
  auto stub = v1::Worker::NewStub(grpc::CreateChannel((*w)->address(), grpc::InsecureChannelCredentials()));
  auto call_ctx = [](grpc::ClientContext* ctx) {
    ctx->AddMetadata(kWorkerSecretKey, kSecret);
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  };
  {
    grpc::ClientContext ctx;
    call_ctx(&ctx);
    v1::LoadRequest load;
    load.set_model_path(std::string(ADORE_SOURCE_DIR) + "/tests/data/tiny_hf");
    load.set_tp_size(1);
    load.set_backend(v1::BACKEND_CPU);
    load.mutable_default_release()->set_policy(v1::POLICY_FULL);
    v1::LoadResponse resp;
    const grpc::Status st = stub->Load(&ctx, load, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  const std::vector<int32_t> prompt = {5, 17, 42, 99, 3, 64};
  constexpr int kTokens = 24;
  uint64_t step_id = 0;
  auto step = [&](const v1::StepRequest& req) {
    grpc::ClientContext ctx;
    call_ctx(&ctx);
    v1::StepResult out;
    const grpc::Status st = stub->Step(&ctx, req, &out);
    EXPECT_TRUE(st.ok()) << "step " << req.step_id() << ": " << st.error_message();
    return out;
  };
  auto start = [&](uint64_t seq) {
    v1::StepRequest req;
    req.set_step_id(++step_id);
    v1::SequenceStart* s = req.add_start();
    s->set_seq_id(seq);
    s->mutable_prompt_tokens()->Add(prompt.begin(), prompt.end());
    s->mutable_release()->set_policy(v1::POLICY_FULL);
    s->mutable_sampler()->set_top_p(1.0f);  // temperature 0: greedy
    return req;
  };
  auto decode = [&](uint64_t seq, std::optional<int32_t> last) {
    v1::StepRequest req;
    req.set_step_id(++step_id);
    v1::SequenceDecode* d = req.add_decode();
    d->set_seq_id(seq);
    if (last) d->set_last_token(*last);
    return req;
  };
  // Sequence 1: every step names its last token, one step at a time.
  std::vector<int32_t> explicit_tokens;
  v1::StepResult r = step(start(1));
  ASSERT_EQ(r.outputs_size(), 1);
  explicit_tokens.push_back(r.outputs(0).token());
  while (explicit_tokens.size() < kTokens) {
    r = step(decode(1, explicit_tokens.back()));
    ASSERT_EQ(r.outputs_size(), 1);
    explicit_tokens.push_back(r.outputs(0).token());
  }
  // Sequence 2: its own samples, two steps in flight, the later one sent first.
  std::vector<int32_t> own_tokens;
  r = step(start(2));
  own_tokens.push_back(r.outputs(0).token());
  while (own_tokens.size() < kTokens) {
    const v1::StepRequest first = decode(2, std::nullopt), second = decode(2, std::nullopt);
    v1::StepResult second_result;
    std::thread later([&] { second_result = step(second); });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the later step is waiting at the worker
    const v1::StepResult first_result = step(first);
    later.join();
    ASSERT_EQ(first_result.step_id(), first.step_id());
    ASSERT_EQ(second_result.step_id(), second.step_id());
    ASSERT_EQ(first_result.outputs_size(), 1);
    ASSERT_EQ(second_result.outputs_size(), 1);
    own_tokens.push_back(first_result.outputs(0).token());
    own_tokens.push_back(second_result.outputs(0).token());
  }
  own_tokens.resize(kTokens);
  EXPECT_EQ(own_tokens, explicit_tokens);
  // A bad explicit token is still refused, naming the field.
  grpc::ClientContext ctx;
  call_ctx(&ctx);
  v1::StepResult bad;
  const grpc::Status st = stub->Step(&ctx, decode(2, 1 << 20), &bad);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("decode[0].last_token"), std::string::npos) << st.error_message();
}

}  // namespace
}  // namespace adore
