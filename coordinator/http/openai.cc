// OpenAI-compatible request parsing and response building.
#include "coordinator/http/openai.h"

#include <algorithm>
#include <cctype>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"

namespace adore::http {

namespace {

using json = nlohmann::json;

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

// The member `key` unless absent or null.
const json* Find(const json& body, const char* key) {
  auto it = body.find(key);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

absl::Status GetInt(const json& body, const char* key, std::optional<int64_t>& out) {
  const json* v = Find(body, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_number_integer()) return Invalid(key, "must be an integer");
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    out = std::numeric_limits<int64_t>::max();
  } else {
    out = v->get<int64_t>();
  }
  return absl::OkStatus();
}

absl::Status GetNumber(const json& body, const char* key, std::optional<double>& out) {
  const json* v = Find(body, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_number()) return Invalid(key, "must be a number");
  out = v->get<double>();
  return absl::OkStatus();
}

absl::Status GetBool(const json& body, const char* key, bool& out) {
  const json* v = Find(body, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_boolean()) return Invalid(key, "must be true or false");
  out = v->get<bool>();
  return absl::OkStatus();
}

absl::Status GetString(const json& body, const char* key, std::string& out) {
  const json* v = Find(body, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_string()) return Invalid(key, "must be a string");
  out = v->get<std::string>();
  return absl::OkStatus();
}

int32_t ClampToInt32(int64_t v) {
  return static_cast<int32_t>(std::clamp<int64_t>(v, std::numeric_limits<int32_t>::min(),
                                                  std::numeric_limits<int32_t>::max()));
}

bool AllIntegers(const json& a) {
  for (const json& x : a) {
    if (!x.is_number_integer()) return false;
  }
  return true;
}

// /v1/completions' prompt: a string, an array of token ids, or a one-element array of either.
absl::Status ParsePrompt(const json& body, RequestSpec& spec) {
  const json* p = Find(body, "prompt");
  if (p == nullptr) return Invalid("prompt", "is required");
  if (p->is_array() && p->size() == 1 && ((*p)[0].is_string() || (*p)[0].is_array())) p = &(*p)[0];
  if (p->is_string()) {
    spec.prompt = RequestSpec::Prompt::kText;
    spec.text = p->get<std::string>();
    return absl::OkStatus();
  }
  if (p->is_array() && AllIntegers(*p)) {
    if (p->empty()) return Invalid("prompt", "must not be empty");
    spec.prompt = RequestSpec::Prompt::kTokenIds;
    for (const json& x : *p) {
      spec.token_ids.push_back(x.is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(
                                                            x.get<uint64_t>(), std::numeric_limits<int64_t>::max()))
                                                      : x.get<int64_t>());
    }
    return absl::OkStatus();
  }
  if (p->is_array() && p->size() > 1) {
    return Invalid("prompt", "batched prompts are not supported: send one prompt per request");
  }
  return Invalid("prompt", "must be a string or an array of token ids");
}

// /v1/chat/completions' messages: roles and text content (a string or an array of text parts).
absl::Status ParseMessages(const json& body, RequestSpec& spec) {
  const json* m = Find(body, "messages");
  if (m == nullptr) return Invalid("messages", "is required");
  if (!m->is_array()) return Invalid("messages", "must be an array");
  spec.prompt = RequestSpec::Prompt::kChat;
  for (size_t i = 0; i < m->size(); ++i) {
    const json& msg = (*m)[i];
    const std::string field = absl::StrFormat("messages[%d]", i);
    if (!msg.is_object()) return Invalid(field, "must be an object");
    ChatMessage out;
    const json* role = Find(msg, "role");
    if (role == nullptr || !role->is_string()) return Invalid(field + ".role", "must be a string");
    out.role = role->get<std::string>();
    if (out.role == "developer") out.role = "system";  // OpenAI's newer name for system instructions
    if (const json* c = Find(msg, "content"); c != nullptr) {
      if (c->is_string()) {
        out.content = c->get<std::string>();
      } else if (c->is_array()) {
        for (const json& part : *c) {
          const json* type = part.is_object() ? Find(part, "type") : nullptr;
          const json* text = part.is_object() ? Find(part, "text") : nullptr;
          if (type == nullptr || *type != "text" || text == nullptr || !text->is_string()) {
            return Invalid(field + ".content", "only text parts ({\"type\": \"text\", \"text\": ...}) are supported");
          }
          out.content += text->get<std::string>();
        }
      } else {
        return Invalid(field + ".content", "must be a string or an array of text parts");
      }
    }
    spec.messages.push_back(std::move(out));
  }
  return absl::OkStatus();
}

// OpenAI features this server does not offer: refused rather than silently ignored.
absl::Status RefuseUnsupported(const json& body, Endpoint endpoint) {
  std::optional<int64_t> n, best_of;
  ADORE_RETURN_IF_ERROR(GetInt(body, "n", n));
  if (n.has_value() && *n != 1) return Invalid("n", "only 1 is supported");
  ADORE_RETURN_IF_ERROR(GetInt(body, "best_of", best_of));
  if (best_of.has_value() && *best_of != 1) return Invalid("best_of", "only 1 is supported");
  for (const char* key : {"presence_penalty", "frequency_penalty"}) {
    std::optional<double> v;
    ADORE_RETURN_IF_ERROR(GetNumber(body, key, v));
    if (v.has_value() && *v != 0.0) return Invalid(key, "is not supported (only 0)");
  }
  bool echo = false;
  ADORE_RETURN_IF_ERROR(GetBool(body, "echo", echo));
  if (echo) return Invalid("echo", "is not supported");
  if (const json* lp = Find(body, "logprobs"); lp != nullptr) {
    const bool off = endpoint == Endpoint::kChatCompletions ? (lp->is_boolean() && !lp->get<bool>())
                                                            : (lp->is_number_integer() && lp->get<int64_t>() == 0);
    if (!off) return Invalid("logprobs", "is not supported");
  }
  if (Find(body, "top_logprobs") != nullptr) return Invalid("top_logprobs", "is not supported");
  if (const json* lb = Find(body, "logit_bias"); lb != nullptr && !(lb->is_object() && lb->empty())) {
    return Invalid("logit_bias", "is not supported");
  }
  if (const json* s = Find(body, "suffix"); s != nullptr && !(s->is_string() && s->get<std::string>().empty())) {
    return Invalid("suffix", "is not supported");
  }
  for (const char* key : {"tools", "functions"}) {
    if (const json* t = Find(body, key); t != nullptr && !(t->is_array() && t->empty())) {
      return Invalid(key, "tool calling is not supported");
    }
  }
  if (const json* rf = Find(body, "response_format"); rf != nullptr) {
    if (!rf->is_object() || rf->value("type", "text") != "text") {
      return Invalid("response_format", "only {\"type\": \"text\"} is supported");
    }
  }
  return absl::OkStatus();
}

json Usage(const StreamEvent& e) {
  return {{"prompt_tokens", e.prompt_tokens},
          {"completion_tokens", e.completion_tokens},
          {"total_tokens", e.prompt_tokens + e.completion_tokens}};
}

// The ADORE extension object: the release configuration and what it did (adore.v1's AdoreStats).
json AdoreJson(const CompletionMeta& meta, const StreamEvent& e) {
  const bool full = meta.release.kind == PolicyKind::kFull;
  return {{"policy", PolicyKindName(meta.release.kind)},
          {"kv_budget", full ? 0 : meta.release.kv_budget},
          {"rebuild", meta.release.rebuild},
          {"tokens_released", e.release_stats.released},
          {"tokens_rebuilt", e.release_stats.rebuilt},
          {"kv_slots_in_use", e.kv_slots},
          {"ttft_ms", e.ttft_ms},
          {"total_ms", e.total_ms},
          {"seed", meta.seed}};
}

json Envelope(const CompletionMeta& meta, bool chunk) {
  const bool chat = meta.endpoint == Endpoint::kChatCompletions;
  return {{"id", meta.id},
          {"object", chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
          {"created", meta.created},
          {"model", meta.model}};
}

}  // namespace

absl::StatusOr<OpenAiRequest> ParseRequest(std::string_view body_text, Endpoint endpoint) {
  json body = json::parse(body_text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return Invalid("body", "is not valid JSON");
  if (!body.is_object()) return Invalid("body", "must be a JSON object");
  OpenAiRequest out;
  RequestSpec& spec = out.spec;
  ADORE_RETURN_IF_ERROR(GetString(body, "model", out.model));
  ADORE_RETURN_IF_ERROR(endpoint == Endpoint::kChatCompletions ? ParseMessages(body, spec) : ParsePrompt(body, spec));
  ADORE_RETURN_IF_ERROR(RefuseUnsupported(body, endpoint));

  std::optional<int64_t> max_tokens, top_k, kv_budget, rebuild;
  ADORE_RETURN_IF_ERROR(GetInt(body, "max_tokens", max_tokens));
  if (endpoint == Endpoint::kChatCompletions) {
    std::optional<int64_t> max_completion_tokens;
    ADORE_RETURN_IF_ERROR(GetInt(body, "max_completion_tokens", max_completion_tokens));
    if (max_completion_tokens.has_value()) max_tokens = max_completion_tokens;
  }
  if (max_tokens.has_value()) spec.max_tokens = ClampToInt32(*max_tokens);
  std::optional<double> temperature, top_p;
  ADORE_RETURN_IF_ERROR(GetNumber(body, "temperature", temperature));
  ADORE_RETURN_IF_ERROR(GetNumber(body, "top_p", top_p));
  if (temperature.has_value()) spec.temperature = static_cast<float>(*temperature);
  if (top_p.has_value()) spec.top_p = static_cast<float>(*top_p);
  ADORE_RETURN_IF_ERROR(GetInt(body, "top_k", top_k));
  if (top_k.has_value()) spec.top_k = ClampToInt32(*top_k);
  if (const json* seed = Find(body, "seed"); seed != nullptr) {
    if (!seed->is_number_integer()) return Invalid("seed", "must be an integer");
    spec.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : static_cast<uint64_t>(seed->get<int64_t>());
  }
  if (const json* stop = Find(body, "stop"); stop != nullptr) {
    if (stop->is_string()) {
      spec.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& s : *stop) {
        if (!s.is_string()) return Invalid("stop", "must be a string or an array of strings");
        spec.stop.push_back(s.get<std::string>());
      }
    } else {
      return Invalid("stop", "must be a string or an array of strings");
    }
  }
  ADORE_RETURN_IF_ERROR(GetBool(body, "stream", out.stream));
  if (const json* so = Find(body, "stream_options"); so != nullptr) {
    if (!so->is_object()) return Invalid("stream_options", "must be an object");
    if (const json* u = Find(*so, "include_usage"); u != nullptr) {
      if (!u->is_boolean()) return Invalid("stream_options.include_usage", "must be true or false");
      out.include_usage = u->get<bool>();
    }
  }
  // Extensions: the release policy, as adore.v1's ReleaseParams.
  std::string policy;
  ADORE_RETURN_IF_ERROR(GetString(body, "policy", policy));
  if (!policy.empty()) {
    ADORE_ASSIGN_OR_RETURN(spec.policy, ParsePolicyKind(policy));
  }
  ADORE_RETURN_IF_ERROR(GetInt(body, "kv_budget", kv_budget));
  ADORE_RETURN_IF_ERROR(GetInt(body, "rebuild", rebuild));
  spec.kv_budget = kv_budget;
  spec.rebuild = rebuild;
  return out;
}

RequestFields OpenAiFields(Endpoint endpoint) {
  RequestFields f;
  const std::string prompt = endpoint == Endpoint::kChatCompletions ? "messages" : "prompt";
  f.prompt = f.text = f.token_ids = f.chat = f.messages = prompt;
  f.sampling_prefix = "";
  f.policy = "policy";
  f.release_prefix = "";
  return f;
}

ApiError ErrorFromStatus(const absl::Status& status) {
  ApiError e;
  e.message = std::string(status.message());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition: {
      e.http_status = 400;
      e.type = "invalid_request_error";
      // Messages begin with the field they are about: "<field>: ..." or "<field> must ...".
      size_t n = 0;
      while (n < e.message.size() && (std::isalnum(static_cast<unsigned char>(e.message[n])) ||
                                      e.message[n] == '_' || e.message[n] == '.' || e.message[n] == '[' ||
                                      e.message[n] == ']')) {
        ++n;
      }
      if (n > 0 && (e.message.compare(n, 1, ":") == 0 || e.message.compare(n, 6, " must ") == 0)) {
        e.param = e.message.substr(0, n);
      }
      break;
    }
    case absl::StatusCode::kOutOfRange:
      e.http_status = 400;
      e.type = "invalid_request_error";
      e.code = "context_length_exceeded";
      break;
    case absl::StatusCode::kNotFound:
      e.http_status = 404;
      e.type = "invalid_request_error";
      e.code = "not_found";
      break;
    case absl::StatusCode::kResourceExhausted:
      // The scheduler's two refusals: a full queue (retry later) or a request larger than the KV pool.
      if (absl::StrContains(e.message, "queue is full")) {
        e.http_status = 429;
        e.type = "rate_limit_error";
        e.code = "queue_full";
      } else {
        e.http_status = 400;
        e.type = "invalid_request_error";
        e.code = "kv_capacity_exceeded";
      }
      break;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
      e.http_status = 503;
      e.type = "server_error";
      e.code = status.code() == absl::StatusCode::kCancelled ? "cancelled" : "unavailable";
      break;
    case absl::StatusCode::kDeadlineExceeded:
      e.http_status = 504;
      e.type = "server_error";
      e.code = "timeout";
      break;
    default:
      e.http_status = 500;
      e.type = "server_error";
      break;
  }
  return e;
}

