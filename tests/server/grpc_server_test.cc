// adore-server's core over real gRPC on 127.0.0.1 (CPU engine): streaming generation equals the engine's
// own greedy output, bad requests get INVALID_ARGUMENT naming the field, model info and health answer,
// a client deadline ends the stream with DEADLINE_EXCEEDED and frees the request's KV.
#include "coordinator/grpc/server.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <thread>

#include "adore/v1/adore.grpc.pb.h"
#include "common/model_weights.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"
#include "tests/test_util.h"
#include "worker/cpu_engine.h"
#include "worker/generator.h"

namespace adore {
namespace {

class GrpcServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!testing::ModelAvailable()) return;
    ServerOptions o;
    o.model = testing::ModelPath();
    o.port = 0;
    o.kv_rows = 8192;
    o.max_batch = 8;
    o.controller = std::string(ADORE_SOURCE_DIR) + "/tools/adore/controller.bin";
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
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = v1::Adore::NewStub(channel_);
  }
  // Runs one Generate call; returns the status and fills the concatenated deltas and the done message.
  grpc::Status Generate(const v1::GenerateRequest& req, std::vector<int32_t>* tokens, std::string* text,
                        v1::GenerateDone* done, int deadline_ms = 0) {
    testing::StreamResult r = testing::ReadGenerate(*stub_, req, deadline_ms);
    tokens->insert(tokens->end(), r.tokens.begin(), r.tokens.end());
    *text += r.text;
    *done = r.done;
    return r.status;
  }
  static EmbeddedServer* server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Adore::Stub> stub_;
};
EmbeddedServer* GrpcServerTest::server_ = nullptr;

TEST_F(GrpcServerTest, StreamingGenerationMatchesTheEngine) {
  auto weights = LoadModelWeights(testing::ModelPath());
  ASSERT_TRUE(weights.ok());
  auto tok = Tokenizer::Create(weights->tokenizer);
  ASSERT_TRUE(tok.ok());
  auto engine = CpuEngine::Create(*std::move(weights), {.kv_rows = 1024});
  ASSERT_TRUE(engine.ok());
  const std::string prompt = "The quick brown fox";
  const std::vector<int32_t> expected = testing::ReferenceGreedy(**engine, **tok, prompt, 20);
  const std::vector<int32_t> prompt_ids = *(*tok)->Encode(prompt, false, true);

  v1::GenerateRequest req;
  req.set_text(prompt);
  req.set_request_id("r1");
  req.mutable_sampling()->set_max_tokens(20);
  req.mutable_sampling()->set_temperature(0.0f);
  std::vector<int32_t> tokens;
  std::string text;
  v1::GenerateDone done;
  const grpc::Status st = Generate(req, &tokens, &text, &done);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(tokens, expected);
  EXPECT_EQ(text, *(*tok)->Decode(expected, true));
  EXPECT_EQ(done.usage().completion_tokens(), static_cast<int64_t>(tokens.size()));
  EXPECT_EQ(done.usage().prompt_tokens(), static_cast<int64_t>(prompt_ids.size()));
  EXPECT_EQ(done.adore().policy(), v1::POLICY_FULL);
  EXPECT_GT(done.timing().total_ms(), 0.0);
}

// 32 concurrent streaming clients with different prompts and lengths (the server runs 8 at a time, so
// requests join the batch as others end): each stream delivers exactly its one-at-a-time greedy output.
TEST_F(GrpcServerTest, ConcurrentStreamsMatchOneAtATimeRuns) {
  auto weights = LoadModelWeights(testing::ModelPath());
  ASSERT_TRUE(weights.ok());
  auto tok = Tokenizer::Create(weights->tokenizer);
  ASSERT_TRUE(tok.ok());
  auto engine = CpuEngine::Create(*std::move(weights), {.kv_rows = 1024});
  ASSERT_TRUE(engine.ok());
  const char* kTexts[] = {"The capital of France is", "Once upon a time,", "def add(a, b):", "Water boils at",
                          "The three primary colors are", "In 1492, Columbus", "My favourite fruit is",
                          "A haiku about autumn:"};
  constexpr int kClients = 32;
  std::vector<std::string> prompts(kClients);
  std::vector<int> lengths(kClients);
  std::vector<std::vector<int32_t>> expected(kClients);
  for (int i = 0; i < kClients; ++i) {
    prompts[i] = std::string(kTexts[i % 8]) + (i / 8 ? std::string(" (") + std::to_string(i / 8) + ")" : "");
    lengths[i] = 3 + (i * 5) % 14;
    expected[i] = testing::ReferenceGreedy(**engine, **tok, prompts[i], lengths[i]);
  }
  std::vector<std::vector<int32_t>> got(kClients);
  std::vector<grpc::Status> status(kClients);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      v1::GenerateRequest req;
      req.set_text(prompts[i]);
      req.mutable_sampling()->set_max_tokens(lengths[i]);
      req.mutable_sampling()->set_temperature(0.0f);
      std::string text;
      v1::GenerateDone done;
      status[i] = Generate(req, &got[i], &text, &done, /*deadline_ms=*/240000);
    });
  }
  for (auto& t : clients) t.join();
  for (int i = 0; i < kClients; ++i) {
    EXPECT_TRUE(status[i].ok()) << "client " << i << ": " << status[i].error_message();
    EXPECT_EQ(got[i], expected[i]) << "client " << i;
  }
}

