// adore-bench: prefill and batched-decode throughput of the CPU engine over a grid of batch sizes and
// prompt lengths, printed as a table and optionally written as JSON (bench/ results format).
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <omp.h>

#include "absl/cleanup/cleanup.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/model_weights.h"
#include "common/status.h"
#include "nlohmann/json.hpp"
#include "tools/bench_util.h"
#include "worker/cpu_engine.h"

// OpenBLAS's thread setter, declared weak so the tool still links against another BLAS (then --threads
// only reaches OpenMP).
extern "C" void openblas_set_num_threads(int num_threads) __attribute__((weak));

ABSL_FLAG(std::string, model, "models/SmolLM2-135M-Instruct.Q4_1.gguf", "GGUF file or HF checkpoint directory");
ABSL_FLAG(std::vector<std::string>, batch, std::vector<std::string>({"1", "8"}), "batch sizes, comma-separated");
ABSL_FLAG(std::vector<std::string>, prompt, std::vector<std::string>({"128", "512"}),
          "prompt lengths in tokens, comma-separated");
ABSL_FLAG(int32_t, gen, 64, "decode steps per configuration (greedy, EOS ignored: every step has the full batch)");
ABSL_FLAG(int32_t, threads, 0, "OpenMP and OpenBLAS threads; 0 = their defaults");
ABSL_FLAG(int32_t, warmup, 1,
          "untimed rounds before each configuration: a full prefill plus min(gen, 4) decode steps");
ABSL_FLAG(int32_t, prefill_chunk, 512, "prefill at most this many tokens per sequence per forward call");
ABSL_FLAG(uint64_t, seed, 1, "seed of the random prompt tokens");
ABSL_FLAG(std::string, json, "", "write the results as JSON to this file");

namespace {

using adore::bench::Clock;
using adore::bench::ParsePositiveList;
using adore::bench::SecondsSince;

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "adore-bench: %s\n", std::string(s.ToString()).c_str());
  return 1;
}

// The 1-minute load average from /proc/loadavg; -1 when unreadable. Recorded with the results because
// other processes on the cores skew the numbers badly: OpenMP threads spin at the engine's per-layer
// barriers, so a descheduled thread stalls every step (OMP_WAIT_POLICY=passive softens this).
double LoadAverage() {
  std::ifstream in("/proc/loadavg");
  double load = -1.0;
  if (!(in >> load)) return -1.0;
  return load;
}

int32_t Argmax(const float* row, int64_t n) { return static_cast<int32_t>(std::max_element(row, row + n) - row); }

struct BenchRow {
  int32_t batch = 0, prompt = 0, gen = 0;
  double prefill_seconds = 0.0, decode_seconds = 0.0;
};

// One round: prefill `batch` random prompts of `prompt` tokens together (chunked per sequence), then
// `gen` greedy decode steps over the whole batch. Sequences are released before returning.
absl::Status RunRound(adore::CpuEngine& engine, int32_t batch, int32_t prompt, int32_t gen, int32_t chunk,
                      uint64_t seed, bool progress, BenchRow* row) {
  const int64_t vocab = engine.config().vocab_size;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab) - 1);
  std::vector<std::vector<int32_t>> prompts(batch, std::vector<int32_t>(prompt));
  for (auto& p : prompts) std::generate(p.begin(), p.end(), [&] { return dist(rng); });
  std::vector<adore::SequenceKv> seqs(batch);
  absl::Cleanup release = [&] {
    for (adore::SequenceKv& s : seqs) engine.Release(s);
  };

  std::vector<float> logits;
  std::vector<adore::ForwardItem> items(batch);
  auto t0 = Clock::now();
  for (int32_t off = 0; off < prompt; off += chunk) {
    const int32_t len = std::min(chunk, prompt - off);
    for (int32_t b = 0; b < batch; ++b) {
      items[b] = adore::ForwardItem{&seqs[b], std::span<const int32_t>(prompts[b]).subspan(off, len)};
    }
    ADORE_RETURN_IF_ERROR(engine.Forward(std::span<adore::ForwardItem>(items), &logits));
  }
  row->prefill_seconds = SecondsSince(t0);

  std::vector<int32_t> last(batch);
  for (int32_t b = 0; b < batch; ++b) last[b] = Argmax(&logits[b * vocab], vocab);
  t0 = Clock::now();
  for (int32_t step = 0; step < gen; ++step) {
    for (int32_t b = 0; b < batch; ++b) items[b] = adore::ForwardItem{&seqs[b], std::span<const int32_t>(&last[b], 1)};
    ADORE_RETURN_IF_ERROR(engine.Forward(std::span<adore::ForwardItem>(items), &logits));
    for (int32_t b = 0; b < batch; ++b) last[b] = Argmax(&logits[b * vocab], vocab);
    if (progress && ((step + 1) % 16 == 0 || step + 1 == gen)) {
      std::fprintf(stderr, "  decode step %d/%d (%.1f ms/step)\n", step + 1, gen,
                   1e3 * SecondsSince(t0) / (step + 1));
    }
  }
  row->decode_seconds = SecondsSince(t0);
  row->batch = batch;
  row->prompt = prompt;
  row->gen = gen;
  return absl::OkStatus();
}

