// Bad input over the public gRPC API (adore.v1.Adore) of a real embedded server (CPU engine, 127.0.0.1):
// every row of the table gets the exact gRPC code docs/RELIABILITY.md promises and a message that begins
// with the field's path, and costs nothing: no scheduler step runs, no token is counted, no KV slot is
// held (read from /metrics). A client that cancels mid-stream gets CANCELLED and the server frees the
// request's KV; a normal request still succeeds afterwards.
#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "adore/v1/adore.grpc.pb.h"
#include "coordinator/grpc/server.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"
#include "tests/test_util.h"

namespace adore {
namespace {

constexpr int kContext = 8192;   // SmolLM2-135M's context
constexpr int kVocab = 49152;
constexpr int kMaxReceiveBytes = 4 * 1024 * 1024;  // gRPC's default, which the server keeps

class BadInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!testing::ModelAvailable()) return;
    ServerOptions o = testing::ModelServerOptions(/*kv_rows=*/8192, /*max_batch=*/8);  // with adore's own range
    o.http_port = 0;  // for /metrics
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
    stub_ = v1::Adore::NewStub(grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  }

  // The /metrics page.
  static std::string Metrics() {
    httplib::Client c("127.0.0.1", server_->http_port());
    c.set_read_timeout(30, 0);
    auto res = c.Get("/metrics");
    EXPECT_TRUE(res && res->status == 200) << "GET /metrics failed";
    return res ? res->body : "";
  }
  // The value of one sample, written as the page writes it ("adore_kv_slots_used",
  // "adore_requests_total{outcome=\"ok\"}"); NaN (and a failure) when absent.
  static double Sample(const std::string& page, const std::string& sample) {
    const std::string key = "\n" + sample + " ";
    const size_t at = ("\n" + page).find(key);
    if (at == std::string::npos) {
      ADD_FAILURE() << "no sample " << sample << " on /metrics";
      return std::nan("");
    }
    return std::strtod(page.c_str() + at + key.size() - 1, nullptr);
  }
  // Scrapes until the server holds no KV slot and runs no request (freeing happens at the next step).
  static std::string MetricsWhenIdle() {
    std::string page;
    for (int i = 0; i < 400; ++i) {
      page = Metrics();
      if (Sample(page, "adore_kv_slots_used") == 0 && Sample(page, "adore_requests_running") == 0) return page;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    ADD_FAILURE() << "the server never went idle:\n" << page;
    return page;
  }

  static EmbeddedServer* server_;
  std::unique_ptr<v1::Adore::Stub> stub_;
};
EmbeddedServer* BadInputTest::server_ = nullptr;

struct Row {
  std::string name;
  std::function<void(v1::GenerateRequest&)> edit;  // applied to a valid request ("hello", 4 tokens)
  grpc::StatusCode code = grpc::StatusCode::INVALID_ARGUMENT;
  std::string field;  // the message begins with "<field>: "; empty: see `message_has`
  std::string message_has;  // a part of the message, for rows whose message is gRPC's own
  int deadline_ms = 0;      // < 0: the deadline has passed when the call starts
};

void SetPolicy(v1::GenerateRequest& r, v1::Policy policy, std::optional<int64_t> kv_budget,
               std::optional<int64_t> rebuild = std::nullopt) {
  r.mutable_release()->set_policy(policy);
  if (kv_budget) r.mutable_release()->set_kv_budget(*kv_budget);
  if (rebuild) r.mutable_release()->set_rebuild(*rebuild);
}

std::vector<Row> Table() {
  using R = v1::GenerateRequest;
  std::vector<Row> rows = {
      // The prompt.
      {"no prompt", [](R& r) { r.clear_prompt(); }, grpc::StatusCode::INVALID_ARGUMENT, "prompt"},
      {"empty text", [](R& r) { r.set_text(""); }, grpc::StatusCode::INVALID_ARGUMENT, "text"},
      {"empty token ids", [](R& r) { r.mutable_token_ids(); }, grpc::StatusCode::INVALID_ARGUMENT, "token_ids.ids"},
      {"empty chat", [](R& r) { r.mutable_chat(); }, grpc::StatusCode::INVALID_ARGUMENT, "chat.messages"},
      {"text past the context",
       [](R& r) {
         std::string text;
         for (int i = 0; i < kContext + 100; ++i) text += " a";
         r.set_text(text);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "text"},
      {"token ids filling the context",
       [](R& r) {
         for (int i = 0; i < kContext; ++i) r.mutable_token_ids()->add_ids(42);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "token_ids.ids"},
      {"token id -1", [](R& r) { for (int id : {5, 6, -1}) r.mutable_token_ids()->add_ids(id); },
       grpc::StatusCode::INVALID_ARGUMENT, "token_ids.ids[2]"},
      {"token id = vocab", [](R& r) { r.mutable_token_ids()->add_ids(kVocab); }, grpc::StatusCode::INVALID_ARGUMENT,
       "token_ids.ids[0]"},
      {"token id INT32_MAX", [](R& r) { for (int id : {1, std::numeric_limits<int32_t>::max()}) r.mutable_token_ids()->add_ids(id); },
       grpc::StatusCode::INVALID_ARGUMENT, "token_ids.ids[1]"},
      // Invalid UTF-8 in proto3 strings (the C++ client sends it, logging an error; the server must refuse
      // it naming the field, not fail to parse it).
      {"text not UTF-8", [](R& r) { r.set_text("caf\xC3"); }, grpc::StatusCode::INVALID_ARGUMENT, "text"},
      {"text with an overlong", [](R& r) { r.set_text("a\xC0\xAF"); }, grpc::StatusCode::INVALID_ARGUMENT, "text"},
      {"chat content not UTF-8",
       [](R& r) {
         auto* m = r.mutable_chat()->add_messages();
         m->set_role("system");
         m->set_content("fine");
         m = r.mutable_chat()->add_messages();
         m->set_role("user");
         m->set_content("\xFF\xFE");
       },
       grpc::StatusCode::INVALID_ARGUMENT, "chat.messages[1].content"},
      {"stop string not UTF-8", [](R& r) { for (const char* s : {"ok", "\xE2\x82"}) r.mutable_sampling()->add_stop(s); },
       grpc::StatusCode::INVALID_ARGUMENT, "sampling.stop[1]"},
      {"request_id not UTF-8", [](R& r) { r.set_request_id("id\x80"); }, grpc::StatusCode::INVALID_ARGUMENT,
       "request_id"},
      // Sampling. One rule for every numeric limit: INVALID_ARGUMENT, never OUT_OF_RANGE (docs/RELIABILITY.md).
      {"max_tokens 0", [](R& r) { r.mutable_sampling()->set_max_tokens(0); }, grpc::StatusCode::INVALID_ARGUMENT,
       "sampling.max_tokens"},
      {"max_tokens -1", [](R& r) { r.mutable_sampling()->set_max_tokens(-1); }, grpc::StatusCode::INVALID_ARGUMENT,
       "sampling.max_tokens"},
      {"max_tokens past what the prompt leaves", [](R& r) { r.mutable_sampling()->set_max_tokens(kContext); },
       grpc::StatusCode::INVALID_ARGUMENT, "sampling.max_tokens"},
      {"max_tokens past the context", [](R& r) { r.mutable_sampling()->set_max_tokens(kContext + 1); },
       grpc::StatusCode::INVALID_ARGUMENT, "sampling.max_tokens"},
      {"max_tokens INT32_MAX", [](R& r) { r.mutable_sampling()->set_max_tokens(std::numeric_limits<int32_t>::max()); },
       grpc::StatusCode::INVALID_ARGUMENT, "sampling.max_tokens"},
      {"temperature -0.5", [](R& r) { r.mutable_sampling()->set_temperature(-0.5f); }, grpc::StatusCode::INVALID_ARGUMENT,
       "sampling.temperature"},
      {"temperature -inf", [](R& r) { r.mutable_sampling()->set_temperature(-INFINITY); },
       grpc::StatusCode::INVALID_ARGUMENT, "sampling.temperature"},
      {"top_k -1", [](R& r) { r.mutable_sampling()->set_top_k(-1); }, grpc::StatusCode::INVALID_ARGUMENT, "sampling.top_k"},
      {"top_p 0", [](R& r) { r.mutable_sampling()->set_top_p(0.0f); }, grpc::StatusCode::INVALID_ARGUMENT, "sampling.top_p"},
      {"top_p -0.1", [](R& r) { r.mutable_sampling()->set_top_p(-0.1f); }, grpc::StatusCode::INVALID_ARGUMENT,
       "sampling.top_p"},
      {"top_p 1.5", [](R& r) { r.mutable_sampling()->set_top_p(1.5f); }, grpc::StatusCode::INVALID_ARGUMENT,
       "sampling.top_p"},
      // Release, per policy: kv_budget in [the policy's minimum, context] (full: unset or 0), rebuild in
      // [0, 64] for adore and 0 for the others.
      {"unknown policy 99", [](R& r) { r.mutable_release()->set_policy(static_cast<v1::Policy>(99)); },
       grpc::StatusCode::INVALID_ARGUMENT, "release.policy"},
      {"unknown policy -1", [](R& r) { r.mutable_release()->set_policy(static_cast<v1::Policy>(-1)); },
       grpc::StatusCode::INVALID_ARGUMENT, "release.policy"},
      {"full kv_budget 64", [](R& r) { SetPolicy(r, v1::POLICY_FULL, 64); }, grpc::StatusCode::INVALID_ARGUMENT,
       "release.kv_budget"},
      {"full rebuild 1", [](R& r) { SetPolicy(r, v1::POLICY_FULL, std::nullopt, 1); }, grpc::StatusCode::INVALID_ARGUMENT,
       "release.rebuild"},
      {"window kv_budget 15", [](R& r) { SetPolicy(r, v1::POLICY_WINDOW, 15); }, grpc::StatusCode::INVALID_ARGUMENT,
       "release.kv_budget"},
      {"window kv_budget -1", [](R& r) { SetPolicy(r, v1::POLICY_WINDOW, -1); }, grpc::StatusCode::INVALID_ARGUMENT,
       "release.kv_budget"},
      {"window kv_budget past the context", [](R& r) { SetPolicy(r, v1::POLICY_WINDOW, kContext + 1); },
       grpc::StatusCode::INVALID_ARGUMENT, "release.kv_budget"},
      {"window rebuild 1", [](R& r) { SetPolicy(r, v1::POLICY_WINDOW, 64, 1); }, grpc::StatusCode::INVALID_ARGUMENT,
       "release.rebuild"},
      {"heavy_hitter kv_budget 15", [](R& r) { SetPolicy(r, v1::POLICY_HEAVY_HITTER, 15); },
       grpc::StatusCode::INVALID_ARGUMENT, "release.kv_budget"},
      {"heavy_hitter kv_budget INT64_MAX",
       [](R& r) { SetPolicy(r, v1::POLICY_HEAVY_HITTER, std::numeric_limits<int64_t>::max()); },
       grpc::StatusCode::INVALID_ARGUMENT, "release.kv_budget"},
      {"heavy_hitter rebuild 2", [](R& r) { SetPolicy(r, v1::POLICY_HEAVY_HITTER, 64, 2); },
       grpc::StatusCode::INVALID_ARGUMENT, "release.rebuild"},
      {"adore kv_budget 20 (under its protected 21)", [](R& r) { SetPolicy(r, v1::POLICY_ADORE, 20); },
       grpc::StatusCode::INVALID_ARGUMENT, "release.kv_budget"},
      {"adore kv_budget past the context", [](R& r) { SetPolicy(r, v1::POLICY_ADORE, kContext + 1); },
       grpc::StatusCode::INVALID_ARGUMENT, "release.kv_budget"},
      {"adore rebuild 65", [](R& r) { SetPolicy(r, v1::POLICY_ADORE, 64, 65); }, grpc::StatusCode::INVALID_ARGUMENT,
       "release.rebuild"},
      {"adore rebuild -1", [](R& r) { SetPolicy(r, v1::POLICY_ADORE, 64, -1); }, grpc::StatusCode::INVALID_ARGUMENT,
       "release.rebuild"},
      // Transport limits, with gRPC's own messages.
      {"message over the max receive size",
       [](R& r) { r.set_text(std::string(kMaxReceiveBytes + 1024, 'a')); }, grpc::StatusCode::RESOURCE_EXHAUSTED, "",
       "larger than max"},
      {"deadline already passed", [](R&) {}, grpc::StatusCode::DEADLINE_EXCEEDED, "", "Deadline Exceeded",
       /*deadline_ms=*/-1000},
  };
  return rows;
}

TEST_F(BadInputTest, EveryRowGetsItsCodeNamingTheFieldAndCostsNothing) {
  const std::string before = MetricsWhenIdle();
  v1::ServerStats stats_before;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->GetStats(&ctx, v1::GetStatsRequest(), &stats_before).ok());
  }
  int invalid_rows = 0;
  for (const Row& row : Table()) {
    SCOPED_TRACE(row.name);
    v1::GenerateRequest req;
    req.set_text("hello");
    req.mutable_sampling()->set_max_tokens(4);
    row.edit(req);
    testing::StreamResult r;
    {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(row.deadline_ms != 0 ? row.deadline_ms : 60000));
      auto reader = stub_->Generate(&ctx, req);
      v1::GenerateResponse m;
      int messages = 0;
      while (reader->Read(&m)) ++messages;
      r.status = reader->Finish();
      EXPECT_EQ(messages, 0) << "a refused request streams nothing";
    }
    EXPECT_EQ(r.status.error_code(), row.code) << r.status.error_message();
    if (!row.field.empty()) {
      EXPECT_EQ(r.status.error_message().rfind(row.field + ": ", 0), 0u)
          << "the message must begin with '" << row.field << ": ': " << r.status.error_message();
    } else {
      EXPECT_NE(r.status.error_message().find(row.message_has), std::string::npos) << r.status.error_message();
    }
    if (row.code == grpc::StatusCode::INVALID_ARGUMENT) ++invalid_rows;
  }

