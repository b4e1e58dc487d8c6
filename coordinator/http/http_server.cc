// HttpServer: the OpenAI-compatible API, health and metrics over the scheduler (cpp-httplib).
#include "coordinator/http/http_server.h"

#include <httplib.h>

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <ctime>
#include <deque>
#include <mutex>
#include <optional>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/security.h"
#include "coordinator/http/openai.h"

namespace adore::http {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// How long a handler waits for the scheduler before checking for shutdown, and how long a stream may go
// without a write before a keep-alive comment: writing is the only way to notice a client that left.
constexpr auto kPoll = std::chrono::milliseconds(100);
constexpr auto kKeepAlive = std::chrono::milliseconds(1000);
constexpr std::string_view kMetricsType = "text/plain; version=0.0.4; charset=utf-8";

// The scheduler's thread posts a request's events here (it must not block); a handler thread takes them.
struct Mailbox {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<StreamEvent> events;

  void Post(const StreamEvent& e) {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back(e);
    cv.notify_one();
  }
  // Every event posted so far, after waiting up to `timeout` for one.
  std::deque<StreamEvent> Take(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, timeout, [&] { return !events.empty(); });
    std::deque<StreamEvent> out;
    out.swap(events);
    return out;
  }
};

void SendJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(Dump(body), "application/json");
}

void SendError(httplib::Response& res, const ApiError& error) { SendJson(res, error.http_status, ErrorJson(error)); }

void SendError(httplib::Response& res, const absl::Status& status) { SendError(res, ErrorFromStatus(status)); }

// Label for adore_http_requests_total: the route, never the raw path (bounded cardinality).
std::string RouteLabel(const std::string& path) {
  for (const char* route : {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"}) {
    if (path == route) return route;
  }
  if (path.rfind("/v1/models/", 0) == 0) return "/v1/models/{id}";
  return "other";
}

// One streamed request: what the content provider needs between its calls.
struct StreamState {
  std::shared_ptr<Mailbox> box;
  uint64_t id = 0;
  CompletionMeta meta;
  bool include_usage = false;
  bool started = false;   // the chat role chunk went out
  bool finished = false;  // the final event was written (or the request was cancelled)
  bool cancel_sent = false;
  Clock::time_point last_write = Clock::now();
};

}  // namespace

struct HttpServer::Handlers {
  // POST /v1/completions and /v1/chat/completions.
  static void Generate(HttpServer& s, const httplib::Request& req, httplib::Response& res, Endpoint endpoint) {
    absl::StatusOr<OpenAiRequest> parsed = ParseRequest(req.body, endpoint);
    if (!parsed.ok()) return SendError(res, parsed.status());
    if (!parsed->model.empty() && parsed->model != s.options_.model_id) {
      return SendError(res, ApiError{404, "invalid_request_error",
                                     absl::StrFormat("model '%s' does not exist; this server serves '%s'",
                                                     parsed->model, s.options_.model_id),
                                     "model", "model_not_found"});
    }
    if (!s.serving_) return SendError(res, absl::UnavailableError("the server is not serving"));
    absl::StatusOr<GenerateOptions> options =
        BuildGenerateOptions(parsed->spec, s.tokenizer_, s.config_, s.defaults_, s.stop_ids_, OpenAiFields(endpoint));
    if (!options.ok()) return SendError(res, options.status());
    CompletionMeta meta;
    meta.endpoint = endpoint;
    meta.created = static_cast<int64_t>(std::time(nullptr));
    meta.model = s.options_.model_id;
    meta.release = options->release;
    meta.seed = options->sampling.seed;
    auto box = std::make_shared<Mailbox>();
    absl::StatusOr<uint64_t> id =
        s.scheduler_.Submit(*std::move(options), [box](const StreamEvent& e) { box->Post(e); });
    if (!id.ok()) return SendError(res, id.status());
    meta.id = absl::StrFormat("%s-%x-%d", endpoint == Endpoint::kChatCompletions ? "chatcmpl" : "cmpl",
                              s.started_unix_, *id);
    if (parsed->stream) return StartStream(s, res, box, *id, std::move(meta), parsed->include_usage);

    // Not streamed: collect the text until the final event.
    std::string text;
    bool cancel_sent = false;
    while (true) {
      std::deque<StreamEvent> events = box->Take(kPoll);
      if (events.empty() && s.stopping_ && !cancel_sent) {
        s.scheduler_.Cancel(*id);
        cancel_sent = true;
      }
      for (StreamEvent& e : events) {
        text += e.text;
        if (!e.final) continue;
        if (!e.status.ok()) return SendError(res, e.status);
        return SendJson(res, 200, CompletionJson(meta, text, e));
      }
    }
  }

