#include "calibrator/dataset.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "nlohmann/json.hpp"

namespace lowbit {
namespace {

using json = nlohmann::json;

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

uint64_t LoadLe(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void StoreLe(uint64_t v, int bytes, std::string& out) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

absl::StatusOr<TokenSequence> ParseJsonlLine(std::string_view line, std::string_view source, int64_t line_no) {
  auto err = [&](std::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(source), ":", line_no, ": ", std::string(what)));
  };
  json doc = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return err("not valid JSON");
  if (!doc.is_object()) return err("expected a JSON object with an \"input_ids\" array");
  auto it = doc.find("input_ids");
  if (it == doc.end()) return err("missing key \"input_ids\"");
  if (!it->is_array()) return err(absl::StrCat("\"input_ids\" is ", it->type_name(), ", expected an array of integers"));
  TokenSequence seq;
  seq.reserve(it->size());
  for (size_t i = 0; i < it->size(); ++i) {
    const json& v = (*it)[i];
    if (v.is_number_unsigned()) {
      uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
        return err(absl::StrCat("input_ids[", i, "] = ", u, " does not fit in int32"));
      }
      seq.push_back(static_cast<int32_t>(u));
    } else if (v.is_number_integer()) {
      int64_t s = v.get<int64_t>();
      if (s < std::numeric_limits<int32_t>::min() || s > std::numeric_limits<int32_t>::max()) {
        return err(absl::StrCat("input_ids[", i, "] = ", s, " does not fit in int32"));
      }
      seq.push_back(static_cast<int32_t>(s));
    } else {
      return err(absl::StrCat("input_ids[", i, "] is ", v.is_number() ? "a non-integer number" : v.type_name(),
                              ", expected an integer token id (one sequence per line)"));
    }
  }
  return seq;
}

}  // namespace

absl::StatusOr<std::vector<TokenSequence>> ParseJsonlTokens(std::string_view text, std::string_view source) {
  std::vector<TokenSequence> out;
  int64_t line_no = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;  // blank line
    absl::StatusOr<TokenSequence> seq = ParseJsonlLine(line, source, line_no);
    if (!seq.ok()) return seq.status();
    out.push_back(*std::move(seq));
  }
  return out;
}

absl::StatusOr<std::vector<TokenSequence>> ParseBinTokens(std::span<const uint8_t> tokens,
                                                          std::span<const uint8_t> index, std::string_view source) {
  const std::string src(source);
  if (tokens.size() % 4 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(src, ": token file has ", tokens.size(),
                                                   " bytes, not a multiple of 4 (int32 tokens)"));
  }
  if (index.size() % 8 != 0 || index.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(src, ": index has ", index.size(),
                                                   " bytes; expected a non-empty multiple of 8 (int64 offsets)"));
  }
  const int64_t num_tokens = static_cast<int64_t>(tokens.size() / 4);
  const int64_t num_offsets = static_cast<int64_t>(index.size() / 8);
  std::vector<int64_t> offsets(num_offsets);
  for (int64_t i = 0; i < num_offsets; ++i) {
    offsets[i] = static_cast<int64_t>(LoadLe(index.data() + 8 * i, 8));
  }
  if (offsets[0] != 0) {
    return absl::InvalidArgumentError(absl::StrCat(src, ": index offset 0 is ", offsets[0], ", expected 0"));
  }
  for (int64_t i = 1; i < num_offsets; ++i) {
    if (offsets[i] < offsets[i - 1]) {
      return absl::InvalidArgumentError(absl::StrCat(src, ": index offset ", i, " (", offsets[i],
                                                     ") is smaller than offset ", i - 1, " (", offsets[i - 1],
                                                     "); offsets must be non-decreasing"));
    }
    if (offsets[i] > num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(src, ": index offset ", i, " (", offsets[i],
                                                     ") is past the end of the token file (", num_tokens, " tokens)"));
    }
  }
  if (offsets.back() != num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(src, ": the last index offset is ", offsets.back(),
                                                   " but the token file has ", num_tokens, " tokens"));
  }
  std::vector<TokenSequence> out(num_offsets - 1);
  for (int64_t s = 0; s + 1 < num_offsets; ++s) {
    TokenSequence& seq = out[s];
    seq.resize(offsets[s + 1] - offsets[s]);
    for (int64_t t = offsets[s]; t < offsets[s + 1]; ++t) {
      seq[t - offsets[s]] = static_cast<int32_t>(static_cast<uint32_t>(LoadLe(tokens.data() + 4 * t, 4)));
    }
  }
  return out;
}

absl::StatusOr<std::vector<TokenSequence>> LoadTokenDataset(const std::string& path) {
  if (EndsWith(path, ".jsonl")) {
    absl::StatusOr<std::string> text = ReadFileToString(path);
    if (!text.ok()) return text.status();
    return ParseJsonlTokens(*text, path);
  }
  if (EndsWith(path, ".bin")) {
    const std::string idx_path = path.substr(0, path.size() - 4) + ".idx";
    absl::StatusOr<std::shared_ptr<MappedFile>> bin = MappedFile::Open(path);
    if (!bin.ok()) return bin.status();
    absl::StatusOr<std::shared_ptr<MappedFile>> idx = MappedFile::Open(idx_path);
    if (!idx.ok()) {
      return absl::Status(idx.status().code(), absl::StrCat("token file ", path, " needs its offsets index ", idx_path,
                                                            ": ", idx.status().message()));
    }
    return ParseBinTokens((*bin)->bytes(), (*idx)->bytes(), path);
  }
  return absl::InvalidArgumentError(absl::StrCat("dataset ", path,
                                                 ": unknown format; expected a .jsonl file (one {\"input_ids\": [...]} "
                                                 "per line) or a .bin token file with a .idx offsets index"));
}

