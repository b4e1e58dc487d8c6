// NcclCommunicator: NCCL in non-blocking mode (every call may return ncclInProgress; completion is polled
// with a deadline), host-buffer staging, and CUDA-event timing of each collective.
#include "worker/comm/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda/cuda_status.h"

namespace adore::comm {
namespace {

static_assert(NcclCommunicator::kUniqueIdBytes == NCCL_UNIQUE_ID_BYTES);
static_assert(sizeof(ncclUniqueId) == NCCL_UNIQUE_ID_BYTES);

using Clock = std::chrono::steady_clock;

// Codes by what the caller should do: a lost peer or network failure (rebuild the group) is UNAVAILABLE.
absl::Status NcclStatus(ncclResult_t r, ncclComm_t comm, const char* what) {
  if (r == ncclSuccess) return absl::OkStatus();
  std::string msg = absl::StrCat(what, ": ", ncclGetErrorString(r));
  if (comm != nullptr) {
    const char* last = ncclGetLastError(comm);
    if (last != nullptr && last[0] != '\0') absl::StrAppend(&msg, " (", last, ")");
  }
  switch (r) {
    case ncclRemoteError:
    case ncclSystemError:
      return absl::UnavailableError(msg);
    case ncclInvalidArgument:
    case ncclInvalidUsage:
      return absl::InvalidArgumentError(msg);
    default:
      return absl::InternalError(msg);
  }
}

// Polls until `done()` is true, yielding for the first 200 ms (a decode step's wait for its stream, which the
// tensor-parallel engine makes through Synchronize: a sleep would add up to its length to every step, as a
// spinning cudaStreamSynchronize does not) and sleeping after (CPU). Returns false at the deadline.
template <typename Done>
bool PollUntil(Clock::time_point deadline, Done&& done) {
  const auto spin_until = Clock::now() + std::chrono::milliseconds(200);
  while (true) {
    if (done()) return true;
    const auto now = Clock::now();
    if (now >= deadline) return false;
    if (now < spin_until) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
}

cudaStream_t AsStream(void* stream) { return static_cast<cudaStream_t>(stream); }

}  // namespace

absl::StatusOr<std::string> NcclCommunicator::CreateUniqueId() {
  ncclUniqueId id;
  if (absl::Status s = NcclStatus(ncclGetUniqueId(&id), nullptr, "ncclGetUniqueId"); !s.ok()) return s;
  return std::string(id.internal, NCCL_UNIQUE_ID_BYTES);
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(std::string_view unique_id, int rank,
                                                                           int world_size, int device,
                                                                           const NcclCommunicatorOptions& options) {
  const std::string where = absl::StrCat("NCCL init (rank ", rank, " of ", world_size, ", device ", device, ")");
  if (unique_id.size() != NCCL_UNIQUE_ID_BYTES) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": unique id has ", unique_id.size(), " bytes, expected ", NCCL_UNIQUE_ID_BYTES));
  }
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": rank out of range"));
  }
  if (options.init_timeout <= absl::ZeroDuration() || options.op_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": timeouts must be positive"));
  }
  if (absl::Status s = kernels::CudaStatus(cudaSetDevice(device), "cudaSetDevice"); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(where, ": ", s.message()));
  }
  ncclUniqueId id;
  std::memcpy(id.internal, unique_id.data(), NCCL_UNIQUE_ID_BYTES);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRankConfig(&comm, world_size, id, rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    absl::Status s = NcclStatus(r, comm, "ncclCommInitRankConfig");
    if (comm != nullptr) ncclCommAbort(comm);
    return absl::Status(s.code(), absl::StrCat(where, ": ", s.message()));
  }
  ncclResult_t state = ncclInProgress;
  const bool settled = PollUntil(Clock::now() + TimeoutMillis(options.init_timeout), [&] {
    if (ncclCommGetAsyncError(comm, &state) != ncclSuccess) state = ncclInternalError;
    return state != ncclInProgress;
  });
  if (!settled) {
    ncclCommAbort(comm);
    return absl::DeadlineExceededError(absl::StrCat(where, ": the group did not form within ",
                                                    absl::FormatDuration(options.init_timeout),
                                                    " (a rank missing, or a different unique id)"));
  }
  if (state != ncclSuccess) {
    absl::Status s = NcclStatus(state, comm, "ncclCommInitRankConfig");
    ncclCommAbort(comm);
    return absl::Status(s.code(), absl::StrCat(where, ": ", s.message()));
  }
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(comm, rank, world_size, device, options));
}

