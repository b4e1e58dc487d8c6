// Worker registration (coordinator/grpc/registry.h, proto/adore/v1/coordinator.proto): the registry's rank
// assignment (a requested rank when free, else the lowest free one), refusals (a held rank, a full group,
// malformed requests, another backend), idempotent retries and quiet renewals, a new address taking over the
// rank of a worker that does not answer, the wait for the whole group and its timeout;
// the Coordinator service's shared-secret check over gRPC; and an EmbeddedServer with expect_workers
// serving registrations (not ready meanwhile), then generating through the registered worker.
// The multi-process path (adore-server --expect_workers 2 and two adore-worker --coordinator processes,
// Gloo TP=2) is in tests/server/multiprocess_test.cc.
#include <grpcpp/grpcpp.h>
#include <grpcpp/generic/generic_stub.h>

#include <chrono>
#include <condition_variable>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "adore/v1/adore.grpc.pb.h"
#include "adore/v1/coordinator.grpc.pb.h"
#include "common/model_weights.h"
#include "coordinator/grpc/registry.h"
#include "coordinator/grpc/server.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"
#include "tests/test_util.h"
#include "worker/cpu_engine.h"
#include "worker/grpc/worker_service.h"

namespace adore {
namespace {

constexpr char kSecret[] = "registration-secret-41c9";

v1::RegisterWorkerRequest Req(const std::string& address, int rank = -1, v1::Backend backend = v1::BACKEND_CPU) {
  v1::RegisterWorkerRequest r;
  r.set_address(address);
  if (rank != -1) r.set_rank(rank);  // unset: any
  r.set_backend(backend);
  r.set_hostname("test-host");
  return r;
}

struct Logged {
  std::mutex mu;
  std::vector<std::string> lines;  // guarded by mu once the sink runs on a server thread
  std::function<void(const std::string&)> Sink() {
    return [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(mu);
      lines.push_back(line);
    };
  }
  std::vector<std::string> Lines() {  // a copy, taken under the lock
    std::lock_guard<std::mutex> lock(mu);
    return lines;
  }
};

TEST(PeerHostTest, ParsesGrpcPeerStrings) {
  EXPECT_EQ(PeerHost("ipv4:10.0.0.7:41234"), "10.0.0.7");
  EXPECT_EQ(PeerHost("ipv4:127.0.0.1:1"), "127.0.0.1");
  EXPECT_EQ(PeerHost("ipv6:[::1]:41234"), "[::1]");
  EXPECT_EQ(PeerHost("ipv6:%5B::1%5D:41234"), "[::1]");
  EXPECT_EQ(PeerHost("ipv6:%5Bfe80::1%5D:5"), "[fe80::1]");
  EXPECT_EQ(PeerHost("unix:/tmp/socket"), "");
  EXPECT_EQ(PeerHost(""), "");
  EXPECT_EQ(PeerHost("ipv4:nonsense"), "");
}

TEST(SplitHostPortTest, AcceptsHostPortAndRejectsTheRest) {
  std::string host;
  int port = 0;
  ASSERT_TRUE(SplitHostPort("a.b:50061", "address", &host, &port).ok());
  EXPECT_EQ(host, "a.b");
  EXPECT_EQ(port, 50061);
  ASSERT_TRUE(SplitHostPort(":7", "address", &host, &port).ok());
  EXPECT_EQ(host, "");
  EXPECT_EQ(port, 7);
  ASSERT_TRUE(SplitHostPort("[::1]:9", "address", &host, &port).ok());
  EXPECT_EQ(host, "[::1]");
  for (const char* bad : {"", "host", "host:", "host:0", "host:65536", "host:x", "::1:9"}) {
    const absl::Status st = SplitHostPort(bad, "address", &host, &port);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(absl::StartsWith(st.message(), "address: ")) << st;
  }
}

TEST(WorkerRegistryTest, AssignsTheRequestedRankWhenFreeElseTheLowestFree) {
  Logged log;
  WorkerRegistry reg({.world_size = 3, .backend = v1::BACKEND_CPU, .log = log.Sink()});
  auto a = reg.Register(Req("a:1", 2), "10.0.0.1");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->rank(), 2);
  EXPECT_EQ(a->world_size(), 3);
  EXPECT_EQ(a->registered(), 1);
  EXPECT_EQ(a->address(), "a:1");
  EXPECT_EQ(a->message(), "worker 1/3 registered: a:1 (rank 2)");
  auto b = reg.Register(Req("b:1"), "10.0.0.2");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->rank(), 0);
  auto c = reg.Register(Req("c:1"), "10.0.0.3");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rank(), 1);
  EXPECT_EQ(c->registered(), 3);
  auto all = reg.WaitForAll(absl::Seconds(1));
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(*all, (std::vector<std::string>{"b:1", "c:1", "a:1"}));
  ASSERT_EQ(log.lines.size(), 3u);
  EXPECT_TRUE(absl::StartsWith(log.lines[0], "worker 1/3 registered: a:1 (rank 2)")) << log.lines[0];
  EXPECT_TRUE(absl::StartsWith(log.lines[2], "worker 3/3 registered: c:1 (rank 1)")) << log.lines[2];
  EXPECT_NE(log.lines[0].find("host test-host"), std::string::npos) << log.lines[0];
}

