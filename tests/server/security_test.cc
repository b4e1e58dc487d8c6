// adore-server's security options (docs/RELIABILITY.md, "Security"): TLS on gRPC and HTTP with a
// self-signed certificate made here, the bearer token on adore.v1.Adore and on the HTTP API (health stays
// open), the C++ SDK's TLS and token options, and --model_sha256 on the server and on a worker. The
// helpers beneath them (token files, Authorization parsing, SHA-256, PEM checks) are tested first.
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>

#include <httplib.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <string>

#include <google/protobuf/descriptor.h>
#include <grpcpp/generic/generic_stub.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "adore/client/client.h"
#include "adore/v1/adore.grpc.pb.h"
#include "adore/v1/worker.grpc.pb.h"
#include "common/security.h"
#include "common/sha256.h"
#include "coordinator/grpc/server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "worker/grpc/worker_service.h"

namespace adore {
namespace {

namespace fs = std::filesystem;
namespace ac = adore::client;
using json = nlohmann::json;
using ::testing::HasSubstr;

constexpr char kToken[] = "tok-9f2c4e1d7b";

// ---- files ----------------------------------------------------------------------------------------------

// A fresh directory under the system's temporary directory, removed with the object.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "adore-security-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data()) != nullptr ? tmpl : std::string();
    EXPECT_FALSE(path_.empty()) << "mkdtemp failed";
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string File(const std::string& name) const { return (fs::path(path_) / name).string(); }
  std::string Write(const std::string& name, const std::string& data) const {
    std::ofstream(File(name), std::ios::binary) << data;
    return File(name);
  }

