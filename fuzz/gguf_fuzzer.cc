// Fuzz target: the GGUF reader. The input is a whole .gguf file: GgufFile::Open must return a status (never
// crash, leak or read out of bounds), and what it accepts must be self-consistent: every typed getter
// answers, every tensor reads back with the element count its shape says, and LoadModelWeights (config,
// tokenizer keys, tensor shapes) plus Tokenizer::Create over the same bytes return a status too.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/gguf.h"
#include "common/model_weights.h"
#include "common/tokenizer.h"
#include "fuzz/fuzz_util.h"

namespace {

using adore::fuzz::MemFile;

void Exercise(const adore::GgufFile& f) {
  // Every getter on every key: the type checks must hold for each stored type.
  for (const auto& [key, value] : f.metadata()) {
    (void)f.GetString(key);
    (void)f.GetInt(key);
    (void)f.GetFloat(key);
    (void)f.GetStringArray(key);
    (void)f.GetIntArray(key);
    (void)f.GetFloatArray(key);
    FUZZ_CHECK(f.Has(key), "metadata key '%s' listed but Has() is false", key.c_str());
  }
  (void)f.GetInt("no.such.key");
  int read = 0;
  for (const adore::GgufTensorInfo& t : f.tensors()) {
    FUZZ_CHECK(f.FindTensor(t.name) != nullptr, "tensor '%s' listed but not found", t.name.c_str());
    if (++read > 64) break;  // a directory of thousands of tiny tensors: the first ones are enough
    auto tensor = f.ReadTensor(t.name);
    if (!tensor.ok()) continue;
    int64_t numel = 1;
    for (int64_t d : t.ne) numel *= d;
    FUZZ_CHECK(static_cast<int64_t>(tensor->data.size()) == numel,
               "tensor '%s': %zu values read, shape says %lld", t.name.c_str(), tensor->data.size(),
               static_cast<long long>(numel));
    FUZZ_CHECK(tensor->shape.size() == t.ne.size(), "tensor '%s': rank changed", t.name.c_str());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  MemFile& file = MemFile::Get();
  file.Write(data, size);
  auto f = adore::GgufFile::Open(file.path());
  if (!f.ok()) {
    FUZZ_CHECK(!f.status().message().empty(), "an error without a message");
    return 0;
  }
  Exercise(*f);
  // The model loader over the same bytes: config and tokenizer keys, expected tensors and their shapes.
  auto w = adore::LoadModelWeights(file.path());
  if (!w.ok()) return 0;
  FUZZ_CHECK(w->config.Validate().ok(), "LoadModelWeights accepted a config that does not validate");
  auto tok = adore::Tokenizer::Create(w->tokenizer);
  if (!tok.ok()) return 0;
  auto ids = (*tok)->Encode("Hello, world! <|im_start|>user\n12345 \xC3\xA9t\xC3\xA9");
  if (ids.ok()) (void)(*tok)->Decode(*ids);
  (void)(*tok)->ApplyChatTemplate({{"user", "hi"}});
  return 0;
}
