// EmbeddedServer: model, engine, scheduler and gRPC services in one process.
#include "coordinator/grpc/server.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <random>

#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "common/model_weights.h"
#include "common/security.h"
#include "common/sha256.h"
#include "coordinator/grpc/bearer_auth.h"
#include "common/synthetic_model.h"
#include "common/status.h"
#include "coordinator/grpc/remote_runner.h"
#include "worker/cpu_engine.h"
#include "worker/grpc/worker_service.h"
#include "worker/memory_budget.h"
#if ADORE_WITH_CUDA
#include "worker/cuda/cuda_engine.h"
#endif

namespace adore {

// adore.v1.Adore while the server waits for its workers: UNAVAILABLE (the proto's "workers not ready")
// until Open hands it the AdoreService, to which every call then goes; with a bearer token, a call without
// it is UNAUTHENTICATED first. Each RPC of the service is forwarded here; one added to adore.proto needs
// its line too (until then it answers UNIMPLEMENTED on servers started with expect_workers).
class AdoreGate final : public v1::Adore::Service {
 public:
  AdoreGate(const WorkerRegistry& registry, std::string auth_token)
      : registry_(registry), auth_token_(std::move(auth_token)) {}
  void Open(AdoreService* service) { service_.store(service, std::memory_order_release); }

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    if (grpc::Status st = Authenticate(*context); !st.ok()) return st;
    AdoreService* s = service_.load(std::memory_order_acquire);
    return s == nullptr ? NotReady() : s->Generate(context, request, writer);
  }
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::ModelInfo* response) override {
    if (grpc::Status st = Authenticate(*context); !st.ok()) return st;
    AdoreService* s = service_.load(std::memory_order_acquire);
    return s == nullptr ? NotReady() : s->GetModelInfo(context, request, response);
  }
  grpc::Status GetStats(grpc::ServerContext* context, const v1::GetStatsRequest* request,
                        v1::ServerStats* response) override {
    if (grpc::Status st = Authenticate(*context); !st.ok()) return st;
    AdoreService* s = service_.load(std::memory_order_acquire);
    return s == nullptr ? NotReady() : s->GetStats(context, request, response);
  }

 private:
  // Before the service exists too, so that a caller without the token learns nothing of the server's state.
  grpc::Status Authenticate(const grpc::ServerContext& context) const {
    return CheckBearerMetadata(context, auth_token_);
  }
  grpc::Status NotReady() const {
    const int n = registry_.registered(), world = registry_.world_size();
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        n < world ? absl::StrFormat("the workers are not ready: %d of %d registered", n, world)
                                  : absl::StrFormat("the workers are not ready: loading the model on %d workers", world));
  }

  const WorkerRegistry& registry_;
  const std::string auth_token_;
  std::atomic<AdoreService*> service_{nullptr};
};

absl::Status EmbeddedServer::Listen(const std::vector<grpc::Service*>& services) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  const std::string addr = absl::StrFormat("%s:%d", options_.listen, options_.port);
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!tls_cert_pem_.empty()) {
    grpc::SslServerCredentialsOptions tls;  // server authentication only: clients show a token, not a cert
    tls.pem_key_cert_pairs.push_back({.private_key = tls_key_pem_, .cert_chain = tls_cert_pem_});
    credentials = grpc::SslServerCredentials(tls);
  }
  builder.AddListeningPort(addr, credentials, &port_);
  for (grpc::Service* service : services) builder.RegisterService(service);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) return absl::UnavailableError(absl::StrFormat("cannot listen on %s", addr));
  // Liveness apart from readiness: "" and adore.v1.Adore go NOT_SERVING while the workers cannot take steps
  // (a restart of this process would not help), "liveness" stays SERVING until Shutdown.
  server_->GetHealthCheckService()->SetServingStatus("liveness", true);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> EmbeddedServer::WaitForWorkers() {
  const ServerOptions& o = options_;
  WorkerRegistryOptions ro{.world_size = o.expect_workers,
                           .backend = o.backend == "cpu" ? v1::BACKEND_CPU : v1::BACKEND_CUDA};
  // A worker re-registering at a new address takes the rank of one that does not answer its Health.
  ro.is_alive = [secret = o.worker_secret](int, const std::string& address) {
    auto stub = v1::Worker::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    if (!secret.empty()) ctx.AddMetadata(kRegistrationSecretKey, secret);
    v1::WorkerHealthResponse h;
    const grpc::StatusCode code = stub->Health(&ctx, v1::WorkerHealthRequest(), &h).error_code();
    return code != grpc::StatusCode::UNAVAILABLE && code != grpc::StatusCode::DEADLINE_EXCEEDED;
  };
  ro.on_replaced = [this](int rank, const std::string& address) {
    if (RemoteStepRunner* remote = remote_.load()) remote->ReplaceWorker(rank, address);
  };
  registry_ = std::make_unique<WorkerRegistry>(std::move(ro));
  coordinator_ = std::make_unique<CoordinatorService>(*registry_, o.worker_secret);
  gate_ = std::make_unique<AdoreGate>(*registry_, o.auth_token);
  ADORE_RETURN_IF_ERROR(Listen({coordinator_.get(), gate_.get()}));
  // Not ready (kubelet's probes of "" and clients' of adore.v1.Adore) until the workers are loaded; the
  // registration itself is.
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  health->SetServingStatus(false);
  health->SetServingStatus("adore.v1.Adore", false);
  health->SetServingStatus("adore.v1.Coordinator", true);
  registry_->Log(absl::StrFormat("waiting for %d worker%s to register on %s (adore-worker --coordinator)",
                                 o.expect_workers, o.expect_workers == 1 ? "" : "s", address()));
  if (o.on_waiting_for_workers) o.on_waiting_for_workers(address());
  ADORE_ASSIGN_OR_RETURN(std::vector<std::string> addresses,
                         registry_->WaitForAll(absl::Milliseconds(o.expect_workers_timeout_ms)));
  registry_->Log(absl::StrFormat("%s registered; connecting in rank order: %s",
                                 o.expect_workers == 1 ? "the worker" : absl::StrFormat("all %d workers", o.expect_workers),
                                 absl::StrJoin(addresses, ",")));
  return addresses;
}

