// The C++ SDK (clients/cpp, adore::client) against adore-server's core in-process (EmbeddedServer, CPU
// engine, the real model): greedy generation equals the engine's own output whether read whole, through a
// callback or through a GenerateStream; errors carry the gRPC code and the server's message; cancellation
// (from the callback or another thread) and deadlines end the request on the server; model info, stats and
// health. Plus the wire mapping of requests (unset options stay unset) without a server.
// The installed package is tested separately (clients/cpp/tests/install_test.sh, ctest cpp_client_install).
#include "adore/client/client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <thread>

#include "clients/cpp/src/convert.h"
#include "common/model_weights.h"
#include "coordinator/grpc/server.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"
#include "tests/test_util.h"
#include "worker/cpu_engine.h"

namespace adore {
namespace {

namespace ac = adore::client;

// ---- without a server ------------------------------------------------------------------------------------

TEST(CppClientWireTest, UnsetOptionsStayUnsetOnTheWire) {
  v1::GenerateRequest req = ac::internal::BuildRequest("x", {});
  EXPECT_EQ(req.text(), "x");
  EXPECT_FALSE(req.has_sampling());
  EXPECT_FALSE(req.has_release());
  EXPECT_EQ(req.request_id(), "");

  req = ac::internal::BuildRequest("x", {.temperature = 0.0f, .seed = 7, .stop = {"END", "\n"}});
  ASSERT_TRUE(req.has_sampling());
  EXPECT_TRUE(req.sampling().has_temperature());  // 0 is a value (greedy), not "unset"
  EXPECT_EQ(req.sampling().temperature(), 0.0f);
  EXPECT_FALSE(req.sampling().has_max_tokens());
  EXPECT_FALSE(req.sampling().has_top_k());
  EXPECT_FALSE(req.sampling().has_top_p());
  EXPECT_EQ(req.sampling().seed(), 7u);
  EXPECT_EQ(req.sampling().stop_size(), 2);
  EXPECT_FALSE(req.has_release());

  req = ac::internal::BuildRequest(
      ac::Prompt::TokenIds({1, 2, 3}),
      {.max_tokens = 5, .top_k = 40, .top_p = 0.9f, .policy = ac::Policy::kAdore, .kv_budget = 64, .rebuild = 2,
       .request_id = "r-1"});
  ASSERT_EQ(req.prompt_case(), v1::GenerateRequest::kTokenIds);
  EXPECT_EQ(req.token_ids().ids_size(), 3);
  EXPECT_EQ(req.sampling().max_tokens(), 5);
  EXPECT_EQ(req.sampling().top_k(), 40);
  EXPECT_FLOAT_EQ(req.sampling().top_p(), 0.9f);
  EXPECT_EQ(req.release().policy(), v1::POLICY_ADORE);
  EXPECT_EQ(req.release().kv_budget(), 64);
  EXPECT_EQ(req.release().rebuild(), 2);
  EXPECT_EQ(req.request_id(), "r-1");

  // Only kv_budget: the release message is sent with the policy unset (the server default).
  req = ac::internal::BuildRequest("x", {.kv_budget = 32});
  EXPECT_EQ(req.release().policy(), v1::POLICY_UNSPECIFIED);
  EXPECT_TRUE(req.release().has_kv_budget());
  EXPECT_FALSE(req.release().has_rebuild());

  // An empty token list or conversation still selects its input (the server then names the field); no
  // prompt at all leaves the oneof unset.
  EXPECT_EQ(ac::internal::BuildRequest(ac::Prompt::TokenIds({}), {}).prompt_case(), v1::GenerateRequest::kTokenIds);
  EXPECT_EQ(ac::internal::BuildRequest(ac::Prompt::Chat({}), {}).prompt_case(), v1::GenerateRequest::kChat);
  EXPECT_EQ(ac::internal::BuildRequest(ac::Prompt(), {}).prompt_case(), v1::GenerateRequest::PROMPT_NOT_SET);
  req = ac::internal::BuildRequest(ac::Prompt::Chat({{"system", "Be brief."}, {"user", "Hi"}}), {});
  ASSERT_EQ(req.chat().messages_size(), 2);
  EXPECT_EQ(req.chat().messages(1).role(), "user");
  EXPECT_EQ(req.chat().messages(1).content(), "Hi");
}

TEST(CppClientWireTest, EnumNamesAndPolicyParsing) {
  EXPECT_EQ(ac::PolicyName(ac::Policy::kHeavyHitter), "HEAVY_HITTER");
  EXPECT_EQ(ac::PolicyName(static_cast<ac::Policy>(9)), "9");  // newer than this SDK: the number
  EXPECT_EQ(ac::FinishReasonName(ac::FinishReason::kLength), "LENGTH");
  EXPECT_EQ(ac::BackendName(ac::Backend::kCpu), "CPU");
  EXPECT_EQ(ac::ServingStatusName(ac::ServingStatus::kServing), "SERVING");
  EXPECT_EQ(*ac::ParsePolicy("adore"), ac::Policy::kAdore);
  EXPECT_EQ(*ac::ParsePolicy("heavy-hitter"), ac::Policy::kHeavyHitter);
  EXPECT_EQ(*ac::ParsePolicy(" POLICY_WINDOW "), ac::Policy::kWindow);
  EXPECT_EQ(*ac::ParsePolicy("Full"), ac::Policy::kFull);
  EXPECT_EQ(ac::ParsePolicy("unspecified").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ac::ParsePolicy("lru").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CppClientWireTest, HealthMessagesByHand) {
  EXPECT_EQ(ac::internal::EncodeHealthCheckRequest(""), "");
  EXPECT_EQ(ac::internal::EncodeHealthCheckRequest("adore.v1.Adore"), std::string("\x0a\x0e") + "adore.v1.Adore");
  EXPECT_EQ(*ac::internal::DecodeHealthCheckResponse(""), ac::ServingStatus::kUnknown);
  EXPECT_EQ(*ac::internal::DecodeHealthCheckResponse(std::string("\x08\x01", 2)), ac::ServingStatus::kServing);
  EXPECT_EQ(*ac::internal::DecodeHealthCheckResponse(std::string("\x08\x02", 2)), ac::ServingStatus::kNotServing);
  // Unknown fields are skipped.
  EXPECT_EQ(*ac::internal::DecodeHealthCheckResponse(std::string("\x12\x02hi\x08\x01", 6)),
            ac::ServingStatus::kServing);
  EXPECT_FALSE(ac::internal::DecodeHealthCheckResponse(std::string("\x08", 1)).ok());
  EXPECT_FALSE(ac::internal::DecodeHealthCheckResponse(std::string("\x12\x05hi", 4)).ok());
}

TEST(CppClientWireTest, UnreachableServerGivesUnavailableAndWaitReadyTimesOut) {
  ac::Client c("127.0.0.1:1");  // nothing listens on port 1
  EXPECT_EQ(c.server(), "127.0.0.1:1");
  EXPECT_EQ(c.GetModelInfo(absl::Seconds(5)).status().code(), absl::StatusCode::kUnavailable);
  absl::StatusOr<ac::GenerateResult> r = c.Generate("hi", {.timeout = absl::Seconds(5)});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  const absl::Status w = c.WaitReady(absl::Milliseconds(300));
  EXPECT_EQ(w.code(), absl::StatusCode::kDeadlineExceeded) << w;
}

// ---- against an embedded server -------------------------------------------------------------------------

class CppClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!testing::ModelAvailable()) return;
    auto s = EmbeddedServer::Start(testing::ModelServerOptions(/*kv_rows=*/4096, /*max_batch=*/8));
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = s->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    if (server_ == nullptr) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
    client_ = std::make_unique<ac::Client>(server_->address(), ac::ClientOptions{.timeout = absl::Seconds(120)});
  }
  // Waits for the server to have no request holding KV rows (a cancelled or expired one is freed
  // asynchronously).
  static int64_t KvRowsReservedAfterSettling() {
    for (int i = 0; i < 500 && server_->scheduler().stats().kv_rows_reserved != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return server_->scheduler().stats().kv_rows_reserved;
  }
  static EmbeddedServer* server_;
  std::unique_ptr<ac::Client> client_;
};
EmbeddedServer* CppClientTest::server_ = nullptr;

TEST_F(CppClientTest, GreedyGenerationMatchesTheEngineWholeByCallbackAndByStream) {
  auto weights = LoadModelWeights(testing::ModelPath());
  ASSERT_TRUE(weights.ok());
  auto tok = Tokenizer::Create(weights->tokenizer);
  ASSERT_TRUE(tok.ok());
  auto engine = CpuEngine::Create(*std::move(weights), {.kv_rows = 1024});
  ASSERT_TRUE(engine.ok());
  const std::string prompt = "The capital of France is";
  const std::vector<int32_t> expected = testing::ReferenceGreedy(**engine, **tok, prompt, 12);
  const std::vector<int32_t> prompt_ids = *(*tok)->Encode(prompt, false, true);
  ASSERT_FALSE(expected.empty());

  // Non-streaming.
  absl::StatusOr<ac::GenerateResult> whole =
      client_->Generate(prompt, {.max_tokens = 12, .temperature = 0.0f, .request_id = "cpp-sdk-1"});
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->token_ids, expected);
  EXPECT_EQ(whole->text, *(*tok)->Decode(expected, true));
  EXPECT_EQ(whole->request_id, "cpp-sdk-1");
  EXPECT_EQ(whole->usage.prompt_tokens, static_cast<int64_t>(prompt_ids.size()));
  EXPECT_EQ(whole->usage.completion_tokens, static_cast<int64_t>(expected.size()));
  EXPECT_EQ(whole->finish_reason,
            expected.size() == 12 ? ac::FinishReason::kLength : ac::FinishReason::kStop);
  EXPECT_EQ(whole->adore.policy, ac::Policy::kFull);
  EXPECT_EQ(whole->adore.kv_budget, 0);
  EXPECT_GE(whole->timing.total_ms, whole->timing.ttft_ms);
  EXPECT_GT(whole->timing.ttft_ms, 0.0);

