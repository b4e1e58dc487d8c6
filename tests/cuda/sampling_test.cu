// Sample (kernels/cuda/sampling.cu): greedy equals the CPU argmax, top-k = 1 equals greedy, sampled tokens
// stay inside the top-k / top-p set computed on the CPU (ties included), seeded runs repeat, and the
// empirical frequencies follow the softmax.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>
#include <vector>

#include "kernels/cuda/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace adore::kernels {
namespace {

using testing::DeviceBuffer;

// The CPU sampler's candidate set (worker/sampler.cc): sort by logit descending then id ascending, keep
// top_k, softmax at the temperature in double, keep the smallest prefix whose mass reaches top_p.
std::set<int32_t> CpuKeptSet(const float* logits, int64_t vocab, float temperature, int32_t top_k, float top_p) {
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  int64_t keep = top_k > 0 && top_k < vocab ? top_k : vocab;
  std::vector<double> p(keep);
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) total += p[i] = std::exp((logits[order[i]] - logits[order[0]]) / temperature);
  if (top_p < 1.0f) {
    double mass = 0;
    for (int64_t i = 0; i < keep; ++i) {
      mass += p[i] / total;
      if (mass >= top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  return std::set<int32_t>(order.begin(), order.begin() + keep);
}

class SampleTest : public ::testing::Test {
 protected:
  void SetUp() override { ADORE_SKIP_WITHOUT_GPU(); }

  // One token per row of `logits` ([rows, vocab]) with per-row params.
  std::vector<int32_t> Run(const std::vector<float>& logits, int64_t vocab,
                           const std::vector<GpuSamplingParams>& params) {
    const int64_t rows = static_cast<int64_t>(params.size());
    DeviceBuffer<float> d_logits(logits);
    DeviceBuffer<GpuSamplingParams> d_params(params);
    DeviceBuffer<int32_t> d_out(rows);
    const absl::Status st = Sample({.logits = d_logits.get(), .logits_stride = vocab, .batch = rows, .vocab = vocab,
                                    .params = d_params.get(), .out_tokens = d_out.get()},
                                   nullptr);
    EXPECT_TRUE(st.ok()) << st;
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    return d_out.Download();
  }
};

// Random logits; odd rows are quantized to a few levels so that ties are everywhere.
std::vector<float> MakeLogits(int64_t rows, int64_t vocab, uint32_t seed) {
  std::vector<float> logits = testing::RandomFloats(rows * vocab, -8, 8, seed);
  for (int64_t r = 1; r < rows; r += 2) {
    for (int64_t i = 0; i < vocab; ++i) logits[r * vocab + i] = std::floor(logits[r * vocab + i] / 2.0f);
  }
  return logits;
}

TEST_F(SampleTest, GreedyAndTopK1EqualCpuArgmax) {
  for (const int64_t vocab : {1000, 49152, 128256}) {
    SCOPED_TRACE(::testing::Message() << "vocab " << vocab);
    const int64_t rows = 6;
    const std::vector<float> logits = MakeLogits(rows, vocab, static_cast<uint32_t>(vocab));
    std::vector<GpuSamplingParams> greedy(rows), top1(rows);
    for (int64_t r = 0; r < rows; ++r) {
      top1[r].temperature = 1.0f;
      top1[r].top_k = 1;
      top1[r].seed = 1234 + r;
    }
    const std::vector<int32_t> g = Run(logits, vocab, greedy), k1 = Run(logits, vocab, top1);
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = &logits[r * vocab];
      const int32_t argmax = static_cast<int32_t>(std::max_element(row, row + vocab) - row);
      EXPECT_EQ(g[r], argmax) << "row " << r;
      EXPECT_EQ(k1[r], argmax) << "row " << r;
    }
  }
}

TEST_F(SampleTest, SampledTokensStayInTheCpuTopKTopPSet) {
  struct Config { float temperature; int32_t top_k; float top_p; };
  const std::vector<Config> configs = {{0.7f, 50, 1.0f}, {1.0f, 0, 0.9f}, {1.3f, 20, 0.5f}, {1.0f, 0, 1.0f},
                                       {2.0f, 5, 0.99f}, {0.5f, 10, 0.3f}, {1.0f, 1000000, 0.95f}};
  constexpr int kSeeds = 48;
  for (const int64_t vocab : {1000, 32000, 128256}) {
    const std::vector<float> base = MakeLogits(2, vocab, static_cast<uint32_t>(vocab) + 1);
    for (int64_t which = 0; which < 2; ++which) {  // 0: distinct logits, 1: heavy ties
      const float* row = &base[which * vocab];
      for (const Config& c : configs) {
        SCOPED_TRACE(::testing::Message() << "vocab " << vocab << (which ? " tied" : " distinct") << " T "
                                          << c.temperature << " top_k " << c.top_k << " top_p " << c.top_p);
        std::vector<float> logits;
        std::vector<GpuSamplingParams> params(kSeeds);
        for (int s = 0; s < kSeeds; ++s) {
          logits.insert(logits.end(), row, row + vocab);
          params[s] = {.temperature = c.temperature, .top_k = c.top_k, .top_p = c.top_p, .seed = 99u + 7919u * s};
        }
        // A hair more mass than asked: GPU float sums may cross the top_p boundary one token later.
        const std::set<int32_t> allowed =
            CpuKeptSet(row, vocab, c.temperature, c.top_k, c.top_p < 1.0f ? std::min(1.0f, c.top_p + 1e-4f) : 1.0f);
        const std::vector<int32_t> got = Run(logits, vocab, params);
        for (int s = 0; s < kSeeds; ++s) {
          EXPECT_TRUE(allowed.count(got[s])) << "seed " << s << " sampled " << got[s] << " outside the kept set of "
                                             << allowed.size();
        }
      }
    }
  }
}

TEST_F(SampleTest, TopKTiesKeepTheLowestIds) {
  // 400 tokens share the top logit: top_k = 10 must keep exactly the 10 lowest of their ids.
  const int64_t vocab = 5000;
  std::vector<float> row(vocab, 0.0f);
  std::vector<int32_t> top_ids;
  for (int64_t i = 0; i < vocab; ++i) {
    if (i % 12 == 5) {
      row[i] = 3.0f;
      if (top_ids.size() < 10) top_ids.push_back(static_cast<int32_t>(i));
    }
  }
  constexpr int kSeeds = 256;
  std::vector<float> logits;
  std::vector<GpuSamplingParams> params(kSeeds);
  for (int s = 0; s < kSeeds; ++s) {
    logits.insert(logits.end(), row.begin(), row.end());
    params[s] = {.temperature = 1.0f, .top_k = 10, .top_p = 1.0f, .seed = static_cast<uint64_t>(s)};
  }
  const std::vector<int32_t> got = Run(logits, vocab, params);
  std::set<int32_t> seen;
  for (int32_t t : got) {
    EXPECT_TRUE(std::find(top_ids.begin(), top_ids.end(), t) != top_ids.end()) << t;
    seen.insert(t);
  }
  EXPECT_GE(seen.size(), 8u);  // uniform over 10 tokens, 256 draws
}

TEST_F(SampleTest, SeededRunsRepeatAndSeedsVary) {
  const int64_t vocab = 32000, rows = 64;
  const std::vector<float> row = testing::RandomFloats(vocab, -1, 1, 3);  // flat: many plausible tokens
  std::vector<float> logits;
  std::vector<GpuSamplingParams> params(rows);
  for (int64_t r = 0; r < rows; ++r) {
    logits.insert(logits.end(), row.begin(), row.end());
    params[r] = {.temperature = 1.0f, .top_k = 0, .top_p = 0.95f, .seed = static_cast<uint64_t>(1000 + r)};
  }
  const std::vector<int32_t> a = Run(logits, vocab, params), b = Run(logits, vocab, params);
  EXPECT_EQ(a, b);
  EXPECT_GE(std::set<int32_t>(a.begin(), a.end()).size(), 32u);
}

TEST_F(SampleTest, FrequenciesFollowTheSoftmax) {
  const int64_t vocab = 1000, rows = 8192;
  std::vector<float> row(vocab, -30.0f);
  row[17] = 3.0f;
  row[3] = 2.0f;
  row[900] = 1.0f;
  row[5] = 0.5f;
  const std::vector<int32_t> ids = {17, 3, 900, 5};
  std::vector<double> p = {std::exp(3.0), std::exp(2.0), std::exp(1.0), std::exp(0.5)};
  const double total = std::accumulate(p.begin(), p.end(), 0.0);
  for (double& x : p) x /= total;  // 0.631 0.232 0.085 0.052
  std::vector<float> logits;
  for (int64_t r = 0; r < rows; ++r) logits.insert(logits.end(), row.begin(), row.end());
  for (const float top_p : {1.0f, 0.7f}) {
    SCOPED_TRACE(::testing::Message() << "top_p " << top_p);
    std::vector<GpuSamplingParams> params(rows);
    for (int64_t r = 0; r < rows; ++r) {
      params[r] = {.temperature = 1.0f, .top_p = top_p, .seed = static_cast<uint64_t>(555 * r + 1)};
    }
    const std::vector<int32_t> got = Run(logits, vocab, params);
    std::map<int32_t, int> count;
    for (int32_t t : got) ++count[t];
    // top_p = 0.7 keeps {17, 3} (0.631 < 0.7 <= 0.863), renormalized.
    const std::vector<double> expect =
        top_p < 1.0f ? std::vector<double>{p[0] / (p[0] + p[1]), p[1] / (p[0] + p[1]), 0, 0} : p;
    for (size_t i = 0; i < ids.size(); ++i) {
      EXPECT_NEAR(static_cast<double>(count[ids[i]]) / rows, expect[i], 0.02) << "token " << ids[i];
    }
  }
}

TEST_F(SampleTest, RejectsBadArguments) {
  DeviceBuffer<float> d(16);
  DeviceBuffer<GpuSamplingParams> prm(1);
  DeviceBuffer<int32_t> out(1);
  EXPECT_EQ(Sample({.logits = d.get(), .logits_stride = 8, .batch = 1, .vocab = 16, .params = prm.get(),
                    .out_tokens = out.get()},
                   nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Sample({.logits = d.get(), .logits_stride = 16, .batch = 1, .vocab = 16, .out_tokens = out.get()}, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adore::kernels
