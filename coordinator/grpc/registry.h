// Worker registration (proto/adore/v1/coordinator.proto): `adore-server --expect_workers N` waits for N
// `adore-worker --coordinator host:port` processes to call Coordinator.RegisterWorker, assigns their
// ranks, and then drives them in rank order through RemoteStepRunner exactly as it drives a --workers list.
//
// Once the group is complete, a registration from a new address takes the rank of a registered worker that
// no longer answers (WorkerRegistryOptions::is_alive; a worker restarted at another port) and is handed on
// through on_replaced (the server points RemoteStepRunner at it); renewals of a held registration (the
// workers repeat theirs every second or so) are answered quietly.
//
// WorkerRegistry is the bookkeeping (no gRPC: validation, rank assignment, waiting for the group);
// CoordinatorService is the adore.v1.Coordinator service over it (authentication with the workers' shared
// secret, the caller's address for an address without a host).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "adore/v1/coordinator.grpc.pb.h"

namespace adore {

// The metadata key a RegisterWorker call carries the shared secret in: the Worker API's
// (worker/grpc/worker_service.h kWorkerSecretKey), so one secret file serves both directions.
inline constexpr char kRegistrationSecretKey[] = "adore-worker-secret";

struct WorkerRegistryOptions {
  int world_size = 1;                                    // N: ranks to wait for, >= 1
  adore::v1::Backend backend = adore::v1::BACKEND_CPU;   // what registering workers must serve
  // One line per registration and refusal (without a trailing newline). Empty: stderr, prefixed
  // "adore-server: ".
  std::function<void(const std::string&)> log;
  // Whether the worker registered as `rank` at `address` still answers (called without the registry's lock,
  // on the registering call's thread; should take about a second at most). Null: every registered worker
  // counts as alive, and a complete group refuses every new address.
  std::function<bool(int rank, const std::string& address)> is_alive;
  // Called (without the lock) after a new address took over `rank` from a worker that did not answer.
  std::function<void(int rank, const std::string& address)> on_replaced;
};

class WorkerRegistry {
 public:
  explicit WorkerRegistry(WorkerRegistryOptions options);

  // Registers one worker (see coordinator.proto for every answer). `peer_host` is the host the call came
  // from (PeerHost), used when the request's address has no host; may be empty when unknown.
  absl::StatusOr<adore::v1::RegisterWorkerResponse> Register(const adore::v1::RegisterWorkerRequest& request,
                                                             const std::string& peer_host);

  // Blocks until all world_size ranks are registered and returns their addresses in rank order.
  // DEADLINE_EXCEEDED after `timeout` (naming the ranks registered and missing), CANCELLED after Close.
  absl::StatusOr<std::vector<std::string>> WaitForAll(absl::Duration timeout);

  // Refuses every later registration (UNAVAILABLE) and ends a running WaitForAll (CANCELLED).
  void Close();

  int world_size() const { return options_.world_size; }
  int registered() const;
  // Writes one line through options.log (or stderr).
  void Log(const std::string& line) const;

 private:
  std::string DescribeLocked() const;  // "rank 0: a:1, rank 1: (missing)"
  // A complete group: the rank (`requested`, else the lowest) whose worker does not answer is_alive, now
  // held by `address`; -1 when every candidate answers (or there is no is_alive). Takes and returns `lock`
  // locked; releases it while probing.
  int ReplaceDeadLocked(std::unique_lock<std::mutex>& lock, const std::string& address, int requested);

  WorkerRegistryOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> addresses_;  // by rank; empty = free
  int registered_ = 0;
  bool closed_ = false;
};

// adore.v1.Coordinator over a WorkerRegistry. With a non-empty secret every call must carry it in the
// metadata kRegistrationSecretKey (UNAUTHENTICATED otherwise, before the request is looked at).
class CoordinatorService final : public adore::v1::Coordinator::Service {
 public:
  CoordinatorService(WorkerRegistry& registry, std::string secret);

  grpc::Status RegisterWorker(grpc::ServerContext* context, const adore::v1::RegisterWorkerRequest* request,
                              adore::v1::RegisterWorkerResponse* response) override;

 private:
  WorkerRegistry& registry_;
  std::string secret_;
};

// The host of a gRPC peer string (grpc::ServerContext::peer()): "ipv4:10.0.0.7:41234" -> "10.0.0.7",
// "ipv6:[::1]:41234" (or URI-escaped "ipv6:%5B::1%5D:41234") -> "[::1]"; "" for anything else (unix
// sockets, unknown forms).
std::string PeerHost(const std::string& peer);

// Splits "host:port" ("[v6]:port" too) into its host (possibly empty) and port, which must be in
// [1, 65535]. INVALID_ARGUMENT naming `field` otherwise.
absl::Status SplitHostPort(const std::string& address, const std::string& field, std::string* host, int* port);

}  // namespace adore