 private:
  std::string path_;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A self-signed certificate for localhost and 127.0.0.1 (its own root) and its P-256 key, as PEM files
// <name>.pem and <name>.key in `dir`.
struct CertFiles {
  std::string cert_file, key_file, cert_pem;
};

CertFiles MakeSelfSigned(const TempDir& dir, const std::string& name) {
  static long serial = 1;
  CertFiles out{dir.File(name + ".pem"), dir.File(name + ".key"), ""};
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 24 * 3600);
  X509_set_pubkey(x, key);
  X509_NAME* subject = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(name.c_str()), -1,
                             -1, 0);
  X509_set_issuer_name(x, subject);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, x, x, nullptr, nullptr, 0);
  for (const auto& [nid, value] : {std::pair<int, const char*>{NID_basic_constraints, "critical,CA:TRUE"},
                                   {NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1"}}) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    EXPECT_NE(ext, nullptr) << value;
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
  }
  EXPECT_GT(X509_sign(x, key, EVP_sha256()), 0);
  BIO* cert_bio = BIO_new_file(out.cert_file.c_str(), "w");
  PEM_write_bio_X509(cert_bio, x);
  BIO_free(cert_bio);
  BIO* key_bio = BIO_new_file(out.key_file.c_str(), "w");
  PEM_write_bio_PrivateKey(key_bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  BIO_free(key_bio);
  X509_free(x);
  EVP_PKEY_free(key);
  out.cert_pem = ReadAll(out.cert_file);
  return out;
}

// ---- helpers: token files, Authorization, constant-time comparison ------------------------------------

TEST(SecurityTokenTest, TokenFileLosesTrailingWhitespaceAndMustNotBeEmpty) {
  TempDir dir;
  absl::StatusOr<std::string> t = ReadTokenFile(dir.Write("t", "abc123\n\n  \t"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, "abc123");
  for (const char* empty : {"", "\n", "  \r\n"}) {
    t = ReadTokenFile(dir.Write("e", empty));
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << "'" << empty << "'";
    EXPECT_THAT(t.status().message(), HasSubstr("empty"));
  }
  t = ReadTokenFile(dir.Write("s", "two words\n"));  // no header could carry it as "Bearer <token>"
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  t = ReadTokenFile(dir.File("missing"));
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(t.status().message(), HasSubstr(dir.File("missing")));
}

TEST(SecurityTokenTest, BearerAuthorizationChecksSchemeAndTokenWithoutEchoingThem) {
  EXPECT_TRUE(CheckBearerAuthorization("Bearer secret", "secret").ok());
  EXPECT_TRUE(CheckBearerAuthorization("bearer  secret ", "secret").ok());  // scheme case-insensitive
  struct Case {
    std::optional<std::string_view> value;
    const char* why;
  };
  for (const Case& c : {Case{std::nullopt, "missing"}, Case{"", "not a Bearer"}, Case{"secret", "not a Bearer"},
                        Case{"Basic c2VjcmV0", "not a Bearer"}, Case{"Bearer", "not a Bearer"},
                        Case{"Bearer secreT", "wrong bearer token"}, Case{"Bearer secret2", "wrong bearer token"},
                        Case{"Bearer ", "wrong bearer token"}}) {
    const absl::Status st = CheckBearerAuthorization(c.value, "secret");
    EXPECT_EQ(st.code(), absl::StatusCode::kUnauthenticated) << c.value.value_or("(none)");
    EXPECT_THAT(st.message(), HasSubstr(c.why)) << c.value.value_or("(none)");
    EXPECT_THAT(st.message(), ::testing::Not(HasSubstr("secre"))) << "the message repeats the credential";
  }
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcd"));
  EXPECT_FALSE(ConstantTimeEquals("", "a"));
}

// ---- helpers: SHA-256 -----------------------------------------------------------------------------------

TEST(SecuritySha256Test, KnownDigestsOfFilesAndOfACheckpointDirectory) {
  TempDir dir;
  // FIPS 180-2 test vectors.
  absl::StatusOr<std::string> d = Sha256File(dir.Write("abc", "abc"));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  d = Sha256File(dir.Write("empty", ""));
  EXPECT_EQ(*d, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  // More than one 1 MiB read: 2^20 + 3 bytes of 'a' hash like the same bytes in one string would.
  const std::string big(size_t{1} << 20 | 3, 'a');
  d = Sha256File(dir.Write("big", big));
  ASSERT_TRUE(d.ok());
  TempDir split;
  split.Write("1", big.substr(0, 1000));
  split.Write("2", big.substr(1000));
  EXPECT_EQ(ModelSha256(split.File("")), d);  // a directory: its files in name order, as one stream
  // The directory rule: regular files sorted by name (byte order), subdirectories skipped.
  TempDir ckpt;
  ckpt.Write("b.safetensors", "bc");
  ckpt.Write("A.json", "a");
  fs::create_directory(ckpt.File("sub"));
  ckpt.Write("sub/x", "ignored");
  EXPECT_EQ(ModelSha256(ckpt.File("")), Sha256File(dir.Write("abc2", "abc")));
  EXPECT_EQ(ModelSha256(dir.File("nope")).status().code(), absl::StatusCode::kNotFound);

  absl::StatusOr<std::string> h = ParseSha256Hex(std::string(64, 'A'), "model_sha256");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(*h, std::string(64, 'a'));
  for (const std::string& bad : {std::string(63, 'a'), std::string(65, 'a'), std::string(64, 'g')}) {
    h = ParseSha256Hex(bad, "model_sha256");
    EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(h.status().message(), HasSubstr("model_sha256"));
  }
  const absl::StatusOr<std::string> v = VerifyModelSha256(dir.File("abc"), std::string(64, '0'));
  EXPECT_EQ(v.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(v.status().message(), HasSubstr("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
  EXPECT_THAT(v.status().message(), HasSubstr(std::string(64, '0')));
}

// ---- helpers and options: TLS files ---------------------------------------------------------------------

TEST(SecurityTlsFilesTest, CertificateAndKeyAreReadAndMatched) {
  TempDir dir;
  const CertFiles a = MakeSelfSigned(dir, "a"), b = MakeSelfSigned(dir, "b");
  absl::StatusOr<TlsCertKey> ok = ReadTlsCertKey(a.cert_file, a.key_file);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->cert_pem, a.cert_pem);
  absl::StatusOr<TlsCertKey> r = ReadTlsCertKey(dir.File("none.pem"), a.key_file);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("tls_cert_file: cannot read " + dir.File("none.pem")));
  r = ReadTlsCertKey(a.cert_file, dir.File("none.key"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("tls_key_file: cannot read"));
  r = ReadTlsCertKey(dir.Write("junk.pem", "not a certificate"), a.key_file);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("holds no PEM certificate"));
  r = ReadTlsCertKey(a.cert_file, a.cert_file);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("holds no PEM private key"));
  r = ReadTlsCertKey(a.cert_file, b.key_file);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("does not belong to the certificate"));
}

// The security options fail Start before the model is read (the model path here does not exist).
TEST(SecurityOptionsTest, BadSecurityOptionsFailStartBeforeTheModelLoads) {
  TempDir dir;
  const CertFiles a = MakeSelfSigned(dir, "a");
  ServerOptions o;
  o.model = dir.File("no-model.gguf");
  o.port = 0;
  o.tls_cert_file = a.cert_file;
  auto s = EmbeddedServer::Start(o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("give both"));
  o.tls_key_file = dir.File("missing.key");
  s = EmbeddedServer::Start(o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.status().message(), HasSubstr(dir.File("missing.key")));
  o.tls_key_file = a.key_file;
  o.expect_workers = 1;
  s = EmbeddedServer::Start(o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("expect_workers"));
  o = ServerOptions{};
  o.model = dir.File("no-model.gguf");
  o.model_sha256 = "abc";
  s = EmbeddedServer::Start(o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("model_sha256"));
}

// ---- a server with TLS (gRPC and HTTPS), a bearer token and the HTTP API --------------------------------

class SecureServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!testing::ModelAvailable()) return;
    dir_ = new TempDir();
    cert_ = new CertFiles(MakeSelfSigned(*dir_, "server"));
    other_ = new CertFiles(MakeSelfSigned(*dir_, "other"));
    ServerOptions o;
    o.model = testing::ModelPath();
    o.port = 0;
    o.http_port = 0;
    o.kv_rows = 2048;
    o.max_batch = 4;
    o.tls_cert_file = cert_->cert_file;
    o.tls_key_file = cert_->key_file;
    o.auth_token = kToken;
    auto s = EmbeddedServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = s->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    delete cert_;
    delete other_;
    delete dir_;
    server_ = nullptr;
  }
  void SetUp() override {
    if (server_ == nullptr) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  }
  static std::unique_ptr<v1::Adore::Stub> TlsStub(const std::string& roots) {
    return v1::Adore::NewStub(
        grpc::CreateChannel(server_->address(), grpc::SslCredentials({.pem_root_certs = roots})));
  }
  static std::unique_ptr<httplib::SSLClient> Https() {
    auto c = std::make_unique<httplib::SSLClient>("127.0.0.1", server_->http_port());
    c->set_ca_cert_path(cert_->cert_file.c_str());
    c->enable_server_certificate_verification(true);
    c->set_read_timeout(120, 0);
    return c;
  }

  static TempDir* dir_;
  static CertFiles* cert_;
  static CertFiles* other_;
  static EmbeddedServer* server_;
};
TempDir* SecureServerTest::dir_ = nullptr;
CertFiles* SecureServerTest::cert_ = nullptr;
CertFiles* SecureServerTest::other_ = nullptr;
EmbeddedServer* SecureServerTest::server_ = nullptr;

