// Faults of the distributed runtime as deployed (docs/RELIABILITY.md, "Faults"): the built adore-server and
// adore-worker binaries as child processes on loopback, serving the tiny test model (tests/data/tiny_hf),
// each worker step slowed to 20 ms (adore-worker --debug_step_delay_ms) so that streams last seconds.
//   - A worker killed with SIGKILL while streams run (TP=1, and either rank of a Gloo TP=2 group): every
//     stream ends with UNAVAILABLE within 2 s of the kill; the coordinator keeps running and reports
//     NOT_SERVING (grpc.health.v1 for "" and adore.v1.Adore) and 503 on /health; once the worker is back
//     (restarted on its port, or re-registering at a new one with --coordinator) the coordinator loads it
//     again (forms the TP=2 group again), reports SERVING and 200, and a request gives the tokens it gave
//     before the fault.
//   - The coordinator killed with SIGKILL while streams run, and a new one started on its port with
//     --expect_workers: the workers re-register on their own (their registration renewal) and a request
//     succeeds within a bounded time.
// In every test, every stream the test starts ends with its final message or an error status: they are
// counted.
#include <signal.h>
#include <unistd.h>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "adore/v1/adore.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/server/child_process.h"
#include "tests/server/server_test_util.h"

namespace adore {
namespace {

using testing::Child;

constexpr char kSecret[] = "fault-secret-2b7e";
constexpr int kStepDelayMs = 20;       // per worker step: a 150-token stream lasts about 3 s
constexpr double kEndWithinS = 2.0;    // every affected stream ends this soon after the kill
const absl::Duration kRecoverWithin = absl::Seconds(20);

std::string TinyModel() { return std::string(ADORE_SOURCE_DIR) + "/tests/data/tiny_hf"; }

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

using testing::kNotServing;
using testing::kServing;
int GrpcHealth(const std::string& address, const std::string& service) {
  return testing::GrpcHealthCheck(address, service);
}

int HttpHealth(int port) {
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(2);
  c.set_read_timeout(2);
  auto res = c.Get("/health");
  return res ? res->status : -1;
}

// Readiness as the three probes see it: grpc.health.v1 for "" and for adore.v1.Adore, and HTTP /health.
struct Readiness {
  int overall = -1, adore = -1, http = -1;
  bool Serving() const { return overall == kServing && adore == kServing && http == 200; }
  bool NotServing() const { return overall == kNotServing && adore == kNotServing && http == 503; }
  std::string ToString() const { return absl::StrCat("\"\": ", overall, ", adore.v1.Adore: ", adore, ", /health: ", http); }
};

Readiness Probe(const std::string& address, int http_port) {
  return {GrpcHealth(address, ""), GrpcHealth(address, "adore.v1.Adore"), HttpHealth(http_port)};
}

// Polls until `want` holds; the latest readiness and how long it took.
bool WaitForReadiness(const std::string& address, int http_port, bool serving, absl::Duration timeout,
                      Readiness* last, double* took_s) {
  const auto t0 = std::chrono::steady_clock::now();
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    *last = Probe(address, http_port);
    *took_s = SecondsSince(t0);
    if (serving ? last->Serving() : last->NotServing()) return true;
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(50));
  }
}

v1::GenerateRequest Request(const std::string& text, int max_tokens) {
  v1::GenerateRequest req;
  req.set_text(text);
  req.mutable_sampling()->set_max_tokens(max_tokens);
  req.mutable_sampling()->set_temperature(0.0f);
  return req;
}

// Streams started by a test, each read to its end on its own thread. Every stream is accounted for: it
// ends with its final message (status OK with GenerateDone) or with an error status.
class Streams {
 public:
  ~Streams() { Join(); }

