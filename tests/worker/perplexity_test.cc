// Sliding-window perplexity: the window plan and log-softmax on their own, and the whole path (our tokenizer
// + CPU engine) against transformers' perplexity of the same text (golden data from tools/hf_ppl.py).
#include "worker/perplexity.h"

#include "worker/cpu_engine.h"
#include "worker/generator.h"

#include <cmath>
#include <fstream>
#include <vector>

#include "common/model_weights.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/eval_text_util.h"
#include "tests/test_util.h"

namespace adore {
namespace {

TEST(PerplexityWindowsTest, MatchesHuggingFaceLoop) {
  // HF loop for 10 tokens, context 4, stride 2: begins 0, 2, 4, 6; the window reaching the end stops it.
  const std::vector<PerplexityWindow> w = PlanPerplexityWindows(10, {.context = 4, .stride = 2});
  ASSERT_EQ(w.size(), 4u);
  const int64_t expected[4][3] = {{0, 1, 4}, {2, 4, 6}, {4, 6, 8}, {6, 8, 10}};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(w[i].begin, expected[i][0]) << i;
    EXPECT_EQ(w[i].score_begin, expected[i][1]) << i;
    EXPECT_EQ(w[i].end, expected[i][2]) << i;
  }
}

TEST(PerplexityWindowsTest, ScoresEveryTokenButTheFirstOnceWhenStrideBelowContext) {
  for (int64_t n : {2, 3, 7, 100, 1500}) {
    for (auto [context, stride] : {std::pair<int64_t, int64_t>{2, 1}, {5, 3}, {512, 256}, {64, 63}}) {
      std::vector<int> times(n, 0);
      for (const PerplexityWindow& w : PlanPerplexityWindows(n, {.context = context, .stride = stride})) {
        ASSERT_LT(w.begin, w.score_begin);
        ASSERT_LE(w.end - w.begin, context);
        for (int64_t t = w.score_begin; t < w.end; ++t) ++times[t];
      }
      EXPECT_EQ(times[0], 0);
      for (int64_t t = 1; t < n; ++t) ASSERT_EQ(times[t], 1) << "n " << n << " context " << context << " t " << t;
    }
  }
}

TEST(PerplexityWindowsTest, DisjointWindowsSkipEachWindowsFirstToken) {
  const std::vector<PerplexityWindow> w = PlanPerplexityWindows(9, {.context = 4, .stride = 4});
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[1].begin, 4);
  EXPECT_EQ(w[1].score_begin, 5);
  EXPECT_EQ(w[2].score_begin, w[2].end);  // the last window [8, 9) holds one token: nothing to score
  EXPECT_TRUE(PlanPerplexityWindows(1, {.context = 4, .stride = 2}).empty());
}

TEST(PerplexityOptionsTest, RejectsBadContextAndStride) {
  EXPECT_TRUE(PerplexityOptions({.context = 2, .stride = 2}).Validate().ok());
  EXPECT_FALSE(PerplexityOptions({.context = 1, .stride = 1}).Validate().ok());
  EXPECT_FALSE(PerplexityOptions({.context = 8, .stride = 0}).Validate().ok());
  EXPECT_FALSE(PerplexityOptions({.context = 8, .stride = 9}).Validate().ok());
}

TEST(TokenNllTest, IsNegativeLogSoftmaxAndStableForLargeLogits) {
  const std::vector<float> uniform(1000, 3.0f);
  EXPECT_NEAR(TokenNll(uniform, 17), std::log(1000.0), 1e-12);
  // Logits that overflow exp() in float without the max shift.
  const std::vector<float> big = {1000.0f, 999.0f, 990.0f};
  const double lse = 1000.0 + std::log(1.0 + std::exp(-1.0) + std::exp(-10.0));
  EXPECT_NEAR(TokenNll(big, 1), lse - 999.0, 1e-9);
  EXPECT_NEAR(TokenNll(big, 0), lse - 1000.0, 1e-9);
}

// The same recipe and tokenization as tools/hf_ppl.py on the first 1500 tokens of the excerpt, context 512,
// stride 256 (5 windows; ~10-30 s on 2 cores).
TEST(PerplexityTest, MatchesTransformersOnEmmaExcerpt) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  constexpr int64_t kContext = 512, kStride = 256, kMaxTokens = 1500;
  std::ifstream golden_in(testing::DataPath("eval/hf_ppl.json"));
  ASSERT_TRUE(golden_in) << "missing golden data: run tools/hf_ppl.py (see tests/data/eval/hf_ppl.json)";
  const nlohmann::json golden = nlohmann::json::parse(golden_in);
  const nlohmann::json* run = nullptr;
  for (const auto& r : golden["runs"]) {
    if (r["context"] == kContext && r["stride"] == kStride && r["max_tokens"] == kMaxTokens) run = &r;
  }
  ASSERT_NE(run, nullptr) << "golden has no run for context 512, stride 256, max_tokens 1500";

  auto weights = LoadModelWeights(testing::ModelPath());
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto ids = testing::EmmaExcerptTokens(*weights);
  ASSERT_TRUE(ids.ok()) << ids.status();
  // Perplexities are only comparable over the same token stream.
  ASSERT_EQ(static_cast<int64_t>(ids->size()), golden["text_tokens"].get<int64_t>())
      << "tokenization differs from HF";
  ids->resize(kMaxTokens);

  auto engine = CpuEngine::Create(*std::move(weights), CpuEngineOptions{.kv_rows = kContext});
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto result = ComputePerplexity(**engine, *ids, {.context = kContext, .stride = kStride});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->num_tokens, (*run)["num_tokens"].get<int64_t>());
  EXPECT_EQ(result->num_scored, (*run)["tokens_scored"].get<int64_t>());
  EXPECT_EQ(result->num_windows, (*run)["windows"].get<int64_t>());
  const double hf_ppl = (*run)["ppl"].get<double>();
  EXPECT_LE(std::fabs(result->ppl / hf_ppl - 1.0), 0.005) << "ours " << result->ppl << ", transformers " << hf_ppl;
  EXPECT_EQ((*engine)->pool().num_free(), kContext) << "every window's rows are released";
  std::printf("ppl ours %.6f, transformers %.6f (ratio - 1 = %.2e), %ld tokens scored in %.1f s\n", result->ppl,
              hf_ppl, result->ppl / hf_ppl - 1.0, static_cast<long>(result->num_scored), result->seconds);
}

}  // namespace
}  // namespace adore

