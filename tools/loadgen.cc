#include "tools/loadgen.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <utility>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "adore/v1/adore.grpc.pb.h"
#include "common/status.h"

namespace adore::loadgen {
namespace {

using Clock = std::chrono::steady_clock;

double MsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// gRPC and absl share the canonical code numbering, so absl names the code ("DEADLINE_EXCEEDED").
std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

absl::Status FromGrpc(const grpc::Status& s, absl::string_view what) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(what, ": ", s.error_message()));
}

absl::Status Validate(const LoadOptions& o) {
  auto bad = [](absl::string_view field, absl::string_view rule, auto got) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": must be ", rule, ", got ", got));
  };
  if (o.server.empty()) return absl::InvalidArgumentError("server: must not be empty");
  if (o.requests < 1) return bad("requests", ">= 1", o.requests);
  if (o.concurrency < 1) return bad("concurrency", ">= 1", o.concurrency);
  if (o.prompt_text.empty() && o.prompt_tokens < 1) return bad("prompt_tokens", ">= 1", o.prompt_tokens);
  if (o.max_tokens < 1) return bad("max_tokens", ">= 1", o.max_tokens);
  if (!(o.temperature >= 0.0f && o.temperature <= 100.0f)) return bad("temperature", "in [0, 100]", o.temperature);
  if (o.warmup < 0) return bad("warmup", ">= 0", o.warmup);
  if (!(o.deadline_s >= 0.0)) return bad("deadline_s", ">= 0", o.deadline_s);
  if (o.channels < 0) return bad("channels", ">= 0", o.channels);
  if (!(o.connect_timeout_s >= 0.0)) return bad("connect_timeout_s", ">= 0", o.connect_timeout_s);
  if (!(o.progress_s >= 0.0)) return bad("progress_s", ">= 0", o.progress_s);
  if (o.rounds < 1) return bad("rounds", ">= 1", o.rounds);
  if (o.server_pid < 0) return bad("server_pid", ">= 0", o.server_pid);
  if (!(o.rss_settle_s >= 0.0)) return bad("rss_settle_s", ">= 0", o.rss_settle_s);
  return absl::OkStatus();
}

// GetModelInfo, retried while the server is not up yet (connection refused, or UNAVAILABLE while it
// loads the model) until connect_timeout_s: a benchmark script may start the server and the load
// generator together.
absl::StatusOr<v1::ModelInfo> WaitForModelInfo(v1::Adore::Stub& stub, double timeout_s) {
  const auto give_up = std::chrono::system_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000.0));
  while (true) {
    grpc::ClientContext ctx;
    ctx.set_wait_for_ready(true);  // wait through connection attempts instead of failing on the first
    ctx.set_deadline(std::max(give_up, std::chrono::system_clock::now() + std::chrono::seconds(1)));
    v1::ModelInfo info;
    const grpc::Status s = stub.GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
    if (s.ok()) return info;
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE || std::chrono::system_clock::now() >= give_up) {
      return FromGrpc(s, "GetModelInfo");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
}

absl::StatusOr<v1::ServerStats> FetchStats(v1::Adore::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ServerStats stats;
  const grpc::Status s = stub.GetStats(&ctx, v1::GetStatsRequest(), &stats);
  if (!s.ok()) return FromGrpc(s, "GetStats");
  return stats;
}

class Runner;

// gRPC runs a reactor's reactions one at a time, each after the operation that asked for it was started, but
// it orders them with its own synchronization (absl::Mutex, atomics), which ThreadSanitizer does not see in a
// gRPC built without it (Debian's): to TSan, a reaction on one of gRPC's threads would race with the thread
// that started the call or ran the previous reaction. These two state that order for the reactor's fields
// (tools/sanitize.sh tsan); they compile to nothing in other builds.
#if defined(__SANITIZE_THREAD__)
#define ADORE_LOADGEN_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ADORE_LOADGEN_TSAN 1
#endif
#endif
#ifdef ADORE_LOADGEN_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
void StartsOperation(void* reactor) { __tsan_release(reactor); }  // before an operation is started
void ReactionBegins(void* reactor) { __tsan_acquire(reactor); }  // first thing in every reaction
#else
void StartsOperation(void*) {}
void ReactionBegins(void*) {}
#endif

