// PrefillAttention (kernels/cuda/prefill_attention.cu) against AttentionRef: chunks of odd lengths over
// earlier context (shuffled slots, empty and future slots) plus their own tokens, a batch of sequences,
// GQA ratios 1/3/4/8, head_dim 64/128; and the two kernels bit for bit against each other.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "kernels/cuda/ops.h"
#include "kernels/ops.h"
#include "tests/cuda/attention_test_util.h"

namespace adore::kernels {
namespace {

using testing::AttnShape;
using testing::DeviceBuffer;

class PrefillAttentionTest : public ::testing::TestWithParam<AttnShape> {
 protected:
  void SetUp() override { ADORE_SKIP_WITHOUT_GPU(); }
};

TEST_P(PrefillAttentionTest, MatchesCpuReference) {
  const AttnShape shape = GetParam();
  const int64_t hd = shape.head_dim, nh = shape.num_heads, nkv = shape.num_kv_heads;
  std::mt19937 rng(static_cast<uint32_t>(hd * 1000 + nh * 10 + nkv));
  struct Seq { int64_t context, chunk, future; };
  const std::vector<Seq> seqs = {{0, 1, 0},      {0, 37, 0}, {100, 64, 1}, {513, 130, 3},
                                 {1000, 3, 0}, {0, 200, 0}, {65, 1, 2},  {0, 700, 0}};
  int64_t total_rows = 0, total_q = 0, max_q = 0;
  for (const Seq& s : seqs) {
    total_rows += s.context + s.chunk + s.future;
    total_q += s.chunk;
    max_q = std::max(max_q, s.chunk);
  }
  testing::HostKvPool pool(total_rows, nkv * hd, 21);
  std::vector<int32_t> free_rows = testing::ShuffledRows(total_rows, rng);
  testing::SlotTables t;
  std::vector<int32_t> q_pos, q_offsets{0};
  for (const Seq& s : seqs) {
    testing::AppendSequence(t, s.context, s.chunk, s.future, free_rows, rng);
    for (int64_t i = 0; i < s.chunk; ++i) q_pos.push_back(static_cast<int32_t>(s.context + i));
    q_offsets.push_back(static_cast<int32_t>(q_pos.size()));
  }
  const int64_t q_stride = (nh + 2 * nkv) * hd;  // Q is the first part of fused QKV rows
  const std::vector<float> q = testing::RoundToBf16(testing::RandomFloats(total_q * q_stride, -3, 3, 9));
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  std::vector<float> ref(total_q * nh * hd);
  for (size_t b = 0; b < seqs.size(); ++b) {
    std::vector<float> q_dense(seqs[b].chunk * nh * hd);
    for (int64_t i = 0; i < seqs[b].chunk; ++i) {
      std::copy_n(&q[(q_offsets[b] + i) * q_stride], nh * hd, &q_dense[i * nh * hd]);
    }
    AttentionArgs a;
    a.q = q_dense.data();
    a.q_pos = &q_pos[q_offsets[b]];
    a.k_cache = pool.k.data();
    a.v_cache = pool.v.data();
    a.slot_rows = t.rows.data() + t.offsets[b];
    a.slot_pos = t.pos.data() + t.offsets[b];
    a.num_q = seqs[b].chunk;
    a.num_slots = t.len(b);
    a.num_heads = nh;
    a.num_kv_heads = nkv;
    a.head_dim = hd;
    a.scale = scale;
    a.out = &ref[q_offsets[b] * nh * hd];
    AttentionRef(a);
  }

  DeviceBuffer<bf16> d_q(testing::ToBf16(q)), d_k(testing::ToBf16(pool.k)), d_v(testing::ToBf16(pool.v));
  DeviceBuffer<bf16> d_out(total_q * nh * hd);
  DeviceBuffer<int32_t> d_qpos(q_pos), d_qoff(q_offsets), d_off(t.offsets), d_rows(t.rows), d_pos(t.pos);
  std::vector<std::vector<bf16>> outputs;  // per kernel, raw bits
  for (const PrefillAttentionKernel kernel : {PrefillAttentionKernel::kWmma, PrefillAttentionKernel::kMma}) {
    SCOPED_TRACE(::testing::Message() << "kernel " << static_cast<int>(kernel));
    ADORE_ASSERT_CUDA(cudaMemset(d_out.get(), 0xff, d_out.size() * sizeof(bf16)));  // NaN garbage
    PrefillAttentionArgs a;
    a.q = d_q.get();
    a.q_stride = q_stride;
    a.q_pos = d_qpos.get();
    a.q_offsets = d_qoff.get();
    a.k_cache = d_k.get();
    a.v_cache = d_v.get();
    a.num_rows = pool.num_rows;
    a.slot_offsets = d_off.get();
    a.slot_rows = d_rows.get();
    a.slot_pos = d_pos.get();
    a.num_seqs = static_cast<int64_t>(seqs.size());
    a.max_q = max_q;
    a.num_heads = nh;
    a.num_kv_heads = nkv;
    a.head_dim = hd;
    a.scale = scale;
    a.out = d_out.get();
    a.out_stride = nh * hd;
    a.kernel = kernel;
    const absl::Status st = PrefillAttention(a, nullptr);
    ASSERT_TRUE(st.ok()) << st;
    ADORE_ASSERT_CUDA(cudaDeviceSynchronize());
    outputs.push_back(d_out.Download());
    const std::vector<float> out = testing::ToFloat(outputs.back());
    double worst = 0;
    for (size_t b = 0; b < seqs.size(); ++b) {
      for (int64_t i = 0; i < seqs[b].chunk; ++i) {
        const int64_t off = (q_offsets[b] + i) * nh * hd;
        const std::vector<float> got_i(out.begin() + off, out.begin() + off + nh * hd);
        const std::vector<float> ref_i(ref.begin() + off, ref.begin() + off + nh * hd);
        const double err = testing::RelError(got_i, ref_i);
        worst = std::max(worst, err);
        ASSERT_LE(err, 1e-2) << shape << ": sequence " << b << " (context " << seqs[b].context << ", chunk "
                             << seqs[b].chunk << ") query " << i;
      }
    }
    std::printf("head_dim %lld heads %lld kv_heads %lld, kernel %d: worst query rel error %.2e\n",
                static_cast<long long>(hd), static_cast<long long>(nh), static_cast<long long>(nkv),
                static_cast<int>(kernel), worst);
  }
  // The two kernels round and sum in the same order: the same bits, not just the same tolerance.
  int64_t differing = 0, first = -1;
  for (size_t i = 0; i < outputs[0].size(); ++i) {
    if (std::memcmp(&outputs[0][i], &outputs[1][i], sizeof(bf16)) != 0) {
      if (first < 0) first = static_cast<int64_t>(i);
      ++differing;
    }
  }
  EXPECT_EQ(differing, 0) << shape << ": " << differing << " of " << outputs[0].size()
                          << " outputs differ between the WMMA and mma kernels, the first at " << first;
}

INSTANTIATE_TEST_SUITE_P(Shapes, PrefillAttentionTest,
                         ::testing::Values(AttnShape{64, 9, 3}, AttnShape{128, 8, 8}, AttnShape{128, 32, 8},
                                           AttnShape{64, 16, 2}, AttnShape{128, 14, 2}));

TEST(PrefillAttentionArgsTest, RejectsBadArguments) {
  ADORE_SKIP_WITHOUT_GPU();
  DeviceBuffer<bf16> d(1024);
  DeviceBuffer<int32_t> idx(8);
  PrefillAttentionArgs a;
  a.q = d.get();
  a.q_stride = 80;
  a.q_pos = a.q_offsets = idx.get();
  a.k_cache = a.v_cache = d.get();
  a.num_rows = 4;
  a.slot_offsets = a.slot_rows = a.slot_pos = idx.get();
  a.num_seqs = 1;
  a.max_q = 1;
  a.num_heads = 1;
  a.num_kv_heads = 1;
  a.head_dim = 80;  // unsupported
  a.scale = 0.1f;
  a.out = d.get();
  a.out_stride = 80;
  EXPECT_EQ(PrefillAttention(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.head_dim = 64;
  a.q_stride = 32;  // narrower than the heads
  EXPECT_EQ(PrefillAttention(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adore::kernels
