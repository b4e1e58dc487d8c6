// The core of adore-loadgen: streaming Generate calls against a running adore-server at a fixed
// concurrency, timed on the client (time to first token, inter-token latency, throughput). A library so
// that tests/server/loadgen_test.cc drives the same code as the binary (tools/loadgen_main.cc).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "adore/v1/adore.pb.h"
#include "nlohmann/json.hpp"

namespace adore::loadgen {

struct LoadOptions {
  std::string server = "127.0.0.1:50051";  // host:port of adore-server
  int32_t requests = 100;                  // measured requests
  int32_t concurrency = 8;                 // streams in flight at once; a new one starts as one ends
  // The prompt: `prompt_text` for every request when non-empty, else `prompt_tokens` token ids drawn
  // uniformly from [0, vocab_size) (GetModelInfo), from a generator seeded by (seed, phase, request
  // index): different per request, the same on every run (std::uniform_int_distribution is libstdc++).
  int32_t prompt_tokens = 128;
  std::string prompt_text;
  int32_t max_tokens = 128;
  // Release settings; unset: the server's default (the request leaves the field unset).
  std::optional<v1::Policy> policy;
  std::optional<int64_t> kv_budget;
  std::optional<int64_t> rebuild;
  float temperature = 0.0f;  // 0 = greedy; above 0 every request gets sampling seed `seed + index`
  uint64_t seed = 1;
  int32_t warmup = 0;        // requests run (at the same concurrency) before the measured ones, not counted
  double deadline_s = 0.0;   // per-request deadline; 0 = none
  // Client channels (separate TCP connections) the streams are spread over; 0 = one per 64 streams, so
  // hundreds of streams do not queue behind one connection's HTTP/2 stream limit.
  int32_t channels = 0;
  double connect_timeout_s = 30.0;  // how long to wait for the server to be up and SERVING
  double progress_s = 5.0;          // a progress line on stderr this often; 0 = none
  // Rounds of the measured requests, back to back. Every round sends the same `requests` requests (the
  // same prompts and seeds), so rounds compare: a soak, or a leak check with `server_pid`.
  int32_t rounds = 1;
  // > 0: the server's process id on this machine; its resident memory (VmRSS in /proc/<pid>/status) is
  // read after the warmup and after each round (RoundReport::server_rss_kb), once the server has settled:
  // its thread count (a stream's handler thread ends after the stream) unchanged for 0.5 s, or
  // `rss_settle_s` passed.
  int64_t server_pid = 0;
  double rss_settle_s = 5.0;
  bool keep_output = false;  // keep each request's tokens and text in its record (RequestRecord::tokens)
};

// One measured request as the client saw it.
struct RequestRecord {
  int32_t index = 0;        // within its round
  int32_t round = 1;        // 1..LoadOptions::rounds
  grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
  bool ok = false;          // status OK with exactly one `done`, consistent with the deltas
  std::string error;        // why not ok (gRPC code name and message, or the protocol fault)
  int64_t prompt_tokens = 0;   // usage.prompt_tokens of the done message
  int64_t output_tokens = 0;   // tokens carried by the deltas
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
  double ttft_ms = -1.0;       // call start to the first token-carrying delta; -1 when none came
  double latency_ms = 0.0;     // call start to the end of the call
  // Inter-token latency, one sample per token of every token-carrying delta after the first: the gap
  // since the previous such delta divided by the delta's tokens (n tokens, n equal samples).
  std::vector<double> itl_ms;
  v1::AdoreStats adore;        // what the server's release policy did (done.adore)
  double server_ttft_ms = 0.0; // done.timing.ttft_ms (the server's own measure, from arrival)
  // With LoadOptions::keep_output: the deltas' tokens and text, concatenated.
  std::vector<int32_t> tokens;
  std::string text;
};

// Percentiles with linear interpolation between closest ranks (numpy's default); NaN with no samples.
struct Percentiles {
  double p50 = 0.0, p90 = 0.0, p99 = 0.0;
  int64_t count = 0;
};
Percentiles ComputePercentiles(std::vector<double> samples);

// What the server's GetStats says of the steps it ran during the measured rounds.
struct ServerCounters {
  int64_t steps = -1;
  double step_ms_mean = 0.0, comm_ms_per_step = 0.0;
  int64_t slot_map_checks = 0;
};
// The difference of two GetStats answers (`after` later); steps = -1 when either has no worker entries.
ServerCounters CountersBetween(const v1::ServerStats& before, const v1::ServerStats& after);

// One round of the measured requests.
struct RoundReport {
  int32_t round = 1;
  int32_t ok = 0, errors = 0;
  double wall_s = 0.0;
  Percentiles ttft_ms;
  int64_t server_rss_kb = -1;   // the server's VmRSS after the round; -1 without LoadOptions::server_pid
  int64_t server_threads = -1;  // its thread count then
};

struct LoadReport {
  v1::ModelInfo model;  // GetModelInfo of the server
  int32_t requests = 0, ok = 0, errors = 0;  // over all rounds (requests = LoadOptions::requests x rounds)
  int32_t warmup_errors = 0;       // failed warmup requests (not in the figures, but a failed run)
  std::string first_warmup_error;  // the first of them, as "warmup request I: ..."
  double wall_s = 0.0;  // from the first measured call's start to the last one's end, summed over rounds
  int64_t input_tokens = 0, output_tokens = 0;  // over the ok requests
  double input_tok_s = 0.0, output_tok_s = 0.0; // those over wall_s
  double mean_output_tokens = 0.0;              // over the ok requests
  double mean_prompt_tokens = 0.0;              // usage.prompt_tokens, over the ok requests
  int32_t finished_length = 0, finished_stop = 0;
  Percentiles ttft_ms, itl_ms, latency_ms, server_ttft_ms;
  // The release settings the server applied (done.adore of the first ok request; the requested values,
  // with ModelInfo's defaults for the unset ones, when none succeeded).
  std::string policy;
  int64_t kv_budget = 0, rebuild = 0;
  std::vector<RequestRecord> records;  // measured requests, by round, then index
  std::vector<RoundReport> rounds;     // per round, in order
  int64_t server_rss_kb_after_warmup = -1;  // with server_pid (and before round 1 when there is no warmup)
  // From GetStats before and after the measured rounds (steps < 0 when either call failed): the server's
  // successful steps in between, their mean time and their time in collectives per step (each the slowest
  // rank's), and the sequence-steps whose release decisions were compared across ranks.
  ServerCounters server;
};

// What /proc/<pid>/status says of a process of this machine: VmRSS (resident memory, kB) and Threads.
struct ProcessStatus {
  int64_t rss_kb = 0;
  int64_t threads = 0;
};
// NOT_FOUND when the process is gone or has no VmRSS line (a kernel thread).
absl::StatusOr<ProcessStatus> ReadProcessStatus(int64_t pid);

// The random prompt of request `index` in `phase` (0 warmup, 1 measured): `length` ids uniform in
// [0, vocab_size) from a generator seeded by (seed, phase, index), so the measured prompts do not depend
// on how many warmup requests came first.
std::vector<int32_t> RandomPrompt(uint64_t seed, int phase, int32_t index, int32_t length, int32_t vocab_size);

// "full", "window", "heavy_hitter", "adore" (adore-server's --default_policy names) <-> v1::Policy.
absl::StatusOr<v1::Policy> ParsePolicy(absl::string_view name);
std::string PolicyName(v1::Policy policy);

// Runs warmup then measured requests against options.server. Fails only when the run cannot start:
// INVALID_ARGUMENT for bad options (naming the field), or GetModelInfo's error when the server does not
// answer SERVING within connect_timeout_s. Failed requests are counted in the report, not returned.
absl::StatusOr<LoadReport> RunLoad(const LoadOptions& options);

// The human summary (several lines, ending in a newline).
std::string FormatSummary(const LoadOptions& options, const LoadReport& report);

// One row of a bench/results file: requests, concurrency, prompt_tokens, max_tokens, ok, errors, wall_s,
// output_tok_s, input_tok_s, ttft_ms_p50/p90/p99, itl_ms_p50/p90/p99, mean_output_tokens, policy,
// kv_budget, rebuild, label, plus the model, backend and tensor-parallel size the server reported, and
// steps, step_ms_mean, comm_ms_per_step, slot_map_checks (LoadReport::server; null without GetStats).
// Percentiles without samples are null. With several rounds or a server_pid also `rounds` and
// `per_round` (round, ok, errors, wall_s, ttft_ms_p50, ttft_ms_p99, server_rss_kb, server_threads) and
// `server_rss_kb_after_warmup`.
nlohmann::json ReportRow(const LoadOptions& options, const LoadReport& report, const std::string& label);

}  // namespace adore::loadgen
