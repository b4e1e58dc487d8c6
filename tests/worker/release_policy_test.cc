// Release policies on hand-built slot maps and attention scores, and through the CPU engine.
#include "worker/release_policy.h"

#include <algorithm>

#include "gtest/gtest.h"

namespace adore {
namespace {

SequenceKv MakeSeq(const std::vector<int32_t>& pos) {
  SequenceKv seq;
  for (size_t i = 0; i < pos.size(); ++i) {
    seq.rows.push_back(static_cast<int32_t>(100 + i));
    seq.pos.push_back(pos[i]);
  }
  seq.next_pos = *std::max_element(pos.begin(), pos.end()) + 1;
  return seq;
}

std::vector<int32_t> Sorted(std::vector<int32_t> v) {
  std::sort(v.begin(), v.end());
  return v;
}

TEST(ReleasePolicyTest, ParsesNamesAndRejectsUnknown) {
  EXPECT_EQ(*ParsePolicyKind("heavy_hitter"), PolicyKind::kHeavyHitter);
  auto bad = ParsePolicyKind("lru");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("lru"), std::string::npos);
}

TEST(ReleasePolicyTest, ValidateNamesTheField) {
  EXPECT_TRUE(ReleaseConfig{}.Validate(8192).ok());
  auto msg = [](ReleaseConfig c) { return std::string(c.Validate(8192).message()); };
  EXPECT_NE(msg({.kind = PolicyKind::kWindow, .kv_budget = 8}).find("kv_budget"), std::string::npos);
  EXPECT_NE(msg({.kind = PolicyKind::kWindow, .kv_budget = 9000}).find("kv_budget"), std::string::npos);
  EXPECT_NE(msg({.kind = PolicyKind::kWindow, .kv_budget = 256, .rebuild = 8}).find("rebuild"), std::string::npos);
  EXPECT_NE(msg({.kind = PolicyKind::kAdore, .kv_budget = 256, .rebuild = 65}).find("rebuild"), std::string::npos);
  EXPECT_NE(msg({.kind = PolicyKind::kFull, .rebuild = 1}).find("rebuild"), std::string::npos);
}

TEST(ReleasePolicyTest, FullNeverReleases) {
  auto p = *MakeReleasePolicy({});
  SequenceKv seq = MakeSeq({0, 1, 2});
  EXPECT_TRUE(p->SelectRelease(seq, 0)->empty());
  EXPECT_EQ(p->SelectRelease(seq, 1).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ReleasePolicyTest, WindowKeepsSinksAndReleasesOldestOfTheRest) {
  auto p = *MakeReleasePolicy({.kind = PolicyKind::kWindow, .kv_budget = 16, .num_sink = 2});
  // Slots hold positions out of order, as after in-place reuse.
  SequenceKv seq = MakeSeq({7, 0, 5, 1, 9, 3, 8});
  // Oldest non-sink positions: 3 (slot 5), 5 (slot 2), 7 (slot 0).
  EXPECT_EQ(*p->SelectRelease(seq, 3), (std::vector<int32_t>{5, 2, 0}));
  EXPECT_EQ(p->SelectRelease(seq, 6).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ReleasePolicyTest, HeavyHitterReleasesLeastAccumulatedOutsideRecentWindow) {
  auto p = *MakeReleasePolicy({.kind = PolicyKind::kHeavyHitter, .kv_budget = 16, .num_recent = 2});
  SequenceKv seq = MakeSeq({0, 1, 2, 3, 4, 5});
  p->Observe(seq, std::vector<float>{0.5f, 0.1f, 0.3f, 0.05f, 0.0f, 0.0f});
  p->Observe(seq, std::vector<float>{0.4f, 0.1f, 0.0f, 0.10f, 0.0f, 0.0f});
  // Accumulated: 0.9, 0.2, 0.3, 0.15, [recent 4, 5 protected].
  EXPECT_EQ(*p->SelectRelease(seq, 2), (std::vector<int32_t>{3, 1}));
  // After slot 3 is reused by a new token its score restarts at zero, but it is now recent.
  seq.pos[3] = 6;
  seq.next_pos = 7;
  p->OnSlotReused(3);
  EXPECT_EQ(Sorted(*p->SelectRelease(seq, 2)), (std::vector<int32_t>{1, 4}));
  EXPECT_EQ(p->SelectRelease(seq, 5).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ReleasePolicyTest, AdoreNeedsAControllerAndDoesNotRebuildYet) {
  EXPECT_EQ(MakeReleasePolicy({.kind = PolicyKind::kAdore, .kv_budget = 64}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace adore
