// ggml tensor types: block sizes and dequantization to f32 (F32/F16/BF16, the legacy 32-element
// quants and the 256-element K-quants), written from the block layouts in the GGUF spec.
#include <cstdint>
#include <cstring>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "common/gguf.h"

namespace adore {
namespace {

struct TypeTraits {
  int64_t block_elems;  // elements per block
  int64_t block_bytes;  // bytes per block on disk
};

// Only types whose layout we know; the rest (IQ*, TQ*, ...) are rejected at Open() by type code.
bool LookupTraits(GgmlType t, TypeTraits* out) {
  switch (t) {
    case GgmlType::kF32:
      *out = {1, 4};
      return true;
    case GgmlType::kF16:
      *out = {1, 2};
      return true;
    case GgmlType::kBF16:
      *out = {1, 2};
      return true;
    case GgmlType::kQ4_0:
      *out = {32, 2 + 16};
      return true;
    case GgmlType::kQ4_1:
      *out = {32, 2 + 2 + 16};
      return true;
    case GgmlType::kQ5_0:
      *out = {32, 2 + 4 + 16};
      return true;
    case GgmlType::kQ5_1:
      *out = {32, 2 + 2 + 4 + 16};
      return true;
    case GgmlType::kQ8_0:
      *out = {32, 2 + 32};
      return true;
    case GgmlType::kQ8_1:
      *out = {32, 2 + 2 + 32};
      return true;
    case GgmlType::kQ2_K:
      *out = {256, 16 + 64 + 2 + 2};
      return true;
    case GgmlType::kQ3_K:
      *out = {256, 32 + 64 + 12 + 2};
      return true;
    case GgmlType::kQ4_K:
      *out = {256, 2 + 2 + 12 + 128};
      return true;
    case GgmlType::kQ5_K:
      *out = {256, 2 + 2 + 12 + 32 + 128};
      return true;
    case GgmlType::kQ6_K:
      *out = {256, 128 + 64 + 16 + 2};
      return true;
    case GgmlType::kQ8_K:
      *out = {256, 4 + 256 + 32};
      return true;
  }
  return false;
}

// IEEE half -> float by bit manipulation, so results do not depend on compiler _Float16 support.
float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalize into the float exponent range
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3FFu) << 13);
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

