// adore-worker: one worker process of the distributed runtime, serving adore.v1.Worker (Load, Bootstrap,
// Step, Health) to the coordinator. The coordinator either dials it from a fixed list (adore-server
// --workers host:port,...) or, with --coordinator host:port, the worker registers itself once it serves
// (adore.v1.Coordinator.RegisterWorker, proto/adore/v1/coordinator.proto: adore-server --expect_workers N),
// retrying with backoff until the coordinator answers; the coordinator then drives it the same way. It then
// renews the registration every --renew_interval_ms for as long as it runs, so that a restarted coordinator
// gets its workers back without restarting them.
// The model, backend and device are given by the coordinator's Load; --backend here is only checked at
// start. --device is the GPU a CUDA tensor-parallel group's NCCL communicator is created on at Bootstrap,
// so Load must name the same device (the coordinator names device 0: give each worker process its own GPU
// with CUDA_VISIBLE_DEVICES). --model_sha256 pins the model file's content: a Load of any other file fails.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "adore/v1/coordinator.grpc.pb.h"
#include "common/sha256.h"
#include "worker/grpc/worker_service.h"

ABSL_FLAG(std::string, listen, "127.0.0.1", "address to listen on (0.0.0.0 to accept remote coordinators)");
ABSL_FLAG(int32_t, port, 0, "port; 0 = any free port (printed at start)");
ABSL_FLAG(std::string, secret, "", "shared secret every call must carry (metadata adore-worker-secret)");
ABSL_FLAG(std::string, secret_file, "", "file holding the shared secret (surrounding whitespace is ignored)");
ABSL_FLAG(std::string, backend, "cpu", "backend this worker serves: cpu or cuda");
ABSL_FLAG(int32_t, device, 0, "CUDA device ordinal (cuda backend)");
ABSL_FLAG(std::string, comm_host, "",
          "cpu tensor parallelism: address this worker's Gloo device binds and gives its peers (the pod IP when ranks "
          "run on other hosts); empty = 127.0.0.1 when the coordinator's rendezvous is on loopback, else the host name");
ABSL_FLAG(std::string, coordinator, "", "host:port of an adore-server --expect_workers to register with once serving "
          "(retried with backoff until it answers); empty = wait to be dialed (adore-server --workers)");
ABSL_FLAG(std::string, advertise, "", "with --coordinator: host:port the coordinator is to dial for this worker; "
          "empty = --listen and the bound port (with --listen 0.0.0.0: the address the registration comes from)");
ABSL_FLAG(std::string, model_sha256, "", "sha256 of the model file (64 hex digits): every Load hashes the file it "
          "names and fails when it differs; empty = only the coordinator's expected_sha256 is checked");
ABSL_FLAG(int32_t, rank, -1, "with --coordinator: the tensor-parallel rank to ask for; -1 = any (the lowest free)");
ABSL_FLAG(int32_t, collective_timeout_s, 60,
          "tensor parallelism: longest wait for one collective; a step whose peer died fails after it (NCCL: the "
          "communicator is aborted) and the coordinator forms the group again; in [1, 3600]");
ABSL_FLAG(int32_t, debug_step_delay_ms, 0, "testing only: every step waits this long first (fault tests); 0 = off");
ABSL_FLAG(int32_t, renew_interval_ms, 1000, "with --coordinator: renew the registration this often (a restarted "
          "coordinator takes the renewal as a new registration); >= 100");

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

bool IsWildcardHost(const std::string& host) { return host.empty() || host == "0.0.0.0" || host == "::" || host == "[::]"; }
bool IsLoopbackHost(const std::string& host) {
  return host == "localhost" || host == "::1" || host == "[::1]" || absl::StartsWith(host, "127.");
}

// "host:port" ("[v6]:port") -> host (may be empty when allowed) and port in [1, 65535]; false otherwise.
bool SplitHostPort(const std::string& address, bool allow_empty_host, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return false;
  *host = address.substr(0, colon);
  if (host->empty() && !allow_empty_host) return false;
  if (host->find(':') != std::string::npos && !(absl::StartsWith(*host, "[") && absl::EndsWith(*host, "]"))) {
    return false;
  }
  return absl::SimpleAtoi(address.substr(colon + 1), port) && *port >= 1 && *port <= 65535;
}

