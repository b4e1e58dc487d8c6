// Helpers shared by the benchmark programs (adore-bench, adore-bench-cuda): flag lists, timing and the
// provenance every bench/results file records (machine, commit, model label). Header-only: each tool is
// one translation unit.
#pragma once

#include <sched.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

namespace adore::bench {

using Clock = std::chrono::steady_clock;

inline double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// "1,8" -> {1, 8}; INVALID_ARGUMENT naming the flag for an empty list or a value that is not a positive int.
inline absl::StatusOr<std::vector<int32_t>> ParsePositiveList(const char* flag,
                                                              const std::vector<std::string>& items) {
  if (items.empty()) return absl::InvalidArgumentError(absl::StrFormat("--%s is empty", flag));
  std::vector<int32_t> out;
  for (const std::string& item : items) {
    int32_t v = 0;
    if (!absl::SimpleAtoi(item, &v) || v <= 0) {
      return absl::InvalidArgumentError(absl::StrFormat("--%s: '%s' is not a positive integer", flag, item));
    }
    out.push_back(v);
  }
  return out;
}

// "<cpu model name> (<n> cores)", the cores being those this process may run on.
inline std::string CpuDescription() {
  std::string name = "unknown cpu";
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (absl::StartsWith(line, "model name")) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) name = std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
      break;
    }
  }
  cpu_set_t set;
  const long cores = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : sysconf(_SC_NPROCESSORS_ONLN);
  return absl::StrFormat("%s (%d cores)", name, cores);
}

// Short hash of the checkout's HEAD (run from the repository), else "unknown".
inline std::string GitCommit() {
  FILE* p = popen("git rev-parse --short HEAD 2>/dev/null", "r");
  if (p == nullptr) return "unknown";
  char buf[64] = {0};
  const bool got = std::fgets(buf, sizeof(buf), p) != nullptr;
  const int rc = pclose(p);
  std::string s = got ? std::string(absl::StripAsciiWhitespace(buf)) : "";
  return rc == 0 && !s.empty() ? s : "unknown";
}

// "models/SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct Q4_1".
inline std::string ModelLabel(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  std::string base = path.substr(slash == std::string::npos ? 0 : slash + 1);
  if (absl::EndsWith(base, ".gguf")) base.resize(base.size() - 5);
  if (const size_t dot = base.find_last_of('.'); dot != std::string::npos) base[dot] = ' ';
  return base;
}

}  // namespace adore::bench