// One Generate stream on the callback API: gRPC's own threads deliver the messages, so hundreds of
// streams in flight cost no thread each. Timestamps are taken in OnReadDone, when the message is handed
// to the client.
//
// The stream is read as raw bytes through the generic stub (the wire is the same as the generated
// server-streaming stub's: one request message, then half-close) and parsed here, because a typed
// reader that fails to parse a message (e.g. invalid UTF-8 in TokenDelta.text, which proto3 rejects)
// ends its reads without ending the call: the client would then wait for a status that never comes.
// Here such a message makes the request an error and the stream is read on to its end.
class StreamCall final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  StreamCall(Runner* runner, RequestRecord* record, bool keep_output)
      : runner_(runner), record_(record), keep_output_(keep_output) {}

  void Start(grpc::GenericStub& stub, const v1::GenerateRequest& request, double deadline_s) {
    const std::string bytes = request.SerializeAsString();
    grpc::Slice slice(bytes);
    request_ = grpc::ByteBuffer(&slice, 1);
    if (deadline_s > 0.0) {
      ctx_.set_deadline(std::chrono::system_clock::now() +
                        std::chrono::microseconds(static_cast<int64_t>(deadline_s * 1e6)));
    }
    start_ = Clock::now();
    stub.PrepareBidiStreamingCall(&ctx_, GenerateMethod(), grpc::StubOptions(), this);
    StartWriteLast(&request_, grpc::WriteOptions());
    StartRead(&response_);
    StartsOperation(this);
    StartCall();
  }

  // "/adore.v1.Adore/Generate", the method's path on the wire.
  static const std::string& GenerateMethod() {
    static const std::string* method = new std::string(absl::StrCat("/", v1::Adore::service_full_name(), "/Generate"));
    return *method;
  }

  void OnWriteDone(bool) override {}  // a request that could not be sent shows in the final status
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

  Clock::time_point start() const { return start_; }
  Clock::time_point end() const { return end_; }

 private:
  Runner* runner_;
  RequestRecord* record_;
  const bool keep_output_;
  grpc::ClientContext ctx_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
  v1::GenerateResponse message_;
  Clock::time_point start_, end_, last_token_;
  bool got_done_ = false;
  v1::GenerateDone done_;
  std::string fault_;  // the first breach of the stream protocol (adore.proto, Generate)
};

// Keeps `concurrency` streams in flight: the calling thread starts a new one whenever one ends, and
// prints progress while it waits.
class Runner {
 public:
  Runner(const LoadOptions& options, std::vector<std::unique_ptr<grpc::GenericStub>> stubs, v1::ModelInfo model)
      : options_(options), stubs_(std::move(stubs)), model_(std::move(model)) {}

  // Runs `n` requests of `phase` (0 warmup, 1 measured); fills `records` (n, by index, marked with
  // `round`) and returns the wall time from the first call's start to the last one's end.
  double RunPhase(int phase, int32_t n, std::vector<RequestRecord>* records, int32_t round = 1) {
    records->assign(n, RequestRecord());
    for (RequestRecord& r : *records) r.round = round;
    std::vector<std::unique_ptr<StreamCall>> calls(n);
    tokens_ = 0;
    const Clock::time_point t0 = Clock::now();
    Clock::time_point next_progress = t0 + ProgressInterval();
    int32_t next = 0;
    std::unique_lock<std::mutex> lock(mu_);
    finished_ = 0;
    in_flight_ = 0;
    while (finished_ < n) {
      while (in_flight_ < options_.concurrency && next < n) {
        const int32_t i = next++;
        ++in_flight_;
        (*records)[i].index = i;
        calls[i] = std::make_unique<StreamCall>(this, &(*records)[i], options_.keep_output);
        // Built and started outside the lock: the calls in flight report to OnCallDone (which takes it)
        // from gRPC's threads meanwhile, and a long prompt should not hold them up.
        lock.unlock();
        calls[i]->Start(*stubs_[i % stubs_.size()], MakeRequest(phase, i), options_.deadline_s);
        lock.lock();
      }
      auto can_act = [this, n, &next] { return finished_ == n || (in_flight_ < options_.concurrency && next < n); };
      if (options_.progress_s > 0.0) {
        const auto wait = std::chrono::duration_cast<std::chrono::microseconds>(next_progress - Clock::now());
        cv_.wait_for(lock, std::max(wait, std::chrono::microseconds(0)), can_act);
        if (Clock::now() >= next_progress) {
          const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
          std::fprintf(stderr, "adore-loadgen: %s %d/%d done, %d in flight, %lld tokens out, %.1f tok/s\n",
                       phase == 0 ? "warmup" : "measure", finished_, n, in_flight_,
                       static_cast<long long>(tokens_.load()), tokens_.load() / std::max(elapsed, 1e-9));
          next_progress = Clock::now() + ProgressInterval();
        }
      } else {
        cv_.wait(lock, can_act);
      }
    }
    // Every call has reported from OnDone, its last touch of the reactor: the reactors can go.
    Clock::time_point first = calls[0]->start(), last = calls[0]->end();
    for (const auto& c : calls) {
      first = std::min(first, c->start());
      last = std::max(last, c->end());
    }
    return std::chrono::duration<double>(last - first).count();
  }

