// Rope (kernels/cuda/rope.cu) against RopeRef: interleaved pairs, fused Q+K rows, partial rotary dims.
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