absl::StatusOr<std::unique_ptr<EmbeddedServer>> EmbeddedServer::Start(const ServerOptions& o) {
  if (o.embedded_workers < 1 || o.embedded_workers > 64) {
    return absl::InvalidArgumentError(absl::StrFormat("embedded_workers: %d is not in [1, 64]", o.embedded_workers));
  }
  if (o.embedded_workers > 1 && (!o.workers.empty() || o.expect_workers > 0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "embedded_workers: %d runs its own workers; not with workers or expect_workers", o.embedded_workers));
  }
  if (o.port < 0 || o.port > 65535) return absl::InvalidArgumentError(absl::StrFormat("port: %d is not in [0, 65535]", o.port));
  if (o.max_batch < 1) return absl::InvalidArgumentError("max_batch: must be >= 1");
  if (o.policy_prefill_chunk < 0 || o.policy_prefill_chunk > 4096) {
    return absl::InvalidArgumentError(
        absl::StrFormat("policy_prefill_chunk: %d is not in [0, 4096]", o.policy_prefill_chunk));
  }
  if (o.http_port < -1 || o.http_port > 65535) {
    return absl::InvalidArgumentError(absl::StrFormat("http_port: %d is not -1 (off) or in [0, 65535]", o.http_port));
  }
  if (o.expect_workers < 0) {
    return absl::InvalidArgumentError(absl::StrFormat("expect_workers: %d is not >= 0", o.expect_workers));
  }
  if (o.expect_workers > 0 && !o.workers.empty()) {
    return absl::InvalidArgumentError("expect_workers: give a workers list or expect_workers, not both");
  }
  if (o.step_timeout_ms < 1) {
    return absl::InvalidArgumentError(absl::StrFormat("step_timeout: %d ms is not >= 1", o.step_timeout_ms));
  }
  if (o.expect_workers > 0 && o.expect_workers_timeout_ms < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("expect_workers_timeout: %d ms is not >= 1", o.expect_workers_timeout_ms));
  }
  // The security options, before anything slow: a mistake there is a clear error at once.
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return absl::InvalidArgumentError("tls_cert_file, tls_key_file: give both (TLS) or neither (plaintext)");
  }
  if (!o.tls_cert_file.empty() && o.expect_workers > 0) {
    return absl::InvalidArgumentError(
        "tls_cert_file: not with expect_workers (adore-worker registers in plaintext on the same port); "
        "list the workers with --workers instead");
  }
  std::string model_sha256;
  if (!o.model_sha256.empty()) {
    ADORE_ASSIGN_OR_RETURN(model_sha256, ParseSha256Hex(o.model_sha256, "model_sha256"));
  }
  std::unique_ptr<EmbeddedServer> s(new EmbeddedServer());
  s->options_ = o;
  if (!o.tls_cert_file.empty()) {
    ADORE_ASSIGN_OR_RETURN(TlsCertKey tls, ReadTlsCertKey(o.tls_cert_file, o.tls_key_file));
    s->tls_cert_pem_ = std::move(tls.cert_pem);
    s->tls_key_pem_ = std::move(tls.key_pem);
  }
  // A synthetic model (random weights of a known shape, for benchmarks) is generated by the CUDA engine;
  // here it is only a config and a stand-in tokenizer.
  const bool synthetic = IsSyntheticModel(o.model);
  if (synthetic && o.backend != "cuda") {
    return absl::InvalidArgumentError(absl::StrFormat("model: %s needs the cuda backend", o.model));
  }
  std::string verified_sha256;  // of the file about to be read, when asked for
  if (!model_sha256.empty()) {
    if (synthetic) {
      return absl::InvalidArgumentError(absl::StrFormat("model_sha256: %s has no file to hash", o.model));
    }
    absl::StatusOr<std::string> digest = VerifyModelSha256(o.model, model_sha256);
    if (!digest.ok()) {
      return absl::Status(digest.status().code(), absl::StrCat("model_sha256: ", digest.status().message()));
    }
    verified_sha256 = *std::move(digest);
  }
  // With workers (listed, registering or embedded ranks) the engines live there: this process reads only
  // the config and the tokenizer (the same checks, none of the tensor data).
  const bool engine_here = o.workers.empty() && o.expect_workers <= 0 && o.embedded_workers <= 1;
  ADORE_ASSIGN_OR_RETURN(ModelWeights weights, synthetic     ? SyntheticModelInfo(o.model)
                                               : engine_here ? LoadModelWeights(o.model)
                                                             : LoadModelInfo(o.model));
  ADORE_ASSIGN_OR_RETURN(s->tokenizer_, Tokenizer::Create(weights.tokenizer));
  ServiceInfo info;
  info.config = weights.config;
  info.model_sha256 = verified_sha256;
  ServiceDefaults defaults = o.defaults;
  if (!o.controller.empty() && std::filesystem::exists(o.controller)) {
    ADORE_ASSIGN_OR_RETURN(s->controller_, AdoreController::Load(o.controller));
    defaults.controller = s->controller_.get();
    defaults.release.controller = s->controller_.get();
  }
  if (defaults.release.kind == PolicyKind::kAdore && defaults.controller == nullptr) {
    return absl::FailedPreconditionError("default policy adore: no controller loaded (--controller)");
  }
  ADORE_RETURN_IF_ERROR(defaults.release.Validate(weights.config.max_context));
  if (o.memory_budget_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrFormat("memory_budget_bytes: %d is negative", o.memory_budget_bytes));
  }
  if (o.memory_budget_bytes > 0 && o.kv_rows > 0) {
    return absl::InvalidArgumentError("memory_budget_bytes and kv_rows: give one of them, not both");
  }
  if (!(o.gpu_memory_fraction > 0.0 && o.gpu_memory_fraction <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("gpu_memory_fraction: %g is not in (0, 1]", o.gpu_memory_fraction));
  }
  const int64_t weights_float_bytes = WeightsFloatBytes(weights);
  int64_t kv_rows = o.kv_rows > 0 ? o.kv_rows : 8 * weights.config.max_context;
  if (o.memory_budget_bytes > 0 && o.backend == "cpu") {
    const ModelConfig& c = weights.config;
    const int64_t slot_bytes = 2 * c.num_layers * c.num_kv_heads * c.head_dim * static_cast<int64_t>(sizeof(float));
    ADORE_ASSIGN_OR_RETURN(kv_rows, CpuKvRowsForBudget(o.memory_budget_bytes, weights_float_bytes, slot_bytes));
  }
  std::vector<std::string> worker_addresses = o.workers;
  std::string worker_secret = o.worker_secret;
  if (o.embedded_workers > 1) {
    // The ranks as in-process worker actors on loopback, reached only with a secret made here.
    std::random_device rd;
    worker_secret = absl::StrFormat("%08x%08x%08x%08x", rd(), rd(), rd(), rd());
    for (int r = 0; r < o.embedded_workers; ++r) {
      ADORE_ASSIGN_OR_RETURN(std::unique_ptr<WorkerServer> w,
                             WorkerServer::Start({.listen = "127.0.0.1", .port = 0, .secret = worker_secret,
                                                  .comm_listen_host = "127.0.0.1", .device = r}));
      worker_addresses.push_back(w->address());
      s->embedded_workers_.push_back(std::move(w));
    }
  }
  if (!worker_addresses.empty() || o.expect_workers > 0) {
    // External workers: they load the model; this process keeps only the config and the tokenizer.
    if (o.backend != "cpu" && o.backend != "cuda") {
      return absl::InvalidArgumentError(absl::StrFormat("backend: '%s' is not cpu or cuda", o.backend));
    }
    RemoteRunnerOptions ro;
    ro.step_timeout_ms = o.step_timeout_ms;
    ro.pipeline = o.pipeline_steps;
    ro.load.set_policy_prefill_chunk(o.policy_prefill_chunk);
    ro.workers = worker_addresses;
    ro.secret = worker_secret;
    ro.rendezvous_host = o.embedded_workers > 1 ? "127.0.0.1" : o.rendezvous_host;  // embedded ranks: loopback
    if (o.embedded_workers > 1 && o.backend == "cuda") {  // rank r drives device r
      for (int r = 0; r < o.embedded_workers; ++r) ro.devices.push_back(r);
    }
    ro.load.set_model_path(synthetic ? o.model : std::filesystem::absolute(o.model).string());
    ro.load.set_backend(o.backend == "cpu" ? v1::BACKEND_CPU : v1::BACKEND_CUDA);
    ro.load.set_expected_sha256(model_sha256);  // each worker checks the file it loads
    if (o.memory_budget_bytes > 0) {
      ro.load.set_memory_budget_bytes(o.memory_budget_bytes);
    } else if (o.backend == "cpu" && o.kv_rows > 0) {  // the worker's pool gets what its float32 weights leave
      const ModelConfig& c = weights.config;
      ro.load.set_memory_budget_bytes(weights_float_bytes + o.kv_rows * 2 * c.num_layers * c.num_kv_heads *
                                                                c.head_dim * static_cast<int64_t>(sizeof(float)));
    }
    v1::ReleaseParams* d = ro.load.mutable_default_release();
    d->set_policy(static_cast<v1::Policy>(static_cast<int>(defaults.release.kind) + 1));  // kFull.. = 1..
    d->set_kv_budget(defaults.release.kind == PolicyKind::kFull ? 0 : defaults.release.kv_budget);
    d->set_rebuild(defaults.release.rebuild);
    if (s->controller_ != nullptr) ro.load.set_controller_path(std::filesystem::absolute(o.controller).string());
    // Registered workers are driven exactly like a list given up front, once all are there.
    if (o.expect_workers > 0) {
      ADORE_ASSIGN_OR_RETURN(ro.workers, s->WaitForWorkers());
    }
    ADORE_ASSIGN_OR_RETURN(auto remote, RemoteStepRunner::Connect(ro));
    info.backend = remote->load_response().model().backend();
    if (!remote->load_response().model().model_sha256().empty()) {
      info.model_sha256 = remote->load_response().model().model_sha256();
    }
    info.kv_rows = std::min<int64_t>(o.kv_rows > 0 ? o.kv_rows : kv_rows, remote->load_response().kv_capacity_slots());
    s->remote_ = remote.get();
    s->runner_ = std::move(remote);
  } else if (o.backend == "cpu") {
    info.backend = v1::BACKEND_CPU;
    ADORE_ASSIGN_OR_RETURN(auto engine, CpuEngine::Create(std::move(weights), {.kv_rows = kv_rows}));
    s->engine_ = std::move(engine);
    info.kv_rows = kv_rows;
  } else if (o.backend == "cuda") {
#if ADORE_WITH_CUDA
    info.backend = v1::BACKEND_CUDA;
    CudaEngineOptions co;
    co.max_batch = o.max_batch;
    co.max_logit_rows = o.max_batch;
    co.max_tokens = std::max<int64_t>(4096, o.max_batch * (1 + kMaxRebuild));
    co.kv_rows = o.kv_rows;
    co.kv_memory_fraction = o.gpu_memory_fraction;
    if (o.memory_budget_bytes > 0) {
      ADORE_ASSIGN_OR_RETURN(co.kv_bytes, CudaKvBytesForBudget(o.memory_budget_bytes, weights_float_bytes));
    }
    co.adore_controller = s->controller_.get();  // adore's controller runs on the GPU
    co.adore_lanes = 2 * co.max_batch;
    SetCudaPolicyChunk(PolicyPrefillChunkOption(o.policy_prefill_chunk), &co);
    ADORE_ASSIGN_OR_RETURN(auto engine, synthetic ? CudaEngine::CreateSynthetic(weights.config, /*seed=*/1, co)
                                                  : CudaEngine::Create(weights, co));
    info.kv_rows = engine->pool().num_rows();
    s->engine_ = std::move(engine);
#else
    return absl::FailedPreconditionError("backend cuda: this build has no CUDA backend");
#endif
  } else {
    return absl::InvalidArgumentError(absl::StrFormat("backend: '%s' is not cpu or cuda", o.backend));
  }
  if (s->runner_ == nullptr) {
    s->runner_ = std::make_unique<LocalStepRunner>(
        *s->engine_, StepExecutorOptions{.policy_prefill_chunk = PolicyPrefillChunkOption(o.policy_prefill_chunk)},
        o.pipeline_steps);
  }
  s->scheduler_ = std::make_unique<Scheduler>(
      *s->runner_, *s->tokenizer_,
      SchedulerOptions{.max_batch = o.max_batch, .kv_rows = info.kv_rows, .max_context = info.config.max_context});
  s->service_ = std::make_unique<AdoreService>(*s->scheduler_, *s->tokenizer_, info, defaults);

  s->service_->RequireBearerToken(o.auth_token);
  if (s->server_ == nullptr) {
    ADORE_RETURN_IF_ERROR(s->Listen({s->service_.get()}));
  } else {  // serving registrations already (expect_workers): open the public API behind the gate
    s->gate_->Open(s->service_.get());
  }
  s->server_->GetHealthCheckService()->SetServingStatus(true);
  s->server_->GetHealthCheckService()->SetServingStatus("adore.v1.Adore", true);
  if (o.http_port >= 0) {
    http::HttpServerOptions ho;
    ho.listen = o.listen;
    ho.port = o.http_port;
    ho.model_id = o.served_model_name;
    if (ho.model_id.empty()) {
      const std::filesystem::path path(o.model);
      ho.model_id = synthetic ? o.model : std::filesystem::is_directory(path) ? path.filename().string()
                                                                              : path.stem().string();
    }
    ho.threads = static_cast<int>(std::clamp<int64_t>(o.max_batch + 8, 8, 256));  // a stream holds a thread
    ho.kv_rows = info.kv_rows;
    ho.tls_cert_file = o.tls_cert_file;  // checked above by ReadTlsCertKey
    ho.tls_key_file = o.tls_key_file;
    ho.auth_token = o.auth_token;
    s->model_config_ = info.config;
    ADORE_ASSIGN_OR_RETURN(s->http_, http::HttpServer::Start(ho, *s->scheduler_, *s->tokenizer_, s->model_config_,
                                                             defaults));
  }
  if (s->remote_.load() != nullptr && o.worker_check_interval_ms > 0) {
    s->monitor_ = std::thread([server = s.get()] { server->MonitorWorkers(); });
  }
  return s;
}