  // Starts `n` Generate streams of `req` against `address`.
  void Start(const std::string& address, int n, const v1::GenerateRequest& req) {
    auto stub = std::shared_ptr<v1::Adore::Stub>(
        v1::Adore::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())));
    for (int i = 0; i < n; ++i) {
      auto s = std::make_shared<One>();
      streams_.push_back(s);
      threads_.emplace_back([s, stub, req] {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
        auto reader = stub->Generate(&ctx, req);
        v1::GenerateResponse r;
        while (reader->Read(&r)) {
          if (r.has_delta()) s->tokens += r.delta().token_ids_size();
          if (r.has_done()) s->done = true;
        }
        s->status = reader->Finish();
        s->ended = std::chrono::steady_clock::now();
        s->finished = true;
      });
    }
  }

  // Waits until every stream has streamed at least `tokens` tokens (and none has ended).
  bool WaitForTokens(int tokens, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      bool all = true;
      for (const auto& s : streams_) all = all && !s->finished && s->tokens >= tokens;
      if (all) return true;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  }

  void Join() {
    for (std::thread& t : threads_) t.join();
    threads_.clear();
  }

  struct One {
    std::atomic<int> tokens{0};
    std::atomic<bool> finished{false};
    bool done = false;
    grpc::Status status;
    std::chrono::steady_clock::time_point ended;
  };
  const std::vector<std::shared_ptr<One>>& all() const { return streams_; }
  int started() const { return static_cast<int>(streams_.size()); }
  // After Join: how the streams ended.
  int completed() const {
    int n = 0;
    for (const auto& s : streams_) n += s->finished && s->status.ok() && s->done;
    return n;
  }
  int failed() const {
    int n = 0;
    for (const auto& s : streams_) n += s->finished && !s->status.ok();
    return n;
  }

 private:
  std::vector<std::shared_ptr<One>> streams_;
  std::vector<std::thread> threads_;
};

// One request read to its end (counted in `streams` like the others).
testing::StreamResult Generate(const std::string& address, const v1::GenerateRequest& req, int* started,
                               int* accounted) {
  auto stub = v1::Adore::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  ++*started;
  testing::StreamResult r = testing::ReadGenerate(*stub, req, /*deadline_ms=*/30000);
  if ((r.status.ok() && r.done.has_usage()) || !r.status.ok()) ++*accounted;
  return r;
}

void KillHard(Child& c) {
  ASSERT_TRUE(c.Running());
  ::kill(c.pid(), SIGKILL);
  while (c.Running()) absl::SleepFor(absl::Milliseconds(2));
}

enum class Discovery { kListed, kRegistered };

class FaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::path(::testing::TempDir()) /
            absl::StrCat("fault.", ::getpid(), ".", ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    secret_file_ = dir_ + "/secret";
    std::ofstream(secret_file_) << kSecret << "\n";
  }
  void TearDown() override {
    if (HasFailure()) std::fprintf(stderr, "%s\n", Logs().c_str());
    servers_.clear();  // before the workers: the server ends its streams first
    workers_.clear();
    if (!HasFailure() && std::getenv("ADORE_KEEP_LOGS") == nullptr) std::filesystem::remove_all(dir_);
  }

  std::string Logs() const {
    std::string all;
    for (const auto& s : servers_) all += s->Logs();
    for (const auto& w : workers_) all += w->Logs();
    return all;
  }

  // Starts adore-worker as `name` (port 0 = any), registering with `coordinator` as `rank` when given.
  // Returns its address.
  std::string StartWorker(const std::string& name, int port, const std::string& coordinator = "", int rank = -1) {
    std::vector<std::string> args = {ADORE_WORKER_BIN, absl::StrCat("--port=", port), "--secret_file=" + secret_file_,
                                     absl::StrCat("--debug_step_delay_ms=", kStepDelayMs)};
    if (!coordinator.empty()) args.push_back("--coordinator=" + coordinator);
    if (rank >= 0) args.push_back(absl::StrCat("--rank=", rank));
    auto w = Child::Start(name, args, dir_);
    EXPECT_TRUE(w.ok()) << w.status();
    if (!w.ok()) return "";
    workers_.push_back(*std::move(w));
    absl::StatusOr<std::string> addr = workers_.back()->WaitForWordAfter("serving adore.v1.Worker on ", absl::Seconds(30));
    EXPECT_TRUE(addr.ok()) << addr.status();
    return addr.ok() ? *addr : "";
  }

  // Starts adore-server as `name` over `workers` (listed) or waiting for `expect` registrations on `port`.
  Child* StartServer(const std::string& name, int port, const std::vector<std::string>& workers, int expect,
                     const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {ADORE_SERVER_BIN, "--model=" + TinyModel(), absl::StrCat("--port=", port),
                                     "--http_port=0", "--kv_rows=4096", "--max_batch=8", "--controller=",
                                     "--worker_secret_file=" + secret_file_};
    args.insert(args.end(), extra.begin(), extra.end());
    if (!workers.empty()) args.push_back("--workers=" + absl::StrJoin(workers, ","));
    if (expect > 0) {
      args.push_back(absl::StrCat("--expect_workers=", expect));
      args.push_back("--expect_workers_timeout_s=60");
    }
    auto s = Child::Start(name, args, dir_);
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return nullptr;
    servers_.push_back(*std::move(s));
    return servers_.back().get();
  }

  // Waits until `server` serves; sets address_ and http_port_.
  void WaitServing(Child& server) {
    absl::StatusOr<std::string> addr =
        server.WaitForWordAfter("serving adore.v1.Adore and grpc.health.v1 on ", absl::Seconds(60));
    ASSERT_TRUE(addr.ok()) << addr.status() << Logs();
    address_ = *addr;
    absl::StatusOr<std::string> http = server.WaitForWordAfter("/metrics) on http://", absl::Seconds(10));
    ASSERT_TRUE(http.ok()) << http.status();
    const size_t colon = http->rfind(':');
    ASSERT_NE(colon, std::string::npos) << *http;
    ASSERT_TRUE(absl::SimpleAtoi(http->substr(colon + 1), &http_port_)) << *http;
  }

  // Waits until `server` serves and is ready, then sends the probe request: its tokens, to compare with
  // what the same request gives after the recovery.
  void ServeAndProbe(Child& server, testing::StreamResult* before, int* started, int* accounted) {
    ASSERT_NO_FATAL_FAILURE(WaitServing(server));
    Readiness ready;
    double took_s = 0;
    ASSERT_TRUE(WaitForReadiness(address_, http_port_, /*serving=*/true, absl::Seconds(5), &ready, &took_s))
        << ready.ToString();
    *before = Generate(address_, Probe(), started, accounted);
    ASSERT_TRUE(before->status.ok()) << before->status.error_message();
    ASSERT_FALSE(before->tokens.empty());
  }
  static v1::GenerateRequest Probe() { return Request("hello world", 12); }
  // 4 streams long enough (150 tokens at 20 ms a step: about 3 s) to be running when the fault comes.
  void StartLongStreams(Streams* streams) {
    streams->Start(address_, 4, Request("The quick brown fox", 150));
    ASSERT_TRUE(streams->WaitForTokens(3, absl::Seconds(20))) << "the streams did not start";
  }

  // The coordinator's port, from an address "host:port".
  static int PortOf(const std::string& address) {
    int port = 0;
    EXPECT_TRUE(absl::SimpleAtoi(address.substr(address.rfind(':') + 1), &port)) << address;
    return port;
  }

  // The worker-kill scenario: `tp` workers, listed or registered; rank `kill_rank` is killed with SIGKILL
  // while streams run, then restarted on its port (listed) or at a new port re-registering (registered).
  // `pipelined`: the coordinator sends step n + 1 before step n's answer (--pipeline_steps).
  void KillWorkerDuringStreams(int tp, Discovery discovery, int kill_rank, bool pipelined = false);

  std::string dir_, secret_file_;
  std::vector<std::unique_ptr<Child>> servers_, workers_;
  std::string address_;
  int http_port_ = -1;
};

