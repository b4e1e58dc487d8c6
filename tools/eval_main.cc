// adore-eval: model-quality evaluations on the CPU engine, one subcommand each (today `ppl`: sliding-window
// perplexity of a text file, comparable with tools/hf_ppl.py).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/model_weights.h"
#include "common/status.h"
#include "common/tokenizer.h"
#include "nlohmann/json.hpp"
#include "worker/cpu_engine.h"
#include "worker/adore_controller.h"
#include "worker/perplexity.h"

// Flags are shared by all subcommands; each subcommand's usage line lists the ones it reads.
ABSL_FLAG(std::string, model, "models/SmolLM2-135M-Instruct.Q4_1.gguf", "GGUF file or HF checkpoint directory");
ABSL_FLAG(std::string, text, "", "ppl: UTF-8 text file to score (required)");
ABSL_FLAG(int64_t, context, 1024, "ppl: window length in tokens");
ABSL_FLAG(int64_t, stride, 512, "ppl: window step in tokens, in [1, context]");
ABSL_FLAG(int64_t, max_tokens, 0, "ppl: score only the first N tokens of the text; 0 = all");
ABSL_FLAG(std::string, json, "", "write the result as JSON to this file");
ABSL_FLAG(std::string, policy, "",
          "ppl: score token by token with this release policy active (full, window, heavy_hitter, adore); "
          "empty = the sliding-window recipe");
ABSL_FLAG(int64_t, kv_budget, 512, "ppl with --policy: KV slots per sequence (m)");
ABSL_FLAG(std::string, controller, "tools/adore/controller.bin", "ppl with --policy adore: controller weights");

namespace {

constexpr char kUsage[] =
    "adore-eval SUBCOMMAND [flags]\n"
    "subcommands:\n"
    "  ppl  --model M --text FILE --context N --stride S [--max_tokens T] [--json OUT]\n"
    "       perplexity of FILE with the Hugging Face sliding-window recipe";

int UsageError(const std::string& message) {
  std::fprintf(stderr, "adore-eval: %s\n%s\n", message.c_str(), kUsage);
  return 2;
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "adore-eval: %s\n", std::string(s.ToString()).c_str());
  return 1;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("cannot open %s", path));
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrFormat("error reading %s", path));
  return buf.str();
}

absl::Status WriteJson(const std::string& path, const nlohmann::json& j) {
  std::ofstream out(path);
  if (!out) return absl::PermissionDeniedError(absl::StrFormat("cannot write %s", path));
  out << j.dump(2) << "\n";
  if (!out) return absl::DataLossError(absl::StrFormat("error writing %s", path));
  return absl::OkStatus();
}

struct Context {
  std::string command;  // argv joined, recorded in JSON output
};

