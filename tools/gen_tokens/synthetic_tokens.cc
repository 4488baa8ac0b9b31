#include "tools/gen_tokens/synthetic_tokens.h"

#include <algorithm>
#include <numeric>
#include <random>

namespace lowbit {

std::vector<std::vector<int32_t>> SyntheticTokens(const SyntheticTokenOptions& o) {
  std::mt19937_64 rng(o.seed);
  std::vector<int32_t> order(o.vocab);
  std::iota(order.begin(), order.end(), 0);
  for (int64_t i = o.vocab - 1; i > 0; --i) std::swap(order[i], order[rng() % (i + 1)]);
  std::vector<double> cumulative(o.vocab);
  double total = 0;
  for (int64_t r = 0; r < o.vocab; ++r) cumulative[r] = (total += 1.0 / (r + 1));

  std::vector<std::vector<int32_t>> seqs(o.samples);
  for (auto& s : seqs) {
    int64_t len = o.min_len + static_cast<int64_t>(rng() % (o.max_len - o.min_len + 1));
    for (int64_t t = 0; t < len; ++t) {
      // 53 random bits -> [0, total): the same on every platform (no std distributions).
      double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * total;
      int64_t r = std::lower_bound(cumulative.begin(), cumulative.end(), u) - cumulative.begin();
      s.push_back(order[std::min(r, o.vocab - 1)]);
    }
  }
  return seqs;
}

}  // namespace lowbit
