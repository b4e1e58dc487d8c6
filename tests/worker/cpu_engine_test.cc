// The CPU engine against Hugging Face transformers' float32 logits (golden data from
// tools/make_logits_golden.py), and its own consistency: chunked prefill, incremental and batched decode.
#include "worker/cpu_engine.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>

#include "common/model_weights.h"
#include "worker/adore_controller.h"
#include "worker/generator.h"
#include "worker/step_executor.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/policy_test_util.h"
#include "tests/adore_controller_file.h"
#include "tests/eval_text_util.h"
#include "tests/test_util.h"

namespace adore {
namespace {

class CpuEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!testing::ModelAvailable()) return;
    auto weights = LoadModelWeights(testing::ModelPath());
    ASSERT_TRUE(weights.ok()) << weights.status();
    auto engine = CpuEngine::Create(*std::move(weights), CpuEngineOptions{.kv_rows = 4096});
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = engine->release();
  }
  static void TearDownTestSuite() {
    delete engine_;
    engine_ = nullptr;
  }
  void SetUp() override {
    if (engine_ == nullptr) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  }
  // Logits of every position of `ids`, prefilled in chunks of `chunk` tokens.
  std::vector<float> AllLogits(const std::vector<int32_t>& ids, size_t chunk) {
    SequenceKv seq;
    std::vector<float> all, part;
    for (size_t off = 0; off < ids.size(); off += chunk) {
      ForwardItem item{&seq, std::span<const int32_t>(ids).subspan(off, std::min(chunk, ids.size() - off)), true};
      absl::Status s = engine_->Forward(std::span<ForwardItem>(&item, 1), &part);
      EXPECT_TRUE(s.ok()) << s;
      all.insert(all.end(), part.begin(), part.end());
    }
    engine_->Release(seq);
    return all;
  }
  static CpuEngine* engine_;
};
CpuEngine* CpuEngineTest::engine_ = nullptr;

TEST_F(CpuEngineTest, MatchesTransformersLogits) {
  std::ifstream in(testing::DataPath("golden/hf_logits.json"));
  ASSERT_TRUE(in) << "missing golden data";
  const nlohmann::json golden = nlohmann::json::parse(in);
  const int64_t vocab = engine_->config().vocab_size;
  int64_t positions = 0, argmax_mismatches = 0;
  double worst_ratio = 0.0;
  for (const auto& p : golden["prompts"]) {
    const std::vector<int32_t> ids = p["ids"].get<std::vector<int32_t>>();
    const std::vector<float> logits = AllLogits(ids, ids.size());
    ASSERT_EQ(logits.size(), ids.size() * vocab);
    for (size_t t = 0; t < ids.size(); ++t) {
      const float* row = &logits[t * vocab];
      const int32_t argmax = std::max_element(row, row + vocab) - row;
      if (argmax != p["argmax"][t].get<int32_t>()) ++argmax_mismatches;
      const double max_abs = p["max_abs"][t].get<double>();
      for (size_t j = 0; j < p["top_ids"][t].size(); ++j) {
        const int32_t id = p["top_ids"][t][j].get<int32_t>();
        const double diff = std::fabs(row[id] - p["top_logits"][t][j].get<double>());
        worst_ratio = std::max(worst_ratio, diff / max_abs);
      }
      ++positions;
    }
  }
  EXPECT_GE(positions, 512);
  EXPECT_EQ(argmax_mismatches, 0) << "of " << positions << " positions";
  EXPECT_LE(worst_ratio, 1e-3) << "max |logit diff| / max |logit| over " << positions << " positions";
  std::printf("positions %ld, worst |diff|/max|logit| = %.3g\n", static_cast<long>(positions), worst_ratio);
}

