// RemoteStepRunner: the scheduler's StepRunner over worker processes (adore-worker) driven through the
// worker API (proto/adore/v1/worker.proto): the group is formed at start (Bootstrap, Load), then one Step RPC
// per scheduler step. A failed RPC fails the step with UNAVAILABLE naming the worker (the scheduler ends the
// running requests; the other ranks' calls of that step are cancelled, so that it fails at once); the group
// is then resynchronized before the next step, or sooner by CheckWorkers (the server's readiness monitor,
// which also finds workers that die while idle): a worker still at the same step goes on; a worker that was
// restarted, or a group whose ranks are out of step or in another epoch, is formed again.
//
// Forming the group starts a new generation (epoch) newer than any of the workers' own (a restarted
// coordinator takes over workers that are still loaded): one worker is loaded (Load; the same request again
// is a no-op) and reset with Bootstrap(world_size 1, epoch); N > 1 workers (CPU backend, tensor
// parallelism) are sent Bootstrap in parallel with a fresh rendezvous in the TcpStoreServer hosted here (a
// newer epoch makes every rank leave its old group and drop its engine), then Load with their tp_rank. Each
// step goes to all ranks in parallel. The tokens come from rank 0; the per-sequence slot map hashes of all
// ranks are compared every step (a mismatch fails the step with INTERNAL naming the sequence and ranks).
// A rank's address can change (ReplaceWorker: a worker re-registered at another port); it is dialed from
// the next check or step on. Thread-safe: Step runs on the scheduler's thread, CheckWorkers on another.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
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
  std::vector<int32_t> devices;      // per rank: LoadRequest.device (empty: load.device for every rank)
  int64_t load_timeout_ms = 600000;
  int64_t step_timeout_ms = 300000;  // a step that takes longer fails the step (UNAVAILABLE)
  int64_t health_timeout_ms = 2000;
  // Tensor parallelism: where the rendezvous store listens (and the address the workers are told).
  std::string rendezvous_host = "127.0.0.1";
  int64_t bootstrap_timeout_ms = 60000;
  // CheckWorkers does not probe the workers while a step succeeded within this time (they answered then).
  int64_t check_skip_after_step_ms = 1000;
  // Send step n + 1 before step n's answer (the scheduler's Submit / Wait): the workers' step time no longer
  // includes the coordinator's round trip and bookkeeping.
  bool pipeline = false;
  // One line per recovery action (without a trailing newline). Empty: stderr, prefixed "adore-server: ".
  std::function<void(const std::string&)> log;
};

class RemoteStepRunner final : public StepRunner {
 public:
  // Connects and forms the group (see above). INVALID_ARGUMENT for a bad address, the worker's error
  // (prefixed with its address and rank) when Bootstrap or Load fails, UNAVAILABLE when unreachable.
  static absl::StatusOr<std::unique_ptr<RemoteStepRunner>> Connect(const RemoteRunnerOptions& options);

  absl::StatusOr<WorkerStepResult> Step(const WorkerStep& step) override;
  // Pipelined steps (RemoteRunnerOptions::pipeline): Submit sends the step's RPCs from a thread of their own
  // and returns at once; Wait returns the oldest submitted step's result. A step that fails while a later
  // one is in the air fails that one too, and the group is resynchronized before the next.
  bool pipelined() const override { return options_.pipeline; }
  void Submit(const WorkerStep& step) override;
  absl::StatusOr<WorkerStepResult> Wait() override;
  // Each rank's StepTiming (total_ms, comm_ms) of the latest successful step, with its address.
  std::vector<RankStepTiming> last_rank_timings() const override;

  // Whether the group can take steps, for readiness (grpc.health.v1, /health): OK, or UNAVAILABLE naming
  // what is wrong. Probes every rank (Health) unless a step succeeded lately; a group found broken (a rank
  // unreachable, restarted, out of step) is recovered here when every rank answers (resynchronized, or
  // formed again: this can take as long as a Load). Never waits for a running step: while one runs, it
  // answers what the latest step or check found.
  absl::Status CheckWorkers();

