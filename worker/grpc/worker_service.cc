// WorkerService: the adore.v1.Worker API over one StepExecutor, driven by an actor thread.
#include "worker/grpc/worker_service.h"

#include <grpcpp/health_check_service_interface.h>

#include <omp.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <future>
#include <unordered_set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "common/model_weights.h"
#include "common/security.h"
#include "common/sha256.h"
#include "common/synthetic_model.h"
#include "worker/comm/gloo_communicator.h"
#include "worker/cpu_engine.h"
#include "worker/memory_budget.h"
#include "worker/release_policy.h"
#if ADORE_WITH_CUDA
#include "worker/cuda/cuda_engine.h"
#endif
#if ADORE_HAVE_NCCL
#include "worker/comm/nccl_communicator.h"
#endif

namespace adore {

namespace v1 = ::adore::v1;

namespace {

// One line on stderr for what an operator needs to follow a group's life (failed steps, leaving and joining
// groups); the per-step path logs nothing while it succeeds.
void Log(const std::string& line) {
  static const auto start = std::chrono::steady_clock::now();
  const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "adore-worker: [%.3f s] %s\n", t, line.c_str());
  std::fflush(stderr);
}

grpc::Status Err(grpc::StatusCode code, const std::string& message) { return grpc::Status(code, message); }
grpc::Status Invalid(const std::string& message) { return Err(grpc::StatusCode::INVALID_ARGUMENT, message); }

grpc::Status FromAbsl(const absl::Status& st, const std::string& prefix = "") {
  if (st.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), prefix + std::string(st.message()));
}

absl::StatusOr<PolicyKind> FromProto(v1::Policy p) {
  switch (p) {
    case v1::POLICY_FULL: return PolicyKind::kFull;
    case v1::POLICY_WINDOW: return PolicyKind::kWindow;
    case v1::POLICY_HEAVY_HITTER: return PolicyKind::kHeavyHitter;
    case v1::POLICY_ADORE: return PolicyKind::kAdore;
    default: return absl::InvalidArgumentError(absl::StrFormat("policy: %d is not a known policy", p));
  }
}

}  // namespace

WorkerService::WorkerService(WorkerServiceOptions options)
    : options_(std::move(options)), started_(std::chrono::steady_clock::now()) {
  health_.set_state(v1::WORKER_STATE_EMPTY);
  thread_ = std::thread([this] { Loop(); });
}

WorkerService::~WorkerService() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  executor_.reset();  // releases the live sequences' rows before the engine goes
  engine_.reset();
}

void WorkerService::Loop() {
  while (true) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stopping, nothing left
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

grpc::Status WorkerService::Post(std::function<grpc::Status()> job) { return Enqueue(std::move(job)).get(); }

std::future<grpc::Status> WorkerService::Enqueue(std::function<grpc::Status()> job) {
  auto done = std::make_shared<std::promise<grpc::Status>>();
  std::future<grpc::Status> result = done->get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) {
      done->set_value(Err(grpc::StatusCode::UNAVAILABLE, "worker shutting down"));
      return result;
    }
    jobs_.push_back([done, job = std::move(job)] { done->set_value(job()); });
  }
  cv_.notify_one();
  return result;
}

grpc::Status WorkerService::Authenticate(const grpc::ServerContext& context) const {
  if (options_.secret.empty()) return grpc::Status::OK;
  const auto& md = context.client_metadata();
  auto it = md.find(kWorkerSecretKey);
  if (it == md.end()) {
    return Err(grpc::StatusCode::UNAUTHENTICATED, absl::StrFormat("%s: missing", kWorkerSecretKey));
  }
  if (!ConstantTimeEquals(std::string(it->second.data(), it->second.size()), options_.secret)) {
    return Err(grpc::StatusCode::UNAUTHENTICATED, absl::StrFormat("%s: wrong secret", kWorkerSecretKey));
  }
  return grpc::Status::OK;
}

grpc::Status WorkerService::Load(grpc::ServerContext* context, const v1::LoadRequest* request,
                                 v1::LoadResponse* response) {
  if (grpc::Status st = Authenticate(*context); !st.ok()) return st;
  return Post([&] { return DoLoad(*request, response); });
}

grpc::Status WorkerService::Bootstrap(grpc::ServerContext* context, const v1::BootstrapRequest* request,
                                      v1::BootstrapResponse* response) {
  if (grpc::Status st = Authenticate(*context); !st.ok()) return st;
  return Post([&] { return DoBootstrap(*request, response); });
}