TEST_F(CpuEngineTest, ChunkedPrefillAndIncrementalDecodeAgree) {
  std::vector<int32_t> ids;
  for (int i = 0; i < 70; ++i) ids.push_back(1000 + (i * 37) % 5000);
  const std::vector<float> whole = AllLogits(ids, ids.size());
  const std::vector<float> chunked = AllLogits(ids, 16);
  const std::vector<float> one_by_one = AllLogits(ids, 1);
  ASSERT_EQ(whole.size(), chunked.size());
  float max_abs = 0, diff_chunked = 0, diff_single = 0;
  for (size_t i = 0; i < whole.size(); ++i) {
    max_abs = std::max(max_abs, std::fabs(whole[i]));
    diff_chunked = std::max(diff_chunked, std::fabs(whole[i] - chunked[i]));
    diff_single = std::max(diff_single, std::fabs(whole[i] - one_by_one[i]));
  }
  EXPECT_LE(diff_chunked, 1e-4f * max_abs);
  EXPECT_LE(diff_single, 1e-4f * max_abs);
}

TEST_F(CpuEngineTest, BatchedDecodeMatchesSeparateSequences) {
  // Three sequences of different lengths decoded in one batch give the logits each gets alone.
  const std::vector<std::vector<int32_t>> prompts = {{1, 2, 3, 4, 5}, {100, 200, 300}, {7000, 8000, 9000, 10, 11, 12, 13}};
  const int64_t vocab = engine_->config().vocab_size;
  std::vector<SequenceKv> seqs(prompts.size());
  std::vector<float> logits, alone;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ForwardItem item{&seqs[i], prompts[i]};
    ASSERT_TRUE(engine_->Forward(std::span<ForwardItem>(&item, 1), &logits).ok());
  }
  const std::vector<int32_t> next = {42, 4242, 31337 % 49152};
  std::vector<ForwardItem> items;
  for (size_t i = 0; i < prompts.size(); ++i) items.push_back({&seqs[i], std::span<const int32_t>(&next[i], 1)});
  ASSERT_TRUE(engine_->Forward(std::span<ForwardItem>(items), &logits).ok());
  ASSERT_EQ(logits.size(), prompts.size() * vocab);
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::vector<int32_t> full = prompts[i];
    full.push_back(next[i]);
    alone = AllLogits(full, full.size());
    float max_diff = 0, max_abs = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      const float ref = alone[(full.size() - 1) * vocab + v];
      max_abs = std::max(max_abs, std::fabs(ref));
      max_diff = std::max(max_diff, std::fabs(ref - logits[i * vocab + v]));
    }
    EXPECT_LE(max_diff, 1e-4f * max_abs) << "sequence " << i;
    engine_->Release(seqs[i]);
  }
  EXPECT_EQ(engine_->pool().num_free(), engine_->pool().num_rows());
}

TEST_F(CpuEngineTest, RejectsBadInputWithoutChangingState) {
  SequenceKv seq;
  std::vector<float> logits;
  const std::vector<int32_t> bad = {5, -1};
  ForwardItem item{&seq, bad};
  absl::Status s = engine_->Forward(std::span<ForwardItem>(&item, 1), &logits);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(seq.num_slots(), 0);
  const std::vector<int32_t> out_of_vocab = {static_cast<int32_t>(engine_->config().vocab_size)};
  item.tokens = out_of_vocab;
  EXPECT_EQ(engine_->Forward(std::span<ForwardItem>(&item, 1), &logits).code(), absl::StatusCode::kInvalidArgument);
  // More tokens than the pool holds: RESOURCE_EXHAUSTED, nothing allocated.
  std::vector<int32_t> huge(engine_->pool().num_rows() + 1, 5);
  item.tokens = huge;
  s = engine_->Forward(std::span<ForwardItem>(&item, 1), &logits);
  EXPECT_TRUE(s.code() == absl::StatusCode::kResourceExhausted || s.code() == absl::StatusCode::kOutOfRange) << s;
  EXPECT_EQ(seq.num_slots(), 0);
  EXPECT_EQ(engine_->pool().num_free(), engine_->pool().num_rows());
}

