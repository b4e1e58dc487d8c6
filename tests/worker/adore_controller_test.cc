// The ADORE controller: reproduces PyTorch (tools/adore/train_controller.py) on golden vectors, rejects
// malformed weight files with errors naming the field, and plans release / rebuild by score.
#include "worker/adore_controller.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/adore_controller_file.h"
#include "tests/test_util.h"

namespace adore {
namespace {

using Json = nlohmann::json;

std::string ControllerPath() { return std::string(ADORE_SOURCE_DIR) + "/tools/adore/controller.bin"; }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A controller file from a header and named float tensors (tests/adore_controller_file.h).
std::string MakeFile(Json header, const std::vector<std::pair<std::string, std::vector<float>>>& tensors,
                     const std::vector<std::vector<int64_t>>& shapes) {
  return testing::WriteControllerFile(std::move(header), tensors, shapes);
}

// A tiny controller: 1 layer of hidden 2, key_dim 2, state_dim 1, every weight zero except the score's
// weight on x[0] = mass_coef * log(a + eps): the score ranks tokens by the mass of the latest step.
std::string TinyFile(float score_mass_weight = 1.0f) {
  Json h = {{"feature_layers", {0}}, {"hidden_size", 2}, {"key_dim", 2}, {"state_dim", 1}, {"num_inputs", 5},
            {"mass_eps", 1e-5}, {"mass_coef", 0.25}, {"age_coef", 0.125}, {"num_sink", 1}, {"num_recent", 1}};
  std::vector<float> score_w = {0.0f, score_mass_weight, 0.0f, 0.0f, 0.0f, 0.0f};
  return MakeFile(h,
                  {{"key_proj.weight", std::vector<float>(4, 0.0f)}, {"key_proj.bias", {0, 0}},
                   {"query_proj.weight", std::vector<float>(4, 0.0f)}, {"query_proj.bias", {0, 0}},
                   {"gru.weight_ih", std::vector<float>(15, 0.0f)}, {"gru.weight_hh", std::vector<float>(3, 0.0f)},
                   {"gru.bias_ih", {0, 0, 0}}, {"gru.bias_hh", {0, 0, 0}}, {"score.weight", score_w},
                   {"score.bias", {0}}},
                  {{2, 2}, {2}, {2, 2}, {2}, {3, 5}, {3, 1}, {3}, {3}, {1, 6}, {1}});
}

TEST(AdoreControllerTest, ReproducesPyTorchOnGoldenVectors) {
  auto ctl = AdoreController::Load(ControllerPath());
  ASSERT_TRUE(ctl.ok()) << ctl.status();
  std::ifstream in(testing::DataPath("adore/controller_golden.json"));
  ASSERT_TRUE(in) << "missing tests/data/adore/controller_golden.json";
  const Json g = Json::parse(in);
  const AdoreControllerConfig& c = (*ctl)->config();
  const int64_t n = g["n_tokens"].get<int64_t>();
  AdoreSequence seq(**ctl);
  double max_err = 0.0;
  for (int64_t t = 0; t < n; ++t) {
    const std::vector<float> f = g["features"][t].get<std::vector<float>>();
    ASSERT_EQ(static_cast<int64_t>(f.size()), c.feature_dim());
    ASSERT_TRUE(seq.AddToken(f).ok());
    std::vector<float> q(c.key_dim);
    (*ctl)->Project(f.data(), nullptr, q.data());
    const std::vector<float> want_k = g["key_features"][t].get<std::vector<float>>();
    const std::vector<float> want_q = g["query_features"][t].get<std::vector<float>>();
    for (int64_t d = 0; d < c.key_dim; ++d) {
      EXPECT_NEAR(seq.key_feature(t)[d], want_k[d], 1e-4 + 1e-5 * std::abs(want_k[d])) << "token " << t;
      EXPECT_NEAR(q[d], want_q[d], 1e-4 + 1e-5 * std::abs(want_q[d])) << "token " << t;
    }
  }
  for (const Json& st : g["steps"]) {
    const int64_t pos = st["query_pos"].get<int64_t>();
    const std::vector<float> mass = st["mass"].get<std::vector<float>>();
    const std::vector<uint8_t> cached = st["cached"].get<std::vector<uint8_t>>();
    ASSERT_TRUE(seq.Step(pos, mass, cached, st["mass_scale"].get<float>()).ok());
    const std::vector<std::vector<float>> h = st["h"].get<std::vector<std::vector<float>>>();
    const std::vector<float> scores = st["scores"].get<std::vector<float>>();
    ASSERT_EQ(seq.scores().size(), scores.size());
    for (int64_t i = 0; i <= pos; ++i) {
      for (int64_t d = 0; d < c.state_dim; ++d) {
        EXPECT_NEAR(seq.state(i)[d], h[i][d], 1e-4) << "step " << pos << " token " << i << " dim " << d;
        max_err = std::max(max_err, std::abs(double(seq.state(i)[d]) - h[i][d]));
      }
      EXPECT_NEAR(seq.scores()[i], scores[i], 1e-4) << "step " << pos << " token " << i;
      max_err = std::max(max_err, std::abs(double(seq.scores()[i]) - scores[i]));
    }
  }
  std::printf("golden: %lld steps, max |C++ - PyTorch| %.2e\n", static_cast<long long>(n), max_err);
}

TEST(AdoreControllerTest, StateStaysSmallPerToken) {
  auto ctl = AdoreController::Load(ControllerPath());
  ASSERT_TRUE(ctl.ok()) << ctl.status();
  const AdoreControllerConfig& c = (*ctl)->config();
  // key feature + GRU state + accumulated mass + score, in float32.
  EXPECT_LE((c.key_dim + c.state_dim + 2) * 4, 256);
}

TEST(AdoreControllerTest, StepCostIsSmallNextToADecodeStep) {
  auto ctl = AdoreController::Load(ControllerPath());
  ASSERT_TRUE(ctl.ok()) << ctl.status();
  const AdoreControllerConfig& c = (*ctl)->config();
  constexpr int64_t kTokens = 4096, kSteps = 8;
  AdoreSequence seq(**ctl);
  std::vector<float> f(c.feature_dim(), 0.01f);
  for (int64_t i = 0; i < kTokens; ++i) ASSERT_TRUE(seq.AddToken(f).ok());
  std::vector<float> mass(kTokens, 0.5f);
  std::vector<uint8_t> cached(kTokens, 1);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t s = 0; s < kSteps; ++s) {
    const int64_t pos = kTokens - kSteps + s;
    ASSERT_TRUE(seq.Step(pos, std::span<const float>(mass).first(pos + 1),
                         std::span<const uint8_t>(cached).first(pos + 1), 1.0f / 270)
                    .ok());
  }
  const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
  std::printf("adore controller: %.0f us per step over %lld tokens (%.3f us per token)\n", us / kSteps,
              static_cast<long long>(kTokens), us / kSteps / kTokens);
  for (float v : seq.scores()) ASSERT_TRUE(std::isfinite(v));
}

TEST(AdoreControllerTest, MissingFileIsNotFound) {
  auto ctl = AdoreController::Load("/nonexistent/controller.bin");
  EXPECT_EQ(ctl.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(ctl.status().message().find("/nonexistent/controller.bin"), std::string::npos);
}

void ExpectRejected(const std::string& bytes, const std::string& needle) {
  auto ctl = AdoreController::Parse(bytes, "test.bin");
  ASSERT_FALSE(ctl.ok()) << "accepted a file that should fail with: " << needle;
  EXPECT_EQ(ctl.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ctl.status().message().find("test.bin"), std::string::npos) << ctl.status();
  EXPECT_NE(ctl.status().message().find(needle), std::string::npos) << ctl.status();
}

TEST(AdoreControllerTest, RejectsMalformedFilesNamingTheField) {
  const std::string good = TinyFile();
  ASSERT_TRUE(AdoreController::Parse(good, "test.bin").ok());
  ExpectRejected("", "magic");
  ExpectRejected("GGUF" + good.substr(4), "magic");
  {
    std::string b = good;
    b[8] = 7;
    ExpectRejected(b, "version");
  }
  {
    std::string b = good;
    const uint32_t huge = 1u << 30;
    std::memcpy(&b[12], &huge, 4);
    ExpectRejected(b, "header");
  }
  ExpectRejected(good.substr(0, 40), "header");  // header cut short
  {
    std::string b = good;
    b[16] = '[';  // not a JSON object any more
    ExpectRejected(b, "header");
  }
  ExpectRejected(good.substr(0, good.size() - 8), "score.");  // data cut short
  auto with_header = [&](const std::function<void(Json&)>& edit) {
    uint32_t len;
    std::memcpy(&len, &good[12], 4);
    Json h = Json::parse(good.substr(16, len));
    const std::string data = good.substr(16 + len);
    edit(h);
    const std::string hs = h.dump();
    std::string out = good.substr(0, 12);
    const uint32_t nl = hs.size();
    out.append(reinterpret_cast<const char*>(&nl), 4);
    return out + hs + data;
  };
  ExpectRejected(with_header([](Json& h) { h.erase("key_dim"); }), "key_dim");
  ExpectRejected(with_header([](Json& h) { h["state_dim"] = "16"; }), "state_dim");
  ExpectRejected(with_header([](Json& h) { h["num_inputs"] = 4; }), "num_inputs");
  ExpectRejected(with_header([](Json& h) { h["feature_layers"] = Json::array(); }), "feature_layers");
  ExpectRejected(with_header([](Json& h) { h["mass_coef"] = nullptr; }), "mass_coef");
  ExpectRejected(with_header([](Json& h) { h["hidden_size"] = 3; }), "key_proj.weight");  // shape mismatch
  ExpectRejected(with_header([](Json& h) { h["tensors"].erase(h["tensors"].size() - 1); }), "score.bias");
  ExpectRejected(with_header([](Json& h) { h["tensors"][0]["offset"] = 1u << 30; }), "key_proj.weight");
  ExpectRejected(with_header([](Json& h) { h["tensors"][0]["shape"] = {2, "x"}; }), "key_proj.weight");
  {
    std::string b = good;
    const float nan = std::nanf("");
    std::memcpy(&b[b.size() - 4], &nan, 4);  // score.bias
    ExpectRejected(b, "non-finite");
  }
}

TEST(AdoreControllerTest, RejectsBadSteps) {
  auto ctl = AdoreController::Parse(TinyFile(), "tiny");
  ASSERT_TRUE(ctl.ok()) << ctl.status();
  AdoreSequence seq(**ctl);
  EXPECT_EQ(seq.AddToken(std::vector<float>(3)).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(seq.AddToken(std::vector<float>{1, 2}).ok());
  ASSERT_TRUE(seq.AddToken(std::vector<float>{3, 4}).ok());
  const std::vector<uint8_t> c1 = {1};
  EXPECT_EQ(seq.Step(2, std::vector<float>(3), std::vector<uint8_t>(3, 1), 1.0f).code(),
            absl::StatusCode::kInvalidArgument);  // not added yet
  EXPECT_EQ(seq.Step(0, std::vector<float>(2), c1, 1.0f).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(seq.Step(0, std::vector<float>{1.0f}, c1, 1.0f).ok());
  EXPECT_EQ(seq.Step(0, std::vector<float>{1.0f}, c1, 1.0f).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(seq.num_steps(), 1);
}

TEST(AdoreControllerTest, PlansReleaseAndRebuildByScore) {
  auto ctl = AdoreController::Parse(TinyFile(), "tiny");
  ASSERT_TRUE(ctl.ok()) << ctl.status();
  AdoreSequence seq(**ctl);
  // 8 tokens; the last step's masses rank them: token 5 > 2 > 6 > 1 > 3 > 4 (0 = sink, 7 = recent).
  const std::vector<float> mass = {0.1f, 0.3f, 0.6f, 0.2f, 0.05f, 0.9f, 0.4f, 0.5f};
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(seq.AddToken(std::vector<float>{0, 0}).ok());
  std::vector<uint8_t> cached(8, 1);
  ASSERT_TRUE(seq.Step(7, mass, cached, 1.0f).ok());
  EXPECT_GT(seq.scores()[5], seq.scores()[2]);

  // Everything fits: no release.
  auto p = seq.PlanRelease(cached, 9, 1, 0, 1, 1);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->release.empty());
  EXPECT_TRUE(p->rebuild.empty());

  // Budget 6 with one new token: keep sink 0, recent 7 and the best three of 1..6 (5, 2, 6).
  p = seq.PlanRelease(cached, 6, 1, 0, 1, 1);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->release, (std::vector<int32_t>{4, 3, 1}));  // lowest score first
  EXPECT_TRUE(p->rebuild.empty());

  // Tokens 5 and 1 were released earlier: with R = 1 the best released one (5) is rebuilt.
  cached = {1, 0, 1, 1, 1, 0, 1, 1};
  p = seq.PlanRelease(cached, 6, 1, 1, 1, 1);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->rebuild, (std::vector<int32_t>{5}));
  EXPECT_EQ(p->release, (std::vector<int32_t>{4, 3}));
  // Without rebuild it stays released and token 5's slot goes to the next cached one.
  p = seq.PlanRelease(cached, 6, 1, 0, 1, 1);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->rebuild.empty());
  EXPECT_EQ(p->release, (std::vector<int32_t>{4}));

  // The protected set and the new tokens must fit.
  EXPECT_EQ(seq.PlanRelease(cached, 2, 1, 0, 1, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(seq.PlanRelease(std::vector<uint8_t>(3, 1), 6, 1, 0, 1, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adore
