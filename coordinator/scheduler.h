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
#include "coordinator/histogram.h"
#include "worker/release_policy.h"
#include "worker/sampler.h"
#include "worker/step_executor.h"

namespace adore {

struct GenerateOptions {
  std::vector<int32_t> prompt;     // token ids, non-empty
  SamplingParams sampling;
  int32_t max_tokens = 128;        // >= 1; prompt + max_tokens <= max_context (and <= max_tokens_limit if set)
  std::vector<int32_t> stop_ids;   // the stop token is not part of the output
  std::vector<std::string> stop;   // stop strings: the output ends before the first occurrence
  ReleaseConfig release;           // policy, kv_budget, rebuild (full attention by default)
};

// One streamed message. Deltas carry text (valid UTF-8: whole characters, U+FFFD for invalid bytes, see
// StreamDecoder) and at least one token; text that is held back (an unfinished character, or what might
// begin a stop string) keeps its last token with it. The final event (final = true) carries the outcome,
// the request's figures and, on success, whatever was held back (with its tokens).
struct StreamEvent {
  std::string text;
  std::vector<int32_t> tokens;
  bool final = false;
  absl::Status status;        // final: OK, or why the request ended (CANCELLED, RESOURCE_EXHAUSTED, ...)
  std::string finish_reason;  // final: "stop", "length", "cancelled" or "error"
  std::string matched_stop;   // final: the stop string that ended the output ("" for an end token or length)
  int64_t prompt_tokens = 0, completion_tokens = 0;
  ReleaseStats release_stats;
  int64_t kv_slots = 0;
  double ttft_ms = 0.0;   // final: submit to the first generated token (0 when none was)
  double total_ms = 0.0;  // final: submit to the end
  double queue_ms = 0.0;  // final: submit to admission into the running batch (0 if never admitted)
};
// Called on the scheduler's thread; must not block (post to a queue).
using StreamCallback = std::function<void(const StreamEvent&)>;

// One rank's share of a step, as the rank measured it.
struct RankStepTiming {
  double step_ms = 0.0;  // the whole step on the rank
  double comm_ms = 0.0;  // its collectives alone (all-reduces, rank 0's release broadcast)
  std::string address;   // where the rank is served (host:port); empty: in this process
};

// Executes step plans: locally (LocalStepRunner) or on every rank of a tensor-parallel group.
class StepRunner {
 public:
  virtual ~StepRunner() = default;
  virtual absl::StatusOr<WorkerStepResult> Step(const WorkerStep& step) = 0;
  // Pipelined runners (whose steps cross a network) take step n + 1 before step n's answer: Submit sends a
  // step and returns, Wait returns the oldest submitted step's result; the scheduler keeps at most two in
  // the air. A decode token kOwnSample continues from the runner's own latest sample.
  virtual bool pipelined() const { return false; }
  virtual void Submit(const WorkerStep& /*step*/) {}
  virtual absl::StatusOr<WorkerStepResult> Wait() { return absl::UnimplementedError("the runner is not pipelined"); }
  // Each rank's own timing of the latest successful step, rank order (metrics and GetStats; called on the
  // thread that calls Step or Wait). Empty: the runner has one rank in this process, whose time is
  // WorkerStepResult::step_ms.
  virtual std::vector<RankStepTiming> last_rank_timings() const { return {}; }
};

// Runs steps on a local engine. Pipelined (`pipelined`), steps run on a thread of their own, so the
// scheduler streams step n's tokens while the engine computes step n + 1.
class LocalStepRunner final : public StepRunner {
 public:
  explicit LocalStepRunner(Engine& engine, const StepExecutorOptions& options = {}, bool pipelined = false);
  ~LocalStepRunner() override;
  absl::StatusOr<WorkerStepResult> Step(const WorkerStep& step) override;
  bool pipelined() const override { return pipelined_; }
  void Submit(const WorkerStep& step) override;
  absl::StatusOr<WorkerStepResult> Wait() override;
  const StepExecutor& executor() const { return executor_; }

 private:
  void Run();

  StepExecutor executor_;
  const bool pipelined_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<WorkerStep> steps_;                              // submitted, not yet run
  std::deque<absl::StatusOr<WorkerStepResult>> results_;      // run, not yet waited for
  bool busy_ = false;  // a step is running
  bool stop_ = false;
  std::thread thread_;  // pipelined only
};

struct SchedulerOptions {
  int64_t max_batch = 64;           // sequences per step
  int64_t kv_rows = 0;              // KV rows the runner holds (admission budget); required
  int64_t max_context = 0;          // the model's context; required
  int32_t max_tokens_limit = 0;     // upper bound of GenerateOptions::max_tokens; 0 = only the context's
  int64_t max_queue = 4096;         // waiting requests before Submit answers RESOURCE_EXHAUSTED
};

struct SchedulerStats {
  int64_t submitted = 0, completed = 0, failed = 0, cancelled = 0;
  int64_t prompt_tokens = 0, completion_tokens = 0, steps = 0;
  int64_t active = 0, queued = 0;
  // KV rows set aside by admission for the running requests (prompt + max_tokens each, or the kv_budget):
  // what admission counts against SchedulerOptions::kv_rows. 0 once every admitted request has ended.
  int64_t kv_rows_reserved = 0;
  // KV slots the runner's sequences hold after the latest step (WorkerStepResult::kv_slots_used): at most
  // the reservation, and back to 0 only once the runner has freed every ended request's slots.
  int64_t kv_slots_used = 0;
  int64_t slot_map_checks = 0;  // tensor parallelism: WorkerStepResult::slot_map_checks summed over steps
  double last_step_ms = 0.0;
  // Metrics (exposed on /metrics by coordinator/http/metrics.h).
  int64_t rejected = 0;                             // Submit refused (invalid, too large, queue full)
  int64_t batch_size = 0;                           // sequences in the latest step
  int64_t tokens_released = 0, tokens_rebuilt = 0;  // by the release policies, over all steps
  Histogram ttft_s;                // submit to first sampled token, seconds
  Histogram inter_token_s;         // between a request's consecutive tokens, seconds
  Histogram request_s;             // submit to final event, seconds, every request that was queued
  // Per rank (StepRunner::last_rank_timings), over the successful steps: step time, seconds; collective
  // time summed, seconds; the latest step's timing (with the rank's address).
  std::vector<Histogram> rank_step_s;
  std::vector<double> rank_comm_s;
  std::vector<RankStepTiming> rank_last;
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
  absl::StatusOr<uint64_t> Enqueue(GenerateOptions request, StreamCallback callback);
  void Loop();
  int64_t RowsNeeded(const GenerateOptions& r) const;
  // Handles one sampled token; returns true when the request goes on.
  bool Accept(Request& r, int32_t token);
  // Ends a request; its final event is queued for DeliverFinals. On success the held-back text is output,
  // flushed through the decoder unless a stop string (`matched_stop`) cut it.
  void Finish(Request& r, absl::Status status, const std::string& reason, const std::string& matched_stop = "");
  // Calls the final callbacks Finish queued. The loop does so after it counts the step's ended requests.
  void DeliverFinals();

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
  // Latencies observed since the last step's end, merged into stats_ under mu_ there.
  std::vector<double> pending_ttft_s_, pending_inter_token_s_, pending_request_s_;
  std::vector<std::pair<StreamCallback, StreamEvent>> finals_;  // queued by Finish, see DeliverFinals
  std::thread thread_;
};

}  // namespace adore