TEST(WorkerRegistryTest, RefusesARankThatIsHeld) {
  Logged log;
  WorkerRegistry reg({.world_size = 2, .log = log.Sink()});
  ASSERT_TRUE(reg.Register(Req("a:1", 0), "").ok());
  auto b = reg.Register(Req("b:1", 0), "");
  EXPECT_EQ(b.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(b.status().message(), "rank: 0 is held by a:1; b:1 is not registered");
  EXPECT_EQ(reg.registered(), 1);
  ASSERT_EQ(log.lines.size(), 2u);
  EXPECT_TRUE(absl::StartsWith(log.lines[1], "refused a registration: rank: 0 is held by a:1")) << log.lines[1];
  // The other rank is still free.
  auto c = reg.Register(Req("b:1", 1), "");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rank(), 1);
}

TEST(WorkerRegistryTest, RepeatedRegistrationOfOneAddressKeepsItsRank) {
  WorkerRegistry reg({.world_size = 2, .log = [](const std::string&) {}});
  auto first = reg.Register(Req("a:1"), "");
  ASSERT_TRUE(first.ok());
  auto again = reg.Register(Req("a:1"), "");  // a retry after a lost reply
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->rank(), first->rank());
  EXPECT_EQ(again->registered(), 1);
  EXPECT_NE(again->message().find("registered already as rank 0"), std::string::npos) << again->message();
  v1::RegisterWorkerRequest explicit_any = Req("a:1");
  explicit_any.set_rank(-1);  // the same as unset
  auto any = reg.Register(explicit_any, "");
  ASSERT_TRUE(any.ok()) << any.status();
  EXPECT_EQ(any->rank(), 0);
  auto same_rank = reg.Register(Req("a:1", 0), "");
  EXPECT_TRUE(same_rank.ok()) << same_rank.status();
  auto other_rank = reg.Register(Req("a:1", 1), "");
  EXPECT_EQ(other_rank.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(reg.registered(), 1);
}

TEST(WorkerRegistryTest, RefusesRegistrationsBeyondTheGroup) {
  Logged log;
  WorkerRegistry reg({.world_size = 2, .log = log.Sink()});
  ASSERT_TRUE(reg.Register(Req("a:1"), "").ok());
  ASSERT_TRUE(reg.Register(Req("b:1"), "").ok());
  for (int rank : {-1, 0, 1}) {
    auto c = reg.Register(Req("c:1", rank), "");
    EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted) << rank;
    EXPECT_TRUE(absl::StartsWith(c.status().message(),
                                 "all 2 workers are registered already (rank 0: a:1, rank 1: b:1): c:1 is not taken"))
        << c.status();
  }
  EXPECT_EQ(reg.registered(), 2);
  // A registered worker retrying is still answered.
  auto a = reg.Register(Req("a:1"), "");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->rank(), 0);
}

