// GGUF model files (the llama.cpp format): header, typed metadata, tensor directory, dequantization to f32.
// Reads the whole directory at Open(); tensor data is read lazily with bounds checks.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor.h"

namespace adore {

// ggml tensor types, numbered as in the GGUF spec.
enum class GgmlType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ8_1 = 9,
  kQ2_K = 10, kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kQ8_K = 15, kBF16 = 30,
};
const char* GgmlTypeName(GgmlType t);

// One metadata value. Arrays keep their element values (strings as std::string).
struct GgufValue {
  using Array = std::vector<GgufValue>;
  std::variant<uint64_t, int64_t, double, bool, std::string, Array> v;
  uint32_t gguf_type = 0;  // the GGUF value type code as stored in the file
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type;
  std::vector<int64_t> ne;  // GGUF order: ne[0] is the fastest-varying (row length)
  uint64_t offset = 0;      // from the start of the data section
  uint64_t nbytes = 0;      // on disk
};

class GgufFile {
 public:
  // Parses the header, metadata and tensor directory. Errors (INVALID_ARGUMENT / DATA_LOSS / NOT_FOUND)
  // name the file and the offending field: bad magic, unsupported version, truncated data, a tensor whose
  // bytes run past the end of the file, an unknown tensor type.
  static absl::StatusOr<GgufFile> Open(const std::string& path);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }

  // Typed metadata lookups: NOT_FOUND when absent, INVALID_ARGUMENT when of another type.
  absl::StatusOr<std::string> GetString(const std::string& key) const;
  absl::StatusOr<int64_t> GetInt(const std::string& key) const;  // any integer type
  absl::StatusOr<double> GetFloat(const std::string& key) const;  // f32/f64 (or an integer)
  absl::StatusOr<std::vector<std::string>> GetStringArray(const std::string& key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(const std::string& key) const;
  absl::StatusOr<std::vector<double>> GetFloatArray(const std::string& key) const;
  bool Has(const std::string& key) const { return metadata_.count(key) > 0; }

  const GgufTensorInfo* FindTensor(const std::string& name) const;
  // Reads and dequantizes one tensor to f32; shape is ne reversed (row-major, outermost first).
  absl::StatusOr<Tensor> ReadTensor(const std::string& name) const;

 private:
  std::string path_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;  // absolute file offset of the data section
  uint64_t file_size_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
};

// Dequantizes `n` elements (a multiple of the type's block size) of type `t` from `src` into `dst`.
// INVALID_ARGUMENT for an unsupported type or a size that is not a whole number of blocks.
absl::Status Dequantize(GgmlType t, const void* src, int64_t n, float* dst);
// Bytes taken by `n` elements of type t (n a multiple of the block size), or an error for unknown types.
absl::StatusOr<uint64_t> GgmlTypeBytes(GgmlType t, int64_t n);

}  // namespace adore
