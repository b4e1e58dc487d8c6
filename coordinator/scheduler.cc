// Scheduler: continuous batching over a StepRunner.
#include "coordinator/scheduler.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_format.h"
#include "common/status.h"

namespace adore {

namespace {
using Clock = std::chrono::steady_clock;
double MsSince(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }
double SecondsBetween(Clock::time_point t0, Clock::time_point t1) {
  return std::chrono::duration<double>(t1 - t0).count();
}

// Histogram buckets (seconds): TTFT spans a queued prompt on a busy CPU; inter-token and step times span
// a GPU decode step (~ms) to a CPU prefill chunk.
const std::vector<double> kTtftBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
const std::vector<double> kStepBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                          0.1,    0.25,  0.5,    1,     2.5,  5,     10};
const std::vector<double> kRequestBuckets = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
}  // namespace

LocalStepRunner::LocalStepRunner(Engine& engine, const StepExecutorOptions& options, bool pipelined)
    : executor_(engine, options), pipelined_(pipelined) {
  if (pipelined_) thread_ = std::thread([this] { Run(); });
}

LocalStepRunner::~LocalStepRunner() {
  if (!pipelined_) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

absl::StatusOr<WorkerStepResult> LocalStepRunner::Step(const WorkerStep& step) {
  if (!pipelined_) return executor_.Step(step);
  Submit(step);
  return Wait();
}

void LocalStepRunner::Submit(const WorkerStep& step) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    steps_.push_back(step);
  }
  cv_.notify_all();
}

absl::StatusOr<WorkerStepResult> LocalStepRunner::Wait() {
  if (!pipelined_) return absl::FailedPreconditionError("the runner is not pipelined");
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !results_.empty() || (steps_.empty() && !busy_); });
  if (results_.empty()) return absl::FailedPreconditionError("Wait without a submitted step");
  absl::StatusOr<WorkerStepResult> r = std::move(results_.front());
  results_.pop_front();
  return r;
}

void LocalStepRunner::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || !steps_.empty(); });
    if (steps_.empty()) return;  // stopping, and every submitted step has run
    WorkerStep step = std::move(steps_.front());
    steps_.pop_front();
    busy_ = true;
    lock.unlock();
    absl::StatusOr<WorkerStepResult> r = executor_.Step(step);
    lock.lock();
    busy_ = false;
    results_.push_back(std::move(r));
    cv_.notify_all();
  }
}

struct Scheduler::Request {
  uint64_t id = 0;
  GenerateOptions opts;
  StreamCallback callback;
  std::unique_ptr<StreamDecoder> decoder;
  int64_t rows = 0;              // KV rows reserved while admitted
  bool started = false;          // prompt sent to the runner
  int in_flight = 0;             // pipelined runner: submitted steps with this sequence, results not yet handled
  int32_t last = -1;             // token to feed next step
  int64_t generated = 0;
  std::string held;              // decoded text not yet streamed (may begin a stop string)
  std::vector<int32_t> held_tokens;
  ReleaseStats release_stats;
  int64_t kv_slots = 0;
  Clock::time_point t0;
  Clock::time_point last_token_at;  // when the previous token was sampled (inter-token latency)
  double ttft_ms = 0.0;
  double queue_ms = 0.0;         // submit to admission
  bool failed = false;
};

