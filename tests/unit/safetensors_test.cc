// safetensors: round trips through our writer and reader, and hand-built malformed files
// that must be refused with a clear error (never a crash).
#include "common/safetensors.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "common/file_util.h"
#include "common/safetensors_writer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("lowbit_st_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A file image from a header string and a data buffer, the length prefix computed.
  static std::vector<uint8_t> Image(const std::string& header, size_t data_bytes, int64_t length_override = -1) {
    std::vector<uint8_t> out(8);
    uint64_t n = length_override >= 0 ? static_cast<uint64_t>(length_override) : header.size();
    for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
    out.insert(out.end(), header.begin(), header.end());
    out.resize(out.size() + data_bytes, 0xAB);
    return out;
  }

  fs::path dir_;
};

TEST_F(SafetensorsTest, RoundTripEveryDType) {
  std::vector<NamedTensor> tensors;
  tensors.push_back({"f32", Tensor::FromFloats(std::vector<float>{1.5f, -2.0f, 3.25f}, {3}, DType::kF32)});
  tensors.push_back({"bf16", Tensor::FromFloats(std::vector<float>{1, 2, 3, 4}, {2, 2}, DType::kBF16)});
  tensors.push_back({"f16", Tensor::FromFloats(std::vector<float>{0.5f}, {1}, DType::kF16)});
  tensors.push_back({"fp8", Tensor::FromFloats(std::vector<float>{448, -1, 0.5f}, {1, 3}, DType::kF8E4M3)});
  std::vector<uint8_t> i8 = {1, 255, 3};
  tensors.push_back({"i8", Tensor::FromBytes(DType::kI8, {3}, i8)});
  tensors.push_back({"scalar", Tensor::FromFloats(std::vector<float>{7}, {}, DType::kF32)});
  tensors.push_back({"empty", Tensor::Zeros(DType::kI32, {0, 4})});
  std::string path = (dir_ / "t.safetensors").string();
  ASSERT_TRUE(WriteSafetensorsFile(path, tensors).ok());

  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->header().metadata.at("format"), "pt");
  EXPECT_EQ((*f)->header().data_start % 8, 0u);  // header padded to a multiple of 8
  for (const NamedTensor& t : tensors) {
    auto got = (*f)->Get(t.name);
    ASSERT_TRUE(got.ok()) << t.name;
    EXPECT_EQ(got->dtype(), t.tensor.dtype()) << t.name;
    EXPECT_EQ(got->shape(), t.tensor.shape()) << t.name;
    EXPECT_TRUE(std::equal(got->bytes().begin(), got->bytes().end(), t.tensor.bytes().begin())) << t.name;
    // Natural alignment of every tensor in the map.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(got->bytes().data()) % DTypeSize(got->dtype()), 0u) << t.name;
  }
  EXPECT_EQ((*f)->Get("fp8")->ToFloats(), (std::vector<float>{448, -1, 0.5f}));
  EXPECT_EQ((*f)->Get("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsTest, ShardsAtSizeLimitWithIndex) {
  std::vector<NamedTensor> tensors;
  for (int i = 0; i < 5; ++i) {
    tensors.push_back({"t" + std::to_string(i), Tensor::FromFloats(std::vector<float>(100, float(i)), {100}, DType::kF32)});
  }
  auto files = WriteSafetensorsModel(dir_.string(), tensors, 800);  // two tensors per shard
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(files->size(), 4u);  // 3 shards + index
  EXPECT_TRUE(fs::exists(dir_ / "model-00001-of-00003.safetensors"));
  std::ifstream in(dir_ / "model.safetensors.index.json");
  nlohmann::json index = nlohmann::json::parse(in);
  EXPECT_EQ(index["metadata"]["total_size"], 2000);
  EXPECT_EQ(index["weight_map"]["t4"], "model-00003-of-00003.safetensors");

  auto model = SafetensorsModel::Open(dir_.string());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->names().size(), 5u);
  EXPECT_EQ((*model)->Get("t3")->ToFloats()[99], 3.0f);

  // An index naming a tensor its shard does not hold is refused.
  index["weight_map"]["ghost"] = "model-00001-of-00003.safetensors";
  std::ofstream(dir_ / "model.safetensors.index.json") << index.dump();
  auto bad = SafetensorsModel::Open(dir_.string());
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("ghost"), std::string::npos);
}