// Sleeps until `until` or a stop signal; false when stopped.
bool SleepUntil(std::chrono::steady_clock::time_point until) {
  while (!g_stop && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  return !g_stop;
}

bool IsRetryable(const grpc::Status& st) {
  return st.error_code() == grpc::StatusCode::UNAVAILABLE || st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

std::string CodeName(const grpc::Status& st) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(st.error_code()));
}

// Keeps this worker registered with the coordinator (proto/adore/v1/coordinator.proto, "Renewal").
class Registration {
 public:
  Registration(const std::string& coordinator, adore::v1::RegisterWorkerRequest request, std::string secret,
               std::chrono::milliseconds renew_interval)
      : coordinator_(coordinator), request_(std::move(request)), secret_(std::move(secret)),
        renew_interval_(renew_interval) {
    grpc::ChannelArguments args;
    // The channel's own reconnection backoff would otherwise grow to 2 minutes while the coordinator is down.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    stub_ = adore::v1::Coordinator::NewStub(
        grpc::CreateCustomChannel(coordinator, grpc::InsecureChannelCredentials(), args));
  }

  // Registers until the coordinator answers: 0 when registered, 1 when refused, -1 when stopped (SIGINT /
  // SIGTERM) first. UNAVAILABLE and DEADLINE_EXCEEDED (the coordinator is not up yet, or busy) are retried
  // with backoff (0.2 s doubling to 5 s); every other answer is final (see coordinator.proto).
  int Register() {
    double backoff_s = 0.2;
    for (int attempt = 1; !g_stop; ++attempt) {
      adore::v1::RegisterWorkerResponse resp;
      const grpc::Status st = Call(request_, std::chrono::seconds(10), &resp);
      if (st.ok()) {
        std::printf("adore-worker: registered with %s as rank %d of %d, to be dialed at %s (%s)\n",
                    coordinator_.c_str(), resp.rank(), resp.world_size(), resp.address().c_str(), resp.message().c_str());
        std::fflush(stdout);
        return 0;
      }
      if (!IsRetryable(st)) {
        std::fprintf(stderr, "adore-worker: the coordinator %s refused the registration: %s: %s\n", coordinator_.c_str(),
                     CodeName(st).c_str(), st.error_message().c_str());
        return 1;
      }
      std::fprintf(stderr, "adore-worker: registering with %s (attempt %d): %s; retrying in %.1f s\n",
                   coordinator_.c_str(), attempt, st.error_message().c_str(), backoff_s);
      if (!SleepUntil(std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int>(backoff_s * 1000)))) {
        break;
      }
      backoff_s = std::min(backoff_s * 2, 5.0);
    }
    return -1;
  }

  // After Register: renews the registration every renew_interval until stopped. A coordinator that stops
  // answering is retried every 0.2 s doubling to renew_interval; once one answers again (a restarted
  // coordinator takes the renewal as a new registration) the worker says so. Refusals are logged (once
  // per distinct answer) and retried: this worker keeps serving whoever dials it.
  void RenewUntilStopped() {
    adore::v1::RegisterWorkerRequest renewal = request_;
    renewal.set_renewal(true);
    bool lost = false;
    std::string last_refusal;
    auto wait = renew_interval_;
    while (SleepUntil(std::chrono::steady_clock::now() + wait)) {
      adore::v1::RegisterWorkerResponse resp;
      const grpc::Status st = Call(renewal, std::max(renew_interval_, std::chrono::milliseconds(2000)), &resp);
      if (st.ok()) {
        // A registration the coordinator did not know: it was restarted (or this worker was refused before).
        if (lost || !last_refusal.empty() || !resp.known()) {
          std::printf("adore-worker: registered again with %s as rank %d of %d, to be dialed at %s (%s)\n",
                      coordinator_.c_str(), resp.rank(), resp.world_size(), resp.address().c_str(),
                      resp.message().c_str());
          std::fflush(stdout);
        }
        lost = false;
        last_refusal.clear();
        wait = renew_interval_;
      } else if (IsRetryable(st)) {
        if (!lost) {
          std::fprintf(stderr, "adore-worker: lost the coordinator %s (%s); registering again once it answers\n",
                       coordinator_.c_str(), st.error_message().c_str());
        }
        wait = lost ? std::min(2 * wait, renew_interval_) : std::min(std::chrono::milliseconds(200), renew_interval_);
        lost = true;
      } else {
        const std::string refusal = CodeName(st) + ": " + st.error_message();
        if (refusal != last_refusal) {
          std::fprintf(stderr, "adore-worker: the coordinator %s refused the renewal: %s; retrying every %.1f s\n",
                       coordinator_.c_str(), refusal.c_str(), renew_interval_.count() / 1e3);
        }
        last_refusal = refusal;
        lost = false;
        wait = renew_interval_;
      }
      std::fflush(stderr);
    }
  }

 private:
  grpc::Status Call(const adore::v1::RegisterWorkerRequest& request, std::chrono::milliseconds timeout,
                    adore::v1::RegisterWorkerResponse* response) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + timeout);
    if (!secret_.empty()) ctx.AddMetadata(adore::kWorkerSecretKey, secret_);
    return stub_->RegisterWorker(&ctx, request, response);
  }

  const std::string coordinator_;
  const adore::v1::RegisterWorkerRequest request_;
  const std::string secret_;
  const std::chrono::milliseconds renew_interval_;
  std::unique_ptr<adore::v1::Coordinator::Stub> stub_;
};
}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("adore-worker [--listen A] [--port P] [--secret_file F] [--backend cpu|cuda] [--device D] "
                               "[--model_sha256 HEX] [--coordinator HOST:PORT [--advertise HOST:PORT] [--rank R]]");
  absl::ParseCommandLine(argc, argv);
  std::signal(SIGPIPE, SIG_IGN);  // a client or peer that disconnects must not kill the process
  adore::WorkerServerOptions o;
  o.listen = absl::GetFlag(FLAGS_listen);
  o.port = absl::GetFlag(FLAGS_port);
  o.secret = absl::GetFlag(FLAGS_secret);
  o.device = absl::GetFlag(FLAGS_device);
  o.comm_listen_host = absl::GetFlag(FLAGS_comm_host);
  o.debug_step_delay_ms = std::max(0, absl::GetFlag(FLAGS_debug_step_delay_ms));
  const int32_t collective_timeout_s = absl::GetFlag(FLAGS_collective_timeout_s);
  if (collective_timeout_s < 1 || collective_timeout_s > 3600) {
    std::fprintf(stderr, "adore-worker: --collective_timeout_s: %d is not in [1, 3600]\n", collective_timeout_s);
    return 2;
  }
  o.collective_timeout_ms = int64_t{collective_timeout_s} * 1000;
  const std::string secret_file = absl::GetFlag(FLAGS_secret_file);
  if (!secret_file.empty()) {
    if (!o.secret.empty()) {
      std::fprintf(stderr, "adore-worker: give --secret or --secret_file, not both\n");
      return 2;
    }
    std::ifstream in(secret_file);
    if (!in) {
      std::fprintf(stderr, "adore-worker: --secret_file: cannot read %s\n", secret_file.c_str());
      return 2;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    o.secret = std::string(absl::StripAsciiWhitespace(ss.str()));
    if (o.secret.empty()) {
      std::fprintf(stderr, "adore-worker: --secret_file: %s is empty\n", secret_file.c_str());
      return 2;
    }
  }
  if (const std::string digest = absl::GetFlag(FLAGS_model_sha256); !digest.empty()) {
    absl::StatusOr<std::string> parsed = adore::ParseSha256Hex(digest, "--model_sha256");
    if (!parsed.ok()) {
      std::fprintf(stderr, "adore-worker: %s\n", std::string(parsed.status().message()).c_str());
      return 2;
    }
    o.model_sha256 = *std::move(parsed);
  }
  const std::string backend = absl::GetFlag(FLAGS_backend);
  if (backend != "cpu" && backend != "cuda") {
    std::fprintf(stderr, "adore-worker: --backend: '%s' is not cpu or cuda\n", backend.c_str());
    return 2;
  }
#if !ADORE_WITH_CUDA
  if (backend == "cuda") {
    std::fprintf(stderr, "adore-worker: --backend cuda: this build has no CUDA backend\n");
    return 2;
  }
#endif
  if (backend == "cpu" && absl::GetFlag(FLAGS_device) != 0) {
    std::fprintf(stderr, "adore-worker: --device must be 0 for the cpu backend\n");
    return 2;
  }
  if (o.secret.empty() && o.listen != "127.0.0.1" && o.listen != "localhost" && o.listen != "::1") {
    std::fprintf(stderr, "adore-worker: warning: listening on %s without a secret\n", o.listen.c_str());
  }
  const std::string coordinator = absl::GetFlag(FLAGS_coordinator);
  const std::string advertise = absl::GetFlag(FLAGS_advertise);
  const int rank = absl::GetFlag(FLAGS_rank);
  const int renew_interval_ms = absl::GetFlag(FLAGS_renew_interval_ms);
  std::string coordinator_host;
  int coordinator_port = 0;
  if (coordinator.empty()) {
    if (!advertise.empty() || rank != -1) {
      std::fprintf(stderr, "adore-worker: --advertise and --rank need --coordinator\n");
      return 2;
    }
  } else {
    std::string host;
    int port = 0;
    if (!SplitHostPort(coordinator, /*allow_empty_host=*/false, &coordinator_host, &coordinator_port)) {
      std::fprintf(stderr, "adore-worker: --coordinator: '%s' is not host:port\n", coordinator.c_str());
      return 2;
    }
    if (!advertise.empty() && !SplitHostPort(advertise, /*allow_empty_host=*/false, &host, &port)) {
      std::fprintf(stderr, "adore-worker: --advertise: '%s' is not host:port\n", advertise.c_str());
      return 2;
    }
    if (rank < -1) {
      std::fprintf(stderr, "adore-worker: --rank: %d is not -1 (any) or a rank >= 0\n", rank);
      return 2;
    }
    if (renew_interval_ms < 100) {
      std::fprintf(stderr, "adore-worker: --renew_interval_ms: %d is not >= 100\n", renew_interval_ms);
      return 2;
    }
  }
  auto server = adore::WorkerServer::Start(o);
  if (!server.ok()) {
    std::fprintf(stderr, "adore-worker: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf("adore-worker: serving adore.v1.Worker on %s (backend %s, device %d)\n", (*server)->address().c_str(),
              backend.c_str(), absl::GetFlag(FLAGS_device));
  std::fflush(stdout);
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  if (!coordinator.empty()) {
    adore::v1::RegisterWorkerRequest req;
    std::string address = advertise;
    if (address.empty()) {
      // The listen address and the bound port; a wildcard listen address is no address to dial: an empty
      // host asks the coordinator to dial the address the registration comes from.
      std::string host = IsWildcardHost(o.listen) ? "" : o.listen;
      if (host.find(':') != std::string::npos && !absl::StartsWith(host, "[")) host = "[" + host + "]";
      address = absl::StrFormat("%s:%d", host, (*server)->port());
    }
    std::string advertised_host;
    int advertised_port = 0;
    SplitHostPort(address, /*allow_empty_host=*/true, &advertised_host, &advertised_port);
    if (IsLoopbackHost(advertised_host) && !IsLoopbackHost(coordinator_host)) {
      std::fprintf(stderr, "adore-worker: warning: telling the coordinator at %s to dial %s, a loopback address it "
                           "reaches only on this host; give --advertise host:port (or --listen 0.0.0.0)\n",
                   coordinator.c_str(), address.c_str());
    }
    req.set_address(address);
    if (rank >= 0) req.set_rank(rank);  // unset: any rank
    req.set_backend(backend == "cpu" ? adore::v1::BACKEND_CPU : adore::v1::BACKEND_CUDA);
    req.set_device(absl::GetFlag(FLAGS_device));
    char hostname[256] = {};
    if (::gethostname(hostname, sizeof(hostname) - 1) == 0) req.set_hostname(hostname);
    const std::string as_rank = rank >= 0 ? absl::StrFormat(" as rank %d", rank) : std::string();
    std::fprintf(stderr, "adore-worker: registering %s with the coordinator at %s%s\n", address.c_str(),
                 coordinator.c_str(), as_rank.c_str());
    Registration registration(coordinator, req, o.secret, std::chrono::milliseconds(renew_interval_ms));
    if (const int r = registration.Register(); r > 0) {
      (*server)->Shutdown();
      return 1;
    }
    registration.RenewUntilStopped();  // returns once stopped
  }
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::fprintf(stderr, "adore-worker: shutting down\n");
  (*server)->Shutdown();
  return 0;
}
