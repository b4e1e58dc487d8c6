// GGUF reader: parses the header, metadata and tensor directory with every length checked against the
// bytes left in the file, and reads single tensors on demand.
#include "common/gguf.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/status.h"

namespace adore {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kMaxDims = 4;             // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 4;            // nested arrays are legal but no real file nests deeply
// Caps on what metadata may make us allocate, independent of file size: a GgufValue costs ~48 bytes,
// so a 100 MB file of u8 array elements would otherwise ask for ~5 GB. Real vocabularies are < 1M.
constexpr uint64_t kMaxMetadataValues = uint64_t{1} << 23;

enum GgufValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

// Smallest encoding of one value of `type`, used to bound array counts by the bytes remaining.
uint64_t MinEncodedSize(uint32_t type) {
  switch (type) {
    case kU8:
    case kI8:
    case kBool:
      return 1;
    case kU16:
    case kI16:
      return 2;
    case kU32:
    case kI32:
    case kF32:
      return 4;
    case kU64:
    case kI64:
    case kF64:
    case kString:
      return 8;
    case kArray:
      return 12;
    default:
      return 1;
  }
}

// Sequential little-endian reader over a file whose size is known up front; every read is checked
// against that size first so a hostile length never drives an allocation or a short read.
class Reader {
 public:
  Reader(std::ifstream* in, uint64_t size, const std::string& path) : in_(in), size_(size), path_(path) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  absl::Status Bytes(void* dst, uint64_t n, const std::string& what) {
    if (n > remaining()) {
      return absl::DataLossError(
          absl::StrFormat("%s: truncated file: %s needs %d bytes at offset %d but the file has %d", path_,
                          what, n, pos_, size_));
    }
    if (n > 0 && !in_->read(static_cast<char*>(dst), static_cast<std::streamsize>(n))) {
      return absl::DataLossError(
          absl::StrFormat("%s: read error at offset %d while reading %s", path_, pos_, what));
    }
    pos_ += n;
    return absl::OkStatus();
  }

  template <typename T>
  absl::StatusOr<T> Scalar(const std::string& what) {
    T v;
    ADORE_RETURN_IF_ERROR(Bytes(&v, sizeof(T), what));
    return v;
  }

  absl::StatusOr<std::string> String(const std::string& what) {
    ADORE_ASSIGN_OR_RETURN(uint64_t len, Scalar<uint64_t>(what + " length"));
    if (len > remaining()) {
      return absl::DataLossError(
          absl::StrFormat("%s: %s has length %d at offset %d but only %d bytes remain in the file", path_,
                          what, len, pos_ - 8, remaining()));
    }
    std::string s(static_cast<size_t>(len), '\0');
    ADORE_RETURN_IF_ERROR(Bytes(s.data(), len, what));
    return s;
  }

 private:
  std::ifstream* in_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& path_;
};

class MetadataParser {
 public:
  MetadataParser(Reader* r, const std::string& path) : r_(r), path_(path) {}