// names_in_file_order: by shard, then by offset in it — the layout puts wider dtypes first, so
// in one file "b_i8" (1 byte) comes after "z_f32" though it sorts first by name.
TEST_F(SafetensorsTest, NamesInFileOrderFollowShardsAndOffsets) {
  std::vector<NamedTensor> tensors;
  tensors.push_back({"b_i8", Tensor::FromBytes(DType::kI8, {64}, std::vector<uint8_t>(64, 1))});
  tensors.push_back({"z_f32", Tensor::FromFloats(std::vector<float>(16, 1.0f), {16}, DType::kF32)});
  tensors.push_back({"a_bf16", Tensor::FromFloats(std::vector<float>(32, 1.0f), {32}, DType::kBF16)});
  ASSERT_TRUE(WriteSafetensorsModel(dir_.string(), tensors, 1 << 20).ok());  // one file
  auto model = SafetensorsModel::Open(dir_.string());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->names(), (std::vector<std::string>{"a_bf16", "b_i8", "z_f32"}));
  EXPECT_EQ((*model)->names_in_file_order(), (std::vector<std::string>{"z_f32", "a_bf16", "b_i8"}));
  // Each next tensor starts where the one before ends.
  const std::vector<std::string> order = (*model)->names_in_file_order();
  for (size_t i = 1; i < order.size(); ++i) {
    EXPECT_EQ((*model)->Find(order[i])->begin, (*model)->Find(order[i - 1])->end) << order[i];
  }
}

TEST_F(SafetensorsTest, SingleFileWhenItFits) {
  std::vector<NamedTensor> t = {{"a", Tensor::Zeros(DType::kF32, {4})}};
  auto files = WriteSafetensorsModel(dir_.string(), t, 1 << 20);
  ASSERT_TRUE(files.ok());
  EXPECT_EQ(*files, std::vector<std::string>{"model.safetensors"});
  EXPECT_FALSE(fs::exists(dir_ / "model.safetensors.index.json"));
}

struct BadCase {
  const char* name;
  std::string header;
  size_t data_bytes;
  int64_t length_override;
  const char* expect;  // substring of the error
};

TEST_F(SafetensorsTest, MalformedFilesAreRefusedWithAClearError) {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  std::vector<BadCase> cases = {
      {"truncated data", "{" + ok_entry + "}", 4, -1, "truncated"},
      {"trailing bytes", "{" + ok_entry + "}", 12, -1, "trailing"},
      {"header larger than file", "{" + ok_entry + "}", 8, 1000, "larger than the file"},
      {"header over limit", "{}", 0, int64_t{200'000'000}, "100 MB"},
      {"not json", "{\"a\": [", 0, -1, "not valid JSON"},
      {"not an object", "[1,2]", 0, -1, "not a JSON object"},
      {"bad dtype", R"({"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", 8, -1, "unsupported dtype Q7"},
      {"shape vs bytes", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, -1, "needs 12 bytes"},
      {"overlap",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       12, -1, "overlap"},
      {"gap",
       R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
       12, -1, "gap"},
      {"out of range offsets", R"({"a":{"dtype":"U8","shape":[1000000],"data_offsets":[0,1000000]}})", 8, -1,
       "truncated"},
      {"end before begin", R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}})", 8, -1, "end before begin"},
      {"negative dim", R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})", 0, -1, "bad dimension"},
      {"huge dims", R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8, -1,
       "too many elements"},
      {"duplicate name",
       R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
       2, -1, "appears twice"},
      {"metadata not strings", R"({"__metadata__":{"x":1}})", 0, -1, "not a string"},
      {"missing offsets", R"({"a":{"dtype":"U8","shape":[1]}})", 1, -1, "data_offsets"},
  };
  for (const BadCase& c : cases) {
    std::vector<uint8_t> image = Image(c.header, c.data_bytes, c.length_override);
    auto parsed = ParseSafetensors(image);
    ASSERT_FALSE(parsed.ok()) << c.name;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(parsed.status().message().find(c.expect), std::string::npos)
        << c.name << ": " << parsed.status().message();
  }
  EXPECT_FALSE(ParseSafetensors(std::vector<uint8_t>{1, 2, 3}).ok());  // shorter than 8 bytes
}

TEST_F(SafetensorsTest, OpenReportsThePath) {
  std::string path = (dir_ / "broken.safetensors").string();
  std::ofstream(path) << "garbage!";
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find(path), std::string::npos);
  EXPECT_EQ(SafetensorsFile::Open((dir_ / "missing").string()).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsTest, AtomicWriteLeavesNoTempFiles) {
  std::vector<NamedTensor> t = {{"a", Tensor::Zeros(DType::kF32, {4})}};
  ASSERT_TRUE(WriteSafetensorsFile((dir_ / "x.safetensors").string(), t).ok());
  int files = 0;
  for (auto& e : fs::directory_iterator(dir_)) {
    ++files;
    EXPECT_EQ(e.path().filename(), "x.safetensors");
  }
  EXPECT_EQ(files, 1);
}

