// C++ SDK of the ADORE runtime: a client of adore-server's public gRPC API (proto/adore/v1/adore.proto).
//
//   #include "adore/client/client.h"
//
//   adore::client::Client c("127.0.0.1:50051");
//   // Non-streaming: the whole completion.
//   absl::StatusOr<adore::client::GenerateResult> r = c.Generate("The capital of France is", {.max_tokens = 8});
//   if (r.ok()) std::cout << r->text << "\n";
//   // Streaming, with a callback per delta (return false from it to cancel) ...
//   auto s = c.Generate("Once upon a time", {.max_tokens = 32}, [](const adore::client::Delta& d) {
//     std::cout << d.text << std::flush;
//   });
//   // ... or a reader object.
//   adore::client::GenerateStream stream = c.GenerateStream("Once upon a time", {.max_tokens = 32});
//   for (adore::client::Delta d; stream.Next(&d);) std::cout << d.text << std::flush;
//   absl::StatusOr<adore::client::GenerateResult> done = stream.Result();
//
// The names mirror the Python SDK (clients/python, adore_client): Client, GenerateStream, GenerateResult,
// Delta, ModelInfo, ServerStats, Policy, FinishReason, ...; Python's keyword arguments of generate() are the
// fields of GenerateOptions here. The generated protobuf types are not part of this header (the client keeps
// them in its implementation); the gRPC types grpc::Channel and grpc::ChannelCredentials are, for callers
// that bring their own channel or TLS credentials.
//
// Errors are absl::Status values whose code is the call's gRPC status code (absl::StatusCode and
// grpc::StatusCode have the same numbers) and whose message is the server's status message; for a bad
// request it begins with the offending field, e.g. INVALID_ARGUMENT "sampling.temperature: must be in
// [0, 100], got -1". Nothing is range-checked on the client: the server validates every field.
//
// Thread safety: a Client (and its copies, which share one channel) may be used from many threads at once.
// A GenerateStream is read by one thread; Cancel() may be called from any thread while it is alive.
//
// The header needs C++17; the designated initializers in the examples above need C++20.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace grpc {
class Channel;
class ChannelCredentials;
}  // namespace grpc

namespace adore::client {

// host:port the client connects to when given none.
inline constexpr char kDefaultServer[] = "127.0.0.1:50051";
// The health service name that is SERVING once the model is loaded on every worker ("" is the server).
inline constexpr char kAdoreService[] = "adore.v1.Adore";

// ---------------------------------------------------------------------------------------------------------
// Enums (the values of adore.v1's enums; a value newer than this SDK is kept as its number)
// ---------------------------------------------------------------------------------------------------------

// KV release policy (adore.v1.Policy).
enum class Policy : int32_t {
  kUnspecified = 0,  // the server default (ModelInfo::default_release.policy); never returned by the server
  kFull = 1,         // full attention: every token keeps its K/V
  kWindow = 2,       // StreamingLLM: attention sinks plus the most recent tokens
  kHeavyHitter = 3,  // H2O: largest accumulated attention plus a recent window
  kAdore = 4,        // ADORE: a learned controller keeps and rebuilds tokens
};

// Compute backend of the workers (adore.v1.Backend).
enum class Backend : int32_t { kUnspecified = 0, kCpu = 1, kCuda = 2 };

// Why generation ended (adore.v1.FinishReason).
enum class FinishReason : int32_t {
  kUnspecified = 0,
  kStop = 1,    // an end token of the model or one of the stop strings
  kLength = 2,  // max_tokens (or the context length) reached
};

// grpc.health.v1 serving status.
enum class ServingStatus : int32_t { kUnknown = 0, kServing = 1, kNotServing = 2, kServiceUnknown = 3 };

// Upper-case names as in the proto without its prefix ("FULL", "HEAVY_HITTER", "LENGTH", "CPU",
// "SERVING", ...); a value newer than this SDK gives its number.
std::string PolicyName(Policy policy);
std::string BackendName(Backend backend);
std::string FinishReasonName(FinishReason reason);
std::string ServingStatusName(ServingStatus status);

// A policy from its name, case-insensitive, '-' or '_', with or without "POLICY_": "adore", "heavy-hitter",
// "POLICY_WINDOW", ... INVALID_ARGUMENT for anything else (the Python SDK's Policy.parse).
absl::StatusOr<Policy> ParsePolicy(std::string_view name);

// ---------------------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------------------

// One message of a conversation: role "system", "user" or "assistant" (the server checks it).
struct ChatMessage {
  std::string role = {};
  std::string content = {};
};

// The input of a generation: exactly one of raw text (tokenized as is), token ids (fed to the model
// unchanged) or a conversation (rendered by the server with the model's chat template). Text converts
// implicitly: client.Generate("Hello"). A default-constructed Prompt is "no prompt" (the server answers
// INVALID_ARGUMENT "prompt").
class Prompt {
 public:
  enum class Kind { kNone, kText, kTokenIds, kChat };

