// Helpers for the server tests: one Generate call read to the end, the engine's own greedy output for a
// text prompt (the reference a server's stream must equal), and a grpc.health.v1 check.
#pragma once

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "adore/v1/adore.grpc.pb.h"
#include "coordinator/grpc/server.h"
#include "common/model_weights.h"
#include "common/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "worker/cpu_engine.h"
#include "worker/engine.h"
#include "worker/generator.h"

namespace adore::testing {

// What one Generate stream delivered.
struct StreamResult {
  grpc::Status status;
  std::vector<int32_t> tokens;  // all deltas' tokens, in order
  std::string text;             // all deltas' text
  adore::v1::GenerateDone done;  // the final message (empty when the stream ended with an error)
};

inline StreamResult ReadGenerate(adore::v1::Adore::Stub& stub, const adore::v1::GenerateRequest& req,
                                 int deadline_ms = 0) {
  StreamResult out;
  grpc::ClientContext ctx;
  if (deadline_ms > 0) ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
  auto reader = stub.Generate(&ctx, req);
  adore::v1::GenerateResponse r;
  while (reader->Read(&r)) {
    if (r.has_delta()) {
      out.tokens.insert(out.tokens.end(), r.delta().token_ids().begin(), r.delta().token_ids().end());
      out.text += r.delta().text();
    } else if (r.has_done()) {
      out.done = r.done();
    }
  }
  out.status = reader->Finish();
  return out;
}

// Greedy tokens of `text` (BOS as the server adds it, the model's end tokens stopping) on `engine` alone.
// An embedded server of the fetched model on a free port (ServerOptions::port 0), with the shipped controller
// so that adore requests run.
inline ServerOptions ModelServerOptions(int64_t kv_rows, int64_t max_batch) {
  ServerOptions o;
  o.model = ModelPath();
  o.port = 0;
  o.kv_rows = kv_rows;
  o.max_batch = max_batch;
  o.controller = std::string(ADORE_SOURCE_DIR) + "/tools/adore/controller.bin";
  return o;
}

inline std::vector<int32_t> ReferenceGreedy(Engine& engine, const Tokenizer& tok, const std::string& text,
                                            int max_tokens, const ReleaseConfig& release = {},
                                            int64_t policy_prefill_chunk = kDefaultPolicyPrefillChunk) {
  GenerationRequest g;
  g.prompt = *tok.Encode(text, false, true);
  g.max_tokens = max_tokens;
  g.stop_ids = EndOfGenerationIds(tok);
  g.release = release;
  auto out = GenerateBatch(engine, std::span<const GenerationRequest>(&g, 1), nullptr, nullptr, 512,
                           policy_prefill_chunk);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? (*out)[0].tokens : std::vector<int32_t>{};
}

// The fetched model in a single-process CPU engine, with its tokenizer: the reference the servers' streams
// are compared with. Null members (and a test failure) when the model does not load.
struct ReferenceModel {
  std::unique_ptr<CpuEngine> engine;
  std::unique_ptr<Tokenizer> tokenizer;
};
inline ReferenceModel LoadReferenceModel(int64_t kv_rows = 2048) {
  ReferenceModel out;
  auto weights = LoadModelWeights(ModelPath());
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return out;
  auto tok = Tokenizer::Create(weights->tokenizer);
  EXPECT_TRUE(tok.ok()) << tok.status();
  auto engine = CpuEngine::Create(*std::move(weights), {.kv_rows = kv_rows});
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (tok.ok() && engine.ok()) {
    out.tokenizer = *std::move(tok);
    out.engine = *std::move(engine);
  }
  return out;
}

// grpc.health.v1 Check through a generic call (the health proto's stub is not among grpc++'s public
// headers): kServing, kNotServing or 0 (UNKNOWN, the default value) from the response, -1 when the call
// fails (its status in *error when given).
constexpr int kServing = 1, kNotServing = 2;
inline int GrpcHealthCheck(const std::string& address, const std::string& service, int timeout_s = 2,
                           grpc::Status* error = nullptr) {
  grpc::GenericStub generic(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout_s));
  std::string request;  // HealthCheckRequest{service}: field 1, length-delimited
  if (!service.empty()) request = std::string("\x0a") + static_cast<char>(service.size()) + service;
  grpc::Slice slice(request.data(), request.size());
  grpc::ByteBuffer request_bytes(&slice, 1), response_bytes;
  // The callback runs on a gRPC thread after the call has started, an order kept by gRPC's own synchronization,
  // which ThreadSanitizer cannot see in Debian's uninstrumented gRPC (tools/sanitize.sh tsan): the empty critical
  // section after the state is built and the callback's lock state that order. This thread returns only once it
  // holds the lock again, after the callback's last touch of this frame.
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  grpc::Status st;
  { const std::lock_guard<std::mutex> lock(mu); }
  generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request_bytes, &response_bytes,
                    [&](grpc::Status s) {
                      const std::lock_guard<std::mutex> lock(mu);
                      st = std::move(s);
                      finished = true;
                      cv.notify_all();
                    });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return finished; });
  }
  if (error != nullptr) *error = st;
  if (!st.ok()) return -1;
  std::vector<grpc::Slice> slices;
  if (!response_bytes.Dump(&slices).ok()) return -1;
  std::string body;
  for (const auto& sl : slices) body.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  if (body.empty()) return 0;
  return body.size() == 2 && body[0] == '\x08' ? body[1] : -1;
}

}  // namespace adore::testing
