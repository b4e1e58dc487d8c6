// Random KV pools and slot tables for the attention kernel tests: shuffled physical rows, shuffled slot
// order, empty slots (-1) and slots holding positions after the query (which the mask must hide).
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "tests/cuda/cuda_test_util.h"

namespace adore::testing {

struct AttnShape {
  int64_t head_dim, num_heads, num_kv_heads;
};

inline std::ostream& operator<<(std::ostream& os, const AttnShape& s) {
  return os << "head_dim " << s.head_dim << " heads " << s.num_heads << " kv_heads " << s.num_kv_heads;
}

// A KV pool whose values are exactly representable in bf16 (so the CPU reference sees what the GPU sees).
struct HostKvPool {
  int64_t num_rows = 0, row_dim = 0;
  std::vector<float> k, v;  // [num_rows, row_dim]

  HostKvPool(int64_t rows, int64_t dim, uint32_t seed) : num_rows(rows), row_dim(dim) {
    k = RoundToBf16(RandomFloats(rows * dim, -1, 1, seed));
    v = RoundToBf16(RandomFloats(rows * dim, -1, 1, seed + 1));
  }
};

// The slot tables of a batch in the CSR form the kernels read.
struct SlotTables {
  std::vector<int32_t> offsets{0};  // [num_seqs + 1]
  std::vector<int32_t> rows, pos;   // [total_slots]

  int64_t num_seqs() const { return static_cast<int64_t>(offsets.size()) - 1; }
  int64_t len(int64_t b) const { return offsets[b + 1] - offsets[b]; }
  int64_t max_len() const {
    int64_t m = 0;
    for (int64_t b = 0; b < num_seqs(); ++b) m = std::max(m, len(b));
    return m;
  }
};

// Appends one sequence: `context` slots at positions [0, context) in shuffled slot order, then `chunk`
// slots at positions [context, context + chunk) in order. Physical rows come from `free_rows` (consumed
// from the back). About 10% of context slots are emptied (-1), and `future` extra slots hold a position
// past every query (context + chunk + 10).
inline void AppendSequence(SlotTables& t, int64_t context, int64_t chunk, int64_t future,
                           std::vector<int32_t>& free_rows, std::mt19937& rng) {
  std::vector<int32_t> pos(context);
  std::iota(pos.begin(), pos.end(), 0);
  std::shuffle(pos.begin(), pos.end(), rng);
  std::uniform_real_distribution<float> coin(0, 1);
  auto take_row = [&] {
    const int32_t r = free_rows.back();
    free_rows.pop_back();
    return r;
  };
  for (int64_t i = 0; i < context; ++i) {
    t.rows.push_back(coin(rng) < 0.1f ? -1 : take_row());
    t.pos.push_back(pos[i]);
  }
  for (int64_t f = 0; f < future; ++f) {
    t.rows.push_back(take_row());
    t.pos.push_back(static_cast<int32_t>(context + chunk + 10));
  }
  for (int64_t i = 0; i < chunk; ++i) {
    t.rows.push_back(take_row());
    t.pos.push_back(static_cast<int32_t>(context + i));
  }
  t.offsets.push_back(static_cast<int32_t>(t.rows.size()));
}

inline std::vector<int32_t> ShuffledRows(int64_t num_rows, std::mt19937& rng) {
  std::vector<int32_t> rows(num_rows);
  std::iota(rows.begin(), rows.end(), 0);
  std::shuffle(rows.begin(), rows.end(), rng);
  return rows;
}

}  // namespace adore::testing
