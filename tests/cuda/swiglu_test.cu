// SwiGlu (kernels/cuda/swiglu.cu) against SwiGluRef, including the halves of a fused gate/up product.
#include <vector>

#include "kernels/cuda/ops.h"
#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace adore::kernels {
namespace {

using testing::DeviceBuffer;

class SwiGluTest : public ::testing::Test {
 protected:
  void SetUp() override { ADORE_SKIP_WITHOUT_GPU(); }
};

TEST_F(SwiGluTest, MatchesCpuReferenceOnFusedRows) {
  struct Shape { int64_t n, width; };
  for (const Shape s : {Shape{1, 1536}, Shape{9, 11008}, Shape{4, 13}, Shape{70, 200}}) {
    SCOPED_TRACE(::testing::Message() << "n " << s.n << " width " << s.width);
    // gate_up is [n, 2 * width]: gate in the first half, up in the second.
    const std::vector<float> gu = testing::RoundToBf16(testing::RandomFloats(s.n * 2 * s.width, -4, 4, s.width));
    std::vector<float> gate(s.n * s.width), up(s.n * s.width), ref(s.n * s.width);
    for (int64_t i = 0; i < s.n; ++i) {
      std::copy_n(&gu[i * 2 * s.width], s.width, &gate[i * s.width]);
      std::copy_n(&gu[i * 2 * s.width + s.width], s.width, &up[i * s.width]);
    }
    SwiGluRef(gate.data(), up.data(), s.n, s.width, ref.data());
    DeviceBuffer<bf16> d_gu(testing::ToBf16(gu)), d_out(s.n * s.width);
    const absl::Status st = SwiGlu({.gate = d_gu.get(), .up = d_gu.get() + s.width, .out = d_out.get(), .n = s.n,
                                    .width = s.width, .gate_stride = 2 * s.width, .up_stride = 2 * s.width,
                                    .out_stride = s.width},
                                   nullptr);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_LE(testing::RelError(testing::ToFloat(d_out.Download()), ref), 1e-2);
  }
}

TEST_F(SwiGluTest, RejectsBadArguments) {
  DeviceBuffer<bf16> d(16);
  EXPECT_EQ(SwiGlu({.gate = d.get(), .up = d.get(), .out = d.get(), .n = 1, .width = 16, .gate_stride = 8,
                    .up_stride = 16, .out_stride = 16},
                   nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adore::kernels
