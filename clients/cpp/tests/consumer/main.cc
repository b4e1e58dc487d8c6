// Checks of the installed C++ SDK against a running adore-server (started by install_test.sh):
//   consumer HOST:PORT GREEDY_TEXT_FILE
// Greedy generation read whole equals the deltas of the same request streamed (through a callback and
// through a GenerateStream) concatenated; a bad request (temperature < 0) gives INVALID_ARGUMENT naming the
// field; cancellation, deadlines, model info, stats and health answer. Writes the greedy completion to
// GREEDY_TEXT_FILE (the script compares the example program's output with it). Exit status 0 when every
// check passed.
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "adore/client/client.h"
#include "adore/v1/adore.pb.h"  // the installed generated messages (adore::proto)

namespace ac = adore::client;

namespace {

int g_failures = 0;

#define CHECK(cond, what)                                                                  \
  do {                                                                                     \
    if (cond) {                                                                            \
      std::cout << "ok    " << what << "\n";                                               \
    } else {                                                                               \
      ++g_failures;                                                                        \
      std::cout << "FAIL  " << what << "  (" #cond ", line " << __LINE__ << ")\n";       \
    }                                                                                      \
  } while (0)

std::string Show(const absl::Status& s) { return s.ok() ? "OK" : s.ToString(); }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: consumer HOST:PORT GREEDY_TEXT_FILE\n";
    return 2;
  }
  const std::string prompt = "The capital of France is";
  ac::Client client(argv[1], {.timeout = absl::Seconds(60)});

  const absl::Status ready = client.WaitReady(absl::Seconds(60));
  CHECK(ready.ok(), "WaitReady: " << Show(ready));
  if (!ready.ok()) return 1;
  absl::StatusOr<ac::ServingStatus> health = client.Health();
  CHECK(health.ok() && *health == ac::ServingStatus::kServing, "Health(\"\") is SERVING");

  absl::StatusOr<ac::ModelInfo> info = client.GetModelInfo();
  CHECK(info.ok(), "GetModelInfo: " << Show(info.status()));
  if (info.ok()) {
    CHECK(info->vocab_size == 49152 && info->backend == ac::Backend::kCpu,
          "model info: " << info->name << ", vocab " << info->vocab_size << ", backend "
                         << ac::BackendName(info->backend));
  }

  // Greedy, non-streaming.
  const ac::GenerateOptions greedy{.max_tokens = 12, .temperature = 0.0f};
  absl::StatusOr<ac::GenerateResult> whole = client.Generate(prompt, greedy);
  CHECK(whole.ok(), "Generate (non-streaming): " << Show(whole.status()));
  if (!whole.ok()) return 1;
  std::cout << "      completion: \"" << whole->text << "\" (" << whole->token_ids.size() << " tokens, "
            << ac::FinishReasonName(whole->finish_reason) << ")\n";
  CHECK(!whole->token_ids.empty() && static_cast<int64_t>(whole->token_ids.size()) == whole->usage.completion_tokens,
        "usage.completion_tokens equals the tokens received");
  CHECK(whole->text.find("Paris") != std::string::npos, "the greedy completion names Paris");
  CHECK(whole->adore.policy == ac::Policy::kFull, "the server's default policy was applied (FULL)");

  // Streaming through a callback: the deltas concatenate to the non-streaming result.
  std::string text;
  std::vector<int32_t> tokens;
  int deltas = 0;
  absl::StatusOr<ac::GenerateResult> by_callback = client.Generate(prompt, greedy, [&](const ac::Delta& d) {
    ++deltas;
    text += d.text;
    tokens.insert(tokens.end(), d.token_ids.begin(), d.token_ids.end());
  });
  CHECK(by_callback.ok(), "Generate (callback per delta): " << Show(by_callback.status()));
  CHECK(deltas > 0 && text == whole->text && tokens == whole->token_ids,
        "callback deltas (" << deltas << ") concatenate to the non-streaming result");
  CHECK(by_callback.ok() && by_callback->text == whole->text, "the callback call's result equals it too");

  // Streaming through a GenerateStream.
  ac::GenerateOptions with_id = greedy;
  with_id.request_id = "consumer-1";
  ac::GenerateStream stream = client.GenerateStream(prompt, with_id);
  text.clear();
  tokens.clear();
  for (ac::Delta d; stream.Next(&d);) {
    text += d.text;
    tokens.insert(tokens.end(), d.token_ids.begin(), d.token_ids.end());
  }
  absl::StatusOr<ac::GenerateResult> streamed = stream.Result();
  CHECK(streamed.ok(), "GenerateStream: " << Show(streamed.status()));
  CHECK(text == whole->text && tokens == whole->token_ids, "GenerateStream deltas concatenate to the result");
  CHECK(streamed.ok() && streamed->request_id == "consumer-1", "the request id is echoed");

  // A bad request: INVALID_ARGUMENT with the field first in the message.
  absl::StatusOr<ac::GenerateResult> bad = client.Generate(prompt, {.temperature = -1.0f});
  CHECK(bad.status().code() == absl::StatusCode::kInvalidArgument,
        "temperature -1: " << Show(bad.status()));
  CHECK(bad.status().message().substr(0, 20) == "sampling.temperature", "the message names sampling.temperature");

  // Cancellation from the callback, and a deadline.
  const std::string counting = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,";
  absl::StatusOr<ac::GenerateResult> cancelled = client.Generate(
      counting, {.max_tokens = 1000, .temperature = 0.0f}, [](const ac::Delta&) { return false; });
  CHECK(cancelled.status().code() == absl::StatusCode::kCancelled, "callback returning false: " << Show(cancelled.status()));
  absl::StatusOr<ac::GenerateResult> late =
      client.Generate(counting, {.max_tokens = 1000, .temperature = 0.0f, .timeout = absl::Milliseconds(500)});
  CHECK(late.status().code() == absl::StatusCode::kDeadlineExceeded, "a 500 ms deadline: " << Show(late.status()));

  absl::StatusOr<ac::ServerStats> stats = client.GetStats();
  CHECK(stats.ok() && stats->requests.ok >= 3 && stats->requests.invalid_argument >= 1,
        "GetStats counts the requests: " << (stats.ok() ? std::to_string(stats->requests.ok) + " ok" : Show(stats.status())));

  // The installed generated messages are usable too (adore::proto).
  adore::v1::GenerateRequest raw;
  raw.set_text(prompt);
  CHECK(raw.has_text() && !raw.SerializeAsString().empty(), "adore::proto's generated messages link");

  std::ofstream(argv[2], std::ios::binary) << whole->text;
  std::cout << (g_failures == 0 ? "consumer: all checks passed\n" : "consumer: FAILED\n");
  return g_failures == 0 ? 0 : 1;
}