NcclCommunicator::NcclCommunicator(ncclComm* comm, int rank, int world_size, int device,
                                   const NcclCommunicatorOptions& options)
    : comm_(comm), rank_(rank), world_size_(world_size), device_(device), options_(options) {}

NcclCommunicator::~NcclCommunicator() {
  cudaSetDevice(device_);
  if (comm_ != nullptr) {
    // Finalize waits for the peers to quiesce; a peer that is gone must not hang the destructor.
    ncclResult_t state = ncclCommFinalize(comm_);
    bool clean = state == ncclSuccess || state == ncclInProgress;
    if (clean) {
      clean = PollUntil(Clock::now() + TimeoutMillis(options_.op_timeout),
                        [&] {
                          if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) state = ncclInternalError;
                          return state != ncclInProgress;
                        }) &&
              state == ncclSuccess;
    }
    if (clean) {
      ncclCommDestroy(comm_);
    } else {
      ncclCommAbort(comm_);
    }
    comm_ = nullptr;
  }
  {
    std::lock_guard<std::mutex> lock(timing_mu_);
    for (const Timing& t : pending_) {
      cudaEventDestroy(t.start);
      cudaEventDestroy(t.stop);
    }
    for (CUevent_st* e : free_events_) cudaEventDestroy(e);
  }
  if (staging_ != nullptr) cudaFree(staging_);
}

absl::Status NcclCommunicator::Abort(absl::Status status) {
  if (comm_ != nullptr) {
    // ncclCommAbort first raises the communicator's abort flag, which ends its kernels still on the device,
    // then frees its resources, and for that waits for every other rank of the node to abort as well
    // (NVIDIA/nccl#863): with a peer process that died it never returns. So it runs on a thread of its own
    // that is left behind; the device buffers of a group whose peer died stay allocated until the process
    // ends. The engine's stream drains as soon as the flag is up.
    std::thread([comm = comm_, device = device_] {
      cudaSetDevice(device);
      ncclCommAbort(comm);
    }).detach();
    comm_ = nullptr;
  }
  return status;
}

bool NcclCommunicator::IsHostPointer(const void* ptr) const {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError();  // older drivers report unregistered host memory as an error
    return true;
  }
  return attr.type == cudaMemoryTypeUnregistered || attr.type == cudaMemoryTypeHost;
}

absl::StatusOr<void*> NcclCommunicator::Staging(size_t bytes) {
  if (bytes <= staging_bytes_) return staging_;
  if (staging_ != nullptr) {
    // Safe to free without a device sync: every user of the buffer waits for its stream before returning.
    cudaFree(staging_);
    staging_ = nullptr;
    staging_bytes_ = 0;
  }
  const size_t rounded = std::max<size_t>(bytes, 4096);
  ADORE_CUDA_RETURN_IF_ERROR(cudaMalloc(&staging_, rounded));
  staging_bytes_ = rounded;
  return staging_;
}

