// Collectives for tensor parallelism behind one interface: Gloo over TCP on CPUs (GlooCommunicator), NCCL on
// GPUs (NcclCommunicator). Every call returns absl::Status; none exits or throws. Time spent per collective
// kind is accumulated so the runtime can report it per step.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace adore::comm {

// Element types of AllReduceSum. bf16 is the raw 16-bit pattern (upper half of a float32).
enum class CommDataType { kFloat32, kBfloat16 };
size_t CommDataTypeSize(CommDataType dtype);
const char* CommDataTypeName(CommDataType dtype);

enum class CommOp { kAllReduce = 0, kBroadcast = 1, kAllGather = 2, kBarrier = 3 };
inline constexpr int kNumCommOps = 4;
const char* CommOpName(CommOp op);  // "AllReduceSum", "Broadcast", "AllGather", "Barrier"

// Accumulated cost of one kind of collective. `seconds` is host wall time for blocking backends (Gloo) and
// device time between events around the collective for NCCL (counted once the events have completed).
struct CommOpStats {
  int64_t calls = 0;
  int64_t bytes = 0;  // payload bytes per rank (count * element size; all-gather: the gathered output)
  double seconds = 0.0;
};

struct CommStats {
  std::array<CommOpStats, kNumCommOps> ops{};

  CommOpStats& operator[](CommOp op) { return ops[static_cast<int>(op)]; }
  const CommOpStats& operator[](CommOp op) const { return ops[static_cast<int>(op)]; }
  int64_t TotalCalls() const;
  int64_t TotalBytes() const;
  double TotalSeconds() const;
  CommStats& operator+=(const CommStats& other);
  std::string DebugString() const;  // "AllReduceSum 12 calls 3.1 MB 1.20 ms; ..."
};

// One rank's handle on a group of `world_size` ranks. All ranks must issue the same collectives in the same
// order with the same sizes (and root); a mismatch is undefined (a hang until the op timeout, at best).
//
// Buffers live in the backend's memory space: host memory for Gloo; for NCCL device memory (run
// asynchronously on `stream`, a cudaStream_t passed as void*, nullptr = the default stream) or host memory
// (staged through a device buffer, the call returns once done). Gloo ignores `stream` and returns when the
// collective is complete.
//
// Errors: INVALID_ARGUMENT for bad arguments (the communicator stays usable); a transport failure returns
// UNAVAILABLE (peer gone, connection closed) or DEADLINE_EXCEEDED (op timeout), naming the op, this rank and
// the peer when known, and leaves the communicator unusable: every later call returns FAILED_PRECONDITION
// carrying the first error. Rebuild the group (a new communicator on every rank) to recover.
//
// Not thread-safe: one thread issues the collectives (the worker's actor thread). Stats()/TakeStats() may be
// called from any thread.
class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual const char* backend() const = 0;  // "gloo", "nccl"

  // data[i] = sum over ranks of data[i], in place, for `count` elements. Every rank ends with the same bytes.
  absl::Status AllReduceSum(void* data,  // [count] of dtype
                            size_t count, CommDataType dtype, void* stream);
  // Copies `num_bytes` from `root`'s buffer into every other rank's buffer.
  absl::Status Broadcast(void* data,  // [num_bytes]
                         size_t num_bytes, int root, void* stream);
  // recv[r * num_bytes, (r + 1) * num_bytes) = rank r's `send`. `send` may be recv + rank() * num_bytes (in
  // place); otherwise the two must not overlap.
  absl::Status AllGather(const void* send,  // [num_bytes]
                         void* recv,        // [world_size * num_bytes]
                         size_t num_bytes, void* stream);
  // Returns once every rank has entered the barrier (NCCL: once the barrier collective has completed).
  absl::Status Barrier();
  // Waits until the collectives issued on `stream` have completed, with the op timeout (NCCL: aborts the
  // communicator on timeout instead of spinning forever; Gloo: nothing is pending, returns OK).
  absl::Status Synchronize(void* stream);

  // Accumulated stats since construction or the last TakeStats().
  CommStats Stats();
  // Returns the stats and resets them (per-step reporting).
  CommStats TakeStats();

  // The first transport error, or OK while usable.
  absl::Status health() const;

  // Leaves the group at once, without waiting for the peers: for a group being replaced after a rank failed.
  // NCCL aborts the communicator, which also ends its collectives still running on the device (so that the
  // engine's stream can drain before its memory is freed); Gloo has nothing in flight between calls. Later
  // collectives fail.
  virtual void Abandon() {}

 protected:
  Communicator() = default;

  // Backend hooks, called with validated arguments and a non-empty payload (count/num_bytes > 0) by the
  // public methods above, which add the error context, poison the communicator on failure and time the call.
  virtual absl::Status DoAllReduceSum(void* data, size_t count, CommDataType dtype, void* stream) = 0;
  virtual absl::Status DoBroadcast(void* data, size_t num_bytes, int root, void* stream) = 0;
  virtual absl::Status DoAllGather(const void* send, void* recv, size_t num_bytes, void* stream) = 0;
  virtual absl::Status DoBarrier() = 0;
  virtual absl::Status DoSynchronize(void* /*stream*/) { return absl::OkStatus(); }

  // Whether the backend times its collectives itself (NCCL: device events) instead of host wall time.
  virtual bool times_itself() const { return false; }
  // Folds finished device timings into the stats (NCCL); called by Stats()/TakeStats().
  virtual void CollectTimings() {}
  // Adds `seconds` to op's time (for backends that time themselves).
  void AddSeconds(CommOp op, double seconds);

 private:
  // Wraps one collective: health check, timing, error context and poisoning.
  // `describe` returns the argument summary for error messages (built only on failure).
  template <typename Describe, typename Fn>
  absl::Status Run(CommOp op, int64_t bytes, Describe&& describe, Fn&& fn);

  mutable std::mutex mu_;
  CommStats stats_;           // guarded by mu_
  absl::Status first_error_;  // guarded by mu_
};

// A timeout as milliseconds safe for `now + timeout` arithmetic: clamped to [0, 30 days], so
// absl::InfiniteDuration() means "practically forever" instead of overflowing a deadline.
inline std::chrono::milliseconds TimeoutMillis(absl::Duration timeout) {
  return absl::ToChronoMilliseconds(std::clamp(timeout, absl::ZeroDuration(), absl::Hours(24 * 30)));
}

// bf16 <-> float32 on the host (round to nearest even; NaN stays NaN), for the Gloo path and tests.
uint16_t FloatToBf16Bits(float x);
float Bf16BitsToFloat(uint16_t bits);

}  // namespace adore::comm
