// adore::client: the C++ SDK of adore-server (see include/adore/client/client.h).
#include "adore/client/client.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "adore/v1/adore.grpc.pb.h"
#include "convert.h"

namespace adore::client {
namespace {

constexpr absl::Duration kDefaultUnaryTimeout = absl::Seconds(30);

// Sets the call's deadline `timeout` from now; none when unset or infinite.
void SetTimeout(grpc::ClientContext* ctx, std::optional<absl::Duration> timeout) {
  if (!timeout.has_value() || *timeout == absl::InfiniteDuration()) return;
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + *timeout));
}

std::string EnumName(int32_t value, std::initializer_list<const char*> names) {
  if (value >= 0 && value < static_cast<int32_t>(names.size())) return *(names.begin() + value);
  return absl::StrCat(value);
}

}  // namespace

std::string PolicyName(Policy policy) {
  return EnumName(static_cast<int32_t>(policy), {"UNSPECIFIED", "FULL", "WINDOW", "HEAVY_HITTER", "ADORE"});
}
std::string BackendName(Backend backend) {
  return EnumName(static_cast<int32_t>(backend), {"UNSPECIFIED", "CPU", "CUDA"});
}
std::string FinishReasonName(FinishReason reason) {
  return EnumName(static_cast<int32_t>(reason), {"UNSPECIFIED", "STOP", "LENGTH"});
}
std::string ServingStatusName(ServingStatus status) {
  return EnumName(static_cast<int32_t>(status), {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"});
}

absl::StatusOr<Policy> ParsePolicy(std::string_view name) {
  // Debian's abseil has its own string_view (ABSL_OPTION_USE_STD_STRING_VIEW 0): go through std::string.
  const std::string given(name);
  std::string key = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(given));
  key = absl::StrReplaceAll(key, {{"-", "_"}});
  if (key.rfind("POLICY_", 0) == 0) key = key.substr(7);
  for (Policy p : {Policy::kFull, Policy::kWindow, Policy::kHeavyHitter, Policy::kAdore}) {
    if (key == PolicyName(p)) return p;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown policy \"", given, "\" (one of full, window, heavy_hitter, adore)"));
}

// ---------------------------------------------------------------------------------------------------------
// Client::Impl
// ---------------------------------------------------------------------------------------------------------

struct Client::Impl {
  std::string server;
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Adore::Stub> stub;
  std::unique_ptr<grpc::GenericStub> generic;  // grpc.health.v1 (its generated stub is not shipped)

  Impl(std::string server_address, ClientOptions opts, std::shared_ptr<grpc::Channel> ch)
      : server(std::move(server_address)), options(std::move(opts)), channel(std::move(ch)) {
    stub = v1::Adore::NewStub(channel);
    generic = std::make_unique<grpc::GenericStub>(channel);
  }

  // Every call's context starts here: the bearer token, when there is one.
  void Prepare(grpc::ClientContext* ctx) const {
    if (!options.bearer_token.empty()) ctx->AddMetadata("authorization", "Bearer " + options.bearer_token);
  }
  std::optional<absl::Duration> GenerateTimeout(const GenerateOptions& o) const {
    return o.timeout.has_value() ? o.timeout : options.timeout;
  }
  absl::Duration UnaryTimeout(std::optional<absl::Duration> t) const {
    if (t.has_value()) return *t;
    return options.timeout.value_or(kDefaultUnaryTimeout);
  }
};

Client::Client(std::string server, ClientOptions options) {
  std::shared_ptr<grpc::ChannelCredentials> creds = options.credentials;
  if (creds == nullptr && (options.tls || !options.tls_root_certs.empty())) {
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs = options.tls_root_certs;  // empty: the system's roots
    creds = grpc::SslCredentials(tls);
  }
  if (creds == nullptr) creds = grpc::InsecureChannelCredentials();
  std::shared_ptr<grpc::Channel> channel = grpc::CreateChannel(server, creds);
  impl_ = std::make_shared<const Impl>(std::move(server), std::move(options), std::move(channel));
}