TEST_F(SecureServerTest, TlsClientWithTheRightRootAndTokenGenerates) {
  ac::Client c(server_->address(), {.timeout = absl::Seconds(120), .tls_root_certs = cert_->cert_pem,
                                    .bearer_token = kToken});
  absl::StatusOr<ac::GenerateResult> r = c.Generate("The capital of France is", {.max_tokens = 4});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->usage.completion_tokens, 4);
  EXPECT_FALSE(r->text.empty());
  EXPECT_TRUE(c.GetModelInfo().ok());
  EXPECT_TRUE(c.GetStats().ok());
  // The same through a channel made by the caller: the token still goes with every call.
  ac::Client over(grpc::CreateChannel(server_->address(), grpc::SslCredentials({.pem_root_certs = cert_->cert_pem})),
                  {.bearer_token = kToken});
  EXPECT_TRUE(over.GetModelInfo().ok());
}

TEST_F(SecureServerTest, PlaintextOrUntrustingClientsCannotConnect) {
  ac::Client plain(server_->address(), {.timeout = absl::Seconds(5), .bearer_token = kToken});
  absl::StatusOr<ac::ModelInfo> info = plain.GetModelInfo();
  EXPECT_EQ(info.status().code(), absl::StatusCode::kUnavailable) << info.status();
  EXPECT_FALSE(plain.Health().ok());
  ac::Client untrusting(server_->address(), {.timeout = absl::Seconds(5), .tls_root_certs = other_->cert_pem,
                                             .bearer_token = kToken});
  info = untrusting.GetModelInfo();
  EXPECT_EQ(info.status().code(), absl::StatusCode::kUnavailable) << info.status();
}

