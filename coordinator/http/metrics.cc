// Prometheus text exposition of the scheduler's and the HTTP server's metrics.
#include "coordinator/http/metrics.h"

#include <charconv>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace adore::http {

std::string EscapeLabelValue(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatSampleValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return absl::StrCat(static_cast<int64_t>(v));
  char buf[64];  // the shortest text that round-trips; plain decimals where they stay short (0.0005, not 5e-04)
  const bool fixed = std::fabs(v) >= 1e-6;
  const auto [end, ec] = fixed ? std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::fixed)
                               : std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, end);
}

namespace {

std::string LabelText(const Labels& labels) {
  if (labels.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < labels.size(); ++i) {
    absl::StrAppend(&out, i ? "," : "", labels[i].first, "=\"", EscapeLabelValue(labels[i].second), "\"");
  }
  return out + "}";
}

}  // namespace

void Exposition::Family(const std::string& name, const std::string& type, const std::string& help) {
  std::string escaped;  // HELP text escapes backslash and newline
  for (char c : help) escaped += c == '\\' ? "\\\\" : c == '\n' ? "\\n" : std::string(1, c);
  absl::StrAppend(&out_, "# HELP ", name, " ", escaped, "\n# TYPE ", name, " ", type, "\n");
}

void Exposition::Sample(const std::string& name, const Labels& labels, double value) {
  absl::StrAppend(&out_, name, LabelText(labels), " ", FormatSampleValue(value), "\n");
}

void Exposition::HistogramSamples(const std::string& name, const Labels& labels, const Histogram& h) {
  int64_t cumulative = 0;
  for (size_t i = 0; i <= h.bounds.size(); ++i) {
    cumulative += i < h.counts.size() ? h.counts[i] : 0;
    Labels with_le = labels;
    with_le.emplace_back("le", i < h.bounds.size() ? FormatSampleValue(h.bounds[i]) : "+Inf");
    Sample(absl::StrCat(name, "_bucket"), with_le, static_cast<double>(cumulative));
  }
  Sample(absl::StrCat(name, "_sum"), labels, h.sum);
  Sample(absl::StrCat(name, "_count"), labels, static_cast<double>(h.count));
}

void HttpRequestCounter::Add(const std::string& route, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_[{route, status}];
}

std::map<std::pair<std::string, int>, int64_t> HttpRequestCounter::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counts_;
}

std::string RenderMetrics(const SchedulerStats& s, const MetricsContext& c) {
  Exposition e;
  auto scalar = [&](const std::string& name, const std::string& type, const std::string& help, double value) {
    e.Family(name, type, help);
    e.Sample(name, {}, value);
  };
  e.Family("adore_model_info", "gauge", "The served model (always 1).");
  e.Sample("adore_model_info", {{"model", c.model}}, 1);
  e.Family("adore_requests_total", "counter",
           "Generation requests the scheduler took or refused, by outcome: ok (finished), error (failed while "
           "running), cancelled (by the client or a disconnect), rejected (too large for the context or the KV "
           "pool, or the queue was full). Requests the API layer found invalid are in adore_http_requests_total.");
  e.Sample("adore_requests_total", {{"outcome", "ok"}}, static_cast<double>(s.completed));
  e.Sample("adore_requests_total", {{"outcome", "error"}}, static_cast<double>(s.failed));
  e.Sample("adore_requests_total", {{"outcome", "cancelled"}}, static_cast<double>(s.cancelled));
  e.Sample("adore_requests_total", {{"outcome", "rejected"}}, static_cast<double>(s.rejected));
  scalar("adore_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.",
         static_cast<double>(s.prompt_tokens));
  scalar("adore_completion_tokens_total", "counter", "Tokens generated.", static_cast<double>(s.completion_tokens));
  e.Family("adore_time_to_first_token_seconds", "histogram", "From submission to a request's first token.");
  e.HistogramSamples("adore_time_to_first_token_seconds", {}, s.ttft_s);
  e.Family("adore_inter_token_latency_seconds", "histogram", "Between a request's consecutive tokens.");
  e.HistogramSamples("adore_inter_token_latency_seconds", {}, s.inter_token_s);
  e.Family("adore_request_duration_seconds", "histogram", "From submission to a request's final event.");
  e.HistogramSamples("adore_request_duration_seconds", {}, s.request_s);
  scalar("adore_batch_size", "gauge", "Sequences in the latest step.", static_cast<double>(s.batch_size));
  scalar("adore_requests_running", "gauge", "Requests admitted to the running batch.", static_cast<double>(s.active));
  scalar("adore_queue_length", "gauge", "Requests waiting for admission.", static_cast<double>(s.queued));
  scalar("adore_kv_slots_used", "gauge", "KV slots the running sequences hold after the latest step.",
         static_cast<double>(s.kv_slots_used));
  scalar("adore_kv_slots_free", "gauge", "KV slots no sequence holds.", static_cast<double>(c.kv_rows - s.kv_slots_used));
  scalar("adore_kv_slots_reserved", "gauge",
         "KV slots admission sets aside for the running requests (prompt + max_tokens, or the kv_budget).",
         static_cast<double>(s.kv_rows_reserved));
  scalar("adore_tokens_released_total", "counter", "Tokens whose KV slots the release policies freed.",
         static_cast<double>(s.tokens_released));
  scalar("adore_tokens_rebuilt_total", "counter", "Released tokens recomputed into the KV cache.",
         static_cast<double>(s.tokens_rebuilt));
  scalar("adore_steps_total", "counter", "Steps run on the workers.", static_cast<double>(s.steps));
  scalar("adore_slot_map_checks_total", "counter",
         "Tensor parallelism: sequence-steps whose slot maps every rank reported equal.",
         static_cast<double>(s.slot_map_checks));
  e.Family("adore_worker_step_seconds", "histogram",
           "Step time per worker rank (embedded: the executor's step; external: the worker's own timing).");
  for (size_t rank = 0; rank < s.rank_step_s.size(); ++rank) {
    e.HistogramSamples("adore_worker_step_seconds", {{"rank", absl::StrCat(rank)}}, s.rank_step_s[rank]);
  }
  e.Family("adore_worker_collective_seconds_total", "counter",
           "Time per worker rank in collectives (tensor-parallel all-reduces, the release broadcast), as the "
           "worker timed it; 0 with one rank.");
  for (size_t rank = 0; rank < s.rank_comm_s.size(); ++rank) {
    e.Sample("adore_worker_collective_seconds_total", {{"rank", absl::StrCat(rank)}}, s.rank_comm_s[rank]);
  }
  if (c.http != nullptr) {
    e.Family("adore_http_requests_total", "counter", "HTTP requests served, by route and status code.");
    for (const auto& [key, n] : c.http->Snapshot()) {
      e.Sample("adore_http_requests_total", {{"route", key.first}, {"code", absl::StrCat(key.second)}},
               static_cast<double>(n));
    }
  }
  return e.text();
}

}  // namespace adore::http
