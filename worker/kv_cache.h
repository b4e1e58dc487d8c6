// KV storage of the CPU engine: one pool of physical rows shared by all sequences, and per sequence a slot
// table (slot -> physical row, position). Attention reads slots through the table, so a release policy can
// overwrite a slot in place; nothing is ever compacted or copied.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace adore {

// One sequence's view of the cache. Slot i holds the K/V of the token at position `pos[i]` in physical
// row `rows[i]` of every layer (uniform schedule: the same map for all layers and heads).
struct SequenceKv {
  std::vector<int32_t> rows;  // [num_slots] physical row, -1 = empty
  std::vector<int32_t> pos;   // [num_slots] token position held by the slot
  int32_t next_pos = 0;       // position of the next token to be appended
  // Counts changes to rows / pos: PlanForward (once per call that includes the sequence) and the pools'
  // Release increment it. Code that edits the table directly must increment it too: the CUDA engine keeps
  // the tables it staged on the GPU and, when a table's version shows that only its last call's plan
  // changed it, uploads just the changed entries.
  uint64_t version = 0;
  // SlotMapHash(*this), kept up to date by PlanForward and the pools' Release in O(slots changed), so that
  // ranks can compare slot maps every step without a pass over every table (at 64 sequences of 8k slots
  // the whole-table hash cost 5 ms a step). Code that edits rows / pos directly must call RehashSlotMap().
  uint64_t map_hash = 0;

  int64_t num_slots() const { return static_cast<int64_t>(rows.size()); }
  // Sets slot `s` (an existing one) to (row, position), keeping map_hash.
  void SetSlot(int64_t s, int32_t row, int32_t position);
  // Appends a slot, keeping map_hash.
  void AppendSlot(int32_t row, int32_t position);
  // Recomputes map_hash from the table.
  void RehashSlotMap();
};

// One slot's share of the slot-map hash: a 64-bit mix of (slot, row, position).
uint64_t SlotHashTerm(int64_t slot, int32_t row, int32_t position);

// The slot-map hash computed from the table: the sum (mod 2^64) of SlotHashTerm over every slot, free ones
// (row -1) included. Equal on every tensor-parallel rank that took the same release decisions (rows are
// allocated deterministically), so ranks can check they agree; a sum, so a changed slot updates it in O(1).
uint64_t SlotMapHash(const SequenceKv& seq);

// Free-row bookkeeping shared by the CPU and CUDA KV pools: a stack, lowest rows handed out first.
class RowAllocator {
 public:
  explicit RowAllocator(int64_t num_rows = 0);
  // Takes `n` free rows; RESOURCE_EXHAUSTED (taking none) when fewer are free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int64_t n);
  // Returns every row of `seq` and clears it.
  void Release(SequenceKv& seq);
  // Returns single rows (a released slot left empty).
  void Free(std::span<const int32_t> rows);
  int64_t num_rows() const { return num_rows_; }
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }

 private:
  int64_t num_rows_;
  std::vector<int32_t> free_;
};

class KvPool {
 public:
  // `num_rows` rows of [num_kv_heads, head_dim] floats for K and for V in each of `num_layers` layers.
  KvPool(int64_t num_layers, int64_t num_rows, int64_t num_kv_heads, int64_t head_dim);

  // Takes `n` free rows; RESOURCE_EXHAUSTED (taking none) when fewer are free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int64_t n) { return rows_.Allocate(n); }
  // Returns every row of `seq` to the pool and clears it.
  void Release(SequenceKv& seq) { rows_.Release(seq); }
  RowAllocator& rows() { return rows_; }

  float* k(int64_t layer) { return k_[layer].data(); }  // [num_rows, num_kv_heads, head_dim]
  float* v(int64_t layer) { return v_[layer].data(); }
  int64_t num_rows() const { return rows_.num_rows(); }
  int64_t num_free() const { return rows_.num_free(); }
  int64_t row_stride() const { return row_stride_; }

 private:
  int64_t row_stride_;  // num_kv_heads * head_dim
  std::vector<std::vector<float>> k_, v_;
  RowAllocator rows_;
};

}  // namespace adore
