// Opening model files for reading, with errors that name the file (shared by the GGUF and safetensors
// readers).
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

#include "absl/status/statusor.h"

namespace adore {

struct OpenedFile {
  std::ifstream in;   // binary mode
  uint64_t size = 0;  // bytes
};

// NOT_FOUND "<path>: no such file" / "cannot stat" / "cannot open for reading".
absl::StatusOr<OpenedFile> OpenForReading(const std::string& path);

}  // namespace adore
