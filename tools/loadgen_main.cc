// adore-loadgen: a gRPC load generator against a running adore-server. Keeps --concurrency streaming
// Generate calls in flight until --requests have finished and reports what a client sees: time to first
// token, inter-token latency, throughput; a human summary on stdout and, with --json, a bench/results
// file of one row. Progress on stderr. Exits 1 when any request (warmup included) failed, 2 when
// the run could not start (bad flags, server not answering).
//
//   adore-loadgen --server 127.0.0.1:50051 --requests 256 --concurrency 32 --prompt_tokens 512
//     --max_tokens 128 --warmup 8 --json /tmp/load.json --label "tp2 h200"
//   adore-loadgen --requests 500 --concurrency 500 --rounds 3 --server_pid $(pidof adore-server) ...  (soak:
//     per-round figures and the server's resident memory after each round)
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "tools/bench_util.h"
#include "tools/loadgen.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "adore-server address, host:port");
ABSL_FLAG(int32_t, requests, 100, "measured requests in total");
ABSL_FLAG(int32_t, concurrency, 8, "streams in flight at once; a new one starts as one finishes");
ABSL_FLAG(int32_t, prompt_tokens, 128,
          "prompt length: random token ids uniform in [0, vocab) (seeded by --seed and the request index); "
          "ignored with --prompt_text");
ABSL_FLAG(std::string, prompt_text, "", "the same text prompt for every request, instead of random token ids");
ABSL_FLAG(int32_t, max_tokens, 128, "sampling.max_tokens of every request");
ABSL_FLAG(std::string, policy, "", "release.policy: full, window, heavy_hitter, adore; empty = server default");
ABSL_FLAG(std::optional<int64_t>, kv_budget, std::nullopt, "release.kv_budget; unset = server default");
ABSL_FLAG(std::optional<int64_t>, rebuild, std::nullopt, "release.rebuild; unset = server default");
ABSL_FLAG(float, temperature, 0.0f, "sampling.temperature; 0 = greedy (above 0, seed = --seed + request index)");
ABSL_FLAG(uint64_t, seed, 1, "seed of the random prompts (and of sampling when --temperature > 0)");
ABSL_FLAG(int32_t, warmup, 0, "requests run first at the same concurrency and left out of the figures");
ABSL_FLAG(double, deadline_s, 0.0, "per-request deadline in seconds; 0 = none");
ABSL_FLAG(int32_t, channels, 0, "gRPC connections the streams are spread over; 0 = one per 64 streams");
ABSL_FLAG(double, connect_timeout_s, 30.0, "wait this long for the server to answer GetModelInfo (SERVING)");
ABSL_FLAG(double, progress_s, 5.0, "a progress line on stderr this often; 0 = none");
ABSL_FLAG(int32_t, rounds, 1, "run the measured requests this many times, back to back (the same prompts each round)");
ABSL_FLAG(int64_t, server_pid, 0,
          "the server's pid on this machine: report its resident memory (VmRSS, /proc/<pid>/status) after each round");
ABSL_FLAG(double, rss_settle_s, 5.0,
          "with --server_pid: before reading it, wait up to this long for the server's thread count to hold for 0.5 s");
ABSL_FLAG(std::string, json, "", "write the results (bench/results format, one row) to this file");
ABSL_FLAG(std::string, label, "", "free text copied into the JSON row");
ABSL_FLAG(std::string, commit, "", "commit recorded in the JSON; default: git rev-parse HEAD of the working directory");
ABSL_FLAG(std::string, machine, "", "machine recorded in the JSON; default: this machine's CPU");

namespace {

constexpr int kErrorsShown = 5;

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "adore-loadgen: %s\n", s.ToString().c_str());
  return 2;
}

// Full hash of HEAD of the working directory's checkout, else "unknown" (bench/results files record the
// full hash; bench::GitCommit gives the short one).
std::string FullGitCommit() {
  FILE* p = popen("git rev-parse HEAD 2>/dev/null", "r");
  if (p == nullptr) return "unknown";
  char buf[128] = {0};
  const bool got = std::fgets(buf, sizeof(buf), p) != nullptr;
  const int rc = pclose(p);
  std::string s = got ? std::string(absl::StripAsciiWhitespace(buf)) : "";
  return rc == 0 && !s.empty() ? s : "unknown";
}

