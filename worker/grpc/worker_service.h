// The worker side of the distributed runtime: the adore.v1.Worker service (proto/adore/v1/worker.proto)
// over one StepExecutor. Actor style: one thread owns the engine, the executor and every per-sequence
// figure; the gRPC handlers only post a message to its mailbox and wait for the reply (Health reads a
// snapshot instead and never waits on a running step). Tensor parallelism (CPU backend, Gloo): Bootstrap with
// world_size > 1 comes before Load and joins the group (the actor thread runs the rendezvous and owns the
// communicator); Load then builds this rank's shard of the engine over it. A Bootstrap of a newer epoch (the
// coordinator rebuilding the group after a rank failed or restarted) leaves the old group first, dropping the
// engine and its sequences: the coordinator loads the worker again afterwards.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "adore/v1/worker.grpc.pb.h"
#include "worker/adore_controller.h"
#include "worker/comm/communicator.h"
#include "worker/engine.h"
#include "worker/step_executor.h"

namespace adore {

// The metadata key every Worker call carries when the worker has a secret.
inline constexpr char kWorkerSecretKey[] = "adore-worker-secret";

struct WorkerServiceOptions {
  std::string secret;  // empty: no authentication (tests, a private single-host setup)
  // Address this worker's Gloo device listens on and advertises to its peers (tensor parallelism). Empty:
  // 127.0.0.1 when the rendezvous store is on a loopback address, otherwise this machine's host name.
  std::string comm_listen_host;
  // CUDA device this worker runs on (its --device): a CUDA tensor-parallel group's NCCL communicator is
  // created on it at Bootstrap, before Load names a device.
  int device = 0;
  // sha256 the model file must have (64 lower-case hex digits, its --model_sha256): every Load hashes the
  // file it names and fails FAILED_PRECONDITION "expected_sha256" when it differs, or when the request's
  // expected_sha256 is another digest. Empty: only the request's expected_sha256 is checked.
  std::string model_sha256;
  // Longest wait for a collective of the tensor-parallel group (Gloo and NCCL op timeout): a step whose peer
  // died fails after it (NCCL: the communicator is aborted), and the coordinator forms the group again.
  int64_t collective_timeout_ms = 60000;
  // Testing only (the fault tests): every step waits this long before it runs, so that a stream of the
  // tiny test model lasts long enough to be interrupted. 0: off.
  int64_t debug_step_delay_ms = 0;
  // Called (under the health lock, so in order) whenever the worker becomes loaded and ready or stops being
  // so (a Load starts or fails): WorkerServer mirrors it into grpc.health.v1's "adore.v1.Worker" status.
  std::function<void(bool ready)> on_ready_changed;
};

class WorkerService final : public adore::v1::Worker::Service {
 public:
  explicit WorkerService(WorkerServiceOptions options = {});
  // Stops the actor thread (after the message it is working on) and frees the engine.
  ~WorkerService() override;
  WorkerService(const WorkerService&) = delete;
  WorkerService& operator=(const WorkerService&) = delete;

  grpc::Status Load(grpc::ServerContext* context, const adore::v1::LoadRequest* request,
                    adore::v1::LoadResponse* response) override;
  grpc::Status Bootstrap(grpc::ServerContext* context, const adore::v1::BootstrapRequest* request,
                         adore::v1::BootstrapResponse* response) override;
  grpc::Status Step(grpc::ServerContext* context, const adore::v1::StepRequest* request,
                    adore::v1::StepResult* response) override;
  grpc::Status Health(grpc::ServerContext* context, const adore::v1::WorkerHealthRequest* request,
                      adore::v1::WorkerHealthResponse* response) override;
  // Calls options.on_ready_changed with the current readiness (under the health lock): for a listener that
  // could not take calls when the state last changed.
  void RepublishReady();

 private:
  grpc::Status Authenticate(const grpc::ServerContext& context) const;
  // Runs `job` on the actor thread and returns its status once it ran (UNAVAILABLE when stopping).
  grpc::Status Post(std::function<grpc::Status()> job);
  // Puts `job` in the actor's mailbox (in call order) and returns the future of its status.
  std::future<grpc::Status> Enqueue(std::function<grpc::Status()> job);
  void Loop();

