// GlooCommunicator: rendezvous through TcpStore, a Gloo full mesh over TCP, and Gloo's ring / tree
// collectives. Gloo reports failures by throwing; every entry point here catches and returns a Status.
#include "worker/comm/gloo_communicator.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gloo/allgather.h"
#include "gloo/allreduce.h"
#include "gloo/barrier.h"
#include "gloo/broadcast.h"
#include "gloo/common/error.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/prefix_store.h"
#include "gloo/transport/tcp/device.h"
#include "worker/comm/tcp_store.h"

namespace adore::comm {
namespace {

void SumFloat(void* c, const void* a, const void* b, size_t n) {
  float* out = static_cast<float*>(c);
  const float* x = static_cast<const float*>(a);
  const float* y = static_cast<const float*>(b);
  for (size_t i = 0; i < n; ++i) out[i] = x[i] + y[i];
}

// Gloo signals timeouts and I/O failures with the same exception type; tell them apart by the message
// ("Timed out waiting ...", "Read timeout ...", "Application timeout caused pair closure").
absl::Status FromGlooException(const std::exception& e) {
  const std::string what = e.what();
  if (dynamic_cast<const ::gloo::IoException*>(&e) != nullptr) {
    const std::string lower = absl::AsciiStrToLower(what);
    if (absl::StrContains(lower, "timed out") || absl::StrContains(lower, "timeout")) {
      return absl::DeadlineExceededError(what);
    }
    return absl::UnavailableError(what);
  }
  return absl::InternalError(what);
}

// Runs a Gloo call, turning its exceptions into a Status.
template <typename Fn>
absl::Status CatchGloo(Fn&& fn) {
  try {
    fn();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return FromGlooException(e);
  }
}

std::string JoinKey(int rank) { return absl::StrCat("join/", rank); }

std::string LocalHostName() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "?";
  return name;
}

}  // namespace

absl::StatusOr<std::unique_ptr<GlooCommunicator>> GlooCommunicator::Create(const GlooCommunicatorOptions& options) {
  // Gloo writes to peer sockets without MSG_NOSIGNAL on some paths: a peer that dies must surface as an
  // UNAVAILABLE error from the next collective, not as a SIGPIPE that kills this process.
  signal(SIGPIPE, SIG_IGN);
  const int rank = options.rank;
  const int world = options.world_size;
  if (world < 1 || rank < 0 || rank >= world) {
    return absl::InvalidArgumentError(
        absl::StrCat("Gloo communicator: rank ", rank, " / world size ", world, " out of range"));
  }
  if (options.connect_timeout <= absl::ZeroDuration() || options.op_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("Gloo communicator: timeouts must be positive");
  }
  if (world == 1) {
    return std::unique_ptr<GlooCommunicator>(new GlooCommunicator(0, 1, nullptr, options.op_timeout));
  }
  const auto deadline = absl::Now() + options.connect_timeout;
  const std::string where = absl::StrCat("Gloo rendezvous (rank ", rank, " of ", world, ", group '", options.group,
                                         "', store ", options.store_host, ":", options.store_port, ")");

  absl::StatusOr<std::unique_ptr<TcpStore>> store =
      TcpStore::Connect(options.store_host, options.store_port, options.connect_timeout, options.connect_timeout);
  if (!store.ok()) return absl::Status(store.status().code(), absl::StrCat(where, ": ", store.status().message()));

  // Announce this rank and wait for all of them first, so that a rank that never comes is named in the error
  // (Gloo's own mesh setup would only time out on an address key).
  const std::string prefix = options.group + "/";
  absl::Status s = (*store)->Set(prefix + JoinKey(rank), absl::StrCat(LocalHostName(), " pid ", ::getpid()));
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(where, ": ", s.message()));
  std::vector<std::string> join_keys;
  for (int r = 0; r < world; ++r) join_keys.push_back(prefix + JoinKey(r));
  s = (*store)->Wait(join_keys, std::max(deadline - absl::Now(), absl::ZeroDuration()));
  if (absl::IsDeadlineExceeded(s)) {
    absl::StatusOr<std::vector<std::string>> missing = (*store)->Missing(join_keys);
    std::vector<int> ranks;
    if (missing.ok()) {
      for (const std::string& key : *missing) {
        ranks.push_back(std::stoi(key.substr(key.rfind('/') + 1)));
      }
    }
    return absl::DeadlineExceededError(
        absl::StrCat(where, ": rank(s) ", ranks.empty() ? "?" : absl::StrJoin(ranks, ", "), " did not join within ",
                     absl::FormatDuration(options.connect_timeout)));
  }
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(where, ": ", s.message()));

  // The mesh: every pair of ranks connects over TCP. A connection can break while the mesh forms (seen on a
  // loaded host: "Connection closed by peer"), so the ranks tell each other through the store how their
  // attempt went, and all try again under a fresh key prefix when any of them failed (at most
  // kMeshAttempts, within connect_timeout).
  constexpr int kMeshAttempts = 3;
  std::shared_ptr<gloo::rendezvous::Context> context;
  for (int attempt = 0;; ++attempt) {
    const std::string mesh = absl::StrCat(prefix, "mesh", attempt > 0 ? absl::StrCat("-", attempt) : "");
    context.reset();
    s = CatchGloo([&] {
      gloo::transport::tcp::attr attr;
      attr.hostname = options.listen_host.empty() ? LocalHostName() : options.listen_host;
      auto device = gloo::transport::tcp::CreateDevice(attr);
      context = std::make_shared<gloo::rendezvous::Context>(rank, world);
      const absl::Duration left = std::max(deadline - absl::Now(), absl::Milliseconds(1));
      context->setTimeout(TimeoutMillis(left));
      gloo::rendezvous::PrefixStore mesh_store(mesh, **store);
      context->connectFullMesh(mesh_store, device);
    });
    if (s.ok() && attempt < options.testing_fail_mesh_attempts) s = absl::UnavailableError("testing: attempt refused");
    const absl::Status told = (*store)->Set(absl::StrCat(mesh, "-done/", rank), s.ok() ? "ok" : std::string(s.message()));
    if (!told.ok()) return absl::Status(told.code(), absl::StrCat(where, ": ", told.message()));
    std::vector<std::string> done_keys;
    for (int r = 0; r < world; ++r) done_keys.push_back(absl::StrCat(mesh, "-done/", r));
    const absl::Status all = (*store)->Wait(done_keys, std::max(deadline - absl::Now(), absl::ZeroDuration()));
    if (!all.ok()) {
      return absl::Status(all.code(), absl::StrCat(where, ": connecting the mesh: ",
                                                   s.ok() ? std::string(all.message()) : std::string(s.message())));
    }
    std::string failed;  // the first rank that could not connect, and why
    for (int r = 0; r < world && failed.empty(); ++r) {
      absl::StatusOr<std::string> v = (*store)->Get(done_keys[r], absl::Seconds(1));
      if (!v.ok()) return absl::Status(v.status().code(), absl::StrCat(where, ": ", v.status().message()));
      if (*v != "ok") failed = absl::StrCat("rank ", r, ": ", *v);
    }
    if (failed.empty()) break;
    if (attempt + 1 >= kMeshAttempts || absl::Now() >= deadline) {
      return absl::UnavailableError(
          absl::StrCat(where, ": connecting the mesh failed ", attempt + 1, " time(s); last: ", failed));
    }
  }
  context->setTimeout(TimeoutMillis(options.op_timeout));
  // The store connection is not needed any more; the mesh carries everything from here on.
  return std::unique_ptr<GlooCommunicator>(new GlooCommunicator(rank, world, std::move(context), options.op_timeout));
}