// Every file of `dir` by name -> contents.
std::map<std::string, std::string> DirFiles(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (auto& e : fs::directory_iterator(dir)) out[e.path().filename().string()] = *ReadFileToString(e.path().string());
  return out;
}

// The streaming writer lays files out as WriteSafetensorsModel does: fed in pieces in any order,
// it must produce the same bytes (shards and index included) — pieces shuffled (written in
// place), in file order (streamed, O_DIRECT), in file order with a few pieces held back to the end
// (streamed, then in place), and whole files in reverse order with their pieces in order.
TEST_F(SafetensorsTest, ModelWriterMatchesWriteSafetensorsModelFedInAnyOrder) {
  std::mt19937 rng(7);
  std::vector<NamedTensor> tensors;
  const DType dtypes[] = {DType::kF32, DType::kBF16, DType::kI8, DType::kI32, DType::kF8E4M3};
  uint64_t total = 0;
  for (int i = 0; i < 9; ++i) {
    const DType dt = dtypes[i % 5];
    const Shape shape = {3 + i, 17};
    std::vector<uint8_t> bytes(static_cast<size_t>(NumElements(shape).value()) * DTypeSize(dt));
    for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
    total += bytes.size();
    tensors.push_back({"layer." + std::to_string(i), Tensor::FromBytes(dt, shape, bytes)});
  }
  const fs::path want = dir_ / "want";
  fs::create_directories(want);
  ASSERT_TRUE(WriteSafetensorsModel(want.string(), tensors, 600).ok());  // several shards
  auto model = SafetensorsModel::Open(want.string());
  ASSERT_TRUE(model.ok()) << model.status();
  auto want_files = DirFiles(want);
  EXPECT_GE(want_files.size(), 3u);

  std::vector<SafetensorsModelWriter::Placement> placements;
  for (const NamedTensor& t : tensors) {
    placements.push_back({t.name, t.tensor.dtype(), t.tensor.shape(), (*model)->FileOf(t.name)});
  }
  // Pieces of 7 bytes: (tensor, piece start), in file order — each file's tensors by the offset of
  // their bytes in the reference file.
  struct Piece {
    const NamedTensor* t;
    size_t at;
  };
  auto where_in_file = [&](const NamedTensor& t) { return (*model)->Get(t.name)->bytes().data(); };
  std::vector<const NamedTensor*> by_file;
  for (const NamedTensor& t : tensors) by_file.push_back(&t);
  std::sort(by_file.begin(), by_file.end(), [&](const NamedTensor* a, const NamedTensor* b) {
    const std::string fa = (*model)->FileOf(a->name), fb = (*model)->FileOf(b->name);
    return fa != fb ? fa < fb : std::less<const uint8_t*>()(where_in_file(*a), where_in_file(*b));
  });
  std::vector<Piece> in_order;
  for (const NamedTensor* t : by_file) {
    for (size_t at = 0; at < t->tensor.nbytes(); at += 7) in_order.push_back({t, at});
  }
  auto run = [&](const std::string& name, const std::vector<Piece>& pieces) -> uint64_t {
    SCOPED_TRACE(name);
    const fs::path got = dir_ / name;
    fs::create_directories(got);
    auto writer = SafetensorsModelWriter::Create(got.string(), placements);
    EXPECT_TRUE(writer.ok()) << writer.status();
    if (!writer.ok()) return 0;
    for (const Piece& p : pieces) {
      auto b = p.t->tensor.bytes().subspan(p.at, std::min<size_t>(7, p.t->tensor.nbytes() - p.at));
      EXPECT_TRUE((*writer)->Write(p.t->name, p.at, b).ok());
    }
    EXPECT_TRUE((*writer)->AddFile("config.json", "{}").ok());
    EXPECT_TRUE(DirFiles(got).count("config.json") == 0) << "nothing appears before Commit";
    auto written = (*writer)->Commit();
    EXPECT_TRUE(written.ok()) << written.status();
    if (!written.ok()) return 0;
    EXPECT_EQ(written->back(), "model.safetensors.index.json");
    auto got_files = DirFiles(got);
    EXPECT_EQ(got_files["config.json"], "{}");
    got_files.erase("config.json");
    EXPECT_EQ(got_files, want_files);
    return (*writer)->streamed_bytes();
  };

  std::vector<Piece> shuffled = in_order;
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  run("shuffled", shuffled);
  EXPECT_EQ(run("in_order", in_order), total) << "pieces in file order must all be streamed";
  std::vector<Piece> held_back;
  std::vector<Piece> tail;
  for (size_t i = 0; i < in_order.size(); ++i) (i % 37 == 5 ? tail : held_back).push_back(in_order[i]);
  held_back.insert(held_back.end(), tail.rbegin(), tail.rend());
  const uint64_t streamed = run("held_back", held_back);
  EXPECT_GT(streamed, 0u);
  EXPECT_LT(streamed, total);
  std::vector<Piece> files_reversed;
  for (size_t i = in_order.size(); i-- > 0;) {
    // Whole files from the last to the first, each file's pieces in order.
    const std::string f = (*model)->FileOf(in_order[i].t->name);
    if (i + 1 < in_order.size() && (*model)->FileOf(in_order[i + 1].t->name) == f) continue;
    size_t first = i;
    while (first > 0 && (*model)->FileOf(in_order[first - 1].t->name) == f) --first;
    files_reversed.insert(files_reversed.end(), in_order.begin() + first, in_order.begin() + i + 1);
  }
  ASSERT_EQ(files_reversed.size(), in_order.size());
  EXPECT_EQ(run("files_reversed", files_reversed), total);
}