  // Nothing reached the scheduler: no step ran, no token was counted, no request was taken or refused
  // there (the service refuses before submitting), and no KV slot is held or reserved.
  const std::string after = Metrics();
  for (const char* sample :
       {"adore_steps_total", "adore_prompt_tokens_total", "adore_completion_tokens_total",
        "adore_requests_total{outcome=\"ok\"}", "adore_requests_total{outcome=\"rejected\"}",
        "adore_requests_total{outcome=\"error\"}", "adore_requests_total{outcome=\"cancelled\"}"}) {
    EXPECT_EQ(Sample(after, sample), Sample(before, sample)) << sample;
  }
  EXPECT_EQ(Sample(after, "adore_kv_slots_used"), 0);
  EXPECT_EQ(Sample(after, "adore_kv_slots_reserved"), 0);
  EXPECT_EQ(Sample(after, "adore_kv_slots_free"), 8192);
  EXPECT_EQ(Sample(after, "adore_requests_running"), 0);
  EXPECT_EQ(Sample(after, "adore_queue_length"), 0);
  v1::ServerStats stats;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->GetStats(&ctx, v1::GetStatsRequest(), &stats).ok());
  }
  EXPECT_EQ(stats.kv_slots_used(), 0);
  EXPECT_EQ(stats.kv_slots_free(), 8192);
  EXPECT_EQ(stats.requests().invalid_argument() - stats_before.requests().invalid_argument(), invalid_rows);

  // A normal request is still served.
  v1::GenerateRequest ok;
  ok.set_text("The capital of France is");
  ok.mutable_sampling()->set_max_tokens(6);
  testing::StreamResult r = testing::ReadGenerate(*stub_, ok, /*deadline_ms=*/120000);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_GT(r.done.usage().completion_tokens(), 0);
  EXPECT_EQ(r.done.usage().completion_tokens(), static_cast<int64_t>(r.tokens.size()));
  MetricsWhenIdle();
}

