// Tokenized datasets: both formats, malformed inputs, the deterministic split, validation.
#include "calibrator/dataset.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "gtest/gtest.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

class DatasetFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("lowbit_ds_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  void WriteRaw(const std::string& name, const std::string& bytes) const {
    std::ofstream(Path(name), std::ios::binary) << bytes;
  }
  fs::path dir_;
};

const std::vector<TokenSequence> kSeqs = {{1, 2, 3}, {}, {2147483647, 0}, {7}};

TEST_F(DatasetFiles, JsonlRoundTrip) {
  ASSERT_TRUE(WriteJsonlTokens(Path("d.jsonl"), kSeqs).ok());
  auto got = LoadTokenDataset(Path("d.jsonl"));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, kSeqs);
}

TEST_F(DatasetFiles, BinRoundTrip) {
  ASSERT_TRUE(WriteBinTokens(Path("d.bin"), kSeqs).ok());
  EXPECT_EQ(fs::file_size(Path("d.bin")), 6u * 4);
  EXPECT_EQ(fs::file_size(Path("d.idx")), 5u * 8);
  auto got = LoadTokenDataset(Path("d.bin"));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, kSeqs);
}

TEST_F(DatasetFiles, BinIsLittleEndian) {
  // Tokens 258 (0x102) and -1; offsets 0, 1, 2.
  WriteRaw("le.bin", std::string("\x02\x01\x00\x00\xff\xff\xff\xff", 8));
  std::string idx(24, '\0');
  idx[8] = 1;
  idx[16] = 2;
  WriteRaw("le.idx", idx);
  auto got = LoadTokenDataset(Path("le.bin"));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, (std::vector<TokenSequence>{{258}, {-1}}));
}

TEST(Jsonl, AcceptsExtraKeysBlankLinesAndCrlf) {
  auto got = ParseJsonlTokens("{\"text\": \"hi\", \"input_ids\": [5, 6]}\r\n\n  \n{\"input_ids\": []}\n", "x");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, (std::vector<TokenSequence>{{5, 6}, {}}));
}

std::string JsonlError(std::string_view text) {
  auto r = ParseJsonlTokens(text, "data.jsonl");
  return r.ok() ? "OK" : std::string(r.status().message());
}

TEST(Jsonl, MalformedLinesNameTheLine) {
  EXPECT_EQ(JsonlError("{\"input_ids\": [1]}\n{\"input_ids\": [1,\n"), "data.jsonl:2: not valid JSON");
  EXPECT_EQ(JsonlError("\n{\"ids\": [1]}"), "data.jsonl:2: missing key \"input_ids\"");
  EXPECT_EQ(JsonlError("[1, 2]"), "data.jsonl:1: expected a JSON object with an \"input_ids\" array");
  EXPECT_NE(JsonlError("{\"input_ids\": \"1 2\"}").find("data.jsonl:1: \"input_ids\" is string"), std::string::npos);
  EXPECT_NE(JsonlError("{\"input_ids\": [1, 2.5]}").find("data.jsonl:1: input_ids[1] is a non-integer number"),
            std::string::npos);
  EXPECT_NE(JsonlError("{\"input_ids\": [1, 2.0]}").find("input_ids[1] is a non-integer"), std::string::npos);
  EXPECT_NE(JsonlError("{\"input_ids\": [[1, 2]]}").find("input_ids[0] is array"), std::string::npos);
  EXPECT_NE(JsonlError("{\"input_ids\": [\"3\"]}").find("input_ids[0] is string"), std::string::npos);
  EXPECT_NE(JsonlError("{\"input_ids\": [2147483648]}").find("does not fit in int32"), std::string::npos);
  EXPECT_NE(JsonlError("{\"input_ids\": [-2147483649]}").find("does not fit in int32"), std::string::npos);
  EXPECT_EQ(JsonlError("{\"input_ids\": [-2147483648]}"), "OK");  // in range; ValidateTokens rejects it
}

std::string Le64s(std::initializer_list<int64_t> v) {
  std::string s;
  for (int64_t x : v)
    for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((static_cast<uint64_t>(x) >> (8 * i)) & 0xFF));
  return s;
}

std::string BinError(const std::string& tokens, const std::string& idx) {
  auto r = ParseBinTokens({reinterpret_cast<const uint8_t*>(tokens.data()), tokens.size()},
                          {reinterpret_cast<const uint8_t*>(idx.data()), idx.size()}, "t.bin");
  return r.ok() ? "OK" : std::string(r.status().message());
}