// A Hugging Face checkpoint (config.json + safetensors, made by tools/make_tiny_hf_model.py) through the
// same engine: exercises the HF loader's q/k permutation against transformers' own logits.
TEST(CpuEngineHfTest, TinyHfCheckpointMatchesTransformersLogits) {
  auto weights = LoadModelWeights(testing::DataPath("tiny_hf"));
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto engine = CpuEngine::Create(*std::move(weights), CpuEngineOptions{.kv_rows = 64});
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::ifstream in(testing::DataPath("tiny_hf/golden_logits.json"));
  const nlohmann::json golden = nlohmann::json::parse(in);
  const int64_t vocab = (*engine)->config().vocab_size;
  for (const auto& g : golden["sequences"]) {
    const std::vector<int32_t> ids = g["token_ids"].get<std::vector<int32_t>>();
    SequenceKv seq;
    std::vector<float> logits;
    ForwardItem item{&seq, ids, true};
    ASSERT_TRUE((*engine)->Forward(std::span<ForwardItem>(&item, 1), &logits).ok());
    for (size_t t = 0; t < ids.size(); ++t) {
      const std::vector<float> ref = g["logits"][t].get<std::vector<float>>();
      ASSERT_EQ(static_cast<int64_t>(ref.size()), vocab);
      float max_abs = 0, max_diff = 0;
      for (int64_t v = 0; v < vocab; ++v) {
        max_abs = std::max(max_abs, std::fabs(ref[v]));
        max_diff = std::max(max_diff, std::fabs(ref[v] - logits[t * vocab + v]));
      }
      EXPECT_LE(max_diff, 1e-4f * max_abs) << "position " << t;
      const float* row = &logits[t * vocab];
      EXPECT_EQ(std::max_element(row, row + vocab) - row, g["argmax"][t].get<int64_t>());
    }
    (*engine)->Release(seq);
  }
}

// Greedy tokens of `steps` decode steps after `prompt`, under a release policy (null = full attention).
std::vector<int32_t> GreedyDecode(CpuEngine& engine, const std::vector<int32_t>& prompt, int steps,
                                  ReleasePolicy* policy, int64_t budget, int64_t* max_slots) {
  SequenceKv seq;
  std::vector<float> logits;
  std::vector<int32_t> out;
  const int64_t vocab = engine.config().vocab_size;
  int32_t token = -1;
  for (int i = 0; i <= steps; ++i) {
    std::vector<int32_t> step = i == 0 ? prompt : std::vector<int32_t>{token};
    ForwardItem item{&seq, step, false, policy, budget};
    EXPECT_TRUE(engine.Forward(std::span<ForwardItem>(&item, 1), &logits).ok());
    token = std::max_element(logits.begin(), logits.begin() + vocab) - logits.begin();
    out.push_back(token);
    *max_slots = std::max(*max_slots, seq.num_slots());
  }
  engine.Release(seq);
  return out;
}

TEST_F(CpuEngineTest, PoliciesWithBudgetAboveContextEqualFull) {
  const std::vector<int32_t> prompt = {504, 3458, 282, 253, 1345, 30, 339, 1458, 28, 253, 9364, 2116};
  int64_t slots = 0;
  const std::vector<int32_t> full = GreedyDecode(*engine_, prompt, 24, nullptr, 0, &slots);
  for (PolicyKind kind : {PolicyKind::kWindow, PolicyKind::kHeavyHitter}) {
    auto policy = *MakeReleasePolicy({.kind = kind, .kv_budget = 64});
    int64_t used = 0;
    EXPECT_EQ(GreedyDecode(*engine_, prompt, 24, policy.get(), 64, &used), full) << PolicyKindName(kind);
  }
}