  // A callback per delta (void-returning).
  std::vector<ac::Delta> deltas;
  absl::StatusOr<ac::GenerateResult> by_callback =
      client_->Generate(prompt, {.max_tokens = 12, .temperature = 0.0f},
                        [&deltas](const ac::Delta& d) { deltas.push_back(d); });
  ASSERT_TRUE(by_callback.ok()) << by_callback.status();
  std::string text;
  std::vector<int32_t> tokens;
  for (const ac::Delta& d : deltas) {
    EXPECT_FALSE(d.token_ids.empty());
    text += d.text;
    tokens.insert(tokens.end(), d.token_ids.begin(), d.token_ids.end());
  }
  EXPECT_EQ(tokens, expected);
  EXPECT_EQ(text, whole->text);
  EXPECT_EQ(by_callback->text, whole->text);
  EXPECT_EQ(by_callback->token_ids, expected);

  // A GenerateStream read with Next(), then Result().
  ac::GenerateStream stream = client_->GenerateStream(prompt, {.max_tokens = 12, .temperature = 0.0f,
                                                               .request_id = "cpp-sdk-2"});
  text.clear();
  tokens.clear();
  for (ac::Delta d; stream.Next(&d);) {
    text += d.text;
    tokens.insert(tokens.end(), d.token_ids.begin(), d.token_ids.end());
  }
  EXPECT_TRUE(stream.finished());
  EXPECT_TRUE(stream.status().ok()) << stream.status();
  EXPECT_EQ(stream.request_id(), "cpp-sdk-2");
  EXPECT_EQ(tokens, expected);
  EXPECT_EQ(text, whole->text);
  absl::StatusOr<ac::GenerateResult> streamed = stream.Result();
  ASSERT_TRUE(streamed.ok()) << streamed.status();
  EXPECT_EQ(streamed->token_ids, expected);
  EXPECT_EQ(streamed->text, whole->text);
  EXPECT_EQ(streamed->request_id, "cpp-sdk-2");
  EXPECT_EQ(stream.Result()->text, whole->text);  // repeatable

