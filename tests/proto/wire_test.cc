// The wire (proto/adore/v1): messages survive serialization with every field set, and the generated
// services work end to end over a real gRPC channel on 127.0.0.1.
#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "adore/v1/adore.grpc.pb.h"
#include "adore/v1/adore.pb.h"
#include "adore/v1/worker.grpc.pb.h"
#include "adore/v1/worker.pb.h"

namespace adore {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::util::MessageDifferencer;

// Appends to `missing` the path of every field of `msg` (recursively) that is not set: a repeated field
// that is empty, a singular field without presence / with its zero value. Alternatives of a oneof other
// than the one set are not required. Guards the tests below against fields added to the .proto later.
void CollectUnsetFields(const Message& msg, const std::string& prefix, std::vector<std::string>* missing) {
  const auto* desc = msg.GetDescriptor();
  const auto* refl = msg.GetReflection();
  for (int i = 0; i < desc->field_count(); ++i) {
    const FieldDescriptor* field = desc->field(i);
    const std::string path = prefix + field->name();
    if (field->real_containing_oneof() != nullptr &&
        refl->GetOneofFieldDescriptor(msg, field->real_containing_oneof()) != field) {
      continue;
    }
    if (field->is_repeated()) {
      const int n = refl->FieldSize(msg, field);
      if (n == 0) missing->push_back(path);
      if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        for (int j = 0; j < n; ++j) {
          CollectUnsetFields(refl->GetRepeatedMessage(msg, field, j), path + "[" + std::to_string(j) + "].",
                             missing);
        }
      }
      continue;
    }
    if (!refl->HasField(msg, field)) {
      missing->push_back(path);
      continue;
    }
    if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      CollectUnsetFields(refl->GetMessage(msg, field), path + ".", missing);
    }
  }
}

std::vector<std::string> UnsetFields(const Message& msg) {
  std::vector<std::string> missing;
  CollectUnsetFields(msg, "", &missing);
  return missing;
}

v1::GenerateRequest FullRequest() {
  v1::GenerateRequest req;
  req.mutable_token_ids()->add_ids(1);
  req.mutable_token_ids()->add_ids(9906);
  req.mutable_token_ids()->add_ids(0);
  auto* s = req.mutable_sampling();
  s->set_max_tokens(64);
  s->set_temperature(0.7f);
  s->set_top_k(40);
  s->set_top_p(0.95f);
  s->set_seed(0xfedcba9876543210ull);
  s->add_stop("\n\n");
  s->add_stop("</s>");
  auto* r = req.mutable_release();
  r->set_policy(v1::POLICY_ADORE);
  r->set_kv_budget(256);
  r->set_rebuild(8);
  req.set_request_id("req-0001");
  return req;
}

template <typename M>
M RoundTrip(const M& msg) {
  std::string bytes;
  EXPECT_TRUE(msg.SerializeToString(&bytes));
  M back;
  EXPECT_TRUE(back.ParseFromString(bytes));
  return back;
}

TEST(WireTest, GenerateRequestRoundTripsWithEveryField) {
  const v1::GenerateRequest req = FullRequest();
  EXPECT_EQ(UnsetFields(req), std::vector<std::string>{});
  const v1::GenerateRequest back = RoundTrip(req);
  EXPECT_TRUE(MessageDifferencer::Equals(req, back)) << back.DebugString();
  EXPECT_EQ(back.prompt_case(), v1::GenerateRequest::kTokenIds);
  EXPECT_EQ(back.sampling().seed(), 0xfedcba9876543210ull);
  EXPECT_EQ(back.release().policy(), v1::POLICY_ADORE);
}

TEST(WireTest, PromptAlternativesRoundTrip) {
  v1::GenerateRequest text = FullRequest();
  text.set_text("The capital of France is");  // replaces token_ids (oneof)
  EXPECT_EQ(text.prompt_case(), v1::GenerateRequest::kText);
  EXPECT_EQ(UnsetFields(text), std::vector<std::string>{});
  EXPECT_TRUE(MessageDifferencer::Equals(text, RoundTrip(text)));

  v1::GenerateRequest chat = FullRequest();
  auto* m = chat.mutable_chat()->add_messages();
  m->set_role("system");
  m->set_content("You are terse.");
  m = chat.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("Capital of France? \xc3\xa9");
  EXPECT_EQ(chat.prompt_case(), v1::GenerateRequest::kChat);
  EXPECT_FALSE(chat.has_token_ids());
  EXPECT_EQ(UnsetFields(chat), std::vector<std::string>{});
  const v1::GenerateRequest back = RoundTrip(chat);
  EXPECT_TRUE(MessageDifferencer::Equals(chat, back));
  EXPECT_EQ(back.chat().messages(1).content(), "Capital of France? \xc3\xa9");
}

