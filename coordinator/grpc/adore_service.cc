// AdoreService: the public gRPC API over the scheduler.
#include "coordinator/grpc/adore_service.h"

#include <algorithm>
#include <cctype>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <random>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/unknown_field_set.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include "absl/strings/str_format.h"
#include "common/status.h"
#include "common/unicode_util.h"
#include "coordinator/grpc/bearer_auth.h"

namespace adore {

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl and gRPC share the google.rpc.Code numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

v1::Policy PolicyToProto(PolicyKind kind) {
  switch (kind) {
    case PolicyKind::kFull: return v1::POLICY_FULL;
    case PolicyKind::kWindow: return v1::POLICY_WINDOW;
    case PolicyKind::kHeavyHitter: return v1::POLICY_HEAVY_HITTER;
    case PolicyKind::kAdore: return v1::POLICY_ADORE;
  }
  return v1::POLICY_UNSPECIFIED;
}

namespace {

// GenerateRequest.request_id: at most 128 characters from [A-Za-z0-9._:-]; empty means the server assigns one.
absl::Status ValidateRequestId(const std::string& id) {
  if (id.size() > kMaxRequestIdLength) {
    return absl::InvalidArgumentError(
        absl::StrFormat("request_id: at most %d characters, got %d", kMaxRequestIdLength, id.size()));
  }
  for (size_t i = 0; i < id.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(id[i]);
    if (!(std::isalnum(c) || c == '.' || c == '_' || c == ':' || c == '-')) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "request_id: character %d is 0x%02x; only [A-Za-z0-9._:-] are allowed", i, static_cast<unsigned>(c)));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string NewRequestId() {
  static std::mutex mu;
  static std::random_device device;
  std::lock_guard<std::mutex> lock(mu);
  std::string id;
  for (int i = 0; i < 4; ++i) id += absl::StrFormat("%08x", static_cast<uint32_t>(device()));
  return id;
}

namespace {

// The path (adore.v1's error convention: "chat.messages[1].content") of the first string field in the
// wire-format `bytes` of a `type` message that is not valid UTF-8, with the offset of its first bad byte;
// empty when there is none.
std::string FirstInvalidUtf8Field(const google::protobuf::Descriptor& type, const std::string& bytes,
                                  const std::string& prefix, size_t* offset) {
  google::protobuf::UnknownFieldSet fields;  // every field as its number and raw value
  if (!fields.ParseFromString(bytes)) return "";
  std::map<int, int> seen;  // occurrences per field number: a repeated field's element index
  for (int i = 0; i < fields.field_count(); ++i) {
    const google::protobuf::UnknownField& u = fields.field(i);
    const int index = seen[u.number()]++;
    const google::protobuf::FieldDescriptor* f = type.FindFieldByNumber(u.number());
    if (f == nullptr || u.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) continue;
    const std::string path = prefix + f->name() + (f->is_repeated() ? absl::StrFormat("[%d]", index) : "");
    if (f->type() == google::protobuf::FieldDescriptor::TYPE_STRING) {
      if (!IsValidUtf8(u.length_delimited())) {
        *offset = FirstInvalidUtf8Offset(u.length_delimited());
        return path;
      }
    } else if (f->type() == google::protobuf::FieldDescriptor::TYPE_MESSAGE) {
      std::string inner = FirstInvalidUtf8Field(*f->message_type(), u.length_delimited(), path + ".", offset);
      if (!inner.empty()) return inner;
    }
  }
  return "";
}

}  // namespace

absl::StatusOr<v1::GenerateRequest> ParseGenerateRequest(const grpc::ByteBuffer& bytes) {
  v1::GenerateRequest request;
  grpc::ByteBuffer copy(bytes);  // a reader consumes its buffer
  {
    grpc::ProtoBufferReader reader(&copy);
    if (reader.status().ok() && request.ParseFromZeroCopyStream(&reader)) return request;
  }
  std::vector<grpc::Slice> slices;
  std::string flat;
  if (bytes.Dump(&slices).ok()) {
    for (const grpc::Slice& slice : slices) flat.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  size_t offset = 0;
  const std::string field = FirstInvalidUtf8Field(*v1::GenerateRequest::descriptor(), flat, "", &offset);
  if (!field.empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: must be valid UTF-8 (a proto3 string); byte %d is not", field, offset));
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("request: %d bytes that do not parse as an adore.v1.GenerateRequest", flat.size()));
}

AdoreService::AdoreService(Scheduler& scheduler, const Tokenizer& tokenizer, ServiceInfo info,
                           ServiceDefaults defaults)
    : scheduler_(scheduler), tokenizer_(tokenizer), info_(std::move(info)), defaults_(defaults),
      started_(std::chrono::steady_clock::now()) {
  stop_ids_ = EndOfGenerationIds(tokenizer_);
  // Generate takes its request as bytes and parses it itself (ParseGenerateRequest): a request gRPC
  // cannot parse would otherwise end as INTERNAL with an empty message, before any handler runs. On the
  // wire nothing changes (one request message, then the stream), so every client is served as before.
  const int generate = v1::GenerateRequest::descriptor()->file()->FindServiceByName("Adore")->FindMethodByName(
      "Generate")->index();
  MarkMethodStreamed(generate, new grpc::internal::SplitServerStreamingHandler<grpc::ByteBuffer, v1::GenerateResponse>(
                                   [this](grpc::ServerContext* context, Writer* stream) {
                                     return GenerateFromBytes(context, stream);
                                   }));
}

grpc::Status AdoreService::GenerateFromBytes(grpc::ServerContext* context, Writer* stream) {
  if (grpc::Status st = CheckBearerMetadata(*context, auth_token_); !st.ok()) return st;
  grpc::ByteBuffer bytes;
  if (!stream->Read(&bytes)) {
    // No request: the client went away first, or gRPC refused the message (over the server's maximum
    // receive size), in which case the client already has RESOURCE_EXHAUSTED and this status is dropped.
    const grpc::Status st(grpc::StatusCode::CANCELLED, "the call ended before its request arrived");
    Count(st);
    return st;
  }
  absl::StatusOr<v1::GenerateRequest> request = ParseGenerateRequest(bytes);
  if (!request.ok()) {
    const grpc::Status st = ToGrpc(request.status());
    Count(st);
    return st;
  }
  return Stream(context, *request, [stream](const v1::GenerateResponse& r) { return stream->Write(r); });
}

absl::StatusOr<GenerateOptions> AdoreService::Convert(const v1::GenerateRequest& r) const {
  // The proto as a RequestSpec; BuildGenerateOptions (shared with the HTTP API) does the rest.
  RequestSpec spec;
  switch (r.prompt_case()) {
    case v1::GenerateRequest::kText:
      spec.prompt = RequestSpec::Prompt::kText;
      spec.text = r.text();
      break;
    case v1::GenerateRequest::kTokenIds:
      spec.prompt = RequestSpec::Prompt::kTokenIds;
      spec.token_ids.assign(r.token_ids().ids().begin(), r.token_ids().ids().end());
      break;
    case v1::GenerateRequest::kChat:
      spec.prompt = RequestSpec::Prompt::kChat;
      for (const v1::ChatMessage& m : r.chat().messages()) spec.messages.push_back({m.role(), m.content()});
      break;
    case v1::GenerateRequest::PROMPT_NOT_SET: break;
  }
  const v1::SamplingParams& s = r.sampling();
  if (s.has_max_tokens()) spec.max_tokens = s.max_tokens();
  spec.temperature = s.has_temperature() ? s.temperature() : kDefaultTemperature;
  if (s.has_top_k()) spec.top_k = s.top_k();
  if (s.has_top_p()) spec.top_p = s.top_p();
  if (s.has_seed()) spec.seed = s.seed();
  spec.stop.assign(s.stop().begin(), s.stop().end());
  const v1::ReleaseParams& rp = r.release();
  bool unknown_policy = false;
  switch (rp.policy()) {
    case v1::POLICY_UNSPECIFIED: break;
    case v1::POLICY_FULL: spec.policy = PolicyKind::kFull; break;
    case v1::POLICY_WINDOW: spec.policy = PolicyKind::kWindow; break;
    case v1::POLICY_HEAVY_HITTER: spec.policy = PolicyKind::kHeavyHitter; break;
    case v1::POLICY_ADORE: spec.policy = PolicyKind::kAdore; break;
    default: unknown_policy = true; break;
  }
  if (!unknown_policy) {  // with an unknown policy, its budget and rebuild mean nothing
    if (rp.has_kv_budget()) spec.kv_budget = rp.kv_budget();
    if (rp.has_rebuild()) spec.rebuild = rp.rebuild();
  }
  // The fields before release are checked first (the first wrong field in field-number order is named).
  absl::StatusOr<GenerateOptions> o =
      BuildGenerateOptions(spec, tokenizer_, info_.config, defaults_, stop_ids_, AdoreV1Fields());
  if (!o.ok()) return o.status();
  if (unknown_policy) {
    return absl::InvalidArgumentError(absl::StrFormat("release.policy: unknown value %d", rp.policy()));
  }
  ADORE_RETURN_IF_ERROR(ValidateRequestId(r.request_id()));
  return o;
}

void AdoreService::Count(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::OK: ++ok_; break;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE: ++invalid_; break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED: ++exhausted_; break;
    case grpc::StatusCode::UNAVAILABLE: ++unavailable_; break;
    case grpc::StatusCode::CANCELLED: ++cancelled_; break;
    case grpc::StatusCode::DEADLINE_EXCEEDED: ++deadline_; break;
    default: ++internal_; break;
  }
}

grpc::Status AdoreService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                    grpc::ServerWriter<v1::GenerateResponse>* writer) {
  if (grpc::Status st = CheckBearerMetadata(*context, auth_token_); !st.ok()) return st;
  return Stream(context, *request, [writer](const v1::GenerateResponse& r) { return writer->Write(r); });
}

grpc::Status AdoreService::Stream(grpc::ServerContext* context, const v1::GenerateRequest& req,
                                  const std::function<bool(const v1::GenerateResponse&)>& write) {
  absl::StatusOr<GenerateOptions> options = Convert(req);
  if (!options.ok()) {
    const grpc::Status st = ToGrpc(options.status());
    Count(st);
    return st;
  }
  // The scheduler's thread posts events here; this handler thread writes them to the stream.
  struct Mailbox {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<StreamEvent> events;
  };
  auto box = std::make_shared<Mailbox>();
  const ReleaseConfig release = options->release;
  const uint64_t seed = options->sampling.seed;  // the request's, or the one drawn for it
  const std::string request_id = req.request_id().empty() ? NewRequestId() : req.request_id();
  absl::StatusOr<uint64_t> id = scheduler_.Submit(*std::move(options), [box](const StreamEvent& e) {
    std::lock_guard<std::mutex> lock(box->mu);
    box->events.push_back(e);
    box->cv.notify_one();
  });
  if (!id.ok()) {
    const grpc::Status st = ToGrpc(id.status());
    Count(st);
    return st;
  }
  bool cancel_sent = false;
  while (true) {
    StreamEvent e;
    {
      std::unique_lock<std::mutex> lock(box->mu);
      box->cv.wait_for(lock, std::chrono::milliseconds(20), [&] { return !box->events.empty(); });
      if (box->events.empty()) {
        if (context->IsCancelled() && !cancel_sent) {  // client cancel or deadline: free the KV
          scheduler_.Cancel(*id);
          cancel_sent = true;
        }
        continue;
      }
      e = std::move(box->events.front());
      box->events.pop_front();
    }
    v1::GenerateResponse out;
    out.set_request_id(request_id);
    if (!e.final) {
      v1::TokenDelta* d = out.mutable_delta();
      d->set_text(e.text);
      for (int32_t t : e.tokens) d->add_token_ids(t);
      if (!write(out) && !cancel_sent) {  // the client is gone
        scheduler_.Cancel(*id);
        cancel_sent = true;
      }
      continue;
    }
    released_total_ += e.release_stats.released;
    rebuilt_total_ += e.release_stats.rebuilt;
    if (!e.status.ok()) {
      grpc::Status st = ToGrpc(e.status);
      if (context->IsCancelled()) {
        st = context->deadline() < std::chrono::system_clock::now()
                 ? grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded")
                 : grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
      }
      Count(st);
      return st;
    }
    if (!e.text.empty() || !e.tokens.empty()) {  // text held back for stop strings, released at the end
      v1::GenerateResponse last;
      last.set_request_id(request_id);
      last.mutable_delta()->set_text(e.text);
      for (int32_t t : e.tokens) last.mutable_delta()->add_token_ids(t);
      write(last);
    }
    v1::GenerateDone* done = out.mutable_done();
    done->set_finish_reason(e.finish_reason == "length" ? v1::FINISH_REASON_LENGTH : v1::FINISH_REASON_STOP);
    done->set_matched_stop(e.matched_stop);
    done->mutable_usage()->set_prompt_tokens(e.prompt_tokens);
    done->mutable_usage()->set_completion_tokens(e.completion_tokens);
    done->mutable_timing()->set_ttft_ms(e.ttft_ms);
    done->mutable_timing()->set_total_ms(e.total_ms);
    done->mutable_timing()->set_queue_ms(e.queue_ms);
    v1::AdoreStats* a = done->mutable_adore();
    a->set_policy(PolicyToProto(release.kind));
    a->set_kv_budget(release.kind == PolicyKind::kFull ? 0 : release.kv_budget);
    a->set_rebuild(release.rebuild);
    a->set_tokens_released(e.release_stats.released);
    a->set_tokens_rebuilt(e.release_stats.rebuilt);
    a->set_kv_slots_in_use(e.kv_slots);
    done->set_seed(seed);
    write(out);
    Count(grpc::Status::OK);
    return grpc::Status::OK;
  }
}

grpc::Status AdoreService::GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest*,
                                        v1::ModelInfo* m) {
  if (grpc::Status st = CheckBearerMetadata(*context, auth_token_); !st.ok()) return st;
  const ModelConfig& c = info_.config;
  m->set_name(c.name);
  m->set_architecture("llama");
  m->set_vocab_size(static_cast<int32_t>(c.vocab_size));
  m->set_context_length(static_cast<int32_t>(c.max_context));
  m->set_hidden_size(static_cast<int32_t>(c.hidden_size));
  m->set_num_layers(static_cast<int32_t>(c.num_layers));
  m->set_num_heads(static_cast<int32_t>(c.num_heads));
  m->set_num_kv_heads(static_cast<int32_t>(c.num_kv_heads));
  m->set_tensor_parallel_size(info_.tensor_parallel_size);
  m->set_backend(info_.backend);
  m->set_model_sha256(info_.model_sha256);
  v1::ReleaseParams* d = m->mutable_default_release();
  d->set_policy(PolicyToProto(defaults_.release.kind));
  d->set_kv_budget(defaults_.release.kv_budget);
  d->set_rebuild(defaults_.release.rebuild);
  for (v1::Policy p : {v1::POLICY_FULL, v1::POLICY_WINDOW, v1::POLICY_HEAVY_HITTER}) m->add_available_policies(p);
  if (defaults_.controller != nullptr) m->add_available_policies(v1::POLICY_ADORE);
  m->set_min_kv_budget(MinKvBudgetOfAllPolicies(defaults_));
  m->set_max_rebuild(kMaxRebuild);
  m->set_default_max_tokens(defaults_.max_tokens);
  m->set_chat_template_available(tokenizer_.ApplyChatTemplate({{"user", "x"}}, true).ok());
  return grpc::Status::OK;
}

