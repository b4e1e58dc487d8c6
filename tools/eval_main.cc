// adore-eval: model-quality evaluations, one subcommand each: `ppl` (sliding-window perplexity of a text file,
// comparable with tools/hf_ppl.py, or token by token with one release policy) and `quality` (the release
// policies' grid: streaming perplexity and greedy continuations, on the CPU or the CUDA engine).
#include <unistd.h>

#include <algorithm>
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
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/model_weights.h"
#include "common/status.h"
#include "common/tokenizer.h"
#include "nlohmann/json.hpp"
#include "worker/cpu_engine.h"
#include "worker/adore_controller.h"
#include "worker/generator.h"
#include "worker/perplexity.h"
#if ADORE_WITH_CUDA
#include "worker/cuda/cuda_engine.h"
#endif

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
ABSL_FLAG(std::string, controller, "tools/adore/controller.bin", "adore policy: controller weights");
ABSL_FLAG(std::string, backend, "cpu", "quality: engine, cpu or cuda (cuda where the CUDA backend is built)");
ABSL_FLAG(int64_t, streams, 4, "quality: perplexity streams of --context tokens each (disjoint text segments)");
ABSL_FLAG(std::vector<std::string>, policies, std::vector<std::string>({"full", "window", "heavy_hitter", "adore"}),
          "quality: release policies to compare");
ABSL_FLAG(std::vector<std::string>, budgets, std::vector<std::string>({"256", "512", "1024"}),
          "quality: KV budgets m of the releasing policies");
ABSL_FLAG(std::vector<std::string>, rebuilds, std::vector<std::string>({"0", "8", "32"}),
          "quality: rebuild counts R of the adore policy");
ABSL_FLAG(std::vector<std::string>, recents, std::vector<std::string>({"0"}),
          "quality: protected recent window of adore and heavy_hitter, one config per value: N tokens, or P% "
          "of m; 0 = the policy's default (adore: the controller's, heavy_hitter: m / 2)");
ABSL_FLAG(bool, ppl_task, true, "quality: run the perplexity task (false: continuations only)");
ABSL_FLAG(int64_t, gen_prompts, 0, "quality: greedy-continuation prompts (0 = skip the generation task)");
ABSL_FLAG(int64_t, gen_prompt_tokens, 1536, "quality: tokens per continuation prompt");
ABSL_FLAG(int64_t, gen_tokens, 256, "quality: greedy tokens per continuation");
ABSL_FLAG(int64_t, policy_prefill_chunk, adore::kDefaultPolicyPrefillChunk,
          "quality: continuation prompts under a releasing policy go in chunks of this many tokens, bounded by the "
          "engine (the cuda engine takes one token per call) and the policy; 1 = token by token");
ABSL_FLAG(std::string, gen_out, "", "quality: write the continuations (ids and text per config) to this JSON file");

namespace {

constexpr char kUsage[] =
    "adore-eval SUBCOMMAND [flags]\n"
    "subcommands:\n"
    "  ppl  --model M --text FILE --context N --stride S [--max_tokens T] [--json OUT]\n"
    "       perplexity of FILE with the Hugging Face sliding-window recipe\n"
    "       (--policy P --kv_budget M: token by token with a release policy active)\n"
    "  quality  --model M --text FILE --backend cpu|cuda --context N --streams S --policies ... --budgets ...\n"
    "           --rebuilds ... [--gen_prompts K --gen_prompt_tokens P --gen_tokens G --gen_out FILE] --json OUT\n"
    "       every policy x budget (x rebuild for adore): perplexity of S streams of N tokens scored token by\n"
    "       token with the policy active, and greedy continuations of K prompts (compare with full's)";

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

absl::StatusOr<std::vector<int64_t>> ParseIntList(const char* flag, const std::vector<std::string>& items) {
  std::vector<int64_t> out;
  for (const std::string& s : items) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(s, &v) || v < 0) {
      return absl::InvalidArgumentError(absl::StrFormat("--%s: '%s' is not a non-negative integer", flag, s));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrFormat("--%s is empty", flag));
  return out;
}

