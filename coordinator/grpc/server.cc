// EmbeddedServer: model, engine, scheduler and gRPC services in one process.
#include "coordinator/grpc/server.h"

#include <filesystem>

#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_format.h"
#include "common/model_weights.h"
#include "common/status.h"
#include "coordinator/grpc/remote_runner.h"
#include "worker/cpu_engine.h"
#if ADORE_WITH_CUDA
#include "worker/cuda/cuda_engine.h"
#endif

namespace adore {

absl::StatusOr<std::unique_ptr<EmbeddedServer>> EmbeddedServer::Start(const ServerOptions& o) {
  if (o.embedded_workers != 1) {
    return absl::UnimplementedError(absl::StrFormat(
        "--embedded_workers %d: tensor parallelism across workers is not built yet (use 1)", o.embedded_workers));
  }
  if (o.port < 0 || o.port > 65535) return absl::InvalidArgumentError(absl::StrFormat("port: %d is not in [0, 65535]", o.port));
  if (o.max_batch < 1) return absl::InvalidArgumentError("max_batch: must be >= 1");
  std::unique_ptr<EmbeddedServer> s(new EmbeddedServer());
  s->options_ = o;
  ADORE_ASSIGN_OR_RETURN(ModelWeights weights, LoadModelWeights(o.model));
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
  if (!o.workers.empty()) {
    // External workers: they load the model; this process keeps only the config and the tokenizer.
    if (o.backend != "cpu" && o.backend != "cuda") {
      return absl::InvalidArgumentError(absl::StrFormat("backend: '%s' is not cpu or cuda", o.backend));
    }
    RemoteRunnerOptions ro;
    ro.workers = o.workers;
    ro.secret = o.worker_secret;
    ro.load.set_model_path(std::filesystem::absolute(o.model).string());
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
    ADORE_ASSIGN_OR_RETURN(auto engine, CudaEngine::Create(weights, co));
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

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  const std::string addr = absl::StrFormat("%s:%d", o.listen, o.port);
  builder.AddListeningPort(addr, grpc::InsecureServerCredentials(), &s->port_);
  builder.RegisterService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(absl::StrFormat("cannot listen on %s", addr));
  }
  s->server_->GetHealthCheckService()->SetServingStatus(true);
  s->server_->GetHealthCheckService()->SetServingStatus("adore.v1.Adore", true);
  return s;
}

std::string EmbeddedServer::address() const { return absl::StrFormat("%s:%d", options_.listen, port_); }

void EmbeddedServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
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
