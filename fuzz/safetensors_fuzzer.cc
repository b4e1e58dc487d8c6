// Fuzz target: the safetensors reader. The input is a whole .safetensors file: SafetensorsFile::Open must
// return a status (never crash, leak or read out of bounds), and what it accepts must be consistent: every
// listed tensor is found, lies inside the data section, and reads back (F32/F16/BF16) with the element
// count of its shape, or fails with UNIMPLEMENTED for the other dtypes.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/safetensors.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  adore::fuzz::MemFile& file = adore::fuzz::MemFile::Get();
  file.Write(data, size);
  auto f = adore::SafetensorsFile::Open(file.path());
  if (!f.ok()) {
    FUZZ_CHECK(!f.status().message().empty(), "an error without a message");
    return 0;
  }
  for (const auto& [key, value] : f->metadata()) (void)key, (void)value;
  int read = 0;
  for (const adore::SafetensorsTensorInfo& t : f->tensors()) {
    FUZZ_CHECK(f->Find(t.name) == &t, "tensor '%s' listed but Find() does not return it", t.name.c_str());
    FUZZ_CHECK(t.begin <= t.end && t.end <= size, "tensor '%s' [%llu, %llu] outside a %zu-byte file",
               t.name.c_str(), static_cast<unsigned long long>(t.begin), static_cast<unsigned long long>(t.end),
               size);
    if (++read > 64) break;
    auto tensor = f->ReadTensor(t.name);
    if (t.dtype != "F32" && t.dtype != "F16" && t.dtype != "BF16") {
      FUZZ_CHECK(!tensor.ok() && tensor.status().code() == absl::StatusCode::kUnimplemented,
                 "tensor '%s' of dtype %s: expected UNIMPLEMENTED", t.name.c_str(), t.dtype.c_str());
      continue;
    }
    FUZZ_CHECK(tensor.ok(), "tensor '%s' accepted by Open() does not read: %s", t.name.c_str(),
               std::string(tensor.status().message()).c_str());
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    FUZZ_CHECK(static_cast<int64_t>(tensor->data.size()) == numel, "tensor '%s': %zu values, shape says %lld",
               t.name.c_str(), tensor->data.size(), static_cast<long long>(numel));
  }
  (void)f->Find("no such tensor");
  (void)f->ReadTensor("no such tensor");
  return 0;
}
