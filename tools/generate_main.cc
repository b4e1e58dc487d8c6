// adore-generate: embedded generation on the CPU engine; streams the continuation of a prompt to stdout.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/model_weights.h"
#include "common/stream_decoder.h"
#include "common/tokenizer.h"
#include "worker/cpu_engine.h"
#include "worker/generator.h"

ABSL_FLAG(std::string, model, "models/SmolLM2-135M-Instruct.Q4_1.gguf", "GGUF file or HF checkpoint directory");
ABSL_FLAG(std::string, prompt, "", "prompt text (required)");
ABSL_FLAG(bool, chat, false, "wrap the prompt as a user message in the model's chat template");
ABSL_FLAG(int32_t, max_tokens, 128, "maximum number of tokens to generate");
ABSL_FLAG(double, temperature, 0.0, "sampling temperature; 0 = greedy");
ABSL_FLAG(int32_t, top_k, 0, "keep the k most likely tokens; 0 = all");
ABSL_FLAG(double, top_p, 1.0, "nucleus sampling mass in (0, 1]");
ABSL_FLAG(uint64_t, seed, 0, "random seed for sampling");
ABSL_FLAG(bool, stats, true, "print timing to stderr at the end");

namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "adore-generate: %s\n", std::string(s.ToString()).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("adore-generate --model FILE --prompt TEXT [--chat] [--max_tokens N] ...");
  absl::ParseCommandLine(argc, argv);
  const std::string prompt = absl::GetFlag(FLAGS_prompt);
  if (prompt.empty()) return Fail(absl::InvalidArgumentError("--prompt is required and must be non-empty"));

  std::fprintf(stderr, "loading %s ...\n", absl::GetFlag(FLAGS_model).c_str());
  auto weights = adore::LoadModelWeights(absl::GetFlag(FLAGS_model));
  if (!weights.ok()) return Fail(weights.status());
  auto tokenizer = adore::Tokenizer::Create(weights->tokenizer);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  auto engine = adore::CpuEngine::Create(*std::move(weights));
  if (!engine.ok()) return Fail(engine.status());

  std::string text = prompt;
  if (absl::GetFlag(FLAGS_chat)) {
    auto rendered = (*tokenizer)->ApplyChatTemplate({{"user", prompt}}, /*add_generation_prompt=*/true);
    if (!rendered.ok()) return Fail(rendered.status());
    text = *rendered;
  }
  auto ids = (*tokenizer)->Encode(text);
  if (!ids.ok()) return Fail(ids.status());

  adore::GenerationRequest request;
  request.prompt = *ids;
  request.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  request.sampling.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
  request.sampling.top_k = absl::GetFlag(FLAGS_top_k);
  request.sampling.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
  request.sampling.seed = absl::GetFlag(FLAGS_seed);
  request.stop_ids = adore::EndOfGenerationIds(**tokenizer);

  adore::StreamDecoder decoder(**tokenizer);
  absl::Status stream_status;
  adore::GenerationStats stats;
  auto results = adore::GenerateBatch(**engine, std::span(&request, 1), [&](int32_t, int32_t token) {
    auto piece = decoder.Add(token);
    if (!piece.ok()) {
      stream_status = piece.status();
      return;
    }
    std::fwrite(piece->data(), 1, piece->size(), stdout);
    std::fflush(stdout);
  }, &stats);
  if (!results.ok()) return Fail(results.status());
  if (!stream_status.ok()) return Fail(stream_status);
  std::string tail = decoder.Flush();
  std::fwrite(tail.data(), 1, tail.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (absl::GetFlag(FLAGS_stats)) {
    std::fprintf(stderr, "[%ld prompt tokens in %.2f s, %ld generated in %.2f s (%.1f tok/s), finish: %s]\n",
                 static_cast<long>(stats.prompt_tokens), stats.prefill_seconds,
                 static_cast<long>(stats.generated_tokens), stats.decode_seconds,
                 stats.decode_seconds > 0 ? (stats.generated_tokens - 1) / stats.decode_seconds : 0.0,
                 (*results)[0].finish_reason.c_str());
  }
  return 0;
}
