// The public gRPC API (proto/adore/v1/adore.proto) over the Scheduler: converts and validates requests
// (errors name the field), streams deltas from the scheduler's callbacks, maps client cancellation and
// deadlines to Scheduler::Cancel, and answers model info and stats.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "adore/v1/adore.grpc.pb.h"
#include "common/model_config.h"
#include "common/tokenizer.h"
#include "coordinator/request_options.h"  // ServiceDefaults, BuildGenerateOptions
#include "coordinator/scheduler.h"
#include "worker/adore_controller.h"

namespace adore {

struct ServiceInfo {
  ModelConfig config;
  std::string model_sha256;
  int32_t tensor_parallel_size = 1;
  adore::v1::Backend backend = adore::v1::BACKEND_CPU;
  int64_t kv_rows = 0;
};

// The serialized GenerateRequest as Generate receives it, parsed. A request that does not parse gets
// INVALID_ARGUMENT naming the first string field that is not valid UTF-8, which proto3 requires
// ("text: must be valid UTF-8; byte 3 is not", "chat.messages[1].content: ...", "sampling.stop[0]: ..."),
// or "request: ..." for any other fault. (gRPC's own parsing would answer INTERNAL with no message.)
absl::StatusOr<adore::v1::GenerateRequest> ParseGenerateRequest(const grpc::ByteBuffer& bytes);

class AdoreService final : public adore::v1::Adore::Service {
 public:
  // Generate is registered so that its request arrives as bytes and is parsed here (ParseGenerateRequest).
  AdoreService(Scheduler& scheduler, const Tokenizer& tokenizer, ServiceInfo info, ServiceDefaults defaults);

  // Generate for a request that gRPC has already parsed (a service forwarding to this one).
  grpc::Status Generate(grpc::ServerContext* context, const adore::v1::GenerateRequest* request,
                        grpc::ServerWriter<adore::v1::GenerateResponse>* writer) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const adore::v1::GetModelInfoRequest* request,
                            adore::v1::ModelInfo* response) override;
  grpc::Status GetStats(grpc::ServerContext* context, const adore::v1::GetStatsRequest* request,
                        adore::v1::ServerStats* response) override;

  // From now on every call must carry metadata "authorization: Bearer <token>", else UNAUTHENTICATED
  // before anything else happens (coordinator/grpc/bearer_auth.h). Call it before the service serves.
  // Empty (the default): no authentication.
  void RequireBearerToken(std::string token) { auth_token_ = std::move(token); }

  // The request as the scheduler takes it; INVALID_ARGUMENT naming the first wrong field in field-number
  // order otherwise (also request_id, which the scheduler does not take). Exposed for tests.
  absl::StatusOr<GenerateOptions> Convert(const adore::v1::GenerateRequest& request) const;

 private:
  using Writer = grpc::ServerSplitStreamer<grpc::ByteBuffer, adore::v1::GenerateResponse>;
  // The registered Generate: reads the request's bytes, parses them, then Stream.
  grpc::Status GenerateFromBytes(grpc::ServerContext* context, Writer* stream);
  // Validates, submits and streams one request; `write` sends a message, false once the client is gone.
  grpc::Status Stream(grpc::ServerContext* context, const adore::v1::GenerateRequest& request,
                      const std::function<bool(const adore::v1::GenerateResponse&)>& write);
  void Count(const grpc::Status& status);

  Scheduler& scheduler_;
  const Tokenizer& tokenizer_;
  ServiceInfo info_;
  ServiceDefaults defaults_;
  std::vector<int32_t> stop_ids_;  // the model's end tokens
  std::string auth_token_;         // RequireBearerToken
  std::chrono::steady_clock::time_point started_;
  std::atomic<int64_t> ok_{0}, invalid_{0}, exhausted_{0}, unavailable_{0}, cancelled_{0}, deadline_{0}, internal_{0};
  std::atomic<int64_t> released_total_{0}, rebuilt_total_{0};
};

// SamplingParams.temperature when unset: 0, greedy (adore.proto). ServiceDefaults::temperature is the
// HTTP API's (OpenAI's 1).
inline constexpr float kDefaultTemperature = 0.0f;
// GenerateRequest.request_id: the longest accepted, and what the server assigns to an empty one (32 random
// lower-case hex digits).
inline constexpr size_t kMaxRequestIdLength = 128;
std::string NewRequestId();

grpc::Status ToGrpc(const absl::Status& status);
adore::v1::Policy PolicyToProto(PolicyKind kind);

}  // namespace adore
