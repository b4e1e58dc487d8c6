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
}  // namespace

struct Scheduler::Request {
  uint64_t id = 0;
  GenerateOptions opts;
  StreamCallback callback;
  std::unique_ptr<StreamDecoder> decoder;
  int64_t rows = 0;              // KV rows reserved while admitted
  bool started = false;          // prompt sent to the runner
  int32_t last = -1;             // token to feed next step
  int64_t generated = 0;
  std::string held;              // decoded text not yet streamed (may begin a stop string)
  std::vector<int32_t> held_tokens;
  ReleaseStats release_stats;
  int64_t kv_slots = 0;
  Clock::time_point t0;
  double ttft_ms = 0.0;
  bool failed = false;
};

Scheduler::Scheduler(StepRunner& runner, const Tokenizer& tokenizer, const SchedulerOptions& options)
    : runner_(runner), tokenizer_(tokenizer), options_(options) {
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
  if (request.prompt.empty()) return absl::InvalidArgumentError("prompt: must not be empty");
  if (request.max_tokens < 1 || request.max_tokens > options_.max_tokens_limit) {
    return absl::InvalidArgumentError(
        absl::StrFormat("max_tokens: must be in [1, %d], got %d", options_.max_tokens_limit, request.max_tokens));
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
  return stats_;
}

void Scheduler::Finish(Request& r, absl::Status status, const std::string& reason) {
  StreamEvent e;
  if (status.ok()) {  // whatever was held back for stop-string matching is output
    e.text = std::move(r.held);
    e.text += r.decoder->Flush();
    e.tokens = std::move(r.held_tokens);
  }
  e.final = true;
  r.failed = !status.ok() && !absl::IsCancelled(status);
  e.status = std::move(status);
  e.finish_reason = reason;
  e.prompt_tokens = static_cast<int64_t>(r.opts.prompt.size());
  e.completion_tokens = r.generated;
  e.release_stats = r.release_stats;
  e.kv_slots = r.kv_slots;
  e.ttft_ms = r.ttft_ms;
  e.total_ms = MsSince(r.t0);
  r.callback(e);
}

bool Scheduler::Accept(Request& r, int32_t token) {
  if (r.generated == 0) r.ttft_ms = MsSince(r.t0);
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
  // Stop strings: cut at the first occurrence; otherwise keep back what could still begin one.
  size_t hold = 0;
  for (const std::string& s : r.opts.stop) {
    if (const size_t at = r.held.find(s); at != std::string::npos) {
      r.held.resize(at);
      Finish(r, absl::OkStatus(), "stop");
      return false;
    }
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
  const size_t emit = CompleteUtf8Prefix(r.held.substr(0, r.held.size() - hold));
  if (emit > 0 || (hold == 0 && !r.held_tokens.empty())) {
    StreamEvent e;
    e.text = r.held.substr(0, emit);
    r.held.erase(0, emit);
    e.tokens = std::move(r.held_tokens);
    r.held_tokens.clear();
    r.callback(e);
  }
  r.last = token;
  return true;
}

void Scheduler::Loop() {
  while (true) {
    WorkerStep step;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        return stop_ || !queue_.empty() || !active_.empty() || !cancelled_.empty() || !to_end_.empty();
      });
      if (stop_) break;
      // Cancellations: queued requests end now; running ones end and free their KV at this step.
      for (uint64_t id : cancelled_) {
        auto q = std::find_if(queue_.begin(), queue_.end(), [&](const auto& r) { return r->id == id; });
        if (q != queue_.end()) {
          std::unique_ptr<Request> r = std::move(*q);
          queue_.erase(q);
          ++stats_.cancelled;
          lock.unlock();
          Finish(*r, absl::CancelledError("request cancelled"), "cancelled");
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
          lock.lock();
        }
      }
      cancelled_.clear();
      // Admission: first come, first served, while the batch and the KV budget allow.
      while (!queue_.empty() && static_cast<int64_t>(active_.size()) < options_.max_batch &&
             stats_.kv_rows_reserved + queue_.front()->rows <= options_.kv_rows) {
        std::unique_ptr<Request> r = std::move(queue_.front());
        queue_.pop_front();
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
      } else {
        step.decode.push_back({id, r->last});
      }
    }
    if (step.start.empty() && step.decode.empty() && step.end.empty()) continue;

    absl::StatusOr<WorkerStepResult> result = runner_.Step(step);
    std::vector<uint64_t> finished;
    int64_t new_prompt_tokens = 0, new_tokens = 0;
    if (!result.ok()) {
      // The whole step failed (e.g. a worker is gone): every running request ends with the error.
      for (auto& [id, r] : active_) {
        Finish(*r, result.status(), "error");
        finished.push_back(id);
      }
    } else {
      for (const SequenceStepResult& s : result->sequences) {
        auto it = active_.find(s.id);
        if (it == active_.end()) continue;
        Request& r = *it->second;
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
      stats_.last_step_ms = result->step_ms;
      stats_.slot_map_checks += result->slot_map_checks;
    }
    stats_.active = static_cast<int64_t>(active_.size());
  }
  // Shutdown: every request still queued or running ends with UNAVAILABLE.
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
  if (!last.end.empty()) runner_.Step(last).IgnoreError();
}

}  // namespace adore