  // Actor-only (called on the actor thread).
  grpc::Status DoLoad(const adore::v1::LoadRequest& request, adore::v1::LoadResponse* response);
  grpc::Status DoBootstrap(const adore::v1::BootstrapRequest& request, adore::v1::BootstrapResponse* response);
  grpc::Status DoBootstrapGroup(const adore::v1::BootstrapRequest& request, adore::v1::BootstrapResponse* response);
  grpc::Status DoBootstrapNccl(const adore::v1::BootstrapRequest& request, adore::v1::BootstrapResponse* response,
                               std::chrono::steady_clock::time_point t0);
  grpc::Status DoStep(const adore::v1::StepRequest& request, adore::v1::StepResult* response);
  // A Bootstrap of a newer epoch: drops the group, the engine and every sequence (state EMPTY).
  void LeaveGroup();
  void PublishHealth();

  WorkerServiceOptions options_;
  const std::chrono::steady_clock::time_point started_;

  // Owned by the actor thread. comm_ is declared before engine_ so it outlives it.
  std::unique_ptr<comm::Communicator> comm_;  // the tensor-parallel group (world_size > 1), from Bootstrap
  std::unique_ptr<AdoreController> controller_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<StepExecutor> executor_;
  StepExecutorOptions executor_options_;  // from the LoadRequest
  bool loaded_ = false;
  std::string load_request_bytes_;  // the Load request that loaded this worker (for idempotent retries)
  adore::v1::LoadResponse load_response_;
  int64_t kv_capacity_ = 0;
  uint64_t epoch_ = 0;
  uint64_t last_step_id_ = 0;
  adore::v1::StepResult last_result_;                     // of last_step_id_, for a retried step
  std::unordered_map<uint64_t, ReleaseStats> totals_;     // live sequences: release totals so far
  std::unordered_map<uint64_t, int64_t> slots_;           // live sequences: KV slots held
  int64_t slots_used_ = 0;

  // The mailbox.
  std::mutex mu_;
  std::condition_variable cv_;
  // Step calls enter the mailbox in step_id order (Step): the epoch and the highest step_id posted in it.
  std::mutex order_mu_;
  std::condition_variable order_cv_;
  uint64_t order_epoch_ = 0;
  uint64_t order_posted_ = 0;
  std::deque<std::function<void()>> jobs_;
  bool stop_ = false;

  // What Health answers (written by the actor).
  mutable std::mutex health_mu_;
  adore::v1::WorkerHealthResponse health_;
  bool ready_published_ = false;  // the last value given to options_.on_ready_changed; guarded by health_mu_
  void SetReadyLocked(bool ready);

  std::thread thread_;  // last: starts after everything above exists
};

// adore-worker's core, usable in-process (tests): the Worker service on a gRPC server.
struct WorkerServerOptions {
  std::string listen = "127.0.0.1";
  int port = 0;  // 0 = pick a free port
  std::string secret;
  std::string comm_listen_host;  // see WorkerServiceOptions
  int device = 0;                // see WorkerServiceOptions
  std::string model_sha256;      // see WorkerServiceOptions
  int64_t collective_timeout_ms = 60000;  // see WorkerServiceOptions
  int64_t debug_step_delay_ms = 0;        // see WorkerServiceOptions
};

class WorkerServer {
 public:
  // UNAVAILABLE when the address cannot be bound; INVALID_ARGUMENT for a model_sha256 that is not 64 hex
  // digits (either case).
  static absl::StatusOr<std::unique_ptr<WorkerServer>> Start(const WorkerServerOptions& options);
  ~WorkerServer();
  int port() const { return port_; }
  std::string address() const;
  void Wait() { server_->Wait(); }
  // Stops accepting calls, cancels running ones and stops the actor. Idempotent.
  void Shutdown();

 private:
  WorkerServer() = default;
  WorkerServerOptions options_;
  std::unique_ptr<WorkerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::atomic<grpc::HealthCheckServiceInterface*> health_{nullptr};  // server_'s grpc.health.v1 service
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace adore