// `ppl`: tokenizes the whole file with the model's tokenizer, without BOS (SmolLM2's GGUF has
// add_bos_token = false, and HF's tokenizer adds none either, so the streams are comparable), then scores it.
absl::Status RunPerplexity(const Context& ctx) {
  const std::string text_path = absl::GetFlag(FLAGS_text);
  if (text_path.empty()) return absl::InvalidArgumentError("--text is required");
  adore::PerplexityOptions options;
  options.context = absl::GetFlag(FLAGS_context);
  options.stride = absl::GetFlag(FLAGS_stride);
  ADORE_RETURN_IF_ERROR(options.Validate());
  const int64_t max_tokens = absl::GetFlag(FLAGS_max_tokens);
  if (max_tokens < 0) return absl::InvalidArgumentError("--max_tokens must be >= 0");

  ADORE_ASSIGN_OR_RETURN(const std::string text, ReadFile(text_path));
  const std::string model_path = absl::GetFlag(FLAGS_model);
  std::fprintf(stderr, "loading %s ...\n", model_path.c_str());
  ADORE_ASSIGN_OR_RETURN(adore::ModelWeights weights, adore::LoadModelWeights(model_path));
  if (options.context > weights.config.max_context) {
    return absl::InvalidArgumentError(absl::StrFormat("--context %d exceeds the model's context of %d",
                                                      options.context, weights.config.max_context));
  }
  ADORE_ASSIGN_OR_RETURN(auto tokenizer, adore::Tokenizer::Create(weights.tokenizer));
  ADORE_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                         tokenizer->Encode(text, /*parse_special=*/true, /*add_bos=*/false));
  const int64_t num_text_tokens = static_cast<int64_t>(ids.size());
  if (max_tokens > 0 && num_text_tokens > max_tokens) ids.resize(max_tokens);
  if (ids.size() < 2) {
    return absl::InvalidArgumentError(absl::StrFormat("%s has %d tokens; need at least 2", text_path, ids.size()));
  }
  const std::string policy_name = absl::GetFlag(FLAGS_policy);
  adore::ReleaseConfig release;
  std::unique_ptr<adore::AdoreController> controller;
  if (!policy_name.empty()) {
    ADORE_ASSIGN_OR_RETURN(release.kind, adore::ParsePolicyKind(policy_name));
    release.kv_budget = absl::GetFlag(FLAGS_kv_budget);
    if (release.kind == adore::PolicyKind::kAdore) {
      ADORE_ASSIGN_OR_RETURN(controller, adore::AdoreController::Load(absl::GetFlag(FLAGS_controller)));
      release.controller = controller.get();
    }
    ADORE_RETURN_IF_ERROR(release.Validate(weights.config.max_context));
    if (static_cast<int64_t>(ids.size()) > weights.config.max_context) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "--policy scores one stream: %d tokens exceed the model's context of %d (use --max_tokens)", ids.size(),
          weights.config.max_context));
    }
  }
  const int64_t kv_rows = policy_name.empty() ? options.context
                          : release.kind == adore::PolicyKind::kFull
                              ? static_cast<int64_t>(ids.size())
                              : std::min<int64_t>(release.kv_budget, ids.size());
  ADORE_ASSIGN_OR_RETURN(auto engine, adore::CpuEngine::Create(std::move(weights), {.kv_rows = kv_rows}));

  std::fprintf(stderr, "%s: %d tokens (using %d), context %d, stride %d\n", text_path.c_str(),
               num_text_tokens, ids.size(), options.context, options.stride);
  const bool tty = isatty(fileno(stderr));
  const auto t0 = std::chrono::steady_clock::now();
  auto progress = [&](int64_t done, int64_t total, int64_t processed) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "%swindow %d/%d, %d tokens, %.1f tok/s%s", tty ? "\r" : "", done, total, processed,
                 s > 0 ? processed / s : 0.0, tty && done < total ? "" : "\n");
  };
  ADORE_ASSIGN_OR_RETURN(const adore::PerplexityResult r,
                         policy_name.empty() ? adore::ComputePerplexity(*engine, ids, options, progress)
                                             : adore::ComputeStreamingPerplexity(*engine, ids, release, progress));

  std::printf("ppl %.6f\nnll %.6f\ntokens_scored %d\n", r.ppl, r.mean_nll, r.num_scored);
  std::fprintf(stderr, "%d windows, %d tokens through the model in %.1f s (%.1f tok/s)\n", r.num_windows,
               r.tokens_processed, r.seconds, r.seconds > 0 ? r.tokens_processed / r.seconds : 0.0);
  if (const std::string json_path = absl::GetFlag(FLAGS_json); !json_path.empty()) {
    nlohmann::json j = {
        {"command", ctx.command},      {"engine", "adore-cpu"},
        {"model", model_path},         {"text", text_path},
        {"context", options.context},  {"stride", options.stride},
        {"max_tokens", max_tokens},    {"text_tokens", num_text_tokens},
        {"num_tokens", r.num_tokens},  {"tokens_scored", r.num_scored},
        {"windows", r.num_windows},    {"nll", r.mean_nll},
        {"ppl", r.ppl},                {"seconds", r.seconds},
        {"policy", policy_name.empty() ? "sliding-window" : policy_name},
        {"kv_budget", policy_name.empty() ? 0 : release.kv_budget},
    };
    ADORE_RETURN_IF_ERROR(WriteJson(json_path, j));
  }
  return absl::OkStatus();
}

struct Subcommand {
  const char* name;
  absl::Status (*run)(const Context&);
};

// Add evaluations here (e.g. release-policy quality) and to kUsage.
constexpr Subcommand kSubcommands[] = {
    {"ppl", RunPerplexity},
};

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() < 2) return UsageError("missing subcommand");
  if (positional.size() > 2) {
    return UsageError(absl::StrFormat("unexpected argument '%s'", positional[2]));
  }
  const std::string name = positional[1];
  Context ctx;
  ctx.command = absl::StrJoin(std::vector<std::string>(argv, argv + argc), " ");
  for (const Subcommand& sub : kSubcommands) {
    if (name != sub.name) continue;
    const absl::Status s = sub.run(ctx);
    return s.ok() ? 0 : Fail(s);
  }
  return UsageError(absl::StrFormat("unknown subcommand '%s'", name));
}
