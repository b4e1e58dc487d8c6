// safetensors reader: validates the JSON directory against the file size and converts F32/F16/BF16
// tensors to f32 (F16/BF16 through the GGUF dequantizers, which share the bit layouts).
#include "common/safetensors.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <utility>

#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/status.h"
#include "common/gguf.h"
#include "nlohmann/json.hpp"

namespace adore {
namespace {

// The reference implementation refuses headers over 100 MB; so do we, before allocating one.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Element size of every dtype the safetensors format defines; 0 for names it does not define.
int DtypeBytes(const std::string& dtype) {
  static const std::map<std::string, int> kSizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"U16", 2}, {"I16", 2}, {"F16", 2},
      {"BF16", 2}, {"U32", 4}, {"I32", 4}, {"F32", 4},     {"U64", 8},     {"I64", 8}, {"F64", 8}};
  auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

}  // namespace

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  ADORE_ASSIGN_OR_RETURN(OpenedFile opened, OpenForReading(path));
  std::ifstream& in = opened.in;
  const uint64_t file_size = opened.size;

  if (file_size < 8) {
    return absl::DataLossError(absl::StrFormat(
        "%s: truncated file: %d bytes is too short for the 8-byte header length", path, file_size));
  }
  uint64_t header_len = 0;
  if (!in.read(reinterpret_cast<char*>(&header_len), 8)) {
    return absl::DataLossError(absl::StrFormat("%s: read error in the header length", path));
  }
  if (header_len > file_size - 8) {
    return absl::DataLossError(
        absl::StrFormat("%s: header length %d runs past end of file (size %d)", path, header_len, file_size));
  }
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: header length %d exceeds the %d-byte limit", path, header_len, kMaxHeaderBytes));
  }
  std::string header(static_cast<size_t>(header_len), '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(header_len))) {
    return absl::DataLossError(absl::StrFormat("%s: read error in the JSON header", path));
  }
  nlohmann::json j = nlohmann::json::parse(header, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: header is not a valid JSON object", path));
  }

  SafetensorsFile f;
  f.path_ = path;
  f.data_offset_ = 8 + header_len;
  const uint64_t data_size = file_size - f.data_offset_;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) {
        return absl::InvalidArgumentError(absl::StrFormat("%s: __metadata__ is not a JSON object", path));
      }
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return absl::InvalidArgumentError(
              absl::StrFormat("%s: __metadata__ '%s' is not a string", path, m.key()));
        }
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: tensor '%s': entry is not a JSON object", path, name));
    }
    SafetensorsTensorInfo t;
    t.name = name;
    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: tensor '%s': missing or non-string 'dtype'", path, name));
    }
    t.dtype = dt->get<std::string>();
    const int elem_bytes = DtypeBytes(t.dtype);
    if (elem_bytes == 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: tensor '%s': unknown dtype '%s'", path, name, t.dtype));
    }
    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array() || sh->size() > 8) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: tensor '%s': 'shape' must be an array of at most 8 dimensions", path, name));
    }
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s: tensor '%s': shape entry %s is not a non-negative integer", path, name, d.dump()));
      }
      const uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(numel, dim, &numel)) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: tensor '%s': shape element count overflows", path, name));
      }
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: tensor '%s': 'data_offsets' must be two non-negative integers", path, name));
    }
    t.begin = (*off)[0].get<uint64_t>();
    t.end = (*off)[1].get<uint64_t>();
    if (t.begin > t.end || t.end > data_size) {
      return absl::DataLossError(
          absl::StrFormat("%s: tensor '%s' data_offsets [%d, %d] fall outside the %d-byte data section", path,
                          name, t.begin, t.end, data_size));
    }
    uint64_t want = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(elem_bytes), &want) || want != t.end - t.begin) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: tensor '%s': data_offsets [%d, %d] span %d bytes but shape and dtype %s need %d", path, name,
          t.begin, t.end, t.end - t.begin, t.dtype, want));
    }
    f.tensors_.push_back(std::move(t));
  }

  std::vector<const SafetensorsTensorInfo*> sorted;
  for (const auto& t : f.tensors_) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](auto* a, auto* b) { return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i]->begin < sorted[i - 1]->end) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: tensor '%s' data_offsets [%d, %d] overlap tensor '%s' [%d, %d]", path, sorted[i]->name,
          sorted[i]->begin, sorted[i]->end, sorted[i - 1]->name, sorted[i - 1]->begin, sorted[i - 1]->end));
    }
  }
  for (size_t i = 0; i < f.tensors_.size(); ++i) f.index_[f.tensors_[i].name] = i;
  return f;
}

const SafetensorsTensorInfo* SafetensorsFile::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<Tensor> SafetensorsFile::ReadTensor(const std::string& name) const {
  const SafetensorsTensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrFormat("%s: no tensor named '%s'", path_, name));
  }
  GgmlType type;
  if (info->dtype == "F32") {
    type = GgmlType::kF32;
  } else if (info->dtype == "F16") {
    type = GgmlType::kF16;
  } else if (info->dtype == "BF16") {
    type = GgmlType::kBF16;
  } else {
    return absl::UnimplementedError(absl::StrFormat(
        "%s: tensor '%s': dtype %s is not supported (only F32, F16, BF16)", path_, name, info->dtype));
  }
  Tensor t;
  t.shape = info->shape;
  std::vector<char> raw(static_cast<size_t>(info->end - info->begin));
  std::ifstream in(path_, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("%s: cannot reopen for reading", path_));
  in.seekg(static_cast<std::streamoff>(data_offset_ + info->begin));
  if (!in || !in.read(raw.data(), static_cast<std::streamsize>(raw.size()))) {
    return absl::DataLossError(
        absl::StrFormat("%s: tensor '%s' [%d, %d]: short read (file changed since it was opened?)", path_,
                        name, info->begin, info->end));
  }
  t.data.resize(raw.size() / (type == GgmlType::kF32 ? 4 : 2));
  absl::Status s = Dequantize(type, raw.data(), static_cast<int64_t>(t.data.size()), t.data.data());
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrFormat("%s: tensor '%s': %s", path_, name, s.message()));
  }
  return t;
}

}  // namespace adore