void FaultTest::KillWorkerDuringStreams(int tp, Discovery discovery, int kill_rank, bool pipelined) {
  const std::vector<std::string> server_flags =
      std::vector<std::string>{pipelined ? "--pipeline_steps=true" : "--pipeline_steps=false"};
  const auto t_test = std::chrono::steady_clock::now();
  std::vector<std::string> addresses(tp);
  std::vector<Child*> by_rank(tp);
  Child* server = nullptr;
  std::string coordinator;
  if (discovery == Discovery::kListed) {
    for (int r = 0; r < tp; ++r) {
      addresses[r] = StartWorker(absl::StrCat("worker", r), 0);
      ASSERT_FALSE(addresses[r].empty());
      by_rank[r] = workers_.back().get();
    }
    server = StartServer("server", 0, addresses, 0, server_flags);
  } else {
    server = StartServer("server", 0, {}, tp, server_flags);
    ASSERT_NE(server, nullptr);
    absl::StatusOr<std::string> c = server->WaitForWordAfter("waiting for workers to register on ", absl::Seconds(30));
    ASSERT_TRUE(c.ok()) << c.status();
    coordinator = *c;
    for (int r = 0; r < tp; ++r) {
      addresses[r] = StartWorker(absl::StrCat("worker", r), 0, coordinator, r);
      ASSERT_FALSE(addresses[r].empty());
      by_rank[r] = workers_.back().get();
    }
  }
  ASSERT_NE(server, nullptr);
  int started = 0, accounted = 0;
  testing::StreamResult before;
  ASSERT_NO_FATAL_FAILURE(ServeAndProbe(*server, &before, &started, &accounted));
  const v1::GenerateRequest probe = Probe();
  Readiness ready;
  double took_s = 0;
  Streams streams;
  ASSERT_NO_FATAL_FAILURE(StartLongStreams(&streams));
  const auto t_kill = std::chrono::steady_clock::now();
  ASSERT_NO_FATAL_FAILURE(KillHard(*by_rank[kill_rank]));
  streams.Join();
  for (const auto& s : streams.all()) {
    EXPECT_EQ(s->status.error_code(), grpc::StatusCode::UNAVAILABLE) << s->status.error_message();
    EXPECT_FALSE(s->done);
    EXPECT_LT(s->tokens, 150);
    const double end_s = std::chrono::duration<double>(s->ended - t_kill).count();
    EXPECT_LT(end_s, kEndWithinS) << "a stream ended " << end_s << " s after the kill";
  }
  double slowest_end_s = 0;
  for (const auto& s : streams.all()) {
    slowest_end_s = std::max(slowest_end_s, std::chrono::duration<double>(s->ended - t_kill).count());
  }
  // Not ready within the same bound, and still running.
  ASSERT_TRUE(WaitForReadiness(address_, http_port_, /*serving=*/false, absl::Seconds(kEndWithinS), &ready, &took_s))
      << ready.ToString();
  const double not_ready_s = SecondsSince(t_kill);
  EXPECT_TRUE(server->Running());
  EXPECT_EQ(GrpcHealth(address_, "liveness"), kServing) << "alive, only not ready";
  // A request meanwhile fails fast with UNAVAILABLE.
  {
    const auto t0 = std::chrono::steady_clock::now();
    const testing::StreamResult r = Generate(address_, probe, &started, &accounted);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
    EXPECT_LT(SecondsSince(t0), kEndWithinS);
  }
  // The worker comes back: on its port, or at a new one registering with the coordinator.
  const auto t_restart = std::chrono::steady_clock::now();
  const std::string restarted =
      discovery == Discovery::kListed
          ? StartWorker(absl::StrCat("worker", kill_rank, "-restarted"), PortOf(addresses[kill_rank]))
          : StartWorker(absl::StrCat("worker", kill_rank, "-restarted"), 0, coordinator, kill_rank);
  ASSERT_FALSE(restarted.empty());
  if (discovery == Discovery::kListed) EXPECT_EQ(restarted, addresses[kill_rank]);
  ASSERT_TRUE(WaitForReadiness(address_, http_port_, /*serving=*/true, kRecoverWithin, &ready, &took_s))
      << ready.ToString();
  const double serving_again_s = SecondsSince(t_restart);
  const testing::StreamResult after = Generate(address_, probe, &started, &accounted);
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.tokens, before.tokens) << "the group formed again generates what the first one did";
  EXPECT_TRUE(server->Running());
  const std::string server_log = server->Logs();
  EXPECT_NE(server_log.find("forming the group of"), std::string::npos) << server_log;
  if (discovery == Discovery::kRegistered) {
    EXPECT_NE(server_log.find(absl::StrCat("replaces rank ", kill_rank)), std::string::npos) << server_log;
  }

  // No stream was lost: each ended with its final message or an error.
  started += streams.started();
  accounted += streams.completed() + streams.failed();
  EXPECT_EQ(accounted, started);
  std::printf("TP=%d %s, rank %d killed: streams ended within %.2f s, not ready after %.2f s, serving %.2f s "
              "after the restart; %d streams, all accounted for; test %.1f s\n",
              tp, discovery == Discovery::kListed ? "listed" : "registered", kill_rank, slowest_end_s, not_ready_s,
              serving_again_s, started, SecondsSince(t_test));
}

