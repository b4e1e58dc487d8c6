// GlooCommunicator and TcpStore over TCP on 127.0.0.1: ranks as threads of this process (and one test with
// a second process), the store on an ephemeral port. Checks results against sums computed here, and that a
// missing or dead peer gives an error within the configured timeout instead of a hang.
#include "worker/comm/gloo_communicator.h"

#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "worker/comm/tcp_store.h"

extern char** environ;

namespace adore::comm {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::unique_ptr<TcpStoreServer> StartServer() {
  absl::StatusOr<std::unique_ptr<TcpStoreServer>> server = TcpStoreServer::Start("127.0.0.1", 0);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(*server) : nullptr;
}

GlooCommunicatorOptions Options(int rank, int world, int port, const std::string& group) {
  GlooCommunicatorOptions o;
  o.rank = rank;
  o.world_size = world;
  o.store_host = "127.0.0.1";
  o.store_port = port;
  o.listen_host = "127.0.0.1";
  o.group = group;
  o.connect_timeout = absl::Seconds(20);
  o.op_timeout = absl::Seconds(20);
  return o;
}

// Creates `world` communicators in threads (they must rendezvous concurrently) and runs `body` on each
// rank's thread. Returns false (after recording failures) when any rank failed to join.
bool RunRanks(int world, const std::string& group, const std::function<void(Communicator&)>& body) {
  std::unique_ptr<TcpStoreServer> server = StartServer();
  if (server == nullptr) return false;
  std::atomic<bool> all_joined{true};
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      absl::StatusOr<std::unique_ptr<GlooCommunicator>> comm =
          GlooCommunicator::Create(Options(r, world, server->port(), group));
      if (!comm.ok()) {
        ADD_FAILURE() << "rank " << r << ": " << comm.status();
        all_joined = false;
        return;
      }
      EXPECT_EQ((*comm)->rank(), r);
      EXPECT_EQ((*comm)->world_size(), world);
      body(**comm);
    });
  }
  for (std::thread& t : threads) t.join();
  return all_joined;
}

// Integer-valued inputs, so float sums are exact whatever the reduction order.
float Value(int rank, size_t i) { return static_cast<float>((rank + 1) * (static_cast<int>(i % 97) - 48)); }

const std::vector<size_t> kSizes = {0, 1, 7, 1000, 1 << 20};

class GlooWorldTest : public ::testing::TestWithParam<int> {};

TEST_P(GlooWorldTest, AllReduceFloat32EqualsDirectSum) {
  const int world = GetParam();
  ASSERT_TRUE(RunRanks(world, "f32", [&](Communicator& comm) {
    for (size_t n : kSizes) {
      std::vector<float> data(n);
      for (size_t i = 0; i < n; ++i) data[i] = Value(comm.rank(), i);
      ASSERT_TRUE(comm.AllReduceSum(data.data(), n, CommDataType::kFloat32, nullptr).ok()) << n;
      size_t wrong = 0;
      for (size_t i = 0; i < n; ++i) {
        float expected = 0.0f;
        for (int r = 0; r < world; ++r) expected += Value(r, i);
        wrong += data[i] != expected;
      }
      EXPECT_EQ(wrong, 0u) << "rank " << comm.rank() << " size " << n;
    }
  }));
}