// A worker restarted at a new address (adore-worker --port 0 --coordinator) gets back the rank of the one
// that no longer answers; a rank whose worker answers is not given away.
TEST(WorkerRegistryTest, ACompleteGroupGivesANewAddressTheRankOfAWorkerThatDoesNotAnswer) {
  Logged log;
  std::vector<std::pair<int, std::string>> probed, replaced;
  WorkerRegistryOptions o{.world_size = 2, .log = log.Sink()};
  o.is_alive = [&](int rank, const std::string& address) {
    probed.emplace_back(rank, address);
    return address != "b:1";  // rank 1's worker is gone
  };
  o.on_replaced = [&](int rank, const std::string& address) { replaced.emplace_back(rank, address); };
  WorkerRegistry reg(std::move(o));
  ASSERT_TRUE(reg.Register(Req("a:1"), "").ok());
  ASSERT_TRUE(reg.Register(Req("b:1"), "").ok());
  EXPECT_TRUE(probed.empty()) << "nobody is probed while ranks are free";
  // Asking for rank 0, whose worker answers: refused, and nothing changes.
  auto taken = reg.Register(Req("c:1", 0), "");
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kResourceExhausted) << taken.status();
  EXPECT_NE(taken.status().message().find("every registered worker of rank 0 answers"), std::string::npos)
      << taken.status();
  EXPECT_TRUE(replaced.empty());
  // Any rank: rank 1's worker does not answer, so c:1 takes rank 1.
  auto c = reg.Register(Req("c:1"), "");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rank(), 1);
  EXPECT_EQ(c->registered(), 2);
  EXPECT_FALSE(c->known());
  EXPECT_EQ(c->message(), "worker c:1 replaces rank 1's, which does not answer (2/2 registered)");
  ASSERT_EQ(replaced.size(), 1u);
  EXPECT_EQ(replaced[0], std::make_pair(1, std::string("c:1")));
  auto all = reg.WaitForAll(absl::Seconds(1));
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(*all, (std::vector<std::string>{"a:1", "c:1"}));
  // c:1 is registered now: its repeats are answered without a probe.
  probed.clear();
  auto again = reg.Register(Req("c:1"), "");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->rank(), 1);
  EXPECT_TRUE(again->known());
  EXPECT_TRUE(probed.empty());
  // Every worker answers: a newcomer is refused.
  auto d = reg.Register(Req("d:1"), "");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kResourceExhausted) << d.status();
}

// A registered worker renews its registration every second or so: answered as a repeat, without a log line;
// a renewal reaching a coordinator that does not know it (restarted) is a new registration.
TEST(WorkerRegistryTest, RenewalsOfAHeldRegistrationAreAnsweredQuietly) {
  Logged log;
  WorkerRegistry reg({.world_size = 2, .log = log.Sink()});
  v1::RegisterWorkerRequest renewal = Req("a:1", 1);
  renewal.set_renewal(true);
  auto first = reg.Register(renewal, "");  // e.g. the coordinator was restarted since a:1 registered
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->known());
  EXPECT_EQ(first->rank(), 1);
  ASSERT_EQ(log.lines.size(), 1u);
  for (int i = 0; i < 3; ++i) {
    auto r = reg.Register(renewal, "");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->known());
    EXPECT_EQ(r->rank(), 1);
  }
  EXPECT_EQ(log.lines.size(), 1u) << "renewals are not logged";
  ASSERT_TRUE(reg.Register(Req("a:1", 1), "").ok());  // a plain repeat (a retry) is
  EXPECT_EQ(log.lines.size(), 2u);
}