TEST_F(SecureServerTest, EveryAdoreCallNeedsTheBearerToken) {
  auto stub = TlsStub(cert_->cert_pem);
  // No token, a wrong one, another scheme: UNAUTHENTICATED for every RPC, with a message saying why.
  struct Case {
    const char* authorization;  // nullptr: none
    const char* why;
  };
  for (const Case& c : {Case{nullptr, "missing"}, Case{"Bearer wrong-token", "wrong bearer token"},
                        Case{"Basic dXNlcjpwYXNz", "not a Bearer"}}) {
    SCOPED_TRACE(c.authorization == nullptr ? "(none)" : c.authorization);
    auto with = [&](grpc::ClientContext& ctx) {
      if (c.authorization != nullptr) ctx.AddMetadata("authorization", c.authorization);
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    };
    {
      grpc::ClientContext ctx;
      with(ctx);
      v1::ModelInfo info;
      const grpc::Status st = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
      EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();
      EXPECT_THAT(st.error_message(), HasSubstr(c.why));
    }
    {
      grpc::ClientContext ctx;
      with(ctx);
      v1::ServerStats stats;
      EXPECT_EQ(stub->GetStats(&ctx, v1::GetStatsRequest(), &stats).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    }
    {
      grpc::ClientContext ctx;
      with(ctx);
      v1::GenerateRequest req;
      req.set_text("Hello");
      auto reader = stub->Generate(&ctx, req);
      v1::GenerateResponse msg;
      EXPECT_FALSE(reader->Read(&msg));
      const grpc::Status st = reader->Finish();
      EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();
    }
  }
  // The right token: Generate streams to its end.
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", std::string("Bearer ") + kToken);
  v1::GenerateRequest req;
  req.set_text("The capital of France is");
  req.mutable_sampling()->set_max_tokens(3);
  auto reader = stub->Generate(&ctx, req);
  v1::GenerateResponse msg;
  bool done = false;
  while (reader->Read(&msg)) done = done || msg.has_done();
  const grpc::Status st = reader->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(done);
  // The SDK without a token: UNAUTHENTICATED as an absl::Status.
  ac::Client anonymous(server_->address(), {.timeout = absl::Seconds(30), .tls_root_certs = cert_->cert_pem});
  EXPECT_EQ(anonymous.Generate("Hi", {.max_tokens = 1}).status().code(), absl::StatusCode::kUnauthenticated);
}

// Fail-closed guard: every RPC that adore.proto declares on adore.v1.Adore (also one added later) refuses a
// call without the token, called generically from the service's descriptor.
TEST_F(SecureServerTest, EveryRpcOfTheServiceDescriptorRefusesACallWithoutTheToken) {
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName("adore.v1.Adore");
  ASSERT_NE(service, nullptr);
  ASSERT_GE(service->method_count(), 3);
  grpc::GenericStub stub(
      grpc::CreateChannel(server_->address(), grpc::SslCredentials({.pem_root_certs = cert_->cert_pem})));
  for (int i = 0; i < service->method_count(); ++i) {
    const std::string method = absl::StrCat("/", service->full_name(), "/", service->method(i)->name());
    SCOPED_TRACE(method);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    grpc::Slice empty(std::string{});  // an empty message: every field unset
    grpc::ByteBuffer request(&empty, 1), response;
    std::promise<grpc::Status> done;
    stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response,
                   [&done](grpc::Status st) { done.set_value(std::move(st)); });
    const grpc::Status st = done.get_future().get();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();
  }
}

