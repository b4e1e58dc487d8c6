// The scheduler over the CPU engine: continuous batching of concurrent streaming requests gives each the
// output it gets alone, cancellation frees its KV, bad requests get errors naming the field, stop
// strings cut the output.
#include "coordinator/scheduler.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "common/model_weights.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "worker/cpu_engine.h"
#include "worker/generator.h"

namespace adore {
namespace {

// What one request's stream delivered.
struct Collected {
  std::mutex mu;
  std::string text;
  std::vector<int32_t> tokens;
  int finals = 0;
  StreamEvent final_event;
  bool done = false;
  std::condition_variable cv;
  void Add(const StreamEvent& e) {
    std::lock_guard<std::mutex> lock(mu);
    text += e.text;
    tokens.insert(tokens.end(), e.tokens.begin(), e.tokens.end());
    if (e.final) {
      ++finals;
      final_event = e;
      done = true;
      cv.notify_all();
    }
  }
  bool Wait(double seconds) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return done; });
  }
};

class SchedulerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!testing::ModelAvailable()) return;
    auto weights = LoadModelWeights(testing::ModelPath());
    ASSERT_TRUE(weights.ok()) << weights.status();
    auto tok = Tokenizer::Create(weights->tokenizer);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
    auto engine = CpuEngine::Create(*std::move(weights), {.kv_rows = 4096});
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = engine->release();
  }
  static void TearDownTestSuite() {
    delete engine_;
    delete tokenizer_;
  }
  void SetUp() override {
    if (engine_ == nullptr) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  }
  SchedulerOptions Options(int64_t max_batch) const {
    return {.max_batch = max_batch, .kv_rows = 4096, .max_context = engine_->config().max_context};
  }
  std::vector<int32_t> Encode(const std::string& s) { return *tokenizer_->Encode(s, false, false); }
  static CpuEngine* engine_;
  static Tokenizer* tokenizer_;
};
CpuEngine* SchedulerTest::engine_ = nullptr;
Tokenizer* SchedulerTest::tokenizer_ = nullptr;

