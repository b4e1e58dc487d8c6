// BuildGenerateOptions: one conversion from a client's request to the scheduler's, for every public API.
#include "coordinator/request_options.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <mutex>
#include <random>

#include "absl/strings/str_format.h"
#include "common/status.h"

namespace adore {

absl::Status WithFieldPrefix(const absl::Status& status, const std::string& prefix) {
  return status.ok() ? status : absl::Status(status.code(), absl::StrFormat("%s%s", prefix, status.message()));
}

RequestFields AdoreV1Fields() {
  RequestFields f;  // the names' defaults are adore.v1's
  f.indexed = true;
  f.context_code = absl::StatusCode::kInvalidArgument;
  return f;
}

int64_t MinKvBudget(PolicyKind kind, const ServiceDefaults& defaults) {
  constexpr int64_t kMinKvBudget = 16;  // ReleaseConfig::Validate's lower bound
  switch (kind) {
    case PolicyKind::kFull: return 0;
    case PolicyKind::kWindow:
    case PolicyKind::kHeavyHitter: return kMinKvBudget;
    case PolicyKind::kAdore: {
      const ReleaseConfig& r = defaults.release;
      int64_t recent = r.num_recent;
      if (recent <= 0 && defaults.controller != nullptr) recent = defaults.controller->config().num_recent;
      return std::max<int64_t>(kMinKvBudget, r.num_sink + recent + 1);
    }
  }
  return kMinKvBudget;
}

int64_t MinKvBudgetOfAllPolicies(const ServiceDefaults& defaults) {
  int64_t m = std::max(MinKvBudget(PolicyKind::kWindow, defaults), MinKvBudget(PolicyKind::kHeavyHitter, defaults));
  if (defaults.controller != nullptr) m = std::max(m, MinKvBudget(PolicyKind::kAdore, defaults));
  return m;
}

uint64_t DrawSeed() {
  static std::mutex mu;
  static std::random_device device;
  std::lock_guard<std::mutex> lock(mu);
  const uint64_t hi = device(), lo = device();
  return ((hi << 32) | lo) ^ static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
}

namespace {

std::string Element(const RequestFields& f, const std::string& list, size_t i) {
  return f.indexed ? absl::StrFormat("%s[%d]", list, i) : list;
}

}  // namespace

absl::StatusOr<GenerateOptions> BuildGenerateOptions(const RequestSpec& r, const Tokenizer& tokenizer,
                                                     const ModelConfig& config, const ServiceDefaults& defaults,
                                                     const std::vector<int32_t>& stop_ids,
                                                     const RequestFields& f) {
  GenerateOptions o;
  std::string prompt_field;  // the field the prompt came from, named when it does not fit the context
  switch (r.prompt) {
    case RequestSpec::Prompt::kText: {
      prompt_field = f.text;
      if (r.text.empty()) return absl::InvalidArgumentError(f.text + ": must not be empty");
      auto ids = tokenizer.Encode(r.text, /*parse_special=*/false, /*add_bos=*/true);
      if (!ids.ok()) return WithFieldPrefix(ids.status(), f.text + ": ");
      o.prompt = *std::move(ids);
      break;
    }
    case RequestSpec::Prompt::kTokenIds:
      prompt_field = f.token_ids;
      for (size_t i = 0; i < r.token_ids.size(); ++i) {
        const int64_t id = r.token_ids[i];
        if (id < 0 || id >= config.vocab_size) {
          return absl::InvalidArgumentError(absl::StrFormat("%s: id %d is outside the vocabulary [0, %d)",
                                                            Element(f, f.token_ids, i), id, config.vocab_size));
        }
        o.prompt.push_back(static_cast<int32_t>(id));
      }
      break;
    case RequestSpec::Prompt::kChat: {
      prompt_field = f.messages;
      if (r.messages.empty()) return absl::InvalidArgumentError(f.messages + ": must not be empty");
      if (r.messages.size() > static_cast<size_t>(kMaxChatMessages)) {
        return absl::InvalidArgumentError(absl::StrFormat("%s: at most %d messages, got %d", f.messages,
                                                          kMaxChatMessages, r.messages.size()));
      }
      for (size_t i = 0; i < r.messages.size(); ++i) {
        const ChatMessage& m = r.messages[i];
        if (m.role != "system" && m.role != "user" && m.role != "assistant") {
          return absl::InvalidArgumentError(absl::StrFormat("%s.role: '%s' is not system, user or assistant",
                                                            Element(f, f.messages, i), m.role));
        }
      }
      auto text = tokenizer.ApplyChatTemplate(r.messages, /*add_generation_prompt=*/true);
      if (!text.ok()) return WithFieldPrefix(text.status(), f.chat + ": ");
      auto ids = tokenizer.Encode(*text, /*parse_special=*/true, /*add_bos=*/true);
      if (!ids.ok()) return WithFieldPrefix(ids.status(), f.chat + ": ");
      o.prompt = *std::move(ids);
      break;
    }
    case RequestSpec::Prompt::kNone:
      return absl::InvalidArgumentError(f.prompt + ": set one of text, token_ids or chat");
  }
  const int64_t context = config.max_context;
  const int64_t prompt_tokens = static_cast<int64_t>(o.prompt.size());
  if (o.prompt.empty()) return absl::InvalidArgumentError(prompt_field + ": must not be empty");
  if (prompt_tokens >= context) {
    return absl::Status(f.context_code,
                        absl::StrFormat("%s: the prompt is %d tokens; the model's context of %d tokens takes at "
                                        "most %d with at least one generated",
                                        prompt_field, prompt_tokens, context, context - 1));
  }

  // Sampling, in field order.
  const int64_t room = context - prompt_tokens;  // tokens the prompt leaves for the completion (>= 1)
  if (r.max_tokens.has_value()) {
    const int32_t m = *r.max_tokens;
    if (m < 1 || m > room) {
      const std::string what = absl::StrFormat(
          "%smax_tokens: must be in [1, %d] (the context of %d tokens less the prompt's %d), got %d",
          f.sampling_prefix, room, context, prompt_tokens, m);
      // Above the context whatever the prompt: out of range on its own.
      return absl::Status(m < 1 || m > context ? absl::StatusCode::kInvalidArgument : f.context_code, what);
    }
    o.max_tokens = m;
  } else {
    o.max_tokens = static_cast<int32_t>(std::min<int64_t>(defaults.max_tokens, room));
  }
  o.sampling.temperature = r.temperature.value_or(defaults.temperature);
  if (!std::isfinite(o.sampling.temperature) || o.sampling.temperature < 0.0f ||
      o.sampling.temperature > kMaxTemperature) {
    return absl::InvalidArgumentError(absl::StrFormat("%stemperature: must be in [0, %g], got %g", f.sampling_prefix,
                                                      kMaxTemperature, o.sampling.temperature));
  }
  o.sampling.top_k = r.top_k.value_or(0);
  if (o.sampling.top_k < 0 || o.sampling.top_k > config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrFormat("%stop_k: must be in [0, %d] (0: no limit), got %d",
                                                      f.sampling_prefix, config.vocab_size, o.sampling.top_k));
  }
  o.sampling.top_p = r.top_p.value_or(1.0f);
  if (!(o.sampling.top_p > 0.0f && o.sampling.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%stop_p: must be in (0, 1], got %g", f.sampling_prefix, o.sampling.top_p));
  }
  o.sampling.seed = r.seed.has_value() ? *r.seed : DrawSeed();
  ADORE_RETURN_IF_ERROR(WithFieldPrefix(o.sampling.Validate(), f.sampling_prefix));
  const std::string stop_field = f.sampling_prefix + "stop";
  if (r.stop.size() > static_cast<size_t>(kMaxStopStrings)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: at most %d stop strings, got %d", stop_field, kMaxStopStrings, r.stop.size()));
  }
  for (size_t i = 0; i < r.stop.size(); ++i) {
    if (r.stop[i].empty() || r.stop[i].size() > static_cast<size_t>(kMaxStopBytes)) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: must be 1 to %d bytes, got %d",
                                                        Element(f, stop_field, i), kMaxStopBytes, r.stop[i].size()));
    }
  }
  o.stop = r.stop;
  o.stop_ids = stop_ids;

  // Release, in field order: policy, kv_budget, rebuild.
  o.release = defaults.release;
  if (r.policy.has_value()) o.release.kind = *r.policy;
  if (o.release.kind == PolicyKind::kAdore) {
    if (defaults.controller == nullptr) {
      return absl::FailedPreconditionError(f.policy + ": ADORE needs a controller; the server has none loaded");
    }
    o.release.controller = defaults.controller;
  }
  if (o.release.kind == PolicyKind::kFull) {
    if (r.kv_budget.has_value() && *r.kv_budget != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%skv_budget: must be unset or 0 for policy 'full' (full attention holds one slot per token), got %d",
          f.release_prefix, *r.kv_budget));
    }
    o.release.kv_budget = 0;
  } else {
    if (r.kv_budget.has_value()) o.release.kv_budget = *r.kv_budget;
    const int64_t min_budget = MinKvBudget(o.release.kind, defaults);
    if (o.release.kv_budget < min_budget || o.release.kv_budget > context) {
      return absl::InvalidArgumentError(absl::StrFormat("%skv_budget: must be in [%d, %d] for policy '%s', got %d",
                                                        f.release_prefix, min_budget, context,
                                                        PolicyKindName(o.release.kind), o.release.kv_budget));
    }
  }
  if (r.rebuild.has_value()) o.release.rebuild = *r.rebuild;
  if (o.release.kind != PolicyKind::kAdore && !r.rebuild.has_value()) o.release.rebuild = 0;
  ADORE_RETURN_IF_ERROR(WithFieldPrefix(o.release.Validate(config.max_context), f.release_prefix));
  return o;
}

}  // namespace adore