  Prompt() = default;
  Prompt(std::string text) : kind_(Kind::kText), text_(std::move(text)) {}  // NOLINT: implicit on purpose
  Prompt(const char* text) : Prompt(std::string(text)) {}                   // NOLINT
  Prompt(std::string_view text) : Prompt(std::string(text)) {}              // NOLINT

  static Prompt Text(std::string text) { return Prompt(std::move(text)); }
  static Prompt TokenIds(std::vector<int32_t> ids) {
    Prompt p;
    p.kind_ = Kind::kTokenIds;
    p.token_ids_ = std::move(ids);
    return p;
  }
  static Prompt Chat(std::vector<ChatMessage> messages) {
    Prompt p;
    p.kind_ = Kind::kChat;
    p.messages_ = std::move(messages);
    return p;
  }

  Kind kind() const { return kind_; }
  const std::string& text() const { return text_; }                   // kText
  const std::vector<int32_t>& token_ids() const { return token_ids_; }  // kTokenIds
  const std::vector<ChatMessage>& messages() const { return messages_; }  // kChat

 private:
  Kind kind_ = Kind::kNone;
  std::string text_;
  std::vector<int32_t> token_ids_;
  std::vector<ChatMessage> messages_;
};

// Everything of adore.v1.GenerateRequest besides the prompt, plus the call's deadline. A field left unset
// (std::nullopt, an empty vector or string, Policy::kUnspecified) is left unset on the wire and the server
// applies its default (GetModelInfo reports them). With C++20 designated initializers, name the fields in
// this order: {.max_tokens = 16, .temperature = 0.0f, .stop = {"\n"}, .policy = Policy::kAdore}.
struct GenerateOptions {
  // adore.v1.SamplingParams
  std::optional<int32_t> max_tokens = std::nullopt;  // [1, context - prompt]; unset: default_max_tokens
  std::optional<float> temperature = std::nullopt;   // [0, 100]; 0 = greedy; unset: 0
  std::optional<int32_t> top_k = std::nullopt;       // [0, vocab_size]; 0 = no limit; unset: 0
  std::optional<float> top_p = std::nullopt;         // (0, 1]; unset: 1
  std::optional<uint64_t> seed = std::nullopt;       // unset: the server draws one (GenerateResult::seed)
  std::vector<std::string> stop = {};                // at most 8 stop strings
  // adore.v1.ReleaseParams
  Policy policy = Policy::kUnspecified;
  std::optional<int64_t> kv_budget = std::nullopt;   // KV slots per sequence (m); must be unset for kFull
  std::optional<int64_t> rebuild = std::nullopt;     // released tokens recomputed per step (R), kAdore only
  // Echoed in every response; empty: the server assigns one.
  std::string request_id = {};
  // Deadline of the whole call, counted from its start; the call fails with DEADLINE_EXCEEDED after it
  // (the server then frees the request's KV slots). Unset: ClientOptions::timeout (none by default).
  std::optional<absl::Duration> timeout = std::nullopt;
};

// ---------------------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------------------

// New output of a streaming generation: the tokens sampled since the previous delta and their text. The
// text holds only whole UTF-8 characters, so it may be empty while bytes are held back (a token ending
// inside a character, or text that might begin a stop string); all deltas' text concatenated is the
// completion.
struct Delta {
  std::string text;
  std::vector<int32_t> token_ids;
};

struct Usage {
  int64_t prompt_tokens = 0;      // after tokenization / chat rendering
  int64_t completion_tokens = 0;  // generated tokens, the stop token not included
};

// Wall-clock times measured by the server, in milliseconds.
struct Timing {
  double ttft_ms = 0;   // arrival to the first token
  double total_ms = 0;  // arrival to the end of generation
  double queue_ms = 0;  // arrival to admission into the running batch (part of ttft_ms)
};

// What the release policy did for a request.
struct AdoreStats {
  Policy policy = Policy::kUnspecified;  // the policy applied
  int64_t kv_budget = 0;                 // 0 for kFull
  int64_t rebuild = 0;                   // 0 unless kAdore
  int64_t tokens_released = 0;
  int64_t tokens_rebuilt = 0;
  int64_t kv_slots_in_use = 0;
};

// A finished generation: the whole completion and the server's final report (adore.v1.GenerateDone).
struct GenerateResult {
  std::string request_id;
  std::string text;                // all deltas' text
  std::vector<int32_t> token_ids;  // all deltas' tokens
  FinishReason finish_reason = FinishReason::kUnspecified;
  std::string matched_stop;        // the stop string that ended generation, "" otherwise
  Usage usage;
  Timing timing;
  AdoreStats adore;
  uint64_t seed = 0;               // the seed used (given, or drawn by the server)
};

struct ReleaseParams {
  Policy policy = Policy::kUnspecified;
  std::optional<int64_t> kv_budget = std::nullopt;  // nullopt: unset
  std::optional<int64_t> rebuild = std::nullopt;
};

// The served model, its limits and the server's defaults (adore.v1.ModelInfo).
struct ModelInfo {
  std::string name;
  std::string architecture;
  int32_t vocab_size = 0;
  int32_t context_length = 0;
  int32_t hidden_size = 0;
  int32_t num_layers = 0;
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t tensor_parallel_size = 0;
  Backend backend = Backend::kUnspecified;
  std::string model_sha256;
  ReleaseParams default_release;
  std::vector<Policy> available_policies;
  int64_t min_kv_budget = 0;
  int64_t max_rebuild = 0;
  int32_t default_max_tokens = 0;
  bool chat_template_available = false;
};

// Finished Generate calls by outcome.
struct RequestCounts {
  int64_t ok = 0;
  int64_t invalid_argument = 0;  // INVALID_ARGUMENT or FAILED_PRECONDITION
  int64_t resource_exhausted = 0;
  int64_t unavailable = 0;
  int64_t cancelled = 0;
  int64_t deadline_exceeded = 0;
  int64_t internal = 0;
};

struct WorkerStats {
  int32_t rank = 0;
  std::string address;
  bool healthy = false;
  int64_t steps = 0;
  double last_step_ms = 0;
  double mean_step_ms = 0;
  double p99_step_ms = 0;
  int64_t kv_slots_used = 0;
  int64_t kv_slots_free = 0;
  // Summed over the rank's steps since the server started, ms: the steps and their collectives (tensor
  // parallelism; 0 with one rank). Differences of two GetStats calls give the time per step between them.
  double step_ms_total = 0;
  double comm_ms_total = 0;
  double last_comm_ms = 0;
};

// Counters and gauges of the whole server since it started (adore.v1.ServerStats).
struct ServerStats {
  double uptime_s = 0;
  RequestCounts requests;
  int64_t prompt_tokens_total = 0;
  int64_t completion_tokens_total = 0;
  int64_t active_requests = 0;
  int64_t queued_requests = 0;
  int64_t kv_slots_used = 0;
  int64_t kv_slots_free = 0;
  int64_t tokens_released_total = 0;
  int64_t tokens_rebuilt_total = 0;
  std::vector<WorkerStats> workers;  // one per tensor-parallel rank, by rank
  int64_t slot_map_checks_total = 0;
};

// ---------------------------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------------------------

// A running Generate call (Client::GenerateStream). Read the deltas with Next() as they arrive; Result()
// then gives the GenerateResult (it reads whatever is left first). Cancel() ends the request on the server;
// destroying a stream that is still running cancels it too. Move-only.
class GenerateStream {
 public:
  GenerateStream(GenerateStream&&) noexcept;
  GenerateStream& operator=(GenerateStream&&) noexcept;
  GenerateStream(const GenerateStream&) = delete;
  GenerateStream& operator=(const GenerateStream&) = delete;
  ~GenerateStream();

