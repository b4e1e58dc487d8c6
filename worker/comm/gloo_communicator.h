// Communicator over Gloo's TCP transport, for CPU tensor parallelism: ranks rendezvous through a
// TcpStoreServer (hosted by the coordinator or a rank), then talk to each other directly over a full mesh.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/comm/communicator.h"

namespace gloo {
class Context;
}

namespace adore::comm {

struct GlooCommunicatorOptions {
  int rank = 0;
  int world_size = 1;
  // Address of the rendezvous TcpStoreServer. Not used when world_size is 1.
  std::string store_host = "127.0.0.1";
  int store_port = 0;
  // Address this rank's Gloo device listens on and advertises to its peers: an IP or host name the other
  // ranks can reach (the pod IP). Empty: this machine's host name.
  std::string listen_host;
  // Namespace of this group's keys in the store. Keys are never deleted, so a rebuilt group (or a second
  // group on the same store) needs a new name, e.g. "tp-gen3".
  std::string group = "adore";
  // Bounds reaching the store plus every rank joining and connecting.
  absl::Duration connect_timeout = absl::Seconds(60);
  // Bounds each collective, end to end.
  absl::Duration op_timeout = absl::Seconds(60);
  // Testing only: this rank reports its first N mesh connections as failed (after connecting), so that
  // every rank goes through the retry.
  int testing_fail_mesh_attempts = 0;
};

class GlooCommunicator final : public Communicator {
 public:
  // Joins the group: publishes this rank in the store, waits for all ranks, connects the mesh. Errors:
  // INVALID_ARGUMENT (rank/world), UNAVAILABLE (store unreachable, connection failures), DEADLINE_EXCEEDED
  // naming the ranks that did not join within connect_timeout.
  static absl::StatusOr<std::unique_ptr<GlooCommunicator>> Create(const GlooCommunicatorOptions& options);
  ~GlooCommunicator() override;

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  const char* backend() const override { return "gloo"; }

 protected:
  // bf16 is summed in float32 (converted, all-reduced, rounded back once), so the result is the float sum
  // rounded to bf16 rather than a chain of bf16 roundings; it costs twice the bytes on the wire.
  absl::Status DoAllReduceSum(void* data, size_t count, CommDataType dtype, void* stream) override;
  absl::Status DoBroadcast(void* data, size_t num_bytes, int root, void* stream) override;
  absl::Status DoAllGather(const void* send, void* recv, size_t num_bytes, void* stream) override;
  absl::Status DoBarrier() override;

 private:
  GlooCommunicator(int rank, int world_size, std::shared_ptr<gloo::Context> context, absl::Duration op_timeout);
  // The tag of the next collective: all ranks issue the same sequence, so they agree on it.
  uint32_t NextTag() { return next_tag_++; }

  const int rank_;
  const int world_size_;
  std::shared_ptr<gloo::Context> context_;  // null when world_size is 1
  const absl::Duration op_timeout_;
  uint32_t next_tag_ = 1;
  std::vector<float> scratch_;  // bf16 all-reduce in float32
};

}  // namespace adore::comm
