// RemoteStepRunner: the scheduler's StepRunner over worker processes (adore-worker) driven through the
// worker API (proto/adore/v1/worker.proto): Load at start, one Step RPC per scheduler step. A failed RPC
// fails the step with UNAVAILABLE naming the worker (the scheduler ends the running requests); the next
// step first resynchronizes with the worker (Health; Load again when it was restarted) and ends the
// sequences the failed step left behind.
//
// Tensor parallelism (N > 1 workers, CPU backend): the runner hosts a TcpStoreServer for the ranks' Gloo
// rendezvous, sends every rank Bootstrap (in parallel: they block until all have joined), then Load with
// its tp_rank, then each step to all ranks in parallel. The tokens come from rank 0; the per-sequence slot
// map hashes of all ranks are compared every step (a mismatch fails the step with INTERNAL naming the
// sequence and ranks). A failed rank fails the step with UNAVAILABLE naming it; the group cannot be
// rebuilt yet (the next step resynchronizes only when every rank is still at the same step).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "adore/v1/worker.grpc.pb.h"
#include "coordinator/scheduler.h"
#include "worker/comm/tcp_store.h"

namespace adore {

struct RemoteRunnerOptions {
  std::vector<std::string> workers;  // host:port of each rank, rank order
  std::string secret;                // sent as metadata adore-worker-secret; empty = none
  adore::v1::LoadRequest load;       // sent to every rank (tp_rank / tp_size are filled in)
  int64_t load_timeout_ms = 600000;
  int64_t step_timeout_ms = 300000;  // a step that takes longer fails the step (UNAVAILABLE)
  int64_t health_timeout_ms = 2000;
  // Tensor parallelism: where the rendezvous store listens (and the address the workers are told).
  std::string rendezvous_host = "127.0.0.1";
  int64_t bootstrap_timeout_ms = 60000;
};

class RemoteStepRunner final : public StepRunner {
 public:
  // Connects, bootstraps (N > 1) and loads every worker. INVALID_ARGUMENT for a bad address, the worker's
  // error (prefixed with its address and rank) when Bootstrap or Load fails, UNAVAILABLE when unreachable.
  static absl::StatusOr<std::unique_ptr<RemoteStepRunner>> Connect(const RemoteRunnerOptions& options);

  absl::StatusOr<WorkerStepResult> Step(const WorkerStep& step) override;
  // Each rank's StepTiming.total_ms of the latest successful step (the /metrics per-rank step time).
  std::vector<double> last_rank_step_ms() const override { return rank_step_ms_; }

  // Rank 0's Load answer (model info, KV capacity).
  const adore::v1::LoadResponse& load_response() const { return load_response_; }

 private:
  RemoteStepRunner() = default;
  struct Rank {
    std::string address;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<adore::v1::Worker::Stub> stub;
  };
  void Prepare(grpc::ClientContext* context, int64_t timeout_ms) const;
  absl::Status Bootstrap();
  absl::Status Load();
  absl::Status Resync();
  absl::Status RpcError(const grpc::Status& status, int rank, const std::string& what) const;
  // Runs fn(rank) for every rank, in parallel when there are several; returns the first (lowest rank) error.
  absl::Status ForAllRanks(const std::function<absl::Status(int)>& fn) const;

  RemoteRunnerOptions options_;
  std::vector<Rank> ranks_;
  std::unique_ptr<comm::TcpStoreServer> store_;  // N > 1: the ranks' rendezvous
  uint64_t epoch_ = 0;                           // 0 for one worker (no Bootstrap), else the group's epoch
  adore::v1::LoadResponse load_response_;
  uint64_t next_step_id_ = 1;
  bool broken_ = false;                    // the last step's RPC failed: resync before the next
  std::unordered_set<uint64_t> live_;      // sequences live on the worker, as far as this runner knows
  std::vector<uint64_t> orphans_;          // to end on the worker at the next step
  std::vector<double> rank_step_ms_;       // per rank, the latest successful step as each worker timed it
};

}  // namespace adore