namespace adore {
namespace {

// Streaming (token-by-token) perplexity under `full` equals one window over the same tokens; a releasing
// policy with a budget above the stream length changes nothing either.
TEST(StreamingPerplexityTest, FullAndUnboundedPoliciesEqualOneWindow) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  auto weights = LoadModelWeights(testing::ModelPath());
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto engine = CpuEngine::Create(*std::move(weights), {.kv_rows = 128});
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::vector<int32_t> ids;
  for (int i = 0; i < 60; ++i) ids.push_back(200 + (i * 131) % 9000);
  auto window = ComputePerplexity(**engine, ids, {.context = 60, .stride = 60});
  ASSERT_TRUE(window.ok()) << window.status();
  auto full = ComputeStreamingPerplexity(**engine, ids, ReleaseConfig{});
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->num_scored, window->num_scored);
  EXPECT_NEAR(full->ppl / window->ppl, 1.0, 1e-4);
  auto h2o = ComputeStreamingPerplexity(**engine, ids, {.kind = PolicyKind::kHeavyHitter, .kv_budget = 64});
  ASSERT_TRUE(h2o.ok()) << h2o.status();
  EXPECT_NEAR(h2o->ppl / window->ppl, 1.0, 1e-4);
  // A budget below the stream length releases tokens: perplexity changes, and the pool stays bounded.
  auto tight = ComputeStreamingPerplexity(**engine, ids, {.kind = PolicyKind::kWindow, .kv_budget = 16});
  ASSERT_TRUE(tight.ok()) << tight.status();
  EXPECT_NE(tight->ppl, window->ppl);
  EXPECT_EQ((*engine)->pool().num_free(), (*engine)->pool().num_rows());
}

// Several streams decoded in one batch, each with its own policy, score exactly what each scores alone.
TEST(StreamingPerplexityTest, BatchedStreamsEqualSeparateRuns) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  auto weights = LoadModelWeights(testing::ModelPath());
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto engine = CpuEngine::Create(*std::move(weights), {.kv_rows = 256});
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::vector<int32_t> a, b;
  for (int i = 0; i < 50; ++i) a.push_back(200 + (i * 131) % 9000);
  for (int i = 0; i < 37; ++i) b.push_back(700 + (i * 71) % 5000);
  const ReleaseConfig config{.kind = PolicyKind::kHeavyHitter, .kv_budget = 20};
  auto ra = ComputeStreamingPerplexity(**engine, a, config);
  auto rb = ComputeStreamingPerplexity(**engine, b, config);
  ASSERT_TRUE(ra.ok() && rb.ok());
  const std::span<const int32_t> both[] = {a, b};
  auto r = ComputeStreamingPerplexityBatch(**engine, both, config);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->num_scored, ra->num_scored + rb->num_scored);
  EXPECT_NEAR(r->nll_sum, ra->nll_sum + rb->nll_sum, 1e-3);
  EXPECT_EQ(r->released, (49 - 20) + (36 - 20));  // the last token of a stream is only a target
  EXPECT_EQ((*engine)->pool().num_free(), (*engine)->pool().num_rows());
}

// Generation with a policy whose budget exceeds prompt + output equals full attention's, and reports
// the request's KV figures; a tight budget releases tokens and keeps the cache at its budget.
TEST(GenerateBatchTest, PolicyPerRequest) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  auto weights = LoadModelWeights(testing::ModelPath());
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto engine = CpuEngine::Create(*std::move(weights), {.kv_rows = 512});
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::vector<GenerationRequest> reqs(3);
  for (int i = 0; i < 40; ++i) reqs[0].prompt.push_back(300 + (i * 37) % 3000);
  reqs[1].prompt = reqs[0].prompt;
  reqs[2].prompt = reqs[0].prompt;
  for (auto& r : reqs) r.max_tokens = 12;
  reqs[1].release = {.kind = PolicyKind::kWindow, .kv_budget = 64};
  reqs[2].release = {.kind = PolicyKind::kWindow, .kv_budget = 24};
  auto out = GenerateBatch(**engine, reqs);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ((*out)[1].tokens, (*out)[0].tokens);
  EXPECT_EQ((*out)[0].kv_slots, 40 + 11);  // the last sampled token is never fed back
  EXPECT_EQ((*out)[1].release_stats.released, 0);
  EXPECT_EQ((*out)[2].kv_slots, 24);
  EXPECT_EQ((*out)[2].release_stats.released, 40 + 11 - 24);
  reqs[2].release.kv_budget = 8;  // below the minimum: a clear error naming the field and the request
  auto bad = GenerateBatch(**engine, reqs);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(bad.status().message()).find("request 2: kv_budget"), std::string::npos) << bad.status();
  EXPECT_EQ((*engine)->pool().num_free(), (*engine)->pool().num_rows());
}

}  // namespace
}  // namespace adore