// The request of a client that cancels mid-stream ends (CANCELLED on the client) and its KV slots are
// freed on the worker: /metrics shows them held while it streams and none once it is cancelled.
TEST_F(BadInputTest, ClientCancelMidStreamFreesTheKv) {
  const std::string before = MetricsWhenIdle();
  v1::GenerateRequest req;
  req.set_text("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,");  // greedy counting goes on for long
  req.mutable_sampling()->set_max_tokens(2000);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto reader = stub_->Generate(&ctx, req);
  v1::GenerateResponse m;
  int tokens = 0;
  while (tokens < 4 && reader->Read(&m)) tokens += m.delta().token_ids_size();
  ASSERT_GE(tokens, 4) << "the stream ended early";
  // Mid-stream: the sequence holds its prompt and the tokens so far, far less than admission reserved
  // (prompt + 2000).
  const std::string during = Metrics();
  const double used = Sample(during, "adore_kv_slots_used");
  EXPECT_GT(used, 0);
  EXPECT_LT(used, 200);
  EXPECT_GE(Sample(during, "adore_kv_slots_reserved"), 2000);
  ctx.TryCancel();
  while (reader->Read(&m)) {
  }
  const grpc::Status st = reader->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::CANCELLED) << st.error_message();

  const std::string after = MetricsWhenIdle();
  EXPECT_EQ(Sample(after, "adore_kv_slots_used"), 0);
  EXPECT_EQ(Sample(after, "adore_kv_slots_reserved"), 0);
  EXPECT_EQ(Sample(after, "adore_requests_total{outcome=\"cancelled\"}"),
            Sample(before, "adore_requests_total{outcome=\"cancelled\"}") + 1);
  EXPECT_LT(Sample(after, "adore_completion_tokens_total") - Sample(before, "adore_completion_tokens_total"), 1000);
  v1::ServerStats stats;
  grpc::ClientContext sctx;
  ASSERT_TRUE(stub_->GetStats(&sctx, v1::GetStatsRequest(), &stats).ok());
  EXPECT_EQ(stats.kv_slots_used(), 0);
  EXPECT_EQ(stats.active_requests(), 0);

  v1::GenerateRequest ok;
  ok.set_text("Once upon a time,");
  ok.mutable_sampling()->set_max_tokens(4);
  testing::StreamResult r = testing::ReadGenerate(*stub_, ok, /*deadline_ms=*/120000);
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
}

}  // namespace
}  // namespace adore