TEST(WorkerRegistryTest, RefusesMalformedRequestsNamingTheField) {
  WorkerRegistry reg({.world_size = 2, .backend = v1::BACKEND_CPU, .log = [](const std::string&) {}});
  struct Bad {
    v1::RegisterWorkerRequest req;
    absl::StatusCode code;
    std::string field;
  };
  const std::vector<Bad> cases = {
      {Req(""), absl::StatusCode::kInvalidArgument, "address: "},
      {Req("host"), absl::StatusCode::kInvalidArgument, "address: "},
      {Req("host:0"), absl::StatusCode::kInvalidArgument, "address: "},
      {Req("0.0.0.0:50061"), absl::StatusCode::kInvalidArgument, "address: "},
      {Req("[::]:50061"), absl::StatusCode::kInvalidArgument, "address: "},
      {Req("a:1", -2), absl::StatusCode::kInvalidArgument, "rank: "},
      {Req("a:1", 2), absl::StatusCode::kInvalidArgument, "rank: "},
      {Req("a:1", -1, v1::BACKEND_UNSPECIFIED), absl::StatusCode::kInvalidArgument, "backend: "},
      {Req("a:1", -1, static_cast<v1::Backend>(7)), absl::StatusCode::kInvalidArgument, "backend: "},
      {Req("a:1", -1, v1::BACKEND_CUDA), absl::StatusCode::kFailedPrecondition, "backend: "},
  };
  for (const Bad& b : cases) {
    auto r = reg.Register(b.req, "10.0.0.1");
    EXPECT_EQ(r.status().code(), b.code) << b.req.ShortDebugString() << ": " << r.status();
    EXPECT_TRUE(absl::StartsWith(r.status().message(), b.field)) << r.status();
  }
  EXPECT_EQ(reg.registered(), 0);
}