TEST(Bin, MalformedIndexOrTokens) {
  const std::string three(12, '\0');  // three zero tokens
  EXPECT_EQ(BinError(three, Le64s({0, 1, 3})), "OK");
  EXPECT_NE(BinError(std::string(13, '\0'), Le64s({0, 3})).find("13 bytes, not a multiple of 4"), std::string::npos);
  EXPECT_NE(BinError(three, Le64s({0, 3}).substr(0, 12)).find("multiple of 8"), std::string::npos);
  EXPECT_NE(BinError(three, "").find("non-empty"), std::string::npos);
  EXPECT_NE(BinError(three, Le64s({1, 3})).find("offset 0 is 1"), std::string::npos);
  EXPECT_NE(BinError(three, Le64s({0, 2, 1, 3})).find("offset 2 (1) is smaller than offset 1 (2)"), std::string::npos);
  EXPECT_NE(BinError(three, Le64s({0, 4, 3})).find("offset 1 (4) is past the end"), std::string::npos);
  EXPECT_NE(BinError(three, Le64s({0, 2})).find("last index offset is 2 but the token file has 3"), std::string::npos);
  EXPECT_NE(BinError(three, Le64s({0, -1, 3})).find("smaller than offset 0"), std::string::npos);
}

TEST_F(DatasetFiles, LoadErrors) {
  auto missing = LoadTokenDataset(Path("nope.jsonl"));
  EXPECT_FALSE(missing.ok());
  WriteRaw("t.bin", std::string(8, '\0'));
  auto no_idx = LoadTokenDataset(Path("t.bin"));
  ASSERT_FALSE(no_idx.ok());
  EXPECT_NE(no_idx.status().message().find("t.idx"), std::string::npos) << no_idx.status();
  WriteRaw("d.txt", "1 2 3");
  auto ext = LoadTokenDataset(Path("d.txt"));
  ASSERT_FALSE(ext.ok());
  EXPECT_NE(ext.status().message().find("unknown format"), std::string::npos);
  WriteRaw("bad.jsonl", "{\"input_ids\": [1]}\n{oops}\n");
  auto bad = LoadTokenDataset(Path("bad.jsonl"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("bad.jsonl:2:"), std::string::npos) << bad.status();
}

TEST(ValidateTokens, NamesSampleAndToken) {
  std::vector<TokenSequence> seqs = {{0, 5, 9}, {3, 10}};
  EXPECT_TRUE(ValidateTokens(seqs, 11).ok());
  absl::Status st = ValidateTokens(seqs, 10);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "sample 1, position 1: token id 10 is outside the vocabulary [0, 10)");
  seqs[0][1] = -3;
  EXPECT_EQ(ValidateTokens(seqs, 10).message(), "sample 0, position 1: token id -3 is outside the vocabulary [0, 10)");
}

TEST(SplitMix64, ReferenceValues) {
  // Published SplitMix64 outputs for seed 0 (e.g. the reference C implementation by Vigna).
  SplitMix64 r(0);
  EXPECT_EQ(r.Next(), 0xE220A8397B1DCDAFull);
  EXPECT_EQ(r.Next(), 0x6E789E6AA1B965F4ull);
  EXPECT_EQ(r.Next(), 0x06C45D188009454Full);
}

TEST(SplitMix64, BelowStaysInRangeAndCoversIt) {
  SplitMix64 r(3);
  std::vector<int> counts(7, 0);
  for (int i = 0; i < 7000; ++i) {
    uint64_t v = r.Below(7);
    ASSERT_LT(v, 7u);
    ++counts[v];
  }
  for (int c : counts) EXPECT_GT(c, 800);
}

std::vector<TokenSequence> Numbered(int n) {
  std::vector<TokenSequence> s;
  for (int i = 0; i < n; ++i) s.push_back({i, i, i});
  return s;
}

TEST(SplitDataset, DeterministicBySeedAndAPartition) {
  auto seqs = Numbered(50);
  DatasetOptions o;
  o.num_calibration_samples = 40;
  auto a = SplitDataset(seqs, o);
  auto b = SplitDataset(seqs, o);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->calibration_index, b->calibration_index);
  EXPECT_EQ(a->heldout_index, b->heldout_index);
  EXPECT_EQ(a->heldout.size(), 5u);       // floor(0.1 * 50)
  EXPECT_EQ(a->calibration.size(), 40u);  // capped by num_calibration_samples
  std::set<int64_t> seen;
  for (size_t i = 0; i < a->heldout.size(); ++i) {
    EXPECT_EQ(a->heldout[i], seqs[a->heldout_index[i]]);
    seen.insert(a->heldout_index[i]);
  }
  for (size_t i = 0; i < a->calibration.size(); ++i) {
    EXPECT_EQ(a->calibration[i], seqs[a->calibration_index[i]]);
    seen.insert(a->calibration_index[i]);
  }
  EXPECT_EQ(seen.size(), 45u);  // disjoint
  // Shuffled: not the input order.
  std::vector<int64_t> first(a->heldout_index);
  EXPECT_NE(first, (std::vector<int64_t>{0, 1, 2, 3, 4}));
  o.seed = 43;
  auto c = SplitDataset(seqs, o);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(c->calibration_index, a->calibration_index);
}

