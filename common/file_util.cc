// OpenForReading: existence, size and open checks in one place.
#include "common/file_util.h"

#include <filesystem>

#include "absl/strings/str_format.h"

namespace adore {

absl::StatusOr<OpenedFile> OpenForReading(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrFormat("%s: no such file", path));
  }
  OpenedFile f;
  f.size = std::filesystem::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrFormat("%s: cannot stat: %s", path, ec.message()));
  f.in.open(path, std::ios::binary);
  if (!f.in) return absl::NotFoundError(absl::StrFormat("%s: cannot open for reading", path));
  return f;
}

}  // namespace adore