  void AddTokens(int n) { tokens_.fetch_add(n, std::memory_order_relaxed); }

  void OnCallDone() {
    std::lock_guard<std::mutex> lock(mu_);
    ++finished_;
    --in_flight_;
    cv_.notify_all();  // under the lock: once it is released, the last call's RunPhase may return
  }

 private:
  Clock::duration ProgressInterval() const {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options_.progress_s));
  }

  v1::GenerateRequest MakeRequest(int phase, int32_t i) const {
    v1::GenerateRequest r;
    r.set_request_id(absl::StrFormat("loadgen-%s-%d", phase == 0 ? "warmup" : "req", i));
    if (!options_.prompt_text.empty()) {
      r.set_text(options_.prompt_text);
    } else {
      const std::vector<int32_t> ids =
          RandomPrompt(options_.seed, phase, i, options_.prompt_tokens, model_.vocab_size());
      r.mutable_token_ids()->mutable_ids()->Add(ids.begin(), ids.end());
    }
    v1::SamplingParams* s = r.mutable_sampling();
    s->set_max_tokens(options_.max_tokens);
    s->set_temperature(options_.temperature);
    if (options_.temperature > 0.0f) s->set_seed(options_.seed + static_cast<uint64_t>(i) + (phase == 0 ? 1ull << 32 : 0));
    if (options_.policy || options_.kv_budget || options_.rebuild) {
      v1::ReleaseParams* rel = r.mutable_release();
      if (options_.policy) rel->set_policy(*options_.policy);
      if (options_.kv_budget) rel->set_kv_budget(*options_.kv_budget);
      if (options_.rebuild) rel->set_rebuild(*options_.rebuild);
    }
    return r;
  }

  const LoadOptions& options_;
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs_;
  const v1::ModelInfo model_;
  std::atomic<int64_t> tokens_{0};
  // std::mutex, not absl::Mutex: ThreadSanitizer sees the former's pthread calls, not the latter's futex waits
  // in an Abseil built without it (Debian's; tools/sanitize.sh).
  std::mutex mu_;
  std::condition_variable cv_;
  int32_t finished_ = 0;   // guarded by mu_
  int32_t in_flight_ = 0;  // guarded by mu_
};

