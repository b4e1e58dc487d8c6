// A fixed-bucket histogram with Prometheus semantics (a value lands in the first bucket whose upper bound
// it does not exceed; the last bucket is +Inf), as the scheduler keeps its latency metrics. Not
// synchronized: the owner guards it (the scheduler observes under its mutex and hands out copies).
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace adore {

struct Histogram {
  std::vector<double> bounds;   // bucket upper bounds, strictly increasing (+Inf implied after the last)
  std::vector<int64_t> counts;  // observations per bucket (not cumulative): bounds.size() + 1
  double sum = 0.0;
  int64_t count = 0;

  Histogram() = default;
  explicit Histogram(std::vector<double> upper_bounds)
      : bounds(std::move(upper_bounds)), counts(bounds.size() + 1, 0) {}

  void Observe(double v) {
    counts[std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin()] += 1;
    sum += v;
    ++count;
  }
};

}  // namespace adore