grpc::Status WorkerService::Step(grpc::ServerContext* context, const v1::StepRequest* request,
                                 v1::StepResult* response) {
  if (grpc::Status st = Authenticate(*context); !st.ok()) return st;
  std::future<grpc::Status> result;
  {
    // A pipelining coordinator sends step n + 1 before step n's answer, and the two calls may reach this
    // point in either order: steps go to the actor in step_id order. The next step, a repeated one or the
    // first of another epoch (a new generation counts from 1 again) goes at once; a gap that does not close
    // within 10 s (or the call's deadline) goes too, and DoStep refuses it.
    std::unique_lock<std::mutex> lock(order_mu_);
    const auto limit = std::min(context->deadline(), std::chrono::system_clock::now() + std::chrono::seconds(10));
    order_cv_.wait_until(lock, limit, [&] {
      if (context->IsCancelled()) return true;
      if (request->epoch() != order_epoch_) return request->step_id() <= 1;
      return request->step_id() <= order_posted_ + 1;
    });
    if (request->epoch() != order_epoch_) {
      order_epoch_ = request->epoch();
      order_posted_ = request->step_id();
    } else {
      order_posted_ = std::max(order_posted_, request->step_id());
    }
    // Into the mailbox before the next step's call may pass the gate.
    result = Enqueue([&] { return DoStep(*request, response); });
  }
  order_cv_.notify_all();
  return result.get();
}

grpc::Status WorkerService::Health(grpc::ServerContext* context, const v1::WorkerHealthRequest*,
                                   v1::WorkerHealthResponse* response) {
  if (grpc::Status st = Authenticate(*context); !st.ok()) return st;
  std::lock_guard<std::mutex> lock(health_mu_);
  *response = health_;
  response->set_uptime_s(std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count());
  return grpc::Status::OK;
}

void WorkerService::SetReadyLocked(bool ready) {
  if (ready == ready_published_) return;
  ready_published_ = ready;
  if (options_.on_ready_changed) options_.on_ready_changed(ready);
}

void WorkerService::RepublishReady() {
  std::lock_guard<std::mutex> lock(health_mu_);
  if (options_.on_ready_changed) options_.on_ready_changed(ready_published_);
}

void WorkerService::PublishHealth() {
  std::lock_guard<std::mutex> lock(health_mu_);
  if (loaded_) health_.set_state(v1::WORKER_STATE_READY);
  SetReadyLocked(loaded_);
  health_.set_epoch(epoch_);
  health_.set_last_step_id(last_step_id_);
  health_.set_live_sequences(static_cast<int64_t>(totals_.size()));
  health_.set_kv_slots_used(slots_used_);
  health_.set_kv_slots_free(kv_capacity_ - slots_used_);
  health_.set_model_sha256(load_response_.model().model_sha256());
}