  // Blocks until the next delta and returns true with it in *delta; false once the stream is over: then
  // status() is OK (the call succeeded; Result() has the final report) or the call's error.
  bool Next(Delta* delta);

  // Reads the rest of the stream (discarding its deltas) and returns the final result, or the error. May
  // be called again; it returns the same.
  absl::StatusOr<GenerateResult> Result();

  // OK while the call runs or after it succeeded; its error once it failed.
  absl::Status status() const;
  // The call is over (Next returned false).
  bool finished() const;

  // Ends the call; the server ends the sequence and frees its KV slots. Next() then returns false with
  // status() CANCELLED (unless the call had already finished). Thread-safe: may be called from another
  // thread while Next() blocks.
  void Cancel();

  // The request id (the caller's or the one the server assigned), once the first message arrived.
  std::string request_id() const;

 private:
  friend class Client;
  struct State;
  explicit GenerateStream(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// ---------------------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------------------

struct ClientOptions {
  // The default deadline of every call. Unset: none for Generate, 30 s for the other calls.
  std::optional<absl::Duration> timeout = std::nullopt;
  // TLS (or other) channel credentials, e.g. grpc::SslCredentials(...); nullptr: as `tls` and
  // `tls_root_certs` say (a plaintext channel by default). Ignored by the constructor taking a channel.
  std::shared_ptr<grpc::ChannelCredentials> credentials = {};
  // TLS to a server started with --tls_cert_file: the server's certificate must chain to the system's
  // root certificates, or to `tls_root_certs` (PEM text, e.g. the contents of the CA file) when given;
  // non-empty `tls_root_certs` implies TLS.
  bool tls = false;
  std::string tls_root_certs = {};
  // Sent on every call as metadata "authorization: Bearer <token>" (adore-server --auth_token_file); empty:
  // none. Also with a channel given by the caller.
  std::string bearer_token = {};
};

// A client of one adore-server. Copies share the channel; all methods are thread-safe.
class Client {
 public:
  // Connects lazily (the first call connects) to host:port.
  explicit Client(std::string server = kDefaultServer, ClientOptions options = {});
  // Uses an existing channel (options.credentials is ignored).
  explicit Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options = {});
  ~Client();
  Client(const Client&);
  Client& operator=(const Client&);
  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;

  // host:port given to the constructor ("" for a channel given by the caller).
  const std::string& server() const;

  // Generates a whole completion and returns it (non-streaming).
  absl::StatusOr<GenerateResult> Generate(const Prompt& prompt, const GenerateOptions& options = {}) const;

  // Streams a completion: calls on_delta for every delta as it arrives (on this thread), then returns the
  // final result (whose text and token_ids are all deltas concatenated), or the error. on_delta returns
  // void, or bool: false cancels the request (the call then returns CANCELLED).
  template <typename F, typename = std::enable_if_t<std::is_invocable_v<F&, const Delta&>>>
  absl::StatusOr<GenerateResult> Generate(const Prompt& prompt, const GenerateOptions& options, F&& on_delta) const {
    if constexpr (std::is_void_v<std::invoke_result_t<F&, const Delta&>>) {
      return GenerateWithCallback(prompt, options, [&on_delta](const Delta& d) {
        on_delta(d);
        return true;
      });
    } else {
      return GenerateWithCallback(prompt, options,
                                  [&on_delta](const Delta& d) { return static_cast<bool>(on_delta(d)); });
    }
  }

  // Starts a generation and returns its stream (see GenerateStream). Never fails here: an error (a bad
  // request, an unreachable server) comes from the stream's Next()/Result().
  ::adore::client::GenerateStream GenerateStream(const Prompt& prompt, const GenerateOptions& options = {}) const;

  // The served model, its limits and the server's defaults. timeout: unset = the client's (30 s).
  absl::StatusOr<ModelInfo> GetModelInfo(std::optional<absl::Duration> timeout = std::nullopt) const;
  // The server's counters and gauges since it started.
  absl::StatusOr<ServerStats> GetStats(std::optional<absl::Duration> timeout = std::nullopt) const;
  // grpc.health.v1 Check: "" is the server, kAdoreService is SERVING once the model is loaded. An unknown
  // service fails with NOT_FOUND. wait_for_ready: wait for the channel to connect instead of failing
  // UNAVAILABLE at once (within the timeout).
  absl::StatusOr<ServingStatus> Health(std::string_view service = "",
                                       std::optional<absl::Duration> timeout = std::nullopt,
                                       bool wait_for_ready = false) const;
  // Waits until `service` reports SERVING; DEADLINE_EXCEEDED (with the last answer) after `timeout`.
  absl::Status WaitReady(absl::Duration timeout = absl::Seconds(60), std::string_view service = kAdoreService) const;

 private:
  struct Impl;
  absl::StatusOr<GenerateResult> GenerateWithCallback(const Prompt& prompt, const GenerateOptions& options,
                                                      const std::function<bool(const Delta&)>& on_delta) const;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace adore::client