TEST(SplitDataset, ShuffleMatchesTheDocumentedFisherYates) {
  // Recompute the documented algorithm with the generator directly.
  std::vector<int64_t> expect = {0, 1, 2, 3, 4, 5};
  SplitMix64 rng(42);
  for (int i = 5; i >= 1; --i) std::swap(expect[i], expect[rng.Below(i + 1)]);
  std::vector<int64_t> got = {0, 1, 2, 3, 4, 5};
  ShuffleIndices(got, 42);
  EXPECT_EQ(got, expect);
  DatasetOptions o;
  o.heldout_fraction = 0.34;  // floor(0.34 * 6) = 2
  auto s = SplitDataset(Numbered(6), o);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->heldout_index, (std::vector<int64_t>{expect[0], expect[1]}));
  EXPECT_EQ(s->calibration_index, (std::vector<int64_t>(expect.begin() + 2, expect.end())));
}

TEST(SplitDataset, NoShuffleKeepsOrder) {
  DatasetOptions o;
  o.shuffle = false;
  o.heldout_fraction = 0.25;
  o.num_calibration_samples = 2;
  auto s = SplitDataset(Numbered(8), o);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->heldout_index, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(s->calibration_index, (std::vector<int64_t>{2, 3}));
  EXPECT_TRUE(s->warnings.empty());
}

TEST(SplitDataset, HeldOutAtLeastOneAndLeavesCalibration) {
  DatasetOptions o;
  o.heldout_fraction = 0.01;  // floor(0.01 * 3) = 0 -> 1
  auto s = SplitDataset(Numbered(3), o);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->heldout.size(), 1u);
  EXPECT_EQ(s->calibration.size(), 2u);
  o.heldout_fraction = 0.99;  // floor(0.99 * 3) = 2 -> stays 2, one left for calibration
  s = SplitDataset(Numbered(3), o);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->heldout.size(), 2u);
  EXPECT_EQ(s->calibration.size(), 1u);
  o.heldout_fraction = 0.5;  // only one sequence: no held-out, warned
  s = SplitDataset(Numbered(1), o);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->heldout.empty());
  EXPECT_EQ(s->calibration.size(), 1u);
  EXPECT_FALSE(s->warnings.empty());
  o.heldout_fraction = 0.0;
  s = SplitDataset(Numbered(4), o);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->heldout.empty());
  EXPECT_EQ(s->calibration.size(), 4u);
}

TEST(SplitDataset, TruncatesAndDropsEmpty) {
  std::vector<TokenSequence> seqs = {{1, 2, 3, 4, 5}, {}, {6, 7}, {}, {8, 9, 10}};
  DatasetOptions o;
  o.shuffle = false;
  o.heldout_fraction = 0.0;
  o.max_seq_length = 3;
  auto s = SplitDataset(seqs, o);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->calibration, (std::vector<TokenSequence>{{1, 2, 3}, {6, 7}, {8, 9, 10}}));
  EXPECT_EQ(s->calibration_index, (std::vector<int64_t>{0, 2, 4}));
  bool dropped_warning = false;
  for (const std::string& w : s->warnings) dropped_warning |= w == "dropped 2 empty sequence(s)";
  EXPECT_TRUE(dropped_warning);
  // Held-out sequences are truncated too.
  o.heldout_fraction = 0.5;
  s = SplitDataset(seqs, o);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->heldout, (std::vector<TokenSequence>{{1, 2, 3}}));
}

TEST(SplitDataset, Errors) {
  DatasetOptions o;
  EXPECT_FALSE(SplitDataset(std::vector<TokenSequence>{{}, {}}, o).ok());
  EXPECT_FALSE(SplitDataset(std::vector<TokenSequence>{}, o).ok());
  o.num_calibration_samples = 0;
  EXPECT_FALSE(SplitDataset(Numbered(3), o).ok());
  o = {};
  o.max_seq_length = 0;
  EXPECT_FALSE(SplitDataset(Numbered(3), o).ok());
  o = {};
  o.heldout_fraction = 1.0;
  EXPECT_FALSE(SplitDataset(Numbered(3), o).ok());
  o.heldout_fraction = -0.1;
  EXPECT_FALSE(SplitDataset(Numbered(3), o).ok());
}

}  // namespace
}  // namespace lowbit
