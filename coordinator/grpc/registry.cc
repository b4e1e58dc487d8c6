// WorkerRegistry and the adore.v1.Coordinator service: workers register, the coordinator waits for all.
#include "coordinator/grpc/registry.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "common/security.h"

namespace adore {

namespace v1 = ::adore::v1;

namespace {

bool IsWildcardHost(const std::string& host) {
  return host == "0.0.0.0" || host == "::" || host == "[::]";
}

}  // namespace

absl::Status SplitHostPort(const std::string& address, const std::string& field, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: '%s' is not host:port", field, address));
  }
  std::string h = address.substr(0, colon);
  const std::string p = address.substr(colon + 1);
  // A bare IPv6 address ("::1:50061") is ambiguous: it must be bracketed.
  if (h.find(':') != std::string::npos && !(absl::StartsWith(h, "[") && absl::EndsWith(h, "]"))) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: '%s': write an IPv6 host in brackets ([::1]:50061)", field, address));
  }
  int value = 0;
  if (!absl::SimpleAtoi(p, &value) || value < 1 || value > 65535) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: '%s': the port '%s' is not in [1, 65535]", field, address, p));
  }
  *host = std::move(h);
  *port = value;
  return absl::OkStatus();
}

std::string PeerHost(const std::string& peer) {
  std::string rest;
  if (absl::StartsWith(peer, "ipv4:")) {
    rest = peer.substr(5);
  } else if (absl::StartsWith(peer, "ipv6:")) {
    rest = absl::StrReplaceAll(peer.substr(5), {{"%5B", "["}, {"%5D", "]"}, {"%5b", "["}, {"%5d", "]"}});
  } else {
    return "";
  }
  const size_t colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0) return "";
  std::string host = rest.substr(0, colon);
  if (absl::StartsWith(peer, "ipv6:") && !absl::StartsWith(host, "[")) host = "[" + host + "]";
  return host;
}

// ---------------------------------------------------------------------------------------------------
// WorkerRegistry
// ---------------------------------------------------------------------------------------------------

WorkerRegistry::WorkerRegistry(WorkerRegistryOptions options) : options_(std::move(options)) {
  addresses_.resize(std::max(options_.world_size, 0));
}

void WorkerRegistry::Log(const std::string& line) const {
  if (options_.log) {
    options_.log(line);
  } else {
    std::fprintf(stderr, "adore-server: %s\n", line.c_str());
    std::fflush(stderr);
  }
}

int WorkerRegistry::registered() const {
  std::lock_guard<std::mutex> lock(mu_);
  return registered_;
}

std::string WorkerRegistry::DescribeLocked() const {
  std::vector<std::string> parts;
  for (size_t r = 0; r < addresses_.size(); ++r) {
    parts.push_back(absl::StrFormat("rank %d: %s", r, addresses_[r].empty() ? "(missing)" : addresses_[r]));
  }
  return absl::StrJoin(parts, ", ");
}

absl::StatusOr<v1::RegisterWorkerResponse> WorkerRegistry::Register(const v1::RegisterWorkerRequest& req,
                                                                    const std::string& peer_host) {
  const int n = options_.world_size;
  // The request alone first: these answers do not depend on the registry's state.
  std::string host;
  int port = 0;
  if (absl::Status st = SplitHostPort(req.address(), "address", &host, &port); !st.ok()) return st;
  if (IsWildcardHost(host)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "address: '%s' cannot be dialed (a wildcard host); send an empty host (':%d') to be dialed at the "
        "address this call came from, or the worker's reachable address (adore-worker --advertise)",
        req.address(), port));
  }
  if (host.empty()) {
    if (peer_host.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "address: '%s' has no host and the caller's address is unknown; send host:port", req.address()));
    }
    host = peer_host;
  }
  const std::string address = absl::StrFormat("%s:%d", host, port);
  const int requested = req.has_rank() ? req.rank() : -1;  // -1: any
  if (requested < -1 || requested >= n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("rank: %d is not -1 (any) or in [0, %d) (the coordinator's --expect_workers)", requested, n));
  }
  if (req.backend() != v1::BACKEND_CPU && req.backend() != v1::BACKEND_CUDA) {
    return absl::InvalidArgumentError(absl::StrFormat("backend: %d is not BACKEND_CPU or BACKEND_CUDA",
                                                      static_cast<int>(req.backend())));
  }
  if (req.backend() != options_.backend) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "backend: the worker at %s serves %s and this coordinator drives %s (give both the same --backend)",
        address, v1::Backend_Name(req.backend()), v1::Backend_Name(options_.backend)));
  }
  const std::string who = absl::StrFormat("%s%s, backend %s, device %d", req.hostname().empty() ? "" : "host ",
                                          req.hostname(), req.backend() == v1::BACKEND_CPU ? "cpu" : "cuda",
                                          req.device());
  v1::RegisterWorkerResponse resp;
  resp.set_world_size(n);
  resp.set_address(address);
  std::unique_lock<std::mutex> lock(mu_);
  if (closed_) {
    return absl::UnavailableError(
        absl::StrFormat("the coordinator is not accepting registrations (shutting down); %s was not registered",
                        address));
  }
  // The same address again: a retry after a lost reply (or a worker that restarted on the same address).
  if (auto it = std::find(addresses_.begin(), addresses_.end(), address); it != addresses_.end()) {
    const int rank = static_cast<int>(it - addresses_.begin());
    if (requested != -1 && requested != rank) {
      return absl::AlreadyExistsError(
          absl::StrFormat("rank: %s asks for rank %d but is registered already as rank %d", address, requested, rank));
    }
    resp.set_rank(rank);
    resp.set_registered(registered_);
    resp.set_known(true);
    resp.set_message(absl::StrFormat("%s is registered already as rank %d (%d/%d registered)", address, rank,
                                     registered_, n));
    lock.unlock();
    if (!req.renewal()) Log(absl::StrFormat("worker %s registered again (rank %d; %s)", address, rank, who));
    return resp;
  }
  if (registered_ >= n) {
    // A worker restarted at a new address takes over the rank of one that does not answer any more.
    const int rank = ReplaceDeadLocked(lock, address, requested);
    if (rank >= 0) {
      resp.set_rank(rank);
      resp.set_registered(registered_);
      resp.set_message(absl::StrFormat("worker %s replaces rank %d's, which does not answer (%d/%d registered)",
                                       address, rank, registered_, n));
      Log(absl::StrFormat("%s [%s]", resp.message(), who));
      lock.unlock();
      if (options_.on_replaced) options_.on_replaced(rank, address);
      return resp;
    }
    const std::string msg = absl::StrFormat(
        "all %d workers are registered already (%s): %s is not taken; every registered worker%s answers",
        n, DescribeLocked(), address, requested >= 0 ? absl::StrFormat(" of rank %d", requested) : "");
    lock.unlock();
    Log("refused a registration: " + msg);
    return absl::ResourceExhaustedError(msg);
  }
  int rank = requested;
  if (rank >= 0 && !addresses_[rank].empty()) {
    const std::string msg = absl::StrFormat("rank: %d is held by %s; %s is not registered", rank, addresses_[rank], address);
    lock.unlock();
    Log("refused a registration: " + msg);
    return absl::AlreadyExistsError(msg);
  }
  if (rank < 0) rank = static_cast<int>(std::find(addresses_.begin(), addresses_.end(), "") - addresses_.begin());
  addresses_[rank] = address;
  ++registered_;
  const int count = registered_;
  resp.set_rank(rank);
  resp.set_registered(count);
  resp.set_message(absl::StrFormat("worker %d/%d registered: %s (rank %d)", count, n, address, rank));
  Log(absl::StrFormat("%s [%s]", resp.message(), who));  // under the lock: before what the waiter logs next
  lock.unlock();
  cv_.notify_all();
  return resp;
}