void StreamCall::OnReadDone(bool ok) {
  ReactionBegins(this);
  if (!ok) return;  // the stream has ended; OnDone follows with its status
  const Clock::time_point now = Clock::now();
  bool parsed = false;
  {
    grpc::ProtoBufferReader reader(&response_);
    parsed = message_.ParseFromZeroCopyStream(&reader);
  }
  if (!parsed) {
    if (fault_.empty()) fault_ = "a message that does not parse as GenerateResponse (invalid UTF-8 in a string?)";
    StartsOperation(this);
    StartRead(&response_);
    return;
  }
  const v1::GenerateResponse& m = message_;
  if (got_done_ && fault_.empty()) fault_ = "a message after done";
  if (m.has_delta()) {
    const int n = m.delta().token_ids_size();
    if (n == 0) {
      if (fault_.empty()) fault_ = "a delta without tokens";
    } else {
      if (record_->output_tokens == 0) {
        record_->ttft_ms = MsBetween(start_, now);
      } else {
        // A delta carrying several tokens (the client read slower than the server produced) spreads
        // its gap evenly over them, so the per-token figure stays comparable.
        const double per_token = MsBetween(last_token_, now) / n;
        record_->itl_ms.insert(record_->itl_ms.end(), n, per_token);
      }
      last_token_ = now;
      record_->output_tokens += n;
      if (keep_output_) {
        record_->tokens.insert(record_->tokens.end(), m.delta().token_ids().begin(), m.delta().token_ids().end());
        record_->text += m.delta().text();
      }
      runner_->AddTokens(n);
    }
  } else if (m.has_done()) {
    if (got_done_ && fault_.empty()) fault_ = "two done messages";
    got_done_ = true;
    done_ = m.done();
  } else if (fault_.empty()) {
    fault_ = "a message with neither delta nor done";
  }
  StartsOperation(this);
  StartRead(&response_);
}

void StreamCall::OnDone(const grpc::Status& status) {
  ReactionBegins(this);
  end_ = Clock::now();
  RequestRecord& r = *record_;
  r.code = status.error_code();
  r.latency_ms = MsBetween(start_, end_);
  if (!status.ok()) {
    r.error = absl::StrCat(CodeName(status.error_code()), ": ", status.error_message());
  } else if (!fault_.empty()) {
    r.error = absl::StrCat("protocol: ", fault_);
  } else if (!got_done_) {
    r.error = "protocol: status OK without a done message";
  } else if (done_.usage().completion_tokens() != r.output_tokens) {
    r.error = absl::StrFormat("protocol: done.usage.completion_tokens %d, but the deltas carried %d tokens",
                              done_.usage().completion_tokens(), r.output_tokens);
  } else {
    r.ok = true;
  }
  if (got_done_) {
    r.prompt_tokens = done_.usage().prompt_tokens();
    r.finish_reason = done_.finish_reason();
    r.adore = done_.adore();
    r.server_ttft_ms = done_.timing().ttft_ms();
  }
  runner_->OnCallDone();  // must be the last use of this object: the runner may delete it from now on
}

double Interpolated(const std::vector<double>& sorted, double q) {
  const double rank = q * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - static_cast<double>(lo));
}

nlohmann::json OrNull(double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); }

std::string BackendName(v1::Backend b) {
  switch (b) {
    case v1::BACKEND_CPU: return "cpu";
    case v1::BACKEND_CUDA: return "cuda";
    default: return "unknown";
  }
}

std::string Ms(const Percentiles& p) {
  if (p.count == 0) return "no samples";
  return absl::StrFormat("p50 %.2f  p90 %.2f  p99 %.2f  (%d samples)", p.p50, p.p90, p.p99, p.count);
}

}  // namespace

absl::StatusOr<ProcessStatus> ReadProcessStatus(int64_t pid) {
  const std::string path = absl::StrFormat("/proc/%d/status", pid);
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  char line[256];
  long long kb = -1, threads = 0;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::sscanf(line, "VmRSS: %lld kB", &kb) == 1) continue;
    std::sscanf(line, "Threads: %lld", &threads);
  }
  std::fclose(f);
  if (kb < 0) return absl::NotFoundError(absl::StrCat(path, ": no VmRSS line"));
  return ProcessStatus{.rss_kb = kb, .threads = threads};
}

Percentiles ComputePercentiles(std::vector<double> samples) {
  Percentiles p;
  p.count = static_cast<int64_t>(samples.size());
  if (samples.empty()) {
    p.p50 = p.p90 = p.p99 = std::numeric_limits<double>::quiet_NaN();
    return p;
  }
  std::sort(samples.begin(), samples.end());
  p.p50 = Interpolated(samples, 0.50);
  p.p90 = Interpolated(samples, 0.90);
  p.p99 = Interpolated(samples, 0.99);
  return p;
}