TEST_F(SecureServerTest, HealthNeedsNoToken) {
  ac::Client c(server_->address(), {.timeout = absl::Seconds(30), .tls_root_certs = cert_->cert_pem});
  absl::StatusOr<ac::ServingStatus> h = c.Health();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, ac::ServingStatus::kServing);
  h = c.Health(ac::kAdoreService);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, ac::ServingStatus::kServing);
  EXPECT_TRUE(c.WaitReady(absl::Seconds(10)).ok());
}

TEST_F(SecureServerTest, HttpsNeedsTheTokenButHealthDoesNot) {
  auto https = Https();
  httplib::Result r = https->Get("/health");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
  const httplib::Headers right = {{"Authorization", std::string("Bearer ") + kToken}};
  for (const httplib::Headers& wrong : {httplib::Headers{}, httplib::Headers{{"Authorization", "Bearer nope"}},
                                        httplib::Headers{{"authorization", "Basic dXNlcjpwYXNz"}}}) {
    for (const char* path : {"/v1/models", "/metrics", "/v1/models/x", "/no/such/route"}) {
      SCOPED_TRACE(path);
      r = https->Get(path, wrong);
      ASSERT_TRUE(r) << httplib::to_string(r.error());
      EXPECT_EQ(r->status, 401);
      EXPECT_EQ(r->get_header_value("WWW-Authenticate"), "Bearer");
      const json body = json::parse(r->body, nullptr, false);
      ASSERT_FALSE(body.is_discarded()) << r->body;
      EXPECT_EQ(body["error"]["type"], "invalid_request_error");
      EXPECT_EQ(body["error"]["code"], "invalid_api_key");
      EXPECT_THAT(body["error"]["message"].get<std::string>(), HasSubstr("authorization"));
    }
    r = https->Post("/v1/completions", wrong, R"({"prompt": "Hi", "max_tokens": 1})", "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 401);
  }
  r = https->Get("/v1/models", right);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  r = https->Get("/metrics", right);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_THAT(r->body, HasSubstr("adore_http_requests_total"));
  // Greedy (the API's default temperature is 1, and a sampled end of text made the count vary).
  r = https->Post("/v1/completions", right,
                  R"({"prompt": "The capital of France is", "max_tokens": 3, "temperature": 0})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body)["usage"]["completion_tokens"], 3) << r->body;
}

TEST_F(SecureServerTest, PlainHttpOrAnUntrustedCertificateCannotReachTheHttpApi) {
  httplib::Client plain("127.0.0.1", server_->http_port());
  plain.set_read_timeout(5, 0);
  httplib::Result r = plain.Get("/health");
  EXPECT_TRUE(!r || r->status != 200);
  httplib::SSLClient untrusting("127.0.0.1", server_->http_port());
  untrusting.set_ca_cert_path(other_->cert_file.c_str());
  untrusting.enable_server_certificate_verification(true);
  r = untrusting.Get("/health");
  EXPECT_FALSE(r);
}

// While a server waits for its workers to register, a caller without the token learns nothing more.
TEST(SecurityRegistrationTest, TheGateAsksForTheTokenBeforeSayingTheWorkersAreNotReady) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  ServerOptions o;
  o.model = testing::ModelPath();
  o.port = 0;
  o.expect_workers = 1;
  o.expect_workers_timeout_ms = 1500;
  o.auth_token = kToken;
  bool checked = false;
  o.on_waiting_for_workers = [&checked](const std::string& address) {
    auto stub = v1::Adore::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    for (const bool with_token : {false, true}) {
      grpc::ClientContext ctx;
      if (with_token) ctx.AddMetadata("authorization", std::string("Bearer ") + kToken);
      v1::ModelInfo info;
      const grpc::Status st = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
      EXPECT_EQ(st.error_code(), with_token ? grpc::StatusCode::UNAVAILABLE : grpc::StatusCode::UNAUTHENTICATED)
          << st.error_message();
    }
    checked = true;
  };
  auto s = EmbeddedServer::Start(o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kDeadlineExceeded) << s.status();
  EXPECT_TRUE(checked);
}

// ---- --model_sha256 -------------------------------------------------------------------------------------

TEST(SecurityModelSha256Test, MismatchRefusesToStartAndAMatchIsReported) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  absl::StatusOr<std::string> digest = Sha256File(testing::ModelPath());
  ASSERT_TRUE(digest.ok()) << digest.status();
  const std::string wrong(64, '0');
  ServerOptions o;
  o.model = testing::ModelPath();
  o.port = 0;
  o.kv_rows = 2048;
  o.max_batch = 4;
  o.model_sha256 = wrong;
  auto s = EmbeddedServer::Start(o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.status().message(), HasSubstr("model_sha256: " + testing::ModelPath()));
  EXPECT_THAT(s.status().message(), HasSubstr(*digest));
  EXPECT_THAT(s.status().message(), HasSubstr(wrong));

  // The right digest (in upper case too), on a plaintext server with a token: ModelInfo reports it.
  std::string upper = *digest;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  o.model_sha256 = upper;
  o.auth_token = kToken;
  s = EmbeddedServer::Start(o);
  ASSERT_TRUE(s.ok()) << s.status();
  ac::Client c((*s)->address(), {.timeout = absl::Seconds(30), .bearer_token = kToken});
  absl::StatusOr<ac::ModelInfo> info = c.GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->model_sha256, *digest);
  ac::Client anonymous((*s)->address(), {.timeout = absl::Seconds(30)});
  EXPECT_EQ(anonymous.GetModelInfo().status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(anonymous.Health(ac::kAdoreService).value_or(ac::ServingStatus::kUnknown), ac::ServingStatus::kServing);
}