  // The completion's tokens fed back as a token-id prompt.
  absl::StatusOr<ac::GenerateResult> from_ids =
      client_->Generate(ac::Prompt::TokenIds(prompt_ids), {.max_tokens = 12, .temperature = 0.0f});
  ASSERT_TRUE(from_ids.ok()) << from_ids.status();
  EXPECT_EQ(from_ids->token_ids, expected);

  // A moved stream keeps working; the moved-from one is inert.
  ac::GenerateStream a = client_->GenerateStream(prompt, {.max_tokens = 3, .temperature = 0.0f});
  ac::GenerateStream b = std::move(a);
  EXPECT_FALSE(a.Next(nullptr));  // NOLINT(bugprone-use-after-move): documented as inert
  absl::StatusOr<ac::GenerateResult> moved = b.Result();
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(moved->token_ids, std::vector<int32_t>(expected.begin(), expected.begin() + 3));
}

TEST_F(CppClientTest, ErrorsCarryTheGrpcCodeAndTheServersMessage) {
  struct Case {
    ac::Prompt prompt;
    ac::GenerateOptions options;
    const char* field;
  };
  const Case cases[] = {
      {"hello", {.temperature = -1.0f}, "sampling.temperature"},
      {"hello", {.top_p = 1.5f}, "sampling.top_p"},
      {"hello", {.max_tokens = 0}, "max_tokens"},
      {"", {}, "text"},
      {ac::Prompt(), {}, "prompt"},
      {ac::Prompt::TokenIds({1, -5}), {}, "token_ids"},
      {"hello", {.policy = ac::Policy::kWindow, .kv_budget = 3}, "release.kv_budget"},
      {"hello", {.policy = static_cast<ac::Policy>(99)}, "release.policy"},
      {ac::Prompt::Chat({{"robot", "hi"}}), {}, "chat.messages"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<ac::GenerateResult> r = client_->Generate(c.prompt, c.options);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.field << ": " << r.status();
    EXPECT_NE(r.status().message().find(c.field), absl::string_view::npos) << c.field << ": " << r.status();
  }
  // The message begins with the field (proto/adore/v1/adore.proto, "Errors").
  absl::StatusOr<ac::GenerateResult> r = client_->Generate("hello", {.temperature = -1.0f});
  EXPECT_EQ(r.status().message().substr(0, 20), "sampling.temperature") << r.status();

  // From a stream: Next() ends at once, status() and Result() give the error, repeatedly.
  ac::GenerateStream stream = client_->GenerateStream("hello", {.top_p = 0.0f});
  ac::Delta d;
  EXPECT_FALSE(stream.Next(&d));
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(stream.Result().status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(stream.Next(&d));
  EXPECT_EQ(stream.Result().status(), stream.status());

  // A callback is never called for a failed request.
  int calls = 0;
  r = client_->Generate("hello", {.temperature = -1.0f}, [&calls](const ac::Delta&) { ++calls; });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(calls, 0);
}

TEST_F(CppClientTest, CancellationAndDeadlinesEndTheRequestOnTheServer) {
  const std::string counting = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,";  // greedy counting goes on for long
  const ac::GenerateOptions long_run{.max_tokens = 1000, .temperature = 0.0f};

  // The callback returns false after the second delta: the call ends CANCELLED, no further callbacks.
  int calls = 0;
  absl::StatusOr<ac::GenerateResult> r =
      client_->Generate(counting, long_run, [&calls](const ac::Delta&) { return ++calls < 2; });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(KvRowsReservedAfterSettling(), 0);

  // Cancel() from another thread while Next() blocks.
  ac::GenerateStream stream = client_->GenerateStream(counting, long_run);
  ac::Delta d;
  ASSERT_TRUE(stream.Next(&d)) << stream.status();
  EXPECT_FALSE(d.token_ids.empty());
  std::thread canceller([&stream] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    stream.Cancel();
  });
  int more = 0;
  while (stream.Next(&d)) ++more;
  canceller.join();
  EXPECT_LT(more, 999);
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kCancelled) << stream.status();
  EXPECT_EQ(stream.Result().status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(KvRowsReservedAfterSettling(), 0);

  // Destroying a running stream cancels it.
  {
    ac::GenerateStream abandoned = client_->GenerateStream(counting, long_run);
    ASSERT_TRUE(abandoned.Next(&d)) << abandoned.status();
  }
  EXPECT_EQ(KvRowsReservedAfterSettling(), 0);

  // A deadline: the per-call timeout, then the client's default.
  r = client_->Generate(counting, {.max_tokens = 1000, .temperature = 0.0f, .timeout = absl::Milliseconds(800)});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  ac::Client impatient(server_->address(), {.timeout = absl::Milliseconds(800)});
  ac::GenerateStream late = impatient.GenerateStream(counting, long_run);
  while (late.Next(&d)) {
  }
  EXPECT_EQ(late.status().code(), absl::StatusCode::kDeadlineExceeded) << late.status();
  EXPECT_EQ(KvRowsReservedAfterSettling(), 0);

  absl::StatusOr<ac::ServerStats> stats = client_->GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_GE(stats->requests.cancelled, 3);
}

TEST_F(CppClientTest, ModelInfoStatsAndHealth) {
  EXPECT_TRUE(client_->WaitReady(absl::Seconds(10)).ok());
  EXPECT_EQ(*client_->Health(), ac::ServingStatus::kServing);
  EXPECT_EQ(*client_->Health(ac::kAdoreService), ac::ServingStatus::kServing);
  EXPECT_EQ(client_->Health("no.such.Service").status().code(), absl::StatusCode::kNotFound);

  absl::StatusOr<ac::ModelInfo> info = client_->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->architecture, "llama");
  EXPECT_EQ(info->vocab_size, 49152);
  EXPECT_EQ(info->num_layers, 30);
  EXPECT_EQ(info->hidden_size, 576);
  EXPECT_GE(info->context_length, 2048);
  EXPECT_EQ(info->backend, ac::Backend::kCpu);
  EXPECT_EQ(info->tensor_parallel_size, 1);
  EXPECT_TRUE(info->chat_template_available);
  EXPECT_GT(info->default_max_tokens, 0);
  EXPECT_EQ(info->default_release.policy, ac::Policy::kFull);
  EXPECT_GE(info->min_kv_budget, 16);
  EXPECT_EQ(info->max_rebuild, 64);
  EXPECT_NE(std::find(info->available_policies.begin(), info->available_policies.end(), ac::Policy::kAdore),
            info->available_policies.end());

  absl::StatusOr<ac::ServerStats> before = client_->GetStats();
  ASSERT_TRUE(before.ok()) << before.status();
  absl::StatusOr<ac::GenerateResult> r =
      client_->Generate("Count: one, two, three, four,", {.max_tokens = 3, .temperature = 0.0f});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->usage.completion_tokens, 3);
  EXPECT_EQ(r->finish_reason, ac::FinishReason::kLength);
  // The server counts a step's tokens just after it sent the stream's end: poll briefly.
  absl::StatusOr<ac::ServerStats> after = client_->GetStats();
  for (int i = 0; i < 200 && after.ok() &&
                  after->completion_tokens_total < before->completion_tokens_total + r->usage.completion_tokens;
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    after = client_->GetStats();
  }
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->requests.ok, before->requests.ok + 1);
  EXPECT_EQ(after->completion_tokens_total, before->completion_tokens_total + r->usage.completion_tokens);
  EXPECT_GT(after->uptime_s, 0.0);
  ASSERT_EQ(after->workers.size(), 1u);
  EXPECT_TRUE(after->workers[0].healthy);
  // The request's steps were timed on the (one, embedded) rank, which runs no collectives.
  ASSERT_EQ(before->workers.size(), 1u);
  EXPECT_GE(after->workers[0].steps, before->workers[0].steps + r->usage.completion_tokens);
  EXPECT_GT(after->workers[0].step_ms_total, before->workers[0].step_ms_total);
  EXPECT_NEAR(after->workers[0].mean_step_ms, after->workers[0].step_ms_total / after->workers[0].steps, 1e-6);
  EXPECT_EQ(after->workers[0].comm_ms_total, 0.0);
  EXPECT_GT(after->kv_slots_free, 0);

  // Copies share the channel; a client can also use a channel the caller made.
  ac::Client copy = *client_;
  EXPECT_EQ(copy.GetModelInfo()->vocab_size, 49152);
  ac::Client over(grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  EXPECT_EQ(over.server(), "");
  EXPECT_EQ(*over.Health(), ac::ServingStatus::kServing);
}