TEST_F(SafetensorsTest, ModelWriterRefusesBadInputAndCleansUpWithoutCommit) {
  using P = SafetensorsModelWriter::Placement;
  const std::vector<P> escape = {{"a", DType::kF32, {2}, "../a.safetensors"}};
  EXPECT_EQ(SafetensorsModelWriter::Create(dir_.string(), escape).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<P> not_st = {{"a", DType::kF32, {2}, "config.json"}};
  EXPECT_EQ(SafetensorsModelWriter::Create(dir_.string(), not_st).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<P> twice = {{"a", DType::kF32, {2}, "x.safetensors"}, {"a", DType::kF32, {2}, "y.safetensors"}};
  EXPECT_EQ(SafetensorsModelWriter::Create(dir_.string(), twice).status().code(), absl::StatusCode::kInvalidArgument);
  {
    const std::vector<P> ok = {{"a", DType::kF32, {2}, "model.safetensors"}};
    auto w = SafetensorsModelWriter::Create(dir_.string(), ok);
    ASSERT_TRUE(w.ok()) << w.status();
    const uint8_t nine[9] = {};
    absl::Status past = (*w)->Write("a", 0, nine);  // 8 bytes hold two f32
    EXPECT_EQ(past.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(past.message().find("outside its 8 bytes"), std::string::npos) << past;
    EXPECT_EQ((*w)->Write("b", 0, std::span<const uint8_t>(nine, 1)).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ((*w)->AddFile("../x", "").code(), absl::StatusCode::kInvalidArgument);
    ASSERT_TRUE((*w)->Write("a", 0, std::span<const uint8_t>(nine, 8)).ok());
  }  // destroyed without Commit
  EXPECT_TRUE(fs::is_empty(dir_));

  // A directory holding another model's shards or index is refused (a reader would mix them);
  // the same files are replaced.
  const std::vector<P> one = {{"a", DType::kF32, {2}, "model.safetensors"}};
  std::ofstream(dir_ / "model-00001-of-00002.safetensors") << "x";
  auto stray = SafetensorsModelWriter::Create(dir_.string(), one);
  EXPECT_EQ(stray.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(stray.status().message().find("model-00001-of-00002.safetensors"), std::string::npos) << stray.status();
  fs::remove(dir_ / "model-00001-of-00002.safetensors");
  std::ofstream(dir_ / "model.safetensors.index.json") << "{}";
  EXPECT_EQ(SafetensorsModelWriter::Create(dir_.string(), one).status().code(), absl::StatusCode::kFailedPrecondition);
  fs::remove(dir_ / "model.safetensors.index.json");
  std::ofstream(dir_ / "model.safetensors") << "old";
  std::ofstream(dir_ / "config.json") << "{}";
  auto again = SafetensorsModelWriter::Create(dir_.string(), one);
  ASSERT_TRUE(again.ok()) << again.status();
  const float two[2] = {1.5f, -2.0f};
  ASSERT_TRUE(
      (*again)->Write("a", 0, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(two), sizeof two)).ok());
  ASSERT_TRUE((*again)->Commit().ok());
  auto model = SafetensorsFile::Open((dir_ / "model.safetensors").string());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->Get("a")->ToFloats(), (std::vector<float>{1.5f, -2.0f}));
}

}  // namespace
}  // namespace lowbit