// proto3 `optional`: "unset" (server default) and "set to zero" are different on the wire.
TEST(WireTest, OptionalFieldsKeepPresence) {
  v1::GenerateRequest req;
  req.set_text("hi");
  req.mutable_sampling()->set_temperature(0.0f);  // explicit greedy
  req.mutable_release()->set_rebuild(0);
  const v1::GenerateRequest back = RoundTrip(req);
  EXPECT_TRUE(back.sampling().has_temperature());
  EXPECT_FALSE(back.sampling().has_max_tokens());
  EXPECT_FALSE(back.sampling().has_top_k());
  EXPECT_FALSE(back.sampling().has_top_p());
  EXPECT_FALSE(back.sampling().has_seed());
  EXPECT_TRUE(back.release().has_rebuild());
  EXPECT_FALSE(back.release().has_kv_budget());
  EXPECT_EQ(back.release().policy(), v1::POLICY_UNSPECIFIED);
}

TEST(WireTest, WorkerStepRoundTripsWithEveryField) {
  v1::StepRequest step;
  step.set_step_id(42);
  step.set_epoch(3);
  step.add_end(7);
  auto* start = step.add_start();
  start->set_seq_id(11);
  start->add_prompt_tokens(1);
  start->add_prompt_tokens(2);
  start->mutable_release()->set_policy(v1::POLICY_HEAVY_HITTER);
  start->mutable_release()->set_kv_budget(64);
  start->mutable_release()->set_rebuild(0);
  start->mutable_sampler()->set_temperature(1.0f);
  start->mutable_sampler()->set_top_k(50);
  start->mutable_sampler()->set_top_p(0.9f);
  start->mutable_sampler()->set_seed(5);
  auto* dec = step.add_decode();
  dec->set_seq_id(9);
  dec->set_last_token(123);
  // proto3 has no presence for plain scalars: release.rebuild = 0 is "set" only because it is optional.
  EXPECT_EQ(UnsetFields(step), std::vector<std::string>{});
  EXPECT_TRUE(MessageDifferencer::Equals(step, RoundTrip(step)));

  v1::StepResult result;
  result.set_step_id(42);
  auto* out = result.add_outputs();
  out->set_seq_id(11);
  out->set_token(0);  // token 0 is a real token: presence distinguishes it from "not rank 0"
  out->set_slot_map_hash(0xcbf29ce484222325ull);
  out->set_error_code(8);  // a failed sequence's fields (RESOURCE_EXHAUSTED), set here only to cover them
  out->set_error_message("KV pool full");
  auto* st = out->mutable_stats();
  st->set_tokens_released(1);
  st->set_tokens_rebuilt(2);
  st->set_tokens_released_total(3);
  st->set_tokens_rebuilt_total(4);
  st->set_kv_slots_in_use(64);
  auto* t = result.mutable_timing();
  t->set_total_ms(5.5);
  t->set_forward_ms(4.0);
  t->set_comm_ms(0.5);
  t->set_policy_ms(0.75);
  t->set_sample_ms(0.25);
  result.set_kv_slots_used(64);
  result.set_kv_slots_free(1984);
  EXPECT_EQ(UnsetFields(result), std::vector<std::string>{});
  const v1::StepResult back = RoundTrip(result);
  EXPECT_TRUE(MessageDifferencer::Equals(result, back));
  EXPECT_TRUE(back.outputs(0).has_token());
  EXPECT_EQ(back.outputs(0).token(), 0);
}

// ---------------------------------------------------------------------------------------------------
// Services over a real channel.

