// Internal to adore_client (not installed): the SDK's types to and from the generated adore.v1 messages,
// and gRPC statuses as absl::Status. Exposed to the repository's tests (tests/server/cpp_client_test.cc).
#pragma once

#include <string>
#include <string_view>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "adore/client/client.h"
#include "adore/v1/adore.pb.h"

namespace adore::client::internal {

// The request for these arguments: every unset option left unset on the wire.
v1::GenerateRequest BuildRequest(const Prompt& prompt, const GenerateOptions& options);

Delta DeltaFromProto(const v1::TokenDelta& delta);
// The final result of a stream: the concatenated text and tokens of its deltas, and its `done` message.
GenerateResult ResultFromProto(std::string request_id, std::string text, std::vector<int32_t> token_ids,
                               const v1::GenerateDone& done);
ModelInfo ModelInfoFromProto(const v1::ModelInfo& m);
ServerStats ServerStatsFromProto(const v1::ServerStats& s);

// The gRPC status as an absl::Status with the same code (the numbers agree) and message.
absl::Status FromGrpcStatus(const grpc::Status& status);

// grpc.health.v1 HealthCheckRequest{service} in its wire form, and the status field of a
// HealthCheckResponse (encoded by hand: the health proto's generated code is not shipped with grpc++).
std::string EncodeHealthCheckRequest(std::string_view service);
absl::StatusOr<ServingStatus> DecodeHealthCheckResponse(std::string_view bytes);

}  // namespace adore::client::internal
