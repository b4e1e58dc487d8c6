// adore-server's HTTP API (coordinator/http/) on 127.0.0.1 with the CPU engine, driven by cpp-httplib's
// client: OpenAI-compatible completions equal the gRPC path's greedy text, streamed SSE chunks concatenate
// to it and end with [DONE], chat completions, /v1/models, /health, validation errors naming the field,
// a client that disconnects mid-stream has its request cancelled, and /metrics parses as Prometheus text
// exposition with counters that move. A scripted step runner covers 429 (queue full) and 503 (not serving).
#include "coordinator/http/http_server.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <regex>
#include <thread>

#include <nlohmann/json.hpp>

#include "adore/v1/adore.grpc.pb.h"
#include "common/model_weights.h"
#include "coordinator/grpc/server.h"
#include "coordinator/http/metrics.h"
#include "coordinator/http/openai.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"
#include "tests/test_util.h"

namespace adore {
namespace {

using json = nlohmann::json;

// ---- Server-Sent Events -------------------------------------------------------------------------------

struct SseStream {
  std::vector<json> events;  // the data: payloads before [DONE], parsed
  bool done_last = false;    // "data: [DONE]" came, and nothing after it
};

SseStream ParseSse(const std::string& body) {
  SseStream out;
  bool done = false;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "unterminated event at byte " << pos;
    if (end == std::string::npos) break;
    const std::string event = body.substr(pos, end - pos);
    pos = end + 2;
    if (!event.empty() && event[0] == ':') continue;  // a comment (keep-alive)
    EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
    EXPECT_FALSE(done) << "event after [DONE]: " << event;
    const std::string data = event.substr(6);
    if (data == "[DONE]") {
      done = true;
      continue;
    }
    json j = json::parse(data, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << data;
    out.events.push_back(std::move(j));
  }
  out.done_last = done;
  return out;
}

// ---- Prometheus text exposition (format 0.0.4) ----------------------------------------------------------

struct MetricSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0.0;
};

// Parses the whole page; every line must be a HELP, a TYPE or a sample of a family typed before it.
std::vector<MetricSample> ParseExposition(const std::string& text) {
  static const std::regex kHelp(R"(^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .*$)");
  static const std::regex kType(R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$)");
  static const std::regex kSample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$)");
  static const std::regex kLabel(R"re(^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$))re");
  std::vector<MetricSample> out;
  std::map<std::string, std::string> types;
  EXPECT_TRUE(!text.empty() && text.back() == '\n') << "the page must end with a newline";
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t end = text.find('\n', pos);
    const std::string line = text.substr(pos, end - pos);
    pos = end == std::string::npos ? text.size() : end + 1;
    std::smatch m;
    if (std::regex_match(line, m, kHelp)) continue;
    if (std::regex_match(line, m, kType)) {
      EXPECT_EQ(types.count(m[1]), 0u) << "TYPE twice: " << line;
      types[m[1]] = m[2];
      continue;
    }
    if (!std::regex_match(line, m, kSample)) {
      ADD_FAILURE() << "not exposition syntax: '" << line << "'";
      continue;
    }
    MetricSample s;
    s.name = m[1];
    std::string labels = m[3];
    while (!labels.empty()) {
      std::smatch l;
      if (!std::regex_search(labels, l, kLabel)) {
        ADD_FAILURE() << "bad labels in '" << line << "'";
        break;
      }
      s.labels[l[1]] = l[2];
      labels = l.suffix();
    }
    const std::string v = m[4];
    if (v == "+Inf" || v == "-Inf" || v == "NaN") {
      s.value = v == "NaN" ? std::nan("") : v == "+Inf" ? INFINITY : -INFINITY;
    } else {
      char* endp = nullptr;
      s.value = std::strtod(v.c_str(), &endp);
      EXPECT_EQ(*endp, '\0') << "bad value in '" << line << "'";
    }
    std::string family = s.name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string base = s.name.substr(0, s.name.size() - std::min(s.name.size(), strlen(suffix)));
      if (s.name.size() > strlen(suffix) && s.name.ends_with(suffix) && types.count(base) &&
          types[base] == "histogram") {
        family = base;
      }
    }
    EXPECT_EQ(types.count(family), 1u) << "sample without a TYPE: " << line;
    if (types[family] == "counter") EXPECT_GE(s.value, 0.0) << line;
    out.push_back(std::move(s));
  }
  return out;
}