TEST_F(CpuEngineTest, PoliciesKeepTheSequenceWithinItsBudget) {
  std::vector<int32_t> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back(300 + 7 * i);
  for (PolicyKind kind : {PolicyKind::kWindow, PolicyKind::kHeavyHitter}) {
    auto policy = *MakeReleasePolicy({.kind = kind, .kv_budget = 48, .num_sink = 4, .num_recent = 16});
    int64_t max_slots = 0;
    const int64_t free_before = engine_->pool().num_free();
    GreedyDecode(*engine_, prompt, 30, policy.get(), 48, &max_slots);
    EXPECT_EQ(max_slots, 48) << PolicyKindName(kind);
    EXPECT_EQ(engine_->pool().num_free(), free_before);
  }
}

TEST_F(CpuEngineTest, AdoreWithBudgetAboveContextEqualsFull) {
  auto controller = AdoreController::Load(std::string(ADORE_SOURCE_DIR) + "/tools/adore/controller.bin");
  ASSERT_TRUE(controller.ok()) << controller.status();
  const std::vector<int32_t> prompt = {504, 3458, 282, 253, 1345, 30, 339, 1458, 28, 253, 9364, 2116};
  int64_t slots = 0;
  const std::vector<int32_t> full = GreedyDecode(*engine_, prompt, 24, nullptr, 0, &slots);
  auto policy = MakeReleasePolicy({.kind = PolicyKind::kAdore, .kv_budget = 64, .controller = controller->get()});
  ASSERT_TRUE(policy.ok()) << policy.status();
  int64_t used = 0;
  EXPECT_EQ(GreedyDecode(*engine_, prompt, 24, policy->get(), 64, &used), full);
}

TEST_F(CpuEngineTest, AdoreKeepsTheSequenceWithinItsBudget) {
  auto controller = AdoreController::Load(std::string(ADORE_SOURCE_DIR) + "/tools/adore/controller.bin");
  ASSERT_TRUE(controller.ok()) << controller.status();
  std::vector<int32_t> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back(300 + 7 * i);
  auto policy = MakeReleasePolicy({.kind = PolicyKind::kAdore, .kv_budget = 48, .controller = controller->get()});
  ASSERT_TRUE(policy.ok()) << policy.status();
  int64_t max_slots = 0;
  const int64_t free_before = engine_->pool().num_free();
  const std::vector<int32_t> out = GreedyDecode(*engine_, prompt, 30, policy->get(), 48, &max_slots);
  EXPECT_EQ(out.size(), 31u);
  EXPECT_EQ(max_slots, 48);
  EXPECT_EQ(engine_->pool().num_free(), free_before);
}

// Fed token by token, releases before the first token of each block of `block` positions what the whole
// block needs (the oldest tokens after the first `num_sink`): the schedule of a window policy that takes
// its prompt in chunks of `block`.
class BlockWindowPolicy final : public ReleasePolicy {
 public:
  BlockWindowPolicy(int64_t num_sink, int64_t block, int64_t length)
      : num_sink_(num_sink), block_(block), length_(length) {}
  PolicyKind kind() const override { return PolicyKind::kWindow; }
  absl::StatusOr<StepPlan> PlanStep(const SequenceKv& seq, int64_t, int64_t budget) override {
    StepPlan plan;
    if (next_ % block_ != 0) return plan;
    const int64_t over = OccupiedSlots(seq) + std::min(block_, length_ - next_) - budget;
    std::vector<int32_t> slots;
    for (int32_t s = 0; s < seq.num_slots(); ++s) {
      if (seq.rows[s] >= 0 && seq.pos[s] >= num_sink_) slots.push_back(s);
    }
    std::sort(slots.begin(), slots.end(), [&](int32_t a, int32_t b) { return seq.pos[a] < seq.pos[b]; });
    for (int64_t i = 0; i < over; ++i) plan.release.push_back(slots.at(i));
    return plan;
  }
  absl::StatusOr<std::vector<int32_t>> SelectRelease(const SequenceKv&, int64_t) override {
    return absl::InternalError("unused");
  }
  void OnSlotFilled(int32_t, int32_t pos) override { next_ = std::max<int64_t>(next_, pos + 1); }

 private:
  int64_t num_sink_, block_, length_, next_ = 0;
};

