// libFuzzer target for the calibration dataset parsers (calibrator/dataset.h), which read what a
// client uploads with UploadDataset: JSON lines of "input_ids", or raw int32 tokens with an int64
// offset index. The input's first byte picks the format; for .bin the next two bytes say where the
// rest splits into the tokens and the index. Any bytes must give sequences or INVALID_ARGUMENT,
// never a crash or an escaped exception; accepted .bin sequences must account for every token.
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string_view>

#include "calibrator/dataset.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::span<const uint8_t> rest(data + 1, size - 1);
  if (data[0] % 2 == 0) {
    const std::string_view text(reinterpret_cast<const char*>(rest.data()), rest.size());
    auto seqs = lowbit::ParseJsonlTokens(text, "fuzz.jsonl");
    if (!seqs.ok() && seqs.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
    return 0;
  }
  if (rest.size() < 2) return 0;
  const size_t cut = std::min<size_t>(rest.size() - 2, rest[0] | (size_t{rest[1]} << 8));
  const std::span<const uint8_t> body = rest.subspan(2);
  auto seqs = lowbit::ParseBinTokens(body.first(cut), body.subspan(cut), "fuzz.bin");
  if (!seqs.ok()) {
    if (seqs.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
    return 0;
  }
  size_t tokens = 0;
  for (const auto& s : *seqs) tokens += s.size();
  if (tokens * 4 != cut) std::abort();  // every token belongs to exactly one sequence
  return 0;
}