// Streams one delta and one done for any request; answers GetModelInfo with a fixed model.
class FakeAdore final : public v1::Adore::Service {
 public:
  grpc::Status Generate(grpc::ServerContext*, const v1::GenerateRequest* req,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    if (req->prompt_case() == v1::GenerateRequest::PROMPT_NOT_SET) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "prompt: must be set");
    }
    v1::GenerateResponse delta;
    delta.set_request_id(req->request_id());
    delta.mutable_delta()->add_token_ids(42);
    delta.mutable_delta()->set_text(" Paris");
    if (!writer->Write(delta)) return grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
    v1::GenerateResponse done;
    done.set_request_id(req->request_id());
    auto* d = done.mutable_done();
    d->set_finish_reason(v1::FINISH_REASON_STOP);
    d->mutable_usage()->set_prompt_tokens(req->token_ids().ids_size());
    d->mutable_usage()->set_completion_tokens(1);
    d->mutable_adore()->set_policy(req->release().policy());
    d->mutable_adore()->set_kv_budget(req->release().kv_budget());
    d->set_seed(req->sampling().seed());
    if (!writer->Write(done)) return grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
    return grpc::Status::OK;
  }

  grpc::Status GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*, v1::ModelInfo* info) override {
    info->set_name("SmolLM2-135M-Instruct");
    info->set_architecture("llama");
    info->set_vocab_size(49152);
    info->set_backend(v1::BACKEND_CPU);
    return grpc::Status::OK;
  }
};

// Checks the coordinator -> worker shared secret the way worker.proto documents it.
class FakeWorker final : public v1::Worker::Service {
 public:
  grpc::Status Health(grpc::ServerContext* ctx, const v1::WorkerHealthRequest*,
                      v1::WorkerHealthResponse* resp) override {
    const auto& md = ctx->client_metadata();
    const auto it = md.find("adore-worker-secret");
    if (it == md.end() || grpc::string_ref("s3cret") != it->second) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "adore-worker-secret: missing or wrong");
    }
    resp->set_state(v1::WORKER_STATE_READY);
    return grpc::Status::OK;
  }
};

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&adore_);
    builder.RegisterService(&worker_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials());
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  FakeAdore adore_;
  FakeWorker worker_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(ServiceTest, GenerateStreamsDeltaThenDoneOverTcp) {
  auto stub = v1::Adore::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  const v1::GenerateRequest req = FullRequest();
  auto reader = stub->Generate(&ctx, req);
  std::vector<v1::GenerateResponse> got;
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) got.push_back(msg);
  const grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].request_id(), "req-0001");
  ASSERT_TRUE(got[0].has_delta());
  EXPECT_EQ(got[0].delta().text(), " Paris");
  ASSERT_EQ(got[0].delta().token_ids_size(), 1);
  EXPECT_EQ(got[0].delta().token_ids(0), 42);
  ASSERT_TRUE(got[1].has_done());
  EXPECT_EQ(got[1].done().finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(got[1].done().usage().prompt_tokens(), 3);
  EXPECT_EQ(got[1].done().adore().policy(), v1::POLICY_ADORE);
  EXPECT_EQ(got[1].done().adore().kv_budget(), 256);
  EXPECT_EQ(got[1].done().seed(), 0xfedcba9876543210ull);
}

TEST_F(ServiceTest, GenerateErrorStatusReachesTheClient) {
  auto stub = v1::Adore::NewStub(channel_);
  grpc::ClientContext ctx;
  v1::GenerateRequest req;  // no prompt
  auto reader = stub->Generate(&ctx, req);
  v1::GenerateResponse msg;
  EXPECT_FALSE(reader->Read(&msg));
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "prompt: must be set");
}

TEST_F(ServiceTest, UnaryCallOverInProcessChannel) {
  auto stub = v1::Adore::NewStub(server_->InProcessChannel(grpc::ChannelArguments()));
  grpc::ClientContext ctx;
  v1::ModelInfo info;
  const grpc::Status status = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(info.architecture(), "llama");
  EXPECT_EQ(info.vocab_size(), 49152);
  EXPECT_EQ(info.backend(), v1::BACKEND_CPU);
}

TEST_F(ServiceTest, WorkerStubCarriesTheSharedSecret) {
  auto stub = v1::Worker::NewStub(channel_);
  {
    grpc::ClientContext ctx;
    v1::WorkerHealthResponse resp;
    const grpc::Status status = stub->Health(&ctx, v1::WorkerHealthRequest(), &resp);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("adore-worker-secret", "s3cret");
    v1::WorkerHealthResponse resp;
    const grpc::Status status = stub->Health(&ctx, v1::WorkerHealthRequest(), &resp);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(resp.state(), v1::WORKER_STATE_READY);
  }
  // Methods the fake does not implement answer UNIMPLEMENTED: the stub still has them all.
  grpc::ClientContext ctx;
  v1::StepResult result;
  EXPECT_EQ(stub->Step(&ctx, v1::StepRequest(), &result).error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

}  // namespace
}  // namespace adore
