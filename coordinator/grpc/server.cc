// EmbeddedServer: model, engine, scheduler and gRPC services in one process.
#include "coordinator/grpc/server.h"

#include <algorithm>
#include <atomic>
#include <filesystem>

#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "common/model_weights.h"
#include "common/synthetic_model.h"
#include "common/status.h"
#include "coordinator/grpc/remote_runner.h"
#include "worker/cpu_engine.h"
#if ADORE_WITH_CUDA
#include "worker/cuda/cuda_engine.h"
#endif

namespace adore {

// adore.v1.Adore while the server waits for its workers: UNAVAILABLE (the proto's "workers not ready")
// until Open hands it the AdoreService, to which every call then goes. Each RPC of the service is
// forwarded here; one added to adore.proto needs its line too (until then it answers UNIMPLEMENTED on
// servers started with expect_workers).
class AdoreGate final : public v1::Adore::Service {
 public:
  explicit AdoreGate(const WorkerRegistry& registry) : registry_(registry) {}
  void Open(AdoreService* service) { service_.store(service, std::memory_order_release); }

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    AdoreService* s = service_.load(std::memory_order_acquire);
    return s == nullptr ? NotReady() : s->Generate(context, request, writer);
  }
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::ModelInfo* response) override {
    AdoreService* s = service_.load(std::memory_order_acquire);
    return s == nullptr ? NotReady() : s->GetModelInfo(context, request, response);
  }
  grpc::Status GetStats(grpc::ServerContext* context, const v1::GetStatsRequest* request,
                        v1::ServerStats* response) override {
    AdoreService* s = service_.load(std::memory_order_acquire);
    return s == nullptr ? NotReady() : s->GetStats(context, request, response);
  }

 private:
  grpc::Status NotReady() const {
    const int n = registry_.registered(), world = registry_.world_size();
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        n < world ? absl::StrFormat("the workers are not ready: %d of %d registered", n, world)
                                  : absl::StrFormat("the workers are not ready: loading the model on %d workers", world));
  }

  const WorkerRegistry& registry_;
  std::atomic<AdoreService*> service_{nullptr};
};

