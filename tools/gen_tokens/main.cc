// lowbit-gen-tokens: deterministic synthetic calibration data for tests and the demo.
//   lowbit-gen-tokens --out tokens.jsonl --vocab 512 --samples 64 --min_len 16 --max_len 64
// Writes JSONL ({"input_ids": [...]} per line) or, for a .bin path, the raw little-endian int32
// token file plus its .idx offsets index (int64, samples + 1 entries).
// Tokens: see synthetic_tokens.h.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/flags_help.h"
#include "tools/gen_tokens/synthetic_tokens.h"

ABSL_FLAG(std::string, out, "", "output path: .jsonl, or .bin (+ .idx written beside it)");
ABSL_FLAG(int64_t, vocab, 512, "vocabulary size (token ids are in [0, vocab))");
ABSL_FLAG(int64_t, samples, 64, "number of sequences");
ABSL_FLAG(int64_t, min_len, 16, "shortest sequence");
ABSL_FLAG(int64_t, max_len, 64, "longest sequence");
ABSL_FLAG(uint64_t, seed, 1, "random seed");

int main(int argc, char** argv) {
  lowbit::HelpListsFlagsOf(__FILE__);
  absl::SetProgramUsageMessage("Writes synthetic calibration tokens: lowbit-gen-tokens --out tokens.jsonl|tokens.bin");
  absl::ParseCommandLine(argc, argv);
  const std::string out = absl::GetFlag(FLAGS_out);
  const int64_t vocab = absl::GetFlag(FLAGS_vocab), samples = absl::GetFlag(FLAGS_samples);
  const int64_t min_len = absl::GetFlag(FLAGS_min_len), max_len = absl::GetFlag(FLAGS_max_len);
  if (out.empty() || vocab <= 0 || samples <= 0 || min_len <= 0 || max_len < min_len || vocab > (1ll << 31) - 1) {
    std::fprintf(stderr, "lowbit-gen-tokens: need --out, vocab > 0, samples > 0 and 0 < min_len <= max_len\n");
    return 2;
  }
  if (!absl::EndsWith(out, ".bin") && !absl::EndsWith(out, ".jsonl")) {
    std::fprintf(stderr, "lowbit-gen-tokens: --out '%s' must end in .jsonl (JSON lines) or .bin (+ .idx)\n", out.c_str());
    return 2;
  }
  lowbit::SyntheticTokenOptions options{vocab, samples, min_len, max_len, absl::GetFlag(FLAGS_seed)};
  const std::vector<std::vector<int32_t>> seqs = lowbit::SyntheticTokens(options);

  absl::Status status;
  if (absl::EndsWith(out, ".bin")) {
    std::string tokens, index;
    int64_t offset = 0;
    index.append(reinterpret_cast<const char*>(&offset), sizeof offset);
    for (const auto& s : seqs) {
      tokens.append(reinterpret_cast<const char*>(s.data()), s.size() * sizeof(int32_t));
      offset += static_cast<int64_t>(s.size());
      index.append(reinterpret_cast<const char*>(&offset), sizeof offset);
    }
    status = lowbit::AtomicWriteFile(out, tokens);
    if (status.ok()) status = lowbit::AtomicWriteFile(out.substr(0, out.size() - 4) + ".idx", index);
  } else {
    std::string text;
    for (const auto& s : seqs) {
      text += "{\"input_ids\": [";
      for (size_t i = 0; i < s.size(); ++i) absl::StrAppend(&text, i ? ", " : "", s[i]);
      text += "]}\n";
    }
    status = lowbit::AtomicWriteFile(out, text);
  }
  if (!status.ok()) {
    std::fprintf(stderr, "lowbit-gen-tokens: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
