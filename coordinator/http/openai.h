// The OpenAI-compatible wire format of adore-server's HTTP API: request bodies of /v1/completions and
// /v1/chat/completions parsed into a RequestSpec (coordinator/request_options.h, the conversion the gRPC
// service shares), responses and Server-Sent-Event chunks built from the scheduler's StreamEvents, and
// errors as OpenAI's {"error": {message, type, param, code}} with the HTTP status for an absl::Status.
// No sockets here: coordinator/http/http_server.h serves it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/request_options.h"
#include "coordinator/scheduler.h"

namespace adore::http {

enum class Endpoint { kCompletions, kChatCompletions };

struct OpenAiRequest {
  RequestSpec spec;
  std::string model;           // as sent; empty when absent
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with the usage
};

// Parses a request body. INVALID_ARGUMENT naming the field for malformed JSON, a wrong type, a missing
// prompt / messages or a feature this server does not offer (n != 1, logprobs, penalties, echo, ...).
// Unknown fields are ignored. Extensions: top_k, and the release parameters policy ("full", "window",
// "heavy_hitter", "adore"), kv_budget and rebuild.
absl::StatusOr<OpenAiRequest> ParseRequest(std::string_view body, Endpoint endpoint);

// How BuildGenerateOptions names this API's fields in its errors.
RequestFields OpenAiFields(Endpoint endpoint);

// An error as the API returns it.
struct ApiError {
  int http_status = 500;
  std::string type;     // invalid_request_error, not_found_error, rate_limit_error, server_error, ...
  std::string message;
  std::string param;    // the field, when known (empty: null)
  std::string code;     // machine-readable detail (empty: null)
};
// 400 for INVALID_ARGUMENT / OUT_OF_RANGE / FAILED_PRECONDITION (param: the field the message names),
// 404 NOT_FOUND, 429 RESOURCE_EXHAUSTED when the queue is full (400 when the request can never fit the KV
// budget), 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED, 499 CANCELLED, 500 otherwise.
ApiError ErrorFromStatus(const absl::Status& status);
nlohmann::json ErrorJson(const ApiError& error);

// Identity of one completion in every message about it.
struct CompletionMeta {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string id;       // cmpl-... / chatcmpl-...
  int64_t created = 0;  // unix seconds
  std::string model;
  ReleaseConfig release;  // what the request ran with (the "adore" extension object)
  uint64_t seed = 0;
};

// The whole response of a non-streaming request, from its text and final event.
nlohmann::json CompletionJson(const CompletionMeta& meta, const std::string& text, const StreamEvent& final_event);
// One streamed chunk: text (chat: delta.content; the first chat chunk also carries delta.role) and, on the
// last one, the finish reason.
nlohmann::json ChunkJson(const CompletionMeta& meta, const std::string& text, bool first,
                         const std::optional<std::string>& finish_reason);
// The extra last chunk of stream_options.include_usage: no choices, the usage.
nlohmann::json UsageChunkJson(const CompletionMeta& meta, const StreamEvent& final_event);
// "data: <json>\n\n"; invalid UTF-8 in generated text is replaced, never an exception.
std::string SseEvent(const nlohmann::json& json);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";
// JSON text for a response body (invalid UTF-8 replaced).
std::string Dump(const nlohmann::json& json);

}  // namespace adore::http