// A worker that hangs (SIGSTOP: alive, its port open, answering nothing) while streams run: with
// --step_timeout_s 2 every stream ends with UNAVAILABLE within the step timeout plus kEndWithinS, the
// coordinator reports not ready, and once the worker runs again (SIGCONT) it is loaded again and serves.
TEST_F(FaultTest, HungWorkerEndsStreamsAfterTheStepTimeoutAndServesWhenItResumes) {
  constexpr int kStepTimeoutS = 2;
  const std::string worker_address = StartWorker("worker0", 0);
  ASSERT_FALSE(worker_address.empty());
  Child* worker = workers_.back().get();
  Child* server = StartServer("server", 0, {worker_address}, 0, {absl::StrCat("--step_timeout_s=", kStepTimeoutS)});
  ASSERT_NE(server, nullptr);
  int started = 0, accounted = 0;
  testing::StreamResult before;
  Streams streams;
  ASSERT_NO_FATAL_FAILURE(ServeAndProbe(*server, &before, &started, &accounted));
  ASSERT_NO_FATAL_FAILURE(StartLongStreams(&streams));
  const auto t_stop = std::chrono::steady_clock::now();
  ASSERT_EQ(::kill(worker->pid(), SIGSTOP), 0);
  streams.Join();
  double slowest_end_s = 0;
  for (const auto& s : streams.all()) {
    EXPECT_EQ(s->status.error_code(), grpc::StatusCode::UNAVAILABLE) << s->status.error_message();
    EXPECT_FALSE(s->done);
    const double end_s = std::chrono::duration<double>(s->ended - t_stop).count();
    slowest_end_s = std::max(slowest_end_s, end_s);
    EXPECT_LT(end_s, kStepTimeoutS + kEndWithinS) << "a stream ended " << end_s << " s after the worker hung";
  }
  // Not ready once the readiness monitor's health call to the hung worker has timed out too (2 s).
  Readiness ready;
  double took_s = 0;
  ASSERT_TRUE(WaitForReadiness(address_, http_port_, /*serving=*/false, absl::Seconds(kEndWithinS + 4), &ready,
                               &took_s))
      << ready.ToString();
  const double not_ready_s = SecondsSince(t_stop);
  EXPECT_TRUE(server->Running());

  const auto t_cont = std::chrono::steady_clock::now();
  ASSERT_EQ(::kill(worker->pid(), SIGCONT), 0);
  ASSERT_TRUE(WaitForReadiness(address_, http_port_, /*serving=*/true, kRecoverWithin, &ready, &took_s))
      << ready.ToString();
  const double serving_again_s = SecondsSince(t_cont);
  const testing::StreamResult after = Generate(address_, Probe(), &started, &accounted);
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.tokens, before.tokens);
  started += streams.started();
  accounted += streams.completed() + streams.failed();
  EXPECT_EQ(accounted, started);
  std::printf("worker hung (SIGSTOP), step timeout %d s: streams ended within %.2f s, not ready after %.2f s; "
              "serving %.2f s after SIGCONT\n",
              kStepTimeoutS, slowest_end_s, not_ready_s, serving_again_s);
}

TEST_F(FaultTest, Tp1KilledWorkerEndsStreamsAndIsLoadedAgainOnItsPort) {
  KillWorkerDuringStreams(1, Discovery::kListed, 0);
}

TEST_F(FaultTest, Tp1KilledWorkerReRegistersAtANewPort) {
  KillWorkerDuringStreams(1, Discovery::kRegistered, 0);
}

TEST_F(FaultTest, Tp2KilledRank0EndsStreamsAndTheGroupIsFormedAgainOnItsPort) {
  KillWorkerDuringStreams(2, Discovery::kListed, 0);
}

