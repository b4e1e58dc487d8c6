// RemoteStepRunner: scheduler steps executed by worker processes over the worker API.
#include "coordinator/grpc/remote_runner.h"

#include "coordinator/grpc/adore_service.h"

#include <chrono>

#include "absl/strings/str_format.h"
#include "common/status.h"

namespace adore {

namespace v1 = ::adore::v1;

namespace {

// Failures of the connection (or of the worker as a whole) rather than answers about the request.
bool IsTransportFailure(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
         code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::UNKNOWN ||
         code == grpc::StatusCode::INTERNAL || code == grpc::StatusCode::ABORTED;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RemoteStepRunner>> RemoteStepRunner::Connect(const RemoteRunnerOptions& o) {
  if (o.workers.empty()) return absl::InvalidArgumentError("workers: no worker address given");
  if (o.workers.size() > 1) {
    return absl::UnimplementedError(absl::StrFormat(
        "workers: %d workers given; tensor parallelism across worker processes is not built yet (give 1)",
        o.workers.size()));
  }
  const std::string& addr = o.workers[0];
  const size_t colon = addr.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == addr.size()) {
    return absl::InvalidArgumentError(absl::StrFormat("workers: '%s' is not host:port", addr));
  }
  std::unique_ptr<RemoteStepRunner> r(new RemoteStepRunner());
  r->options_ = o;
  r->address_ = addr;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  args.SetMaxSendMessageSize(256 << 20);
  r->channel_ = grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args);
  r->stub_ = v1::Worker::NewStub(r->channel_);
  ADORE_RETURN_IF_ERROR(r->Load());
  return r;
}

void RemoteStepRunner::Prepare(grpc::ClientContext* context, int64_t timeout_ms) const {
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  if (!options_.secret.empty()) context->AddMetadata("adore-worker-secret", options_.secret);
}

absl::Status RemoteStepRunner::RpcError(const grpc::Status& st, const char* what) const {
  const auto code = IsTransportFailure(st.error_code()) ? absl::StatusCode::kUnavailable
                                                        : static_cast<absl::StatusCode>(st.error_code());
  return absl::Status(code, absl::StrFormat("worker %s (rank 0): %s: %s", address_, what, st.error_message()));
}

absl::Status RemoteStepRunner::Load() {
  v1::LoadRequest req = options_.load;
  req.set_tp_rank(0);
  req.set_tp_size(1);
  grpc::ClientContext ctx;
  Prepare(&ctx, options_.load_timeout_ms);
  v1::LoadResponse resp;
  const grpc::Status st = stub_->Load(&ctx, req, &resp);
  if (!st.ok()) return RpcError(st, "Load");
  load_response_ = resp;
  next_step_id_ = 1;
  live_.clear();
  orphans_.clear();
  return absl::OkStatus();
}

absl::Status RemoteStepRunner::Resync() {
  grpc::ClientContext ctx;
  Prepare(&ctx, options_.health_timeout_ms);
  v1::WorkerHealthResponse h;
  const grpc::Status st = stub_->Health(&ctx, v1::WorkerHealthRequest(), &h);
  if (!st.ok()) return RpcError(st, "Health");
  switch (h.state()) {
    case v1::WORKER_STATE_EMPTY:  // restarted: load it again, nothing of ours lives there
      ADORE_RETURN_IF_ERROR(Load());
      break;
    case v1::WORKER_STATE_READY:
      next_step_id_ = h.last_step_id() + 1;
      break;
    default:
      return absl::UnavailableError(absl::StrFormat("worker %s (rank 0): not ready (state %s%s%s)", address_,
                                                    v1::WorkerState_Name(h.state()), h.error().empty() ? "" : ": ",
                                                    h.error()));
  }
  broken_ = false;
  return absl::OkStatus();
}

absl::StatusOr<WorkerStepResult> RemoteStepRunner::Step(const WorkerStep& step) {
  const auto t0 = std::chrono::steady_clock::now();
  auto abandon = [&] {  // the scheduler ends every running request after a failed step
    for (uint64_t id : live_) orphans_.push_back(id);
    for (const SequenceStart& s : step.start) orphans_.push_back(s.id);
    for (uint64_t id : step.end) orphans_.push_back(id);
    live_.clear();
  };
  if (broken_) {
    if (absl::Status st = Resync(); !st.ok()) {
      abandon();
      return st;
    }
  }
  v1::StepRequest req;
  req.set_step_id(next_step_id_);
  req.set_epoch(0);
  for (uint64_t id : orphans_) req.add_end(id);
  for (uint64_t id : step.end) req.add_end(id);
  for (const SequenceStart& s : step.start) {
    v1::SequenceStart* out = req.add_start();
    out->set_seq_id(s.id);
    out->mutable_prompt_tokens()->Add(s.prompt.begin(), s.prompt.end());
    out->mutable_release()->set_policy(PolicyToProto(s.release.kind));
    out->mutable_release()->set_kv_budget(s.release.kind == PolicyKind::kFull ? 0 : s.release.kv_budget);
    out->mutable_release()->set_rebuild(s.release.rebuild);
    v1::SamplerConfig* sc = out->mutable_sampler();
    sc->set_temperature(s.sampling.temperature);
    sc->set_top_k(s.sampling.top_k);
    sc->set_top_p(s.sampling.top_p);
    sc->set_seed(s.sampling.seed);
  }
  for (const SequenceDecode& d : step.decode) {
    v1::SequenceDecode* out = req.add_decode();
    out->set_seq_id(d.id);
    out->set_last_token(d.token);
  }
  grpc::ClientContext ctx;
  Prepare(&ctx, options_.step_timeout_ms);
  v1::StepResult resp;
  const grpc::Status st = stub_->Step(&ctx, req, &resp);
  if (!st.ok()) {
    if (IsTransportFailure(st.error_code())) broken_ = true;  // it may or may not have run: ask first
    abandon();
    return RpcError(st, absl::StrFormat("step %d", req.step_id()).c_str());
  }
  ++next_step_id_;
  orphans_.clear();
  for (uint64_t id : step.end) live_.erase(id);
  if (resp.outputs_size() != static_cast<int>(step.start.size() + step.decode.size())) {
    broken_ = true;
    abandon();
    return absl::InternalError(absl::StrFormat("worker %s (rank 0): step %d returned %d outputs for %d sequences",
                                               address_, req.step_id(), resp.outputs_size(),
                                               step.start.size() + step.decode.size()));
  }
  WorkerStepResult out;
  for (const v1::SequenceOutput& o : resp.outputs()) {
    SequenceStepResult r;
    r.id = o.seq_id();
    if (o.error_code() != 0) {
      r.status = absl::Status(static_cast<absl::StatusCode>(o.error_code()), o.error_message());
      live_.erase(r.id);
    } else if (!o.has_token()) {
      r.status = absl::InternalError(absl::StrFormat("worker %s (rank 0): no token for sequence %d", address_, r.id));
      orphans_.push_back(r.id);
      live_.erase(r.id);
    } else {
      r.token = o.token();
      r.release_stats.released = o.stats().tokens_released_total();
      r.release_stats.rebuilt = o.stats().tokens_rebuilt_total();
      r.kv_slots = o.stats().kv_slots_in_use();
      live_.insert(r.id);
    }
    out.sequences.push_back(std::move(r));
  }
  out.step_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace adore