TEST_F(SchedulerTest, ConcurrentStreamsMatchOneAtATimeRuns) {
  const char* kTexts[] = {"The capital of France is", "Once upon a time, in a small village,",
                          "def fibonacci(n):", "Emma Woodhouse, handsome, clever, and rich,",
                          "The three primary colors are", "In 1492, Columbus", "Water boils at",
                          "A haiku about autumn:"};
  constexpr int kRequests = 32;
  std::vector<GenerateOptions> reqs(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    reqs[i].prompt = Encode(std::string(kTexts[i % 8]) + std::string(i / 8, ' ') + (i % 3 ? " Indeed," : ""));
    reqs[i].max_tokens = 4 + (i * 7) % 21;
  }
  // References: each request alone.
  std::vector<std::vector<int32_t>> expected(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    GenerationRequest g;
    g.prompt = reqs[i].prompt;
    g.max_tokens = reqs[i].max_tokens;
    auto out = GenerateBatch(*engine_, std::span<const GenerationRequest>(&g, 1));
    ASSERT_TRUE(out.ok()) << out.status();
    expected[i] = (*out)[0].tokens;
  }
  LocalStepRunner runner(*engine_);
  std::vector<Collected> got(kRequests);
  {
    Scheduler scheduler(runner, *tokenizer_, Options(/*max_batch=*/8));  // 8 at a time: requests join as others end
    std::vector<std::thread> clients;
    for (int c = 0; c < 4; ++c) {
      clients.emplace_back([&, c] {
        for (int i = c; i < kRequests; i += 4) {
          auto id = scheduler.Submit(reqs[i], [&, i](const StreamEvent& e) { got[i].Add(e); });
          EXPECT_TRUE(id.ok()) << id.status();
        }
      });
    }
    for (auto& t : clients) t.join();
    for (int i = 0; i < kRequests; ++i) ASSERT_TRUE(got[i].Wait(300)) << "request " << i << " never finished";
    // The last final event is sent just before the scheduler books the request as done.
    for (int i = 0; i < 500 && scheduler.stats().completed < kRequests; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    const SchedulerStats st = scheduler.stats();
    EXPECT_EQ(st.completed, kRequests);
    EXPECT_EQ(st.kv_rows_reserved, 0);
    EXPECT_GT(st.steps, 0);
  }
  EXPECT_EQ(runner.executor().num_sequences(), 0);
  for (int i = 0; i < kRequests; ++i) {
    EXPECT_EQ(got[i].finals, 1) << "request " << i;
    EXPECT_TRUE(got[i].final_event.status.ok()) << got[i].final_event.status;
    EXPECT_EQ(got[i].final_event.finish_reason, "length");
    EXPECT_EQ(got[i].tokens, expected[i]) << "request " << i;
    EXPECT_EQ(got[i].final_event.completion_tokens, static_cast<int64_t>(expected[i].size()));
    EXPECT_EQ(got[i].text, *tokenizer_->Decode(expected[i], true)) << "request " << i;
  }
}

TEST_F(SchedulerTest, CancelMidStreamEndsTheRequestAndFreesItsKv) {
  LocalStepRunner runner(*engine_);
  Scheduler scheduler(runner, *tokenizer_, Options(8));
  Collected got;
  std::atomic<int> deltas{0};
  GenerateOptions r;
  r.prompt = Encode("Tell me a long story about a dragon.");
  r.max_tokens = 400;
  auto id = scheduler.Submit(r, [&](const StreamEvent& e) {
    if (!e.final) ++deltas;
    got.Add(e);
  });
  ASSERT_TRUE(id.ok()) << id.status();
  while (deltas < 3) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  scheduler.Cancel(*id);
  ASSERT_TRUE(got.Wait(60));
  EXPECT_EQ(got.final_event.status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(got.final_event.finish_reason, "cancelled");
  for (int i = 0; i < 200 && (scheduler.stats().kv_rows_reserved != 0 || runner.executor().num_sequences() != 0); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(scheduler.stats().kv_rows_reserved, 0);
  EXPECT_EQ(runner.executor().num_sequences(), 0);
  EXPECT_EQ(scheduler.stats().cancelled, 1);
}

TEST_F(SchedulerTest, BadRequestsGetErrorsNamingTheField) {
  LocalStepRunner runner(*engine_);
  Scheduler scheduler(runner, *tokenizer_, Options(8));
  auto submit = [&](GenerateOptions r) { return scheduler.Submit(std::move(r), [](const StreamEvent&) {}).status(); };
  GenerateOptions ok;
  ok.prompt = Encode("Hello");
  struct Case {
    const char* name;
    std::function<void(GenerateOptions&)> edit;
    absl::StatusCode code;
    const char* field;
  };
  const Case cases[] = {
      {"empty prompt", [](GenerateOptions& r) { r.prompt.clear(); }, absl::StatusCode::kInvalidArgument, "prompt"},
      {"max_tokens 0", [](GenerateOptions& r) { r.max_tokens = 0; }, absl::StatusCode::kInvalidArgument, "max_tokens"},
      {"temperature", [](GenerateOptions& r) { r.sampling.temperature = -1; }, absl::StatusCode::kInvalidArgument,
       "temperature"},
      {"top_p", [](GenerateOptions& r) { r.sampling.top_p = 1.5f; }, absl::StatusCode::kInvalidArgument, "top_p"},
      {"kv_budget", [](GenerateOptions& r) { r.release = {.kind = PolicyKind::kWindow, .kv_budget = 8}; },
       absl::StatusCode::kInvalidArgument, "kv_budget"},
      {"rebuild", [](GenerateOptions& r) { r.release = {.kind = PolicyKind::kWindow, .kv_budget = 64, .rebuild = 4}; },
       absl::StatusCode::kInvalidArgument, "rebuild"},
      {"context", [](GenerateOptions& r) { r.max_tokens = 4096; r.prompt.assign(8000, 42); },
       absl::StatusCode::kOutOfRange, "context"},
      {"stop", [](GenerateOptions& r) { r.stop = {""}; }, absl::StatusCode::kInvalidArgument, "stop"},
  };
  for (const Case& c : cases) {
    GenerateOptions r = ok;
    c.edit(r);
    const absl::Status st = submit(r);
    EXPECT_EQ(st.code(), c.code) << c.name << ": " << st;
    EXPECT_NE(std::string(st.message()).find(c.field), std::string::npos) << c.name << ": " << st;
  }
  EXPECT_EQ(scheduler.stats().submitted, 0);
}

TEST_F(SchedulerTest, StopStringEndsTheOutputBeforeIt) {
  GenerationRequest g;
  g.prompt = Encode("Count: one, two, three, four,");
  g.max_tokens = 24;
  auto ref = GenerateBatch(*engine_, std::span<const GenerationRequest>(&g, 1));
  ASSERT_TRUE(ref.ok());
  const std::string full = *tokenizer_->Decode((*ref)[0].tokens, true);
  ASSERT_GT(full.size(), 6u);
  const std::string stop = full.substr(full.size() / 2, 3);  // some text from the middle of the output
  LocalStepRunner runner(*engine_);
  Scheduler scheduler(runner, *tokenizer_, Options(8));
  Collected got;
  GenerateOptions r;
  r.prompt = g.prompt;
  r.max_tokens = 24;
  r.stop = {stop};
  ASSERT_TRUE(scheduler.Submit(r, [&](const StreamEvent& e) { got.Add(e); }).ok());
  ASSERT_TRUE(got.Wait(120));
  EXPECT_EQ(got.final_event.finish_reason, "stop");
  EXPECT_EQ(got.text, full.substr(0, full.find(stop)));
}

}  // namespace
}  // namespace adore
