// Tokenized calibration data: loading, validation and the deterministic calibration / held-out
// split.
//
// Formats (chosen by the file extension):
//   .jsonl  one JSON object per line with an "input_ids" array of integers (one sequence per
//           line; other keys are ignored; blank lines are skipped). Anything else — invalid
//           JSON, a missing or non-array "input_ids", a non-integer or out-of-int32 element —
//           is InvalidArgument "<path>:<line>: ...".
//   .bin    raw little-endian int32 tokens, with X.idx beside X.bin: little-endian int64
//           offsets, one more than the number of sequences; offsets[0] = 0, non-decreasing,
//           offsets.back() = number of tokens. Sequence i is tokens [offsets[i], offsets[i+1]).
//
// The split (SplitDataset) is the same on every platform and standard library: it shuffles with
// its own Fisher-Yates over SplitMix64 (see ShuffleIndices), never std::shuffle or
// std::uniform_int_distribution, whose results are implementation-defined.
#ifndef LOWBIT_CALIBRATOR_DATASET_H_
#define LOWBIT_CALIBRATOR_DATASET_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lowbit {

using TokenSequence = std::vector<int32_t>;

// Parsers over in-memory contents; `source` names the data in error messages.
absl::StatusOr<std::vector<TokenSequence>> ParseJsonlTokens(std::string_view text, std::string_view source);
absl::StatusOr<std::vector<TokenSequence>> ParseBinTokens(std::span<const uint8_t> tokens,
                                                          std::span<const uint8_t> index,
                                                          std::string_view source);

// Loads a .jsonl file, or a .bin file and the .idx beside it. NotFound for a missing file,
// InvalidArgument for another extension or malformed contents.
absl::StatusOr<std::vector<TokenSequence>> LoadTokenDataset(const std::string& path);

// Writers for the same formats (atomic), used by tests and tools.
absl::Status WriteJsonlTokens(const std::string& path, std::span<const TokenSequence> sequences);
absl::Status WriteBinTokens(const std::string& bin_path, std::span<const TokenSequence> sequences);

// InvalidArgument "sample <i>, position <p>: token id <t> is outside the vocabulary [0, <vocab>)"
// for the first token < 0 or >= vocab_size (i indexes `sequences`).
absl::Status ValidateTokens(std::span<const TokenSequence> sequences, int64_t vocab_size);

struct DatasetOptions {
  int64_t num_calibration_samples = 512;  // at most this many calibration sequences (>= 1)
  std::optional<int64_t> max_seq_length;  // truncate longer sequences (>= 1)
  double heldout_fraction = 0.1;          // in [0, 1)
  uint64_t seed = 42;
  bool shuffle = true;
};

struct DatasetSplit {
  std::vector<TokenSequence> calibration;
  std::vector<TokenSequence> heldout;
  // Index in the input of each sequence above.
  std::vector<int64_t> calibration_index;
  std::vector<int64_t> heldout_index;
  std::vector<std::string> warnings;  // dropped empty sequences, fewer samples than asked, ...
};

// 1. Drops empty sequences (counted in a warning). InvalidArgument if none remain.
// 2. Orders the n remaining ones: input order, or ShuffleIndices(seed) when shuffle is set.
// 3. Held-out: the first k = floor(heldout_fraction * n), raised to 1 when the fraction is > 0
//    and n >= 2, and lowered to n - 1 so calibration keeps at least one sequence.
// 4. Calibration: the next min(num_calibration_samples, n - k) (a warning when fewer than asked).
// 5. Truncates every kept sequence to max_seq_length.
// InvalidArgument for options out of range.
absl::StatusOr<DatasetSplit> SplitDataset(std::span<const TokenSequence> sequences, const DatasetOptions& options);

// SplitMix64 (Steele, Lea, Flood 2014; the generator of java.util.SplittableRandom):
//   state += 0x9E3779B97F4A7C15; z = state;
//   z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
//   return z ^ (z >> 31).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next();
  // Uniform in [0, bound), bound > 0, by rejection: draws r = Next() until r >= 2^64 mod bound,
  // then returns r mod bound.
  uint64_t Below(uint64_t bound);

 private:
  uint64_t state_;
};

// Fisher-Yates: for i = n-1 down to 1, swap v[i] with v[Below(i + 1)], one SplitMix64(seed).
void ShuffleIndices(std::vector<int64_t>& v, uint64_t seed);

}  // namespace lowbit

#endif  // LOWBIT_CALIBRATOR_DATASET_H_
