// A fixed-bucket histogram with Prometheus semantics (a value lands in the first bucket whose upper bound
// it does not exceed; the last bucket is +Inf), as the scheduler keeps its latency metrics. Not
// synchronized: the owner guards it (the scheduler observes under its mutex and hands out copies).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
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

  // The upper bound of the bucket that holds quantile q in (0, 1] (+Inf past the last bound; 0 when empty).
  double Quantile(double q) const {
    if (count == 0) return 0.0;
    const double rank = q * static_cast<double>(count);
    int64_t seen = 0;
    for (size_t i = 0; i < bounds.size(); ++i) {
      seen += counts[i];
      if (static_cast<double>(seen) >= rank) return bounds[i];
    }
    return std::numeric_limits<double>::infinity();
  }
};

}  // namespace adore