absl::Status EmbeddedServer::Listen(const std::vector<grpc::Service*>& services) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  const std::string addr = absl::StrFormat("%s:%d", options_.listen, options_.port);
  builder.AddListeningPort(addr, grpc::InsecureServerCredentials(), &port_);
  for (grpc::Service* service : services) builder.RegisterService(service);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) return absl::UnavailableError(absl::StrFormat("cannot listen on %s", addr));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> EmbeddedServer::WaitForWorkers() {
  const ServerOptions& o = options_;
  registry_ = std::make_unique<WorkerRegistry>(WorkerRegistryOptions{
      .world_size = o.expect_workers, .backend = o.backend == "cpu" ? v1::BACKEND_CPU : v1::BACKEND_CUDA});
  coordinator_ = std::make_unique<CoordinatorService>(*registry_, o.worker_secret);
  gate_ = std::make_unique<AdoreGate>(*registry_);
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
  if (o.embedded_workers != 1) {
    return absl::UnimplementedError(absl::StrFormat(
        "--embedded_workers %d: tensor parallelism across workers is not built yet (use 1)", o.embedded_workers));
  }
  if (o.port < 0 || o.port > 65535) return absl::InvalidArgumentError(absl::StrFormat("port: %d is not in [0, 65535]", o.port));
  if (o.max_batch < 1) return absl::InvalidArgumentError("max_batch: must be >= 1");
  if (o.http_port < -1 || o.http_port > 65535) {
    return absl::InvalidArgumentError(absl::StrFormat("http_port: %d is not -1 (off) or in [0, 65535]", o.http_port));
  }
  if (o.expect_workers < 0) {
    return absl::InvalidArgumentError(absl::StrFormat("expect_workers: %d is not >= 0", o.expect_workers));
  }
  if (o.expect_workers > 0 && !o.workers.empty()) {
    return absl::InvalidArgumentError("expect_workers: give a workers list or expect_workers, not both");
  }
  if (o.expect_workers > 0 && o.expect_workers_timeout_ms < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("expect_workers_timeout: %d ms is not >= 1", o.expect_workers_timeout_ms));
  }
  std::unique_ptr<EmbeddedServer> s(new EmbeddedServer());
  s->options_ = o;
  // A synthetic model (random weights of a known shape, for benchmarks) is generated by the CUDA engine;
  // here it is only a config and a stand-in tokenizer.
  const bool synthetic = IsSyntheticModel(o.model);
  if (synthetic && o.backend != "cuda") {
    return absl::InvalidArgumentError(absl::StrFormat("model: %s needs the cuda backend", o.model));
  }
  ADORE_ASSIGN_OR_RETURN(ModelWeights weights, synthetic ? SyntheticModelInfo(o.model) : LoadModelWeights(o.model));
  ADORE_ASSIGN_OR_RETURN(s->tokenizer_, Tokenizer::Create(weights.tokenizer));
  ServiceInfo info;
  info.config = weights.config;
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
  const int64_t kv_rows = o.kv_rows > 0 ? o.kv_rows : 8 * weights.config.max_context;
  if (!o.workers.empty() || o.expect_workers > 0) {
    // External workers: they load the model; this process keeps only the config and the tokenizer.
    if (o.backend != "cpu" && o.backend != "cuda") {
      return absl::InvalidArgumentError(absl::StrFormat("backend: '%s' is not cpu or cuda", o.backend));
    }
    RemoteRunnerOptions ro;
    ro.workers = o.workers;
    ro.secret = o.worker_secret;
    ro.load.set_model_path(synthetic ? o.model : std::filesystem::absolute(o.model).string());
    ro.load.set_backend(o.backend == "cpu" ? v1::BACKEND_CPU : v1::BACKEND_CUDA);
    if (o.backend == "cpu" && o.kv_rows > 0) {  // the worker's pool gets what its float32 weights leave
      int64_t weights_bytes = 0;
      for (const auto& [name, t] : weights.tensors) weights_bytes += t.numel() * static_cast<int64_t>(sizeof(float));
      const ModelConfig& c = weights.config;
      ro.load.set_memory_budget_bytes(weights_bytes + o.kv_rows * 2 * c.num_layers * c.num_kv_heads * c.head_dim *
                                                          static_cast<int64_t>(sizeof(float)));
    }
    v1::ReleaseParams* d = ro.load.mutable_default_release();
    d->set_policy(static_cast<v1::Policy>(static_cast<int>(defaults.release.kind) + 1));  // kFull.. = 1..
    d->set_kv_budget(defaults.release.kind == PolicyKind::kFull ? 0 : defaults.release.kv_budget);
    d->set_rebuild(defaults.release.rebuild);
    if (s->controller_ != nullptr) ro.load.set_controller_path(std::filesystem::absolute(o.controller).string());
    weights.tensors.clear();
    // Registered workers are driven exactly like a list given up front, once all are there.
    if (o.expect_workers > 0) {
      ADORE_ASSIGN_OR_RETURN(ro.workers, s->WaitForWorkers());
    }
    ADORE_ASSIGN_OR_RETURN(auto remote, RemoteStepRunner::Connect(ro));
    info.backend = remote->load_response().model().backend();
    info.model_sha256 = remote->load_response().model().model_sha256();
    info.kv_rows = std::min<int64_t>(o.kv_rows > 0 ? o.kv_rows : kv_rows, remote->load_response().kv_capacity_slots());
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
    co.adore_controller = s->controller_.get();  // adore's controller runs on the GPU
    co.adore_lanes = 2 * co.max_batch;
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
  if (s->runner_ == nullptr) s->runner_ = std::make_unique<LocalStepRunner>(*s->engine_);
  s->scheduler_ = std::make_unique<Scheduler>(
      *s->runner_, *s->tokenizer_,
      SchedulerOptions{.max_batch = o.max_batch, .kv_rows = info.kv_rows, .max_context = info.config.max_context});
  s->service_ = std::make_unique<AdoreService>(*s->scheduler_, *s->tokenizer_, info, defaults);

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
    s->model_config_ = info.config;
    ADORE_ASSIGN_OR_RETURN(s->http_, http::HttpServer::Start(ho, *s->scheduler_, *s->tokenizer_, s->model_config_,
                                                             defaults));
  }
  return s;
}

std::string EmbeddedServer::address() const { return absl::StrFormat("%s:%d", options_.listen, port_); }

void EmbeddedServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
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
}

EmbeddedServer::~EmbeddedServer() { Shutdown(); }

}  // namespace adore