Scheduler::Scheduler(StepRunner& runner, const Tokenizer& tokenizer, const SchedulerOptions& options)
    : runner_(runner), tokenizer_(tokenizer), options_(options) {
  stats_.ttft_s = Histogram(kTtftBuckets);
  stats_.inter_token_s = Histogram(kStepBuckets);
  stats_.request_s = Histogram(kRequestBuckets);
  thread_ = std::thread([this] { Loop(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

int64_t Scheduler::RowsNeeded(const GenerateOptions& r) const {
  const int64_t full = static_cast<int64_t>(r.prompt.size()) + r.max_tokens;
  return r.release.kind == PolicyKind::kFull ? full : std::min(full, r.release.kv_budget);
}

absl::StatusOr<uint64_t> Scheduler::Submit(GenerateOptions request, StreamCallback callback) {
  absl::StatusOr<uint64_t> id = Enqueue(std::move(request), std::move(callback));
  if (!id.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.rejected;
  }
  return id;
}

absl::StatusOr<uint64_t> Scheduler::Enqueue(GenerateOptions request, StreamCallback callback) {
  if (request.prompt.empty()) return absl::InvalidArgumentError("prompt: must not be empty");
  const int64_t max_tokens_limit = options_.max_tokens_limit > 0 ? options_.max_tokens_limit : options_.max_context;
  if (request.max_tokens < 1 || request.max_tokens > max_tokens_limit) {
    return absl::InvalidArgumentError(
        absl::StrFormat("max_tokens: must be in [1, %d], got %d", max_tokens_limit, request.max_tokens));
  }
  ADORE_RETURN_IF_ERROR(request.sampling.Validate());
  ADORE_RETURN_IF_ERROR(request.release.Validate(options_.max_context));
  for (const std::string& s : request.stop) {
    if (s.empty()) return absl::InvalidArgumentError("stop: stop strings must not be empty");
  }
  const int64_t total = static_cast<int64_t>(request.prompt.size()) + request.max_tokens;
  if (total > options_.max_context) {
    return absl::OutOfRangeError(absl::StrFormat(
        "prompt (%d tokens) + max_tokens (%d) = %d exceeds the model's context of %d tokens", request.prompt.size(),
        request.max_tokens, total, options_.max_context));
  }
  const int64_t rows = RowsNeeded(request);
  if (rows > options_.kv_rows) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the request needs %d KV rows, more than the server holds (%d); lower max_tokens or set a kv_budget", rows,
        options_.kv_rows));
  }
  auto r = std::make_unique<Request>();
  r->opts = std::move(request);
  r->callback = std::move(callback);
  r->decoder = std::make_unique<StreamDecoder>(tokenizer_);
  r->rows = rows;
  r->t0 = Clock::now();
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (static_cast<int64_t>(queue_.size()) >= options_.max_queue) {
      return absl::ResourceExhaustedError(absl::StrFormat("the request queue is full (%d waiting)", queue_.size()));
    }
    id = r->id = next_id_++;
    ++stats_.submitted;
    queue_.push_back(std::move(r));
  }
  cv_.notify_all();
  return id;
}

void Scheduler::Cancel(uint64_t id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_.push_back(id);
  }
  cv_.notify_all();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  SchedulerStats out = stats_;
  out.queued = static_cast<int64_t>(queue_.size());  // Submit adds between steps
  return out;
}

void Scheduler::Finish(Request& r, absl::Status status, const std::string& reason, const std::string& matched_stop) {
  StreamEvent e;
  if (status.ok()) {  // whatever was held back (stop-string prefixes, an unfinished character) is output
    e.text = std::move(r.held);
    // After a stop string the rest of the bytes is cut off; otherwise an unfinished character is U+FFFD.
    if (matched_stop.empty()) e.text += r.decoder->Flush();
    e.tokens = std::move(r.held_tokens);
    e.matched_stop = matched_stop;
  }
  e.final = true;
  r.failed = !status.ok() && !absl::IsCancelled(status);
  e.status = std::move(status);
  e.finish_reason = reason;
  e.prompt_tokens = static_cast<int64_t>(r.opts.prompt.size());
  e.completion_tokens = r.generated;
  e.release_stats = r.release_stats;
  e.kv_slots = r.kv_slots;
  e.ttft_ms = r.generated > 0 ? r.ttft_ms : 0.0;  // the first sampled token may have been an end token
  e.total_ms = MsSince(r.t0);
  e.queue_ms = r.queue_ms;
  pending_request_s_.push_back(e.total_ms / 1e3);
  finals_.emplace_back(r.callback, std::move(e));
}

void Scheduler::DeliverFinals() {
  std::vector<std::pair<StreamCallback, StreamEvent>> finals;
  finals.swap(finals_);
  for (auto& [callback, event] : finals) callback(event);
}

