// The public APIs' common request conversion: the gRPC service (adore.v1.Adore) and the OpenAI-compatible
// HTTP server both describe a request as a RequestSpec (what the client set, protocol-neutral) and turn it
// into the scheduler's GenerateOptions here: prompt tokenization (text, token ids or chat through the
// model's template), the server's defaults for what the client left unset, and validation whose errors
// name the field the way the protocol spells it (RequestFields).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/tokenizer.h"
#include "coordinator/scheduler.h"
#include "worker/adore_controller.h"
#include "worker/release_policy.h"

namespace adore {

// What the server uses where a request leaves a field unset.
struct ServiceDefaults {
  int32_t max_tokens = 256;         // max_tokens when unset
  // When unset on the OpenAI-compatible HTTP API (OpenAI's default). adore.v1 documents 0 (greedy) for an
  // unset SamplingParams.temperature; AdoreService applies that.
  float temperature = 1.0f;
  ReleaseConfig release;            // policy / kv_budget / rebuild when the request leaves them unset
  const AdoreController* controller = nullptr;  // the adore policy's controller (null: adore unavailable)
};

// One request as the client sent it; unset optionals take the server's defaults.
struct RequestSpec {
  enum class Prompt { kNone, kText, kTokenIds, kChat };
  Prompt prompt = Prompt::kNone;
  std::string text;                    // kText: encoded with BOS, special tokens as plain text
  std::vector<int64_t> token_ids;      // kTokenIds: checked against the vocabulary
  std::vector<ChatMessage> messages;   // kChat: roles system / user / assistant, rendered by the template
  std::optional<int32_t> max_tokens;
  std::optional<float> temperature, top_p;
  std::optional<int32_t> top_k;
  std::optional<uint64_t> seed;        // unset: a fresh seed per request
  std::vector<std::string> stop;
  std::optional<PolicyKind> policy;
  std::optional<int64_t> kv_budget, rebuild;
};

// How a protocol names the fields in its error messages ("<field>: <what is wrong>"). The names default
// to adore.v1's (proto/adore/v1/adore.proto); AdoreV1Fields() is adore.v1's whole convention.
struct RequestFields {
  std::string prompt = "prompt";
  std::string text = "text";
  std::string token_ids = "token_ids.ids";
  std::string chat = "chat";
  std::string messages = "chat.messages";
  std::string sampling_prefix = "sampling.";  // before max_tokens, temperature, top_k, top_p, stop
  std::string policy = "release.policy";
  std::string release_prefix = "release.";    // before kv_budget, rebuild
  // Name the element of a list that is wrong with its index: "token_ids.ids[3]", "chat.messages[2].role",
  // "sampling.stop[1]" (adore.v1); otherwise the list's name alone.
  bool indexed = false;
  // The code of a request that does not fit the model's context although each field is in its own range
  // (a prompt of context_length tokens or more; max_tokens above what the prompt leaves): adore.v1 says
  // INVALID_ARGUMENT; OUT_OF_RANGE lets the HTTP API answer OpenAI's context_length_exceeded.
  absl::StatusCode context_code = absl::StatusCode::kOutOfRange;
};

// adore.v1's field names, indexed list elements, INVALID_ARGUMENT for the context.
RequestFields AdoreV1Fields();

// Bounds the public APIs document (adore.v1's SamplingParams): stop strings per request and their length.
inline constexpr int kMaxStopStrings = 8;
inline constexpr int kMaxStopBytes = 256;
inline constexpr int kMaxChatMessages = 256;
inline constexpr float kMaxTemperature = 100.0f;

// The smallest kv_budget that a releasing policy accepts with these defaults: 16 for window and
// heavy_hitter; for adore, its protected set (num_sink first + num_recent last tokens, the controller's
// num_recent unless the defaults set one) plus the step's new token, since a full cache must still release
// one unprotected token per step (21 with the trained controller: 4 + 16 + 1). 0 for full.
int64_t MinKvBudget(PolicyKind kind, const ServiceDefaults& defaults);
// The smallest kv_budget that every releasing policy available with these defaults accepts (adore only
// with a controller): ModelInfo.min_kv_budget.
int64_t MinKvBudgetOfAllPolicies(const ServiceDefaults& defaults);

// A seed for a request that set none: drawn from std::random_device (mixed with the clock).
uint64_t DrawSeed();

// The scheduler's request, or INVALID_ARGUMENT naming the field (FAILED_PRECONDITION for the adore policy
// on a server without a controller, or chat for a model without a chat template; fields.context_code for a
// request past the context). Fields are checked in adore.v1's field-number order (the prompt, then
// sampling: max_tokens, temperature, top_k, top_p, stop; then release: policy, kv_budget, rebuild), so
// the first wrong one is named. An unset max_tokens is the default lowered to what the prompt leaves of
// the context; an unset seed is drawn (DrawSeed). `stop_ids` are the model's end tokens
// (EndOfGenerationIds).
absl::StatusOr<GenerateOptions> BuildGenerateOptions(const RequestSpec& spec, const Tokenizer& tokenizer,
                                                     const ModelConfig& config, const ServiceDefaults& defaults,
                                                     const std::vector<int32_t>& stop_ids,
                                                     const RequestFields& fields = {});

// Prefixes a non-OK status's message with `prefix` (e.g. "sampling."), keeping its code.
absl::Status WithFieldPrefix(const absl::Status& status, const std::string& prefix);

}  // namespace adore