TEST_P(GlooWorldTest, AllReduceBf16EqualsDirectSum) {
  const int world = GetParam();
  ASSERT_TRUE(RunRanks(world, "bf16", [&](Communicator& comm) {
    // Small integers: exact in bf16, so the result must match exactly.
    auto small = [](int rank, size_t i) { return static_cast<float>((rank + 1) * (static_cast<int>(i % 9) - 4)); };
    for (size_t n : kSizes) {
      std::vector<uint16_t> data(n);
      for (size_t i = 0; i < n; ++i) data[i] = FloatToBf16Bits(small(comm.rank(), i));
      ASSERT_TRUE(comm.AllReduceSum(data.data(), n, CommDataType::kBfloat16, nullptr).ok()) << n;
      size_t wrong = 0;
      for (size_t i = 0; i < n; ++i) {
        float expected = 0.0f;
        for (int r = 0; r < world; ++r) expected += small(r, i);
        wrong += Bf16BitsToFloat(data[i]) != expected;
      }
      EXPECT_EQ(wrong, 0u) << "rank " << comm.rank() << " size " << n;
    }
    // Random values: the float32 sum rounded once to bf16, within one bf16 rounding of the exact sum.
    const size_t n = 4096;
    auto random_bits = [n](int rank) {
      std::mt19937 rng(1234 + rank);
      std::uniform_real_distribution<float> dist(-3.0f, 3.0f);
      std::vector<uint16_t> v(n);
      for (uint16_t& x : v) x = FloatToBf16Bits(dist(rng));
      return v;
    };
    std::vector<uint16_t> data = random_bits(comm.rank());
    ASSERT_TRUE(comm.AllReduceSum(data.data(), n, CommDataType::kBfloat16, nullptr).ok());
    std::vector<std::vector<uint16_t>> inputs;
    for (int r = 0; r < world; ++r) inputs.push_back(random_bits(r));
    for (size_t i = 0; i < n; ++i) {
      double exact = 0.0;
      for (int r = 0; r < world; ++r) exact += Bf16BitsToFloat(inputs[r][i]);
      ASSERT_NEAR(Bf16BitsToFloat(data[i]), exact, std::abs(exact) / 128.0 + 1e-6) << i;
    }
  }));
}

TEST_P(GlooWorldTest, AllRanksGetIdenticalBytes) {
  const int world = GetParam();
  std::vector<std::vector<float>> results(world);
  ASSERT_TRUE(RunRanks(world, "identical", [&](Communicator& comm) {
    std::mt19937 rng(77 + comm.rank());
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> data(100003);
    for (float& x : data) x = dist(rng);
    ASSERT_TRUE(comm.AllReduceSum(data.data(), data.size(), CommDataType::kFloat32, nullptr).ok());
    results[comm.rank()] = std::move(data);
  }));
  for (int r = 1; r < world; ++r) {
    ASSERT_EQ(results[r].size(), results[0].size());
    EXPECT_EQ(std::memcmp(results[r].data(), results[0].data(), results[0].size() * sizeof(float)), 0) << r;
  }
}