float Bf16ToFloat(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Unaligned little-endian loads: block fields sit at odd offsets inside the packed blocks.
uint16_t LoadU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
float LoadHalf(const uint8_t* p) { return HalfToFloat(LoadU16(p)); }

void DequantQ4_0(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
    y[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

void DequantQ4_1(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float m = LoadHalf(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
    y[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

// Q5: the fifth bit of element j lives in bit j of the 32-bit qh word.
void DequantQ5_0(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | (((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4);
    y[j] = static_cast<float>(lo - 16) * d;
    y[j + 16] = static_cast<float>(hi - 16) * d;
  }
}

void DequantQ5_1(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float m = LoadHalf(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | (((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4);
    y[j] = static_cast<float>(lo) * d + m;
    y[j + 16] = static_cast<float>(hi) * d + m;
  }
}

void DequantQ8_0(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

void DequantQ8_1(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);  // b + 2 holds d * sum(qs), only used by dot products
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 4);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

// K-quants pack eight 6-bit (scale, min) pairs into 12 bytes: pairs 0-3 use the low 6 bits of bytes
// 0-7; pairs 4-7 combine a nibble of bytes 8-11 with the top 2 bits of bytes 0-7.
void ScaleMinK4(int j, const uint8_t* q, int* sc, int* mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

void DequantQ4_K(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float dmin = LoadHalf(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  // Each 64-element chunk shares 32 bytes: low nibbles form sub-block 2c, high nibbles 2c+1.
  for (int chunk = 0; chunk < 4; ++chunk) {
    int sc, mn;
    ScaleMinK4(2 * chunk, scales, &sc, &mn);
    const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(mn);
    ScaleMinK4(2 * chunk + 1, scales, &sc, &mn);
    const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(mn);
    for (int l = 0; l < 32; ++l) y[l] = d1 * static_cast<float>(q[l] & 0x0F) - m1;
    for (int l = 0; l < 32; ++l) y[32 + l] = d2 * static_cast<float>(q[l] >> 4) - m2;
    q += 32;
    y += 64;
  }
}

void DequantQ5_K(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float dmin = LoadHalf(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  // As Q4_K, plus a fifth bit per element: sub-block s takes bit s of qh[l].
  for (int chunk = 0; chunk < 4; ++chunk) {
    int sc, mn;
    ScaleMinK4(2 * chunk, scales, &sc, &mn);
    const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(mn);
    ScaleMinK4(2 * chunk + 1, scales, &sc, &mn);
    const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(mn);
    const int bit_lo = 2 * chunk, bit_hi = 2 * chunk + 1;
    for (int l = 0; l < 32; ++l) {
      const int v = (ql[l] & 0x0F) | (((qh[l] >> bit_lo) & 1) << 4);
      y[l] = d1 * static_cast<float>(v) - m1;
    }
    for (int l = 0; l < 32; ++l) {
      const int v = (ql[l] >> 4) | (((qh[l] >> bit_hi) & 1) << 4);
      y[32 + l] = d2 * static_cast<float>(v) - m2;
    }
    ql += 32;
    y += 64;
  }
}

void DequantQ6_K(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = LoadHalf(b + 208);
  // Two 128-element halves; each uses 64 bytes of low nibbles, 32 bytes of 2-bit highs, 8 scales
  // (one per 16 elements).
  for (int half = 0; half < 2; ++half) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn BlockDequantizer(GgmlType t) {
  switch (t) {
    case GgmlType::kQ4_0:
      return DequantQ4_0;
    case GgmlType::kQ4_1:
      return DequantQ4_1;
    case GgmlType::kQ5_0:
      return DequantQ5_0;
    case GgmlType::kQ5_1:
      return DequantQ5_1;
    case GgmlType::kQ8_0:
      return DequantQ8_0;
    case GgmlType::kQ8_1:
      return DequantQ8_1;
    case GgmlType::kQ4_K:
      return DequantQ4_K;
    case GgmlType::kQ5_K:
      return DequantQ5_K;
    case GgmlType::kQ6_K:
      return DequantQ6_K;
    default:
      return nullptr;
  }
}

}  // namespace

const char* GgmlTypeName(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
      return "F32";
    case GgmlType::kF16:
      return "F16";
    case GgmlType::kQ4_0:
      return "Q4_0";
    case GgmlType::kQ4_1:
      return "Q4_1";
    case GgmlType::kQ5_0:
      return "Q5_0";
    case GgmlType::kQ5_1:
      return "Q5_1";
    case GgmlType::kQ8_0:
      return "Q8_0";
    case GgmlType::kQ8_1:
      return "Q8_1";
    case GgmlType::kQ2_K:
      return "Q2_K";
    case GgmlType::kQ3_K:
      return "Q3_K";
    case GgmlType::kQ4_K:
      return "Q4_K";
    case GgmlType::kQ5_K:
      return "Q5_K";
    case GgmlType::kQ6_K:
      return "Q6_K";
    case GgmlType::kQ8_K:
      return "Q8_K";
    case GgmlType::kBF16:
      return "BF16";
  }
  return "unknown";
}

absl::StatusOr<uint64_t> GgmlTypeBytes(GgmlType t, int64_t n) {
  TypeTraits tr;
  if (!LookupTraits(t, &tr)) {
    return absl::InvalidArgumentError(absl::StrFormat("unknown ggml type code %u", static_cast<uint32_t>(t)));
  }
  if (n < 0 || n % tr.block_elems != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%d elements of type %s is not a whole number of %d-element blocks", n,
                        GgmlTypeName(t), tr.block_elems));
  }
  const uint64_t blocks = static_cast<uint64_t>(n / tr.block_elems);
  // n <= INT64_MAX and block_bytes/block_elems <= 34/32 + slack, but guard anyway.
  uint64_t bytes;
  if (__builtin_mul_overflow(blocks, static_cast<uint64_t>(tr.block_bytes), &bytes)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%d elements of type %s overflow a 64-bit byte count", n, GgmlTypeName(t)));
  }
  return bytes;
}

absl::Status Dequantize(GgmlType t, const void* src, int64_t n, float* dst) {
  TypeTraits tr;
  if (!LookupTraits(t, &tr)) {
    return absl::InvalidArgumentError(absl::StrFormat("unknown ggml type code %u", static_cast<uint32_t>(t)));
  }
  if (n < 0 || n % tr.block_elems != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%d elements of type %s is not a whole number of %d-element blocks", n,
                        GgmlTypeName(t), tr.block_elems));
  }
  const uint8_t* p = static_cast<const uint8_t*>(src);
  switch (t) {
    case GgmlType::kF32:
      // An empty tensor may come with null buffers (an empty std::vector's data()), which memcpy must not get.
      if (n > 0) std::memcpy(dst, p, static_cast<size_t>(n) * 4);
      return absl::OkStatus();
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = LoadHalf(p + 2 * i);
      return absl::OkStatus();
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToFloat(LoadU16(p + 2 * i));
      return absl::OkStatus();
    default:
      break;
  }
  const BlockFn fn = BlockDequantizer(t);
  if (fn == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrFormat("dequantization of ggml type %s is not supported", GgmlTypeName(t)));
  }
  const int64_t blocks = n / tr.block_elems;
  for (int64_t b = 0; b < blocks; ++b) {
    fn(p + b * tr.block_bytes, dst + b * tr.block_elems);
  }
  return absl::OkStatus();
}

}  // namespace adore
