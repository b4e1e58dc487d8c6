// Fuzz target: request validation of the OpenAI-compatible HTTP API (coordinator/http/openai.h). Input: byte 0
// picks the endpoint (even: /v1/completions, odd: /v1/chat/completions), the rest is the JSON request body.
// ParseRequest and BuildGenerateOptions (with the API's field names) must never crash or throw and must answer
// OK or an API error, and every error must turn into an OpenAI error object with a 4xx status that serializes
// (Dump) whatever bytes the message echoes. The vocabulary is SmolLM2's when the model file is there.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/synthetic_model.h"
#include "coordinator/http/openai.h"
#include "coordinator/request_options.h"
#include "fuzz/fuzz_util.h"

namespace {

void CheckError(const absl::Status& status, const char* stage) {
  FUZZ_CHECK(!status.message().empty(), "%s: an error without a message", stage);
  const adore::http::ApiError e = adore::http::ErrorFromStatus(status);
  FUZZ_CHECK(e.http_status >= 400 && e.http_status < 500, "%s: %s became HTTP %d", stage,
             status.ToString().c_str(), e.http_status);
  const std::string body = adore::http::Dump(adore::http::ErrorJson(e));
  FUZZ_CHECK(adore::IsValidUtf8(body), "%s: the error body is not valid UTF-8", stage);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  adore::fuzz::Input in(data, size);
  const auto endpoint =
      in.Byte() & 1 ? adore::http::Endpoint::kChatCompletions : adore::http::Endpoint::kCompletions;
  const std::string_view body = in.Rest();
  auto request = adore::http::ParseRequest(body, endpoint);
  if (!request.ok()) {
    FUZZ_CHECK(request.status().code() == absl::StatusCode::kInvalidArgument, "ParseRequest answered %s",
               request.status().ToString().c_str());
    CheckError(request.status(), "ParseRequest");
    return 0;
  }
  static const adore::ModelConfig config = [] {
    adore::ModelConfig c = adore::SmolLM2_135MConfig();
    c.vocab_size = adore::fuzz::VocabularyFor(0).vocab_size();
    c.max_context = 2048;
    return c;
  }();
  const adore::Tokenizer& tokenizer = adore::fuzz::VocabularyFor(0);
  static const std::vector<int32_t> stop_ids = adore::EndOfGenerationIds(tokenizer);
  adore::ServiceDefaults defaults;
  defaults.max_tokens = 16;
  auto options = adore::BuildGenerateOptions(request->spec, tokenizer, config, defaults, stop_ids,
                                             adore::http::OpenAiFields(endpoint));
  if (!options.ok()) {
    const absl::StatusCode c = options.status().code();
    FUZZ_CHECK(c == absl::StatusCode::kInvalidArgument || c == absl::StatusCode::kOutOfRange ||
                   c == absl::StatusCode::kFailedPrecondition,
               "BuildGenerateOptions answered %s", options.status().ToString().c_str());
    CheckError(options.status(), "BuildGenerateOptions");
    return 0;
  }
  FUZZ_CHECK(!options->prompt.empty(), "an empty prompt was accepted");
  for (int32_t id : options->prompt) {
    FUZZ_CHECK(id >= 0 && id < config.vocab_size, "prompt id %d outside the vocabulary", id);
  }
  return 0;
}