// A prompt under a releasing policy in chunks (what StepExecutor and GenerateBatch do): before each chunk
// the window policy releases room for all of it, and each of the chunk's tokens sees the kept cache plus
// the chunk's earlier tokens. Token by token with the same release schedule (a different attention path:
// one query per call) gives the same logits at every position.
TEST_F(CpuEngineTest, PolicyPromptChunksEqualTokenByTokenWithTheSameReleases) {
  std::vector<int32_t> ids;
  for (int i = 0; i < 100; ++i) ids.push_back(1000 + (i * 37) % 5000);
  constexpr int64_t kBudget = 40, kSink = 4, kChunk = 12;
  auto window = *MakeReleasePolicy({.kind = PolicyKind::kWindow, .kv_budget = kBudget, .num_sink = kSink});
  ASSERT_EQ(PolicyPromptChunk(*engine_, *window, kBudget, kChunk), kChunk);
  EXPECT_EQ(window->max_new_per_step(kBudget), kBudget - kSink);
  SequenceKv chunked_seq, single_seq;
  std::vector<float> chunked, part;
  for (size_t off = 0; off < ids.size(); off += kChunk) {
    const size_t len = std::min<size_t>(kChunk, ids.size() - off);
    ForwardItem item{&chunked_seq, std::span<const int32_t>(ids).subspan(off, len), true, window.get(), kBudget};
    ASSERT_TRUE(engine_->Forward(std::span<ForwardItem>(&item, 1), &part).ok()) << "chunk at " << off;
    ASSERT_LE(OccupiedSlots(chunked_seq), kBudget);
    chunked.insert(chunked.end(), part.begin(), part.end());
  }
  BlockWindowPolicy blocks(kSink, kChunk, static_cast<int64_t>(ids.size()));
  std::vector<float> single;
  for (size_t t = 0; t < ids.size(); ++t) {
    ForwardItem item{&single_seq, std::span<const int32_t>(ids).subspan(t, 1), false, &blocks, kBudget};
    ASSERT_TRUE(engine_->Forward(std::span<ForwardItem>(&item, 1), &part).ok()) << "token " << t;
    single.insert(single.end(), part.begin(), part.end());
  }
  ASSERT_EQ(chunked.size(), single.size());
  float max_abs = 0, diff = 0;
  for (size_t i = 0; i < chunked.size(); ++i) {
    max_abs = std::max(max_abs, std::fabs(single[i]));
    diff = std::max(diff, std::fabs(chunked[i] - single[i]));
  }
  EXPECT_LE(diff, 1e-4f * max_abs);
  EXPECT_EQ(window->stats().released, static_cast<int64_t>(ids.size()) - kBudget);
  EXPECT_EQ(blocks.stats().released, window->stats().released);
  auto positions = [](const SequenceKv& seq) {
    std::vector<int32_t> p;
    for (int64_t s = 0; s < seq.num_slots(); ++s) {
      if (seq.rows[s] >= 0) p.push_back(seq.pos[s]);
    }
    std::sort(p.begin(), p.end());
    return p;
  };
  EXPECT_EQ(positions(chunked_seq), positions(single_seq));
  engine_->Release(chunked_seq);
  engine_->Release(single_seq);
}