TEST_P(GlooWorldTest, BroadcastFromNonZeroRoot) {
  const int world = GetParam();
  const int root = world - 1;
  ASSERT_TRUE(RunRanks(world, "bcast", [&](Communicator& comm) {
    for (size_t n : {size_t{0}, size_t{13}, size_t{100000}}) {
      std::vector<uint8_t> data(n, static_cast<uint8_t>(0xA0 + comm.rank()));
      if (comm.rank() == root) {
        for (size_t i = 0; i < n; ++i) data[i] = static_cast<uint8_t>(i * 31 + 7);
      }
      ASSERT_TRUE(comm.Broadcast(data.data(), n, root, nullptr).ok()) << n;
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(data[i], static_cast<uint8_t>(i * 31 + 7)) << "rank " << comm.rank();
    }
    uint8_t byte = 0;
    EXPECT_EQ(comm.Broadcast(&byte, 1, world, nullptr).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(comm.health().ok());  // a bad argument does not poison the communicator
  }));
}

TEST_P(GlooWorldTest, AllGatherFixedBlocks) {
  const int world = GetParam();
  ASSERT_TRUE(RunRanks(world, "gather", [&](Communicator& comm) {
    constexpr size_t kBlock = 32;  // e.g. a slot-map hash per rank
    std::vector<uint8_t> send(kBlock);
    for (size_t i = 0; i < kBlock; ++i) send[i] = static_cast<uint8_t>(comm.rank() * 16 + i);
    std::vector<uint8_t> recv(kBlock * world, 0xff);
    ASSERT_TRUE(comm.AllGather(send.data(), recv.data(), kBlock, nullptr).ok());
    for (int r = 0; r < world; ++r) {
      for (size_t i = 0; i < kBlock; ++i) ASSERT_EQ(recv[r * kBlock + i], static_cast<uint8_t>(r * 16 + i));
    }
    // In place: this rank's block already sits in recv.
    std::vector<uint8_t> in_place(kBlock * world, 0);
    std::memcpy(in_place.data() + comm.rank() * kBlock, send.data(), kBlock);
    ASSERT_TRUE(comm.AllGather(in_place.data() + comm.rank() * kBlock, in_place.data(), kBlock, nullptr).ok());
    EXPECT_EQ(in_place, recv);
  }));
}

TEST_P(GlooWorldTest, BarrierAndStats) {
  const int world = GetParam();
  ASSERT_TRUE(RunRanks(world, "stats", [&](Communicator& comm) {
    std::vector<float> data(256, 1.0f);
    ASSERT_TRUE(comm.AllReduceSum(data.data(), data.size(), CommDataType::kFloat32, nullptr).ok());
    ASSERT_TRUE(comm.AllReduceSum(data.data(), data.size(), CommDataType::kFloat32, nullptr).ok());
    ASSERT_TRUE(comm.Broadcast(data.data(), 64, 0, nullptr).ok());
    ASSERT_TRUE(comm.Barrier().ok());
    const CommStats stats = comm.TakeStats();
    EXPECT_EQ(stats[CommOp::kAllReduce].calls, 2);
    EXPECT_EQ(stats[CommOp::kAllReduce].bytes, 2 * 256 * 4);
    EXPECT_EQ(stats[CommOp::kBroadcast].calls, 1);
    EXPECT_EQ(stats[CommOp::kBarrier].calls, 1);
    EXPECT_EQ(stats[CommOp::kAllGather].calls, 0);
    EXPECT_GT(stats.TotalSeconds(), 0.0);
    EXPECT_EQ(comm.Stats().TotalCalls(), 0);  // TakeStats reset them
  }));
}

INSTANTIATE_TEST_SUITE_P(Worlds, GlooWorldTest, ::testing::Values(2, 4),
                         [](const ::testing::TestParamInfo<int>& info) { return absl::StrCat(info.param, "Ranks"); });

// A rank whose mesh connection failed makes every rank connect again under a fresh prefix; after a failed
// first attempt the group works, and after three failed attempts every rank says so.
TEST(GlooCommunicatorTest, FailedMeshConnectionIsRetriedByEveryRank) {
  for (int failures : {1, 3}) {
    SCOPED_TRACE(failures);
    std::unique_ptr<TcpStoreServer> server = StartServer();
    ASSERT_NE(server, nullptr);
    constexpr int kWorld = 3;
    std::vector<absl::Status> status(kWorld);
    std::vector<float> sums(kWorld, 0.0f);
    std::vector<std::thread> threads;
    for (int r = 0; r < kWorld; ++r) {
      threads.emplace_back([&, r] {
        GlooCommunicatorOptions o = Options(r, kWorld, server->port(), absl::StrCat("retry", failures));
        if (r == 1) o.testing_fail_mesh_attempts = failures;
        absl::StatusOr<std::unique_ptr<GlooCommunicator>> comm = GlooCommunicator::Create(o);
        status[r] = comm.status();
        if (!comm.ok()) return;
        float x = static_cast<float>(r + 1);
        status[r] = (*comm)->AllReduceSum(&x, 1, CommDataType::kFloat32, nullptr);
        sums[r] = x;
      });
    }
    for (std::thread& t : threads) t.join();
    for (int r = 0; r < kWorld; ++r) {
      if (failures < 3) {
        EXPECT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r];
        EXPECT_EQ(sums[r], 6.0f) << "rank " << r;
      } else {
        EXPECT_EQ(status[r].code(), absl::StatusCode::kUnavailable) << "rank " << r << ": " << status[r];
        EXPECT_NE(status[r].message().find("failed 3 time(s)"), std::string::npos) << status[r];
        EXPECT_NE(status[r].message().find("rank 1: testing"), std::string::npos) << status[r];
      }
    }
  }
}

TEST(GlooCommunicatorTest, WorldOfOneNeedsNoStore) {
  GlooCommunicatorOptions o;  // no store at all
  absl::StatusOr<std::unique_ptr<GlooCommunicator>> comm = GlooCommunicator::Create(o);
  ASSERT_TRUE(comm.ok()) << comm.status();
  std::vector<float> data = {1.0f, -2.0f, 3.5f};
  ASSERT_TRUE((*comm)->AllReduceSum(data.data(), data.size(), CommDataType::kFloat32, nullptr).ok());
  EXPECT_EQ(data, (std::vector<float>{1.0f, -2.0f, 3.5f}));
  std::vector<uint8_t> send = {1, 2, 3}, recv(3);
  ASSERT_TRUE((*comm)->AllGather(send.data(), recv.data(), 3, nullptr).ok());
  EXPECT_EQ(recv, send);
  EXPECT_TRUE((*comm)->Broadcast(send.data(), 3, 0, nullptr).ok());
  EXPECT_TRUE((*comm)->Barrier().ok());
}

