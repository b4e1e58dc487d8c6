// The coordinator's scheduler: validates requests, admits them by KV budget, forms one step per
// iteration with continuous batching (new requests join between decode steps), runs it through a
// StepRunner (the local engine, or every tensor-parallel rank), detokenizes incrementally and streams
// each request's deltas; every request ends with exactly one final event: its output or an error.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "common/stream_decoder.h"
#include "common/tokenizer.h"
#include "worker/release_policy.h"
#include "worker/sampler.h"
#include "worker/step_executor.h"

namespace adore {

struct GenerateOptions {
  std::vector<int32_t> prompt;     // token ids, non-empty
  SamplingParams sampling;
  int32_t max_tokens = 128;        // in [1, SchedulerOptions::max_tokens_limit]
  std::vector<int32_t> stop_ids;   // the stop token is not part of the output
  std::vector<std::string> stop;   // stop strings: the output ends before the first occurrence
  ReleaseConfig release;           // policy, kv_budget, rebuild (full attention by default)
};

// One streamed message. Deltas carry text (whole UTF-8 characters) and the tokens that made it; the
// final event (final = true) carries the outcome and the request's figures.
struct StreamEvent {
  std::string text;
  std::vector<int32_t> tokens;
  bool final = false;
  absl::Status status;        // final: OK, or why the request ended (CANCELLED, RESOURCE_EXHAUSTED, ...)
  std::string finish_reason;  // final: "stop", "length", "cancelled" or "error"
  int64_t prompt_tokens = 0, completion_tokens = 0;
  ReleaseStats release_stats;
  int64_t kv_slots = 0;
  double ttft_ms = 0.0, total_ms = 0.0;
};
// Called on the scheduler's thread; must not block (post to a queue).
using StreamCallback = std::function<void(const StreamEvent&)>;

// Executes step plans: locally (LocalStepRunner) or on every rank of a tensor-parallel group.
class StepRunner {
 public:
  virtual ~StepRunner() = default;
  virtual absl::StatusOr<WorkerStepResult> Step(const WorkerStep& step) = 0;
};

class LocalStepRunner final : public StepRunner {
 public:
  explicit LocalStepRunner(Engine& engine, const StepExecutorOptions& options = {}) : executor_(engine, options) {}
  absl::StatusOr<WorkerStepResult> Step(const WorkerStep& step) override { return executor_.Step(step); }
  const StepExecutor& executor() const { return executor_; }

 private:
  StepExecutor executor_;
};

struct SchedulerOptions {
  int64_t max_batch = 64;           // sequences per step
  int64_t kv_rows = 0;              // KV rows the runner holds (admission budget); required
  int64_t max_context = 0;          // the model's context; required
  int32_t max_tokens_limit = 4096;  // upper bound of GenerateOptions::max_tokens
  int64_t max_queue = 4096;         // waiting requests before Submit answers RESOURCE_EXHAUSTED
};

struct SchedulerStats {
  int64_t submitted = 0, completed = 0, failed = 0, cancelled = 0;
  int64_t prompt_tokens = 0, completion_tokens = 0, steps = 0;
  int64_t active = 0, queued = 0, kv_rows_reserved = 0;
  int64_t slot_map_checks = 0;  // tensor parallelism: WorkerStepResult::slot_map_checks summed over steps
  double last_step_ms = 0.0;
};

class Scheduler {
 public:
  // Starts the scheduling thread. `runner` and `tokenizer` must outlive the scheduler.
  Scheduler(StepRunner& runner, const Tokenizer& tokenizer, const SchedulerOptions& options);
  // Ends every request still queued or running with UNAVAILABLE ("server shutting down") and joins.
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Validates and queues a request; returns its id. INVALID_ARGUMENT naming the field (empty prompt,
  // max_tokens, sampling, release parameters), OUT_OF_RANGE when prompt + max_tokens passes the
  // context, RESOURCE_EXHAUSTED when it can never fit the KV budget or the queue is full. On error the
  // callback is never called.
  absl::StatusOr<uint64_t> Submit(GenerateOptions request, StreamCallback callback);
  // Ends a request with CANCELLED (its KV is freed at the next step); unknown or finished ids are ignored.
  void Cancel(uint64_t id);
  SchedulerStats stats() const;

 private:
  struct Request;
  void Loop();
  int64_t RowsNeeded(const GenerateOptions& r) const;
  // Handles one sampled token; returns true when the request goes on.
  bool Accept(Request& r, int32_t token);
  void Finish(Request& r, absl::Status status, const std::string& reason);

  StepRunner& runner_;
  const Tokenizer& tokenizer_;
  SchedulerOptions options_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  uint64_t next_id_ = 1;
  std::deque<std::unique_ptr<Request>> queue_;          // waiting for admission
  std::vector<uint64_t> cancelled_;                     // ids to cancel at the next step
  SchedulerStats stats_;
  // Owned by the loop thread only.
  std::map<uint64_t, std::unique_ptr<Request>> active_;
  std::vector<uint64_t> to_end_;  // finished last step: release their KV on the runner
  std::thread thread_;
};

}  // namespace adore