// The step executor feeds prompts under a policy in chunks of its option (bounded by the policy), and gives
// the tokens GenerateBatch gives with the same chunks; the budget holds and every token beyond it was
// released once.
TEST_F(CpuEngineTest, ExecutorFeedsPolicyPromptsInChunks) {
  auto controller = AdoreController::Load(std::string(ADORE_SOURCE_DIR) + "/tools/adore/controller.bin");
  ASSERT_TRUE(controller.ok()) << controller.status();
  auto weights = LoadModelWeights(testing::ModelPath());
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto encoded = testing::EmmaExcerptTokens(*weights);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  ASSERT_GE(encoded->size(), 200u);
  const std::vector<int32_t> prompt(encoded->begin(), encoded->begin() + 200);
  const ReleaseConfig release{.kind = PolicyKind::kAdore, .kv_budget = 64, .controller = controller->get()};
  for (int64_t chunk : {int64_t{16}, int64_t{1000}}) {
    // 1000 is cut to what the policy allows: 64 - 4 sinks - 16 recent = 44.
    const int64_t expect_chunk = std::min<int64_t>(chunk, 44);
    StepExecutor executor(*engine_, {.policy_prefill_chunk = chunk});
    WorkerStep step;
    step.start.push_back({.id = 7, .prompt = prompt, .release = release});
    auto first = executor.Step(step);
    ASSERT_TRUE(first.ok()) << first.status();
    EXPECT_EQ(first->forward_calls, (200 + expect_chunk - 1) / expect_chunk) << "chunk " << chunk;
    ASSERT_EQ(first->sequences.size(), 1u);
    const SequenceStepResult& r = first->sequences[0];
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.kv_slots, 64);
    EXPECT_EQ(r.release_stats.released, 200 - 64);
    std::vector<int32_t> tokens = {r.token};
    for (int i = 0; i < 5; ++i) {
      WorkerStep next;
      next.decode.push_back({7, tokens.back()});
      auto res = executor.Step(next);
      ASSERT_TRUE(res.ok()) << res.status();
      tokens.push_back(res->sequences[0].token);
    }
    GenerationRequest g{.prompt = prompt, .max_tokens = 6, .release = release};
    auto ref = GenerateBatch(*engine_, std::span<const GenerationRequest>(&g, 1), nullptr, nullptr, 512, chunk);
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_EQ(tokens, (*ref)[0].tokens) << "chunk " << chunk;
  }
}

// A CPU engine with a per-call bound like the CUDA engine's: a call that carries prompt chunks (several
// tokens under a policy) for more than `max_chunk_items` sequences is refused with RESOURCE_EXHAUSTED,
// before anything changes.
class BoundedEngine final : public Engine {
 public:
  BoundedEngine(Engine& inner, size_t max_chunk_items) : inner_(inner), max_chunk_items_(max_chunk_items) {}
  absl::Status Forward(std::span<ForwardItem> items, std::vector<float>* logits) override {
    const auto chunks = std::count_if(items.begin(), items.end(),
                                      [](const ForwardItem& it) { return it.policy != nullptr && it.tokens.size() > 1; });
    if (static_cast<size_t>(chunks) > max_chunk_items_) {
      ++refused;
      return absl::ResourceExhaustedError("forward call exceeds the engine's per-call bound");
    }
    return inner_.Forward(items, logits);
  }
  absl::StatusOr<std::unique_ptr<ReleasePolicy>> MakePolicy(const ReleaseConfig& config) override {
    return inner_.MakePolicy(config);
  }
  int64_t max_policy_tokens_per_item() const override { return inner_.max_policy_tokens_per_item(); }
  void Release(SequenceKv& seq) override { inner_.Release(seq); }
  const ModelConfig& config() const override { return inner_.config(); }
  const char* backend() const override { return inner_.backend(); }
  int64_t refused = 0;

 private:
  Engine& inner_;
  const size_t max_chunk_items_;
};