  static void StartStream(HttpServer& s, httplib::Response& res, std::shared_ptr<Mailbox> box, uint64_t id,
                          CompletionMeta meta, bool include_usage) {
    auto st = std::make_shared<StreamState>();
    st->box = std::move(box);
    st->id = id;
    st->meta = std::move(meta);
    st->include_usage = include_usage;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");  // proxies: do not buffer the stream
    res.set_chunked_content_provider(
        "text/event-stream", [&s, st](size_t, httplib::DataSink& sink) { return Pump(s, *st, sink); },
        // Runs however the response ends: a stream that did not reach its final event is cancelled.
        [&s, st](bool) {
          if (!st->finished && !st->cancel_sent) s.scheduler_.Cancel(st->id);
        });
  }

  // One call of the content provider: writes what the scheduler sent since the last call. false ends the
  // response (the client is gone: the request is cancelled).
  static bool Pump(HttpServer& s, StreamState& st, httplib::DataSink& sink) {
    auto write = [&](std::string_view data) {
      st.last_write = Clock::now();
      if (sink.write(data.data(), data.size())) return true;
      s.scheduler_.Cancel(st.id);
      st.cancel_sent = true;
      return false;
    };
    if (!st.started) {
      st.started = true;
      if (st.meta.endpoint == Endpoint::kChatCompletions &&
          !write(SseEvent(ChunkJson(st.meta, "", /*first=*/true, std::nullopt)))) {
        return false;
      }
    }
    std::deque<StreamEvent> events = st.box->Take(kPoll);
    if (events.empty()) {
      if (s.stopping_ && !st.cancel_sent) {
        s.scheduler_.Cancel(st.id);
        st.cancel_sent = true;
      }
      if (Clock::now() - st.last_write >= kKeepAlive) return write(": keep-alive\n\n");
      return true;
    }
    for (const StreamEvent& e : events) {
      if (!e.final) {
        if (!e.text.empty() && !write(SseEvent(ChunkJson(st.meta, e.text, false, std::nullopt)))) return false;
        continue;
      }
      st.finished = true;
      std::string out;
      if (e.status.ok()) {
        if (!e.text.empty()) out += SseEvent(ChunkJson(st.meta, e.text, false, std::nullopt));
        out += SseEvent(ChunkJson(st.meta, "", false, e.finish_reason));
        if (st.include_usage) out += SseEvent(UsageChunkJson(st.meta, e));
      } else {
        out += SseEvent(ErrorJson(ErrorFromStatus(e.status)));
      }
      out += kSseDone;
      if (!write(out)) return false;
      sink.done();
      return true;
    }
    return true;
  }

  static json ModelJson(const HttpServer& s) {
    return {{"id", s.options_.model_id},
            {"object", "model"},
            {"created", s.started_unix_},
            {"owned_by", "adore"},
            {"context_length", s.config_.max_context}};
  }
};