// `controller` (may be null): on the cuda backend, adore runs with that controller on the GPU.
absl::StatusOr<std::unique_ptr<adore::Engine>> CreateEngine(const std::string& backend, adore::ModelWeights weights,
                                                            int64_t kv_rows, int64_t max_batch,
                                                            const adore::AdoreController* controller = nullptr) {
  if (backend == "cpu") {
    ADORE_ASSIGN_OR_RETURN(auto engine, adore::CpuEngine::Create(std::move(weights), {.kv_rows = kv_rows}));
    return std::unique_ptr<adore::Engine>(std::move(engine));
  }
  if (backend == "cuda") {
#if ADORE_WITH_CUDA
    adore::CudaEngineOptions o;
    o.max_batch = std::max<int64_t>(max_batch, 1);
    o.max_tokens = std::max<int64_t>(2048, o.max_batch * (1 + adore::kMaxRebuild));
    o.max_logit_rows = o.max_batch;
    o.kv_rows = kv_rows;
    o.max_slots = 4 * kv_rows + o.max_tokens;  // policy items are bounded by 2 x max(slots, budget) each
    o.adore_controller = controller;
    o.adore_lanes = o.max_batch;
    ADORE_ASSIGN_OR_RETURN(auto engine, adore::CudaEngine::Create(weights, o));
    return std::unique_ptr<adore::Engine>(std::move(engine));
#else
    return absl::FailedPreconditionError("--backend cuda: this build has no CUDA backend");
#endif
  }
  return absl::InvalidArgumentError(absl::StrFormat("--backend: '%s' is not cpu or cuda", backend));
}

// One point of the quality grid.
struct QualityConfig {
  adore::PolicyKind kind;
  int64_t m = 0, rebuild = 0;
  int64_t recent = 0;  // 0 = the policy's default
  std::string Key() const {
    if (kind == adore::PolicyKind::kFull) return "full";
    std::string key = absl::StrFormat("%s/m%d/R%d", adore::PolicyKindName(kind), m, rebuild);
    if (recent > 0) absl::StrAppend(&key, "/w", recent);
    return key;
  }
  adore::ReleaseConfig Release(const adore::AdoreController* controller) const {
    return {.kind = kind, .kv_budget = m, .rebuild = rebuild, .num_recent = recent, .controller = controller};
  }
};

// --recents values for budget m: "N" tokens or "P%" of m (0 = the policy's default).
absl::StatusOr<std::vector<int64_t>> RecentWindows(const std::vector<std::string>& values, int64_t m) {
  std::vector<int64_t> out;
  for (const std::string& v : values) {
    const bool percent = !v.empty() && v.back() == '%';
    int64_t n = 0;
    if (!absl::SimpleAtoi(percent ? v.substr(0, v.size() - 1) : v, &n) || n < 0 ||
        (percent && n >= 100)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("--recents: \"%s\" is not a token count >= 0 or a percentage in [0, 100)", v));
    }
    out.push_back(percent ? m * n / 100 : n);
  }
  return out;
}

