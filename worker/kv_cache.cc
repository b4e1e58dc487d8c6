// KvPool: row allocation for the CPU engine's KV cache.
#include "worker/kv_cache.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace adore {

uint64_t SlotMapHash(const SequenceKv& seq) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over (row, pos) pairs, little-endian bytes
  auto mix = [&](int32_t v) {
    for (int b = 0; b < 4; ++b) {
      h ^= static_cast<uint8_t>(static_cast<uint32_t>(v) >> (8 * b));
      h *= 0x100000001b3ull;
    }
  };
  for (int64_t s = 0; s < seq.num_slots(); ++s) {
    mix(seq.rows[s]);
    mix(seq.pos[s]);
  }
  return h;
}

RowAllocator::RowAllocator(int64_t num_rows) : num_rows_(num_rows) {
  free_.reserve(num_rows);
  for (int64_t r = num_rows - 1; r >= 0; --r) free_.push_back(static_cast<int32_t>(r));
}

KvPool::KvPool(int64_t num_layers, int64_t num_rows, int64_t num_kv_heads, int64_t head_dim)
    : row_stride_(num_kv_heads * head_dim), rows_(num_rows) {
  k_.resize(num_layers);
  v_.resize(num_layers);
  for (int64_t l = 0; l < num_layers; ++l) {
    k_[l].assign(num_rows * row_stride_, 0.0f);
    v_[l].assign(num_rows * row_stride_, 0.0f);
  }
}

absl::StatusOr<std::vector<int32_t>> RowAllocator::Allocate(int64_t n) {
  if (n > num_free()) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "KV cache full: %d rows requested, %d of %d free", n, num_free(), num_rows_));
  }
  std::vector<int32_t> rows(free_.end() - n, free_.end());
  free_.resize(free_.size() - n);
  std::reverse(rows.begin(), rows.end());
  return rows;
}

void RowAllocator::Release(SequenceKv& seq) {
  for (int32_t r : seq.rows) {
    if (r >= 0) free_.push_back(r);
  }
  seq.rows.clear();
  seq.pos.clear();
  seq.next_pos = 0;
  ++seq.version;
}

void RowAllocator::Free(std::span<const int32_t> rows) {
  for (int32_t r : rows) {
    if (r >= 0) free_.push_back(r);
  }
}

}  // namespace adore