absl::Status WriteJsonlTokens(const std::string& path, std::span<const TokenSequence> sequences) {
  std::string text;
  for (const TokenSequence& s : sequences) {
    text += json{{"input_ids", s}}.dump();
    text += '\n';
  }
  return AtomicWriteFile(path, text);
}

absl::Status WriteBinTokens(const std::string& bin_path, std::span<const TokenSequence> sequences) {
  if (!EndsWith(bin_path, ".bin")) return absl::InvalidArgumentError(absl::StrCat(bin_path, ": expected a .bin path"));
  std::string tokens, index;
  int64_t offset = 0;
  StoreLe(0, 8, index);
  for (const TokenSequence& s : sequences) {
    for (int32_t t : s) StoreLe(static_cast<uint32_t>(t), 4, tokens);
    offset += static_cast<int64_t>(s.size());
    StoreLe(static_cast<uint64_t>(offset), 8, index);
  }
  if (absl::Status st = AtomicWriteFile(bin_path, tokens); !st.ok()) return st;
  return AtomicWriteFile(bin_path.substr(0, bin_path.size() - 4) + ".idx", index);
}

absl::Status ValidateTokens(std::span<const TokenSequence> sequences, int64_t vocab_size) {
  if (vocab_size <= 0) return absl::InvalidArgumentError(absl::StrCat("vocab_size ", vocab_size, " must be positive"));
  for (size_t i = 0; i < sequences.size(); ++i) {
    for (size_t p = 0; p < sequences[i].size(); ++p) {
      int32_t t = sequences[i][p];
      if (t < 0 || t >= vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sample ", i, ", position ", p, ": token id ", t,
                                                       " is outside the vocabulary [0, ", vocab_size, ")"));
      }
    }
  }
  return absl::OkStatus();
}

uint64_t SplitMix64::Next() {
  state_ += 0x9E3779B97F4A7C15ull;
  uint64_t z = state_;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t SplitMix64::Below(uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
  for (;;) {
    uint64_t r = Next();
    if (r >= threshold) return r % bound;
  }
}

void ShuffleIndices(std::vector<int64_t>& v, uint64_t seed) {
  SplitMix64 rng(seed);
  for (size_t i = v.size(); i > 1; --i) {
    size_t j = static_cast<size_t>(rng.Below(i));
    std::swap(v[i - 1], v[j]);
  }
}

absl::StatusOr<DatasetSplit> SplitDataset(std::span<const TokenSequence> sequences, const DatasetOptions& options) {
  if (options.num_calibration_samples < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_calibration_samples is ", options.num_calibration_samples, "; it must be at least 1"));
  }
  if (options.max_seq_length && *options.max_seq_length < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_seq_length is ", *options.max_seq_length, "; it must be at least 1"));
  }
  if (!(options.heldout_fraction >= 0.0 && options.heldout_fraction < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("heldout_fraction is ", options.heldout_fraction, "; it must be in [0, 1)"));
  }
  DatasetSplit out;
  std::vector<int64_t> order;
  for (size_t i = 0; i < sequences.size(); ++i) {
    if (!sequences[i].empty()) order.push_back(static_cast<int64_t>(i));
  }
  const int64_t dropped = static_cast<int64_t>(sequences.size() - order.size());
  if (dropped > 0) out.warnings.push_back(absl::StrCat("dropped ", dropped, " empty sequence(s)"));
  if (order.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("the dataset has no non-empty sequences (", sequences.size(), " in all)"));
  }
  if (options.shuffle) ShuffleIndices(order, options.seed);
  const int64_t n = static_cast<int64_t>(order.size());
  int64_t k = static_cast<int64_t>(std::floor(options.heldout_fraction * static_cast<double>(n)));
  if (options.heldout_fraction > 0.0) {
    if (n >= 2) {
      k = std::clamp<int64_t>(k, 1, n - 1);
    } else {
      k = 0;
      out.warnings.push_back("only one sequence: no held-out samples for evaluation");
    }
  }
  const int64_t c = std::min(options.num_calibration_samples, n - k);
  if (c < options.num_calibration_samples) {
    out.warnings.push_back(absl::StrCat("only ", c, " calibration sample(s) available (asked for ",
                                        options.num_calibration_samples, "; ", k, " held out)"));
  }
  int64_t truncated = 0;
  auto take = [&](int64_t idx, std::vector<TokenSequence>& seqs, std::vector<int64_t>& indices) {
    const TokenSequence& s = sequences[idx];
    size_t len = s.size();
    if (options.max_seq_length && static_cast<int64_t>(len) > *options.max_seq_length) {
      len = static_cast<size_t>(*options.max_seq_length);
      ++truncated;
    }
    seqs.emplace_back(s.begin(), s.begin() + len);
    indices.push_back(idx);
  };
  for (int64_t i = 0; i < k; ++i) take(order[i], out.heldout, out.heldout_index);
  for (int64_t i = k; i < k + c; ++i) take(order[i], out.calibration, out.calibration_index);
  if (truncated > 0) {
    out.warnings.push_back(absl::StrCat("truncated ", truncated, " sequence(s) to max_seq_length ", *options.max_seq_length));
  }
  return out;
}

}  // namespace lowbit