TEST_F(GrpcServerTest, ReleasePolicyRequestReportsItsStats) {
  v1::GenerateRequest req;
  std::string long_text;
  for (int i = 0; i < 12; ++i) long_text += "It was a bright cold day in April, and the clocks were striking thirteen. ";
  req.set_text(long_text);
  req.mutable_sampling()->set_max_tokens(16);
  req.mutable_sampling()->set_temperature(0.0f);
  req.mutable_release()->set_policy(v1::POLICY_ADORE);
  req.mutable_release()->set_kv_budget(64);
  req.mutable_release()->set_rebuild(4);
  std::vector<int32_t> tokens;
  std::string text;
  v1::GenerateDone done;
  const grpc::Status st = Generate(req, &tokens, &text, &done);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(done.adore().policy(), v1::POLICY_ADORE);
  EXPECT_EQ(done.adore().kv_budget(), 64);
  EXPECT_GT(done.adore().tokens_released(), 0);
  EXPECT_LE(done.adore().kv_slots_in_use(), 64);
}

TEST_F(GrpcServerTest, BadRequestsGetInvalidArgumentNamingTheField) {
  struct Case {
    const char* field;
    std::function<void(v1::GenerateRequest&)> edit;
  };
  const Case cases[] = {
      {"prompt", [](v1::GenerateRequest& r) { r.clear_prompt(); }},
      {"prompt.token_ids", [](v1::GenerateRequest& r) { r.mutable_token_ids()->add_ids(-5); }},
      {"sampling.temperature", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_temperature(-1); }},
      {"sampling.top_p", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_p(0.0f); }},
      {"max_tokens", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_max_tokens(0); }},
      {"release.kv_budget", [](v1::GenerateRequest& r) {
         r.mutable_release()->set_policy(v1::POLICY_WINDOW);
         r.mutable_release()->set_kv_budget(3);
       }},
      {"release.rebuild", [](v1::GenerateRequest& r) {
         r.mutable_release()->set_policy(v1::POLICY_ADORE);
         r.mutable_release()->set_kv_budget(64);
         r.mutable_release()->set_rebuild(1000);
       }},
      {"prompt.chat.messages.role", [](v1::GenerateRequest& r) {
         auto* m = r.mutable_chat()->add_messages();
         m->set_role("robot");
         m->set_content("hi");
       }},
  };
  for (const Case& c : cases) {
    v1::GenerateRequest req;
    req.set_text("hello");
    c.edit(req);
    std::vector<int32_t> tokens;
    std::string text;
    v1::GenerateDone done;
    const grpc::Status st = Generate(req, &tokens, &text, &done);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.field << ": " << st.error_message();
    EXPECT_NE(st.error_message().find(c.field), std::string::npos) << c.field << ": " << st.error_message();
  }
}

TEST_F(GrpcServerTest, ModelInfoAndHealth) {
  grpc::ClientContext ctx;
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.vocab_size(), 49152);
  EXPECT_EQ(info.num_layers(), 30);
  EXPECT_EQ(info.backend(), v1::BACKEND_CPU);
  EXPECT_TRUE(info.chat_template_available());
  // grpc.health.v1 through a generic call (the health proto's stub is not part of the public headers).
  grpc::GenericStub generic(channel_);
  grpc::ClientContext hctx;
  grpc::ByteBuffer request_bytes, response_bytes;  // HealthCheckRequest{service: ""} encodes to 0 bytes
  grpc::Slice empty("", 0);
  request_bytes = grpc::ByteBuffer(&empty, 1);
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  grpc::Status status;
  grpc::StubOptions opts;
  generic.UnaryCall(&hctx, "/grpc.health.v1.Health/Check", opts, &request_bytes, &response_bytes,
                    [&](grpc::Status s) {
                      std::lock_guard<std::mutex> lock(mu);
                      status = s;
                      finished = true;
                      cv.notify_all();
                    });
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return finished; }));
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response_bytes.Dump(&slices).ok());
  std::string body;
  for (const auto& s : slices) body.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_EQ(body, std::string("\x08\x01"));  // status: SERVING
}

TEST_F(GrpcServerTest, DeadlineEndsTheStreamAndFreesItsKv) {
  v1::GenerateRequest req;
  req.set_text("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,");  // greedy counting goes on for long
  req.mutable_sampling()->set_max_tokens(2000);
  req.mutable_sampling()->set_temperature(0.0f);
  std::vector<int32_t> tokens;
  std::string text;
  v1::GenerateDone done;
  const grpc::Status st = Generate(req, &tokens, &text, &done, /*deadline_ms=*/1500);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
  EXPECT_GT(tokens.size(), 0u) << "the stream should have started before the deadline";
  for (int i = 0; i < 300 && server_->scheduler().stats().kv_rows_reserved != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(server_->scheduler().stats().kv_rows_reserved, 0);
}

}  // namespace
}  // namespace adore
