#include "convert.h"

#include <utility>

namespace adore::client::internal {

v1::GenerateRequest BuildRequest(const Prompt& prompt, const GenerateOptions& options) {
  v1::GenerateRequest req;
  switch (prompt.kind()) {
    case Prompt::Kind::kNone:
      break;  // the server answers INVALID_ARGUMENT "prompt"
    case Prompt::Kind::kText:
      req.set_text(prompt.text());
      break;
    case Prompt::Kind::kTokenIds:
      // mutable_ sets the oneof even for an empty list (the server then names "token_ids.ids").
      req.mutable_token_ids()->mutable_ids()->Add(prompt.token_ids().begin(), prompt.token_ids().end());
      break;
    case Prompt::Kind::kChat: {
      v1::ChatMessages* chat = req.mutable_chat();
      for (const ChatMessage& m : prompt.messages()) {
        v1::ChatMessage* out = chat->add_messages();
        out->set_role(m.role);
        out->set_content(m.content);
      }
      break;
    }
  }
  const GenerateOptions& o = options;
  if (o.max_tokens || o.temperature || o.top_k || o.top_p || o.seed || !o.stop.empty()) {
    v1::SamplingParams* s = req.mutable_sampling();
    if (o.max_tokens) s->set_max_tokens(*o.max_tokens);
    if (o.temperature) s->set_temperature(*o.temperature);
    if (o.top_k) s->set_top_k(*o.top_k);
    if (o.top_p) s->set_top_p(*o.top_p);
    if (o.seed) s->set_seed(*o.seed);
    for (const std::string& stop : o.stop) s->add_stop(stop);
  }
  if (o.policy != Policy::kUnspecified || o.kv_budget || o.rebuild) {
    v1::ReleaseParams* r = req.mutable_release();
    // A number this SDK does not know goes on the wire as is: the server checks it ("release.policy").
    r->set_policy(static_cast<v1::Policy>(o.policy));
    if (o.kv_budget) r->set_kv_budget(*o.kv_budget);
    if (o.rebuild) r->set_rebuild(*o.rebuild);
  }
  if (!o.request_id.empty()) req.set_request_id(o.request_id);
  return req;
}

Delta DeltaFromProto(const v1::TokenDelta& delta) {
  return Delta{delta.text(), std::vector<int32_t>(delta.token_ids().begin(), delta.token_ids().end())};
}

GenerateResult ResultFromProto(std::string request_id, std::string text, std::vector<int32_t> token_ids,
                               const v1::GenerateDone& done) {
  GenerateResult r;
  r.request_id = std::move(request_id);
  r.text = std::move(text);
  r.token_ids = std::move(token_ids);
  r.finish_reason = static_cast<FinishReason>(done.finish_reason());
  r.matched_stop = done.matched_stop();
  r.usage = {done.usage().prompt_tokens(), done.usage().completion_tokens()};
  r.timing = {done.timing().ttft_ms(), done.timing().total_ms(), done.timing().queue_ms()};
  const v1::AdoreStats& a = done.adore();
  r.adore = {static_cast<Policy>(a.policy()), a.kv_budget(), a.rebuild(), a.tokens_released(), a.tokens_rebuilt(),
             a.kv_slots_in_use()};
  r.seed = done.seed();
  return r;
}

ModelInfo ModelInfoFromProto(const v1::ModelInfo& m) {
  ModelInfo out;
  out.name = m.name();
  out.architecture = m.architecture();
  out.vocab_size = m.vocab_size();
  out.context_length = m.context_length();
  out.hidden_size = m.hidden_size();
  out.num_layers = m.num_layers();
  out.num_heads = m.num_heads();
  out.num_kv_heads = m.num_kv_heads();
  out.tensor_parallel_size = m.tensor_parallel_size();
  out.backend = static_cast<Backend>(m.backend());
  out.model_sha256 = m.model_sha256();
  const v1::ReleaseParams& r = m.default_release();
  out.default_release.policy = static_cast<Policy>(r.policy());
  if (r.has_kv_budget()) out.default_release.kv_budget = r.kv_budget();
  if (r.has_rebuild()) out.default_release.rebuild = r.rebuild();
  for (int p : m.available_policies()) out.available_policies.push_back(static_cast<Policy>(p));
  out.min_kv_budget = m.min_kv_budget();
  out.max_rebuild = m.max_rebuild();
  out.default_max_tokens = m.default_max_tokens();
  out.chat_template_available = m.chat_template_available();
  return out;
}

ServerStats ServerStatsFromProto(const v1::ServerStats& s) {
  ServerStats out;
  out.uptime_s = s.uptime_s();
  const v1::RequestCounts& c = s.requests();
  out.requests = {c.ok(), c.invalid_argument(), c.resource_exhausted(), c.unavailable(), c.cancelled(),
                  c.deadline_exceeded(), c.internal()};
  out.prompt_tokens_total = s.prompt_tokens_total();
  out.completion_tokens_total = s.completion_tokens_total();
  out.active_requests = s.active_requests();
  out.queued_requests = s.queued_requests();
  out.kv_slots_used = s.kv_slots_used();
  out.kv_slots_free = s.kv_slots_free();
  out.tokens_released_total = s.tokens_released_total();
  out.tokens_rebuilt_total = s.tokens_rebuilt_total();
  for (const v1::WorkerStats& w : s.workers()) {
    out.workers.push_back({w.rank(), w.address(), w.healthy(), w.steps(), w.last_step_ms(), w.mean_step_ms(),
                           w.p99_step_ms(), w.kv_slots_used(), w.kv_slots_free(), w.step_ms_total(),
                           w.comm_ms_total(), w.last_comm_ms()});
  }
  out.slot_map_checks_total = s.slot_map_checks_total();
  return out;
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

namespace {

void PutVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

bool GetVarint(std::string_view* in, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64 && !in->empty(); shift += 7) {
    const auto byte = static_cast<uint8_t>(in->front());
    in->remove_prefix(1);
    *v |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

}  // namespace

std::string EncodeHealthCheckRequest(std::string_view service) {
  std::string out;
  if (service.empty()) return out;  // proto3: an empty string field is not written
  out.push_back(0x0a);              // field 1 (service), wire type 2 (length-delimited)
  PutVarint(service.size(), &out);
  out.append(service);
  return out;
}

absl::StatusOr<ServingStatus> DecodeHealthCheckResponse(std::string_view bytes) {
  // HealthCheckResponse { ServingStatus status = 1; }: read field 1, skip anything else.
  const absl::Status malformed = absl::InternalError("grpc.health.v1.HealthCheckResponse: malformed response");
  uint64_t status = 0;
  while (!bytes.empty()) {
    uint64_t key = 0;
    uint64_t v = 0;
    if (!GetVarint(&bytes, &key)) return malformed;
    switch (key & 7) {
      case 0:  // varint
        if (!GetVarint(&bytes, &v)) return malformed;
        if ((key >> 3) == 1) status = v;
        break;
      case 1:  // fixed64
        if (bytes.size() < 8) return malformed;
        bytes.remove_prefix(8);
        break;
      case 2:  // length-delimited
        if (!GetVarint(&bytes, &v) || v > bytes.size()) return malformed;
        bytes.remove_prefix(v);
        break;
      case 5:  // fixed32
        if (bytes.size() < 4) return malformed;
        bytes.remove_prefix(4);
        break;
      default:
        return malformed;
    }
  }
  return static_cast<ServingStatus>(static_cast<int32_t>(status));
}

}  // namespace adore::client::internal