  // From now on `rank` is served at `address` (a worker that re-registered at another address): the next
  // check or step dials it and forms the group again. Out-of-range ranks are ignored.
  void ReplaceWorker(int rank, const std::string& address);

  // Rank 0's Load answer (model info, KV capacity) when the group was formed at Connect.
  const adore::v1::LoadResponse& load_response() const { return load_response_; }

 private:
  RemoteStepRunner() = default;
  struct Rank {
    std::string address;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<adore::v1::Worker::Stub> stub;
  };
  Rank Dial(const std::string& address) const;
  void Log(const std::string& line) const;
  void Prepare(grpc::ClientContext* context, int64_t timeout_ms) const;
  // The rest run with mu_ held.
  absl::Status Form();
  absl::Status Bootstrap();
  absl::Status Load();
  absl::Status Reset();  // one worker: Bootstrap(world_size 1, epoch_): every sequence ends, steps from 1
  absl::Status Resync();
  absl::Status HealthAll(std::vector<adore::v1::WorkerHealthResponse>* health) const;
  // Probes an idle group: OK when every rank is ready, in this epoch and at the last step.
  absl::Status Probe() const;
  void ApplyReplacements();
  void SetLastCheck(const absl::Status& status);
  absl::Status RpcError(const grpc::Status& status, int rank, const std::string& what) const;
  // One step on its way: built and sent by Launch (under mu_), its answers checked by Land.
  struct Flight {
    std::chrono::steady_clock::time_point t0;
    WorkerStep step;
    adore::v1::StepRequest req;
    bool sent = false;    // its RPCs went out; false: it failed before (status says why)
    bool locked = false;  // mu_ is held for Land: by Launch (sent synchronously) or Wait; Land takes it over
    absl::Status status;
    std::vector<adore::v1::StepResult> responses;  // per rank
    std::thread thread;                            // the asynchronous send
  };
  // async: a step that was sent joins flights_ here, under the lock that gave it its id, and nullptr comes
  // back; one that failed before it was sent comes back for the caller to queue.
  std::unique_ptr<Flight> Launch(const WorkerStep& step, bool async);
  absl::Status Send(Flight& flight) const;
  absl::StatusOr<WorkerStepResult> Land(std::unique_ptr<Flight> flight);
  void Abandon(const WorkerStep& step);  // with mu_ held
  // Runs fn(rank, context) for every rank, in parallel when there are several, each with its own context
  // prepared with `timeout_ms`; the first failure cancels the other ranks' calls, and its error is returned.
  absl::Status ForAllRanks(int64_t timeout_ms,
                           const std::function<absl::Status(int, grpc::ClientContext*)>& fn) const;

  RemoteRunnerOptions options_;
  mutable std::mutex mu_;  // everything below but what has its own lock
  std::vector<Rank> ranks_;
  std::unique_ptr<comm::TcpStoreServer> store_;  // N > 1: the ranks' rendezvous
  uint64_t epoch_ = 0;                           // the group's generation (Form)
  adore::v1::LoadResponse load_response_;
  uint64_t next_step_id_ = 1;
  bool broken_ = false;                    // a step failed or a check found the group broken: resync first
  std::unordered_set<uint64_t> live_;      // sequences live on the worker, as far as this runner knows
  std::vector<uint64_t> orphans_;          // to end on the worker at the next step
  std::deque<std::unique_ptr<Flight>> flights_;  // pipelined steps submitted and not yet waited for
  std::unordered_set<uint64_t> starting_;        // started in a step not yet landed (they may decode already)
  bool pipeline_failed_ = false;                 // a step failed while a later one was in the air
  std::vector<RankStepTiming> rank_timings_;  // per rank, the latest successful step as each worker timed it
  std::chrono::steady_clock::time_point last_step_ok_{};

  mutable std::mutex state_mu_;  // what CheckWorkers answers while a step runs
  absl::Status last_check_;

  std::mutex replace_mu_;  // ReplaceWorker's addresses, applied under mu_
  std::map<int, std::string> replacements_;
};

}  // namespace adore
