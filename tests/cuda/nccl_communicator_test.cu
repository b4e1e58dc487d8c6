// NcclCommunicator on real GPUs: world size 1 on one GPU (all-reduce is the identity, broadcast and
// all-gather copy), 2 ranks as threads when 2+ GPUs are visible, and the init timeout. Skips without a GPU.
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/cuda/cuda_test_util.h"
#include "worker/comm/nccl_communicator.h"

namespace adore::comm {
namespace {

using ::adore::testing::DeviceBuffer;
using ::adore::testing::ToBf16;
using ::adore::testing::ToFloat;

int DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::unique_ptr<NcclCommunicator> MustCreate(const std::string& id, int rank, int world, int device) {
  NcclCommunicatorOptions options;
  options.init_timeout = absl::Seconds(60);
  options.op_timeout = absl::Seconds(30);
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm = NcclCommunicator::Create(id, rank, world, device, options);
  EXPECT_TRUE(comm.ok()) << comm.status();
  return comm.ok() ? std::move(*comm) : nullptr;
}

float Value(int rank, size_t i) { return static_cast<float>((rank + 1) * (static_cast<int>(i % 9) - 4)); }

TEST(NcclCommunicatorTest, WorldOfOneIsIdentity) {
  ADORE_SKIP_WITHOUT_GPU();
  absl::StatusOr<std::string> id = NcclCommunicator::CreateUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_EQ(id->size(), NcclCommunicator::kUniqueIdBytes);
  std::unique_ptr<NcclCommunicator> comm = MustCreate(*id, 0, 1, 0);
  ASSERT_NE(comm, nullptr);
  EXPECT_EQ(comm->world_size(), 1);
  EXPECT_STREQ(comm->backend(), "nccl");

  cudaStream_t stream;
  ADORE_ASSERT_CUDA(cudaStreamCreate(&stream));
  for (size_t n : {size_t{0}, size_t{1}, size_t{1000}, size_t{1} << 20}) {
    std::vector<float> host(n);
    for (size_t i = 0; i < n; ++i) host[i] = Value(0, i) + 0.25f;
    DeviceBuffer<float> f32(host);
    ASSERT_TRUE(comm->AllReduceSum(f32.get(), n, CommDataType::kFloat32, stream).ok());
    DeviceBuffer<__nv_bfloat16> b16(ToBf16(host));
    ASSERT_TRUE(comm->AllReduceSum(b16.get(), n, CommDataType::kBfloat16, stream).ok());
    ASSERT_TRUE(comm->Synchronize(stream).ok());
    EXPECT_EQ(f32.Download(), host) << n;
    EXPECT_EQ(ToFloat(b16.Download()), host) << n;  // the values are exact in bf16
  }

  // Host buffers are staged through the device.
  std::vector<float> host_values = {1.5f, -2.0f, 3.0f};
  const std::vector<float> expected = host_values;
  ASSERT_TRUE(comm->AllReduceSum(host_values.data(), 3, CommDataType::kFloat32, stream).ok());
  EXPECT_EQ(host_values, expected);
  std::vector<uint8_t> decision = {9, 8, 7, 6};
  ASSERT_TRUE(comm->Broadcast(decision.data(), decision.size(), 0, stream).ok());
  EXPECT_EQ(decision, (std::vector<uint8_t>{9, 8, 7, 6}));
  uint64_t hash = 0x1234567890abcdefull, gathered = 0;
  ASSERT_TRUE(comm->AllGather(&hash, &gathered, sizeof(hash), stream).ok());
  EXPECT_EQ(gathered, hash);
  DeviceBuffer<uint8_t> dev_send(std::vector<uint8_t>{1, 2, 3, 4});
  DeviceBuffer<uint8_t> dev_recv(4);
  ASSERT_TRUE(comm->AllGather(dev_send.get(), dev_recv.get(), 4, stream).ok());
  ASSERT_TRUE(comm->Synchronize(stream).ok());
  EXPECT_EQ(dev_recv.Download(), (std::vector<uint8_t>{1, 2, 3, 4}));
  ASSERT_TRUE(comm->Barrier().ok());

  const CommStats stats = comm->Stats();  // device time of completed collectives
  EXPECT_EQ(stats[CommOp::kAllReduce].calls, 9);  // 4 sizes x 2 dtypes (empty calls count too) + 1 host
  EXPECT_EQ(stats[CommOp::kBarrier].calls, 1);
  EXPECT_GT(stats.TotalSeconds(), 0.0);
  EXPECT_EQ(comm->Broadcast(decision.data(), 4, 1, stream).code(), absl::StatusCode::kInvalidArgument);
  ADORE_ASSERT_CUDA(cudaStreamDestroy(stream));
}

TEST(NcclCommunicatorTest, RejectsBadUniqueId) {
  ADORE_SKIP_WITHOUT_GPU();
  EXPECT_EQ(NcclCommunicator::Create("short", 0, 1, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NcclCommunicatorTest, MissingRankTimesOut) {
  ADORE_SKIP_WITHOUT_GPU();
  absl::StatusOr<std::string> id = NcclCommunicator::CreateUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  NcclCommunicatorOptions options;
  options.init_timeout = absl::Seconds(3);
  const auto start = std::chrono::steady_clock::now();
  // World of 2, but rank 1 never comes.
  const absl::Status s = NcclCommunicator::Create(*id, 0, 2, 0, options).status();
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_LT(elapsed, 20.0);
}

TEST(NcclCommunicatorTest, TwoRanksOnTwoGpus) {
  ADORE_SKIP_WITHOUT_GPU();
  if (DeviceCount() < 2) GTEST_SKIP() << "needs 2 GPUs, found " << DeviceCount();
  absl::StatusOr<std::string> id = NcclCommunicator::CreateUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  constexpr int kWorld = 2;
  std::vector<std::thread> threads;
  for (int r = 0; r < kWorld; ++r) {
    threads.emplace_back([&, r] {
      std::unique_ptr<NcclCommunicator> comm = MustCreate(*id, r, kWorld, r);
      ASSERT_NE(comm, nullptr);
      cudaStream_t stream;
      ADORE_ASSERT_CUDA(cudaStreamCreate(&stream));
      for (size_t n : {size_t{0}, size_t{1}, size_t{1000}, size_t{1} << 20}) {
        std::vector<float> host(n), expected(n);
        for (size_t i = 0; i < n; ++i) {
          host[i] = Value(r, i);
          expected[i] = Value(0, i) + Value(1, i);
        }
        DeviceBuffer<float> f32(host);
        DeviceBuffer<__nv_bfloat16> b16(ToBf16(host));
        ASSERT_TRUE(comm->AllReduceSum(f32.get(), n, CommDataType::kFloat32, stream).ok());
        ASSERT_TRUE(comm->AllReduceSum(b16.get(), n, CommDataType::kBfloat16, stream).ok());
        ASSERT_TRUE(comm->Synchronize(stream).ok());
        EXPECT_EQ(f32.Download(), expected) << "rank " << r << " size " << n;
        EXPECT_EQ(ToFloat(b16.Download()), expected) << "rank " << r << " size " << n;
      }
      // The release decision from a non-zero root, on host memory.
      std::vector<uint8_t> decision(100, static_cast<uint8_t>(r));
      if (r == 1) {
        for (size_t i = 0; i < decision.size(); ++i) decision[i] = static_cast<uint8_t>(3 * i + 1);
      }
      ASSERT_TRUE(comm->Broadcast(decision.data(), decision.size(), 1, stream).ok());
      for (size_t i = 0; i < decision.size(); ++i) ASSERT_EQ(decision[i], static_cast<uint8_t>(3 * i + 1));
      uint64_t hash = 1000 + r;
      uint64_t hashes[kWorld] = {};
      ASSERT_TRUE(comm->AllGather(&hash, hashes, sizeof(hash), stream).ok());
      EXPECT_EQ(hashes[0], 1000u);
      EXPECT_EQ(hashes[1], 1001u);
      ASSERT_TRUE(comm->Barrier().ok());
      ADORE_ASSERT_CUDA(cudaStreamDestroy(stream));
    });
  }
  for (std::thread& t : threads) t.join();
}

}  // namespace
}  // namespace adore::comm
