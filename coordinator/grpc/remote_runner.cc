// RemoteStepRunner: scheduler steps executed by worker processes over the worker API.
#include "coordinator/grpc/remote_runner.h"

#include "coordinator/grpc/adore_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include "absl/strings/str_format.h"
#include "common/status.h"
#if ADORE_HAVE_NCCL
#include "worker/comm/nccl_communicator.h"
#endif

namespace adore {

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
  if (!o.devices.empty() && o.devices.size() != o.workers.size()) {
    return absl::InvalidArgumentError(absl::StrFormat("devices: %d given for %d workers", o.devices.size(), o.workers.size()));
  }
  std::unique_ptr<RemoteStepRunner> r(new RemoteStepRunner());
  r->options_ = o;
  for (const std::string& addr : o.workers) {
    const size_t colon = addr.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == addr.size()) {
      return absl::InvalidArgumentError(absl::StrFormat("workers: '%s' is not host:port", addr));
    }
    r->ranks_.push_back(r->Dial(addr));
  }
  std::lock_guard<std::mutex> lock(r->mu_);
  ADORE_RETURN_IF_ERROR(r->Form());
  return r;
}

RemoteStepRunner::Rank RemoteStepRunner::Dial(const std::string& address) const {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  args.SetMaxSendMessageSize(256 << 20);
  // A worker that went away is dialed again within a second of coming back (gRPC's own backoff grows to
  // two minutes), so that CheckWorkers sees it return.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  Rank rank;
  rank.address = address;
  rank.channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  rank.stub = v1::Worker::NewStub(rank.channel);
  return rank;
}

void RemoteStepRunner::Log(const std::string& line) const {
  if (options_.log) {
    options_.log(line);
  } else {
    std::fprintf(stderr, "adore-server: %s\n", line.c_str());
    std::fflush(stderr);
  }
}

void RemoteStepRunner::Prepare(grpc::ClientContext* context, int64_t timeout_ms) const {
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  if (!options_.secret.empty()) context->AddMetadata("adore-worker-secret", options_.secret);
}

absl::Status RemoteStepRunner::RpcError(const grpc::Status& st, int rank, const std::string& what) const {
  const auto code = IsTransportFailure(st.error_code()) ? absl::StatusCode::kUnavailable
                                                        : static_cast<absl::StatusCode>(st.error_code());
  return absl::Status(code, absl::StrFormat("worker %s (rank %d): %s: %s", ranks_[rank].address, rank, what,
                                            st.error_message()));
}

