// One worker's side of the runtime's step protocol: it owns the live sequences (KV slot tables, release
// policies, samplers) by id and executes one step plan at a time on its engine. The coordinator decides
// what runs (coordinator/scheduler.h); the plan carries only the diff: sequences that start (with their
// prompt and parameters), sequences that decode (with their last token), sequences that end.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine.h"
#include "worker/release_policy.h"
#include "worker/sampler.h"

namespace adore {

struct SequenceStart {
  uint64_t id = 0;
  std::vector<int32_t> prompt;  // non-empty
  SamplingParams sampling;
  ReleaseConfig release;        // full attention by default
};

// SequenceDecode::token that stands for the token this executor sampled for the sequence in its latest step
// (a coordinator that sends step n + 1 before step n's answer does not know it yet).
inline constexpr int32_t kOwnSample = -1;

struct SequenceDecode {
  uint64_t id = 0;
  int32_t token = 0;  // the token sampled for it by the previous step, or kOwnSample
};

struct WorkerStep {
  std::vector<uint64_t> end;          // released first, before anything runs
  std::vector<SequenceStart> start;   // prefilled this step; each samples its first token
  std::vector<SequenceDecode> decode;  // one token each
};

struct SequenceStepResult {
  uint64_t id = 0;
  int32_t token = -1;          // sampled next token
  absl::Status status;         // not OK: this sequence failed (and was released); the others go on
  ReleaseStats release_stats;  // totals so far
  int64_t kv_slots = 0;        // slots the sequence holds after the step
};

struct WorkerStepResult {
  std::vector<SequenceStepResult> sequences;  // one per started or decoded sequence, in plan order
  double step_ms = 0.0;
  int64_t forward_calls = 0;
  // KV slots held by every sequence still live on the runner after the step (rank 0's with tensor
  // parallelism): what the sequences use now, ended and failed ones no longer counted.
  int64_t kv_slots_used = 0;
  // Tensor parallelism (set by the coordinator's RemoteStepRunner, 0 otherwise): sequences whose slot-map
  // hashes the runner compared across all ranks this step, all equal to rank 0's (a mismatch fails the
  // step instead).
  int64_t slot_map_checks = 0;
};

struct StepExecutorOptions {
  int64_t prefill_chunk = 512;  // tokens per prompt chunk for sequences without a releasing policy
  // Tokens per prompt chunk under a releasing policy, also bounded by the engine and the policy
  // (PolicyPromptChunk); 1 = token by token, as in decoding.
  int64_t policy_prefill_chunk = kDefaultPolicyPrefillChunk;
};

class StepExecutor {
 public:
  StepExecutor(Engine& engine, const StepExecutorOptions& options = {}) : engine_(engine), options_(options) {}
  ~StepExecutor();

  // Runs one step. Sequences without a releasing policy are prefilled in chunks together with the step's
  // decode tokens; sequences with one feed their prompt in chunks of policy_prefill_chunk tokens (one token
  // per call on engines that take no more), batched together. A decode token kOwnSample is the sequence's latest sample here.
  // INVALID_ARGUMENT for a plan naming an unknown or an already started id, an empty prompt or bad
  // parameters (nothing runs then); per-sequence failures (e.g. the KV pool is
  // full for one sequence's prompt) are reported in its result and the sequence is released.
  absl::StatusOr<WorkerStepResult> Step(const WorkerStep& step);

  int64_t num_sequences() const { return static_cast<int64_t>(seqs_.size()); }
  // Slot-map hash of a live sequence (rows and positions), for the cross-rank consistency check.
  uint64_t SlotMapHash(uint64_t id) const;

 private:
  struct Live {
    SequenceKv kv;
    std::unique_ptr<ReleasePolicy> policy;
    int64_t budget = 0;
    SamplingParams params;
    Sampler sampler;         // host sampling (engines that do not sample on their device, retries)
    int32_t last_sample = -1;  // the token sampled in the sequence's latest step (kOwnSample resolves to it)
    explicit Live(const SamplingParams& p) : params(p), sampler(p) {}
  };
  void End(uint64_t id);

  Engine& engine_;
  StepExecutorOptions options_;
  std::unordered_map<uint64_t, std::unique_ptr<Live>> seqs_;
};

}  // namespace adore