Client::Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
    : impl_(std::make_shared<const Impl>(std::string(), std::move(options), std::move(channel))) {}

Client::~Client() = default;
Client::Client(const Client&) = default;
Client& Client::operator=(const Client&) = default;
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;

const std::string& Client::server() const { return impl_->server; }

// ---------------------------------------------------------------------------------------------------------
// GenerateStream
// ---------------------------------------------------------------------------------------------------------

struct GenerateStream::State {
  std::shared_ptr<const void> client;  // keeps the channel and the stub alive while the call runs
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader;
  std::atomic<bool> cancel_requested{false};
  bool finished = false;
  std::string request_id;
  std::string text;             // all deltas so far
  std::vector<int32_t> tokens;
  bool have_done = false;
  v1::GenerateDone done;
  absl::Status status;          // the outcome once finished
  std::optional<GenerateResult> result;

  // Reads the call's status and records the outcome.
  void Finish() {
    if (finished) return;
    finished = true;
    if (cancel_requested.load()) {
      // Whatever arrived after Cancel() is dropped; the read side must be drained before Finish().
      v1::GenerateResponse ignored;
      while (reader->Read(&ignored)) {
      }
    }
    const grpc::Status s = reader->Finish();
    if (!s.ok()) {
      status = internal::FromGrpcStatus(s);
    } else if (cancel_requested.load()) {
      status = absl::CancelledError("cancelled by the caller");  // it had finished on the server meanwhile
    } else if (!have_done) {
      status = absl::InternalError("Generate stream ended without a done message");
    } else {
      result = internal::ResultFromProto(request_id, text, tokens, done);
    }
  }

  ~State() {
    if (reader != nullptr && !finished) {
      ctx.TryCancel();
      cancel_requested = true;
      Finish();
    }
  }
};

GenerateStream::GenerateStream(std::unique_ptr<State> state) : state_(std::move(state)) {}
GenerateStream::GenerateStream(GenerateStream&&) noexcept = default;
GenerateStream& GenerateStream::operator=(GenerateStream&&) noexcept = default;
GenerateStream::~GenerateStream() = default;

bool GenerateStream::Next(Delta* delta) {
  if (state_ == nullptr) return false;  // moved from
  State& st = *state_;
  if (st.finished) return false;
  v1::GenerateResponse msg;
  while (!st.cancel_requested.load() && st.reader->Read(&msg)) {
    st.request_id = msg.request_id();
    if (msg.has_delta()) {
      st.text += msg.delta().text();
      st.tokens.insert(st.tokens.end(), msg.delta().token_ids().begin(), msg.delta().token_ids().end());
      if (delta != nullptr) *delta = internal::DeltaFromProto(msg.delta());
      return true;
    }
    if (msg.has_done()) {
      st.have_done = true;
      st.done = msg.done();
    }
    // Any other kind is newer than this SDK: skipped.
  }
  st.Finish();
  return false;
}

absl::StatusOr<GenerateResult> GenerateStream::Result() {
  if (state_ == nullptr) return absl::FailedPreconditionError("GenerateStream was moved from");
  while (Next(nullptr)) {
  }
  if (!state_->status.ok()) return state_->status;
  return *state_->result;
}

absl::Status GenerateStream::status() const {
  if (state_ == nullptr) return absl::FailedPreconditionError("GenerateStream was moved from");
  return state_->status;
}

bool GenerateStream::finished() const { return state_ == nullptr || state_->finished; }

void GenerateStream::Cancel() {
  if (state_ == nullptr) return;
  state_->cancel_requested = true;
  state_->ctx.TryCancel();  // thread-safe; a no-op once the call is over
}

std::string GenerateStream::request_id() const { return state_ == nullptr ? std::string() : state_->request_id; }

