// adore-server's core, usable in-process (tests, embedding): loads the model, creates the engine, the
// scheduler over an embedded worker, the AdoreService and the standard health service, and serves gRPC.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "coordinator/grpc/adore_service.h"
#include "coordinator/scheduler.h"
#include "worker/adore_controller.h"
#include "worker/engine.h"

namespace adore {

struct ServerOptions {
  std::string model;                     // GGUF file or HF checkpoint directory
  std::string listen = "127.0.0.1";      // address to bind; 127.0.0.1 unless asked otherwise
  int port = 50051;                      // 0 = pick a free port (see EmbeddedServer::port)
  std::string backend = "cpu";           // cpu or cuda
  int embedded_workers = 1;              // tensor-parallel ranks run in-process (only 1 is built so far)
  int64_t kv_rows = 0;                   // KV pool rows; 0 = 8 x the model's context (cpu) / memory budget (cuda)
  int64_t max_batch = 64;
  std::string controller;                // ADORE controller file; empty or missing = no adore policy
  // External workers (adore-worker), host:port each, rank order: when set, steps run on them
  // (RemoteStepRunner) instead of an embedded engine; the model file is read here only for its config
  // and tokenizer, and the workers load it from the same path. More than one: tensor parallelism over
  // them (cpu backend; the coordinator hosts their Gloo rendezvous on 127.0.0.1).
  std::vector<std::string> workers;
  std::string worker_secret;             // sent to the workers as metadata adore-worker-secret
  ServiceDefaults defaults;
};

class EmbeddedServer {
 public:
  // Everything up and serving, or the first error (NOT_FOUND model, INVALID_ARGUMENT option,
  // UNAVAILABLE when the address cannot be bound, UNIMPLEMENTED for more than one embedded worker).
  static absl::StatusOr<std::unique_ptr<EmbeddedServer>> Start(const ServerOptions& options);
  ~EmbeddedServer();

  int port() const { return port_; }
  std::string address() const;
  void Wait() { server_->Wait(); }
  // Stops accepting, cancels running streams (CANCELLED), and returns once everything has stopped.
  void Shutdown();
  const Scheduler& scheduler() const { return *scheduler_; }

 private:
  EmbeddedServer() = default;
  ServerOptions options_;
  std::unique_ptr<AdoreController> controller_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<StepRunner> runner_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<AdoreService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace adore
