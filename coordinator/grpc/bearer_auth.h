// The bearer token on the public gRPC API: what every adore.v1.Adore handler checks first when adore-server
// runs with --auth_token_file (common/security.h parses and compares; docs/RELIABILITY.md, "Security").
#pragma once

#include <grpcpp/grpcpp.h>

#include <optional>
#include <string>
#include <string_view>

#include "common/security.h"

namespace adore {

// OK when `token` is empty (no authentication) or the call carries metadata "authorization: Bearer <token>";
// UNAUTHENTICATED with CheckBearerAuthorization's message otherwise.
inline grpc::Status CheckBearerMetadata(const grpc::ServerContext& context, const std::string& token) {
  if (token.empty()) return grpc::Status::OK;
  std::optional<std::string_view> value;
  const auto& md = context.client_metadata();
  if (auto it = md.find(kAuthorizationKey); it != md.end()) value.emplace(it->second.data(), it->second.size());
  const absl::Status st = CheckBearerAuthorization(value, token);
  if (st.ok()) return grpc::Status::OK;
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, std::string(st.message()));
}

}  // namespace adore