bool Scheduler::Accept(Request& r, int32_t token) {
  const Clock::time_point now = Clock::now();
  if (r.generated == 0) {
    r.ttft_ms = MsSince(r.t0);
    pending_ttft_s_.push_back(r.ttft_ms / 1e3);
  } else {
    pending_inter_token_s_.push_back(SecondsBetween(r.last_token_at, now));
  }
  r.last_token_at = now;
  const auto& stop_ids = r.opts.stop_ids;
  if (std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end()) {
    Finish(r, absl::OkStatus(), "stop");
    return false;
  }
  ++r.generated;
  absl::StatusOr<std::string> piece = r.decoder->Add(token);
  if (!piece.ok()) {
    Finish(r, piece.status(), "error");
    return false;
  }
  r.held += *piece;
  r.held_tokens.push_back(token);
  // Stop strings: cut at the earliest occurrence (the first listed among those starting there). Nothing
  // streamed can hold the beginning of one (see below), so only the held text needs searching.
  size_t cut = std::string::npos;
  const std::string* matched = nullptr;
  for (const std::string& s : r.opts.stop) {
    if (const size_t at = r.held.find(s); at < cut) {
      cut = at;
      matched = &s;
    }
  }
  if (matched != nullptr) {
    r.held.resize(cut);
    Finish(r, absl::OkStatus(), "stop", *matched);
    return false;
  }
  // Otherwise keep back the longest end of the text that could still begin one.
  size_t hold = 0;
  for (const std::string& s : r.opts.stop) {
    for (size_t k = std::min(s.size() - 1, r.held.size()); k > hold; --k) {
      if (r.held.compare(r.held.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  if (r.generated >= r.opts.max_tokens) {
    Finish(r, absl::OkStatus(), "length");
    return false;
  }
  // Stream what is settled. While text or bytes are held back, the latest token stays with them, so the
  // delta that finally carries them (possibly the final event) has a token.
  const size_t emit = CompleteUtf8Prefix(r.held.substr(0, r.held.size() - hold));
  const bool holding = emit < r.held.size() || r.decoder->has_pending();
  const size_t send = r.held_tokens.size() - (holding ? 1 : 0);
  if (send > 0) {
    StreamEvent e;
    e.text = r.held.substr(0, emit);
    r.held.erase(0, emit);
    e.tokens.assign(r.held_tokens.begin(), r.held_tokens.begin() + send);
    r.held_tokens.erase(r.held_tokens.begin(), r.held_tokens.begin() + send);
    r.callback(e);
  }
  r.last = token;
  return true;
}

void Scheduler::Loop() {
  // Latencies observed outside the lock go into stats_ under it (mu_ held).
  auto merge_latencies = [this] {
    for (double v : pending_ttft_s_) stats_.ttft_s.Observe(v);
    for (double v : pending_inter_token_s_) stats_.inter_token_s.Observe(v);
    for (double v : pending_request_s_) stats_.request_s.Observe(v);
    pending_ttft_s_.clear();
    pending_inter_token_s_.clear();
    pending_request_s_.clear();
  };
  // A pipelined runner gets step n + 1 before step n's result is handled (at most two in the air): the
  // sequences of step n decode their own samples in step n + 1 (kOwnSample), and one that ends with step
  // n's result (an end token, a stop string, a cancellation) has decoded one token more in step n + 1,
  // which is dropped (it is no longer active); it is ended at step n + 2. One whose in-flight token reaches
  // max_tokens is not continued.
  const bool pipelined = runner_.pipelined();
  std::deque<int64_t> in_flight;  // batch sizes of the submitted steps not yet waited for
  while (true) {
    WorkerStep step;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        return stop_ || !in_flight.empty() || !queue_.empty() || !active_.empty() || !cancelled_.empty() ||
               !to_end_.empty();
      });
      if (stop_) break;
      // Cancellations: queued requests end now; running ones end and free their KV at this step. The ids are
      // taken out first: the lock is released to finish each request, and a Cancel() then must neither
      // reallocate the vector being walked nor have its id cleared unseen.
      std::vector<uint64_t> cancelled;
      cancelled.swap(cancelled_);
      for (uint64_t id : cancelled) {
        auto q = std::find_if(queue_.begin(), queue_.end(), [&](const auto& r) { return r->id == id; });
        if (q != queue_.end()) {
          std::unique_ptr<Request> r = std::move(*q);
          queue_.erase(q);
          ++stats_.cancelled;
          lock.unlock();
          Finish(*r, absl::CancelledError("request cancelled"), "cancelled");
          DeliverFinals();
          lock.lock();
          continue;
        }
        if (auto a = active_.find(id); a != active_.end()) {
          std::unique_ptr<Request> r = std::move(a->second);
          active_.erase(a);
          stats_.kv_rows_reserved -= r->rows;
          ++stats_.cancelled;
          if (r->started) to_end_.push_back(id);
          lock.unlock();
          Finish(*r, absl::CancelledError("request cancelled"), "cancelled");
          DeliverFinals();
          lock.lock();
        }
      }
      merge_latencies();
      // Admission: first come, first served, while the batch and the KV budget allow.
      while (!queue_.empty() && static_cast<int64_t>(active_.size()) < options_.max_batch &&
             stats_.kv_rows_reserved + queue_.front()->rows <= options_.kv_rows) {
        std::unique_ptr<Request> r = std::move(queue_.front());
        queue_.pop_front();
        r->queue_ms = MsSince(r->t0);
        stats_.kv_rows_reserved += r->rows;
        const uint64_t id = r->id;
        active_.emplace(id, std::move(r));
      }
      stats_.active = static_cast<int64_t>(active_.size());
      stats_.queued = static_cast<int64_t>(queue_.size());
    }
    step.end.swap(to_end_);
    for (auto& [id, r] : active_) {
      if (!r->started) {
        step.start.push_back({id, r->opts.prompt, r->opts.sampling, r->opts.release});
        r->started = true;
        if (pipelined) ++r->in_flight;
      } else if (!pipelined) {
        step.decode.push_back({id, r->last});
      } else if (r->generated + r->in_flight < r->opts.max_tokens) {
        step.decode.push_back({id, r->in_flight > 0 ? kOwnSample : r->last});
        ++r->in_flight;
      }
    }
    const bool empty = step.start.empty() && step.decode.empty() && step.end.empty();
    int64_t batch_size = static_cast<int64_t>(step.start.size() + step.decode.size());
    absl::StatusOr<WorkerStepResult> result = absl::UnknownError("no step");
    if (!pipelined) {
      if (empty) continue;
      result = runner_.Step(step);
    } else {
      if (!empty) {
        runner_.Submit(step);
        in_flight.push_back(batch_size);
      }
      // Handle the older step once the next one is in the air (or nothing more can be sent).
      if (in_flight.empty() || (in_flight.size() < 2 && !empty)) continue;
      batch_size = in_flight.front();
      in_flight.pop_front();
      result = runner_.Wait();
    }
    std::vector<RankStepTiming> rank_timings;
    if (result.ok()) {
      rank_timings = runner_.last_rank_timings();
      if (rank_timings.empty()) rank_timings.push_back({.step_ms = result->step_ms});
    }
    std::vector<uint64_t> finished;
    int64_t new_prompt_tokens = 0, new_tokens = 0, released = 0, rebuilt = 0;
    if (!result.ok()) {
      // The whole step failed (e.g. a worker is gone): every running request ends with the error.
      for (auto& [id, r] : active_) {
        Finish(*r, result.status(), "error");
        finished.push_back(id);
      }
    } else {
      for (const SequenceStepResult& s : result->sequences) {
        auto it = active_.find(s.id);
        if (it == active_.end()) continue;  // ended meanwhile (pipelined: its extra token is dropped)
        Request& r = *it->second;
        if (r.in_flight > 0) --r.in_flight;
        if (s.status.ok()) {  // the step's share of the sequence's totals
          released += std::max<int64_t>(0, s.release_stats.released - r.release_stats.released);
          rebuilt += std::max<int64_t>(0, s.release_stats.rebuilt - r.release_stats.rebuilt);
        }
        r.release_stats = s.release_stats;
        r.kv_slots = s.kv_slots;
        if (!s.status.ok()) {
          Finish(r, s.status, "error");
          finished.push_back(s.id);
          continue;
        }
        if (r.generated == 0) new_prompt_tokens += static_cast<int64_t>(r.opts.prompt.size());
        ++new_tokens;
        if (!Accept(r, s.token)) {
          finished.push_back(s.id);
          to_end_.push_back(s.id);
        }
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (uint64_t id : finished) {
        auto it = active_.find(id);
        if (it == active_.end()) continue;
        stats_.kv_rows_reserved -= it->second->rows;
        ++(it->second->failed ? stats_.failed : stats_.completed);
        active_.erase(it);
      }
      ++stats_.steps;
      stats_.prompt_tokens += new_prompt_tokens;
      stats_.completion_tokens += new_tokens;
      if (result.ok()) {
        stats_.kv_slots_used = result->kv_slots_used;
        stats_.last_step_ms = result->step_ms;
        stats_.slot_map_checks += result->slot_map_checks;
      }
      stats_.active = static_cast<int64_t>(active_.size());
      stats_.batch_size = batch_size;
      stats_.tokens_released += released;
      stats_.tokens_rebuilt += rebuilt;
      merge_latencies();
      if (stats_.rank_step_s.size() < rank_timings.size()) {
        stats_.rank_step_s.resize(rank_timings.size(), Histogram(kStepBuckets));
        stats_.rank_comm_s.resize(rank_timings.size(), 0.0);
        stats_.rank_last.resize(rank_timings.size());
      }
      for (size_t i = 0; i < rank_timings.size(); ++i) {
        stats_.rank_step_s[i].Observe(rank_timings[i].step_ms / 1e3);
        stats_.rank_comm_s[i] += rank_timings[i].comm_ms / 1e3;
        stats_.rank_last[i] = rank_timings[i];
      }
    }
    DeliverFinals();  // after the counts: a client that sees its stream end finds it in the stats
  }
  // Shutdown: every request still queued or running ends with UNAVAILABLE.
  for (; !in_flight.empty(); in_flight.pop_front()) runner_.Wait().IgnoreError();
  std::deque<std::unique_ptr<Request>> queued;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queued.swap(queue_);
  }
  for (auto& r : queued) Finish(*r, absl::UnavailableError("server shutting down"), "error");
  WorkerStep last;  // free every sequence the runner still holds
  last.end.swap(to_end_);
  for (auto& [id, r] : active_) {
    Finish(*r, absl::UnavailableError("server shutting down"), "error");
    if (r->started) last.end.push_back(id);
  }
  active_.clear();
  DeliverFinals();
  if (!last.end.empty()) runner_.Step(last).IgnoreError();
}

}  // namespace adore
