// The slot-map hash kept incrementally by SequenceKv against the hash of the whole table, on random edits.
#include "worker/kv_cache.h"

#include <random>
#include <set>

#include "gtest/gtest.h"

namespace adore {
namespace {

TEST(SlotMapHashTest, KeptHashEqualsTheTableHashThroughRandomEdits) {
  std::mt19937 rng(20261130);
  SequenceKv seq;
  int32_t next_row = 0;
  for (int step = 0; step < 4000; ++step) {
    const int op = static_cast<int>(rng() % 4);
    if (op == 0 || seq.num_slots() == 0) {
      seq.AppendSlot(next_row++, seq.next_pos++);
    } else {
      const int64_t s = static_cast<int64_t>(rng() % seq.num_slots());
      if (op == 1) {
        seq.SetSlot(s, -1, seq.pos[s]);  // released, left empty
      } else {
        seq.SetSlot(s, seq.rows[s] >= 0 ? seq.rows[s] : next_row++, static_cast<int32_t>(rng() % (seq.next_pos + 1)));
      }
    }
    ASSERT_EQ(seq.map_hash, SlotMapHash(seq)) << "after edit " << step;
  }
  RowAllocator rows(static_cast<int64_t>(next_row));
  ASSERT_TRUE(rows.Allocate(next_row).ok());  // the sequence holds every row
  rows.Release(seq);
  EXPECT_EQ(seq.map_hash, 0u);
  EXPECT_EQ(SlotMapHash(seq), 0u);
}

TEST(SlotMapHashTest, DiffersWhenARowAPositionOrTheSlotOrderDiffers) {
  SequenceKv a;
  for (int32_t i = 0; i < 64; ++i) a.AppendSlot(100 + i, i);
  std::set<uint64_t> seen = {a.map_hash};
  SequenceKv b = a;
  b.SetSlot(7, 99, 7);  // another row
  EXPECT_TRUE(seen.insert(b.map_hash).second);
  b = a;
  b.SetSlot(7, 107, 70);  // another position
  EXPECT_TRUE(seen.insert(b.map_hash).second);
  b = a;
  b.SetSlot(7, -1, 7);  // released
  EXPECT_TRUE(seen.insert(b.map_hash).second);
  b = a;  // slots 3 and 4 swapped: the same (row, position) pairs in another order
  b.SetSlot(3, a.rows[4], a.pos[4]);
  b.SetSlot(4, a.rows[3], a.pos[3]);
  EXPECT_TRUE(seen.insert(b.map_hash).second);
  EXPECT_EQ(b.map_hash, SlotMapHash(b));
}

}  // namespace
}  // namespace adore