template <typename Launch>
absl::Status NcclCommunicator::Issue(CommOp op, void* stream, Launch&& launch) {
  if (comm_ == nullptr) return absl::FailedPreconditionError("communicator was aborted");
  Timing timing{op, nullptr, nullptr};
  // A collective captured into a CUDA graph runs later, at every replay: events recorded now would time
  // nothing, and synchronizing on older events would invalidate the capture. Captured collectives go untimed.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  ADORE_CUDA_RETURN_IF_ERROR(cudaStreamIsCapturing(AsStream(stream), &capture));
  const bool time_it = options_.time_collectives && capture == cudaStreamCaptureStatusNone;
  if (time_it) {
    std::lock_guard<std::mutex> lock(timing_mu_);
    for (CUevent_st** e : {&timing.start, &timing.stop}) {
      if (!free_events_.empty()) {
        *e = free_events_.back();
        free_events_.pop_back();
      } else {
        ADORE_CUDA_RETURN_IF_ERROR(cudaEventCreate(e));
      }
    }
    ADORE_CUDA_RETURN_IF_ERROR(cudaEventRecord(timing.start, AsStream(stream)));
  }
  auto recycle = [&] {
    if (timing.start == nullptr) return;
    std::lock_guard<std::mutex> lock(timing_mu_);
    free_events_.push_back(timing.start);
    free_events_.push_back(timing.stop);
  };
  ncclResult_t r = launch();
  if (r == ncclInProgress) {
    // Non-blocking mode: the call may still be connecting peers (NCCL connects lazily on first use).
    const bool settled = PollUntil(Clock::now() + TimeoutMillis(options_.op_timeout), [&] {
      if (ncclCommGetAsyncError(comm_, &r) != ncclSuccess) r = ncclInternalError;
      return r != ncclInProgress;
    });
    if (!settled) {
      recycle();
      return Abort(absl::DeadlineExceededError(absl::StrCat(
          "NCCL call did not complete within ", absl::FormatDuration(options_.op_timeout), "; communicator aborted")));
    }
  }
  if (r != ncclSuccess) {
    recycle();
    return Abort(NcclStatus(r, comm_, CommOpName(op)));
  }
  if (time_it) {
    ADORE_CUDA_RETURN_IF_ERROR(cudaEventRecord(timing.stop, AsStream(stream)));
    bool full = false;
    {
      std::lock_guard<std::mutex> lock(timing_mu_);
      pending_.push_back(timing);
      full = pending_.size() > 4096;
    }
    // Keep the list bounded when nobody reads the stats: fold in what has finished (never blocks).
    if (full) CollectTimings();
  }
  return absl::OkStatus();
}

void NcclCommunicator::CollectTimings() {
  std::lock_guard<std::mutex> lock(timing_mu_);
  size_t kept = 0;
  for (size_t i = 0; i < pending_.size(); ++i) {
    Timing& t = pending_[i];
    const cudaError_t q = cudaEventQuery(t.stop);
    if (q == cudaErrorNotReady) {
      pending_[kept++] = t;
      continue;
    }
    float ms = 0.0f;
    if (q == cudaSuccess && cudaEventElapsedTime(&ms, t.start, t.stop) == cudaSuccess) {
      AddSeconds(t.op, ms * 1e-3);
    }
    cudaGetLastError();
    free_events_.push_back(t.start);
    free_events_.push_back(t.stop);
  }
  pending_.resize(kept);
}

absl::Status NcclCommunicator::WaitStream(void* stream) {
  if (comm_ == nullptr) return absl::FailedPreconditionError("communicator was aborted");
  cudaError_t err = cudaSuccess;
  ncclResult_t async = ncclSuccess;
  const bool settled = PollUntil(Clock::now() + TimeoutMillis(options_.op_timeout), [&] {
    err = cudaStreamQuery(AsStream(stream));
    if (err != cudaErrorNotReady) return true;
    if (ncclCommGetAsyncError(comm_, &async) != ncclSuccess) async = ncclInternalError;
    return async != ncclSuccess && async != ncclInProgress;
  });
  if (!settled) {
    return Abort(absl::DeadlineExceededError(absl::StrCat("stream did not drain within ",
                                                          absl::FormatDuration(options_.op_timeout),
                                                          " (a peer stopped participating?); communicator aborted")));
  }
  if (async != ncclSuccess && async != ncclInProgress) {
    return Abort(NcclStatus(async, comm_, "asynchronous NCCL error"));
  }
  if (err != cudaSuccess) {
    // A sticky CUDA error (e.g. an illegal address in an earlier kernel) poisons the context anyway.
    return Abort(kernels::CudaStatus(err, "cudaStreamQuery"));
  }
  return absl::OkStatus();
}

