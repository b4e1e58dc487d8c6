// adore-server's HTTP API (cpp-httplib), beside the gRPC one and over the same Scheduler:
//   POST /v1/completions, POST /v1/chat/completions   OpenAI-compatible, "stream": true answers with
//                                                      Server-Sent Events ending with "data: [DONE]"
//   GET  /v1/models, /v1/models/{id}                  the served model
//   GET  /health                                      200 while serving, 503 otherwise
//   GET  /metrics                                     Prometheus text exposition (coordinator/http/metrics.h)
// Optionally over TLS (HTTPS, cpp-httplib's SSLServer) and with a bearer token on everything but /health.
// A client that disconnects from a stream has its request cancelled (its KV freed at the next step); a
// non-streaming request runs to its end. docs/HTTP.md has the fields, errors and metric names.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/tokenizer.h"
#include "coordinator/http/metrics.h"
#include "coordinator/request_options.h"
#include "coordinator/scheduler.h"

namespace httplib {
class Server;
}

namespace adore::http {

struct HttpServerOptions {
  std::string listen = "127.0.0.1";
  int port = 0;            // 0 = any free port (see HttpServer::port)
  std::string model_id;    // the model's name in /v1/models and in every response
  int threads = 16;        // connections served at once (each stream holds one for its duration)
  int64_t kv_rows = 0;     // the scheduler's KV budget (adore_kv_slots_free)
  // HTTPS: PEM files of the certificate chain and its key, both or neither (plaintext HTTP).
  std::string tls_cert_file;
  std::string tls_key_file;
  // Non-empty: every route but /health answers 401 (an OpenAI-style error body, WWW-Authenticate: Bearer)
  // unless the request has the header "Authorization: Bearer <auth_token>".
  std::string auth_token;
};

class HttpServer {
 public:
  // Binds and starts serving; UNAVAILABLE when the address cannot be bound, INVALID_ARGUMENT when the TLS
  // files do not load. `scheduler`, `tokenizer` and `config` must outlive the server.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpServerOptions& options, Scheduler& scheduler,
                                                           const Tokenizer& tokenizer, const ModelConfig& config,
                                                           const ServiceDefaults& defaults);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }
  // What /health answers (true from Start on).
  void SetServing(bool serving) { serving_ = serving; }
  // Stops accepting, cancels the requests of running streams and returns once every handler has ended.
  // Needs the scheduler still running.
  void Stop();

 private:
  HttpServer(const HttpServerOptions& options, Scheduler& scheduler, const Tokenizer& tokenizer,
             const ModelConfig& config, const ServiceDefaults& defaults);
  struct Handlers;  // the routes (http_server.cc)

  HttpServerOptions options_;
  Scheduler& scheduler_;
  const Tokenizer& tokenizer_;
  const ModelConfig& config_;
  ServiceDefaults defaults_;
  std::vector<int32_t> stop_ids_;
  int64_t started_unix_ = 0;
  std::atomic<bool> serving_{false}, stopping_{false};
  std::atomic<uint64_t> next_id_{1};
  HttpRequestCounter requests_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
  bool stopped_ = false;
};

}  // namespace adore::http