TEST(GlooCommunicatorTest, RejectsBadRank) {
  GlooCommunicatorOptions o;
  o.world_size = 2;
  o.rank = 2;
  EXPECT_EQ(GlooCommunicator::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GlooCommunicatorTest, MissingRankTimesOutNamingIt) {
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  constexpr int kWorld = 3;  // rank 2 never joins
  std::vector<absl::Status> results(2);
  std::vector<double> elapsed(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      GlooCommunicatorOptions o = Options(r, kWorld, server->port(), "missing");
      o.connect_timeout = absl::Seconds(2);
      const auto start = Clock::now();
      results[r] = GlooCommunicator::Create(o).status();
      elapsed[r] = SecondsSince(start);
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(results[r].code(), absl::StatusCode::kDeadlineExceeded) << results[r];
    EXPECT_NE(results[r].message().find("rank(s) 2 did not join"), std::string::npos) << results[r];
    EXPECT_GE(elapsed[r], 1.5);
    EXPECT_LT(elapsed[r], 5.0);
  }
}

TEST(GlooCommunicatorTest, StoreUnreachableIsUnavailable) {
  // A port nobody listens on: bind one, read it, close it.
  int port = 0;
  {
    absl::StatusOr<std::unique_ptr<TcpStoreServer>> probe = TcpStoreServer::Start("127.0.0.1", 0);
    ASSERT_TRUE(probe.ok());
    port = (*probe)->port();
  }
  GlooCommunicatorOptions o = Options(0, 2, port, "nostore");
  o.connect_timeout = absl::Milliseconds(500);
  const auto start = Clock::now();
  const absl::Status s = GlooCommunicator::Create(o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_LT(SecondsSince(start), 3.0);
}

TEST(GlooCommunicatorTest, PeerThatStopsParticipatingHitsOpTimeout) {
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  std::atomic<bool> rank0_done{false};
  absl::Status first, second;
  double elapsed = 0.0;
  std::thread rank1([&] {
    auto comm = GlooCommunicator::Create(Options(1, 2, server->port(), "stall"));
    ASSERT_TRUE(comm.ok()) << comm.status();
    // Joins, then never calls the collective; stays alive until rank 0 has given up.
    while (!rank0_done) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  });
  {
    GlooCommunicatorOptions o = Options(0, 2, server->port(), "stall");
    o.op_timeout = absl::Seconds(1);
    auto comm = GlooCommunicator::Create(o);
    ASSERT_TRUE(comm.ok()) << comm.status();
    std::vector<float> data(1000, 1.0f);
    const auto start = Clock::now();
    first = (*comm)->AllReduceSum(data.data(), data.size(), CommDataType::kFloat32, nullptr);
    elapsed = SecondsSince(start);
    second = (*comm)->Barrier();
    rank0_done = true;
  }
  rank1.join();
  EXPECT_EQ(first.code(), absl::StatusCode::kDeadlineExceeded) << first;
  EXPECT_NE(first.message().find("AllReduceSum (rank 0 of 2, 1000 float32 elements, peer rank 1)"), std::string::npos)
      << first;
  EXPECT_GE(elapsed, 0.9);
  EXPECT_LT(elapsed, 4.0);
  EXPECT_EQ(second.code(), absl::StatusCode::kFailedPrecondition) << second;
}

TEST(GlooCommunicatorTest, ClosedPeerIsUnavailable) {
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  std::atomic<bool> rank1_gone{false};
  std::thread rank1([&] {
    auto comm = GlooCommunicator::Create(Options(1, 2, server->port(), "closed"));
    ASSERT_TRUE(comm.ok()) << comm.status();
    ASSERT_TRUE((*comm)->Barrier().ok());
    // Leaves the group: its sockets close.
    comm->reset();
    rank1_gone = true;
  });
  GlooCommunicatorOptions o = Options(0, 2, server->port(), "closed");
  o.op_timeout = absl::Seconds(10);
  auto comm = GlooCommunicator::Create(o);
  ASSERT_TRUE(comm.ok()) << comm.status();
  EXPECT_TRUE((*comm)->Barrier().ok());
  rank1.join();
  ASSERT_TRUE(rank1_gone);
  std::vector<float> data(1000, 1.0f);
  const auto start = Clock::now();
  const absl::Status s = (*comm)->AllReduceSum(data.data(), data.size(), CommDataType::kFloat32, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_LT(SecondsSince(start), 5.0);
}

// ---------------------------------------------------------------------------------------------------------
// Two processes: this one is rank 0, a child (this binary re-run with a filter) is rank 1.

constexpr char kChildEnv[] = "ADORE_COMM_TEST_CHILD";  // "<store port>,<group>"

// The child's side; skipped unless launched by MultiProcess below.
TEST(GlooChildProcess, Rank1) {
  const char* env = std::getenv(kChildEnv);
  if (env == nullptr) GTEST_SKIP() << "runs only as the child of GlooCommunicatorTest.TwoProcesses*";
  std::vector<std::string> parts = absl::StrSplit(env, ',');
  ASSERT_EQ(parts.size(), 2u);
  auto comm = GlooCommunicator::Create(Options(1, 2, std::stoi(parts[0]), parts[1]));
  ASSERT_TRUE(comm.ok()) << comm.status();
  std::vector<float> data(5000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = Value(1, i);
  ASSERT_TRUE((*comm)->AllReduceSum(data.data(), data.size(), CommDataType::kFloat32, nullptr).ok());
  std::vector<uint8_t> decision(64);
  ASSERT_TRUE((*comm)->Broadcast(decision.data(), decision.size(), 0, nullptr).ok());
  uint64_t hash = 0;
  std::memcpy(&hash, decision.data(), sizeof(hash));
  std::vector<uint64_t> hashes(2);
  ASSERT_TRUE((*comm)->AllGather(&hash, hashes.data(), sizeof(hash), nullptr).ok());
  ASSERT_TRUE((*comm)->Barrier().ok());
  // Stay in the group until the parent kills this process.
  std::this_thread::sleep_for(std::chrono::seconds(30));
}

pid_t SpawnChild(int port, const std::string& group) {
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, kChildEnv, std::strlen(kChildEnv)) != 0) env_strings.push_back(*e);
  }
  env_strings.push_back(absl::StrCat(kChildEnv, "=", port, ",", group));
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string exe = "/proc/self/exe";
  std::string filter = "--gtest_filter=GlooChildProcess.Rank1";
  std::vector<char*> argv = {exe.data(), filter.data(), nullptr};
  pid_t pid = -1;
  if (posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv.data(), envp.data()) != 0) return -1;
  return pid;
}