absl::Status Run(int argc, char** argv) {
  ADORE_ASSIGN_OR_RETURN(const std::vector<int32_t> batches, ParsePositiveList("batch", absl::GetFlag(FLAGS_batch)));
  ADORE_ASSIGN_OR_RETURN(const std::vector<int32_t> prompts, ParsePositiveList("prompt", absl::GetFlag(FLAGS_prompt)));
  const int32_t gen = absl::GetFlag(FLAGS_gen), warmup = absl::GetFlag(FLAGS_warmup);
  const int32_t threads = absl::GetFlag(FLAGS_threads), chunk = absl::GetFlag(FLAGS_prefill_chunk);
  if (gen <= 0) return absl::InvalidArgumentError("--gen must be > 0");
  if (warmup < 0) return absl::InvalidArgumentError("--warmup must be >= 0");
  if (threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  if (chunk <= 0) return absl::InvalidArgumentError("--prefill_chunk must be > 0");
  if (threads > 0) {
    omp_set_num_threads(threads);
    if (openblas_set_num_threads != nullptr) openblas_set_num_threads(threads);
  }

  const std::string model_path = absl::GetFlag(FLAGS_model);
  std::fprintf(stderr, "loading %s ...\n", model_path.c_str());
  ADORE_ASSIGN_OR_RETURN(adore::ModelWeights weights, adore::LoadModelWeights(model_path));
  const int32_t max_prompt = *std::max_element(prompts.begin(), prompts.end());
  const int32_t max_batch = *std::max_element(batches.begin(), batches.end());
  if (max_prompt + gen > weights.config.max_context) {
    return absl::InvalidArgumentError(absl::StrFormat("prompt %d + gen %d exceeds the model's context of %d",
                                                      max_prompt, gen, weights.config.max_context));
  }
  const int64_t kv_rows = static_cast<int64_t>(max_batch) * (max_prompt + gen);
  ADORE_ASSIGN_OR_RETURN(auto engine, adore::CpuEngine::Create(std::move(weights), {.kv_rows = kv_rows}));

  const std::string machine = adore::bench::CpuDescription(), commit = adore::bench::GitCommit(),
                    model = adore::bench::ModelLabel(model_path);
  const int32_t used_threads = omp_get_max_threads();
  const double load_before = LoadAverage();
  std::fprintf(stderr, "%s, commit %s, %d threads, load average %.2f\n", machine.c_str(), commit.c_str(),
               used_threads, load_before);
  nlohmann::json rows = nlohmann::json::array();
  std::printf("%-10s %6s %7s %5s %14s %14s %10s\n", "engine", "batch", "prompt", "gen", "prefill_tok/s",
              "decode_tok/s", "step_ms");
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  for (int32_t batch : batches) {
    for (int32_t prompt : prompts) {
      std::fprintf(stderr, "[batch %d, prompt %d, gen %d]\n", batch, prompt, gen);
      BenchRow row;
      for (int32_t w = 0; w < warmup; ++w) {
        std::fprintf(stderr, "  warmup %d/%d\n", w + 1, warmup);
        ADORE_RETURN_IF_ERROR(RunRound(*engine, batch, prompt, std::min(gen, 4), chunk, seed, false, &row));
      }
      ADORE_RETURN_IF_ERROR(RunRound(*engine, batch, prompt, gen, chunk, seed, true, &row));
      const double prefill_tok_s = static_cast<double>(batch) * prompt / row.prefill_seconds;
      const double decode_tok_s = static_cast<double>(batch) * gen / row.decode_seconds;
      const double step_ms = 1e3 * row.decode_seconds / gen;
      std::printf("%-10s %6d %7d %5d %14.1f %14.1f %10.2f\n", "adore-cpu", batch, prompt, gen, prefill_tok_s,
                  decode_tok_s, step_ms);
      std::fflush(stdout);
      rows.push_back({{"engine", "adore-cpu"}, {"model", model}, {"batch", batch}, {"prompt", prompt},
                      {"gen", gen}, {"decode_tok_s", decode_tok_s}, {"prefill_tok_s", prefill_tok_s},
                      {"step_ms", step_ms}, {"threads", used_threads}});
    }
  }

  if (const std::string path = absl::GetFlag(FLAGS_json); !path.empty()) {
    const nlohmann::json j = {{"command", absl::StrJoin(std::vector<std::string>(argv, argv + argc), " ")},
                              {"machine", machine},
                              {"commit", commit},
                              {"load_avg_1m", {load_before, LoadAverage()}},  // at start and end
                              {"rows", rows}};
    std::ofstream out(path);
    out << j.dump(2) << "\n";
    if (!out) return absl::PermissionDeniedError(absl::StrFormat("cannot write %s", path));
    std::fprintf(stderr, "wrote %s\n", path.c_str());
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "adore-bench --model PATH --batch 1,8 --prompt 128,512 --gen 64 [--threads N] [--json OUT.json] "
      "[--warmup 1]");
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    return Fail(absl::InvalidArgumentError(absl::StrFormat("unexpected argument '%s'", positional[1])));
  }
  const absl::Status s = Run(argc, argv);
  return s.ok() ? 0 : Fail(s);
}