HttpServer::HttpServer(const HttpServerOptions& options, Scheduler& scheduler, const Tokenizer& tokenizer,
                       const ModelConfig& config, const ServiceDefaults& defaults)
    : options_(options), scheduler_(scheduler), tokenizer_(tokenizer), config_(config), defaults_(defaults),
      stop_ids_(EndOfGenerationIds(tokenizer)), started_unix_(static_cast<int64_t>(std::time(nullptr))) {}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options, Scheduler& scheduler,
                                                              const Tokenizer& tokenizer, const ModelConfig& config,
                                                              const ServiceDefaults& defaults) {
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(absl::StrFormat("http_port: %d is not in [0, 65535]", options.port));
  }
  // cpp-httplib writes with send() and no MSG_NOSIGNAL: a client that disconnects mid-response would raise
  // SIGPIPE and kill the process. Writes then fail with EPIPE instead, which ends (and cancels) the stream.
  std::signal(SIGPIPE, SIG_IGN);
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("http: tls_cert_file, tls_key_file: give both (HTTPS) or neither (HTTP)");
  }
  std::unique_ptr<HttpServer> s(new HttpServer(options, scheduler, tokenizer, config, defaults));
  if (options.tls_cert_file.empty()) {
    s->server_ = std::make_unique<httplib::Server>();
  } else {
    auto tls = std::make_unique<httplib::SSLServer>(options.tls_cert_file.c_str(), options.tls_key_file.c_str());
    if (!tls->is_valid()) {
      return absl::InvalidArgumentError(absl::StrFormat("http: cannot serve HTTPS with the certificate %s and key %s",
                                                        options.tls_cert_file, options.tls_key_file));
    }
    s->server_ = std::move(tls);
  }
  httplib::Server& srv = *s->server_;
  const size_t threads = static_cast<size_t>(std::max(4, options.threads));
  srv.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  srv.set_payload_max_length(size_t{32} << 20);
  HttpServer* self = s.get();

  srv.Post("/v1/completions", [self](const httplib::Request& req, httplib::Response& res) {
    Handlers::Generate(*self, req, res, Endpoint::kCompletions);
  });
  srv.Post("/v1/chat/completions", [self](const httplib::Request& req, httplib::Response& res) {
    Handlers::Generate(*self, req, res, Endpoint::kChatCompletions);
  });
  srv.Get("/v1/models", [self](const httplib::Request&, httplib::Response& res) {
    SendJson(res, 200, {{"object", "list"}, {"data", json::array({Handlers::ModelJson(*self)})}});
  });
  srv.Get("/v1/models/(.+)", [self](const httplib::Request& req, httplib::Response& res) {
    if (req.matches[1] == self->options_.model_id) return SendJson(res, 200, Handlers::ModelJson(*self));
    SendError(res, ApiError{404, "invalid_request_error",
                            absl::StrFormat("model '%s' does not exist", req.matches[1].str()), "model",
                            "model_not_found"});
  });
  srv.Get("/health", [self](const httplib::Request&, httplib::Response& res) {
    if (self->serving_) return SendJson(res, 200, {{"status", "ok"}});
    SendJson(res, 503, {{"status", "unavailable"}});
  });
  srv.Get("/metrics", [self](const httplib::Request&, httplib::Response& res) {
    const MetricsContext context{.model = self->options_.model_id, .kv_rows = self->options_.kv_rows,
                                 .http = &self->requests_};
    res.set_content(RenderMetrics(self->scheduler_.stats(), context), std::string(kMetricsType));
  });
  auto unknown = [](const httplib::Request& req, httplib::Response& res) {
    SendError(res, ApiError{404, "invalid_request_error", absl::StrFormat("unknown route %s %s", req.method, req.path),
                            "", "unknown_route"});
  };
  srv.Get(".*", unknown);
  srv.Post(".*", unknown);
  auto not_allowed = [](const httplib::Request& req, httplib::Response& res) {
    SendError(res, ApiError{405, "invalid_request_error", absl::StrFormat("method %s is not allowed on %s", req.method,
                                                                          req.path),
                            "", "method_not_allowed"});
  };
  srv.Put(".*", not_allowed);
  srv.Patch(".*", not_allowed);
  srv.Delete(".*", not_allowed);
  // Errors cpp-httplib answers itself (unsupported method, malformed request, body too large) get a JSON body.
  srv.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    ApiError e{res.status, res.status >= 500 ? "server_error" : "invalid_request_error",
               absl::StrFormat("%s %s: HTTP %d", req.method, req.path, res.status), "", ""};
    SendError(res, e);
    return httplib::Server::HandlerResponse::Handled;
  }));
  srv.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    SendError(res, absl::InternalError(what));
  });
  // The bearer token, before routing: an unauthenticated caller learns nothing but 401 (not even which
  // routes exist). /health stays open for probes.
  if (!options.auth_token.empty()) {
    srv.set_pre_routing_handler([self](const httplib::Request& req, httplib::Response& res) {
      if (req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
      const bool sent = req.has_header(kAuthorizationKey);  // header names are case-insensitive here
      const std::string header = sent ? req.get_header_value(kAuthorizationKey) : std::string();
      std::optional<std::string_view> value;
      if (sent) value.emplace(header);
      const absl::Status st = CheckBearerAuthorization(value, self->options_.auth_token);
      if (st.ok()) return httplib::Server::HandlerResponse::Unhandled;
      res.set_header("WWW-Authenticate", "Bearer");
      SendError(res, ApiError{401, "invalid_request_error", std::string(st.message()), "", "invalid_api_key"});
      return httplib::Server::HandlerResponse::Handled;
    });
  }
  srv.set_logger([self](const httplib::Request& req, const httplib::Response& res) {
    self->requests_.Add(RouteLabel(req.path), res.status);
  });

  const std::string& host = options.listen;
  s->port_ = options.port == 0 ? srv.bind_to_any_port(host)
                               : (srv.bind_to_port(host, options.port) ? options.port : -1);
  if (s->port_ <= 0) {
    return absl::UnavailableError(absl::StrFormat("http: cannot listen on %s:%d", host, options.port));
  }
  s->thread_ = std::thread([self] { self->server_->listen_after_bind(); });
  // Stop() only reaches a server that is running: wait for the accept loop.
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (!srv.is_running() && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (!srv.is_running()) return absl::UnavailableError(absl::StrFormat("http: %s:%d did not start", host, s->port_));
  s->serving_ = true;
  return s;
}

void HttpServer::Stop() {
  if (stopped_) return;
  stopped_ = true;
  serving_ = false;
  stopping_ = true;  // handlers cancel their requests and end
  server_->stop();
  if (thread_.joinable()) thread_.join();  // returns once the worker threads have finished
}

HttpServer::~HttpServer() { Stop(); }

}  // namespace adore::http
