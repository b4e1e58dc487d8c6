// Fuzz target: request validation of the public API. The input is a serialized adore.v1.GenerateRequest
// (inputs that do not parse are skipped); AdoreService::Convert (the proto to a RequestSpec, then
// BuildGenerateOptions: prompt tokenization and chat template, the server's defaults, sampling and release
// validation) must never crash and must return OK or an error from the API's set naming a field, and what
// it accepts goes to Scheduler::Submit (the scheduler's own checks: context, KV budget, stop strings),
// which must also answer with a status. The scheduler runs over a runner that fails every step, so an
// accepted request ends at once with UNAVAILABLE; the vocabulary is SmolLM2's when the model file is there.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "adore/v1/adore.pb.h"
#include "google/protobuf/stubs/logging.h"
#include "common/synthetic_model.h"
#include "coordinator/grpc/adore_service.h"
#include "coordinator/scheduler.h"
#include "fuzz/fuzz_util.h"
#include "worker/adore_controller.h"

namespace {

// Stands in for the engine: every step fails, so submitted requests end with UNAVAILABLE right away.
class FailingRunner final : public adore::StepRunner {
 public:
  absl::StatusOr<adore::WorkerStepResult> Step(const adore::WorkerStep&) override {
    return absl::UnavailableError("fuzz: no engine");
  }
};

struct Server {
  FailingRunner runner;
  std::unique_ptr<adore::AdoreController> controller;
  std::unique_ptr<adore::Scheduler> scheduler;
  std::unique_ptr<adore::AdoreService> service;
};

Server& GetServer() {
  static Server* s = [] {
    auto* s = new Server();  // never destroyed: the scheduler's thread runs until exit
    // Parsing logs an error for every string field with invalid UTF-8: normal for fuzz inputs.
    google::protobuf::SetLogHandler(nullptr);
    const adore::Tokenizer& tokenizer = adore::fuzz::VocabularyFor(0);
    adore::ModelConfig config = adore::SmolLM2_135MConfig();
    config.vocab_size = tokenizer.vocab_size();
    config.max_context = 2048;
    adore::ServiceDefaults defaults;
    defaults.max_tokens = 64;
    auto controller = adore::AdoreController::Load(std::string(ADORE_SOURCE_DIR) + "/tools/adore/controller.bin");
    if (controller.ok()) {
      s->controller = *std::move(controller);
      defaults.controller = s->controller.get();
    }
    adore::SchedulerOptions options;
    options.max_batch = 8;
    options.kv_rows = 4096;
    options.max_context = config.max_context;
    options.max_tokens_limit = 1024;
    options.max_queue = 64;
    s->scheduler = std::make_unique<adore::Scheduler>(s->runner, tokenizer, options);
    adore::ServiceInfo info;
    info.config = config;
    info.kv_rows = options.kv_rows;
    s->service = std::make_unique<adore::AdoreService>(*s->scheduler, tokenizer, info, defaults);
    return s;
  }();
  return *s;
}

bool IsApiError(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kResourceExhausted:
      return true;
    default:
      return false;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  adore::v1::GenerateRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  Server& server = GetServer();
  absl::StatusOr<adore::GenerateOptions> options = server.service->Convert(request);
  if (!options.ok()) {
    FUZZ_CHECK(IsApiError(options.status().code()), "Convert answered %s",
               options.status().ToString().c_str());
    FUZZ_CHECK(!options.status().message().empty(), "an error without a message");
    return 0;
  }
  FUZZ_CHECK(!options->prompt.empty(), "Convert accepted an empty prompt");
  const int32_t vocab = adore::fuzz::VocabularyFor(0).vocab_size();
  for (int32_t id : options->prompt) {
    FUZZ_CHECK(id >= 0 && id < vocab, "Convert accepted prompt id %d outside the vocabulary of %d", id, vocab);
  }
  absl::StatusOr<uint64_t> id = server.scheduler->Submit(*std::move(options), [](const adore::StreamEvent&) {});
  if (!id.ok()) {
    FUZZ_CHECK(IsApiError(id.status().code()), "Submit answered %s", id.status().ToString().c_str());
    return 0;
  }
  server.scheduler->Cancel(*id);
  return 0;
}
