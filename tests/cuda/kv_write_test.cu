// KvWrite (kernels/cuda/kv_write.cu): new K/V rows land in their pool rows, -1 skips, other rows untouched.
// SlotTableUpdate: a call's changed entries land in the GPU's slot tables, out-of-range indices skip,
// other entries untouched.
#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cuda/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace adore::kernels {
namespace {

using testing::DeviceBuffer;

class KvWriteTest : public ::testing::Test {
 protected:
  void SetUp() override { ADORE_SKIP_WITHOUT_GPU(); }
};

TEST_F(KvWriteTest, ScattersRowsAndSkipsMinusOne) {
  struct Shape { int64_t n, row_dim, src_stride, num_rows; };
  for (const Shape s : {Shape{6, 192, 960, 20}, Shape{3, 1024, 6144, 10}, Shape{4, 7, 7, 9}}) {
    SCOPED_TRACE(::testing::Message() << "n " << s.n << " row_dim " << s.row_dim);
    const std::vector<bf16> src = testing::ToBf16(testing::RandomFloats(s.n * s.src_stride, -1, 1, s.n));
    const std::vector<bf16> k_init = testing::ToBf16(testing::RandomFloats(s.num_rows * s.row_dim, 5, 6, 1));
    const std::vector<bf16> v_init = testing::ToBf16(testing::RandomFloats(s.num_rows * s.row_dim, 7, 8, 2));
    std::vector<int32_t> rows(s.n);
    for (int64_t i = 0; i < s.n; ++i) {
      rows[i] = i == 1 ? -1 : static_cast<int32_t>((s.num_rows - 1 - 2 * i) % s.num_rows);
    }
    DeviceBuffer<bf16> d_src(src), d_k(k_init), d_v(v_init);
    DeviceBuffer<int32_t> d_rows(rows);
    // K is columns [0, row_dim) of each source row, V the next row_dim columns when they fit.
    const int64_t v_off = 2 * s.row_dim <= s.src_stride ? s.row_dim : 0;
    const absl::Status st = KvWrite({.k = d_src.get(), .v = d_src.get() + v_off, .src_stride = s.src_stride,
                                     .rows = d_rows.get(), .n = s.n, .row_dim = s.row_dim, .k_cache = d_k.get(),
                                     .v_cache = d_v.get(), .num_rows = s.num_rows},
                                    nullptr);
    ASSERT_TRUE(st.ok()) << st;
    const std::vector<float> k = testing::ToFloat(d_k.Download()), v = testing::ToFloat(d_v.Download());
    std::vector<float> k_ref = testing::ToFloat(k_init), v_ref = testing::ToFloat(v_init);
    const std::vector<float> srcf = testing::ToFloat(src);
    for (int64_t i = 0; i < s.n; ++i) {
      if (rows[i] < 0) continue;
      for (int64_t j = 0; j < s.row_dim; ++j) {
        k_ref[rows[i] * s.row_dim + j] = srcf[i * s.src_stride + j];
        v_ref[rows[i] * s.row_dim + j] = srcf[i * s.src_stride + v_off + j];
      }
    }
    EXPECT_EQ(k, k_ref);
    EXPECT_EQ(v, v_ref);
  }
}

TEST_F(KvWriteTest, RejectsBadArguments) {
  DeviceBuffer<bf16> d(64);
  DeviceBuffer<int32_t> rows(1);
  EXPECT_EQ(KvWrite({.k = d.get(), .v = d.get(), .src_stride = 8, .rows = rows.get(), .n = 1, .row_dim = 16,
                     .k_cache = d.get(), .v_cache = d.get(), .num_rows = 2},
                    nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(KvWriteTest, SlotTableUpdateWritesChangedEntriesOnly) {
  for (const auto& [capacity, n] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {1000, 37}, {300000, 5000}}) {
    SCOPED_TRACE(::testing::Message() << "capacity " << capacity << " n " << n);
    std::mt19937 rng(static_cast<uint32_t>(capacity + n));
    std::vector<int32_t> rows(capacity), pos(capacity);
    for (int64_t i = 0; i < capacity; ++i) {
      rows[i] = static_cast<int32_t>(rng() % 100000) - 1;
      pos[i] = static_cast<int32_t>(rng() % 8192);
    }
    // Distinct indices (a random subset), some outside [0, capacity), which must be skipped.
    std::vector<int32_t> index(capacity);
    std::iota(index.begin(), index.end(), 0);
    std::shuffle(index.begin(), index.end(), rng);
    std::vector<int32_t> entries;
    for (int64_t i = 0; i < n; ++i) {
      const int32_t at = i % 7 == 3 ? static_cast<int32_t>(capacity + i) : (i % 11 == 5 ? -1 - static_cast<int32_t>(i) : index[i]);
      entries.insert(entries.end(), {at, static_cast<int32_t>(rng() % 100000) - 1, static_cast<int32_t>(rng() % 8192)});
    }
    std::vector<int32_t> rows_ref = rows, pos_ref = pos;
    for (int64_t i = 0; i < n; ++i) {
      const int32_t at = entries[3 * i];
      if (at < 0 || at >= capacity) continue;
      rows_ref[at] = entries[3 * i + 1];
      pos_ref[at] = entries[3 * i + 2];
    }
    DeviceBuffer<int32_t> d_entries(entries), d_rows(rows), d_pos(pos);
    const absl::Status st = SlotTableUpdate({.entries = d_entries.get(), .n = n, .slot_rows = d_rows.get(),
                                             .slot_pos = d_pos.get(), .capacity = capacity},
                                            nullptr);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(d_rows.Download(), rows_ref);
    EXPECT_EQ(d_pos.Download(), pos_ref);
  }
  DeviceBuffer<int32_t> d(3);
  EXPECT_EQ(SlotTableUpdate({.entries = nullptr, .n = 1, .slot_rows = d.get(), .slot_pos = d.get(), .capacity = 3},
                            nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SlotTableUpdate({.entries = d.get(), .n = -1, .slot_rows = d.get(), .slot_pos = d.get(), .capacity = 3},
                            nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adore::kernels