std::vector<int32_t> RandomPrompt(uint64_t seed, int phase, int32_t index, int32_t length, int32_t vocab_size) {
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), static_cast<uint32_t>(phase),
                    static_cast<uint32_t>(index)};
  std::mt19937_64 rng(seq);
  std::uniform_int_distribution<int32_t> dist(0, vocab_size - 1);
  std::vector<int32_t> ids(length);
  for (int32_t& id : ids) id = dist(rng);
  return ids;
}

absl::StatusOr<v1::Policy> ParsePolicy(absl::string_view name) {
  if (name == "full") return v1::POLICY_FULL;
  if (name == "window") return v1::POLICY_WINDOW;
  if (name == "heavy_hitter") return v1::POLICY_HEAVY_HITTER;
  if (name == "adore") return v1::POLICY_ADORE;
  return absl::InvalidArgumentError(
      absl::StrCat("policy: '", name, "' is not one of full, window, heavy_hitter, adore"));
}

std::string PolicyName(v1::Policy policy) {
  switch (policy) {
    case v1::POLICY_FULL: return "full";
    case v1::POLICY_WINDOW: return "window";
    case v1::POLICY_HEAVY_HITTER: return "heavy_hitter";
    case v1::POLICY_ADORE: return "adore";
    default: return "unspecified";
  }
}

ServerCounters CountersBetween(const v1::ServerStats& before, const v1::ServerStats& after) {
  ServerCounters c;
  if (before.workers_size() == 0 || after.workers_size() == 0) return c;
  c.steps = 0;
  for (const v1::WorkerStats& a : after.workers()) {
    v1::WorkerStats b;  // a rank that had no entry before: zeros
    for (const v1::WorkerStats& x : before.workers()) {
      if (x.rank() == a.rank()) b = x;
    }
    const int64_t steps = a.steps() - b.steps();
    c.steps = std::max(c.steps, steps);
    if (steps <= 0) continue;
    c.step_ms_mean = std::max(c.step_ms_mean, (a.step_ms_total() - b.step_ms_total()) / static_cast<double>(steps));
    c.comm_ms_per_step =
        std::max(c.comm_ms_per_step, (a.comm_ms_total() - b.comm_ms_total()) / static_cast<double>(steps));
  }
  c.slot_map_checks = after.slot_map_checks_total() - before.slot_map_checks_total();
  return c;
}