TEST_F(FaultTest, Tp2KilledRank1ReRegistersAndTheGroupIsFormedAgain) {
  KillWorkerDuringStreams(2, Discovery::kRegistered, 1);
}

// The same with pipelined steps: the step in the air behind the failed one fails too, and the group is
// formed again before the next.
TEST_F(FaultTest, Tp2KilledRank1WithPipelinedStepsEndsStreamsAndTheGroupIsFormedAgain) {
  KillWorkerDuringStreams(2, Discovery::kListed, 1, /*pipelined=*/true);
}

// The coordinator dies (SIGKILL) while streams run; a new one on the same port waits for its workers, which
// re-register on their own (registration renewal) and are taken over: the TP=2 group is formed again
// (a newer epoch) and a request succeeds.
TEST_F(FaultTest, RestartedCoordinatorGetsItsRegisteredWorkersBack) {
  const auto t_test = std::chrono::steady_clock::now();
  Child* first = StartServer("server", 0, {}, 2);
  ASSERT_NE(first, nullptr);
  absl::StatusOr<std::string> coordinator =
      first->WaitForWordAfter("waiting for workers to register on ", absl::Seconds(30));
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  for (int r = 0; r < 2; ++r) ASSERT_FALSE(StartWorker(absl::StrCat("worker", r), 0, *coordinator, r).empty());
  ASSERT_NO_FATAL_FAILURE(WaitServing(*first));
  int started = 0, accounted = 0;
  const v1::GenerateRequest probe = Request("hello world", 12);
  const testing::StreamResult before = Generate(address_, probe, &started, &accounted);
  ASSERT_TRUE(before.status.ok()) << before.status.error_message();

  Streams streams;
  streams.Start(address_, 3, Request("The quick brown fox", 150));
  ASSERT_TRUE(streams.WaitForTokens(3, absl::Seconds(20))) << "the streams did not start";
  const auto t_kill = std::chrono::steady_clock::now();
  ASSERT_NO_FATAL_FAILURE(KillHard(*first));
  streams.Join();
  for (const auto& s : streams.all()) {
    // The connection went with the process: the client sees UNAVAILABLE.
    EXPECT_EQ(s->status.error_code(), grpc::StatusCode::UNAVAILABLE) << s->status.error_message();
    EXPECT_FALSE(s->done);
    EXPECT_LT(std::chrono::duration<double>(s->ended - t_kill).count(), kEndWithinS);
  }

  // A new coordinator on the same port, waiting for two workers that nobody restarts.
  Child* second = StartServer("server-restarted", PortOf(*coordinator), {}, 2);
  ASSERT_NE(second, nullptr);
  ASSERT_NO_FATAL_FAILURE(WaitServing(*second));
  EXPECT_EQ(PortOf(address_), PortOf(*coordinator));
  Readiness ready;
  double took_s = 0;
  ASSERT_TRUE(WaitForReadiness(address_, http_port_, /*serving=*/true, absl::Seconds(5), &ready, &took_s))
      << ready.ToString();
  const testing::StreamResult after = Generate(address_, probe, &started, &accounted);
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.tokens, before.tokens);
  const double recovered_s = SecondsSince(t_kill);
  EXPECT_LT(recovered_s, absl::ToDoubleSeconds(kRecoverWithin));
  const std::string log = second->Logs();
  EXPECT_NE(log.find("worker 2/2 registered"), std::string::npos) << log;
  EXPECT_NE(log.find("taking it over from an earlier coordinator"), std::string::npos) << log;
  for (const auto& w : workers_) {
    EXPECT_TRUE(w->Running());
    EXPECT_NE(w->Logs().find("registered again with"), std::string::npos) << w->Logs();
  }
  started += streams.started();
  accounted += streams.completed() + streams.failed();
  EXPECT_EQ(accounted, started);
  std::printf("coordinator killed: streams ended, a new coordinator served a request %.2f s after the kill; %d "
              "streams, all accounted for; test %.1f s\n",
              recovered_s, started, SecondsSince(t_test));
}

}  // namespace
}  // namespace adore
