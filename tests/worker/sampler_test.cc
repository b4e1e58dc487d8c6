// Sampler behaviour: greedy, top-k / top-p restriction, temperature, seeding, parameter validation.
#include "worker/sampler.h"

#include <cmath>
#include <map>
#include <set>

#include "gtest/gtest.h"

namespace adore {
namespace {

std::vector<float> Logits() { return {1.0f, 3.0f, 2.0f, 0.5f, 2.9f, -1.0f}; }  // order: 1, 4, 2, 0, 3, 5

TEST(SamplerTest, GreedyPicksArgmax) {
  Sampler s(SamplingParams{});
  EXPECT_EQ(s.Sample(Logits()), 1);
}

TEST(SamplerTest, TopKOneIsGreedyAtAnyTemperature) {
  Sampler s(SamplingParams{.temperature = 5.0f, .top_k = 1, .seed = 3});
  for (int i = 0; i < 100; ++i) EXPECT_EQ(s.Sample(Logits()), 1);
}

TEST(SamplerTest, TopKRestrictsToKMostLikely) {
  Sampler s(SamplingParams{.temperature = 10.0f, .top_k = 3, .seed = 7});
  std::set<int32_t> seen;
  for (int i = 0; i < 2000; ++i) seen.insert(s.Sample(Logits()));
  EXPECT_EQ(seen, (std::set<int32_t>{1, 4, 2}));
}

TEST(SamplerTest, TopPKeepsSmallestPrefixReachingMass) {
  // Softmax at T=1 of Logits(): p(1)≈0.381, p(4)≈0.345, p(2)≈0.140 ... ; top_p 0.7 keeps {1, 4}.
  Sampler s(SamplingParams{.temperature = 1.0f, .top_p = 0.7f, .seed = 11});
  std::set<int32_t> seen;
  for (int i = 0; i < 2000; ++i) seen.insert(s.Sample(Logits()));
  EXPECT_EQ(seen, (std::set<int32_t>{1, 4}));
}

TEST(SamplerTest, FrequenciesFollowSoftmax) {
  Sampler s(SamplingParams{.temperature = 1.0f, .seed = 5});
  const std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 0.25, 0.75
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += s.Sample(logits);
  EXPECT_NEAR(static_cast<double>(ones) / n, 0.75, 0.015);
}

TEST(SamplerTest, SameSeedSameTokens) {
  Sampler a(SamplingParams{.temperature = 1.5f, .seed = 42}), b(SamplingParams{.temperature = 1.5f, .seed = 42});
  Sampler c(SamplingParams{.temperature = 1.5f, .seed = 43});
  std::vector<int32_t> ta, tb, tc;
  for (int i = 0; i < 200; ++i) {
    ta.push_back(a.Sample(Logits()));
    tb.push_back(b.Sample(Logits()));
    tc.push_back(c.Sample(Logits()));
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

TEST(SamplerTest, ValidateNamesTheField) {
  EXPECT_TRUE(SamplingParams{}.Validate().ok());
  auto msg = [](SamplingParams p) { return std::string(p.Validate().message()); };
  EXPECT_NE(msg(SamplingParams{.temperature = -1.0f}).find("temperature"), std::string::npos);
  EXPECT_NE(msg(SamplingParams{.temperature = NAN}).find("temperature"), std::string::npos);
  EXPECT_NE(msg(SamplingParams{.top_k = -2}).find("top_k"), std::string::npos);
  EXPECT_NE(msg(SamplingParams{.top_p = 0.0f}).find("top_p"), std::string::npos);
  EXPECT_NE(msg(SamplingParams{.top_p = 1.5f}).find("top_p"), std::string::npos);
}

}  // namespace
}  // namespace adore