absl::StatusOr<LoadReport> RunLoad(const LoadOptions& options) {
  ADORE_RETURN_IF_ERROR(Validate(options));
  const int32_t channels = options.channels > 0 ? options.channels : (options.concurrency + 63) / 64;
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  std::unique_ptr<v1::Adore::Stub> info_stub;
  for (int32_t c = 0; c < channels; ++c) {
    grpc::ChannelArguments args;
    // A channel of its own subchannel pool opens its own connection instead of sharing the first one's.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto channel = grpc::CreateCustomChannel(options.server, grpc::InsecureChannelCredentials(), args);
    if (c == 0) info_stub = v1::Adore::NewStub(channel);
    stubs.push_back(std::make_unique<grpc::GenericStub>(channel));
  }
  LoadReport report;
  ADORE_ASSIGN_OR_RETURN(report.model, WaitForModelInfo(*info_stub, options.connect_timeout_s));
  if (options.prompt_text.empty()) {
    // Checked here so that a run that cannot fit says so once instead of failing every request.
    const int64_t context = report.model.context_length();
    if (options.prompt_tokens > context - 1) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "prompt_tokens: must be at most context_length - 1 = %d for this model, got %d", context - 1,
          options.prompt_tokens));
    }
    if (options.max_tokens > context - options.prompt_tokens) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "max_tokens: must be at most context_length - prompt_tokens = %d for this model, got %d",
          context - options.prompt_tokens, options.max_tokens));
    }
  }

  Runner runner(options, std::move(stubs), report.model);
  // The server's status once it has settled (its thread count steady for 0.5 s, at most rss_settle_s), or
  // -1s without a pid; a pid that cannot be read fails the run.
  auto server_status = [&]() -> absl::StatusOr<ProcessStatus> {
    if (options.server_pid == 0) return ProcessStatus{.rss_kb = -1, .threads = -1};
    const auto give_up = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(options.rss_settle_s));
    ADORE_ASSIGN_OR_RETURN(ProcessStatus s, ReadProcessStatus(options.server_pid));
    auto steady_since = Clock::now();
    while (Clock::now() < give_up && Clock::now() - steady_since < std::chrono::milliseconds(500)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      ADORE_ASSIGN_OR_RETURN(ProcessStatus now, ReadProcessStatus(options.server_pid));
      if (now.threads != s.threads) steady_since = Clock::now();
      s = now;
    }
    return s;
  };
  if (options.warmup > 0) {
    std::vector<RequestRecord> warmup;
    runner.RunPhase(0, options.warmup, &warmup);
    for (const RequestRecord& r : warmup) report.warmup_errors += r.ok ? 0 : 1;
    for (const RequestRecord& r : warmup) {
      if (!r.ok) {
        report.first_warmup_error = absl::StrFormat("warmup request %d: %s", r.index, r.error);
        break;
      }
    }
  }
  ADORE_ASSIGN_OR_RETURN(const ProcessStatus before, server_status());
  report.server_rss_kb_after_warmup = before.rss_kb;
  // A server that does not answer GetStats (an older one, or one behind an auth token) only leaves these out.
  const absl::StatusOr<v1::ServerStats> stats_before = FetchStats(*info_stub);
  for (int32_t round = 1; round <= options.rounds; ++round) {
    std::vector<RequestRecord> records;
    RoundReport rr;
    rr.round = round;
    rr.wall_s = runner.RunPhase(1, options.requests, &records, round);
    ADORE_ASSIGN_OR_RETURN(const ProcessStatus after, server_status());
    rr.server_rss_kb = after.rss_kb;
    rr.server_threads = after.threads;
    std::vector<double> ttft;
    for (const RequestRecord& r : records) {
      ++(r.ok ? rr.ok : rr.errors);
      if (r.ok && r.ttft_ms >= 0.0) ttft.push_back(r.ttft_ms);
    }
    rr.ttft_ms = ComputePercentiles(std::move(ttft));
    report.wall_s += rr.wall_s;
    report.rounds.push_back(rr);
    report.records.insert(report.records.end(), std::make_move_iterator(records.begin()),
                          std::make_move_iterator(records.end()));
  }

  if (const absl::StatusOr<v1::ServerStats> stats_after = FetchStats(*info_stub); stats_before.ok() && stats_after.ok()) {
    report.server = CountersBetween(*stats_before, *stats_after);
  }
  report.requests = options.requests * options.rounds;
  std::vector<double> ttft, itl, latency, server_ttft;
  const RequestRecord* first_ok = nullptr;
  for (const RequestRecord& r : report.records) {
    if (!r.ok) {
      ++report.errors;
      continue;
    }
    ++report.ok;
    if (first_ok == nullptr) first_ok = &r;
    report.input_tokens += r.prompt_tokens;
    report.output_tokens += r.output_tokens;
    if (r.finish_reason == v1::FINISH_REASON_LENGTH) ++report.finished_length;
    if (r.finish_reason == v1::FINISH_REASON_STOP) ++report.finished_stop;
    if (r.ttft_ms >= 0.0) ttft.push_back(r.ttft_ms);
    itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
    latency.push_back(r.latency_ms);
    server_ttft.push_back(r.server_ttft_ms);
  }
  report.ttft_ms = ComputePercentiles(std::move(ttft));
  report.itl_ms = ComputePercentiles(std::move(itl));
  report.latency_ms = ComputePercentiles(std::move(latency));
  report.server_ttft_ms = ComputePercentiles(std::move(server_ttft));
  if (report.wall_s > 0.0) {
    report.input_tok_s = static_cast<double>(report.input_tokens) / report.wall_s;
    report.output_tok_s = static_cast<double>(report.output_tokens) / report.wall_s;
  }
  if (report.ok > 0) {
    report.mean_output_tokens = static_cast<double>(report.output_tokens) / report.ok;
    report.mean_prompt_tokens = static_cast<double>(report.input_tokens) / report.ok;
  }
  if (first_ok != nullptr) {
    report.policy = PolicyName(first_ok->adore.policy());
    report.kv_budget = first_ok->adore.kv_budget();
    report.rebuild = first_ok->adore.rebuild();
  } else {
    const v1::ReleaseParams& d = report.model.default_release();
    report.policy = PolicyName(options.policy.value_or(d.policy()));
    report.kv_budget = options.kv_budget.value_or(d.kv_budget());
    report.rebuild = options.rebuild.value_or(d.rebuild());
  }
  return report;
}

