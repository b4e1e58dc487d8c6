// Communicator over NCCL, for GPU tensor parallelism (one rank per GPU). Rank 0 creates the unique id, the
// caller (the coordinator) hands it to every rank, and each rank joins with Create(). The communicator runs
// in NCCL's non-blocking mode so that init, collectives and Synchronize() honour timeouts and abort instead of
// hanging when a peer is gone.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/comm/communicator.h"

struct ncclComm;    // ncclComm_t is ncclComm*
struct CUevent_st;  // cudaEvent_t is CUevent_st*

namespace adore::comm {

struct NcclCommunicatorOptions {
  // Bounds joining the group (every rank must call Create with the same id and world size).
  absl::Duration init_timeout = absl::Seconds(120);
  // Bounds Synchronize(), Barrier() and the host-buffer path of each collective; on expiry the communicator
  // is aborted and the call returns DEADLINE_EXCEEDED.
  absl::Duration op_timeout = absl::Seconds(60);
  // Record CUDA events around each collective so Stats() reports device time (else: host enqueue time).
  bool time_collectives = true;
};

class NcclCommunicator final : public Communicator {
 public:
  static constexpr size_t kUniqueIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES

  // A fresh ncclUniqueId as kUniqueIdBytes bytes. NCCL's bootstrap root starts in the calling process, at the
  // address embedded in the id: call it in a process every rank can reach over TCP and that lives until all
  // ranks have joined (rank 0's worker), then hand the bytes to the others.
  static absl::StatusOr<std::string> CreateUniqueId();

  // Joins the group as `rank` of `world_size` on CUDA device `device` (made current on this thread).
  // Errors: INVALID_ARGUMENT (id size, rank), FAILED_PRECONDITION (no such device), DEADLINE_EXCEEDED when
  // the group does not form within init_timeout, UNAVAILABLE / INTERNAL from NCCL otherwise.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(std::string_view unique_id, int rank, int world_size,
                                                                  int device,
                                                                  const NcclCommunicatorOptions& options = {});
  ~NcclCommunicator() override;

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  const char* backend() const override { return "nccl"; }
  int device() const { return device_; }
  void Abandon() override { Abort(absl::OkStatus()).IgnoreError(); }

 protected:
  absl::Status DoAllReduceSum(void* data, size_t count, CommDataType dtype, void* stream) override;
  absl::Status DoBroadcast(void* data, size_t num_bytes, int root, void* stream) override;
  absl::Status DoAllGather(const void* send, void* recv, size_t num_bytes, void* stream) override;
  // An all-reduce of one float, waited for with the op timeout.
  absl::Status DoBarrier() override;
  absl::Status DoSynchronize(void* stream) override;
  bool times_itself() const override { return options_.time_collectives; }
  void CollectTimings() override;

 private:
  struct Timing {
    CommOp op;
    CUevent_st* start;
    CUevent_st* stop;
  };

  NcclCommunicator(ncclComm* comm, int rank, int world_size, int device, const NcclCommunicatorOptions& options);

  // Issues `launch` (one NCCL call on `stream`) between timing events; completes non-blocking mode's
  // in-progress state with the op timeout.
  template <typename Launch>
  absl::Status Issue(CommOp op, void* stream, Launch&& launch);
  // Waits until `stream` is idle, watching NCCL's async error; aborts the communicator on error or timeout.
  absl::Status WaitStream(void* stream);
  // Aborts the communicator (peers stuck in a collective with us get an error) and returns `status`.
  absl::Status Abort(absl::Status status);
  // A device buffer of at least `bytes` for host-memory payloads.
  absl::StatusOr<void*> Staging(size_t bytes);
  // True when `ptr` is ordinary host memory (pageable or pinned), which NCCL cannot read.
  bool IsHostPointer(const void* ptr) const;

  ncclComm* comm_;  // null after Abort()
  const int rank_;
  const int world_size_;
  const int device_;
  const NcclCommunicatorOptions options_;
  void* staging_ = nullptr;
  size_t staging_bytes_ = 0;

  std::mutex timing_mu_;
  std::vector<Timing> pending_;           // guarded by timing_mu_
  std::vector<CUevent_st*> free_events_;  // guarded by timing_mu_
};

}  // namespace adore::comm