TEST(GlooCommunicatorTest, TwoProcessesThenKilledPeerIsUnavailable) {
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  const pid_t child = SpawnChild(server->port(), "procs");
  ASSERT_GT(child, 0);
  GlooCommunicatorOptions o = Options(0, 2, server->port(), "procs");
  o.op_timeout = absl::Seconds(10);
  auto comm = GlooCommunicator::Create(o);
  if (!comm.ok()) {
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    FAIL() << comm.status();
  }
  std::vector<float> data(5000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = Value(0, i);
  EXPECT_TRUE((*comm)->AllReduceSum(data.data(), data.size(), CommDataType::kFloat32, nullptr).ok());
  for (size_t i = 0; i < data.size(); ++i) ASSERT_EQ(data[i], Value(0, i) + Value(1, i)) << i;
  std::vector<uint8_t> decision(64);
  for (size_t i = 0; i < decision.size(); ++i) decision[i] = static_cast<uint8_t>(i + 1);
  EXPECT_TRUE((*comm)->Broadcast(decision.data(), decision.size(), 0, nullptr).ok());
  uint64_t hash = 0;
  std::memcpy(&hash, decision.data(), sizeof(hash));
  std::vector<uint64_t> hashes(2);
  EXPECT_TRUE((*comm)->AllGather(&hash, hashes.data(), sizeof(hash), nullptr).ok());
  EXPECT_EQ(hashes[0], hashes[1]);  // the child saw the broadcast decision
  EXPECT_TRUE((*comm)->Barrier().ok());

  // The peer dies (no clean shutdown): the next collective fails quickly instead of hanging.
  kill(child, SIGKILL);
  int wstatus = 0;
  waitpid(child, &wstatus, 0);
  const auto start = Clock::now();
  const absl::Status s = (*comm)->AllReduceSum(data.data(), data.size(), CommDataType::kFloat32, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_LT(SecondsSince(start), 5.0);
}

// ---------------------------------------------------------------------------------------------------------
// TcpStore

TEST(TcpStoreTest, GetWaitsForAKeySetByAnotherClient) {
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  auto a = TcpStore::Connect("127.0.0.1", server->port(), absl::Seconds(2), absl::Seconds(2));
  auto b = TcpStore::Connect("127.0.0.1", server->port(), absl::Seconds(2), absl::Seconds(2));
  ASSERT_TRUE(a.ok() && b.ok());
  std::thread setter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_TRUE((*b)->Set("k", std::string("v\0x", 3)).ok());
  });
  absl::StatusOr<std::string> v = (*a)->Get("k", absl::Seconds(5));
  setter.join();
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, std::string("v\0x", 3));
  EXPECT_TRUE((*a)->Wait({"k"}, absl::Seconds(1)).ok());
  auto missing = (*a)->Missing({"k", "x", "y"});
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(*missing, (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(server->num_keys(), 1u);
}

TEST(TcpStoreTest, WaitTimesOutNamingMissingKeys) {
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  auto store = TcpStore::Connect("127.0.0.1", server->port(), absl::Seconds(2), absl::Seconds(2));
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->Set("present", "1").ok());
  const auto start = Clock::now();
  const absl::Status s = (*store)->Wait({"present", "absent"}, absl::Milliseconds(300));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_NE(s.message().find("'absent'"), std::string::npos) << s;
  EXPECT_EQ(s.message().find("'present'"), std::string::npos) << s;
  EXPECT_GE(SecondsSince(start), 0.25);
  EXPECT_LT(SecondsSince(start), 3.0);
  EXPECT_EQ((*store)->Get("absent", absl::Milliseconds(100)).status().code(), absl::StatusCode::kDeadlineExceeded);
  // Still usable after a timeout.
  EXPECT_TRUE((*store)->Get("present", absl::Milliseconds(100)).ok());
}