GlooCommunicator::GlooCommunicator(int rank, int world_size, std::shared_ptr<gloo::Context> context,
                                   absl::Duration op_timeout)
    : rank_(rank), world_size_(world_size), context_(std::move(context)), op_timeout_(op_timeout) {}

GlooCommunicator::~GlooCommunicator() = default;

absl::Status GlooCommunicator::DoAllReduceSum(void* data, size_t count, CommDataType dtype, void* /*stream*/) {
  if (context_ == nullptr) return absl::OkStatus();
  float* values = static_cast<float*>(data);
  if (dtype == CommDataType::kBfloat16) {
    scratch_.resize(count);
    const uint16_t* bits = static_cast<const uint16_t*>(data);
    for (size_t i = 0; i < count; ++i) scratch_[i] = Bf16BitsToFloat(bits[i]);
    values = scratch_.data();
  }
  absl::Status s = CatchGloo([&] {
    gloo::AllreduceOptions opts(context_);
    opts.setOutput(values, count);
    opts.setReduceFunction(&SumFloat);
    opts.setTag(NextTag());
    opts.setTimeout(TimeoutMillis(op_timeout_));
    gloo::allreduce(opts);
  });
  if (!s.ok()) return s;
  if (dtype == CommDataType::kBfloat16) {
    uint16_t* bits = static_cast<uint16_t*>(data);
    for (size_t i = 0; i < count; ++i) bits[i] = FloatToBf16Bits(scratch_[i]);
  }
  return absl::OkStatus();
}

absl::Status GlooCommunicator::DoBroadcast(void* data, size_t num_bytes, int root, void* /*stream*/) {
  if (context_ == nullptr) return absl::OkStatus();
  return CatchGloo([&] {
    gloo::BroadcastOptions opts(context_);
    opts.setOutput(static_cast<uint8_t*>(data), num_bytes);
    opts.setRoot(root);
    opts.setTag(NextTag());
    opts.setTimeout(TimeoutMillis(op_timeout_));
    gloo::broadcast(opts);
  });
}

absl::Status GlooCommunicator::DoAllGather(const void* send, void* recv, size_t num_bytes, void* /*stream*/) {
  uint8_t* out = static_cast<uint8_t*>(recv);
  uint8_t* own = out + static_cast<size_t>(rank_) * num_bytes;
  if (context_ == nullptr) {
    if (send != own) std::memcpy(own, send, num_bytes);
    return absl::OkStatus();
  }
  return CatchGloo([&] {
    gloo::AllgatherOptions opts(context_);
    // Gloo copies `send` into the rank's block when given an input; in place when not.
    if (send != own) opts.setInput(const_cast<uint8_t*>(static_cast<const uint8_t*>(send)), num_bytes);
    opts.setOutput(out, num_bytes * static_cast<size_t>(world_size_));
    opts.setTag(NextTag());
    opts.setTimeout(TimeoutMillis(op_timeout_));
    gloo::allgather(opts);
  });
}

absl::Status GlooCommunicator::DoBarrier() {
  if (context_ == nullptr) return absl::OkStatus();
  return CatchGloo([&] {
    gloo::BarrierOptions opts(context_);
    opts.setTag(NextTag());
    opts.setTimeout(TimeoutMillis(op_timeout_));
    gloo::barrier(opts);
  });
}

}  // namespace adore::comm
