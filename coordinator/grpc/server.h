// adore-server's core, usable in-process (tests, embedding): loads the model, creates the engine, the
// scheduler over an embedded worker, the AdoreService and the standard health service, and serves gRPC;
// optionally also the OpenAI-compatible HTTP API with /health and /metrics over the same scheduler. Over
// worker processes, a monitor thread keeps the health services' readiness true to the workers' state and
// recovers a broken group (docs/RELIABILITY.md, "Faults").
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "coordinator/grpc/adore_service.h"
#include "coordinator/grpc/registry.h"
#include "coordinator/http/http_server.h"
#include "coordinator/scheduler.h"
#include "worker/adore_controller.h"
#include "worker/engine.h"

namespace adore {

struct ServerOptions {
  std::string model;                     // GGUF file or HF checkpoint directory
  std::string listen = "127.0.0.1";      // address to bind; 127.0.0.1 unless asked otherwise
  int port = 50051;                      // 0 = pick a free port (see EmbeddedServer::port)
  std::string backend = "cpu";           // cpu or cuda
  // Tensor-parallel ranks run in this process. 1: one engine driven directly. N > 1: N worker actors
  // (worker/grpc/WorkerServer, rank r on device r with the cuda backend) on loopback ports with a random
  // shared secret, driven exactly like external workers (Gloo over TCP on 127.0.0.1 for cpu, NCCL for
  // cuda); not with `workers` or `expect_workers`.
  int embedded_workers = 1;
  int64_t kv_rows = 0;                   // KV pool rows; 0 = 8 x the model's context (cpu) / memory budget (cuda)
  // Bytes each rank may use for weights, KV pool and workspaces together (the Worker API's
  // LoadRequest.memory_budget_bytes; device memory for cuda, RAM for cpu); the KV pool gets what the
  // weights leave (worker/memory_budget.h). 0: kv_rows, else the defaults above. Not with kv_rows.
  int64_t memory_budget_bytes = 0;
  // cuda, one embedded engine: share of the device memory left after weights and workspaces that the KV
  // pool takes when neither kv_rows nor memory_budget_bytes is set; in (0, 1].
  double gpu_memory_fraction = 0.9;
  int64_t max_batch = 64;
  std::string controller;                // ADORE controller file; empty or missing = no adore policy
  // External workers (adore-worker), host:port each, rank order: when set, steps run on them
  // (RemoteStepRunner) instead of an embedded engine; the model file is read here only for its config
  // and tokenizer, and the workers load it from the same path. More than one: tensor parallelism over
  // them (cpu backend; the coordinator hosts their Gloo rendezvous on 127.0.0.1).
  std::vector<std::string> workers;
  std::string worker_secret;             // sent to the workers as metadata adore-worker-secret
  // Address of this machine where the Gloo rendezvous store of cpu tensor-parallel workers listens (on an
  // ephemeral port) and that the workers are told; 127.0.0.1 unless the workers run on other hosts (then
  // an address they reach this process at, e.g. the pod IP).
  std::string rendezvous_host = "127.0.0.1";
  // Worker registration instead of a fixed list (`workers` empty): > 0 = serve adore.v1.Coordinator on
  // this server's port and wait until this many adore-worker processes have registered
  // (coordinator/grpc/registry.h; with worker_secret they must carry it), then drive them in rank order
  // exactly as a `workers` list. Meanwhile grpc.health.v1 answers NOT_SERVING for "" and adore.v1.Adore,
  // whose calls get UNAVAILABLE. 0 = off.
  int expect_workers = 0;
  int64_t expect_workers_timeout_ms = 600000;  // longest wait for all of them: Start fails DEADLINE_EXCEEDED
  // External workers: a step that no rank has answered after this long fails (UNAVAILABLE for the step's
  // requests; the readiness monitor then loads the workers again): how long a hung worker can stall serving.
  int64_t step_timeout_ms = 300000;
  // Pipelined steps: step n + 1 goes to the engine or the workers before step n's answer is streamed
  // (RemoteRunnerOptions::pipeline; one embedded engine: LocalStepRunner's own step thread). On by default:
  // on the H200 it keeps serving within 2-4% of the engine alone, against 5-9% (embedded) and 29% (one
  // worker process) one step at a time (bench/results/serving_overhead.json).
  bool pipeline_steps = true;
  // Prompt tokens per forward call under a releasing policy (LoadRequest::policy_prefill_chunk, the same for
  // every rank; embedded: StepExecutorOptions and, on cuda, the engine's chunk path). 0 = the default.
  int32_t policy_prefill_chunk = 0;
  // With expect_workers: called on Start's thread once the server listens for registrations, with its
  // address (adore-server prints it; a test started with port 0 learns the port from it).
  std::function<void(const std::string& address)> on_waiting_for_workers;
  // External workers: how often the readiness monitor checks them (RemoteStepRunner::CheckWorkers). While
  // they cannot take steps (a worker died or is being loaded again) grpc.health.v1 answers NOT_SERVING for
  // "" and adore.v1.Adore and /health 503; a broken group is recovered by these checks (a restarted worker
  // is loaded again, a tensor-parallel group formed again), after which both serve again. The health
  // service "liveness" answers SERVING throughout (for liveness probes: restarting the coordinator would
  // not bring a worker back).
  int64_t worker_check_interval_ms = 250;
  // The OpenAI-compatible HTTP API, /health and /metrics (coordinator/http/http_server.h) on `listen`:
  // -1 = off, 0 = any free port (see EmbeddedServer::http_port).
  int http_port = -1;
  std::string served_model_name;         // the model's id on the HTTP API; empty = the model path's stem
  ServiceDefaults defaults;
  // TLS on the gRPC port and on the HTTP API: PEM files of the certificate chain and its private key, both
  // or neither (INVALID_ARGUMENT); NOT_FOUND / INVALID_ARGUMENT naming the file when one cannot be read or
  // does not hold what it should. Not with expect_workers (adore-worker registers in plaintext).
  std::string tls_cert_file;
  std::string tls_key_file;
  // Bearer token that every adore.v1.Adore call (metadata "authorization: Bearer <token>") and every HTTP
  // route but /health must carry, else UNAUTHENTICATED / 401. grpc.health.v1 stays open, and
  // adore.v1.Coordinator (registrations) is guarded by worker_secret instead. Empty: no authentication.
  std::string auth_token;
  // sha256 of the model file (64 hex digits; a directory as common/sha256.h hashes it): checked before
  // the model is loaded, a mismatch fails Start with FAILED_PRECONDITION naming both digests; external
  // workers are asked to check it too (LoadRequest.expected_sha256). Reported in ModelInfo.model_sha256.
  // Empty: no check.
  std::string model_sha256;
};

class AdoreGate;  // server.cc: adore.v1.Adore answering UNAVAILABLE until the service behind it exists
class RemoteStepRunner;
class WorkerServer;  // worker/grpc/worker_service.h: the embedded ranks when embedded_workers > 1

class EmbeddedServer {
 public:
  // Everything up and serving, or the first error (NOT_FOUND model, INVALID_ARGUMENT option,
  // UNAVAILABLE when the address cannot be bound,
  // DEADLINE_EXCEEDED when expect_workers did not all register in time). With expect_workers it blocks
  // while the workers register.
  static absl::StatusOr<std::unique_ptr<EmbeddedServer>> Start(const ServerOptions& options);
  ~EmbeddedServer();

