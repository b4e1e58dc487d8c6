// Example of the C++ SDK: streams one completion from adore-server to stdout, then prints the server's
// report (finish reason, usage, timing, what the release policy did) to stderr.
//
//   adore_client_generate [--server HOST:PORT] [--max_tokens N] [--temperature T] [--seed S]
//                         [--policy full|window|heavy_hitter|adore] [--kv_budget M] [--rebuild R]
//                         [--stop STRING]... [--timeout SECONDS] [--chat] PROMPT...
//
// --chat sends the prompt as one user message (the server applies the model's chat template). Ctrl-C
// cancels the request (the server frees its KV slots). Exit status: 0 on success, 1 when the call failed
// (the gRPC status code and message are printed), 2 for a bad command line.
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "adore/client/client.h"

namespace {

volatile std::sig_atomic_t g_interrupted = 0;

void OnSigint(int) { g_interrupted = 1; }

int Usage(const char* why) {
  std::cerr << "adore_client_generate: " << why << "\n"
            << "usage: adore_client_generate [--server HOST:PORT] [--max_tokens N] [--temperature T] [--seed S]\n"
            << "         [--policy full|window|heavy_hitter|adore] [--kv_budget M] [--rebuild R] [--stop S]...\n"
            << "         [--timeout SECONDS] [--chat] PROMPT...\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  namespace ac = adore::client;
  std::string server = ac::kDefaultServer;
  ac::GenerateOptions options;
  bool chat = false;
  std::string prompt;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) return nullptr;
      return argv[++i];
    };
    const char* v = nullptr;
    if (arg == "--chat") {
      chat = true;
    } else if (arg.rfind("--", 0) == 0 && arg.size() > 2) {
      if ((v = value()) == nullptr) return Usage("a flag without its value");
      try {
        if (arg == "--server") {
          server = v;
        } else if (arg == "--max_tokens") {
          options.max_tokens = std::stoi(v);
        } else if (arg == "--temperature") {
          options.temperature = std::stof(v);
        } else if (arg == "--seed") {
          options.seed = std::stoull(v);
        } else if (arg == "--policy") {
          absl::StatusOr<ac::Policy> p = ac::ParsePolicy(v);
          if (!p.ok()) return Usage(std::string(p.status().message()).c_str());
          options.policy = *p;
        } else if (arg == "--kv_budget") {
          options.kv_budget = std::stoll(v);
        } else if (arg == "--rebuild") {
          options.rebuild = std::stoll(v);
        } else if (arg == "--stop") {
          options.stop.emplace_back(v);
        } else if (arg == "--timeout") {
          options.timeout = absl::Seconds(std::stod(v));
        } else {
          return Usage(("unknown flag " + std::string(arg)).c_str());
        }
      } catch (const std::exception&) {
        return Usage(("bad value for " + std::string(arg)).c_str());
      }
    } else {
      if (!prompt.empty()) prompt += ' ';
      prompt += arg;
    }
  }
  if (prompt.empty()) return Usage("no prompt");

  std::signal(SIGINT, OnSigint);
  ac::Client client(server);
  const ac::Prompt input = chat ? ac::Prompt::Chat({{"user", prompt}}) : ac::Prompt(prompt);
  absl::StatusOr<ac::GenerateResult> result = client.Generate(input, options, [](const ac::Delta& d) {
    std::cout << d.text << std::flush;
    return g_interrupted == 0;  // false cancels the request
  });
  std::cout << std::endl;
  if (!result.ok()) {
    std::cerr << "adore_client_generate: " << absl::StatusCodeToString(result.status().code()) << ": "
              << result.status().message() << "\n";
    return 1;
  }
  const ac::GenerateResult& r = *result;
  std::cerr << "[" << r.request_id << "] finish " << ac::FinishReasonName(r.finish_reason) << ", "
            << r.usage.prompt_tokens << " prompt + " << r.usage.completion_tokens << " completion tokens, ttft "
            << r.timing.ttft_ms << " ms, total " << r.timing.total_ms << " ms; policy "
            << ac::PolicyName(r.adore.policy) << " (kv_budget " << r.adore.kv_budget << ", rebuild "
            << r.adore.rebuild << "): " << r.adore.tokens_released << " released, " << r.adore.tokens_rebuilt
            << " rebuilt, " << r.adore.kv_slots_in_use << " KV slots at the end; seed " << r.seed << "\n";
  return 0;
}