TEST(TcpStoreTest, ClientStartedBeforeServerConnectsWhenItComes) {
  // Reserve a port, release it, then start the server there a little after the client began retrying.
  int port = 0;
  {
    auto probe = TcpStoreServer::Start("127.0.0.1", 0);
    ASSERT_TRUE(probe.ok());
    port = (*probe)->port();
  }
  std::unique_ptr<TcpStoreServer> server;
  std::thread starter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    auto s = TcpStoreServer::Start("127.0.0.1", port);
    ASSERT_TRUE(s.ok()) << s.status();
    server = std::move(*s);
  });
  auto store = TcpStore::Connect("127.0.0.1", port, absl::Seconds(5), absl::Seconds(1));
  starter.join();
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_TRUE((*store)->Set("a", "b").ok());
}

TEST(TcpStoreTest, StoppingTheServerFailsPendingWaits) {
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  auto store = TcpStore::Connect("127.0.0.1", server->port(), absl::Seconds(2), absl::Seconds(2));
  ASSERT_TRUE(store.ok());
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    server->Stop();
  });
  const auto start = Clock::now();
  const absl::Status s = (*store)->Wait({"never"}, absl::Seconds(30));
  stopper.join();
  EXPECT_FALSE(s.ok());
  EXPECT_LT(SecondsSince(start), 5.0);
  EXPECT_EQ((*store)->Set("a", "b").code(), absl::StatusCode::kUnavailable);
}

TEST(TcpStoreTest, GlooInterfaceThrowsOnTimeout) {
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  auto store = TcpStore::Connect("127.0.0.1", server->port(), absl::Seconds(2), absl::Milliseconds(200));
  ASSERT_TRUE(store.ok());
  gloo::rendezvous::Store& gloo_store = **store;
  gloo_store.set("x", std::vector<char>{'1', '2'});
  EXPECT_EQ(gloo_store.get("x"), (std::vector<char>{'1', '2'}));
  EXPECT_THROW(gloo_store.wait({"y"}, std::chrono::milliseconds(100)), std::exception);
  EXPECT_THROW(gloo_store.get("y"), std::exception);
}

}  // namespace
}  // namespace adore::comm