json ErrorJson(const ApiError& e) {
  return {{"error",
           {{"message", e.message},
            {"type", e.type},
            {"param", e.param.empty() ? json(nullptr) : json(e.param)},
            {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
}

json CompletionJson(const CompletionMeta& meta, const std::string& text, const StreamEvent& e) {
  json out = Envelope(meta, /*chunk=*/false);
  json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", e.finish_reason}};
  if (meta.endpoint == Endpoint::kChatCompletions) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  out["choices"] = json::array({choice});
  out["usage"] = Usage(e);
  out["adore"] = AdoreJson(meta, e);
  return out;
}

json ChunkJson(const CompletionMeta& meta, const std::string& text, bool first,
               const std::optional<std::string>& finish_reason) {
  json out = Envelope(meta, /*chunk=*/true);
  json choice = {{"index", 0}, {"logprobs", nullptr},
                 {"finish_reason", finish_reason.has_value() ? json(*finish_reason) : json(nullptr)}};
  if (meta.endpoint == Endpoint::kChatCompletions) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || (first && !finish_reason.has_value())) delta["content"] = text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = text;
  }
  out["choices"] = json::array({choice});
  return out;
}

json UsageChunkJson(const CompletionMeta& meta, const StreamEvent& e) {
  json out = Envelope(meta, /*chunk=*/true);
  out["choices"] = json::array();
  out["usage"] = Usage(e);
  out["adore"] = AdoreJson(meta, e);
  return out;
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string SseEvent(const json& j) { return absl::StrCat("data: ", Dump(j), "\n\n"); }

}  // namespace adore::http