// The command line as typed, each argument quoted when the shell would need it.
std::string CommandLine(int argc, char** argv) {
  std::string out;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    const bool plain = !a.empty() && a.find_first_of(" \t\n'\"\\$`*?;&|<>()[]{}!#~") == std::string::npos;
    if (!plain) {
      std::string q = "'";
      for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
      a = q + "'";
    }
    absl::StrAppend(&out, i ? " " : "", a);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "adore-loadgen [--server host:port] --requests N --concurrency C (--prompt_tokens P | --prompt_text T) "
      "--max_tokens G [--policy --kv_budget --rebuild] [--warmup K] [--json OUT --label L]");
  absl::ParseCommandLine(argc, argv);

  adore::loadgen::LoadOptions o;
  o.server = absl::GetFlag(FLAGS_server);
  o.requests = absl::GetFlag(FLAGS_requests);
  o.concurrency = absl::GetFlag(FLAGS_concurrency);
  o.prompt_tokens = absl::GetFlag(FLAGS_prompt_tokens);
  o.prompt_text = absl::GetFlag(FLAGS_prompt_text);
  o.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  if (const std::string p = absl::GetFlag(FLAGS_policy); !p.empty()) {
    auto policy = adore::loadgen::ParsePolicy(p);
    if (!policy.ok()) return Fail(policy.status());
    o.policy = *policy;
  }
  o.kv_budget = absl::GetFlag(FLAGS_kv_budget);
  o.rebuild = absl::GetFlag(FLAGS_rebuild);
  o.temperature = absl::GetFlag(FLAGS_temperature);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.warmup = absl::GetFlag(FLAGS_warmup);
  o.deadline_s = absl::GetFlag(FLAGS_deadline_s);
  o.channels = absl::GetFlag(FLAGS_channels);
  o.connect_timeout_s = absl::GetFlag(FLAGS_connect_timeout_s);
  o.progress_s = absl::GetFlag(FLAGS_progress_s);
  o.rounds = absl::GetFlag(FLAGS_rounds);
  o.server_pid = absl::GetFlag(FLAGS_server_pid);
  o.rss_settle_s = absl::GetFlag(FLAGS_rss_settle_s);

  auto report = adore::loadgen::RunLoad(o);
  if (!report.ok()) return Fail(report.status());
  std::fputs(adore::loadgen::FormatSummary(o, *report).c_str(), stdout);
  std::fflush(stdout);

  if (const std::string path = absl::GetFlag(FLAGS_json); !path.empty()) {
    std::string commit = absl::GetFlag(FLAGS_commit);
    if (commit.empty()) commit = FullGitCommit();
    std::string machine = absl::GetFlag(FLAGS_machine);
    if (machine.empty()) machine = adore::bench::CpuDescription();
    nlohmann::json out = {{"command", CommandLine(argc, argv)},
                          {"machine", machine},
                          {"commit", commit},
                          {"rows", nlohmann::json::array({adore::loadgen::ReportRow(o, *report, absl::GetFlag(FLAGS_label))})}};
    std::ofstream f(path);
    f << out.dump(2) << "\n";
    if (!f.good()) return Fail(absl::UnavailableError(absl::StrCat("--json: cannot write ", path)));
    std::fprintf(stderr, "adore-loadgen: wrote %s\n", path.c_str());
  }

  if (report->errors == 0 && report->warmup_errors == 0) return 0;
  int shown = 0;
  for (const adore::loadgen::RequestRecord& r : report->records) {
    if (r.ok) continue;
    if (shown++ == kErrorsShown) break;
    std::fprintf(stderr, "adore-loadgen: round %d request %d: %s\n", r.round, r.index, r.error.c_str());
  }
  if (report->warmup_errors > 0) std::fprintf(stderr, "adore-loadgen: %s\n", report->first_warmup_error.c_str());
  std::fprintf(stderr, "adore-loadgen: FAILED: %d of %d requests failed (%d of %d warmup requests)\n", report->errors,
               report->requests, report->warmup_errors, o.warmup);
  return 1;
}