grpc::Status AdoreService::GetStats(grpc::ServerContext* context, const v1::GetStatsRequest*, v1::ServerStats* s) {
  if (grpc::Status st = CheckBearerMetadata(*context, auth_token_); !st.ok()) return st;
  const SchedulerStats st = scheduler_.stats();
  s->set_uptime_s(std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count());
  v1::RequestCounts* c = s->mutable_requests();
  c->set_ok(ok_);
  c->set_invalid_argument(invalid_);
  c->set_resource_exhausted(exhausted_);
  c->set_unavailable(unavailable_);
  c->set_cancelled(cancelled_);
  c->set_deadline_exceeded(deadline_);
  c->set_internal(internal_);
  s->set_prompt_tokens_total(st.prompt_tokens);
  s->set_completion_tokens_total(st.completion_tokens);
  s->set_active_requests(st.active);
  s->set_queued_requests(st.queued);
  s->set_kv_slots_used(st.kv_slots_used);
  s->set_kv_slots_free(info_.kv_rows - st.kv_slots_used);
  s->set_tokens_released_total(released_total_);
  s->set_tokens_rebuilt_total(rebuilt_total_);
  s->set_slot_map_checks_total(st.slot_map_checks);
  // One entry per rank (one before the first step), every rank holding the same slot map.
  const size_t ranks = std::max<size_t>(1, st.rank_step_s.size());
  for (size_t rank = 0; rank < ranks; ++rank) {
    v1::WorkerStats* w = s->add_workers();
    w->set_rank(static_cast<int32_t>(rank));
    w->set_healthy(true);
    w->set_kv_slots_used(st.kv_slots_used);
    w->set_kv_slots_free(info_.kv_rows - st.kv_slots_used);
    if (rank >= st.rank_step_s.size()) {
      w->set_address("embedded");
      continue;
    }
    const Histogram& h = st.rank_step_s[rank];
    const RankStepTiming& last = st.rank_last[rank];
    w->set_address(last.address.empty() ? "embedded" : last.address);
    w->set_steps(h.count);
    w->set_last_step_ms(last.step_ms);
    w->set_last_comm_ms(last.comm_ms);
    w->set_step_ms_total(1e3 * h.sum);
    w->set_comm_ms_total(1e3 * st.rank_comm_s[rank]);
    if (h.count > 0) {
      w->set_mean_step_ms(1e3 * h.sum / static_cast<double>(h.count));
      w->set_p99_step_ms(1e3 * h.Quantile(0.99));
    }
  }
  return grpc::Status::OK;
}

}  // namespace adore