TEST_F(CppClientTest, ChatStopStringsSeedsAndReleasePolicies) {
  absl::StatusOr<ac::GenerateResult> chat = client_->Generate(
      ac::Prompt::Chat({{"user", "What is the capital of France?"}}), {.max_tokens = 8, .temperature = 0.0f});
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_GT(chat->usage.prompt_tokens, 10);  // the template's system turn and tags
  EXPECT_NE(chat->text.find("Paris"), std::string::npos) << chat->text;

  absl::StatusOr<ac::GenerateResult> full = client_->Generate("The capital of France is",
                                                              {.max_tokens = 12, .temperature = 0.0f});
  ASSERT_TRUE(full.ok()) << full.status();
  const size_t paris = full->text.find("Paris");
  ASSERT_NE(paris, std::string::npos) << full->text;
  absl::StatusOr<ac::GenerateResult> stopped = client_->Generate(
      "The capital of France is", {.max_tokens = 12, .temperature = 0.0f, .stop = {"Paris"}});
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ(stopped->finish_reason, ac::FinishReason::kStop);
  EXPECT_EQ(stopped->text, full->text.substr(0, paris));

  const ac::GenerateOptions seeded{.max_tokens = 8, .temperature = 1.0f, .top_k = 50, .top_p = 0.95f, .seed = 1234};
  absl::StatusOr<ac::GenerateResult> a = client_->Generate("Once upon a time", seeded);
  absl::StatusOr<ac::GenerateResult> b = client_->Generate("Once upon a time", seeded);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->token_ids, b->token_ids);
  EXPECT_EQ(a->seed, 1234u);

  std::string long_text;
  for (int i = 0; i < 3; ++i) long_text += "It was a bright cold day in April, and the clocks were striking thirteen. ";
  absl::StatusOr<ac::GenerateResult> window = client_->Generate(
      long_text, {.max_tokens = 4, .temperature = 0.0f, .policy = ac::Policy::kWindow, .kv_budget = 16});
  ASSERT_TRUE(window.ok()) << window.status();
  EXPECT_EQ(window->adore.policy, ac::Policy::kWindow);
  EXPECT_EQ(window->adore.kv_budget, 16);
  EXPECT_GT(window->adore.tokens_released, 0);
  EXPECT_LE(window->adore.kv_slots_in_use, 16);
  absl::StatusOr<ac::GenerateResult> adore = client_->Generate(
      long_text, {.max_tokens = 4, .temperature = 0.0f, .policy = ac::Policy::kAdore, .kv_budget = 24, .rebuild = 2});
  ASSERT_TRUE(adore.ok()) << adore.status();
  EXPECT_EQ(adore->adore.policy, ac::Policy::kAdore);
  EXPECT_EQ(adore->adore.kv_budget, 24);
  EXPECT_EQ(adore->adore.rebuild, 2);
  EXPECT_GT(adore->adore.tokens_released, 0);
}

}  // namespace
}  // namespace adore