grpc::Status WorkerService::DoLoad(const v1::LoadRequest& r, v1::LoadResponse* response) {
  if (loaded_) {
    if (r.SerializeAsString() == load_request_bytes_) {
      *response = load_response_;
      return grpc::Status::OK;
    }
    return Err(grpc::StatusCode::FAILED_PRECONDITION,
               "load: this worker is loaded with different settings; restart it to change models");
  }
  const auto t0 = std::chrono::steady_clock::now();
  // Validate everything before the slow part.
  if (r.model_path().empty()) return Invalid("model_path: must not be empty");
  if (r.tp_size() < 1) return Invalid(absl::StrFormat("tp_size: %d is not >= 1", r.tp_size()));
  if (r.tp_rank() < 0 || r.tp_rank() >= r.tp_size()) {
    return Invalid(absl::StrFormat("tp_rank: %d is not in [0, %d)", r.tp_rank(), r.tp_size()));
  }
  if (r.tp_size() > 1) {
    const std::string want = r.backend() == v1::BACKEND_CPU ? "gloo" : "nccl";
    if (comm_ != nullptr && comm_->backend() != want) {
      return Invalid(absl::StrFormat("backend: this worker's group communicates over %s, %s needs %s",
                                     comm_->backend(), v1::Backend_Name(r.backend()), want));
    }
    if (comm_ == nullptr || comm_->world_size() != r.tp_size() || comm_->rank() != r.tp_rank()) {
      return Err(grpc::StatusCode::FAILED_PRECONDITION,
                 absl::StrFormat("tp_size: %d needs a Bootstrap with rank %d and world_size %d first", r.tp_size(),
                                 r.tp_rank(), r.tp_size()));
    }
  }
  if (r.backend() == v1::BACKEND_CPU) {
    if (r.device() != 0) return Invalid(absl::StrFormat("device: must be 0 for BACKEND_CPU, got %d", r.device()));
  } else if (r.backend() == v1::BACKEND_CUDA) {
#if !ADORE_WITH_CUDA
    return Invalid("backend: this worker is built without CUDA");
#endif
    if (r.device() < 0) return Invalid(absl::StrFormat("device: %d is negative", r.device()));
    if (r.tp_size() > 1 && r.device() != options_.device) {
      return Invalid(absl::StrFormat("device: %d is not the device this worker's NCCL group runs on (%d, its "
                                     "--device)", r.device(), options_.device));
    }
  } else {
    return Invalid("backend: must be BACKEND_CPU or BACKEND_CUDA");
  }
  if (r.memory_budget_bytes() < 0) return Invalid("memory_budget_bytes: must be >= 0");
  if (r.cpu_threads() < 0 || r.cpu_threads() > 4096) {
    return Invalid(absl::StrFormat("cpu_threads: %d is not in [0, 4096]", r.cpu_threads()));
  }
  if (r.policy_prefill_chunk() < 0 || r.policy_prefill_chunk() > 4096) {
    return Invalid(absl::StrFormat("policy_prefill_chunk: %d is not in [0, 4096]", r.policy_prefill_chunk()));
  }
  // The digest the file must have: the request's, and this worker's own pin (--model_sha256), which wins.
  std::string expected_sha256;
  if (!r.expected_sha256().empty()) {
    bool hex = r.expected_sha256().size() == 64;
    for (char ch : r.expected_sha256()) hex = hex && ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'));
    if (!hex) return Invalid("expected_sha256: must be 64 lower-case hex digits");
    expected_sha256 = r.expected_sha256();
  }
  if (!options_.model_sha256.empty()) {
    if (!expected_sha256.empty() && expected_sha256 != options_.model_sha256) {
      return Err(grpc::StatusCode::FAILED_PRECONDITION,
                 absl::StrFormat("expected_sha256: the coordinator expects %s, this worker only loads %s "
                                 "(its --model_sha256)", expected_sha256, options_.model_sha256));
    }
    expected_sha256 = options_.model_sha256;
  }
  const bool synthetic = IsSyntheticModel(r.model_path());
  if (synthetic && !expected_sha256.empty()) {
    return Invalid(absl::StrFormat("expected_sha256: %s has no file to hash", r.model_path()));
  }
  if (synthetic) {
    if (r.backend() != v1::BACKEND_CUDA) {
      return Invalid(absl::StrFormat("model_path: %s (random weights generated on the GPU) needs BACKEND_CUDA",
                                     r.model_path()));
    }
    if (absl::StatusOr<ModelConfig> c = SyntheticModelConfig(r.model_path()); !c.ok()) {
      return FromAbsl(c.status(), "model_path: ");
    }
  } else if (!std::filesystem::exists(r.model_path())) {
    return Err(grpc::StatusCode::NOT_FOUND, absl::StrFormat("model_path: %s does not exist", r.model_path()));
  }
  if (!r.controller_path().empty() && !std::filesystem::exists(r.controller_path())) {
    return Err(grpc::StatusCode::NOT_FOUND,
               absl::StrFormat("controller_path: %s does not exist", r.controller_path()));
  }
  {
    std::lock_guard<std::mutex> lock(health_mu_);
    health_.set_state(v1::WORKER_STATE_LOADING);
    SetReadyLocked(false);
  }
  auto fail_load = [&](const grpc::Status& st) {
    std::lock_guard<std::mutex> lock(health_mu_);
    health_.set_state(v1::WORKER_STATE_EMPTY);
    health_.set_error(st.error_message());
    return st;
  };
  std::string model_sha256;  // computed when checked
  if (!expected_sha256.empty()) {
    absl::StatusOr<std::string> digest = VerifyModelSha256(r.model_path(), expected_sha256);
    if (!digest.ok()) return fail_load(FromAbsl(digest.status(), "expected_sha256: "));
    model_sha256 = *std::move(digest);
  }
  std::unique_ptr<AdoreController> controller;
  if (!r.controller_path().empty()) {
    auto c = AdoreController::Load(r.controller_path());
    if (!c.ok()) return fail_load(FromAbsl(c.status(), "controller_path: "));
    controller = *std::move(c);
  }
  auto weights = synthetic ? SyntheticModelInfo(r.model_path()) : LoadModelWeights(r.model_path());
  if (!weights.ok()) return fail_load(FromAbsl(weights.status(), "model_path: "));
  const ModelConfig config = weights->config;
  // default_release: the request's defaults must be fully resolved and in range.
  {
    auto kind = FromProto(r.default_release().policy());
    if (!kind.ok()) return fail_load(Invalid("default_release.policy: must be set to a known policy"));
    ReleaseConfig rc{.kind = *kind, .kv_budget = r.default_release().kv_budget(),
                     .rebuild = r.default_release().rebuild()};
    if (rc.kind == PolicyKind::kFull) rc.kv_budget = 0;
    if (rc.kind == PolicyKind::kAdore && controller == nullptr) {
      return fail_load(Err(grpc::StatusCode::FAILED_PRECONDITION,
                           "default_release.policy: POLICY_ADORE needs controller_path"));
    }
    rc.controller = controller.get();
    if (absl::Status st = rc.Validate(config.max_context); !st.ok()) {
      return fail_load(FromAbsl(st, "default_release."));
    }
  }
  if (r.cpu_threads() > 0) omp_set_num_threads(r.cpu_threads());  // this thread runs every forward

  const int64_t weights_bytes = WeightsFloatBytes(*weights);
  int64_t slot_bytes = 0, capacity = 0;
  std::unique_ptr<Engine> engine;
  v1::Backend backend = r.backend();
  if (backend == v1::BACKEND_CPU) {
    slot_bytes = 2 * config.num_layers * std::max<int64_t>(config.num_kv_heads / r.tp_size(), 1) * config.head_dim *
                 static_cast<int64_t>(sizeof(float));
    if (r.memory_budget_bytes() > 0) {
      absl::StatusOr<int64_t> rows = CpuKvRowsForBudget(r.memory_budget_bytes(), weights_bytes, slot_bytes);
      if (!rows.ok()) return fail_load(FromAbsl(rows.status()));
      capacity = *rows;
    } else {
      capacity = 8 * config.max_context;  // the CPU default of adore-server (not all free RAM)
    }
    CpuEngineOptions eo{.kv_rows = capacity};
    if (r.tp_size() > 1) {
      eo.tp_rank = r.tp_rank();
      eo.tp_size = r.tp_size();
      eo.comm = comm_.get();
    }
    auto e = CpuEngine::Create(*std::move(weights), eo);
    if (!e.ok()) return fail_load(FromAbsl(e.status()));
    engine = *std::move(e);
  } else {
#if ADORE_WITH_CUDA
    CudaEngineOptions co;
    co.max_batch = 128;
    co.max_logit_rows = 256;
    co.max_tokens = std::max<int64_t>(4096, co.max_batch * (1 + kMaxRebuild));
    co.device = r.device();
    if (r.memory_budget_bytes() > 0) {
      absl::StatusOr<int64_t> kv_bytes = CudaKvBytesForBudget(r.memory_budget_bytes(), weights_bytes);
      if (!kv_bytes.ok()) return fail_load(FromAbsl(kv_bytes.status()));
      co.kv_bytes = *kv_bytes;
    }
    if (r.tp_size() > 1) {
      co.tp_rank = r.tp_rank();
      co.tp_size = r.tp_size();
      co.comm = comm_.get();
    }
    co.adore_controller = controller.get();  // adore's controller runs on the GPU (the object outlives the engine)
    co.adore_lanes = 2 * co.max_batch;
    SetCudaPolicyChunk(PolicyPrefillChunkOption(r.policy_prefill_chunk()), &co);
    auto e = synthetic ? CudaEngine::CreateSynthetic(config, /*seed=*/1, co) : CudaEngine::Create(*weights, co);
    if (!e.ok()) return fail_load(FromAbsl(e.status()));
    capacity = (*e)->pool().num_rows();
    slot_bytes = 2 * config.num_layers * (config.num_kv_heads / r.tp_size()) * config.head_dim * 2;
    engine = *std::move(e);
#endif
  }

  controller_ = std::move(controller);
  engine_ = std::move(engine);
  executor_options_ = {.policy_prefill_chunk = PolicyPrefillChunkOption(r.policy_prefill_chunk())};
  executor_ = std::make_unique<StepExecutor>(*engine_, executor_options_);
  kv_capacity_ = capacity;
  loaded_ = true;
  load_request_bytes_ = r.SerializeAsString();
  v1::ModelInfo* m = load_response_.mutable_model();
  m->set_name(config.name);
  m->set_architecture(config.architecture);
  m->set_vocab_size(static_cast<int32_t>(config.vocab_size));
  m->set_context_length(static_cast<int32_t>(config.max_context));
  m->set_hidden_size(static_cast<int32_t>(config.hidden_size));
  m->set_num_layers(static_cast<int32_t>(config.num_layers));
  m->set_num_heads(static_cast<int32_t>(config.num_heads));
  m->set_num_kv_heads(static_cast<int32_t>(config.num_kv_heads));
  m->set_tensor_parallel_size(r.tp_size());
  m->set_backend(backend);
  m->set_model_sha256(model_sha256);
  *m->mutable_default_release() = r.default_release();
  for (v1::Policy p : {v1::POLICY_FULL, v1::POLICY_WINDOW, v1::POLICY_HEAVY_HITTER}) m->add_available_policies(p);
  if (controller_ != nullptr) m->add_available_policies(v1::POLICY_ADORE);
  m->set_min_kv_budget(16);
  m->set_max_rebuild(kMaxRebuild);
  load_response_.set_kv_capacity_slots(capacity);
  load_response_.set_kv_slot_bytes(slot_bytes);
  load_response_.set_weights_bytes(backend == v1::BACKEND_CPU ? weights_bytes : weights_bytes / 2);
  load_response_.set_load_ms(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  *response = load_response_;
  {
    std::lock_guard<std::mutex> lock(health_mu_);
    health_.set_rank(r.tp_rank());
    health_.set_world_size(r.tp_size());
    health_.clear_error();
  }
  PublishHealth();
  return grpc::Status::OK;
}

grpc::Status WorkerService::DoBootstrap(const v1::BootstrapRequest& r, v1::BootstrapResponse* response) {
  if (r.world_size() > 1) return DoBootstrapGroup(r, response);
  if (!loaded_) return Err(grpc::StatusCode::FAILED_PRECONDITION, "bootstrap: the worker is not loaded (call Load first)");
  if (r.world_size() != 1) return Invalid(absl::StrFormat("world_size: %d is not Load's tp_size 1", r.world_size()));
  if (r.rank() != 0) return Invalid(absl::StrFormat("rank: %d is not Load's tp_rank 0", r.rank()));
  if (r.epoch() < 1) return Invalid("epoch: must be >= 1");
  if (r.timeout_ms() < 0 || r.timeout_ms() > 600000) {
    return Invalid(absl::StrFormat("timeout_ms: %d is not in [0, 600000]", r.timeout_ms()));
  }
  if (r.epoch() < epoch_) {
    return Err(grpc::StatusCode::FAILED_PRECONDITION,
               absl::StrFormat("epoch: %d is older than the current epoch %d", r.epoch(), epoch_));
  }
  if (r.epoch() > epoch_) {  // a new generation: every sequence ends, steps count from 1 again
    executor_ = std::make_unique<StepExecutor>(*engine_, executor_options_);
    totals_.clear();
    slots_.clear();
    slots_used_ = 0;
    last_step_id_ = 0;
    last_result_.Clear();
    epoch_ = r.epoch();
  }
  response->set_communicator("none");
  response->set_rendezvous_ms(0.0);
  PublishHealth();
  return grpc::Status::OK;
}

// Tensor parallelism: joins the Gloo group before Load (the engine is built over the communicator).
grpc::Status WorkerService::DoBootstrapGroup(const v1::BootstrapRequest& r, v1::BootstrapResponse* response) {
  const auto t0 = std::chrono::steady_clock::now();
  if (r.rank() < 0 || r.rank() >= r.world_size()) {
    return Invalid(absl::StrFormat("rank: %d is not in [0, %d)", r.rank(), r.world_size()));
  }
  if (r.rendezvous_case() == v1::BootstrapRequest::kNcclUniqueId) return DoBootstrapNccl(r, response, t0);
  if (r.rendezvous_case() != v1::BootstrapRequest::kGlooRendezvous) {
    return Invalid("rendezvous: must be nccl_unique_id (CUDA) or gloo_rendezvous (CPU)");
  }
  const std::string& addr = r.gloo_rendezvous();
  const size_t colon = addr.rfind(':');
  int store_port = 0;
  if (colon == std::string::npos || colon == 0 || colon + 1 == addr.size() ||
      !absl::SimpleAtoi(addr.substr(colon + 1), &store_port) || store_port < 1 || store_port > 65535) {
    return Invalid(absl::StrFormat("gloo_rendezvous: '%s' is not host:port", addr));
  }
  if (r.epoch() < 1) return Invalid("epoch: must be >= 1");
  if (r.timeout_ms() < 0 || r.timeout_ms() > 600000) {
    return Invalid(absl::StrFormat("timeout_ms: %d is not in [0, 600000]", r.timeout_ms()));
  }
  if (comm_ != nullptr) {
    if (r.epoch() == epoch_ && comm_->rank() == r.rank() && comm_->world_size() == r.world_size()) {
      response->set_communicator(comm_->backend());  // the same Bootstrap again: nothing to do
      return grpc::Status::OK;
    }
    if (r.epoch() <= epoch_) {
      return Err(grpc::StatusCode::FAILED_PRECONDITION,
                 absl::StrFormat("epoch: %d is not newer than this worker's group epoch %d (rank %d of %d)", r.epoch(),
                                 epoch_, comm_->rank(), comm_->world_size()));
    }
    // A newer generation (a rank failed or restarted, or a new coordinator took the group over): the
    // group and everything built over it go; the coordinator loads this worker again after the rendezvous.
    LeaveGroup();
  }
  if (loaded_) {
    return Err(grpc::StatusCode::FAILED_PRECONDITION,
               "bootstrap: this worker was loaded without tensor parallelism; restart it to join a group");
  }
  comm::GlooCommunicatorOptions go;
  go.rank = r.rank();
  go.world_size = r.world_size();
  go.store_host = addr.substr(0, colon);
  go.store_port = store_port;
  go.listen_host = options_.comm_listen_host;
  if (go.listen_host.empty() && (go.store_host == "127.0.0.1" || go.store_host == "localhost")) {
    go.listen_host = "127.0.0.1";
  }
  go.group = absl::StrFormat("adore-tp-epoch%d", r.epoch());
  go.connect_timeout = absl::Milliseconds(r.timeout_ms() == 0 ? 60000 : r.timeout_ms());
  go.op_timeout = absl::Milliseconds(options_.collective_timeout_ms);
  auto c = comm::GlooCommunicator::Create(go);
  if (!c.ok()) return FromAbsl(c.status(), absl::StrFormat("bootstrap (rank %d of %d): ", r.rank(), r.world_size()));
  comm_ = *std::move(c);
  epoch_ = r.epoch();
  response->set_communicator(comm_->backend());
  response->set_rendezvous_ms(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  {
    std::lock_guard<std::mutex> lock(health_mu_);
    health_.set_rank(r.rank());
    health_.set_world_size(r.world_size());
  }
  PublishHealth();
  return grpc::Status::OK;
}

void WorkerService::LeaveGroup() {
  const auto t0 = std::chrono::steady_clock::now();
  auto ms = [&] { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(); };
  Log(absl::StrFormat("leaving the group of epoch %d", epoch_));
  // The communicator first: NCCL collectives a dead peer left waiting on the device end with it, so the
  // engine's stream can drain when the engine goes.
  if (comm_ != nullptr) comm_->Abandon();
  Log(absl::StrFormat("communicator abandoned (%.0f ms)", ms()));
  executor_.reset();  // releases the live sequences' rows before the engine goes
  engine_.reset();
  controller_.reset();
  comm_.reset();
  Log(absl::StrFormat("engine released (%.0f ms)", ms()));
  loaded_ = false;
  load_request_bytes_.clear();
  load_response_.Clear();
  kv_capacity_ = 0;
  last_step_id_ = 0;
  last_result_.Clear();
  totals_.clear();
  slots_.clear();
  slots_used_ = 0;
  std::lock_guard<std::mutex> lock(health_mu_);
  health_.set_state(v1::WORKER_STATE_EMPTY);
  SetReadyLocked(false);
  health_.set_last_step_id(0);
  health_.set_live_sequences(0);
  health_.set_kv_slots_used(0);
  health_.set_kv_slots_free(0);
  health_.clear_model_sha256();
}

// A CUDA tensor-parallel group: joins the NCCL communicator on this worker's --device with the unique id the
// coordinator made (ncclGetUniqueId runs there, so its bootstrap root lives as long as the coordinator).
grpc::Status WorkerService::DoBootstrapNccl(const v1::BootstrapRequest& r, v1::BootstrapResponse* response,
                                            std::chrono::steady_clock::time_point t0) {
#if ADORE_HAVE_NCCL
  if (r.nccl_unique_id().size() != comm::NcclCommunicator::kUniqueIdBytes) {
    return Invalid(absl::StrFormat("nccl_unique_id: %d bytes, must be %d", r.nccl_unique_id().size(),
                                   comm::NcclCommunicator::kUniqueIdBytes));
  }
  if (r.epoch() < 1) return Invalid("epoch: must be >= 1");
  if (r.timeout_ms() < 0 || r.timeout_ms() > 600000) {
    return Invalid(absl::StrFormat("timeout_ms: %d is not in [0, 600000]", r.timeout_ms()));
  }
  if (comm_ != nullptr) {
    if (r.epoch() == epoch_ && comm_->rank() == r.rank() && comm_->world_size() == r.world_size()) {
      response->set_communicator(comm_->backend());
      return grpc::Status::OK;
    }
    if (r.epoch() <= epoch_) {
      return Err(grpc::StatusCode::FAILED_PRECONDITION,
                 absl::StrFormat("epoch: %d is not newer than this worker's group epoch %d (rank %d of %d)", r.epoch(),
                                 epoch_, comm_->rank(), comm_->world_size()));
    }
    // A newer generation, as for Gloo: the group (aborted) and everything built over it go; the coordinator
    // loads this worker again after the rendezvous.
    LeaveGroup();
  }
  if (loaded_) {
    return Err(grpc::StatusCode::FAILED_PRECONDITION,
               "bootstrap: this worker was loaded without tensor parallelism; restart it to join a group");
  }
  comm::NcclCommunicatorOptions no;
  no.init_timeout = absl::Milliseconds(r.timeout_ms() == 0 ? 60000 : r.timeout_ms());
  no.op_timeout = absl::Milliseconds(options_.collective_timeout_ms);
  Log(absl::StrFormat("joining NCCL group epoch %d as rank %d of %d", r.epoch(), r.rank(), r.world_size()));
  auto c = comm::NcclCommunicator::Create(r.nccl_unique_id(), r.rank(), r.world_size(), options_.device, no);
  if (!c.ok()) {
    Log(absl::StrFormat("joining NCCL group epoch %d failed: %s", r.epoch(), c.status().ToString()));
    return FromAbsl(c.status(), absl::StrFormat("bootstrap (rank %d of %d): ", r.rank(), r.world_size()));
  }
  Log(absl::StrFormat("joined NCCL group epoch %d", r.epoch()));
  comm_ = *std::move(c);
  epoch_ = r.epoch();
  response->set_communicator(comm_->backend());
  response->set_rendezvous_ms(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  {
    std::lock_guard<std::mutex> lock(health_mu_);
    health_.set_rank(r.rank());
    health_.set_world_size(r.world_size());
  }
  PublishHealth();
  return grpc::Status::OK;
#else
  (void)response;
  (void)t0;
  return Invalid("nccl_unique_id: this worker is built without NCCL (a CUDA tensor-parallel group needs it)");
#endif
}

grpc::Status WorkerService::DoStep(const v1::StepRequest& r, v1::StepResult* response) {
  if (options_.debug_step_delay_ms > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(options_.debug_step_delay_ms));
  }
  const auto t0 = std::chrono::steady_clock::now();
  if (!loaded_) return Err(grpc::StatusCode::FAILED_PRECONDITION, "step: the worker is not loaded (call Load first)");
  if (r.epoch() != epoch_) {
    return Err(grpc::StatusCode::FAILED_PRECONDITION, absl::StrFormat("epoch: expected %d, got %d", epoch_, r.epoch()));
  }
  if (last_step_id_ != 0 && r.step_id() == last_step_id_) {  // a retry after a lost reply
    *response = last_result_;
    return grpc::Status::OK;
  }
  if (r.step_id() != last_step_id_ + 1) {
    return Invalid(absl::StrFormat("step_id: expected %d, got %d", last_step_id_ + 1, r.step_id()));
  }
  const ModelConfig& c = engine_->config();
  // Convert and validate (errors name the field); nothing changes before this passes.
  WorkerStep step;
  step.end.assign(r.end().begin(), r.end().end());
  std::unordered_set<uint64_t> ids;
  for (int i = 0; i < r.start_size(); ++i) {
    const v1::SequenceStart& s = r.start(i);
    if (totals_.count(s.seq_id()) || !ids.insert(s.seq_id()).second) {
      return Invalid(absl::StrFormat("start[%d].seq_id: sequence %d is already live or repeated", i, s.seq_id()));
    }
    if (s.prompt_tokens_size() < 1 || s.prompt_tokens_size() > c.max_context - 1) {
      return Invalid(absl::StrFormat("start[%d].prompt_tokens: %d tokens is not in [1, %d]", i,
                                     s.prompt_tokens_size(), c.max_context - 1));
    }
    SequenceStart out;
    out.id = s.seq_id();
    for (int32_t t : s.prompt_tokens()) {
      if (t < 0 || t >= c.vocab_size) {
        return Invalid(absl::StrFormat("start[%d].prompt_tokens: id %d is outside [0, %d)", i, t, c.vocab_size));
      }
      out.prompt.push_back(t);
    }
    auto kind = FromProto(s.release().policy());
    if (!kind.ok()) return Invalid(absl::StrFormat("start[%d].release.policy: must be a known policy", i));
    out.release.kind = *kind;
    out.release.kv_budget = s.release().kv_budget();
    out.release.rebuild = s.release().rebuild();
    if (*kind == PolicyKind::kAdore) {
      if (controller_ == nullptr) {
        return Err(grpc::StatusCode::FAILED_PRECONDITION,
                   absl::StrFormat("start[%d].release.policy: POLICY_ADORE needs a controller; this worker has none", i));
      }
      out.release.controller = controller_.get();
    }
    if (absl::Status st = out.release.Validate(c.max_context); !st.ok()) {
      return FromAbsl(st, absl::StrFormat("start[%d].release.", i));
    }
    const v1::SamplerConfig& sc = s.sampler();
    if (!std::isfinite(sc.temperature()) || sc.temperature() < 0.0f || sc.temperature() > 100.0f) {
      return Invalid(absl::StrFormat("start[%d].sampler.temperature: %g is not in [0, 100]", i, sc.temperature()));
    }
    if (sc.top_k() < 0 || sc.top_k() > c.vocab_size) {
      return Invalid(absl::StrFormat("start[%d].sampler.top_k: %d is not in [0, %d]", i, sc.top_k(), c.vocab_size));
    }
    if (!(sc.top_p() > 0.0f && sc.top_p() <= 1.0f)) {
      return Invalid(absl::StrFormat("start[%d].sampler.top_p: %g is not in (0, 1]", i, sc.top_p()));
    }
    out.sampling = {.temperature = sc.temperature(), .top_k = sc.top_k(), .top_p = sc.top_p(), .seed = sc.seed()};
    step.start.push_back(std::move(out));
  }
  for (int i = 0; i < r.decode_size(); ++i) {
    const v1::SequenceDecode& d = r.decode(i);
    if (!totals_.count(d.seq_id()) || !ids.insert(d.seq_id()).second) {
      return Invalid(absl::StrFormat("decode[%d].seq_id: unknown sequence %d, or listed twice", i, d.seq_id()));
    }
    if (d.has_last_token() && (d.last_token() < 0 || d.last_token() >= c.vocab_size)) {
      return Invalid(absl::StrFormat("decode[%d].last_token: %d is outside [0, %d)", i, d.last_token(), c.vocab_size));
    }
    step.decode.push_back({d.seq_id(), d.has_last_token() ? d.last_token() : kOwnSample});
  }
  for (int i = 0; i < r.end_size(); ++i) {
    for (const SequenceDecode& d : step.decode) {
      if (d.id == r.end(i)) return Invalid(absl::StrFormat("end[%d]: sequence %d also decodes in this step", i, d.id));
    }
  }

  absl::StatusOr<WorkerStepResult> result = executor_->Step(step);
  if (!result.ok()) {
    Log(absl::StrFormat("step %d (epoch %d) failed: %s", r.step_id(), epoch_, result.status().ToString()));
    return FromAbsl(result.status(), "step: ");
  }

  auto forget = [&](uint64_t id) {
    totals_.erase(id);
    if (auto it = slots_.find(id); it != slots_.end()) {
      slots_used_ -= it->second;
      slots_.erase(it);
    }
  };
  for (uint64_t id : step.end) forget(id);
  v1::StepResult out;
  out.set_step_id(r.step_id());
  for (const SequenceStepResult& s : result->sequences) {
    v1::SequenceOutput* o = out.add_outputs();
    o->set_seq_id(s.id);
    const ReleaseStats before = totals_.count(s.id) ? totals_[s.id] : ReleaseStats{};
    if (!s.status.ok()) {
      o->set_error_code(static_cast<int32_t>(s.status.code()));
      o->set_error_message(std::string(s.status.message()));
      forget(s.id);
      continue;
    }
    o->set_token(s.token);
    v1::SequenceStepStats* st = o->mutable_stats();
    st->set_tokens_released(s.release_stats.released - before.released);
    st->set_tokens_rebuilt(s.release_stats.rebuilt - before.rebuilt);
    st->set_tokens_released_total(s.release_stats.released);
    st->set_tokens_rebuilt_total(s.release_stats.rebuilt);
    st->set_kv_slots_in_use(s.kv_slots);
    o->set_slot_map_hash(executor_->SlotMapHash(s.id));
    totals_[s.id] = s.release_stats;
    slots_used_ += s.kv_slots - slots_[s.id];
    slots_[s.id] = s.kv_slots;
  }
  out.set_kv_slots_used(slots_used_);
  out.set_kv_slots_free(kv_capacity_ - slots_used_);
  v1::StepTiming* timing = out.mutable_timing();
  timing->set_forward_ms(result->step_ms);  // the executor's whole step: forward, policy and sampling
  if (comm_ != nullptr) timing->set_comm_ms(1e3 * comm_->TakeStats().TotalSeconds());
  timing->set_total_ms(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  last_step_id_ = r.step_id();
  last_result_ = out;
  *response = std::move(out);
  PublishHealth();
  return grpc::Status::OK;
}

// ---------------------------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<WorkerServer>> WorkerServer::Start(const WorkerServerOptions& o) {
  if (o.port < 0 || o.port > 65535) return absl::InvalidArgumentError(absl::StrFormat("port: %d is not in [0, 65535]", o.port));
  std::string model_sha256;
  if (!o.model_sha256.empty()) {
    absl::StatusOr<std::string> parsed = ParseSha256Hex(o.model_sha256, "model_sha256");
    if (!parsed.ok()) return parsed.status();
    model_sha256 = *std::move(parsed);
  }
  std::unique_ptr<WorkerServer> s(new WorkerServer());
  s->options_ = o;
  // grpc.health.v1 for probes (no secret needed: it reveals only these statuses): "" and "liveness" are
  // SERVING while the process serves; "adore.v1.Worker" is SERVING while a model is loaded and ready.
  // The health service exists once the server is built; the ready callback reads it through health_, set
  // right after (a Load, which fires the callback, may already be arriving).
  WorkerServiceOptions so{.secret = o.secret, .comm_listen_host = o.comm_listen_host, .device = o.device,
                          .model_sha256 = model_sha256, .collective_timeout_ms = o.collective_timeout_ms,
                          .debug_step_delay_ms = o.debug_step_delay_ms};
  // The service's threads stop (Shutdown resets service_) before this object goes.
  so.on_ready_changed = [server = s.get()](bool ready) {
    if (grpc::HealthCheckServiceInterface* h = server->health_.load()) {
      h->SetServingStatus(v1::Worker::service_full_name(), ready);
    }
  };
  s->service_ = std::make_unique<WorkerService>(std::move(so));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  const std::string addr = absl::StrFormat("%s:%d", o.listen, o.port);
  builder.AddListeningPort(addr, grpc::InsecureServerCredentials(), &s->port_);
  builder.RegisterService(s->service_.get());
  builder.SetMaxReceiveMessageSize(256 << 20);
  builder.SetMaxSendMessageSize(256 << 20);
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) return absl::UnavailableError(absl::StrFormat("cannot listen on %s", addr));
  grpc::HealthCheckServiceInterface* health = s->server_->GetHealthCheckService();
  if (health != nullptr) {
    health->SetServingStatus(true);
    health->SetServingStatus("liveness", true);
    health->SetServingStatus(v1::Worker::service_full_name(), false);
    s->health_.store(health);
    s->service_->RepublishReady();  // a Load that finished before the store
  }
  return s;
}

std::string WorkerServer::address() const { return absl::StrFormat("%s:%d", options_.listen, port_); }

void WorkerServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  if (server_) server_->Shutdown(std::chrono::system_clock::now());
  service_.reset();
}

WorkerServer::~WorkerServer() { Shutdown(); }

}  // namespace adore