// Prompts under a policy whose chunks do not fit one call together go in smaller calls (the executor halves
// a refused call) and give the tokens of the unbounded engine; none fails.
TEST_F(CpuEngineTest, ExecutorSplitsPolicyPromptCallsPastTheEnginesBound) {
  const ReleaseConfig release{.kind = PolicyKind::kWindow, .kv_budget = 48};
  std::vector<SequenceStart> starts;
  for (uint64_t id = 1; id <= 5; ++id) {
    std::vector<int32_t> prompt(70 + 13 * id);
    for (size_t t = 0; t < prompt.size(); ++t) prompt[t] = static_cast<int32_t>((t * 7919 + id * 104729) % 40000);
    starts.push_back({.id = id, .prompt = prompt, .release = release});
  }
  auto generate = [&](Engine& engine, int64_t* calls) {
    StepExecutor executor(engine, {.policy_prefill_chunk = 16});
    WorkerStep step;
    step.start = starts;
    auto first = executor.Step(step);
    EXPECT_TRUE(first.ok()) << first.status();
    std::map<uint64_t, std::vector<int32_t>> tokens;
    if (!first.ok()) return tokens;
    *calls = first->forward_calls;
    for (const SequenceStepResult& r : first->sequences) {
      EXPECT_TRUE(r.status.ok()) << "sequence " << r.id << ": " << r.status;
      tokens[r.id].push_back(r.token);
    }
    for (int i = 0; i < 3; ++i) {
      WorkerStep next;
      for (const auto& [id, t] : tokens) next.decode.push_back({id, t.back()});
      auto res = executor.Step(next);
      EXPECT_TRUE(res.ok()) << res.status();
      if (!res.ok()) break;
      for (const SequenceStepResult& r : res->sequences) tokens[r.id].push_back(r.token);
    }
    return tokens;
  };
  int64_t free_calls = 0, bounded_calls = 0;
  const auto expected = generate(*engine_, &free_calls);
  BoundedEngine bounded(*engine_, 2);
  const auto got = generate(bounded, &bounded_calls);
  ASSERT_EQ(expected.size(), starts.size());
  EXPECT_EQ(got, expected);
  EXPECT_GT(bounded.refused, 0) << "the bound never bit: the test tests nothing";
  EXPECT_GT(bounded_calls, free_calls);
  EXPECT_EQ(engine_->pool().num_free(), engine_->pool().num_rows()) << "the executors freed their sequences";
}

using testing::ScriptedRebuildPolicy;

// K and V of the token at `pos` in every layer, read through the sequence's slot table (empty if absent).
std::vector<float> TokenKv(CpuEngine& engine, const SequenceKv& seq, int32_t pos) {
  std::vector<float> kv;
  for (int64_t s = 0; s < seq.num_slots(); ++s) {
    if (seq.rows[s] < 0 || seq.pos[s] != pos) continue;
    const int64_t stride = engine.pool().row_stride();
    for (int64_t l = 0; l < engine.config().num_layers; ++l) {
      const float* k = engine.pool().k(l) + seq.rows[s] * stride;
      const float* v = engine.pool().v(l) + seq.rows[s] * stride;
      kv.insert(kv.end(), k, k + stride);
      kv.insert(kv.end(), v, v + stride);
    }
  }
  return kv;
}

// A released token rebuilt while everything before it is still cached gets back exactly its old K/V (same
// inputs at the same position, in every layer), although it runs in a batch with the step's new token;
// while it is out, the logits differ from full attention's.
TEST_F(CpuEngineTest, RebuiltTokenReentersWithItsOriginalKv) {
  std::vector<int32_t> ids;
  for (int i = 0; i < 20; ++i) ids.push_back(400 + 13 * i);
  SequenceKv full_seq, seq;
  ScriptedRebuildPolicy policy(/*drop=*/3, /*drop_step=*/10, /*gap=*/4);
  std::vector<float> original, full_logits, logits;
  for (size_t t = 0; t < ids.size(); ++t) {
    ForwardItem full_item{&full_seq, std::span<const int32_t>(ids).subspan(t, 1)};
    ASSERT_TRUE(engine_->Forward(std::span<ForwardItem>(&full_item, 1), &full_logits).ok());
    ForwardItem item{&seq, std::span<const int32_t>(ids).subspan(t, 1), false, &policy, 4096};
    ASSERT_TRUE(engine_->Forward(std::span<ForwardItem>(&item, 1), &logits).ok()) << "step " << t;
    if (t == 3) original = TokenKv(*engine_, seq, 3);
    if (t >= 10 && t < 14) {
      EXPECT_TRUE(TokenKv(*engine_, seq, 3).empty()) << "step " << t;
      EXPECT_EQ(OccupiedSlots(seq), static_cast<int64_t>(t)) << "step " << t;
      float diff = 0.0f;
      for (size_t i = 0; i < logits.size(); ++i) diff = std::max(diff, std::fabs(logits[i] - full_logits[i]));
      EXPECT_GT(diff, 1e-3f) << "step " << t << ": the released token should be missing";
    } else {
      EXPECT_EQ(OccupiedSlots(seq), static_cast<int64_t>(t) + 1) << "step " << t;
    }
    if (t == 14) {  // rebuilt in this step, alongside token 14
      const std::vector<float> rebuilt = TokenKv(*engine_, seq, 3);
      ASSERT_EQ(rebuilt.size(), original.size());
      float worst = 0.0f;
      for (size_t i = 0; i < rebuilt.size(); ++i) worst = std::max(worst, std::fabs(rebuilt[i] - original[i]));
      EXPECT_LT(worst, 1e-4f);
    }
  }
  EXPECT_EQ(policy.stats().released, 1);
  EXPECT_EQ(policy.stats().rebuilt, 1);
  engine_->Release(seq);
  engine_->Release(full_seq);
}

