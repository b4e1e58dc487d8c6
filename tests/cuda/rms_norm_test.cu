// AddRmsNorm (kernels/cuda/rms_norm.cu) against AddRmsNormRef: float32 residual updated in place, bf16 out.
#include <vector>

#include "kernels/cuda/ops.h"
#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace adore::kernels {
namespace {

using testing::DeviceBuffer;

class AddRmsNormTest : public ::testing::Test {
 protected:
  void SetUp() override { ADORE_SKIP_WITHOUT_GPU(); }
};

TEST_F(AddRmsNormTest, MatchesCpuReferenceWithAndWithoutAdd) {
  struct Shape { int64_t n, dim; };
  for (const Shape s : {Shape{1, 576}, Shape{7, 4096}, Shape{33, 13}, Shape{5, 2050}}) {
    for (const bool add : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "n " << s.n << " dim " << s.dim << " add " << add);
      std::vector<float> residual = testing::RandomFloats(s.n * s.dim, -3, 3, s.dim);
      const std::vector<float> x = testing::RoundToBf16(testing::RandomFloats(s.n * s.dim, -1, 1, s.dim + 1));
      const std::vector<float> w = testing::RoundToBf16(testing::RandomFloats(s.dim, 0.5, 1.5, s.dim + 2));
      DeviceBuffer<float> d_res(residual);
      DeviceBuffer<bf16> d_x(testing::ToBf16(x)), d_w(testing::ToBf16(w)), d_out(s.n * s.dim);
      const absl::Status st = AddRmsNorm({.residual = d_res.get(), .x = add ? d_x.get() : nullptr, .weight = d_w.get(),
                                          .n = s.n, .dim = s.dim, .eps = 1e-5f, .out = d_out.get()},
                                         nullptr);
      ASSERT_TRUE(st.ok()) << st;
      std::vector<float> ref(s.n * s.dim);
      AddRmsNormRef(residual.data(), add ? x.data() : nullptr, w.data(), s.n, s.dim, 1e-5f, ref.data());
      EXPECT_EQ(d_res.Download(), residual);  // the same float additions
      const std::vector<float> out = testing::ToFloat(d_out.Download());
      EXPECT_LE(testing::RelError(out, ref), 1e-2);
    }
  }
}

TEST_F(AddRmsNormTest, RejectsBadArguments) {
  DeviceBuffer<float> d_res(8);
  DeviceBuffer<bf16> d_w(8), d_out(8);
  EXPECT_EQ(AddRmsNorm({.residual = d_res.get(), .weight = d_w.get(), .n = 1, .dim = 8}, nullptr).code(),
            absl::StatusCode::kInvalidArgument);  // no out
  EXPECT_EQ(AddRmsNorm({.residual = d_res.get(), .weight = d_w.get(), .n = 1, .dim = 0, .out = d_out.get()}, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adore::kernels
