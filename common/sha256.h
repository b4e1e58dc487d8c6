// SHA-256 of model files (OpenSSL libcrypto, streamed in 1 MiB reads): the integrity check behind
// adore-server / adore-worker --model_sha256 and ModelInfo.model_sha256.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace adore {

// A digest as given by a user (64 hex digits, either case), in lower case. INVALID_ARGUMENT naming `what`
// (e.g. "model_sha256") otherwise.
absl::StatusOr<std::string> ParseSha256Hex(std::string_view hex, std::string_view what);

// sha256 of one file's bytes, 64 lower-case hex digits. NOT_FOUND / INTERNAL naming the file.
absl::StatusOr<std::string> Sha256File(const std::string& path);

// sha256 of a model as ModelInfo.model_sha256 defines it: a file's bytes, or for a checkpoint directory
// the bytes of its regular files (not recursing) concatenated in byte order of their names, which is
//   find DIR -maxdepth 1 -type f -printf '%f\n' | LC_ALL=C sort | (cd DIR && xargs cat) | sha256sum
absl::StatusOr<std::string> ModelSha256(const std::string& model_path);

// Hashes the model and compares: its digest when it is `expected` (lower-case hex), else
// FAILED_PRECONDITION "<path> has sha256 <actual>, expected <expected>" (callers prefix the field or flag).
absl::StatusOr<std::string> VerifyModelSha256(const std::string& model_path, const std::string& expected);

}  // namespace adore
