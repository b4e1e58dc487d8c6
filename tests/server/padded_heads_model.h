// Test-only: a copy of a GGUF Llama model with zero attention heads appended, so that a model whose head
// counts do not divide a tensor-parallel size (SmolLM2: 9 query / 3 KV heads over 2 ranks) can still be
// split. The added query heads read an added all-zero KV head and write through zero columns of the output
// projection, so the model computes the same function; only the attention mass a release policy sees
// changes (the zero heads spread theirs evenly), which is why references must run on the padded file too.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "common/gguf.h"
#include "common/status.h"

namespace adore::testing {

namespace padded_internal {

// Little-endian cursor over a whole GGUF file held in memory; every read is bounds-checked.
struct Cursor {
  const std::string& bytes;
  size_t pos = 0;

  absl::Status Need(size_t n) const {
    if (bytes.size() - pos < n) return absl::DataLossError(absl::StrFormat("GGUF truncated at offset %d", pos));
    return absl::OkStatus();
  }
  absl::StatusOr<uint64_t> Uint(size_t width) {
    ADORE_RETURN_IF_ERROR(Need(width));
    uint64_t v = 0;
    std::memcpy(&v, bytes.data() + pos, width);  // little-endian host
    pos += width;
    return v;
  }
  absl::StatusOr<std::string> Str() {
    ADORE_ASSIGN_OR_RETURN(uint64_t len, Uint(8));
    ADORE_RETURN_IF_ERROR(Need(len));
    std::string s = bytes.substr(pos, len);
    pos += len;
    return s;
  }
};

// Width in bytes of a fixed-size GGUF value type, 0 for string (8) and array (9).
inline size_t ValueWidth(uint32_t type) {
  switch (type) {
    case 0: case 1: case 7: return 1;     // u8, i8, bool
    case 2: case 3: return 2;             // u16, i16
    case 4: case 5: case 6: return 4;     // u32, i32, f32
    case 10: case 11: case 12: return 8;  // u64, i64, f64
    default: return 0;
  }
}

inline absl::Status SkipValue(Cursor& c, uint32_t type) {
  if (type == 8) return c.Str().status();
  if (type == 9) {
    ADORE_ASSIGN_OR_RETURN(uint64_t elem, c.Uint(4));
    ADORE_ASSIGN_OR_RETURN(uint64_t count, c.Uint(8));
    if (elem == 8) {
      for (uint64_t i = 0; i < count; ++i) ADORE_RETURN_IF_ERROR(c.Str().status());
      return absl::OkStatus();
    }
    const size_t w = ValueWidth(static_cast<uint32_t>(elem));
    if (w == 0) return absl::UnimplementedError("GGUF: nested arrays are not handled here");
    ADORE_RETURN_IF_ERROR(c.Need(w * count));
    c.pos += w * count;
    return absl::OkStatus();
  }
  const size_t w = ValueWidth(type);
  if (w == 0) return absl::InvalidArgumentError(absl::StrFormat("GGUF: unknown value type %d", type));
  ADORE_RETURN_IF_ERROR(c.Need(w));
  c.pos += w;
  return absl::OkStatus();
}

inline void Put(std::string* out, const void* p, size_t n) { out->append(static_cast<const char*>(p), n); }
inline void PutU32(std::string* out, uint32_t v) { Put(out, &v, 4); }
inline void PutU64(std::string* out, uint64_t v) { Put(out, &v, 8); }
inline uint64_t Align(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace padded_internal

// Writes `src` (a GGUF Llama model) to `dst` with `num_heads` query heads and `num_kv_heads` KV heads:
// blk.*.attn_q / attn_k / attn_v gain zero rows for the new heads and attn_output zero columns (these four
// are stored as F32, the exact dequantized values; every other tensor and all metadata are copied byte
// for byte, with head_count / head_count_kv changed and key_length set so head_dim stays). The new heads
// keep the old query-per-KV-head ratio. INVALID_ARGUMENT when the counts cannot be reached that way.
inline absl::Status WritePaddedHeadsModel(const std::string& src, const std::string& dst, int64_t num_heads,
                                          int64_t num_kv_heads) {
  using namespace padded_internal;
  std::ifstream in(src, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("%s: cannot be opened", src));
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Cursor c{bytes};
  ADORE_ASSIGN_OR_RETURN(uint64_t magic, c.Uint(4));
  ADORE_ASSIGN_OR_RETURN(uint64_t version, c.Uint(4));
  if (magic != 0x46554747 || version < 2) return absl::InvalidArgumentError(src + ": not a GGUF v2/v3 file");
  ADORE_ASSIGN_OR_RETURN(uint64_t n_tensors, c.Uint(8));
  ADORE_ASSIGN_OR_RETURN(uint64_t n_kv, c.Uint(8));

  // Metadata: copied as is, with the head counts patched in place.
  const size_t kv_begin = c.pos;
  std::string arch;
  uint64_t alignment = 32;
  struct Field {
    size_t at = 0;
    size_t width = 0;
  } heads, kv_heads;
  bool has_key_length = false;
  for (uint64_t i = 0; i < n_kv; ++i) {
    ADORE_ASSIGN_OR_RETURN(std::string key, c.Str());
    ADORE_ASSIGN_OR_RETURN(uint64_t type, c.Uint(4));
    const size_t at = c.pos;
    if (key == "general.architecture" && type == 8) {
      ADORE_ASSIGN_OR_RETURN(arch, c.Str());
      continue;
    }
    if (key == "general.alignment") {
      ADORE_ASSIGN_OR_RETURN(alignment, c.Uint(ValueWidth(static_cast<uint32_t>(type))));
      continue;
    }
    if (absl::EndsWith(key, ".attention.head_count")) heads = {at, ValueWidth(static_cast<uint32_t>(type))};
    if (absl::EndsWith(key, ".attention.head_count_kv")) kv_heads = {at, ValueWidth(static_cast<uint32_t>(type))};
    if (absl::EndsWith(key, ".attention.key_length")) has_key_length = true;
    ADORE_RETURN_IF_ERROR(SkipValue(c, static_cast<uint32_t>(type)));
  }
  std::string kv = bytes.substr(kv_begin, c.pos - kv_begin);
  if (heads.width == 0 || kv_heads.width == 0 || arch.empty()) {
    return absl::InvalidArgumentError(src + ": no general.architecture or integer head counts");
  }
  uint64_t old_heads = 0, old_kv_heads = 0;
  std::memcpy(&old_heads, bytes.data() + heads.at, heads.width);
  std::memcpy(&old_kv_heads, bytes.data() + kv_heads.at, kv_heads.width);
  if (num_heads < static_cast<int64_t>(old_heads) || num_kv_heads * static_cast<int64_t>(old_heads) !=
                                                         num_heads * static_cast<int64_t>(old_kv_heads)) {
    return absl::InvalidArgumentError(absl::StrFormat("%d/%d heads cannot be padded to %d/%d", old_heads,
                                                      old_kv_heads, num_heads, num_kv_heads));
  }
  std::memcpy(kv.data() + (heads.at - kv_begin), &num_heads, heads.width);
  std::memcpy(kv.data() + (kv_heads.at - kv_begin), &num_kv_heads, kv_heads.width);

  struct TensorOut {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type = 0;
    std::string owned;          // new F32 data, or empty: copy `raw`
    const char* raw = nullptr;  // into `bytes`
    uint64_t nbytes = 0;
  };
  struct TensorIn {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type = 0;
    uint64_t offset = 0;
  };
  std::vector<TensorIn> tin(n_tensors);
  for (TensorIn& t : tin) {
    ADORE_ASSIGN_OR_RETURN(t.name, c.Str());
    ADORE_ASSIGN_OR_RETURN(uint64_t n_dims, c.Uint(4));
    t.ne.resize(n_dims);
    for (uint64_t& d : t.ne) {
      ADORE_ASSIGN_OR_RETURN(d, c.Uint(8));
    }
    ADORE_ASSIGN_OR_RETURN(uint64_t type, c.Uint(4));
    t.type = static_cast<uint32_t>(type);
    ADORE_ASSIGN_OR_RETURN(t.offset, c.Uint(8));
  }
  const uint64_t data_start = Align(c.pos, alignment);

  int64_t head_dim = 0;
  std::vector<TensorOut> tout;
  for (const TensorIn& t : tin) {
    TensorOut o{t.name, t.ne, t.type};
    int64_t numel = 1;
    for (uint64_t d : t.ne) numel *= static_cast<int64_t>(d);
    ADORE_ASSIGN_OR_RETURN(o.nbytes, GgmlTypeBytes(static_cast<GgmlType>(t.type), numel));
    if (data_start + t.offset + o.nbytes > bytes.size()) return absl::DataLossError(t.name + ": data past the end");
    o.raw = bytes.data() + data_start + t.offset;
    const bool q = absl::EndsWith(t.name, ".attn_q.weight"), k = absl::EndsWith(t.name, ".attn_k.weight"),
               v = absl::EndsWith(t.name, ".attn_v.weight"), out = absl::EndsWith(t.name, ".attn_output.weight");
    if ((q || k || v || out) && t.ne.size() == 2) {
      std::vector<float> w(numel);
      ADORE_RETURN_IF_ERROR(Dequantize(static_cast<GgmlType>(t.type), o.raw, numel, w.data()));
      const uint64_t cols = t.ne[0], rows = t.ne[1];  // row-major [rows][cols]
      if (k || v) head_dim = static_cast<int64_t>(rows) / static_cast<int64_t>(old_kv_heads);
      std::vector<float> padded;
      if (out) {  // [hidden][heads * head_dim]: zero columns for the new heads
        const uint64_t new_cols = cols / old_heads * num_heads;
        padded.assign(rows * new_cols, 0.0f);
        for (uint64_t r = 0; r < rows; ++r) std::memcpy(&padded[r * new_cols], &w[r * cols], cols * 4);
        o.ne = {new_cols, rows};
      } else {  // [heads * head_dim][hidden]: zero rows for the new heads
        const uint64_t old_n = q ? old_heads : old_kv_heads, new_n = q ? num_heads : num_kv_heads;
        const uint64_t new_rows = rows / old_n * new_n;
        padded.assign(new_rows * cols, 0.0f);
        std::memcpy(padded.data(), w.data(), w.size() * 4);
        o.ne = {cols, new_rows};
      }
      o.type = static_cast<uint32_t>(GgmlType::kF32);
      o.owned.assign(reinterpret_cast<const char*>(padded.data()), padded.size() * 4);
      o.nbytes = o.owned.size();
      o.raw = o.owned.data();
    }
    tout.push_back(std::move(o));
  }
  if (head_dim <= 0) return absl::InvalidArgumentError(src + ": no attn_k / attn_v tensors");
  if (!has_key_length) {  // head_dim would otherwise follow hidden_size / head_count
    for (const char* key : {".attention.key_length", ".attention.value_length"}) {
      const std::string name = arch + key;
      PutU64(&kv, name.size());
      kv += name;
      PutU32(&kv, 4);  // u32
      PutU32(&kv, static_cast<uint32_t>(head_dim));
      ++n_kv;
    }
  }

  std::string head;
  PutU32(&head, static_cast<uint32_t>(magic));
  PutU32(&head, static_cast<uint32_t>(version));
  PutU64(&head, tout.size());
  PutU64(&head, n_kv);
  head += kv;
  uint64_t offset = 0;
  std::vector<uint64_t> offsets;
  for (const TensorOut& o : tout) {
    offset = Align(offset, alignment);
    offsets.push_back(offset);
    PutU64(&head, o.name.size());
    head += o.name;
    PutU32(&head, static_cast<uint32_t>(o.ne.size()));
    for (uint64_t d : o.ne) PutU64(&head, d);
    PutU32(&head, o.type);
    PutU64(&head, offset);
    offset += o.nbytes;
  }
  head.resize(Align(head.size(), alignment), '\0');
  std::ofstream f(dst, std::ios::binary | std::ios::trunc);
  f.write(head.data(), static_cast<std::streamsize>(head.size()));
  uint64_t written = 0;
  const std::string zeros(alignment, '\0');
  for (size_t i = 0; i < tout.size(); ++i) {
    f.write(zeros.data(), static_cast<std::streamsize>(offsets[i] - written));
    f.write(tout[i].raw, static_cast<std::streamsize>(tout[i].nbytes));
    written = offsets[i] + tout[i].nbytes;
  }
  f.close();
  if (!f) return absl::InternalError(absl::StrFormat("%s: write failed", dst));
  return absl::OkStatus();
}

}  // namespace adore::testing