  absl::StatusOr<GgufValue> Value(uint32_t type, const std::string& key, int depth) {
    GgufValue out;
    out.gguf_type = type;
    if (++values_ > kMaxMetadataValues) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "%s: metadata '%s': more than %d metadata values in the file", path_, key, kMaxMetadataValues));
    }
    switch (type) {
      case kU8: {
        ADORE_ASSIGN_OR_RETURN(uint8_t v, r_->Scalar<uint8_t>(key));
        out.v = uint64_t{v};
        break;
      }
      case kI8: {
        ADORE_ASSIGN_OR_RETURN(int8_t v, r_->Scalar<int8_t>(key));
        out.v = int64_t{v};
        break;
      }
      case kU16: {
        ADORE_ASSIGN_OR_RETURN(uint16_t v, r_->Scalar<uint16_t>(key));
        out.v = uint64_t{v};
        break;
      }
      case kI16: {
        ADORE_ASSIGN_OR_RETURN(int16_t v, r_->Scalar<int16_t>(key));
        out.v = int64_t{v};
        break;
      }
      case kU32: {
        ADORE_ASSIGN_OR_RETURN(uint32_t v, r_->Scalar<uint32_t>(key));
        out.v = uint64_t{v};
        break;
      }
      case kI32: {
        ADORE_ASSIGN_OR_RETURN(int32_t v, r_->Scalar<int32_t>(key));
        out.v = int64_t{v};
        break;
      }
      case kU64: {
        ADORE_ASSIGN_OR_RETURN(uint64_t v, r_->Scalar<uint64_t>(key));
        out.v = v;
        break;
      }
      case kI64: {
        ADORE_ASSIGN_OR_RETURN(int64_t v, r_->Scalar<int64_t>(key));
        out.v = v;
        break;
      }
      case kF32: {
        ADORE_ASSIGN_OR_RETURN(float v, r_->Scalar<float>(key));
        out.v = double{v};
        break;
      }
      case kF64: {
        ADORE_ASSIGN_OR_RETURN(double v, r_->Scalar<double>(key));
        out.v = v;
        break;
      }
      case kBool: {
        ADORE_ASSIGN_OR_RETURN(uint8_t v, r_->Scalar<uint8_t>(key));
        if (v > 1) {
          return absl::InvalidArgumentError(
              absl::StrFormat("%s: metadata '%s': bool value %d is not 0 or 1", path_, key, v));
        }
        out.v = v != 0;
        break;
      }
      case kString: {
        ADORE_ASSIGN_OR_RETURN(std::string s, r_->String(key));
        out.v = std::move(s);
        break;
      }
      case kArray: {
        if (depth >= kMaxArrayDepth) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "%s: metadata '%s': arrays nested more than %d deep", path_, key, kMaxArrayDepth));
        }
        ADORE_ASSIGN_OR_RETURN(uint32_t elem_type, r_->Scalar<uint32_t>(key + " array type"));
        if (elem_type > kF64) {
          return absl::InvalidArgumentError(
              absl::StrFormat("%s: metadata '%s': unknown array element type %d", path_, key, elem_type));
        }
        ADORE_ASSIGN_OR_RETURN(uint64_t count, r_->Scalar<uint64_t>(key + " array count"));
        if (count > r_->remaining() / MinEncodedSize(elem_type)) {
          return absl::DataLossError(
              absl::StrFormat("%s: metadata '%s': array count %d cannot fit in the %d bytes left in the file",
                              path_, key, count, r_->remaining()));
        }
        if (count > kMaxMetadataValues - values_) {
          return absl::ResourceExhaustedError(
              absl::StrFormat("%s: metadata '%s': array count %d exceeds the limit of %d values", path_, key,
                              count, kMaxMetadataValues));
        }
        GgufValue::Array arr;
        arr.reserve(static_cast<size_t>(count));
        for (uint64_t i = 0; i < count; ++i) {
          ADORE_ASSIGN_OR_RETURN(GgufValue e, Value(elem_type, key, depth + 1));
          arr.push_back(std::move(e));
        }
        out.v = std::move(arr);
        break;
      }
      default:
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: metadata '%s': unknown value type %d", path_, key, type));
    }
    return out;
  }

 private:
  Reader* r_;
  const std::string& path_;
  uint64_t values_ = 0;
};

// Integer view of a scalar value; false when it is not an integer or does not fit int64.
bool AsInt(const GgufValue& v, int64_t* out) {
  if (const auto* u = std::get_if<uint64_t>(&v.v)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(*u);
    return true;
  }
  if (const auto* i = std::get_if<int64_t>(&v.v)) {
    *out = *i;
    return true;
  }
  return false;
}

