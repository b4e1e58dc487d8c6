// Test helpers: where the fetched model and golden data live.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

namespace adore::testing {

// The model fetched by tools/fetch-model.sh, or $ADORE_MODEL.
inline std::string ModelPath() {
  if (const char* env = std::getenv("ADORE_MODEL")) return env;
  return std::string(ADORE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}
inline std::string DataPath(const std::string& rel) {
  return std::string(ADORE_SOURCE_DIR) + "/tests/data/" + rel;
}
inline bool ModelAvailable() { return std::filesystem::exists(ModelPath()); }

}  // namespace adore::testing
