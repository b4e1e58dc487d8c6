// adore-server: the coordinator with embedded workers, serving the public gRPC API (adore.v1.Adore) and
// grpc.health.v1 on 127.0.0.1 by default, and with --http_port the OpenAI-compatible HTTP API and metrics.
// External workers (adore-worker) are either listed (--workers host:port,... in rank order) or register
// themselves (--expect_workers N: adore.v1.Coordinator on the same port, adore-worker --coordinator).
// Security (docs/RELIABILITY.md): --tls_cert_file/--tls_key_file, --auth_token_file, --model_sha256.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "common/security.h"
#include "coordinator/grpc/server.h"

ABSL_FLAG(std::string, model, "models/SmolLM2-135M-Instruct.Q4_1.gguf", "GGUF file or HF checkpoint directory, or synthetic:<shape>[:<max_context>] (random weights of "
          "smollm2-135m, llama2-7b or llama3-8b on the cuda backend; prompts as token ids)");
ABSL_FLAG(std::string, listen, "127.0.0.1", "address to listen on (0.0.0.0 to accept remote clients)");
ABSL_FLAG(int32_t, port, 50051, "port; 0 = any free port (printed at start)");
ABSL_FLAG(std::string, backend, "cpu", "engine: cpu or cuda");
ABSL_FLAG(int32_t, embedded_workers, 1, "tensor-parallel ranks run in this process: 1 = one engine; N > 1 = N worker actors on loopback (Gloo for cpu, NCCL over devices 0..N-1 for cuda)");
ABSL_FLAG(int64_t, kv_rows, 0, "KV pool rows (tokens over all sequences); 0 = 8 x context (cpu), memory budget (cuda)");
ABSL_FLAG(std::string, rendezvous_host, "127.0.0.1",
          "cpu tensor parallelism with external workers: address of this machine where the workers' Gloo rendezvous "
          "store listens and that they are told (the pod IP when workers run on other hosts)");
ABSL_FLAG(int64_t, memory_budget_bytes, 0,
          "bytes each rank may use for weights, KV pool and workspaces (device memory for cuda, RAM for cpu); the KV "
          "pool gets what the weights leave; 0 = --kv_rows or the defaults; not with --kv_rows");
ABSL_FLAG(double, gpu_memory_fraction, 0.9,
          "cuda, one embedded engine, neither --kv_rows nor --memory_budget_bytes: share of the device memory left "
          "after weights and workspaces that the KV pool takes, in (0, 1]");
ABSL_FLAG(int64_t, max_batch, 64, "sequences per step");
ABSL_FLAG(std::string, controller, "tools/adore/controller.bin", "ADORE controller (adore policy available if it loads)");
ABSL_FLAG(std::string, default_policy, "full", "policy for requests that do not set one: full, window, heavy_hitter, adore");
ABSL_FLAG(int64_t, default_kv_budget, 1024, "kv_budget for requests that do not set one");
ABSL_FLAG(int64_t, default_rebuild, 0, "rebuild for adore requests that do not set one");
ABSL_FLAG(int32_t, default_max_tokens, 256, "max_tokens for requests that do not set one");
ABSL_FLAG(std::string, workers, "", "external workers (adore-worker) host:port,... in rank order; empty = embedded "
          "(or --expect_workers)");
ABSL_FLAG(int32_t, expect_workers, 0, "wait for this many adore-worker --coordinator processes to register on --port "
          "(adore.v1.Coordinator), then drive them in rank order as with --workers; 0 = off");
ABSL_FLAG(int32_t, expect_workers_timeout_s, 600, "with --expect_workers: longest wait for all of them to register; "
          "exit with an error naming the missing ranks after it");
ABSL_FLAG(std::string, worker_secret_file, "", "file holding the workers' shared secret (with --workers or "
          "--expect_workers: sent to the workers, and required of registrations)");
ABSL_FLAG(bool, pipeline_steps, true,
          "send step n + 1 to the engine or the workers before step n's answer is streamed, so that the GPUs do "
          "not wait for the coordinator (its round trip to worker processes, its detokenizing and streaming); "
          "--pipeline_steps=false runs one step at a time");
ABSL_FLAG(int32_t, policy_prefill_chunk, 0,
          "prompt tokens per forward call for requests under a releasing policy, in [0, 4096] (0 = 32; on the cuda "
          "backend at most 64, and 1 feeds prompts token by token); sent to every worker");
ABSL_FLAG(int32_t, step_timeout_s, 300,
          "external workers: a step not answered by every rank within this many seconds fails its requests with "
          "UNAVAILABLE and the workers are loaded again (a hung worker stalls serving this long at most)");
ABSL_FLAG(int32_t, http_port, -1, "OpenAI-compatible HTTP API, /health and /metrics on --listen at this port; "
          "-1 = off, 0 = any free port (printed at start)");
ABSL_FLAG(std::string, tls_cert_file, "", "PEM certificate chain: serve gRPC (and the HTTP API) over TLS; needs "
          "--tls_key_file");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file");
ABSL_FLAG(std::string, auth_token_file, "", "file holding a bearer token (trailing whitespace stripped): every "
          "adore.v1.Adore call and every HTTP route but /health must send \"authorization: Bearer <token>\"; "
          "grpc.health.v1 stays open");
ABSL_FLAG(std::string, model_sha256, "", "sha256 of the model file (64 hex digits): refuse to start when the file "
          "differs (external workers check it too); empty = no check");