bool AsFloat(const GgufValue& v, double* out) {
  if (const auto* d = std::get_if<double>(&v.v)) {
    *out = *d;
    return true;
  }
  int64_t i;
  if (AsInt(v, &i)) {
    *out = static_cast<double>(i);
    return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<GgufFile> GgufFile::Open(const std::string& path) {
  ADORE_ASSIGN_OR_RETURN(OpenedFile opened, OpenForReading(path));
  std::ifstream& in = opened.in;
  const uint64_t file_size = opened.size;

  GgufFile f;
  f.path_ = path;
  f.file_size_ = file_size;
  Reader r(&in, file_size, f.path_);

  ADORE_ASSIGN_OR_RETURN(uint32_t magic, r.Scalar<uint32_t>("magic"));
  if (magic != kGgufMagic) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: bad magic 0x%08x (not a GGUF file)", path, magic));
  }
  ADORE_ASSIGN_OR_RETURN(f.version_, r.Scalar<uint32_t>("version"));
  // v1 used 32-bit counts and lengths; llama.cpp itself no longer reads it.
  if (f.version_ != 2 && f.version_ != 3) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: unsupported GGUF version %d (expected 2 or 3)", path, f.version_));
  }
  ADORE_ASSIGN_OR_RETURN(uint64_t tensor_count, r.Scalar<uint64_t>("tensor_count"));
  ADORE_ASSIGN_OR_RETURN(uint64_t kv_count, r.Scalar<uint64_t>("metadata_kv_count"));
  // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info 8 + 4 + 4 + 8.
  if (kv_count > r.remaining() / 13) {
    return absl::DataLossError(absl::StrFormat(
        "%s: metadata_kv_count %d cannot fit in the %d bytes of the file", path, kv_count, file_size));
  }
  if (tensor_count > r.remaining() / 24) {
    return absl::DataLossError(absl::StrFormat("%s: tensor_count %d cannot fit in the %d bytes of the file",
                                               path, tensor_count, file_size));
  }

  MetadataParser mp(&r, f.path_);
  for (uint64_t i = 0; i < kv_count; ++i) {
    ADORE_ASSIGN_OR_RETURN(std::string key, r.String(absl::StrCat("metadata key #", i)));
    ADORE_ASSIGN_OR_RETURN(uint32_t type, r.Scalar<uint32_t>(absl::StrCat("type of '", key, "'")));
    ADORE_ASSIGN_OR_RETURN(GgufValue value, mp.Value(type, key, 0));
    if (!f.metadata_.emplace(key, std::move(value)).second) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: metadata key '%s' appears twice", path, key));
    }
  }

  if (f.Has("general.alignment")) {
    const GgufValue& a = f.metadata_.at("general.alignment");
    int64_t align = 0;
    if (!AsInt(a, &align) || align <= 0 || align > (1 << 20) || (align & (align - 1)) != 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: general.alignment must be a power of two in [1, 2^20]", path));
    }
    f.alignment_ = static_cast<uint64_t>(align);
  }

  f.tensors_.reserve(static_cast<size_t>(tensor_count));
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensorInfo t;
    ADORE_ASSIGN_OR_RETURN(t.name, r.String(absl::StrCat("name of tensor #", i)));
    const std::string what = absl::StrCat("tensor '", t.name, "'");
    ADORE_ASSIGN_OR_RETURN(uint32_t n_dims, r.Scalar<uint32_t>(what + " n_dims"));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: %s has n_dims %d (must be 1..%d)", path, what, n_dims, kMaxDims));
    }
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      ADORE_ASSIGN_OR_RETURN(uint64_t ne, r.Scalar<uint64_t>(what + " ne"));
      if (ne == 0 || ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(numel, static_cast<int64_t>(ne), &numel)) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s: %s has invalid dimension ne[%d] = %d (zero or element count overflows)", path, what, d, ne));
      }
      t.ne.push_back(static_cast<int64_t>(ne));
    }
    ADORE_ASSIGN_OR_RETURN(uint32_t type_code, r.Scalar<uint32_t>(what + " type"));
    t.type = static_cast<GgmlType>(type_code);
    auto nbytes = GgmlTypeBytes(t.type, numel);
    if (!nbytes.ok()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: %s (type code %d): %s", path, what, type_code, nbytes.status().message()));
    }
    // Rows must be whole blocks: dequantization works per block and the engine per row.
    auto row_bytes = GgmlTypeBytes(t.type, t.ne[0]);
    if (!row_bytes.ok()) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: %s: row length ne[0] = %d: %s", path, what,
                                                        t.ne[0], row_bytes.status().message()));
    }
    t.nbytes = *nbytes;
    ADORE_ASSIGN_OR_RETURN(t.offset, r.Scalar<uint64_t>(what + " offset"));
    if (t.offset % f.alignment_ != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: %s data offset %d is not a multiple of the alignment %d", path, what, t.offset, f.alignment_));
    }
    f.tensors_.push_back(std::move(t));
  }

  // The data section starts at the next alignment boundary after the directory.
  const uint64_t pad = (f.alignment_ - r.pos() % f.alignment_) % f.alignment_;
  f.data_offset_ = r.pos() + pad;
  const uint64_t data_size = file_size >= f.data_offset_ ? file_size - f.data_offset_ : 0;
  if (f.data_offset_ > file_size && !f.tensors_.empty()) {
    return absl::DataLossError(absl::StrFormat(
        "%s: truncated file: data section would start at offset %d past end of file (size %d)", path,
        f.data_offset_, file_size));
  }

  std::vector<const GgufTensorInfo*> by_offset;
  by_offset.reserve(f.tensors_.size());
  for (const GgufTensorInfo& t : f.tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      return absl::DataLossError(
          absl::StrFormat("%s: tensor '%s' data [offset %d, %d bytes] runs past end of file (size %d)", path,
                          t.name, f.data_offset_ + t.offset, t.nbytes, file_size));
    }
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](const GgufTensorInfo* a, const GgufTensorInfo* b) {
    return a->offset != b->offset ? a->offset < b->offset : a->name < b->name;
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensorInfo* prev = by_offset[i - 1];
    const GgufTensorInfo* cur = by_offset[i];
    if (cur->offset < prev->offset + prev->nbytes) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: tensor '%s' data [offset %d, %d bytes] overlaps tensor '%s' [offset %d, %d bytes]", path,
          cur->name, cur->offset, cur->nbytes, prev->name, prev->offset, prev->nbytes));
    }
  }
  std::vector<const std::string*> names;
  for (const GgufTensorInfo& t : f.tensors_) names.push_back(&t.name);
  std::sort(names.begin(), names.end(), [](auto* a, auto* b) { return *a < *b; });
  for (size_t i = 1; i < names.size(); ++i) {
    if (*names[i] == *names[i - 1]) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: tensor name '%s' appears twice", path, *names[i]));
    }
  }
  return f;
}

