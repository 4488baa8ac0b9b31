// libFuzzer target: the safetensors header parser and validator must refuse any malformed
// input with a status, never crash, and every entry it accepts must lie inside the file.
#include <cstdint>
#include <cstdlib>
#include <span>

#include "common/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> file(data, size);
  auto header = lowbit::ParseSafetensors(file);
  if (!header.ok()) return 0;
  for (const auto& e : header->entries) {
    if (e.end < e.begin || header->data_start + e.end > size) std::abort();  // validator let a bad entry through
    auto t = lowbit::Tensor::View(e.dtype, e.shape, data + header->data_start + e.begin, nullptr);
    if (t.nbytes() != e.end - e.begin) std::abort();
    volatile float sink = 0;
    for (float v : t.ToFloats()) sink = sink + v;
  }
  return 0;
}
