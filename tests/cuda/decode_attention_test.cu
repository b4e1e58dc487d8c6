// DecodeAttention (kernels/cuda/decode_attention.cu) against AttentionRef: a batch of sequences of
// different lengths, GQA ratios 1/3/4/8, head_dim 64/128, empty and future slots, forced and automatic
// split counts, the per-slot attention mass, every kernel (lanes, lanes_prefetch, pipelined).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "kernels/cuda/ops.h"
#include "kernels/ops.h"
#include "tests/cuda/attention_test_util.h"

namespace adore::kernels {
namespace {

using testing::AttnShape;
using testing::DeviceBuffer;

class DecodeAttentionTest : public ::testing::TestWithParam<AttnShape> {
 protected:
  void SetUp() override { ADORE_SKIP_WITHOUT_GPU(); }
};

TEST_P(DecodeAttentionTest, MatchesCpuReference) {
  const AttnShape shape = GetParam();
  const int64_t hd = shape.head_dim, nh = shape.num_heads, nkv = shape.num_kv_heads;
  std::mt19937 rng(static_cast<uint32_t>(hd * 1000 + nh * 10 + nkv));
  const std::vector<int64_t> lengths = {0, 1, 5, 130, 1000, 2049, 4500};
  int64_t total = 0;
  for (int64_t len : lengths) total += len + 3;
  testing::HostKvPool pool(total, nkv * hd, 11);
  std::vector<int32_t> free_rows = testing::ShuffledRows(total, rng);
  testing::SlotTables t;
  std::vector<int32_t> q_pos;
  for (int64_t len : lengths) {
    // The newest token is the last slot (chunk of 1); long sequences also hold a "future" slot.
    if (len == 0) {
      t.offsets.push_back(static_cast<int32_t>(t.rows.size()));
      q_pos.push_back(0);
      continue;
    }
    testing::AppendSequence(t, len - 1, 1, len > 100 ? 2 : 0, free_rows, rng);
    q_pos.push_back(static_cast<int32_t>(len - 1));
  }
  const int64_t batch = static_cast<int64_t>(lengths.size());
  const int64_t total_slots = static_cast<int64_t>(t.rows.size());
  // q rows are slices of wider fused-QKV-like rows.
  const int64_t q_stride = (nh + 2 * nkv) * hd;
  const std::vector<float> q = testing::RoundToBf16(testing::RandomFloats(batch * q_stride, -3, 3, 5));
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  std::vector<float> ref(batch * nh * hd), ref_mass(total_slots, 0.5f);
  for (int64_t b = 0; b < batch; ++b) {
    AttentionArgs a;
    a.q = &q[b * q_stride];
    a.q_pos = &q_pos[b];
    a.k_cache = pool.k.data();
    a.v_cache = pool.v.data();
    a.slot_rows = t.rows.data() + t.offsets[b];
    a.slot_pos = t.pos.data() + t.offsets[b];
    a.num_q = 1;
    a.num_slots = t.len(b);
    a.num_heads = nh;
    a.num_kv_heads = nkv;
    a.head_dim = hd;
    a.scale = scale;
    a.out = &ref[b * nh * hd];
    a.slot_attn_mass = ref_mass.data() + t.offsets[b];
    AttentionRef(a);
  }

  DeviceBuffer<bf16> d_q(testing::ToBf16(q)), d_k(testing::ToBf16(pool.k)), d_v(testing::ToBf16(pool.v));
  DeviceBuffer<bf16> d_out(batch * nh * hd);
  DeviceBuffer<int32_t> d_qpos(q_pos), d_off(t.offsets), d_rows(t.rows), d_pos(t.pos);
  const size_t ws_bytes = DecodeAttentionWorkspaceBytes(batch, nh, hd, 64, total_slots);
  DeviceBuffer<char> d_ws(ws_bytes);
  std::vector<float> lanes_out;  // the lanes kernel's output with one split, to compare the others with
  for (const DecodeAttentionKernel kernel : {DecodeAttentionKernel::kLanes, DecodeAttentionKernel::kLanesPrefetch,
                                             DecodeAttentionKernel::kPipelined, DecodeAttentionKernel::kChunked,
                                             DecodeAttentionKernel::kMma})
  for (const int splits : {1, 3, 0}) {
    for (const bool mass : {false, true}) {
      SCOPED_TRACE(::testing::Message() << shape << " kernel " << static_cast<int>(kernel) << " splits " << splits
                                        << " mass " << mass);
      DeviceBuffer<float> d_mass(std::vector<float>(total_slots, 0.5f));
      ADORE_ASSERT_CUDA(cudaMemset(d_out.get(), 0xff, d_out.size() * sizeof(bf16)));  // NaN garbage
      DecodeAttentionArgs a;
      a.q = d_q.get();
      a.q_stride = q_stride;
      a.q_pos = d_qpos.get();
      a.k_cache = d_k.get();
      a.v_cache = d_v.get();
      a.num_rows = pool.num_rows;
      a.slot_offsets = d_off.get();
      a.slot_rows = d_rows.get();
      a.slot_pos = d_pos.get();
      a.batch = batch;
      a.num_heads = nh;
      a.num_kv_heads = nkv;
      a.head_dim = hd;
      a.max_slots = t.max_len();
      a.total_slots = total_slots;
      a.scale = scale;
      a.out = d_out.get();
      a.out_stride = nh * hd;
      a.slot_attn_mass = mass ? d_mass.get() : nullptr;
      a.workspace = d_ws.get();
      a.workspace_bytes = ws_bytes;
      a.num_splits = splits;
      a.kernel = kernel;
      const absl::Status st = DecodeAttention(a, nullptr);
      ASSERT_TRUE(st.ok()) << st;
      ADORE_ASSERT_CUDA(cudaDeviceSynchronize());
      const std::vector<float> out = testing::ToFloat(d_out.Download());
      double worst_err = 0;
      if (!mass && splits == 1 && kernel == DecodeAttentionKernel::kLanes) lanes_out = out;
      if (!mass && !lanes_out.empty()) {
        int64_t differ = 0;
        for (size_t i = 0; i < out.size(); ++i) differ += out[i] != lanes_out[i];
        std::printf("kernel %d splits %d vs lanes (1 split): rel diff %.2e, %lld of %zu outputs differ\n",
                    static_cast<int>(kernel), splits, testing::RelError(out, lanes_out),
                    static_cast<long long>(differ), out.size());
      }
      for (int64_t b = 0; b < batch; ++b) {
        const std::vector<float> got_b(out.begin() + b * nh * hd, out.begin() + (b + 1) * nh * hd);
        const std::vector<float> ref_b(ref.begin() + b * nh * hd, ref.begin() + (b + 1) * nh * hd);
        const double err = testing::RelError(got_b, ref_b);
        worst_err = std::max(worst_err, err);
        EXPECT_LE(err, 1e-2) << "sequence " << b << " of length " << lengths[b];
      }
      if (splits == 0 && !mass) {
        std::printf("head_dim %lld heads %lld kv_heads %lld, kernel %d: worst sequence rel error %.2e\n",
                    static_cast<long long>(hd), static_cast<long long>(nh), static_cast<long long>(nkv),
                    static_cast<int>(kernel), worst_err);
      }
      if (mass) {
        const std::vector<float> got_mass = d_mass.Download();
        EXPECT_LE(testing::RelError(got_mass, ref_mass), 1e-2);
        double sum = 0;
        for (float m : got_mass) sum += m - 0.5f;
        // Every head of every non-empty sequence distributes probability 1.
        EXPECT_NEAR(sum, static_cast<double>(nh) * (batch - 1), 1e-2 * nh * batch);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DecodeAttentionTest,
                         ::testing::Values(AttnShape{64, 9, 3}, AttnShape{128, 8, 8}, AttnShape{128, 32, 8},
                                           AttnShape{64, 16, 2}, AttnShape{128, 14, 2}, AttnShape{64, 4, 4}));

TEST(DecodeAttentionArgsTest, RejectsBadArguments) {
  ADORE_SKIP_WITHOUT_GPU();
  DeviceBuffer<bf16> d(1024);
  DeviceBuffer<int32_t> idx(8);
  DecodeAttentionArgs a;
  a.q = d.get();
  a.q_stride = 96;
  a.q_pos = idx.get();
  a.k_cache = a.v_cache = d.get();
  a.num_rows = 4;
  a.slot_offsets = a.slot_rows = a.slot_pos = idx.get();
  a.batch = 1;
  a.num_heads = 1;
  a.num_kv_heads = 1;
  a.head_dim = 96;  // unsupported
  a.max_slots = 2;
  a.scale = 0.1f;
  a.out = d.get();
  a.out_stride = 96;
  EXPECT_EQ(DecodeAttention(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.head_dim = 64;
  a.q_stride = a.out_stride = 64;
  a.num_heads = 3;
  a.num_kv_heads = 2;  // not a divisor
  EXPECT_EQ(DecodeAttention(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.num_heads = 1;
  a.num_kv_heads = 1;
  a.num_splits = 4;  // needs a workspace
  EXPECT_EQ(DecodeAttention(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adore::kernels
