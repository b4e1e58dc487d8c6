// Prometheus text exposition (format 0.0.4) of adore-server's metrics, written by hand: the scheduler's
// counters, gauges and latency histograms (SchedulerStats), the KV pool's size and the HTTP server's own
// request counts. Metric names and meanings are listed in docs/HTTP.md.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/histogram.h"
#include "coordinator/scheduler.h"

namespace adore::http {

using Labels = std::vector<std::pair<std::string, std::string>>;

// Builds one exposition: each family's # HELP and # TYPE lines, then its samples.
class Exposition {
 public:
  // type: "counter", "gauge" or "histogram". Call before the family's samples.
  void Family(const std::string& name, const std::string& type, const std::string& help);
  void Sample(const std::string& name, const Labels& labels, double value);
  // name_bucket{le=...} (cumulative, ending with +Inf), name_sum and name_count.
  void HistogramSamples(const std::string& name, const Labels& labels, const Histogram& h);
  const std::string& text() const { return out_; }

 private:
  std::string out_;
};

// A label value with \, " and newline escaped; a sample value as Prometheus parses it (+Inf, -Inf, NaN,
// integers without exponent, otherwise the shortest text that round-trips).
std::string EscapeLabelValue(const std::string& value);
std::string FormatSampleValue(double value);

// HTTP requests served, by route and status code (thread-safe).
class HttpRequestCounter {
 public:
  void Add(const std::string& route, int status);
  std::map<std::pair<std::string, int>, int64_t> Snapshot() const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, int64_t> counts_;
};

struct MetricsContext {
  std::string model;      // served model id (adore_model_info)
  int64_t kv_rows = 0;    // KV slots the scheduler admits against (used + free)
  const HttpRequestCounter* http = nullptr;
};

// The whole /metrics page.
std::string RenderMetrics(const SchedulerStats& stats, const MetricsContext& context);

}  // namespace adore::http