absl::StatusOr<std::string> GgufFile::GetString(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) {
    return absl::NotFoundError(absl::StrFormat("%s: missing metadata key '%s'", path_, key));
  }
  if (const auto* s = std::get_if<std::string>(&it->second.v)) return *s;
  return absl::InvalidArgumentError(
      absl::StrFormat("%s: metadata '%s' is not a string (type %d)", path_, key, it->second.gguf_type));
}

absl::StatusOr<int64_t> GgufFile::GetInt(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) {
    return absl::NotFoundError(absl::StrFormat("%s: missing metadata key '%s'", path_, key));
  }
  int64_t v;
  if (AsInt(it->second, &v)) return v;
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s: metadata '%s' is not an integer that fits int64 (type %d)", path_, key, it->second.gguf_type));
}

absl::StatusOr<double> GgufFile::GetFloat(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) {
    return absl::NotFoundError(absl::StrFormat("%s: missing metadata key '%s'", path_, key));
  }
  double v;
  if (AsFloat(it->second, &v)) return v;
  return absl::InvalidArgumentError(
      absl::StrFormat("%s: metadata '%s' is not a number (type %d)", path_, key, it->second.gguf_type));
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) {
    return absl::NotFoundError(absl::StrFormat("%s: missing metadata key '%s'", path_, key));
  }
  const auto* arr = std::get_if<GgufValue::Array>(&it->second.v);
  if (arr == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: metadata '%s' is not an array", path_, key));
  }
  std::vector<std::string> out;
  out.reserve(arr->size());
  for (size_t i = 0; i < arr->size(); ++i) {
    const auto* s = std::get_if<std::string>(&(*arr)[i].v);
    if (s == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: metadata '%s'[%d] is not a string", path_, key, i));
    }
    out.push_back(*s);
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) {
    return absl::NotFoundError(absl::StrFormat("%s: missing metadata key '%s'", path_, key));
  }
  const auto* arr = std::get_if<GgufValue::Array>(&it->second.v);
  if (arr == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: metadata '%s' is not an array", path_, key));
  }
  std::vector<int64_t> out(arr->size());
  for (size_t i = 0; i < arr->size(); ++i) {
    if (!AsInt((*arr)[i], &out[i])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: metadata '%s'[%d] is not an integer", path_, key, i));
    }
  }
  return out;
}

absl::StatusOr<std::vector<double>> GgufFile::GetFloatArray(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) {
    return absl::NotFoundError(absl::StrFormat("%s: missing metadata key '%s'", path_, key));
  }
  const auto* arr = std::get_if<GgufValue::Array>(&it->second.v);
  if (arr == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: metadata '%s' is not an array", path_, key));
  }
  std::vector<double> out(arr->size());
  for (size_t i = 0; i < arr->size(); ++i) {
    if (!AsFloat((*arr)[i], &out[i])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: metadata '%s'[%d] is not a number", path_, key, i));
    }
  }
  return out;
}

const GgufTensorInfo* GgufFile::FindTensor(const std::string& name) const {
  for (const GgufTensorInfo& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

absl::StatusOr<Tensor> GgufFile::ReadTensor(const std::string& name) const {
  const GgufTensorInfo* info = FindTensor(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrFormat("%s: no tensor named '%s'", path_, name));
  }
  Tensor t;
  t.shape.assign(info->ne.rbegin(), info->ne.rend());
  const int64_t numel = t.numel();  // overflow-checked at Open()
  // Open() bounded nbytes by the file size; the element count of a compressed type can still be ~8x
  // that, which is the caller's memory to spend.
  std::vector<char> raw(static_cast<size_t>(info->nbytes));
  std::ifstream in(path_, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("%s: cannot reopen for reading", path_));
  in.seekg(static_cast<std::streamoff>(data_offset_ + info->offset));
  if (!in || !in.read(raw.data(), static_cast<std::streamsize>(raw.size()))) {
    return absl::DataLossError(absl::StrFormat(
        "%s: tensor '%s' data [offset %d, %d bytes]: short read (file changed since it was opened?)", path_,
        name, data_offset_ + info->offset, info->nbytes));
  }
  t.data.resize(static_cast<size_t>(numel));
  absl::Status s = Dequantize(info->type, raw.data(), numel, t.data.data());
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrFormat("%s: tensor '%s': %s", path_, name, s.message()));
  }
  return t;
}

}  // namespace adore
