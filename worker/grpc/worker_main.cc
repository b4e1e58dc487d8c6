// adore-worker: one worker process of the distributed runtime, serving adore.v1.Worker (Load, Bootstrap,
// Step, Health) to the coordinator (adore-server --workers host:port,...). The model, backend and device
// are given by the coordinator's Load; --backend here is only checked at start. --device is the GPU a CUDA
// tensor-parallel group's NCCL communicator is created on at Bootstrap, so Load must name the same device
// (the coordinator names device 0: give each worker process its own GPU with CUDA_VISIBLE_DEVICES).
#include <atomic>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "worker/grpc/worker_service.h"

ABSL_FLAG(std::string, listen, "127.0.0.1", "address to listen on (0.0.0.0 to accept remote coordinators)");
ABSL_FLAG(int32_t, port, 0, "port; 0 = any free port (printed at start)");
ABSL_FLAG(std::string, secret, "", "shared secret every call must carry (metadata adore-worker-secret)");
ABSL_FLAG(std::string, secret_file, "", "file holding the shared secret (surrounding whitespace is ignored)");
ABSL_FLAG(std::string, backend, "cpu", "backend this worker serves: cpu or cuda");
ABSL_FLAG(int32_t, device, 0, "CUDA device ordinal (cuda backend)");

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }
}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("adore-worker [--listen A] [--port P] [--secret_file F] [--backend cpu|cuda] [--device D]");
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
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::fprintf(stderr, "adore-worker: shutting down\n");
  (*server)->Shutdown();
  return 0;
}
