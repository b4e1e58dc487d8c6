// The scheduler over the CPU engine: continuous batching of concurrent streaming requests gives each the
// output it gets alone, cancellation frees its KV, bad requests get errors naming the field, stop
// strings cut the output.
#include "coordinator/scheduler.h"

#include <atomic>
#include <map>
#include <chrono>
#include <mutex>
#include <thread>

#include "common/model_weights.h"
#include "common/stream_decoder.h"
#include "common/synthetic_model.h"
#include "common/unicode_util.h"
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
  std::vector<StreamEvent> events;  // every event, the final one last
  int finals = 0;
  StreamEvent final_event;
  bool done = false;
  std::condition_variable cv;
  void Add(const StreamEvent& e) {
    std::lock_guard<std::mutex> lock(mu);
    text += e.text;
    tokens.insert(tokens.end(), e.tokens.begin(), e.tokens.end());
    events.push_back(e);
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

// The same tests over a runner that runs one step at a time and over a pipelined one (step n + 1 runs
// while the scheduler streams step n's tokens).
class SchedulerRunnerTest : public SchedulerTest, public ::testing::WithParamInterface<bool> {};
INSTANTIATE_TEST_SUITE_P(Runners, SchedulerRunnerTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Pipelined" : "OneStepAtATime"; });

TEST_P(SchedulerRunnerTest, ConcurrentStreamsMatchOneAtATimeRuns) {
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
  LocalStepRunner runner(*engine_, {}, /*pipelined=*/GetParam());
  std::vector<Collected> got(kRequests);
  std::vector<std::atomic<int64_t>> completed_at_final(kRequests);
  {
    Scheduler scheduler(runner, *tokenizer_, Options(/*max_batch=*/8));  // 8 at a time: requests join as others end
    std::vector<std::thread> clients;
    for (int c = 0; c < 4; ++c) {
      clients.emplace_back([&, c] {
        for (int i = c; i < kRequests; i += 4) {
          auto id = scheduler.Submit(reqs[i], [&, i](const StreamEvent& e) {
            // A stream's end is in the stats by the time its client sees it.
            if (e.final) completed_at_final[i] = scheduler.stats().completed;
            got[i].Add(e);
          });
          EXPECT_TRUE(id.ok()) << id.status();
        }
      });
    }
    for (auto& t : clients) t.join();
    for (int i = 0; i < kRequests; ++i) ASSERT_TRUE(got[i].Wait(300)) << "request " << i << " never finished";
    const SchedulerStats st = scheduler.stats();
    EXPECT_EQ(st.completed, kRequests);
    EXPECT_EQ(st.kv_rows_reserved, 0);
    EXPECT_GT(st.steps, 0);
  }
  EXPECT_EQ(runner.executor().num_sequences(), 0);
  for (int i = 0; i < kRequests; ++i) {
    EXPECT_EQ(got[i].finals, 1) << "request " << i;
    EXPECT_GE(completed_at_final[i], 1) << "request " << i << " ended before the stats counted it";
    EXPECT_TRUE(got[i].final_event.status.ok()) << got[i].final_event.status;
    EXPECT_EQ(got[i].final_event.finish_reason, "length");
    EXPECT_EQ(got[i].tokens, expected[i]) << "request " << i;
    EXPECT_EQ(got[i].final_event.completion_tokens, static_cast<int64_t>(expected[i].size()));
    EXPECT_EQ(got[i].text, *tokenizer_->Decode(expected[i], true)) << "request " << i;
  }
}

TEST_P(SchedulerRunnerTest, CancelMidStreamEndsTheRequestAndFreesItsKv) {
  LocalStepRunner runner(*engine_, {}, /*pipelined=*/GetParam());
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
  // Mid-stream the sequence holds its prompt and the tokens so far (what the runner reports), far less
  // than admission reserved for it (prompt + 400).
  const SchedulerStats during = scheduler.stats();
  EXPECT_GT(during.kv_slots_used, static_cast<int64_t>(r.prompt.size()));
  EXPECT_LT(during.kv_slots_used, during.kv_rows_reserved);
  EXPECT_EQ(during.kv_rows_reserved, static_cast<int64_t>(r.prompt.size()) + 400);
  scheduler.Cancel(*id);
  ASSERT_TRUE(got.Wait(60));
  EXPECT_EQ(got.final_event.status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(got.final_event.finish_reason, "cancelled");
  // Polls the scheduler's stats only: the executor belongs to the scheduler's thread. kv_slots_used is 0 once
  // the step that freed the slots has ended, and stats() (under the scheduler's lock) orders that step before
  // the executor is read below.
  for (int i = 0; i < 200 && (scheduler.stats().kv_rows_reserved != 0 || scheduler.stats().kv_slots_used != 0); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(scheduler.stats().kv_rows_reserved, 0);
  EXPECT_EQ(scheduler.stats().kv_slots_used, 0);  // the runner freed the slots (the step after the cancel)
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

// A runner that plays scripted tokens: each started sequence samples script[0], then script[1], ... one per
// step (the script of the i-th started sequence), after `delay_ms` per step.
class ScriptedRunner final : public StepRunner {
 public:
  ScriptedRunner(std::vector<std::vector<int32_t>> scripts, int delay_ms = 0)
      : scripts_(std::move(scripts)), delay_ms_(delay_ms) {}
  absl::StatusOr<WorkerStepResult> Step(const WorkerStep& step) override {
    if (delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
    WorkerStepResult out;
    for (const SequenceStart& s : step.start) {
      next_[s.id] = {started_++, 0};
      out.sequences.push_back(Next(s.id));
    }
    for (const SequenceDecode& d : step.decode) out.sequences.push_back(Next(d.id));
    return out;
  }

 private:
  SequenceStepResult Next(uint64_t id) {
    auto& [script, pos] = next_[id];
    SequenceStepResult r;
    r.id = id;
    const std::vector<int32_t>& tokens = scripts_.at(script % scripts_.size());
    r.token = pos < tokens.size() ? tokens[pos++] : tokens.back();
    return r;
  }
  std::vector<std::vector<int32_t>> scripts_;
  int delay_ms_;
  size_t started_ = 0;
  std::map<uint64_t, std::pair<size_t, size_t>> next_;  // id -> (script, position)
};

// SmolLM2 tokens by their bytes.
constexpr int32_t kEndOfText = 0, kA = 81, kB = 82, kC = 83, kD = 84, kX = 104, kAb = 369, kCd = 13133,
                  kParen = 24, kByteCE = 153, kByteA9 = 119, kSpaceCE = 5664, kSpaceA = 253;

// Every delta (the final one included) is valid UTF-8 and carries at least one token; the deltas add up to
// the tokens and to their bytes decoded with replacement (U+FFFD for each invalid part, the way Hugging
// Face tokenizers and Python's errors="replace" decode).
void ExpectWellFormed(const Collected& got, const Tokenizer& tok, const std::string& what) {
  std::string bytes;
  for (int32_t t : got.tokens) bytes += *tok.TokenBytes(t);
  for (size_t i = 0; i < got.events.size(); ++i) {
    const StreamEvent& e = got.events[i];
    EXPECT_TRUE(IsValidUtf8(e.text)) << what << ": event " << i;
    if (!e.final || !e.text.empty()) EXPECT_FALSE(e.tokens.empty()) << what << ": event " << i << " has no tokens";
  }
  EXPECT_TRUE(IsValidUtf8(got.text)) << what;
  if (got.final_event.finish_reason != "stop" || got.final_event.matched_stop.empty()) {
    EXPECT_EQ(got.text, Utf8Lossy(bytes)) << what;
  }
}

class ScriptedSchedulerTest : public SchedulerTest {
 protected:
  // Runs one request over `script`; returns what its stream delivered.
  void Run(const std::vector<int32_t>& script, GenerateOptions r, Collected* got) {
    ScriptedRunner runner({script});
    Scheduler scheduler(runner, *tokenizer_, Options(8));
    if (r.prompt.empty()) r.prompt = {kA};
    if (r.stop_ids.empty()) r.stop_ids = {kEndOfText};
    ASSERT_TRUE(scheduler.Submit(r, [got](const StreamEvent& e) { got->Add(e); }).ok());
    ASSERT_TRUE(got->Wait(30));
  }
};

// The load test's case: bytes that can never make a character (a stray continuation byte, a lead byte
// followed by ASCII, a lead byte left at the end) arrive as U+FFFD, never as invalid UTF-8.
TEST_F(ScriptedSchedulerTest, InvalidBytesBecomeReplacementCharacters) {
  GenerateOptions r;
  r.max_tokens = 6;
  Collected got;
  Run({kByteA9, kParen, kByteCE, kByteA9, kByteCE, kParen, kByteCE}, r, &got);
  EXPECT_EQ(got.final_event.finish_reason, "length");
  EXPECT_EQ(got.text, "\xEF\xBF\xBD(\xCE\xA9\xEF\xBF\xBD(");  // python3: b"\xa9(\xce\xa9\xce(".decode(errors="replace")
  ExpectWellFormed(got, *tokenizer_, "length");

  // A lead byte still incomplete when generation ends is flushed as U+FFFD with its token.
  Collected eos;
  r.max_tokens = 10;
  Run({kParen, kByteCE, kEndOfText}, r, &eos);
  EXPECT_EQ(eos.final_event.finish_reason, "stop");
  EXPECT_EQ(eos.text, "(\xEF\xBF\xBD");
  EXPECT_EQ(eos.tokens, (std::vector<int32_t>{kParen, kByteCE}));
  ExpectWellFormed(eos, *tokenizer_, "end token");
}

// Text held back because it might begin a stop string keeps a token with it, so the delta that releases it
// at the end is not empty of tokens.
TEST_F(ScriptedSchedulerTest, HeldBackTextComesWithItsToken) {
  GenerateOptions r;
  r.max_tokens = 10;
  r.stop = {"ab"};
  Collected got;
  Run({kX, kSpaceA, kEndOfText}, r, &got);  // " a": the space goes out, the "a" waits
  EXPECT_EQ(got.final_event.finish_reason, "stop");
  EXPECT_EQ(got.text, "x a");
  EXPECT_EQ(got.tokens, (std::vector<int32_t>{kX, kSpaceA}));
  ExpectWellFormed(got, *tokenizer_, "held");
}

// Two stop strings completed by the same token: the output ends before the earlier occurrence, whatever
// the list order, and matched_stop names that one. Bytes after the stop string are dropped, also an
// incomplete character (no U+FFFD for it).
TEST_F(ScriptedSchedulerTest, EarliestStopStringWinsAndIsReported) {
  GenerateOptions r;
  r.max_tokens = 10;
  r.stop = {"cd", "bc"};
  Collected got;
  Run({kAb, kCd, kA}, r, &got);
  EXPECT_EQ(got.final_event.finish_reason, "stop");
  EXPECT_EQ(got.text, "a");
  EXPECT_EQ(got.final_event.matched_stop, "bc");
  EXPECT_EQ(got.tokens, (std::vector<int32_t>{kAb, kCd}));

  Collected cut;
  r.stop = {"x "};
  Run({kX, kSpaceCE, kA}, r, &cut);
  EXPECT_EQ(cut.final_event.finish_reason, "stop");
  EXPECT_EQ(cut.final_event.matched_stop, "x ");
  EXPECT_EQ(cut.text, "");

  Collected by_token;  // ended by an end token
  r.stop = {"zz"};
  Run({kB, kEndOfText}, r, &by_token);
  EXPECT_EQ(by_token.final_event.finish_reason, "stop");
  EXPECT_EQ(by_token.final_event.matched_stop, "");
  EXPECT_EQ(by_token.text, "b");
}

// Timing: ttft_ms is 0 when the first sampled token is an end token (nothing was generated); queue_ms is the
// wait for a place in the batch (max_batch 1: the second request waits for the first).
TEST_F(ScriptedSchedulerTest, TimingReportsTheQueueAndNoTtftWithoutTokens) {
  {
    GenerateOptions r;
    Collected got;
    Run({kEndOfText}, r, &got);
    EXPECT_EQ(got.final_event.completion_tokens, 0);
    EXPECT_EQ(got.final_event.ttft_ms, 0.0);
    EXPECT_GT(got.final_event.total_ms, 0.0);
  }
  ScriptedRunner runner({{kA, kB, kC, kD, kA, kB}}, /*delay_ms=*/20);
  Scheduler scheduler(runner, *tokenizer_, Options(/*max_batch=*/1));
  Collected first, second;
  GenerateOptions r;
  r.prompt = {kA};
  r.max_tokens = 6;
  ASSERT_TRUE(scheduler.Submit(r, [&](const StreamEvent& e) { first.Add(e); }).ok());
  ASSERT_TRUE(scheduler.Submit(r, [&](const StreamEvent& e) { second.Add(e); }).ok());
  ASSERT_TRUE(first.Wait(30));
  ASSERT_TRUE(second.Wait(30));
  EXPECT_LT(first.final_event.queue_ms, 60.0);
  EXPECT_GE(second.final_event.queue_ms, 100.0);  // the first took 6 steps of 20 ms
  EXPECT_LE(second.final_event.queue_ms, second.final_event.ttft_ms);
}

// max_tokens is bounded by the context (prompt + max_tokens), not by a smaller fixed limit.
TEST_F(ScriptedSchedulerTest, MaxTokensUpToTheContextIsAccepted) {
  ScriptedRunner runner(std::vector<std::vector<int32_t>>{{kA}});
  Scheduler scheduler(runner, *tokenizer_, Options(8));
  GenerateOptions r;
  r.prompt = {kA};
  r.max_tokens = static_cast<int32_t>(engine_->config().max_context) - 1;
  r.release = {.kind = PolicyKind::kWindow, .kv_budget = 64};
  Collected got;
  auto id = scheduler.Submit(r, [&](const StreamEvent& e) { got.Add(e); });
  ASSERT_TRUE(id.ok()) << id.status();
  scheduler.Cancel(*id);
  ASSERT_TRUE(got.Wait(30));
  r.max_tokens += 1;
  EXPECT_EQ(scheduler.Submit(r, [](const StreamEvent&) {}).status().code(), absl::StatusCode::kOutOfRange);
}

// Found by fuzz/request_fuzzer (fuzz/regressions/request/cancel_races_the_loop): the loop walked the list of
// cancelled ids while it released the lock to finish each cancelled request, so a Cancel() on another thread
// could reallocate the list under it (heap-use-after-free under ASan), and an id appended meanwhile was
// cleared unseen (a lost cancellation: the request ran on). Threads cancel many queued requests at once while
// the loop is finishing earlier ones: every request ends exactly once, CANCELLED. No model needed.
TEST(SchedulerCancelTest, ConcurrentCancelsAreNeitherLostNorRacy) {
  auto tokenizer = Tokenizer::Create(SyntheticTokenizer(300));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  constexpr int kRequests = 400, kThreads = 4;
  std::vector<Collected> got(kRequests);  // outlives the scheduler, which ends what is left on destruction
  ScriptedRunner runner({{'a'}}, /*delay_ms=*/1);  // never ends a sequence: only cancellation does
  Scheduler scheduler(runner, **tokenizer, {.max_batch = 2, .kv_rows = 1 << 20, .max_context = 8192});
  std::vector<uint64_t> ids;
  for (int i = 0; i < kRequests; ++i) {
    GenerateOptions r;
    r.prompt = {'b'};
    r.max_tokens = 8000;
    // A slow final callback (it runs on the loop's thread, outside the lock) holds the loop inside its walk
    // over the cancelled ids while the other threads go on cancelling.
    auto id = scheduler.Submit(r, [&got, i](const StreamEvent& e) {
      got[i].Add(e);
      if (e.final) std::this_thread::sleep_for(std::chrono::microseconds(100));
    });
    ASSERT_TRUE(id.ok()) << id.status();
    ids.push_back(*id);
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < kRequests; i += kThreads) {
        scheduler.Cancel(ids[i]);
        std::this_thread::sleep_for(std::chrono::microseconds(50));  // spread over the loop's walks
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(got[i].Wait(10)) << "request " << i << " never ended (its cancellation was lost)";
    std::lock_guard<std::mutex> lock(got[i].mu);
    EXPECT_EQ(got[i].finals, 1) << "request " << i;
    EXPECT_EQ(got[i].final_event.status.code(), absl::StatusCode::kCancelled) << "request " << i;
  }
  EXPECT_EQ(scheduler.stats().cancelled, kRequests);
}

}  // namespace
}  // namespace adore