// `quality`: the held-out text is tokenized once; perplexity streams are its first `streams` segments of
// `context` tokens; continuation prompts are `gen_prompts` segments of `gen_prompt_tokens` spread evenly
// over the text. Every config runs the same streams and prompts; `full` runs first as the reference.
absl::Status RunQuality(const Context& ctx) {
  const std::string text_path = absl::GetFlag(FLAGS_text);
  if (text_path.empty()) return absl::InvalidArgumentError("--text is required");
  const int64_t context = absl::GetFlag(FLAGS_context), streams = absl::GetFlag(FLAGS_streams);
  const int64_t gen_prompts = absl::GetFlag(FLAGS_gen_prompts), gen_prompt_tokens = absl::GetFlag(FLAGS_gen_prompt_tokens);
  const int64_t gen_tokens = absl::GetFlag(FLAGS_gen_tokens);
  if (context < 2 || streams < 1 || gen_prompts < 0 || gen_prompt_tokens < 1 || gen_tokens < 1) {
    return absl::InvalidArgumentError("--context >= 2, --streams >= 1, --gen_prompts >= 0, --gen_prompt_tokens >= 1 "
                                      "and --gen_tokens >= 1 are required");
  }
  ADORE_ASSIGN_OR_RETURN(const std::vector<int64_t> budgets, ParseIntList("budgets", absl::GetFlag(FLAGS_budgets)));
  ADORE_ASSIGN_OR_RETURN(const std::vector<int64_t> rebuilds, ParseIntList("rebuilds", absl::GetFlag(FLAGS_rebuilds)));
  std::vector<QualityConfig> configs = {{adore::PolicyKind::kFull}};
  std::unique_ptr<adore::AdoreController> controller;
  for (const std::string& name : absl::GetFlag(FLAGS_policies)) {
    ADORE_ASSIGN_OR_RETURN(const adore::PolicyKind kind, adore::ParsePolicyKind(name));
    if (kind == adore::PolicyKind::kFull) continue;
    if (kind == adore::PolicyKind::kAdore && controller == nullptr) {
      ADORE_ASSIGN_OR_RETURN(controller, adore::AdoreController::Load(absl::GetFlag(FLAGS_controller)));
    }
    for (int64_t m : budgets) {
      std::vector<int64_t> recents = {0};
      if (kind == adore::PolicyKind::kAdore || kind == adore::PolicyKind::kHeavyHitter) {
        ADORE_ASSIGN_OR_RETURN(recents, RecentWindows(absl::GetFlag(FLAGS_recents), m));
      }
      for (int64_t r : kind == adore::PolicyKind::kAdore ? rebuilds : std::vector<int64_t>{0}) {
        for (int64_t w : recents) configs.push_back({kind, m, r, w});
      }
    }
  }

  ADORE_ASSIGN_OR_RETURN(const std::string text, ReadFile(text_path));
  const std::string model_path = absl::GetFlag(FLAGS_model);
  std::fprintf(stderr, "loading %s ...\n", model_path.c_str());
  ADORE_ASSIGN_OR_RETURN(adore::ModelWeights weights, adore::LoadModelWeights(model_path));
  const adore::ModelConfig mc = weights.config;
  if (context > mc.max_context || gen_prompt_tokens + gen_tokens > mc.max_context) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--context %d or --gen_prompt_tokens + --gen_tokens %d exceed the model's context of %d", context,
        gen_prompt_tokens + gen_tokens, mc.max_context));
  }
  for (const QualityConfig& q : configs) ADORE_RETURN_IF_ERROR(q.Release(controller.get()).Validate(mc.max_context));
  ADORE_ASSIGN_OR_RETURN(auto tokenizer, adore::Tokenizer::Create(weights.tokenizer));
  ADORE_ASSIGN_OR_RETURN(const std::vector<int32_t> ids,
                         tokenizer->Encode(text, /*parse_special=*/false, /*add_bos=*/false));
  if (static_cast<int64_t>(ids.size()) < streams * context ||
      static_cast<int64_t>(ids.size()) < gen_prompt_tokens + gen_tokens) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s has %d tokens: fewer than --streams x --context = %d or one prompt plus its continuation", text_path,
        ids.size(), streams * context));
  }
  std::vector<std::span<const int32_t>> stream_spans;
  for (int64_t b = 0; b < streams; ++b) stream_spans.push_back(std::span<const int32_t>(ids).subspan(b * context, context));
  std::vector<adore::GenerationRequest> requests(gen_prompts);
  const int64_t spread = gen_prompts > 1 ? (static_cast<int64_t>(ids.size()) - gen_prompt_tokens) / (gen_prompts - 1) : 0;
  for (int64_t k = 0; k < gen_prompts; ++k) {
    const int64_t begin = std::min<int64_t>(k * spread, ids.size() - gen_prompt_tokens);
    requests[k].prompt.assign(ids.begin() + begin, ids.begin() + begin + gen_prompt_tokens);
    requests[k].max_tokens = static_cast<int32_t>(gen_tokens);  // greedy, EOS not a stop: equal lengths
  }

  const std::string backend = absl::GetFlag(FLAGS_backend);
  const int64_t kv_rows = std::max(streams * context, gen_prompts * (gen_prompt_tokens + gen_tokens)) + 64;
  ADORE_ASSIGN_OR_RETURN(auto engine,
                         CreateEngine(backend, std::move(weights), kv_rows, std::max(streams, gen_prompts), controller.get()));
  std::fprintf(stderr, "%s: %d tokens; %d streams x %d tokens; %d prompts x %d + %d; %d configs on %s\n",
               text_path.c_str(), ids.size(), streams, context, gen_prompts, gen_prompt_tokens, gen_tokens,
               configs.size(), engine->backend());

  nlohmann::json rows = nlohmann::json::array(), gen_out = nlohmann::json::object();
  const std::string json_path = absl::GetFlag(FLAGS_json), gen_path = absl::GetFlag(FLAGS_gen_out);
  // Rewritten after every config, so an interrupted run keeps what it finished.
  auto save = [&]() -> absl::Status {
    if (!json_path.empty()) {
      ADORE_RETURN_IF_ERROR(WriteJson(json_path, {{"command", ctx.command}, {"model", model_path},
                                                  {"text", text_path}, {"rows", rows}}));
    }
    if (!gen_path.empty()) ADORE_RETURN_IF_ERROR(WriteJson(gen_path, gen_out));
    return absl::OkStatus();
  };
  double full_ppl = 0.0;
  const bool tty = isatty(fileno(stderr));
  for (const QualityConfig& q : configs) {
    const adore::ReleaseConfig rc = q.Release(controller.get());
    const auto t0 = std::chrono::steady_clock::now();
    auto progress = [&](int64_t done, int64_t total, int64_t) {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "%s%s: ppl %d/%d tokens, %.0f tok/s%s", tty ? "\r" : "", q.Key().c_str(), done, total,
                   s > 0 ? done / s : 0.0, tty && done < total ? "" : "\n");
    };
    if (absl::GetFlag(FLAGS_ppl_task)) {
    ADORE_ASSIGN_OR_RETURN(const adore::PerplexityResult r,
                           adore::ComputeStreamingPerplexityBatch(*engine, stream_spans, rc, progress));
    if (q.kind == adore::PolicyKind::kFull) full_ppl = r.ppl;
    rows.push_back({{"task", "ppl"}, {"backend", engine->backend()}, {"policy", adore::PolicyKindName(q.kind)},
                    {"m", q.m}, {"R", q.rebuild}, {"recent", q.recent}, {"context", context}, {"streams", streams},
                    {"tokens_scored", r.num_scored}, {"nll", r.mean_nll}, {"ppl", r.ppl},
                    {"ppl_vs_full", full_ppl > 0 ? r.ppl / full_ppl - 1.0 : 0.0}, {"released", r.released},
                    {"rebuilt", r.rebuilt}, {"seconds", r.seconds}});
    std::printf("%-24s ppl %8.4f (%+.2f%% vs full)  released %lld rebuilt %lld  %.1f s\n", q.Key().c_str(), r.ppl,
                100.0 * (full_ppl > 0 ? r.ppl / full_ppl - 1.0 : 0.0), static_cast<long long>(r.released),
                static_cast<long long>(r.rebuilt), r.seconds);
    std::fflush(stdout);
    ADORE_RETURN_IF_ERROR(save());
    }
    if (gen_prompts == 0) continue;
    std::vector<adore::GenerationRequest> reqs = requests;
    for (adore::GenerationRequest& g : reqs) g.release = rc;
    adore::GenerationStats gs;
    ADORE_ASSIGN_OR_RETURN(const std::vector<adore::GenerationResult> out,
                           adore::GenerateBatch(*engine, reqs, nullptr, &gs, /*prefill_chunk=*/512,
                                                absl::GetFlag(FLAGS_policy_prefill_chunk)));
    nlohmann::json texts = nlohmann::json::array(), token_ids = nlohmann::json::array();
    int64_t released = 0, rebuilt = 0;
    for (const adore::GenerationResult& g : out) {
      ADORE_ASSIGN_OR_RETURN(const std::string t, tokenizer->Decode(g.tokens, /*skip_special=*/false));
      texts.push_back(t);
      token_ids.push_back(g.tokens);
      released += g.release_stats.released;
      rebuilt += g.release_stats.rebuilt;
    }
    gen_out[q.Key()] = {{"policy", adore::PolicyKindName(q.kind)}, {"m", q.m}, {"R", q.rebuild}, {"recent", q.recent},
                        {"texts", texts}, {"tokens", token_ids}};
    rows.push_back({{"task", "generation"}, {"backend", engine->backend()}, {"policy", adore::PolicyKindName(q.kind)},
                    {"m", q.m}, {"R", q.rebuild}, {"recent", q.recent}, {"prompts", gen_prompts}, {"prompt_tokens", gen_prompt_tokens},
                    {"gen_tokens", gen_tokens}, {"released", released}, {"rebuilt", rebuilt},
                    {"policy_prefill_chunk", q.kind == adore::PolicyKind::kFull
                                                 ? 0
                                                 : std::min(absl::GetFlag(FLAGS_policy_prefill_chunk),
                                                            engine->max_policy_tokens_per_item())},
                    {"seconds", gs.prefill_seconds + gs.decode_seconds}});
    std::printf("%-24s generation: %lld prompts, released %lld rebuilt %lld, %.1f s\n", q.Key().c_str(),
                static_cast<long long>(gen_prompts), static_cast<long long>(released),
                static_cast<long long>(rebuilt), gs.prefill_seconds + gs.decode_seconds);
    std::fflush(stdout);
    ADORE_RETURN_IF_ERROR(save());
  }
  return absl::OkStatus();
}

// Add evaluations here and to kUsage.
constexpr Subcommand kSubcommands[] = {
    {"ppl", RunPerplexity},
    {"quality", RunQuality},
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
