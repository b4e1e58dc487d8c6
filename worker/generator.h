// Batched generation on any engine: prefill each prompt, then decode every live sequence together one token
// per step until it hits a stop token or its token limit. Each request may run under a release policy.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine.h"
#include "worker/release_policy.h"
#include "worker/sampler.h"

namespace adore {

struct GenerationRequest {
  std::vector<int32_t> prompt;   // token ids, non-empty
  SamplingParams sampling;
  int32_t max_tokens = 128;      // > 0
  std::vector<int32_t> stop_ids;  // e.g. EOS and <|im_end|>; the stop token is not part of the output
  // KV release policy, budget and rebuild of this request (default: full attention). With a releasing
  // policy the prompt goes in chunks of PolicyPromptChunk tokens (all such requests together in each
  // call), the policy observing every query's attention.
  ReleaseConfig release;
};

struct GenerationResult {
  std::vector<int32_t> tokens;
  std::string finish_reason;  // "stop" or "length"
  ReleaseStats release_stats;  // tokens released / rebuilt over the request
  int64_t kv_slots = 0;        // KV slots the sequence held at its end
};

struct GenerationStats {
  int64_t prompt_tokens = 0, generated_tokens = 0, decode_steps = 0;
  double prefill_seconds = 0.0, decode_seconds = 0.0;
};

// Called for each generated token as soon as it is sampled: (request index, token id).
using TokenCallback = std::function<void(int32_t, int32_t)>;

// INVALID_ARGUMENT for an empty prompt, max_tokens <= 0, bad sampling parameters or a bad release config
// (naming the field); FAILED_PRECONDITION for policy adore without a controller; RESOURCE_EXHAUSTED
// when the KV pool cannot hold the batch. Sequences are released before returning, on success or error.
absl::StatusOr<std::vector<GenerationResult>> GenerateBatch(Engine& engine,
                                                            std::span<const GenerationRequest> requests,
                                                            const TokenCallback& on_token = nullptr,
                                                            GenerationStats* stats = nullptr,
                                                            int32_t prefill_chunk = 512,
                                                            int64_t policy_prefill_chunk = kDefaultPolicyPrefillChunk);

}  // namespace adore
