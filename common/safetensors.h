// safetensors files (Hugging Face checkpoints): 8-byte header length, JSON tensor directory, raw data.
// Open() validates the whole directory; tensor data is read lazily, one tensor at a time, as f32.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor.h"

namespace adore {

struct SafetensorsTensorInfo {
  std::string name;
  std::string dtype;           // as written in the header: "F32", "F16", "BF16", ...
  std::vector<int64_t> shape;  // row-major, outermost first (same order as Tensor::shape)
  uint64_t begin = 0;          // byte range within the data section (after the header)
  uint64_t end = 0;
};

class SafetensorsFile {
 public:
  // Parses and checks the header: a length that fits the file, valid JSON, known dtypes, data ranges
  // inside the data section that match each shape and do not overlap. Errors name the file and the
  // tensor/field: NOT_FOUND (no file), DATA_LOSS (truncated), INVALID_ARGUMENT (malformed),
  // UNIMPLEMENTED (a valid dtype other than F32/F16/BF16).
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsTensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }  // __metadata__

  const SafetensorsTensorInfo* Find(const std::string& name) const;
  // Reads one tensor and converts it to f32. NOT_FOUND when absent, DATA_LOSS on a short read.
  absl::StatusOr<Tensor> ReadTensor(const std::string& name) const;

 private:
  std::string path_;
  uint64_t data_offset_ = 0;  // 8 + header length
  std::vector<SafetensorsTensorInfo> tensors_;
  std::map<std::string, size_t> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

}  // namespace adore