TEST(WorkerRegistryTest, AnEmptyHostIsTheCallersAddress) {
  WorkerRegistry reg({.world_size = 2, .log = [](const std::string&) {}});
  auto r = reg.Register(Req(":50061"), "10.1.2.3");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->address(), "10.1.2.3:50061");
  auto unknown = reg.Register(Req(":50062"), "");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(unknown.status().message(), "address: ")) << unknown.status();
  auto all = reg.WaitForAll(absl::Milliseconds(1));
  EXPECT_EQ(all.status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(WorkerRegistryTest, WaitForAllTimesOutNamingTheMissingRanks) {
  WorkerRegistry reg({.world_size = 2, .log = [](const std::string&) {}});
  ASSERT_TRUE(reg.Register(Req("a:1"), "").ok());
  const auto t0 = std::chrono::steady_clock::now();
  auto all = reg.WaitForAll(absl::Milliseconds(300));
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(all.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(all.status().message().find("1 of 2 workers registered"), std::string::npos) << all.status();
  EXPECT_NE(all.status().message().find("rank 0: a:1, rank 1: (missing)"), std::string::npos) << all.status();
  EXPECT_GE(waited, 0.29);
  EXPECT_LT(waited, 5.0);
}

TEST(WorkerRegistryTest, WaitForAllReturnsWhenTheLastRegistersAndCloseEndsIt) {
  WorkerRegistry reg({.world_size = 2, .log = [](const std::string&) {}});
  auto waiting = std::async(std::launch::async, [&] { return reg.WaitForAll(absl::Seconds(30)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(reg.Register(Req("a:1", 1), "").ok());
  EXPECT_EQ(waiting.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
  ASSERT_TRUE(reg.Register(Req("b:1"), "").ok());
  ASSERT_EQ(waiting.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  auto all = waiting.get();
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(*all, (std::vector<std::string>{"b:1", "a:1"}));

  WorkerRegistry closing({.world_size = 2, .log = [](const std::string&) {}});
  auto cancelled = std::async(std::launch::async, [&] { return closing.WaitForAll(absl::Seconds(30)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  closing.Close();
  ASSERT_EQ(cancelled.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(cancelled.get().status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(closing.Register(Req("a:1"), "").status().code(), absl::StatusCode::kUnavailable);
}

// The service over a real gRPC server on loopback.
class CoordinatorServiceTest : public ::testing::Test {
 protected:
  void Start(const std::string& secret) {
    registry_ = std::make_unique<WorkerRegistry>(
        WorkerRegistryOptions{.world_size = 2, .log = log_.Sink()});
    service_ = std::make_unique<CoordinatorService>(*registry_, secret);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = v1::Coordinator::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
  }
  grpc::Status Register(const v1::RegisterWorkerRequest& req, const char* secret, v1::RegisterWorkerResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (secret != nullptr) ctx.AddMetadata(kRegistrationSecretKey, secret);
    return stub_->RegisterWorker(&ctx, req, resp);
  }

  Logged log_;
  std::unique_ptr<WorkerRegistry> registry_;
  std::unique_ptr<CoordinatorService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Coordinator::Stub> stub_;
  int port_ = 0;
};

TEST_F(CoordinatorServiceTest, TheSecretIsTheWorkersOne) {
  EXPECT_STREQ(kRegistrationSecretKey, kWorkerSecretKey);
}

TEST_F(CoordinatorServiceTest, RefusesAMissingOrWrongSecretBeforeLookingAtTheRequest) {
  ASSERT_NO_FATAL_FAILURE(Start(kSecret));
  v1::RegisterWorkerResponse resp;
  grpc::Status st = Register(Req("a:1"), nullptr, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(st.error_message(), "adore-worker-secret: missing");
  st = Register(Req("a:1"), "not-the-secret", &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(st.error_message(), "adore-worker-secret: wrong secret");
  st = Register(Req("not an address"), "not-the-secret", &resp);  // the secret first
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  st = Register(Req("a:1"), "", &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(registry_->registered(), 0);
  // Under the lock: the server's handler threads append to it (ThreadSanitizer found the unlocked read).
  const std::vector<std::string> lines = log_.Lines();
  ASSERT_GE(lines.size(), 2u);
  EXPECT_TRUE(absl::StartsWith(lines[0], "refused a registration from ipv4:127.0.0.1:")) << lines[0];

  // With the secret: registered; an empty host is this call's address.
  st = Register(Req(":50061"), kSecret, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.rank(), 0);
  EXPECT_EQ(resp.world_size(), 2);
  EXPECT_EQ(resp.address(), "127.0.0.1:50061");
  // The registry's refusals come back with their codes.
  st = Register(Req("b:1", 0), kSecret, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(st.error_message(), "rank: 0 is held by 127.0.0.1:50061; b:1 is not registered");
  st = Register(Req("b:1", 5), kSecret, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(CoordinatorServiceTest, WithoutASecretAnyRegistrationIsTaken) {
  ASSERT_NO_FATAL_FAILURE(Start(""));
  v1::RegisterWorkerResponse resp;
  grpc::Status st = Register(Req("a:1"), nullptr, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  st = Register(Req("b:1"), "anything", &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.rank(), 1);
  EXPECT_EQ(resp.registered(), 2);
}

TEST(EmbeddedServerRegistrationTest, RefusesAListAndExpectedWorkersTogether) {
  ServerOptions o;
  o.model = testing::ModelPath();
  o.port = 0;
  o.workers = {"127.0.0.1:1"};
  o.expect_workers = 1;
  auto s = EmbeddedServer::Start(o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(s.status().message(), "expect_workers: ")) << s.status();
  o.workers.clear();
  o.expect_workers = -1;
  EXPECT_EQ(EmbeddedServer::Start(o).status().code(), absl::StatusCode::kInvalidArgument);
}

// Registers `address` with the coordinator at `coordinator` the way adore-worker does.
grpc::Status RegisterAt(const std::string& coordinator, const std::string& address, v1::RegisterWorkerResponse* resp) {
  auto stub = v1::Coordinator::NewStub(grpc::CreateChannel(coordinator, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  ctx.AddMetadata(kRegistrationSecretKey, kSecret);
  return stub->RegisterWorker(&ctx, Req(address), resp);
}

using testing::kNotServing;
using testing::kServing;
int Health(const std::string& address, const std::string& service) {
  grpc::Status st;
  const int status = testing::GrpcHealthCheck(address, service, 10, &st);
  EXPECT_TRUE(st.ok()) << service << ": " << st.error_message();
  return status;
}

TEST(EmbeddedServerRegistrationTest, WaitsForTheWorkerNotReadyMeanwhileThenGeneratesThroughIt) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  WorkerServerOptions wo;
  wo.secret = kSecret;
  auto worker = WorkerServer::Start(wo);
  ASSERT_TRUE(worker.ok()) << worker.status();
  // The worker's own grpc.health.v1 (probes; no secret): up, but no model loaded yet.
  const std::string worker_address = (*worker)->address();
  EXPECT_EQ(Health(worker_address, ""), kServing);
  EXPECT_EQ(Health(worker_address, "liveness"), kServing);
  EXPECT_EQ(Health(worker_address, "adore.v1.Worker"), kNotServing);

  ServerOptions o;
  o.model = testing::ModelPath();
  o.port = 0;
  o.kv_rows = 4096;
  o.max_batch = 4;
  o.controller = "";
  o.expect_workers = 1;
  o.worker_secret = kSecret;
  std::promise<std::string> waiting;
  o.on_waiting_for_workers = [&](const std::string& address) { waiting.set_value(address); };
  auto started = std::async(std::launch::async, [&] { return EmbeddedServer::Start(o); });
  std::future<std::string> waiting_at = waiting.get_future();
  ASSERT_EQ(waiting_at.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  const std::string address = waiting_at.get();

  // Waiting: registration is served, the public API is not ready.
  EXPECT_EQ(Health(address, ""), kNotServing);
  EXPECT_EQ(Health(address, "adore.v1.Adore"), kNotServing);
  EXPECT_EQ(Health(address, "adore.v1.Coordinator"), kServing);
  auto stub = v1::Adore::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    const grpc::Status st = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_EQ(st.error_message(), "the workers are not ready: 0 of 1 registered");
  }
  v1::RegisterWorkerResponse resp;
  grpc::Status st = RegisterAt(address, (*worker)->address(), &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.rank(), 0);
  EXPECT_EQ(resp.world_size(), 1);
  ASSERT_EQ(started.wait_for(std::chrono::seconds(120)), std::future_status::ready);
  auto server = started.get();
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_NE((*server)->registry(), nullptr);
  EXPECT_EQ((*server)->address(), address);

  EXPECT_EQ(Health(address, ""), kServing);
  EXPECT_EQ(Health(address, "adore.v1.Adore"), kServing);
  EXPECT_EQ(Health(worker_address, "adore.v1.Worker"), kServing);  // loaded by the coordinator
  // Generation runs on the registered worker: the engine's own greedy tokens.
  auto weights = LoadModelWeights(testing::ModelPath());
  ASSERT_TRUE(weights.ok());
  auto tok = Tokenizer::Create(weights->tokenizer);
  ASSERT_TRUE(tok.ok());
  auto engine = CpuEngine::Create(*std::move(weights), {.kv_rows = 512});
  ASSERT_TRUE(engine.ok());
  const std::vector<int32_t> expected = testing::ReferenceGreedy(**engine, **tok, "The quick brown fox", 8);
  v1::GenerateRequest req;
  req.set_text("The quick brown fox");
  req.mutable_sampling()->set_max_tokens(8);
  req.mutable_sampling()->set_temperature(0.0f);
  const testing::StreamResult got = testing::ReadGenerate(*stub, req, 60000);
  ASSERT_TRUE(got.status.ok()) << got.status.error_message();
  EXPECT_EQ(got.tokens, expected);

  // The group is complete: another worker is refused, the registered one's retry is answered.
  st = RegisterAt(address, "127.0.0.1:1", &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  st = RegisterAt(address, (*worker)->address(), &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  (*server)->Shutdown();
  (*worker)->Shutdown();
}

TEST(EmbeddedServerRegistrationTest, FailsNamingTheMissingRanksWhenTheyDoNotRegisterInTime) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  ServerOptions o;
  o.model = testing::ModelPath();
  o.port = 0;
  o.controller = "";
  o.expect_workers = 2;
  o.expect_workers_timeout_ms = 1500;
  std::promise<std::string> waiting;
  o.on_waiting_for_workers = [&](const std::string& address) { waiting.set_value(address); };
  auto started = std::async(std::launch::async, [&] { return EmbeddedServer::Start(o); });
  std::future<std::string> waiting_at = waiting.get_future();
  ASSERT_EQ(waiting_at.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  v1::RegisterWorkerResponse resp;
  const grpc::Status st = RegisterAt(waiting_at.get(), "127.0.0.1:1", &resp);  // never dialed
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(started.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  auto server = started.get();
  EXPECT_EQ(server.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(server.status().message().find("rank 0: 127.0.0.1:1, rank 1: (missing)"), std::string::npos)
      << server.status();
}

}  // namespace
}  // namespace adore
