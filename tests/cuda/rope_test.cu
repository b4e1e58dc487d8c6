// Rope (kernels/cuda/rope.cu) against RopeRef: interleaved pairs, fused Q+K rows, partial rotary dims; and
// with KvWrite fused in, against Rope then KvWrite, bit for bit.
#include <cstring>
#include <vector>

#include "kernels/cuda/ops.h"
#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace adore::kernels {
namespace {

using testing::DeviceBuffer;

class RopeTest : public ::testing::Test {
 protected:
  void SetUp() override { ADORE_SKIP_WITHOUT_GPU(); }
};

TEST_F(RopeTest, MatchesCpuReference) {
  struct Shape { int64_t n, heads, head_dim, rot_dim, extra; float theta; };
  for (const Shape s : {Shape{5, 12, 64, 64, 192, 10000.0f}, Shape{19, 40, 128, 128, 1024, 500000.0f},
                        Shape{3, 8, 128, 32, 0, 10000.0f}, Shape{1, 1, 6, 6, 2, 100.0f}}) {
    SCOPED_TRACE(::testing::Message() << "n " << s.n << " heads " << s.heads << " head_dim " << s.head_dim
                                      << " rot_dim " << s.rot_dim);
    // Rows hold `heads` rotated heads then `extra` untouched columns (V of a fused QKV row).
    const int64_t stride = s.heads * s.head_dim + s.extra;
    const std::vector<float> x = testing::RoundToBf16(testing::RandomFloats(s.n * stride, -2, 2, s.n));
    std::vector<int32_t> pos(s.n);
    for (int64_t i = 0; i < s.n; ++i) pos[i] = static_cast<int32_t>((i * 997 + 5) % 8192);
    DeviceBuffer<bf16> d_x(testing::ToBf16(x));
    DeviceBuffer<int32_t> d_pos(pos);
    const absl::Status st = Rope({.x = d_x.get(), .row_stride = stride, .positions = d_pos.get(), .n = s.n,
                                  .num_heads = s.heads, .head_dim = s.head_dim, .rot_dim = s.rot_dim,
                                  .theta = s.theta},
                                 nullptr);
    ASSERT_TRUE(st.ok()) << st;
    std::vector<float> ref(s.n * s.heads * s.head_dim);
    for (int64_t i = 0; i < s.n; ++i) {
      std::copy_n(&x[i * stride], s.heads * s.head_dim, &ref[i * s.heads * s.head_dim]);
    }
    RopeRef(ref.data(), pos.data(), s.n, s.heads, s.head_dim, s.rot_dim, s.theta);
    const std::vector<float> got = testing::ToFloat(d_x.Download());
    std::vector<float> got_heads(ref.size());
    for (int64_t i = 0; i < s.n; ++i) {
      std::copy_n(&got[i * stride], s.heads * s.head_dim, &got_heads[i * s.heads * s.head_dim]);
      for (int64_t j = s.heads * s.head_dim; j < stride; ++j) ASSERT_EQ(got[i * stride + j], x[i * stride + j]);
    }
    EXPECT_LE(testing::RelError(got_heads, ref), 1e-2);
  }
}

// KvWrite fused into Rope: the rotated rows are those of Rope alone, and the pool gets exactly the bytes
// Rope then KvWrite would put there (rotated K, V as is), -1 / out-of-pool rows skipped, others untouched.
TEST_F(RopeTest, FusedKvWriteMatchesRopeThenKvWrite) {
  struct Shape { int64_t n, q_heads, kv_heads, head_dim, rot_dim, num_rows; };
  for (const Shape s : {Shape{7, 9, 3, 64, 64, 20}, Shape{5, 32, 8, 128, 128, 11}, Shape{4, 4, 2, 128, 32, 9},
                        Shape{3, 3, 1, 6, 6, 5}}) {
    SCOPED_TRACE(::testing::Message() << "n " << s.n << " heads " << s.q_heads << "+" << s.kv_heads << " head_dim "
                                      << s.head_dim << " rot_dim " << s.rot_dim);
    const int64_t kv_dim = s.kv_heads * s.head_dim, stride = (s.q_heads + 2 * s.kv_heads) * s.head_dim;
    const std::vector<bf16> x = testing::ToBf16(testing::RandomFloats(s.n * stride, -2, 2, s.n + 3));
    const std::vector<bf16> pool = testing::ToBf16(testing::RandomFloats(s.num_rows * kv_dim, 5, 6, 4));
    std::vector<int32_t> pos(s.n), rows(s.n);
    for (int64_t i = 0; i < s.n; ++i) {
      pos[i] = static_cast<int32_t>((i * 613 + 11) % 4096);
      rows[i] = i == 1 ? -1 : (i == 2 ? static_cast<int32_t>(s.num_rows) : static_cast<int32_t>((s.num_rows - 1 - 3 * i) % s.num_rows));
    }
    DeviceBuffer<int32_t> d_pos(pos), d_rows(rows);
    RopeArgs a{.row_stride = stride, .positions = d_pos.get(), .n = s.n, .num_heads = s.q_heads + s.kv_heads,
               .head_dim = s.head_dim, .rot_dim = s.rot_dim, .theta = 10000.0f};
    // Separate: Rope, then KvWrite from the rotated rows.
    DeviceBuffer<bf16> x1(x), k1(pool), v1(pool);
    a.x = x1.get();
    ASSERT_TRUE(Rope(a, nullptr).ok());
    const absl::Status st1 = KvWrite({.k = x1.get() + s.q_heads * s.head_dim, .v = x1.get() + s.q_heads * s.head_dim + kv_dim,
                                      .src_stride = stride, .rows = d_rows.get(), .n = s.n, .row_dim = kv_dim,
                                      .k_cache = k1.get(), .v_cache = v1.get(), .num_rows = s.num_rows},
                                     nullptr);
    ASSERT_TRUE(st1.ok()) << st1;
    // Fused.
    DeviceBuffer<bf16> x2(x), k2(pool), v2(pool);
    a.x = x2.get();
    a.kv_rows = d_rows.get();
    a.kv_first_head = s.q_heads;
    a.num_kv_heads = s.kv_heads;
    a.v_offset = (s.q_heads + s.kv_heads) * s.head_dim;
    a.k_cache = k2.get();
    a.v_cache = v2.get();
    a.num_kv_rows = s.num_rows;
    const absl::Status st2 = Rope(a, nullptr);
    ASSERT_TRUE(st2.ok()) << st2;
    ADORE_ASSERT_CUDA(cudaDeviceSynchronize());
    auto bits = [](const std::vector<bf16>& v) {
      std::vector<uint16_t> b(v.size());
      std::memcpy(b.data(), v.data(), v.size() * sizeof(uint16_t));
      return b;
    };
    EXPECT_EQ(bits(x2.Download()), bits(x1.Download()));
    const std::vector<uint16_t> k = bits(k2.Download()), v = bits(v2.Download());
    EXPECT_EQ(k, bits(k1.Download()));
    EXPECT_EQ(v, bits(v1.Download()));
    // And the pool rows no token wrote still hold their old bytes (KvWrite's own test covers the rest).
    const std::vector<uint16_t> old = bits(pool);
    std::vector<bool> written(s.num_rows, false);
    for (const int32_t r : rows) {
      if (r >= 0 && r < s.num_rows) written[r] = true;
    }
    for (int64_t r = 0; r < s.num_rows; ++r) {
      if (written[r]) continue;
      for (int64_t j = 0; j < kv_dim; ++j) ASSERT_EQ(k[r * kv_dim + j], old[r * kv_dim + j]) << "row " << r;
    }
  }
  // A fused write needs its caches and a V range inside the row, after the rotated heads.
  DeviceBuffer<bf16> d(64 * 6);
  DeviceBuffer<int32_t> d_pos(std::vector<int32_t>{0}), d_rows(std::vector<int32_t>{-1});
  RopeArgs bad{.x = d.get(), .row_stride = 64 * 3, .positions = d_pos.get(), .n = 1, .num_heads = 2, .head_dim = 64,
               .rot_dim = 64, .kv_rows = d_rows.get(), .kv_first_head = 1, .num_kv_heads = 1, .v_offset = 128,
               .k_cache = d.get(), .v_cache = nullptr, .num_kv_rows = 1};
  EXPECT_EQ(Rope(bad, nullptr).code(), absl::StatusCode::kInvalidArgument);
  bad.v_cache = d.get();
  bad.v_offset = 64;  // overlaps the rotated heads
  EXPECT_EQ(Rope(bad, nullptr).code(), absl::StatusCode::kInvalidArgument);
  bad.v_offset = 160;  // runs past the row
  EXPECT_EQ(Rope(bad, nullptr).code(), absl::StatusCode::kInvalidArgument);
  bad.v_offset = 128;
  EXPECT_TRUE(Rope(bad, nullptr).ok());
}

TEST_F(RopeTest, RejectsBadArguments) {
  DeviceBuffer<bf16> d_x(64);
  DeviceBuffer<int32_t> d_pos(1);
  EXPECT_EQ(Rope({.x = d_x.get(), .row_stride = 64, .positions = d_pos.get(), .n = 1, .num_heads = 1,
                  .head_dim = 64, .rot_dim = 65},
                 nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Rope({.x = d_x.get(), .row_stride = 32, .positions = d_pos.get(), .n = 1, .num_heads = 1,
                  .head_dim = 64, .rot_dim = 64},
                 nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adore::kernels
