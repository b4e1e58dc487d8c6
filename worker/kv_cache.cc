// KvPool: row allocation for the CPU engine's KV cache.
#include "worker/kv_cache.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace adore {

namespace {

// The finalizer of SplitMix64 (Steele, Lea, Flood 2014): every input bit affects every output bit.
uint64_t Mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

uint64_t SlotHashTerm(int64_t slot, int32_t row, int32_t position) {
  const uint64_t packed = (static_cast<uint64_t>(static_cast<uint32_t>(row)) << 32) | static_cast<uint32_t>(position);
  return Mix64(Mix64(static_cast<uint64_t>(slot) + 0x9e3779b97f4a7c15ull) ^ packed);
}

uint64_t SlotMapHash(const SequenceKv& seq) {
  uint64_t h = 0;
  for (int64_t s = 0; s < seq.num_slots(); ++s) h += SlotHashTerm(s, seq.rows[s], seq.pos[s]);
  return h;
}

void SequenceKv::SetSlot(int64_t s, int32_t row, int32_t position) {
  map_hash += SlotHashTerm(s, row, position) - SlotHashTerm(s, rows[s], pos[s]);
  rows[s] = row;
  pos[s] = position;
}

void SequenceKv::AppendSlot(int32_t row, int32_t position) {
  map_hash += SlotHashTerm(num_slots(), row, position);
  rows.push_back(row);
  pos.push_back(position);
}

void SequenceKv::RehashSlotMap() { map_hash = SlotMapHash(*this); }

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
  seq.map_hash = 0;
  ++seq.version;
}

void RowAllocator::Free(std::span<const int32_t> rows) {
  for (int32_t r : rows) {
    if (r >= 0) free_.push_back(r);
  }
}

}  // namespace adore