std::string FormatSummary(const LoadOptions& options, const LoadReport& r) {
  std::string out;
  absl::StrAppendFormat(&out, "server       %s: %s (%s, tensor parallel %d)\n", options.server, r.model.name(),
                        BackendName(r.model.backend()), r.model.tensor_parallel_size());
  absl::StrAppendFormat(&out, "release      %s, kv_budget %d, rebuild %d\n", r.policy, r.kv_budget, r.rebuild);
  absl::StrAppendFormat(&out, "requests     %d ok, %d failed of %d (concurrency %d; %d warmup not counted",
                        r.ok, r.errors, r.requests, options.concurrency, options.warmup);
  if (r.warmup_errors > 0) absl::StrAppendFormat(&out, ", %d of them failed", r.warmup_errors);
  out += ")\n";
  if (options.prompt_text.empty()) {
    absl::StrAppendFormat(&out, "prompt       %d random token ids (seed %d), max_tokens %d, temperature %g\n",
                          options.prompt_tokens, options.seed, options.max_tokens, options.temperature);
  } else {
    absl::StrAppendFormat(&out, "prompt       text of %.1f tokens, max_tokens %d, temperature %g\n",
                          r.mean_prompt_tokens, options.max_tokens, options.temperature);
  }
  absl::StrAppendFormat(&out, "wall         %.3f s\n", r.wall_s);
  absl::StrAppendFormat(&out, "throughput   output %.1f tok/s, input %.1f tok/s, %.2f requests/s\n", r.output_tok_s,
                        r.input_tok_s, r.wall_s > 0.0 ? r.ok / r.wall_s : 0.0);
  absl::StrAppendFormat(&out, "ttft ms      %s\n", Ms(r.ttft_ms));
  absl::StrAppendFormat(&out, "itl ms       %s\n", Ms(r.itl_ms));
  absl::StrAppendFormat(&out, "latency ms   %s\n", Ms(r.latency_ms));
  absl::StrAppendFormat(&out, "server ttft  %s\n", Ms(r.server_ttft_ms));
  absl::StrAppendFormat(&out, "tokens/req   %.1f mean (finished: %d length, %d stop)\n", r.mean_output_tokens,
                        r.finished_length, r.finished_stop);
  if (r.server.steps > 0) {
    absl::StrAppendFormat(&out, "server       %d steps, %.3f ms mean, collectives %.3f ms/step, %d slot-map checks\n",
                          r.server.steps, r.server.step_ms_mean, r.server.comm_ms_per_step, r.server.slot_map_checks);
  }
  if (options.rounds > 1 || options.server_pid > 0) {
    if (r.server_rss_kb_after_warmup >= 0) {
      absl::StrAppendFormat(&out, "server rss   %d kB before round 1\n", r.server_rss_kb_after_warmup);
    }
    for (const RoundReport& rr : r.rounds) {
      absl::StrAppendFormat(&out, "round %-6d %d ok, %d failed, wall %.3f s, ttft ms p50 %.2f p99 %.2f", rr.round,
                            rr.ok, rr.errors, rr.wall_s, rr.ttft_ms.p50, rr.ttft_ms.p99);
      if (rr.server_rss_kb >= 0) {
        absl::StrAppendFormat(&out, ", server rss %d kB (%d threads)", rr.server_rss_kb, rr.server_threads);
      }
      out += "\n";
    }
  }
  return out;
}

