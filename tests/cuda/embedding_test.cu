// Embedding (kernels/cuda/embedding.cu) against EmbeddingRef: bf16 table rows gathered to f32 and bf16.
#include <vector>

#include "kernels/cuda/ops.h"
#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace adore::kernels {
namespace {

using testing::DeviceBuffer;

class EmbeddingTest : public ::testing::Test {
 protected:
  void SetUp() override { ADORE_SKIP_WITHOUT_GPU(); }
};

TEST_F(EmbeddingTest, GathersRowsLikeTheCpuReference) {
  struct Shape { int64_t vocab, dim, n; };
  for (const Shape s : {Shape{1000, 576, 17}, Shape{37, 13, 5}, Shape{50, 4096, 1}, Shape{3, 8, 9}}) {
    SCOPED_TRACE(::testing::Message() << "vocab " << s.vocab << " dim " << s.dim << " n " << s.n);
    const std::vector<float> table = testing::RoundToBf16(testing::RandomFloats(s.vocab * s.dim, -2, 2, s.dim));
    std::vector<int32_t> ids(s.n);
    for (int64_t i = 0; i < s.n; ++i) ids[i] = static_cast<int32_t>((i * 7919 + 13) % s.vocab);
    std::vector<float> ref(s.n * s.dim);
    ASSERT_TRUE(EmbeddingRef(table.data(), s.vocab, s.dim, ids.data(), s.n, ref.data()));

    DeviceBuffer<bf16> d_table(testing::ToBf16(table));
    DeviceBuffer<int32_t> d_ids(ids);
    DeviceBuffer<float> d_f32(s.n * s.dim);
    DeviceBuffer<bf16> d_bf16(s.n * s.dim);
    EmbeddingArgs a{.table = d_table.get(), .vocab = s.vocab, .dim = s.dim, .ids = d_ids.get(), .n = s.n,
                    .out_f32 = d_f32.get()};
    ASSERT_TRUE(Embedding(a, nullptr).ok());
    a.out_f32 = nullptr;
    a.out_bf16 = d_bf16.get();
    ASSERT_TRUE(Embedding(a, nullptr).ok());
    ADORE_ASSERT_CUDA(cudaDeviceSynchronize());
    EXPECT_EQ(d_f32.Download(), ref);  // bf16 -> f32 is exact
    EXPECT_EQ(testing::ToFloat(d_bf16.Download()), ref);
  }
}

TEST_F(EmbeddingTest, OutOfRangeIdGivesZeroRow) {
  const int64_t vocab = 10, dim = 16;
  DeviceBuffer<bf16> d_table(testing::ToBf16(testing::RandomFloats(vocab * dim, 1, 2, 1)));
  DeviceBuffer<int32_t> d_ids(std::vector<int32_t>{-1, 10, 3});
  DeviceBuffer<float> d_out(3 * dim);
  ASSERT_TRUE(Embedding({.table = d_table.get(), .vocab = vocab, .dim = dim, .ids = d_ids.get(), .n = 3,
                         .out_f32 = d_out.get()},
                        nullptr)
                  .ok());
  const std::vector<float> out = d_out.Download();
  for (int64_t j = 0; j < 2 * dim; ++j) EXPECT_EQ(out[j], 0.0f);
  for (int64_t j = 2 * dim; j < 3 * dim; ++j) EXPECT_GE(out[j], 1.0f);
}

TEST_F(EmbeddingTest, RejectsBadArguments) {
  DeviceBuffer<bf16> d_table(16);
  DeviceBuffer<int32_t> d_ids(1);
  DeviceBuffer<float> d_out(16);
  DeviceBuffer<bf16> d_out16(16);
  EXPECT_EQ(Embedding({.table = d_table.get(), .vocab = 1, .dim = 16, .ids = d_ids.get(), .n = 1}, nullptr).code(),
            absl::StatusCode::kInvalidArgument);  // no output
  EXPECT_EQ(Embedding({.table = d_table.get(), .vocab = 1, .dim = 16, .ids = d_ids.get(), .n = 1,
                       .out_f32 = d_out.get(), .out_bf16 = d_out16.get()},
                      nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);  // two outputs
  EXPECT_EQ(Embedding({.table = d_table.get(), .vocab = 0, .dim = 16, .ids = d_ids.get(), .n = 1,
                       .out_f32 = d_out.get()},
                      nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adore::kernels