// The value of the sample `name` with exactly these labels; NaN (and a failure) when absent.
double Value(const std::vector<MetricSample>& samples, const std::string& name,
             const std::map<std::string, std::string>& labels = {}) {
  for (const MetricSample& s : samples) {
    if (s.name == name && s.labels == labels) return s.value;
  }
  ADD_FAILURE() << "no sample " << name;
  return std::nan("");
}

// Histogram buckets must be cumulative and end with +Inf equal to _count.
void ExpectHistogram(const std::vector<MetricSample>& samples, const std::string& name,
                     std::map<std::string, std::string> labels = {}) {
  double previous = 0.0;
  bool inf = false;
  for (const MetricSample& s : samples) {
    if (s.name != name + "_bucket") continue;
    auto l = s.labels;
    const std::string le = l["le"];
    l.erase("le");
    if (l != labels) continue;
    EXPECT_GE(s.value, previous) << name << " le=" << le;
    previous = s.value;
    inf = le == "+Inf";
  }
  EXPECT_TRUE(inf) << name << ": the last bucket is not +Inf";
  EXPECT_EQ(previous, Value(samples, name + "_count", labels)) << name;
}

// ---- the in-process server --------------------------------------------------------------------------

class HttpTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!testing::ModelAvailable()) return;
    ServerOptions o;
    o.model = testing::ModelPath();
    o.port = 0;
    o.http_port = 0;
    o.kv_rows = 8192;
    o.max_batch = 8;
    o.served_model_name = "smollm2";
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
    ASSERT_GT(server_->http_port(), 0);
  }
  static httplib::Client Client() {
    httplib::Client c("127.0.0.1", server_->http_port());
    c.set_read_timeout(60, 0);
    return c;
  }
  // POSTs JSON; returns the status and the body.
  static std::pair<int, std::string> Post(const std::string& path, const json& body) {
    httplib::Client c = Client();
    auto res = c.Post(path.c_str(), body.dump(), "application/json");
    if (!res) {
      ADD_FAILURE() << path << ": " << httplib::to_string(res.error());
      return {0, ""};
    }
    return {res->status, res->body};
  }
  static json PostJson(const std::string& path, const json& body, int expected_status = 200) {
    auto [status, text] = Post(path, body);
    EXPECT_EQ(status, expected_status) << text;
    json j = json::parse(text, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << text;
    return j;
  }
  static std::vector<MetricSample> Scrape() {
    httplib::Client c = Client();
    auto res = c.Get("/metrics");
    EXPECT_TRUE(res) << "GET /metrics failed";
    if (!res) return {};
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
    return ParseExposition(res->body);
  }
  // Scrapes until `done` holds (the scheduler updates its figures just after the final event goes out).
  static std::vector<MetricSample> ScrapeUntil(const std::function<bool(const std::vector<MetricSample>&)>& done) {
    std::vector<MetricSample> m;
    for (int i = 0; i < 800; ++i) {  // up to ~20 s on a loaded machine
      m = Scrape();
      if (done(m)) return m;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    ADD_FAILURE() << "metrics never reached the expected state";
    return m;
  }
  // The gRPC path's greedy text for the same request.
  static std::string GrpcText(const v1::GenerateRequest& req) {
    auto stub = v1::Adore::NewStub(grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
    testing::StreamResult r = testing::ReadGenerate(*stub, req);
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    return r.text;
  }

  static EmbeddedServer* server_;
};
EmbeddedServer* HttpTest::server_ = nullptr;

constexpr char kPrompt[] = "The quick brown fox";

TEST_F(HttpTest, CompletionEqualsTheGrpcGreedyText) {
  v1::GenerateRequest req;
  req.set_text(kPrompt);
  req.mutable_sampling()->set_max_tokens(16);
  req.mutable_sampling()->set_temperature(0.0f);
  const std::string expected = GrpcText(req);
  ASSERT_FALSE(expected.empty());

  const json r = PostJson("/v1/completions", {{"model", "smollm2"}, {"prompt", kPrompt}, {"max_tokens", 16},
                                              {"temperature", 0}, {"seed", 7}});
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["model"], "smollm2");
  EXPECT_EQ(r["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  ASSERT_EQ(r["choices"].size(), 1u);
  EXPECT_EQ(r["choices"][0]["text"], expected);
  EXPECT_EQ(r["choices"][0]["index"], 0);
  const std::string finish = r["choices"][0]["finish_reason"];
  EXPECT_TRUE(finish == "length" || finish == "stop") << finish;
  EXPECT_GT(r["usage"]["prompt_tokens"].get<int>(), 0);
  EXPECT_EQ(r["usage"]["total_tokens"].get<int>(),
            r["usage"]["prompt_tokens"].get<int>() + r["usage"]["completion_tokens"].get<int>());
  EXPECT_EQ(r["adore"]["policy"], "full");
  EXPECT_EQ(r["adore"]["seed"], 7);
  EXPECT_GT(r["adore"]["kv_slots_in_use"].get<int>(), 0);
  EXPECT_GT(r["adore"]["ttft_ms"].get<double>(), 0.0);
  EXPECT_GE(r["adore"]["total_ms"].get<double>(), r["adore"]["ttft_ms"].get<double>());

  // A prompt as token ids gives the same text (the ids the text encodes to, BOS included as the server adds it).
  auto weights = LoadModelWeights(testing::ModelPath());
  ASSERT_TRUE(weights.ok());
  auto tok = Tokenizer::Create(weights->tokenizer);
  ASSERT_TRUE(tok.ok());
  const std::vector<int32_t> ids = *(*tok)->Encode(kPrompt, false, true);
  const json by_ids = PostJson("/v1/completions", {{"prompt", ids}, {"max_tokens", 16}, {"temperature", 0}});
  EXPECT_EQ(by_ids["choices"][0]["text"], expected);

  // A stop string taken from the output cuts it just before its first occurrence.
  const size_t cut = expected.find(' ', 1);
  ASSERT_NE(cut, std::string::npos) << expected;
  const std::string stop = expected.substr(cut, 2);
  const json stopped = PostJson("/v1/completions", {{"prompt", kPrompt}, {"max_tokens", 16}, {"temperature", 0},
                                                    {"stop", stop}});
  EXPECT_EQ(stopped["choices"][0]["text"], expected.substr(0, expected.find(stop)));
  EXPECT_EQ(stopped["choices"][0]["finish_reason"], "stop");
}

TEST_F(HttpTest, StreamedChunksConcatenateToTheSameTextAndEndWithDone) {
  const json body = {{"prompt", kPrompt}, {"max_tokens", 16}, {"temperature", 0}};
  const json whole = PostJson("/v1/completions", body);
  json streamed_body = body;
  streamed_body["stream"] = true;
  streamed_body["stream_options"] = {{"include_usage", true}};
  httplib::Client c = Client();
  auto res = c.Post("/v1/completions", streamed_body.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  const SseStream sse = ParseSse(res->body);
  EXPECT_TRUE(sse.done_last);
  ASSERT_GE(sse.events.size(), 3u);
  std::string text;
  std::string finish;
  for (size_t i = 0; i + 1 < sse.events.size(); ++i) {
    const json& e = sse.events[i];
    EXPECT_EQ(e["object"], "text_completion");
    EXPECT_EQ(e["id"], sse.events[0]["id"]);
    ASSERT_EQ(e["choices"].size(), 1u);
    text += e["choices"][0]["text"].get<std::string>();
    if (!e["choices"][0]["finish_reason"].is_null()) {
      EXPECT_EQ(i + 2, sse.events.size()) << "finish_reason before the last chunk";
      finish = e["choices"][0]["finish_reason"];
    }
  }
  EXPECT_EQ(text, whole["choices"][0]["text"]);
  EXPECT_EQ(finish, whole["choices"][0]["finish_reason"]);
  // include_usage: a last chunk without choices, with the usage.
  const json& usage = sse.events.back();
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"], whole["usage"]);
}

TEST_F(HttpTest, ChatCompletionsUseTheChatTemplate) {
  const json messages = json::array({{{"role", "system"}, {"content", "You are brief."}},
                                     {{"role", "user"}, {"content", "What is the capital of France?"}}});
  v1::GenerateRequest req;
  for (const json& m : messages) {
    v1::ChatMessage* out = req.mutable_chat()->add_messages();
    out->set_role(m["role"]);
    out->set_content(m["content"]);
  }
  req.mutable_sampling()->set_max_tokens(12);
  req.mutable_sampling()->set_temperature(0.0f);
  const std::string expected = GrpcText(req);

  const json r = PostJson("/v1/chat/completions", {{"messages", messages}, {"max_tokens", 12}, {"temperature", 0}});
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(r["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(r["choices"][0]["message"]["content"], expected);

  // Streamed: a role chunk first, then content deltas that concatenate to the same text. Content given as
  // text parts is the same conversation.
  json parts_messages = messages;
  parts_messages[1]["content"] = json::array({{{"type", "text"}, {"text", "What is the capital "}},
                                              {{"type", "text"}, {"text", "of France?"}}});
  httplib::Client c = Client();
  auto res = c.Post("/v1/chat/completions",
                    json{{"messages", parts_messages}, {"max_completion_tokens", 12}, {"temperature", 0},
                         {"stream", true}}.dump(),
                    "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const SseStream sse = ParseSse(res->body);
  EXPECT_TRUE(sse.done_last);
  ASSERT_GE(sse.events.size(), 2u);
  EXPECT_EQ(sse.events[0]["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  for (const json& e : sse.events) {
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    const json& delta = e["choices"][0]["delta"];
    if (delta.contains("content")) text += delta["content"].get<std::string>();
  }
  EXPECT_EQ(text, expected);
  EXPECT_FALSE(sse.events.back()["choices"][0]["finish_reason"].is_null());
}

TEST_F(HttpTest, ModelsAndHealth) {
  httplib::Client c = Client();
  auto models = c.Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200);
  const json m = json::parse(models->body);
  EXPECT_EQ(m["object"], "list");
  ASSERT_EQ(m["data"].size(), 1u);
  EXPECT_EQ(m["data"][0]["id"], "smollm2");
  EXPECT_EQ(m["data"][0]["object"], "model");
  auto one = c.Get("/v1/models/smollm2");
  ASSERT_TRUE(one);
  EXPECT_EQ(one->status, 200);
  auto other = c.Get("/v1/models/gpt-4");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 404);
  EXPECT_EQ(json::parse(other->body)["error"]["code"], "model_not_found");

  auto health = c.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(json::parse(health->body)["status"], "ok");

  auto unknown = c.Get("/v2/nothing");
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404);
  EXPECT_EQ(json::parse(unknown->body)["error"]["code"], "unknown_route");
  auto wrong_model = Post("/v1/completions", {{"model", "gpt-4"}, {"prompt", "x"}});
  EXPECT_EQ(wrong_model.first, 404);
  EXPECT_EQ(json::parse(wrong_model.second)["error"]["code"], "model_not_found");
}

TEST_F(HttpTest, BadRequestsGet400NamingTheField) {
  const json ok_prompt = {{"prompt", "Hello"}, {"max_tokens", 2}};
  auto with = [&](json body, const json& patch) {
    body.merge_patch(patch);
    return body;
  };
  const json ok_chat = {{"messages", json::array({{{"role", "user"}, {"content", "Hi"}}})}, {"max_tokens", 2}};
  struct Case {
    const char* path;
    json body;
    std::string param;
  };
  std::vector<int32_t> long_prompt(5000, 42);
  const std::vector<Case> cases = {
      {"/v1/completions", with(ok_prompt, {{"temperature", -1}}), "temperature"},
      {"/v1/completions", with(ok_prompt, {{"temperature", "hot"}}), "temperature"},
      {"/v1/completions", with(ok_prompt, {{"top_p", 0}}), "top_p"},
      {"/v1/completions", with(ok_prompt, {{"max_tokens", 0}}), "max_tokens"},
      {"/v1/completions", with(ok_prompt, {{"max_tokens", 1000000}}), "max_tokens"},
      {"/v1/completions", with(ok_prompt, {{"n", 2}}), "n"},
      {"/v1/completions", with(ok_prompt, {{"prompt", nullptr}}), "prompt"},
      {"/v1/completions", with(ok_prompt, {{"prompt", 12}}), "prompt"},
      {"/v1/completions", with(ok_prompt, {{"prompt", ""}}), "prompt"},
      {"/v1/completions", with(ok_prompt, {{"prompt", {-1, 5}}}), "prompt"},
      {"/v1/completions", with(ok_prompt, {{"prompt", {"a", "b"}}}), "prompt"},
      {"/v1/completions", with(ok_prompt, {{"stop", 5}}), "stop"},
      {"/v1/completions", with(ok_prompt, {{"stop", {""}}}), "stop"},
      {"/v1/completions", with(ok_prompt, {{"stream", "yes"}}), "stream"},
      {"/v1/completions", with(ok_prompt, {{"seed", 1.5}}), "seed"},
      {"/v1/completions", with(ok_prompt, {{"echo", true}}), "echo"},
      {"/v1/completions", with(ok_prompt, {{"frequency_penalty", 0.5}}), "frequency_penalty"},
      {"/v1/completions", with(ok_prompt, {{"policy", "bogus"}}), "policy"},
      {"/v1/completions", with(ok_prompt, {{"policy", "window"}, {"kv_budget", 4}}), "kv_budget"},
      {"/v1/completions", with(ok_prompt, {{"policy", "window"}, {"kv_budget", 64}, {"rebuild", 2}}), "rebuild"},
      {"/v1/chat/completions", with(ok_chat, {{"messages", json::array()}}), "messages"},
      {"/v1/chat/completions", with(ok_chat, {{"messages", "hi"}}), "messages"},
      {"/v1/chat/completions", with(ok_chat, {{"messages", {{{"role", "tool"}, {"content", "x"}}}}}),
       "messages.role"},
      {"/v1/chat/completions", with(ok_chat, {{"messages", {{{"content", "x"}}}}}), "messages[0].role"},
      {"/v1/chat/completions", with(ok_chat, {{"logprobs", true}}), "logprobs"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body.dump());
    auto [status, text] = Post(c.path, c.body);
    EXPECT_EQ(status, 400) << text;
    const json e = json::parse(text, nullptr, false);
    ASSERT_TRUE(e.contains("error")) << text;
    EXPECT_EQ(e["error"]["type"], "invalid_request_error");
    EXPECT_EQ(e["error"]["param"], c.param) << text;
    EXPECT_NE(e["error"]["message"].get<std::string>().find(c.param), std::string::npos) << text;
  }
  // Not JSON at all; the prompt past the context (OpenAI's context_length_exceeded).
  httplib::Client c = Client();
  auto bad = c.Post("/v1/completions", "{not json", "application/json");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);
  EXPECT_EQ(json::parse(bad->body)["error"]["param"], "body");
  auto [status, text] = Post("/v1/completions", {{"prompt", long_prompt}, {"max_tokens", 4000}});
  EXPECT_EQ(status, 400) << text;
  EXPECT_EQ(json::parse(text)["error"]["code"], "context_length_exceeded");
}

TEST_F(HttpTest, ClientDisconnectCancelsTheStream) {
  const std::vector<MetricSample> before = Scrape();
  const double cancelled_before = Value(before, "adore_requests_total", {{"outcome", "cancelled"}});
  const double completion_before = Value(before, "adore_completion_tokens_total");
  httplib::Client c = Client();
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.set_header("Content-Type", "application/json");
  req.body = json{{"prompt", "Once upon a time"}, {"max_tokens", 2000}, {"temperature", 0}, {"stream", true}}.dump();
  int chunks = 0;
  req.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
    chunks += static_cast<int>(std::count(data, data + size, '\n'));
    return chunks < 6;  // a few chunks in, the client goes away
  };
  auto res = c.send(req);
  EXPECT_FALSE(res) << "the transfer was meant to be aborted";
  EXPECT_GE(chunks, 6);
  // The request ends as cancelled and gives its KV back long before its 2000 tokens.
  const std::vector<MetricSample> after = ScrapeUntil([&](const std::vector<MetricSample>& m) {
    return Value(m, "adore_requests_total", {{"outcome", "cancelled"}}) == cancelled_before + 1 &&
           Value(m, "adore_kv_slots_used") == 0 && Value(m, "adore_requests_running") == 0;
  });
  EXPECT_LT(Value(after, "adore_completion_tokens_total") - completion_before, 1000);
}

TEST_F(HttpTest, MetricsParseAndMove) {
  const std::vector<MetricSample> before = Scrape();
  const double ok_before = Value(before, "adore_requests_total", {{"outcome", "ok"}});
  const double prompt_before = Value(before, "adore_prompt_tokens_total");
  const double completion_before = Value(before, "adore_completion_tokens_total");
  const double released_before = Value(before, "adore_tokens_released_total");
  const double ttft_before = Value(before, "adore_time_to_first_token_seconds_count");

  // A window policy with the smallest budget releases tokens as the prompt goes past it.
  const json r = PostJson("/v1/completions", {{"prompt", "one two three four five six seven eight nine ten eleven "
                                                         "twelve thirteen fourteen fifteen sixteen seventeen"},
                                              {"max_tokens", 6}, {"temperature", 0}, {"policy", "window"},
                                              {"kv_budget", 16}});
  EXPECT_EQ(r["adore"]["policy"], "window");
  EXPECT_GT(r["adore"]["tokens_released"].get<int>(), 0);
  const int64_t prompt_tokens = r["usage"]["prompt_tokens"];
  const int64_t completion_tokens = r["usage"]["completion_tokens"];

  const std::vector<MetricSample> after = ScrapeUntil([&](const std::vector<MetricSample>& m) {
    return Value(m, "adore_requests_total", {{"outcome", "ok"}}) == ok_before + 1 &&
           Value(m, "adore_kv_slots_used") == 0;
  });
  EXPECT_EQ(Value(after, "adore_prompt_tokens_total"), prompt_before + prompt_tokens);
  EXPECT_EQ(Value(after, "adore_completion_tokens_total"), completion_before + completion_tokens);
  EXPECT_EQ(Value(after, "adore_tokens_released_total"), released_before + r["adore"]["tokens_released"].get<int>());
  EXPECT_EQ(Value(after, "adore_time_to_first_token_seconds_count"), ttft_before + 1);
  EXPECT_EQ(Value(after, "adore_kv_slots_free"), 8192);
  EXPECT_EQ(Value(after, "adore_requests_running"), 0);
  EXPECT_EQ(Value(after, "adore_queue_length"), 0);
  EXPECT_GE(Value(after, "adore_inter_token_latency_seconds_count"), completion_tokens - 1);
  EXPECT_GT(Value(after, "adore_worker_step_seconds_count", {{"rank", "0"}}), 0);
  EXPECT_GT(Value(after, "adore_steps_total"), 0);
  EXPECT_GE(Value(after, "adore_http_requests_total", {{"route", "/v1/completions"}, {"code", "200"}}), 1);
  EXPECT_EQ(Value(after, "adore_model_info", {{"model", "smollm2"}}), 1);
  ExpectHistogram(after, "adore_time_to_first_token_seconds");
  ExpectHistogram(after, "adore_inter_token_latency_seconds");
  ExpectHistogram(after, "adore_request_duration_seconds");
  ExpectHistogram(after, "adore_worker_step_seconds", {{"rank", "0"}});
}

// ---- the API's pieces without a model server ----------------------------------------------------------

TEST(HttpUnitTest, StatusMapping) {
  using http::ErrorFromStatus;
  EXPECT_EQ(ErrorFromStatus(absl::InvalidArgumentError("top_p must be in (0, 1], got 0")).param, "top_p");
  EXPECT_EQ(ErrorFromStatus(absl::InvalidArgumentError("kv_budget: must be in [16, 8192]")).param, "kv_budget");
  EXPECT_EQ(ErrorFromStatus(absl::ResourceExhaustedError("the request queue is full (4 waiting)")).http_status, 429);
  EXPECT_EQ(ErrorFromStatus(absl::ResourceExhaustedError("the request needs 9000 KV rows")).http_status, 400);
  EXPECT_EQ(ErrorFromStatus(absl::UnavailableError("down")).http_status, 503);
  EXPECT_EQ(ErrorFromStatus(absl::NotFoundError("x")).http_status, 404);
  EXPECT_EQ(ErrorFromStatus(absl::InternalError("x")).http_status, 500);
  const json e = http::ErrorJson(ErrorFromStatus(absl::InternalError("boom")));
  EXPECT_EQ(e["error"]["message"], "boom");
  EXPECT_TRUE(e["error"]["param"].is_null());
  EXPECT_TRUE(e["error"]["code"].is_null());
}

TEST(HttpUnitTest, ExpositionFormatting) {
  EXPECT_EQ(http::FormatSampleValue(3), "3");
  EXPECT_EQ(http::FormatSampleValue(0.0005), "0.0005");
  EXPECT_EQ(http::FormatSampleValue(INFINITY), "+Inf");
  EXPECT_EQ(http::EscapeLabelValue("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  Histogram h({0.1, 1});
  h.Observe(0.05);
  h.Observe(0.1);  // le is inclusive
  h.Observe(5);
  http::Exposition e;
  e.Family("x_seconds", "histogram", "help");
  e.HistogramSamples("x_seconds", {{"rank", "0"}}, h);
  const std::vector<MetricSample> m = ParseExposition(e.text());
  EXPECT_EQ(Value(m, "x_seconds_bucket", {{"rank", "0"}, {"le", "0.1"}}), 2);
  EXPECT_EQ(Value(m, "x_seconds_bucket", {{"rank", "0"}, {"le", "1"}}), 2);
  EXPECT_EQ(Value(m, "x_seconds_bucket", {{"rank", "0"}, {"le", "+Inf"}}), 3);
  EXPECT_EQ(Value(m, "x_seconds_count", {{"rank", "0"}}), 3);
  EXPECT_DOUBLE_EQ(Value(m, "x_seconds_sum", {{"rank", "0"}}), 5.15);
}

// A step runner that holds every step until released, answering token 100 for each sequence.
class GatedRunner final : public StepRunner {
 public:
  absl::StatusOr<WorkerStepResult> Step(const WorkerStep& step) override {
    std::unique_lock<std::mutex> lock(mu_);
    ++entered_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_; });
    WorkerStepResult r;
    for (const SequenceStart& s : step.start) r.sequences.push_back({.id = s.id, .token = 100});
    for (const SequenceDecode& d : step.decode) r.sequences.push_back({.id = d.id, .token = 100});
    return r;
  }
  void WaitEntered(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return entered_ >= n; });
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int entered_ = 0;
  bool open_ = false;
};

TEST(HttpServerTest, QueueFullIs429AndNotServingIs503) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  auto weights = LoadModelWeights(testing::ModelPath());
  ASSERT_TRUE(weights.ok());
  auto tok = Tokenizer::Create(weights->tokenizer);
  ASSERT_TRUE(tok.ok());
  GatedRunner runner;
  Scheduler scheduler(runner, **tok, {.max_batch = 1, .kv_rows = 1024, .max_context = weights->config.max_context,
                                      .max_queue = 1});
  auto server = http::HttpServer::Start({.port = 0, .model_id = "m", .threads = 8, .kv_rows = 1024}, scheduler, **tok,
                                        weights->config, ServiceDefaults{});
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  auto post = [port] {
    httplib::Client c("127.0.0.1", port);
    auto res = c.Post("/v1/completions", R"({"prompt": "hi", "max_tokens": 1})", "application/json");
    return res ? res->status : 0;
  };
  int first = 0, second = 0;
  std::thread a([&] { first = post(); });
  runner.WaitEntered(1);  // the first request runs (held in its step)
  std::thread b([&] { second = post(); });
  while (scheduler.stats().queued < 1) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  // No ASSERTs until the gate is open: the threads and the scheduler's step must be able to end.
  httplib::Client c("127.0.0.1", port);
  auto full = c.Post("/v1/completions", R"({"prompt": "hi", "max_tokens": 1})", "application/json");
  EXPECT_TRUE(full && full->status == 429) << (full ? full->body : "no response");
  if (full) EXPECT_EQ(json::parse(full->body, nullptr, false)["error"]["code"], "queue_full");

  (*server)->SetServing(false);
  auto health = c.Get("/health");
  EXPECT_TRUE(health && health->status == 503);
  auto refused = c.Post("/v1/completions", R"({"prompt": "hi", "max_tokens": 1})", "application/json");
  EXPECT_TRUE(refused && refused->status == 503);
  (*server)->SetServing(true);

  runner.Open();
  a.join();
  b.join();
  EXPECT_EQ(first, 200);
  EXPECT_EQ(second, 200);
  const SchedulerStats st = scheduler.stats();
  EXPECT_EQ(st.rejected, 1);
  EXPECT_EQ(st.completed, 2);
  (*server)->Stop();
}

}  // namespace
}  // namespace adore