absl::Status NcclCommunicator::DoAllReduceSum(void* data, size_t count, CommDataType dtype, void* stream) {
  ADORE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  const ncclDataType_t type = dtype == CommDataType::kFloat32 ? ncclFloat32 : ncclBfloat16;
  const size_t bytes = count * CommDataTypeSize(dtype);
  if (!IsHostPointer(data)) {
    return Issue(CommOp::kAllReduce, stream,
                 [&] { return ncclAllReduce(data, data, count, type, ncclSum, comm_, AsStream(stream)); });
  }
  ADORE_ASSIGN_OR_RETURN(void* dev, Staging(bytes));
  ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dev, data, bytes, cudaMemcpyHostToDevice, AsStream(stream)));
  ADORE_RETURN_IF_ERROR(Issue(CommOp::kAllReduce, stream,
                              [&] { return ncclAllReduce(dev, dev, count, type, ncclSum, comm_, AsStream(stream)); }));
  ADORE_RETURN_IF_ERROR(WaitStream(stream));
  ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpy(data, dev, bytes, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

absl::Status NcclCommunicator::DoBroadcast(void* data, size_t num_bytes, int root, void* stream) {
  ADORE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  if (!IsHostPointer(data)) {
    return Issue(CommOp::kBroadcast, stream,
                 [&] { return ncclBroadcast(data, data, num_bytes, ncclUint8, root, comm_, AsStream(stream)); });
  }
  ADORE_ASSIGN_OR_RETURN(void* dev, Staging(num_bytes));
  if (rank_ == root) {
    ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dev, data, num_bytes, cudaMemcpyHostToDevice, AsStream(stream)));
  }
  ADORE_RETURN_IF_ERROR(Issue(CommOp::kBroadcast, stream, [&] {
    return ncclBroadcast(dev, dev, num_bytes, ncclUint8, root, comm_, AsStream(stream));
  }));
  ADORE_RETURN_IF_ERROR(WaitStream(stream));
  if (rank_ != root) ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpy(data, dev, num_bytes, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

absl::Status NcclCommunicator::DoAllGather(const void* send, void* recv, size_t num_bytes, void* stream) {
  ADORE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  const size_t total = num_bytes * static_cast<size_t>(world_size_);
  const bool host_send = IsHostPointer(send);
  const bool host_recv = IsHostPointer(recv);
  if (!host_send && !host_recv) {
    return Issue(CommOp::kAllGather, stream,
                 [&] { return ncclAllGather(send, recv, num_bytes, ncclUint8, comm_, AsStream(stream)); });
  }
  if (host_send != host_recv) {
    return absl::InvalidArgumentError("AllGather: send and recv must both be host or both be device memory");
  }
  // Gather into the staging buffer in place: this rank's block is at rank * num_bytes.
  ADORE_ASSIGN_OR_RETURN(void* dev, Staging(total));
  uint8_t* own = static_cast<uint8_t*>(dev) + static_cast<size_t>(rank_) * num_bytes;
  ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(own, send, num_bytes, cudaMemcpyHostToDevice, AsStream(stream)));
  ADORE_RETURN_IF_ERROR(Issue(CommOp::kAllGather, stream,
                              [&] { return ncclAllGather(own, dev, num_bytes, ncclUint8, comm_, AsStream(stream)); }));
  ADORE_RETURN_IF_ERROR(WaitStream(stream));
  ADORE_CUDA_RETURN_IF_ERROR(cudaMemcpy(recv, dev, total, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

absl::Status NcclCommunicator::DoBarrier() {
  ADORE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  ADORE_ASSIGN_OR_RETURN(void* dev, Staging(sizeof(float)));
  ADORE_RETURN_IF_ERROR(Issue(CommOp::kBarrier, nullptr,
                              [&] { return ncclAllReduce(dev, dev, 1, ncclFloat32, ncclSum, comm_, nullptr); }));
  return WaitStream(nullptr);
}

absl::Status NcclCommunicator::DoSynchronize(void* stream) {
  ADORE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  return WaitStream(stream);
}

}  // namespace adore::comm