void EmbeddedServer::MonitorWorkers() {
  RemoteStepRunner& remote = *remote_.load();
  bool serving = true;  // as Start left it
  std::unique_lock<std::mutex> lock(monitor_mu_);
  while (!monitor_stop_) {
    lock.unlock();
    const absl::Status st = remote.CheckWorkers();
    lock.lock();
    if (monitor_stop_) break;  // Shutdown has set NOT_SERVING: leave it
    if (st.ok() != serving) {
      serving = st.ok();
      // By name: the overload without one would set every service, "liveness" included.
      server_->GetHealthCheckService()->SetServingStatus("", serving);
      server_->GetHealthCheckService()->SetServingStatus("adore.v1.Adore", serving);
      if (http_) http_->SetServing(serving);
      std::fprintf(stderr, "adore-server: %s\n",
                   serving ? "the workers are ready again: serving"
                           : absl::StrCat("not serving: ", st.message()).c_str());
      std::fflush(stderr);
    }
    monitor_cv_.wait_for(lock, std::chrono::milliseconds(options_.worker_check_interval_ms));
  }
}

std::string EmbeddedServer::address() const { return absl::StrFormat("%s:%d", options_.listen, port_); }

void EmbeddedServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  if (monitor_.joinable()) {  // first: it sets the serving status
    {
      std::lock_guard<std::mutex> lock(monitor_mu_);
      monitor_stop_ = true;
    }
    monitor_cv_.notify_all();
    monitor_.join();
  }
  remote_ = nullptr;
  if (registry_) registry_->Close();  // later registrations: UNAVAILABLE
  if (http_) {  // first: its handlers cancel their requests, which needs the scheduler
    http_->SetServing(false);
    http_->Stop();
  }
  if (server_) {
    server_->GetHealthCheckService()->SetServingStatus(false);
    // Running calls are cancelled at once; their handlers cancel their requests in the scheduler, which
    // ends them, and return. Only then does the scheduler go.
    server_->Shutdown(std::chrono::system_clock::now());
    scheduler_.reset();
  }
  runner_.reset();  // before the embedded workers it drives
  for (auto& w : embedded_workers_) w->Shutdown();
}

EmbeddedServer::~EmbeddedServer() { Shutdown(); }

}  // namespace adore
