// RemoteStepRunner: the scheduler's StepRunner over worker processes (adore-worker) driven through the
// worker API (proto/adore/v1/worker.proto): Load at start, one Step RPC per scheduler step. A failed RPC
// fails the step with UNAVAILABLE naming the worker (the scheduler ends the running requests); the next
// step first resynchronizes with the worker (Health; Load again when it was restarted) and ends the
// sequences the failed step left behind. Tensor-parallel size 1 for now (one worker address).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "adore/v1/worker.grpc.pb.h"
#include "coordinator/scheduler.h"

namespace adore {

struct RemoteRunnerOptions {
  std::vector<std::string> workers;  // host:port of each rank, rank order; exactly 1 today
  std::string secret;                // sent as metadata adore-worker-secret; empty = none
  adore::v1::LoadRequest load;       // sent to every rank (tp_rank / tp_size are filled in)
  int64_t load_timeout_ms = 600000;
  int64_t step_timeout_ms = 300000;  // a step that takes longer fails the step (UNAVAILABLE)
  int64_t health_timeout_ms = 2000;
};

class RemoteStepRunner final : public StepRunner {
 public:
  // Connects and loads every worker. UNIMPLEMENTED for more than one worker, INVALID_ARGUMENT for a bad
  // address, the worker's error (prefixed with its address) when Load fails, UNAVAILABLE when unreachable.
  static absl::StatusOr<std::unique_ptr<RemoteStepRunner>> Connect(const RemoteRunnerOptions& options);

  absl::StatusOr<WorkerStepResult> Step(const WorkerStep& step) override;

  // Rank 0's Load answer (model info, KV capacity).
  const adore::v1::LoadResponse& load_response() const { return load_response_; }

 private:
  RemoteStepRunner() = default;
  void Prepare(grpc::ClientContext* context, int64_t timeout_ms) const;
  absl::Status Load();
  absl::Status Resync();
  absl::Status RpcError(const grpc::Status& status, const char* what) const;

  RemoteRunnerOptions options_;
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<adore::v1::Worker::Stub> stub_;
  adore::v1::LoadResponse load_response_;
  uint64_t next_step_id_ = 1;
  bool broken_ = false;                    // the last step's RPC failed: resync before the next
  std::unordered_set<uint64_t> live_;      // sequences live on the worker, as far as this runner knows
  std::vector<uint64_t> orphans_;          // to end on the worker at the next step
};

}  // namespace adore
