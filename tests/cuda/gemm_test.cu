// Blas::Linear (kernels/cuda/gemm.cu) against MatMulRef: bf16 in, f32 or bf16 out, accumulate, strides.
#include <vector>

#include "kernels/cuda/gemm.h"
#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace adore::kernels {
namespace {

using bf16 = __nv_bfloat16;
using testing::DeviceBuffer;

class LinearTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ADORE_SKIP_WITHOUT_GPU();
    auto blas = Blas::Create();
    ASSERT_TRUE(blas.ok()) << blas.status();
    blas_ = *std::move(blas);
  }
  std::unique_ptr<Blas> blas_;
};

TEST_F(LinearTest, MatchesCpuReference) {
  struct Shape { int64_t n, in, out; };
  for (const Shape s : {Shape{1, 576, 192}, Shape{7, 1000, 333}, Shape{64, 576, 1536}, Shape{3, 4096, 512}}) {
    for (const bool f32_out : {true, false}) {
      for (const bool accumulate : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "n " << s.n << " in " << s.in << " out " << s.out << " f32 " << f32_out
                                          << " accumulate " << accumulate);
        // x is a slice of wider rows, y of wider output rows: strides exercised in every case.
        const int64_t x_stride = s.in + 8, y_stride = s.out + 8;
        std::vector<float> x = testing::RoundToBf16(testing::RandomFloats(s.n * x_stride, -1, 1, s.in));
        const std::vector<float> w = testing::RoundToBf16(testing::RandomFloats(s.out * s.in, -0.1, 0.1, s.out));
        std::vector<float> y0 = testing::RoundToBf16(testing::RandomFloats(s.n * y_stride, -1, 1, 7));
        std::vector<float> x_dense(s.n * s.in), ref(s.n * s.out);
        for (int64_t i = 0; i < s.n; ++i) {
          std::copy_n(&x[i * x_stride], s.in, &x_dense[i * s.in]);
          std::copy_n(&y0[i * y_stride], s.out, &ref[i * s.out]);
        }
        MatMulRef(x_dense.data(), w.data(), s.n, s.in, s.out, ref.data(), accumulate);

        DeviceBuffer<bf16> d_x(testing::ToBf16(x)), d_w(testing::ToBf16(w)), d_y16(testing::ToBf16(y0));
        DeviceBuffer<float> d_y32(y0);
        LinearArgs a{.x = d_x.get(), .w = d_w.get(), .n = s.n, .in = s.in, .out = s.out, .x_stride = x_stride,
                     .y_stride = y_stride, .accumulate = accumulate};
        if (f32_out) {
          a.y_f32 = d_y32.get();
        } else {
          a.y_bf16 = d_y16.get();
        }
        const absl::Status st = blas_->Linear(a, nullptr);
        ASSERT_TRUE(st.ok()) << st;
        const std::vector<float> y = f32_out ? d_y32.Download() : testing::ToFloat(d_y16.Download());
        std::vector<float> got(s.n * s.out);
        for (int64_t i = 0; i < s.n; ++i) {
          std::copy_n(&y[i * y_stride], s.out, &got[i * s.out]);
          for (int64_t j = s.out; j < y_stride; ++j) ASSERT_EQ(y[i * y_stride + j], y0[i * y_stride + j]);
        }
        EXPECT_LE(testing::RelError(got, ref), 1e-2);
      }
    }
  }
}

TEST_F(LinearTest, RejectsBadArguments) {
  DeviceBuffer<bf16> d(64);
  DeviceBuffer<float> y(64);
  EXPECT_EQ(blas_->Linear({.x = d.get(), .w = d.get(), .n = 1, .in = 8, .out = 8}, nullptr).code(),
            absl::StatusCode::kInvalidArgument);  // no output
  EXPECT_EQ(blas_->Linear({.x = d.get(), .w = d.get(), .n = 1, .in = 8, .out = 8, .x_stride = 4, .y_f32 = y.get()},
                          nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adore::kernels