absl::Status RemoteStepRunner::ForAllRanks(int64_t timeout_ms,
                                           const std::function<absl::Status(int, grpc::ClientContext*)>& fn) const {
  const int n = static_cast<int>(ranks_.size());
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts(n);
  for (auto& c : contexts) {
    c = std::make_unique<grpc::ClientContext>();
    Prepare(c.get(), timeout_ms);
  }
  if (n == 1) return fn(0, contexts[0].get());
  // A rank that fails makes the others' calls pointless (a Gloo peer would wait for it until its timeout):
  // they are cancelled, and the first failure is the step's error rather than a "cancelled".
  std::vector<absl::Status> results(n);
  std::atomic<int> first_failed{-1};
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      results[i] = fn(i, contexts[i].get());
      int none = -1;
      if (!results[i].ok() && first_failed.compare_exchange_strong(none, i)) {
        for (int j = 0; j < n; ++j) {
          if (j != i) contexts[j]->TryCancel();  // thread-safe; also before that call has started
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  return first_failed.load() < 0 ? absl::OkStatus() : results[first_failed.load()];
}

absl::Status RemoteStepRunner::HealthAll(std::vector<v1::WorkerHealthResponse>* health) const {
  health->assign(ranks_.size(), v1::WorkerHealthResponse());
  return ForAllRanks(options_.health_timeout_ms, [&](int rank, grpc::ClientContext* ctx) -> absl::Status {
    const grpc::Status st = ranks_[rank].stub->Health(ctx, v1::WorkerHealthRequest(), &(*health)[rank]);
    if (!st.ok()) return RpcError(st, rank, "Health");
    return absl::OkStatus();
  });
}

absl::Status RemoteStepRunner::Form() {
  // The new generation is newer than every rank's: a restarted coordinator counts from 0 again, and its
  // workers may be in a group of the one before.
  std::vector<v1::WorkerHealthResponse> health;
  ADORE_RETURN_IF_ERROR(HealthAll(&health));
  const bool connecting = epoch_ == 0;
  for (int rank = 0; rank < static_cast<int>(health.size()); ++rank) {
    const v1::WorkerHealthResponse& h = health[rank];
    if (connecting && h.state() == v1::WORKER_STATE_READY) {
      Log(absl::StrFormat("worker %s (rank %d) is loaded already (epoch %d, step %d, %d live sequences): taking it "
                          "over from an earlier coordinator; its sequences end",
                          ranks_[rank].address, rank, h.epoch(), h.last_step_id(), h.live_sequences()));
    }
    epoch_ = std::max<uint64_t>(epoch_, h.epoch());
  }
  ++epoch_;
  if (ranks_.size() > 1) {
    ADORE_RETURN_IF_ERROR(Bootstrap());
    ADORE_RETURN_IF_ERROR(Load());
  } else {
    ADORE_RETURN_IF_ERROR(Load());
    ADORE_RETURN_IF_ERROR(Reset());
  }
  broken_ = false;
  SetLastCheck(absl::OkStatus());
  return absl::OkStatus();
}

absl::Status RemoteStepRunner::Bootstrap() {
  // CPU ranks meet through a Gloo TCP store served here; CUDA ranks join an NCCL group whose unique id is
  // made here (its bootstrap root runs in this process, which outlives the group's formation).
  std::string rendezvous, nccl_id;
  if (options_.load.backend() == v1::BACKEND_CPU) {
    if (store_ == nullptr) {
      ADORE_ASSIGN_OR_RETURN(store_, comm::TcpStoreServer::Start(options_.rendezvous_host, 0));
    }
    rendezvous = absl::StrFormat("%s:%d", options_.rendezvous_host, store_->port());
  } else {
#if ADORE_HAVE_NCCL
    ADORE_ASSIGN_OR_RETURN(nccl_id, comm::NcclCommunicator::CreateUniqueId());
#else
    return absl::UnimplementedError(absl::StrFormat(
        "workers: %d CUDA workers need an NCCL group, and this coordinator is built without NCCL", ranks_.size()));
#endif
  }
  const int n = static_cast<int>(ranks_.size());
  // The epoch is the group's key namespace in the store: every formation uses a fresh one.
  return ForAllRanks(options_.bootstrap_timeout_ms + 10000, [&](int rank, grpc::ClientContext* ctx) -> absl::Status {
    v1::BootstrapRequest req;
    if (nccl_id.empty()) {
      req.set_gloo_rendezvous(rendezvous);
    } else {
      req.set_nccl_unique_id(nccl_id);
    }
    req.set_rank(rank);
    req.set_world_size(n);
    req.set_epoch(epoch_);
    req.set_timeout_ms(options_.bootstrap_timeout_ms);
    v1::BootstrapResponse resp;
    const grpc::Status st = ranks_[rank].stub->Bootstrap(ctx, req, &resp);
    if (!st.ok()) return RpcError(st, rank, "Bootstrap");
    return absl::OkStatus();
  });
}

absl::Status RemoteStepRunner::Load() {
  const int n = static_cast<int>(ranks_.size());
  std::vector<v1::LoadResponse> responses(n);
  ADORE_RETURN_IF_ERROR(ForAllRanks(options_.load_timeout_ms, [&](int rank, grpc::ClientContext* ctx) -> absl::Status {
    v1::LoadRequest req = options_.load;
    req.set_tp_rank(rank);
    req.set_tp_size(n);
    if (!options_.devices.empty()) req.set_device(options_.devices[rank]);
    const grpc::Status st = ranks_[rank].stub->Load(ctx, req, &responses[rank]);
    if (!st.ok()) return RpcError(st, rank, "Load");
    return absl::OkStatus();
  }));
  load_response_ = responses[0];
  for (int rank = 1; rank < n; ++rank) {  // the pool that bounds the scheduler: the smallest of the ranks
    load_response_.set_kv_capacity_slots(
        std::min(load_response_.kv_capacity_slots(), responses[rank].kv_capacity_slots()));
  }
  next_step_id_ = 1;
  live_.clear();
  orphans_.clear();
  return absl::OkStatus();
}

absl::Status RemoteStepRunner::Reset() {
  grpc::ClientContext ctx;
  Prepare(&ctx, options_.bootstrap_timeout_ms);
  v1::BootstrapRequest req;
  req.set_rank(0);
  req.set_world_size(1);
  req.set_epoch(epoch_);
  v1::BootstrapResponse resp;
  const grpc::Status st = ranks_[0].stub->Bootstrap(&ctx, req, &resp);
  if (!st.ok()) return RpcError(st, 0, "Bootstrap");
  next_step_id_ = 1;
  live_.clear();
  orphans_.clear();
  return absl::OkStatus();
}

absl::Status RemoteStepRunner::Probe() const {
  std::vector<v1::WorkerHealthResponse> health;
  ADORE_RETURN_IF_ERROR(HealthAll(&health));
  for (int rank = 0; rank < static_cast<int>(ranks_.size()); ++rank) {
    const v1::WorkerHealthResponse& h = health[rank];
    if (h.state() != v1::WORKER_STATE_READY || h.epoch() != epoch_ || h.last_step_id() + 1 != next_step_id_) {
      return absl::UnavailableError(absl::StrFormat(
          "worker %s (rank %d): %s, epoch %d, at step %d (the group: epoch %d, step %d)", ranks_[rank].address, rank,
          v1::WorkerState_Name(h.state()), h.epoch(), h.last_step_id(), epoch_, next_step_id_ - 1));
    }
  }
  return absl::OkStatus();
}

absl::Status RemoteStepRunner::Resync() {
  const int n = static_cast<int>(ranks_.size());
  std::vector<v1::WorkerHealthResponse> health;
  ADORE_RETURN_IF_ERROR(HealthAll(&health));
  std::string reform;  // why the group is formed again; empty: it goes on where it was
  for (int rank = 0; rank < n; ++rank) {
    const v1::WorkerHealthResponse& h = health[rank];
    if (h.state() == v1::WORKER_STATE_LOADING) {  // someone else's Load: wait for it
      return absl::UnavailableError(
          absl::StrFormat("worker %s (rank %d): not ready (loading)", ranks_[rank].address, rank));
    }
    if (!reform.empty()) continue;
    if (h.state() != v1::WORKER_STATE_READY) {
      reform = absl::StrFormat("worker %s (rank %d) is %s%s%s (restarted?)", ranks_[rank].address, rank,
                               v1::WorkerState_Name(h.state()), h.error().empty() ? "" : ": ", h.error());
    } else if (h.epoch() != epoch_) {
      reform = absl::StrFormat("worker %s (rank %d) is in epoch %d, the group in %d", ranks_[rank].address, rank,
                               h.epoch(), epoch_);
    } else if (h.last_step_id() != health[0].last_step_id()) {
      reform = absl::StrFormat("worker %s (rank %d) is at step %d, rank 0 at step %d", ranks_[rank].address, rank,
                               h.last_step_id(), health[0].last_step_id());
    }
  }
  if (!reform.empty()) {
    Log(absl::StrFormat("%s: forming the group of %d worker%s again", reform, n, n == 1 ? "" : "s"));
    const auto t0 = std::chrono::steady_clock::now();
    if (absl::Status st = Form(); !st.ok()) {
      Log(absl::StrFormat("forming the group again failed: %s", st.ToString()));
      return st;
    }
    Log(absl::StrFormat("the group of %d worker%s is formed again (epoch %d) in %.0f ms", n, n == 1 ? "" : "s",
                        epoch_, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count()));
    return absl::OkStatus();
  }
  next_step_id_ = health[0].last_step_id() + 1;  // the sequences the failed step left behind end with the next
  broken_ = false;
  return absl::OkStatus();
}

void RemoteStepRunner::ApplyReplacements() {
  std::map<int, std::string> replacements;
  {
    std::lock_guard<std::mutex> lock(replace_mu_);
    replacements.swap(replacements_);
  }
  for (const auto& [rank, address] : replacements) {
    if (ranks_[rank].address == address) continue;
    Log(absl::StrFormat("rank %d is now served at %s (was %s)", rank, address, ranks_[rank].address));
    ranks_[rank] = Dial(address);
    broken_ = true;
  }
}

void RemoteStepRunner::ReplaceWorker(int rank, const std::string& address) {
  if (rank < 0 || rank >= static_cast<int>(options_.workers.size())) return;
  std::lock_guard<std::mutex> lock(replace_mu_);
  replacements_[rank] = address;
}

void RemoteStepRunner::SetLastCheck(const absl::Status& status) {
  std::lock_guard<std::mutex> lock(state_mu_);
  last_check_ = status;
}

absl::Status RemoteStepRunner::CheckWorkers() {
  std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
  if (!lock.owns_lock()) {  // a step runs (or a check): what the latest one found
    std::lock_guard<std::mutex> state_lock(state_mu_);
    return last_check_;
  }
  if (!flights_.empty()) {  // pipelined steps in the air: what the latest step or check found
    std::lock_guard<std::mutex> state_lock(state_mu_);
    return last_check_;
  }
  ApplyReplacements();
  absl::Status st;
  if (!broken_) {
    if (std::chrono::steady_clock::now() - last_step_ok_ < std::chrono::milliseconds(options_.check_skip_after_step_ms)) {
      return absl::OkStatus();  // the workers answered a step just now
    }
    st = Probe();
    if (!st.ok()) broken_ = true;
  }
  if (broken_) st = Resync();
  SetLastCheck(st);
  return st;
}

std::vector<RankStepTiming> RemoteStepRunner::last_rank_timings() const {
  std::lock_guard<std::mutex> lock(mu_);
  return rank_timings_;
}

// The requests the scheduler ran in a failed step end with it; the worker frees them at the next step.
void RemoteStepRunner::Abandon(const WorkerStep& step) {
  for (uint64_t id : live_) orphans_.push_back(id);
  for (const SequenceStart& s : step.start) orphans_.push_back(s.id);
  for (uint64_t id : step.end) orphans_.push_back(id);
  live_.clear();
}

absl::StatusOr<WorkerStepResult> RemoteStepRunner::Step(const WorkerStep& step) {
  return Land(Launch(step, /*async=*/false));
}

void RemoteStepRunner::Submit(const WorkerStep& step) {
  // A sent step joins flights_ under the lock that gave it its id (Launch); one that failed before it was
  // sent comes back and joins here.
  std::unique_ptr<Flight> f = Launch(step, /*async=*/true);
  if (f == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  flights_.push_back(std::move(f));
}

absl::StatusOr<WorkerStepResult> RemoteStepRunner::Wait() {
  // The oldest step stays in flights_ until Land holds mu_: CheckWorkers must never find no step in the air
  // while one is (it would probe the workers mid-step, find them behind, and resynchronize the step ids
  // under the step's feet).
  Flight* front = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (flights_.empty()) return absl::FailedPreconditionError("Wait without a submitted step");
    front = flights_.front().get();  // only this thread (the scheduler's) adds or removes flights
  }
  if (front->thread.joinable()) front->thread.join();
  mu_.lock();
  std::unique_ptr<Flight> f = std::move(flights_.front());
  flights_.pop_front();
  f->locked = true;  // Land takes over the lock
  return Land(std::move(f));
}

std::unique_ptr<RemoteStepRunner::Flight> RemoteStepRunner::Launch(const WorkerStep& step, bool async) {
  auto f = std::make_unique<Flight>();
  f->t0 = std::chrono::steady_clock::now();
  f->step = step;
  std::unique_lock<std::mutex> lock(mu_);
  if (flights_.empty()) {
    pipeline_failed_ = false;
    ApplyReplacements();  // not while a step is in the air: re-dialing would pull its stubs away
  } else if (broken_ || pipeline_failed_) {  // an earlier step in the air failed: this one cannot run
    f->status = absl::UnavailableError("an earlier step of the pipeline failed");
    return f;
  }
  if (broken_) {
    if (absl::Status st = Resync(); !st.ok()) {
      SetLastCheck(st);
      f->status = st;
      return f;
    }
  }
  // A group formed again (by CheckWorkers, between steps) has lost the sequences of the one before.
  for (const SequenceDecode& d : step.decode) {
    if (!live_.count(d.id) && !starting_.count(d.id)) {
      f->status = absl::UnavailableError(absl::StrFormat(
          "sequence %d was lost: the worker group was formed again (a worker restarted) while it ran", d.id));
      return f;
    }
  }
  v1::StepRequest& req = f->req;
  req.set_step_id(next_step_id_++);
  req.set_epoch(epoch_);
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
    starting_.insert(s.id);
  }
  for (const SequenceDecode& d : step.decode) {
    v1::SequenceDecode* out = req.add_decode();
    out->set_seq_id(d.id);
    if (d.token != kOwnSample) out->set_last_token(d.token);  // unset: the worker's own latest sample
  }
  f->sent = true;
  f->responses.resize(ranks_.size());
  if (!async) {  // the whole step under mu_, as CheckWorkers expects of a step that runs
    f->status = Send(*f);
    lock.release();  // Land takes over the lock
    f->locked = true;
    return f;
  }
  Flight* raw = f.get();
  f->thread = std::thread([this, raw] { raw->status = Send(*raw); });
  flights_.push_back(std::move(f));  // in the air from now on, for CheckWorkers too (see Wait)
  return nullptr;
}

// The step's RPC to every rank (no lock: only a step in the air uses the stubs, see Launch).
absl::Status RemoteStepRunner::Send(Flight& f) const {
  const v1::StepRequest& req = f.req;
  const int n = static_cast<int>(ranks_.size());
  const size_t expected = f.step.start.size() + f.step.decode.size();
  return ForAllRanks(options_.step_timeout_ms, [&](int rank, grpc::ClientContext* ctx) -> absl::Status {
    const grpc::Status s = ranks_[rank].stub->Step(ctx, req, &f.responses[rank]);
    if (!s.ok()) {
      absl::Status e = RpcError(s, rank, absl::StrFormat("step %d", req.step_id()));
      // A rank that failed leaves the group out of step: every failure of a group is UNAVAILABLE.
      if (n > 1 && e.code() != absl::StatusCode::kUnavailable) e = absl::UnavailableError(e.message());
      return e;
    }
    if (f.responses[rank].outputs_size() != static_cast<int>(expected)) {
      return absl::InternalError(absl::StrFormat("worker %s (rank %d): step %d returned %d outputs for %d sequences",
                                                 ranks_[rank].address, rank, req.step_id(),
                                                 f.responses[rank].outputs_size(), expected));
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<WorkerStepResult> RemoteStepRunner::Land(std::unique_ptr<Flight> f) {
  if (f->thread.joinable()) f->thread.join();
  std::unique_lock<std::mutex> lock =
      f->locked ? std::unique_lock<std::mutex>(mu_, std::adopt_lock) : std::unique_lock<std::mutex>(mu_);
  for (const SequenceStart& s : f->step.start) starting_.erase(s.id);
  const WorkerStep& step = f->step;
  const v1::StepRequest& req = f->req;
  const int n = static_cast<int>(ranks_.size());
  absl::Status st = f->status;
  if (st.ok() && pipeline_failed_) st = absl::UnavailableError("an earlier step of the pipeline failed");
  if (!st.ok()) {
    // It may or may not have run (on some ranks): ask first. A later step already in the air fails too.
    if (f->sent && (n > 1 || !flights_.empty() || st.code() == absl::StatusCode::kUnavailable ||
                    st.code() == absl::StatusCode::kInternal)) {
      broken_ = true;
      SetLastCheck(st);  // not ready until a check or step resynchronizes
    }
    if (!flights_.empty()) {
      pipeline_failed_ = true;
    } else if (f->sent && !broken_) {
      next_step_id_ = req.step_id();  // a failed step changes nothing on the worker and does not use its id
    }
    Abandon(step);
    return st;
  }
  last_step_ok_ = std::chrono::steady_clock::now();
  orphans_.clear();
  for (uint64_t id : step.end) live_.erase(id);
  const v1::StepResult& resp = f->responses[0];
  const std::vector<v1::StepResult>& responses = f->responses;
  const auto t0 = f->t0;
  auto abandon = [&] { Abandon(step); };
  // Every rank must have taken the same release decisions and sampled the same token (a worker decodes its
  // own sample when a pipelined step leaves last_token unset).
  for (int rank = 1; rank < n; ++rank) {
    for (int i = 0; i < resp.outputs_size(); ++i) {
      const v1::SequenceOutput& a = resp.outputs(i);
      const v1::SequenceOutput& b = responses[rank].outputs(i);
      const int32_t ta = a.has_token() ? a.token() : -1, tb = b.has_token() ? b.token() : -1;
      if (a.seq_id() != b.seq_id() || a.slot_map_hash() != b.slot_map_hash() || a.error_code() != b.error_code() ||
          ta != tb) {
        broken_ = true;
        if (!flights_.empty()) pipeline_failed_ = true;
        abandon();
        SetLastCheck(absl::UnavailableError("the ranks diverged at the latest step"));
        return absl::InternalError(absl::StrFormat(
            "step %d: sequence %d: rank %d (%s) diverged from rank 0 (%s): slot map hash %x vs %x, error %d vs %d, "
            "token %d vs %d",
            req.step_id(), a.seq_id(), rank, ranks_[rank].address, ranks_[0].address, b.slot_map_hash(),
            a.slot_map_hash(), b.error_code(), a.error_code(), tb, ta));
      }
    }
  }
  rank_timings_.resize(n);
  for (int rank = 0; rank < n; ++rank) {
    rank_timings_[rank] = {.step_ms = responses[rank].timing().total_ms(),
                           .comm_ms = responses[rank].timing().comm_ms(),
                           .address = ranks_[rank].address};
  }
  WorkerStepResult out;
  if (n > 1) out.slot_map_checks = resp.outputs_size();  // all compared above, all equal
  for (const v1::SequenceOutput& o : resp.outputs()) {
    SequenceStepResult r;
    r.id = o.seq_id();
    if (o.error_code() != 0) {
      r.status = absl::Status(static_cast<absl::StatusCode>(o.error_code()), o.error_message());
      live_.erase(r.id);
    } else if (!o.has_token()) {
      r.status = absl::InternalError(
          absl::StrFormat("worker %s (rank 0): no token for sequence %d", ranks_[0].address, r.id));
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
  out.kv_slots_used = resp.kv_slots_used();  // rank 0's: every rank holds the same slot map
  out.step_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  SetLastCheck(absl::OkStatus());
  return out;
}

}  // namespace adore
