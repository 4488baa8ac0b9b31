// Deterministic synthetic token sequences for calibration tests and the demo. Tokens follow a
// Zipf-like law (rank r has weight 1/(r+1)) over a seed-shuffled vocabulary, so some tokens
// are frequent and some rare, as in real text.
#ifndef LOWBIT_TOOLS_GEN_TOKENS_SYNTHETIC_TOKENS_H_
#define LOWBIT_TOOLS_GEN_TOKENS_SYNTHETIC_TOKENS_H_

#include <cstdint>
#include <vector>

namespace lowbit {

struct SyntheticTokenOptions {
  int64_t vocab = 512;
  int64_t samples = 64;
  int64_t min_len = 16;
  int64_t max_len = 64;
  uint64_t seed = 1;
};

// Requires vocab > 0, samples > 0, 0 < min_len <= max_len (checked by the caller).
std::vector<std::vector<int32_t>> SyntheticTokens(const SyntheticTokenOptions& options);

}  // namespace lowbit

#endif  // LOWBIT_TOOLS_GEN_TOKENS_SYNTHETIC_TOKENS_H_