TEST(SecurityModelSha256Test, WorkersCheckTheDigestTheyArePinnedToAndTheCoordinatorsDigest) {
  if (!testing::ModelAvailable()) GTEST_SKIP() << "model not fetched: run tools/fetch-model.sh";
  absl::StatusOr<std::string> digest = Sha256File(testing::ModelPath());
  ASSERT_TRUE(digest.ok()) << digest.status();
  const std::string other(64, 'a');
  // A worker pinned to another digest refuses the Load, and so the coordinator does not start.
  {
    auto w = WorkerServer::Start({.port = 0, .model_sha256 = std::string(64, 'A')});  // either case
    ASSERT_TRUE(w.ok()) << w.status();
    ServerOptions o;
    o.model = testing::ModelPath();
    o.port = 0;
    o.kv_rows = 2048;
    o.max_batch = 4;
    o.workers = {(*w)->address()};
    auto s = EmbeddedServer::Start(o);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
    EXPECT_THAT(s.status().message(), HasSubstr(*digest));
    EXPECT_THAT(s.status().message(), HasSubstr(other));
    // The coordinator asking for a digest the worker is not pinned to: refused before hashing.
    auto stub = v1::Worker::NewStub(grpc::CreateChannel((*w)->address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    v1::LoadRequest load;
    load.set_model_path(testing::ModelPath());
    load.set_tp_size(1);
    load.set_backend(v1::BACKEND_CPU);
    load.mutable_default_release()->set_policy(v1::POLICY_FULL);
    load.set_expected_sha256(*digest);
    v1::LoadResponse resp;
    const grpc::Status st = stub->Load(&ctx, load, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_THAT(st.error_message(), HasSubstr("expected_sha256"));
  }
  EXPECT_EQ(WorkerServer::Start({.port = 0, .model_sha256 = "12ab"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // An unpinned worker checks the coordinator's --model_sha256 and reports the digest.
  auto w = WorkerServer::Start({.port = 0});
  ASSERT_TRUE(w.ok()) << w.status();
  ServerOptions o;
  o.model = testing::ModelPath();
  o.port = 0;
  o.kv_rows = 2048;
  o.max_batch = 4;
  o.workers = {(*w)->address()};
  o.model_sha256 = *digest;
  auto s = EmbeddedServer::Start(o);
  ASSERT_TRUE(s.ok()) << s.status();
  ac::Client c((*s)->address(), {.timeout = absl::Seconds(30)});
  absl::StatusOr<ac::ModelInfo> info = c.GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->model_sha256, *digest);
}

}  // namespace
}  // namespace adore