// The trained controller with R > 0 on a budget far below the context: released tokens come back, the
// cache never passes its budget and no pool row leaks.
TEST_F(CpuEngineTest, AdoreRebuildBringsReleasedTokensBack) {
  // Rebuilds nearly every step (tests/adore_controller_file.h): the trained controller rebuilds too rarely
  // for a test of this length.
  auto controller = AdoreController::Parse(testing::RebuildingControllerFile(engine_->config().hidden_size), "rebuilding");
  ASSERT_TRUE(controller.ok()) << controller.status();
  auto weights = LoadModelWeights(testing::ModelPath());
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto encoded = testing::EmmaExcerptTokens(*weights);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  ASSERT_GE(encoded->size(), 320u);
  const std::vector<int32_t> ids(encoded->begin(), encoded->begin() + 320);
  const int64_t budget = 64;
  auto policy = MakeReleasePolicy(
      {.kind = PolicyKind::kAdore, .kv_budget = budget, .rebuild = 8, .controller = controller->get()});
  ASSERT_TRUE(policy.ok()) << policy.status();
  const int64_t free_before = engine_->pool().num_free();
  SequenceKv seq;
  std::vector<float> logits;
  int64_t reentered = 0;  // tokens computed before a step, not cached before it and cached after it
  auto cached = [&]() {
    std::vector<uint8_t> c(ids.size(), 0);
    for (int64_t s = 0; s < seq.num_slots(); ++s) {
      if (seq.rows[s] >= 0) c[seq.pos[s]] = 1;
    }
    return c;
  };
  for (size_t t = 0; t < ids.size(); ++t) {
    const std::vector<uint8_t> before = cached();
    ForwardItem item{&seq, std::span<const int32_t>(ids).subspan(t, 1), false, policy->get(), budget};
    ASSERT_TRUE(engine_->Forward(std::span<ForwardItem>(&item, 1), &logits).ok()) << "step " << t;
    ASSERT_LE(OccupiedSlots(seq), budget);
    // The slot-map hash the worker reports every step is kept incrementally; it must equal the table's.
    ASSERT_EQ(seq.map_hash, SlotMapHash(seq)) << "step " << t;
    const std::vector<uint8_t> after = cached();
    for (size_t p = 0; p < t; ++p) reentered += !before[p] && after[p];
  }
  const ReleaseStats& st = (*policy)->stats();
  EXPECT_GT(st.rebuilt, 0);
  EXPECT_EQ(reentered, st.rebuilt);
  EXPECT_EQ(st.released, static_cast<int64_t>(ids.size()) - budget + st.rebuilt);
  engine_->Release(seq);
  EXPECT_EQ(engine_->pool().num_free(), free_before);
}

}  // namespace
}  // namespace adore
