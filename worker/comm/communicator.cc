// The backend-independent half of Communicator: argument checks, error context, poisoning and stats.
#include "worker/comm/communicator.h"

#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace adore::comm {

size_t CommDataTypeSize(CommDataType dtype) {
  switch (dtype) {
    case CommDataType::kFloat32:
      return 4;
    case CommDataType::kBfloat16:
      return 2;
  }
  return 0;
}

const char* CommDataTypeName(CommDataType dtype) {
  switch (dtype) {
    case CommDataType::kFloat32:
      return "float32";
    case CommDataType::kBfloat16:
      return "bf16";
  }
  return "?";
}

const char* CommOpName(CommOp op) {
  switch (op) {
    case CommOp::kAllReduce:
      return "AllReduceSum";
    case CommOp::kBroadcast:
      return "Broadcast";
    case CommOp::kAllGather:
      return "AllGather";
    case CommOp::kBarrier:
      return "Barrier";
  }
  return "?";
}

int64_t CommStats::TotalCalls() const {
  int64_t n = 0;
  for (const CommOpStats& s : ops) n += s.calls;
  return n;
}

int64_t CommStats::TotalBytes() const {
  int64_t n = 0;
  for (const CommOpStats& s : ops) n += s.bytes;
  return n;
}

double CommStats::TotalSeconds() const {
  double t = 0.0;
  for (const CommOpStats& s : ops) t += s.seconds;
  return t;
}

CommStats& CommStats::operator+=(const CommStats& other) {
  for (int i = 0; i < kNumCommOps; ++i) {
    ops[i].calls += other.ops[i].calls;
    ops[i].bytes += other.ops[i].bytes;
    ops[i].seconds += other.ops[i].seconds;
  }
  return *this;
}

std::string CommStats::DebugString() const {
  std::string out;
  for (int i = 0; i < kNumCommOps; ++i) {
    const CommOpStats& s = ops[i];
    if (s.calls == 0) continue;
    if (!out.empty()) out += "; ";
    absl::StrAppendFormat(&out, "%s %d calls %.3f MB %.3f ms", CommOpName(static_cast<CommOp>(i)), s.calls,
                          s.bytes / 1e6, s.seconds * 1e3);
  }
  return out.empty() ? "no collectives" : out;
}

template <typename Describe, typename Fn>
absl::Status Communicator::Run(CommOp op, int64_t bytes, Describe&& describe, Fn&& fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!first_error_.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat(backend(), " ", CommOpName(op), " (rank ", rank(), " of ", world_size(),
                       "): communicator unusable after an earlier failure: ", first_error_.message()));
    }
  }
  const auto start = std::chrono::steady_clock::now();
  absl::Status status = fn();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::lock_guard<std::mutex> lock(mu_);
  if (!status.ok()) {
    // With two ranks the failing peer is known; with more, the backend's message names it where it can
    // (Gloo: the peer's address).
    const std::string peer = world_size() == 2 ? absl::StrCat(", peer rank ", 1 - rank()) : "";
    status = absl::Status(status.code(), absl::StrCat(backend(), " ", CommOpName(op), " (rank ", rank(), " of ",
                                                      world_size(), describe(), peer, "): ", status.message()));
    first_error_ = status;
    return status;
  }
  CommOpStats& s = stats_[op];
  s.calls += 1;
  s.bytes += bytes;
  if (!times_itself()) s.seconds += seconds;
  return absl::OkStatus();
}

absl::Status Communicator::AllReduceSum(void* data, size_t count, CommDataType dtype, void* stream) {
  if (count > 0 && data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(backend(), " AllReduceSum (rank ", rank(), "): null buffer for ", count, " elements"));
  }
  const int64_t bytes = static_cast<int64_t>(count * CommDataTypeSize(dtype));
  return Run(
      CommOp::kAllReduce, bytes, [&] { return absl::StrCat(", ", count, " ", CommDataTypeName(dtype), " elements"); },
      [&] { return count == 0 ? absl::OkStatus() : DoAllReduceSum(data, count, dtype, stream); });
}

absl::Status Communicator::Broadcast(void* data, size_t num_bytes, int root, void* stream) {
  if (root < 0 || root >= world_size()) {
    return absl::InvalidArgumentError(absl::StrCat(backend(), " Broadcast (rank ", rank(), "): root ", root,
                                                   " out of range for world size ", world_size()));
  }
  if (num_bytes > 0 && data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(backend(), " Broadcast (rank ", rank(), "): null buffer for ", num_bytes, " bytes"));
  }
  return Run(
      CommOp::kBroadcast, static_cast<int64_t>(num_bytes),
      [&] { return absl::StrCat(", root ", root, ", ", num_bytes, " bytes"); },
      [&] { return num_bytes == 0 ? absl::OkStatus() : DoBroadcast(data, num_bytes, root, stream); });
}

absl::Status Communicator::AllGather(const void* send, void* recv, size_t num_bytes, void* stream) {
  if (num_bytes > 0 && (send == nullptr || recv == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat(backend(), " AllGather (rank ", rank(), "): null buffer for ", num_bytes, " bytes"));
  }
  const size_t total = num_bytes * static_cast<size_t>(world_size());
  return Run(
      CommOp::kAllGather, static_cast<int64_t>(total), [&] { return absl::StrCat(", ", num_bytes, " bytes per rank"); },
      [&] { return num_bytes == 0 ? absl::OkStatus() : DoAllGather(send, recv, num_bytes, stream); });
}

absl::Status Communicator::Barrier() {
  return Run(
      CommOp::kBarrier, 0, [] { return std::string(); }, [&] { return DoBarrier(); });
}

absl::Status Communicator::Synchronize(void* stream) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!first_error_.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat(backend(), " Synchronize (rank ", rank(),
                       "): communicator unusable after an earlier failure: ", first_error_.message()));
    }
  }
  absl::Status status = DoSynchronize(stream);
  if (!status.ok()) {
    status = absl::Status(status.code(), absl::StrCat(backend(), " Synchronize (rank ", rank(), " of ", world_size(),
                                                      "): ", status.message()));
    std::lock_guard<std::mutex> lock(mu_);
    if (first_error_.ok()) first_error_ = status;
  }
  return status;
}

CommStats Communicator::Stats() {
  CollectTimings();
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

CommStats Communicator::TakeStats() {
  CollectTimings();
  std::lock_guard<std::mutex> lock(mu_);
  return std::exchange(stats_, CommStats{});
}

absl::Status Communicator::health() const {
  std::lock_guard<std::mutex> lock(mu_);
  return first_error_;
}

void Communicator::AddSeconds(CommOp op, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  stats_[op].seconds += seconds;
}

uint16_t FloatToBf16Bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0) {
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // quiet NaN, sign kept
  }
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float Bf16BitsToFloat(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float x;
  std::memcpy(&x, &wide, sizeof(x));
  return x;
}

}  // namespace adore::comm
