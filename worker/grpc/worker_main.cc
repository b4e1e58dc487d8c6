// adore-worker: one worker process of the distributed runtime, serving adore.v1.Worker (Load, Bootstrap,
// Step, Health) to the coordinator. The coordinator either dials it from a fixed list (adore-server
// --workers host:port,...) or, with --coordinator host:port, the worker registers itself once it serves
// (adore.v1.Coordinator.RegisterWorker, proto/adore/v1/coordinator.proto: adore-server --expect_workers N),
// retrying with backoff until the coordinator answers; the coordinator then drives it the same way.
// The model, backend and device are given by the coordinator's Load; --backend here is only checked at
// start. --device is the GPU a CUDA tensor-parallel group's NCCL communicator is created on at Bootstrap,
// so Load must name the same device (the coordinator names device 0: give each worker process its own GPU
// with CUDA_VISIBLE_DEVICES).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>
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
#include "worker/grpc/worker_service.h"

ABSL_FLAG(std::string, listen, "127.0.0.1", "address to listen on (0.0.0.0 to accept remote coordinators)");
ABSL_FLAG(int32_t, port, 0, "port; 0 = any free port (printed at start)");
ABSL_FLAG(std::string, secret, "", "shared secret every call must carry (metadata adore-worker-secret)");
ABSL_FLAG(std::string, secret_file, "", "file holding the shared secret (surrounding whitespace is ignored)");
ABSL_FLAG(std::string, backend, "cpu", "backend this worker serves: cpu or cuda");
ABSL_FLAG(int32_t, device, 0, "CUDA device ordinal (cuda backend)");
ABSL_FLAG(std::string, coordinator, "", "host:port of an adore-server --expect_workers to register with once serving "
          "(retried with backoff until it answers); empty = wait to be dialed (adore-server --workers)");
ABSL_FLAG(std::string, advertise, "", "with --coordinator: host:port the coordinator is to dial for this worker; "
          "empty = --listen and the bound port (with --listen 0.0.0.0: the address the registration comes from)");
ABSL_FLAG(int32_t, rank, -1, "with --coordinator: the tensor-parallel rank to ask for; -1 = any (the lowest free)");

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

// Registers with the coordinator until it answers: 0 when registered, 1 when refused, -1 when stopped
// (SIGINT / SIGTERM) first. UNAVAILABLE and DEADLINE_EXCEEDED (the coordinator is not up yet, or busy) are
// retried with backoff (0.2 s doubling to 5 s); every other answer is final (see coordinator.proto).
int RegisterWithCoordinator(const std::string& coordinator, const adore::v1::RegisterWorkerRequest& request,
                            const std::string& secret) {
  grpc::ChannelArguments args;
  // The channel's own reconnection backoff would otherwise grow to 2 minutes while the coordinator is down.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 5000);
  auto stub = adore::v1::Coordinator::NewStub(
      grpc::CreateCustomChannel(coordinator, grpc::InsecureChannelCredentials(), args));
  double backoff_s = 0.2;
  for (int attempt = 1; !g_stop; ++attempt) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!secret.empty()) ctx.AddMetadata(adore::kWorkerSecretKey, secret);
    adore::v1::RegisterWorkerResponse resp;
    const grpc::Status st = stub->RegisterWorker(&ctx, request, &resp);
    if (st.ok()) {
      std::printf("adore-worker: registered with %s as rank %d of %d, to be dialed at %s (%s)\n",
                  coordinator.c_str(), resp.rank(), resp.world_size(), resp.address().c_str(), resp.message().c_str());
      std::fflush(stdout);
      return 0;
    }
    if (st.error_code() != grpc::StatusCode::UNAVAILABLE && st.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
      std::fprintf(stderr, "adore-worker: the coordinator %s refused the registration: %s: %s\n", coordinator.c_str(),
                   absl::StatusCodeToString(static_cast<absl::StatusCode>(st.error_code())).c_str(),
                   st.error_message().c_str());
      return 1;
    }
    std::fprintf(stderr, "adore-worker: registering with %s (attempt %d): %s; retrying in %.1f s\n",
                 coordinator.c_str(), attempt, st.error_message().c_str(), backoff_s);
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int>(backoff_s * 1000));
    while (!g_stop && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    backoff_s = std::min(backoff_s * 2, 5.0);
  }
  return -1;
}
}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("adore-worker [--listen A] [--port P] [--secret_file F] [--backend cpu|cuda] [--device D] "
                               "[--coordinator HOST:PORT [--advertise HOST:PORT] [--rank R]]");
  absl::ParseCommandLine(argc, argv);
  std::signal(SIGPIPE, SIG_IGN);  // a client or peer that disconnects must not kill the process
  adore::WorkerServerOptions o;
  o.listen = absl::GetFlag(FLAGS_listen);
  o.port = absl::GetFlag(FLAGS_port);
  o.secret = absl::GetFlag(FLAGS_secret);
  o.device = absl::GetFlag(FLAGS_device);
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
    if (const int r = RegisterWithCoordinator(coordinator, req, o.secret); r > 0) {
      (*server)->Shutdown();
      return 1;
    }
  }
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::fprintf(stderr, "adore-worker: shutting down\n");
  (*server)->Shutdown();
  return 0;
}