int WorkerRegistry::ReplaceDeadLocked(std::unique_lock<std::mutex>& lock, const std::string& address,
                                      int requested) {
  if (!options_.is_alive) return -1;
  std::vector<std::pair<int, std::string>> candidates;
  for (int r = 0; r < static_cast<int>(addresses_.size()); ++r) {
    if (requested < 0 || r == requested) candidates.emplace_back(r, addresses_[r]);
  }
  lock.unlock();  // a probe takes up to a second: other registrations go on meanwhile
  int dead = -1;
  for (const auto& [rank, held_by] : candidates) {
    if (!options_.is_alive(rank, held_by)) {
      dead = rank;
      break;
    }
  }
  lock.lock();
  // Taken only if nobody changed the rank meanwhile (a concurrent registration may have replaced it).
  if (dead < 0 || closed_ || addresses_[dead] != candidates[requested < 0 ? dead : 0].second) return -1;
  if (std::find(addresses_.begin(), addresses_.end(), address) != addresses_.end()) return -1;
  addresses_[dead] = address;
  return dead;
}

absl::StatusOr<std::vector<std::string>> WorkerRegistry::WaitForAll(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::unique_lock<std::mutex> lock(mu_);
  while (!closed_ && registered_ < options_.world_size) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrFormat(
          "expect_workers: %d of %d workers registered within %s (%s); start the missing adore-worker "
          "--coordinator processes, or raise --expect_workers_timeout_s",
          registered_, options_.world_size, absl::FormatDuration(timeout), DescribeLocked()));
    }
    cv_.wait_for(lock, absl::ToChronoMilliseconds(std::min(left, absl::Seconds(1))) + std::chrono::milliseconds(1));
  }
  if (registered_ < options_.world_size) {
    return absl::CancelledError(absl::StrFormat("expect_workers: stopped waiting with %d of %d workers registered",
                                                registered_, options_.world_size));
  }
  return addresses_;
}

void WorkerRegistry::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

// ---------------------------------------------------------------------------------------------------
// CoordinatorService
// ---------------------------------------------------------------------------------------------------

CoordinatorService::CoordinatorService(WorkerRegistry& registry, std::string secret)
    : registry_(registry), secret_(std::move(secret)) {}

grpc::Status CoordinatorService::RegisterWorker(grpc::ServerContext* context, const v1::RegisterWorkerRequest* request,
                                                v1::RegisterWorkerResponse* response) {
  if (!secret_.empty()) {
    const auto& md = context->client_metadata();
    auto it = md.find(kRegistrationSecretKey);
    std::string why;
    if (it == md.end()) {
      why = absl::StrFormat("%s: missing", kRegistrationSecretKey);
    } else if (!ConstantTimeEquals(std::string_view(it->second.data(), it->second.size()), secret_)) {
      why = absl::StrFormat("%s: wrong secret", kRegistrationSecretKey);
    }
    if (!why.empty()) {
      registry_.Log(absl::StrFormat("refused a registration from %s: %s", context->peer(), why));
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, why);
    }
  }
  absl::StatusOr<v1::RegisterWorkerResponse> r = registry_.Register(*request, PeerHost(context->peer()));
  if (!r.ok()) return grpc::Status(static_cast<grpc::StatusCode>(r.status().code()), std::string(r.status().message()));
  *response = *std::move(r);
  return grpc::Status::OK;
}

}  // namespace adore