ABSL_FLAG(std::string, served_model_name, "", "the model's id on the HTTP API (\"model\" field, /v1/models); "
          "empty = the model path's file name without extension");

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }
}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("adore-server --model M [--port P] [--backend cpu|cuda] ...");
  absl::ParseCommandLine(argc, argv);
  std::signal(SIGPIPE, SIG_IGN);  // a client or peer that disconnects must not kill the process
  adore::ServerOptions o;
  o.model = absl::GetFlag(FLAGS_model);
  o.listen = absl::GetFlag(FLAGS_listen);
  o.port = absl::GetFlag(FLAGS_port);
  o.backend = absl::GetFlag(FLAGS_backend);
  o.embedded_workers = absl::GetFlag(FLAGS_embedded_workers);
  o.kv_rows = absl::GetFlag(FLAGS_kv_rows);
  o.memory_budget_bytes = absl::GetFlag(FLAGS_memory_budget_bytes);
  o.rendezvous_host = absl::GetFlag(FLAGS_rendezvous_host);
  o.gpu_memory_fraction = absl::GetFlag(FLAGS_gpu_memory_fraction);
  o.max_batch = absl::GetFlag(FLAGS_max_batch);
  o.controller = absl::GetFlag(FLAGS_controller);
  o.defaults.max_tokens = absl::GetFlag(FLAGS_default_max_tokens);
  o.http_port = absl::GetFlag(FLAGS_http_port);
  o.served_model_name = absl::GetFlag(FLAGS_served_model_name);
  o.expect_workers = absl::GetFlag(FLAGS_expect_workers);
  o.expect_workers_timeout_ms = int64_t{absl::GetFlag(FLAGS_expect_workers_timeout_s)} * 1000;
  o.step_timeout_ms = int64_t{absl::GetFlag(FLAGS_step_timeout_s)} * 1000;
  o.pipeline_steps = absl::GetFlag(FLAGS_pipeline_steps);
  o.policy_prefill_chunk = absl::GetFlag(FLAGS_policy_prefill_chunk);
  o.on_waiting_for_workers = [](const std::string& address) {
    std::printf("adore-server: waiting for workers to register on %s\n", address.c_str());
    std::fflush(stdout);
  };
  for (absl::string_view w : absl::StrSplit(absl::GetFlag(FLAGS_workers), ',', absl::SkipWhitespace())) {
    o.workers.push_back(std::string(absl::StripAsciiWhitespace(w)));
  }
  if (const std::string f = absl::GetFlag(FLAGS_worker_secret_file); !f.empty()) {
    std::ifstream in(f);
    if (!in) {
      std::fprintf(stderr, "adore-server: --worker_secret_file: cannot read %s\n", f.c_str());
      return 2;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    o.worker_secret = std::string(absl::StripAsciiWhitespace(ss.str()));
  }
  o.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  o.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  o.model_sha256 = absl::GetFlag(FLAGS_model_sha256);
  if (const std::string f = absl::GetFlag(FLAGS_auth_token_file); !f.empty()) {
    absl::StatusOr<std::string> token = adore::ReadTokenFile(f);
    if (!token.ok()) {
      std::fprintf(stderr, "adore-server: --auth_token_file: %s\n", std::string(token.status().message()).c_str());
      return 2;
    }
    o.auth_token = *std::move(token);
  }
  auto kind = adore::ParsePolicyKind(absl::GetFlag(FLAGS_default_policy));
  if (!kind.ok()) {
    std::fprintf(stderr, "adore-server: --default_policy: %s\n", std::string(kind.status().message()).c_str());
    return 2;
  }
  o.defaults.release = {.kind = *kind, .kv_budget = absl::GetFlag(FLAGS_default_kv_budget),
                        .rebuild = absl::GetFlag(FLAGS_default_rebuild)};
  if (o.expect_workers > 0 && o.worker_secret.empty() && o.listen != "127.0.0.1" && o.listen != "localhost" &&
      o.listen != "::1") {
    std::fprintf(stderr, "adore-server: warning: accepting worker registrations on %s without a secret "
                         "(--worker_secret_file)\n", o.listen.c_str());
  }
  if (o.auth_token.empty() && o.listen != "127.0.0.1" && o.listen != "localhost" && o.listen != "::1") {
    std::fprintf(stderr, "adore-server: warning: serving on %s without authentication (--auth_token_file)\n",
                 o.listen.c_str());
  }
  std::fprintf(stderr, "adore-server: loading %s on %s ...\n", o.model.c_str(), o.backend.c_str());
  auto server = adore::EmbeddedServer::Start(o);
  if (!server.ok()) {
    std::fprintf(stderr, "adore-server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  const bool tls = !o.tls_cert_file.empty();
  std::printf("adore-server: serving adore.v1.Adore and grpc.health.v1%s%s on %s\n", tls ? " over TLS" : "",
              o.auth_token.empty() ? "" : " (bearer token required)", (*server)->address().c_str());
  if ((*server)->http_port() >= 0) {
    std::printf("adore-server: serving HTTP (OpenAI-compatible /v1, /health, /metrics) on %s://%s:%d\n",
                tls ? "https" : "http", o.listen.c_str(), (*server)->http_port());
  }
  std::fflush(stdout);
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::fprintf(stderr, "adore-server: shutting down\n");
  (*server)->Shutdown();
  return 0;
}
