// Helpers for the server tests: one Generate call read to the end, and the engine's own greedy output
// for a text prompt (the reference a server's stream must equal).
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <span>
#include <string>
#include <vector>

#include "adore/v1/adore.grpc.pb.h"
#include "common/tokenizer.h"
#include "gtest/gtest.h"
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
inline std::vector<int32_t> ReferenceGreedy(Engine& engine, const Tokenizer& tok, const std::string& text,
                                            int max_tokens, const ReleaseConfig& release = {}) {
  GenerationRequest g;
  g.prompt = *tok.Encode(text, false, true);
  g.max_tokens = max_tokens;
  g.stop_ids = EndOfGenerationIds(tok);
  g.release = release;
  auto out = GenerateBatch(engine, std::span<const GenerationRequest>(&g, 1));
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? (*out)[0].tokens : std::vector<int32_t>{};
}

}  // namespace adore::testing