::adore::client::GenerateStream Client::GenerateStream(const Prompt& prompt, const GenerateOptions& options) const {
  auto st = std::make_unique<::adore::client::GenerateStream::State>();
  st->client = impl_;
  impl_->Prepare(&st->ctx);
  SetTimeout(&st->ctx, impl_->GenerateTimeout(options));
  st->reader = impl_->stub->Generate(&st->ctx, internal::BuildRequest(prompt, options));
  return ::adore::client::GenerateStream(std::move(st));
}

absl::StatusOr<GenerateResult> Client::Generate(const Prompt& prompt, const GenerateOptions& options) const {
  return GenerateStream(prompt, options).Result();
}

absl::StatusOr<GenerateResult> Client::GenerateWithCallback(const Prompt& prompt, const GenerateOptions& options,
                                                            const std::function<bool(const Delta&)>& on_delta) const {
  ::adore::client::GenerateStream stream = GenerateStream(prompt, options);
  Delta d;
  while (stream.Next(&d)) {
    if (!on_delta(d)) stream.Cancel();  // Next() then returns false with CANCELLED
  }
  return stream.Result();
}

// ---------------------------------------------------------------------------------------------------------
// Unary calls
// ---------------------------------------------------------------------------------------------------------

absl::StatusOr<ModelInfo> Client::GetModelInfo(std::optional<absl::Duration> timeout) const {
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  SetTimeout(&ctx, impl_->UnaryTimeout(timeout));
  v1::ModelInfo info;
  const grpc::Status s = impl_->stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
  if (!s.ok()) return internal::FromGrpcStatus(s);
  return internal::ModelInfoFromProto(info);
}

absl::StatusOr<ServerStats> Client::GetStats(std::optional<absl::Duration> timeout) const {
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  SetTimeout(&ctx, impl_->UnaryTimeout(timeout));
  v1::ServerStats stats;
  const grpc::Status s = impl_->stub->GetStats(&ctx, v1::GetStatsRequest(), &stats);
  if (!s.ok()) return internal::FromGrpcStatus(s);
  return internal::ServerStatsFromProto(stats);
}

absl::StatusOr<ServingStatus> Client::Health(std::string_view service, std::optional<absl::Duration> timeout,
                                             bool wait_for_ready) const {
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  SetTimeout(&ctx, impl_->UnaryTimeout(timeout));
  ctx.set_wait_for_ready(wait_for_ready);
  const std::string body = internal::EncodeHealthCheckRequest(service);
  grpc::Slice slice(body);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  // The generic stub's unary call completes on a gRPC thread; wait for it here. The waiter's state is
  // shared with the callback so that neither outlives what it touches.
  struct Waiter {
    std::mutex mu;
    std::condition_variable cv;
    bool finished = false;
    grpc::Status status;
  };
  auto waiter = std::make_shared<Waiter>();
  impl_->generic->UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                            [waiter](grpc::Status s) {
                              std::lock_guard<std::mutex> lock(waiter->mu);
                              waiter->status = std::move(s);
                              waiter->finished = true;
                              waiter->cv.notify_all();
                            });
  grpc::Status status;
  {
    std::unique_lock<std::mutex> lock(waiter->mu);
    waiter->cv.wait(lock, [&] { return waiter->finished; });
    status = waiter->status;
  }
  if (!status.ok()) return internal::FromGrpcStatus(status);
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return absl::InternalError("grpc.health.v1.Health/Check: unreadable response");
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return internal::DecodeHealthCheckResponse(bytes);
}

absl::Status Client::WaitReady(absl::Duration timeout, std::string_view service) const {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last = "no answer";
  while (true) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrCat(impl_->server.empty() ? "server" : impl_->server, ": ",
                                                      service.empty() ? std::string("server") : std::string(service),
                                                      " not SERVING after ",
                                                      absl::FormatDuration(timeout), " (", last, ")"));
    }
    absl::StatusOr<ServingStatus> s = Health(service, std::min(left, absl::Seconds(5)), /*wait_for_ready=*/true);
    if (s.ok() && *s == ServingStatus::kServing) return absl::OkStatus();
    last = s.ok() ? ServingStatusName(*s) : s.status().ToString();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace adore::client
