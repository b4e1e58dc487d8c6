// Secrets and credentials shared by adore-server and adore-worker: constant-time comparison, the bearer
// token of the public APIs (gRPC metadata / HTTP header "authorization: Bearer <token>") and the PEM
// certificate and key of their TLS listeners. docs/RELIABILITY.md ("Security") has the flags.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace adore {

// The gRPC metadata key (lower-case, as gRPC delivers it) and HTTP header that carry the bearer token.
inline constexpr char kAuthorizationKey[] = "authorization";

// a == b in time that depends only on the longer length, not on where they first differ.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

// A token or secret kept in a file: its contents without trailing whitespace (a final newline). NOT_FOUND
// naming the file when it cannot be read; INVALID_ARGUMENT when nothing is left (an empty token would
// let every caller in).
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

// Checks the value of an "authorization" header (nullopt: none was sent) against `token`: OK for
// "Bearer <token>" (scheme case-insensitive, RFC 6750). Otherwise UNAUTHENTICATED with a message saying
// what is wrong (missing, not a Bearer credential, wrong token) that never repeats what was sent.
absl::Status CheckBearerAuthorization(std::optional<std::string_view> value, std::string_view token);

// A TLS listener's certificate chain and private key (PEM).
struct TlsCertKey {
  std::string cert_pem;
  std::string key_pem;
};

// Reads and checks both files: NOT_FOUND naming a file that cannot be read, INVALID_ARGUMENT naming the
// flag ("tls_cert_file" / "tls_key_file") when a file holds no PEM certificate / private key, or when the
// key does not belong to the certificate.
absl::StatusOr<TlsCertKey> ReadTlsCertKey(const std::string& cert_file, const std::string& key_file);

}  // namespace adore