  int port() const { return port_; }
  int http_port() const { return http_ ? http_->port() : -1; }  // -1 when the HTTP API is off
  std::string address() const;
  void Wait() { server_->Wait(); }
  // Stops accepting, cancels running streams (CANCELLED), and returns once everything has stopped.
  void Shutdown();
  const Scheduler& scheduler() const { return *scheduler_; }
  // The registrations (expect_workers > 0), else null.
  const WorkerRegistry* registry() const { return registry_.get(); }

 private:
  EmbeddedServer() = default;
  // Builds and starts the gRPC server on options_.listen:port with these services and the health service.
  absl::Status Listen(const std::vector<grpc::Service*>& services);
  // expect_workers: serves the registration, waits for every rank, returns their addresses in rank order.
  absl::StatusOr<std::vector<std::string>> WaitForWorkers();
  // External workers: sets readiness (grpc.health.v1, /health) from RemoteStepRunner::CheckWorkers every
  // worker_check_interval_ms until Shutdown, logging each change.
  void MonitorWorkers();
  ServerOptions options_;
  std::string tls_cert_pem_, tls_key_pem_;  // read from options_.tls_*_file; empty: plaintext
  std::unique_ptr<AdoreController> controller_;
  std::unique_ptr<Tokenizer> tokenizer_;
  ModelConfig model_config_;  // what the HTTP API serves
  std::unique_ptr<Engine> engine_;
  std::vector<std::unique_ptr<WorkerServer>> embedded_workers_;  // embedded_workers > 1; rank order
  std::unique_ptr<StepRunner> runner_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<AdoreService> service_;
  // expect_workers: the registrations, the service taking them, and the gate that the public API is served
  // through (the server starts before the AdoreService exists). Declared before server_, which goes first.
  std::unique_ptr<WorkerRegistry> registry_;
  std::unique_ptr<CoordinatorService> coordinator_;
  std::unique_ptr<AdoreGate> gate_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<http::HttpServer> http_;
  int port_ = 0;
  bool shut_down_ = false;
  // The runner when it drives worker processes (else null): registrations replacing a rank reach it here.
  std::atomic<RemoteStepRunner*> remote_{nullptr};
  std::mutex monitor_mu_;
  std::condition_variable monitor_cv_;
  bool monitor_stop_ = false;  // under monitor_mu_
  std::thread monitor_;        // MonitorWorkers; joined first by Shutdown
};

}  // namespace adore