nlohmann::json ReportRow(const LoadOptions& o, const LoadReport& r, const std::string& label) {
  nlohmann::json row;
  row["model"] = r.model.name();
  row["backend"] = BackendName(r.model.backend());
  row["tp"] = r.model.tensor_parallel_size();
  row["server"] = o.server;
  row["requests"] = r.requests;
  row["concurrency"] = o.concurrency;
  row["warmup"] = o.warmup;
  // Random prompts: the length asked for; a text prompt: its length in tokens as the server counted it.
  if (o.prompt_text.empty()) {
    row["prompt_tokens"] = o.prompt_tokens;
  } else {
    row["prompt_tokens"] = r.ok > 0 ? nlohmann::json(std::lround(r.mean_prompt_tokens)) : nlohmann::json(nullptr);
  }
  row["prompt"] = o.prompt_text.empty() ? "random_ids" : "text";
  row["max_tokens"] = o.max_tokens;
  row["temperature"] = o.temperature;
  row["ok"] = r.ok;
  row["errors"] = r.errors;
  row["warmup_errors"] = r.warmup_errors;
  row["wall_s"] = r.wall_s;
  row["output_tok_s"] = r.output_tok_s;
  row["input_tok_s"] = r.input_tok_s;
  row["ttft_ms_p50"] = OrNull(r.ttft_ms.p50);
  row["ttft_ms_p90"] = OrNull(r.ttft_ms.p90);
  row["ttft_ms_p99"] = OrNull(r.ttft_ms.p99);
  row["itl_ms_p50"] = OrNull(r.itl_ms.p50);
  row["itl_ms_p90"] = OrNull(r.itl_ms.p90);
  row["itl_ms_p99"] = OrNull(r.itl_ms.p99);
  row["latency_ms_p50"] = OrNull(r.latency_ms.p50);
  row["latency_ms_p90"] = OrNull(r.latency_ms.p90);
  row["latency_ms_p99"] = OrNull(r.latency_ms.p99);
  row["server_ttft_ms_p50"] = OrNull(r.server_ttft_ms.p50);
  row["mean_output_tokens"] = r.mean_output_tokens;
  row["finished_length"] = r.finished_length;
  row["finished_stop"] = r.finished_stop;
  row["policy"] = r.policy;
  row["kv_budget"] = r.kv_budget;
  row["rebuild"] = r.rebuild;
  row["label"] = label;
  const bool counted = r.server.steps >= 0;
  row["steps"] = counted ? nlohmann::json(r.server.steps) : nlohmann::json(nullptr);
  row["step_ms_mean"] = counted && r.server.steps > 0 ? nlohmann::json(r.server.step_ms_mean) : nlohmann::json(nullptr);
  row["comm_ms_per_step"] =
      counted && r.server.steps > 0 ? nlohmann::json(r.server.comm_ms_per_step) : nlohmann::json(nullptr);
  row["slot_map_checks"] = counted ? nlohmann::json(r.server.slot_map_checks) : nlohmann::json(nullptr);
  if (o.rounds > 1 || o.server_pid > 0) {
    row["rounds"] = o.rounds;
    row["requests_per_round"] = o.requests;
    row["server_rss_kb_after_warmup"] =
        r.server_rss_kb_after_warmup >= 0 ? nlohmann::json(r.server_rss_kb_after_warmup) : nlohmann::json(nullptr);
    nlohmann::json rounds = nlohmann::json::array();
    for (const RoundReport& rr : r.rounds) {
      rounds.push_back({{"round", rr.round},
                        {"ok", rr.ok},
                        {"errors", rr.errors},
                        {"wall_s", rr.wall_s},
                        {"ttft_ms_p50", OrNull(rr.ttft_ms.p50)},
                        {"ttft_ms_p99", OrNull(rr.ttft_ms.p99)},
                        {"server_rss_kb", rr.server_rss_kb >= 0 ? nlohmann::json(rr.server_rss_kb) : nlohmann::json(nullptr)},
                        {"server_threads", rr.server_threads >= 0 ? nlohmann::json(rr.server_threads) : nlohmann::json(nullptr)}});
    }
    row["per_round"] = rounds;
  }
  return row;
}

}  // namespace adore::loadgen
