// StreamingFileWriter: the file holds exactly the bytes appended, in order, whatever the piece
// sizes against the buffer size (the expectation is the concatenation, read back from disk); the
// O_DIRECT path, the buffered path, tmpfs;
// errors (a full disk, a missing directory, use after Close) come back as statuses, never a hang;
// AtomicWriteFileStreamed replaces a file whole or not at all.
#include "common/streaming_file_writer.h"

#include <filesystem>
#include <random>
#include <thread>
#include <vector>

#include "common/file_util.h"
#include "gtest/gtest.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

class StreamingFileWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("lowbit_sfw_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<uint8_t> v(n);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    return v;
  }

  // Writes `data` in random pieces of 0..max_piece bytes and checks the file against it.
  static void RoundTrip(const std::string& path, const std::vector<uint8_t>& data, size_t max_piece,
                        StreamingFileWriter::Options options, bool* direct_out = nullptr) {
    auto w = StreamingFileWriter::Create(path, options);
    ASSERT_TRUE(w.ok()) << w.status();
    std::mt19937 rng(static_cast<uint32_t>(data.size()));
    size_t at = 0;
    while (at < data.size()) {
      const size_t n = std::min(data.size() - at, static_cast<size_t>(rng() % (max_piece + 1)));
      ASSERT_TRUE((*w)->Append({data.data() + at, n}).ok());
      at += n;
    }
    EXPECT_EQ((*w)->size(), static_cast<int64_t>(data.size()));
    if (direct_out != nullptr) *direct_out = (*w)->direct();
    ASSERT_TRUE((*w)->Close().ok());
    absl::StatusOr<std::string> back = ReadFileToString(path);
    ASSERT_TRUE(back.ok()) << back.status();
    ASSERT_EQ(back->size(), data.size()) << path;
    EXPECT_TRUE(std::equal(data.begin(), data.end(), reinterpret_cast<const uint8_t*>(back->data()))) << path;
  }

  fs::path dir_;
};

TEST_F(StreamingFileWriterTest, FileHoldsTheBytesForEverySizeAroundTheBlocksAndBuffers) {
  StreamingFileWriter::Options small;
  small.buffer_bytes = 8192;
  small.buffers = 2;  // the producer waits for the writer thread most of the time
  for (bool direct : {true, false}) {
    small.direct = direct;
    for (size_t n : {size_t{0}, size_t{1}, size_t{4095}, size_t{4096}, size_t{4097}, size_t{8192}, size_t{8193},
                     size_t{3 * 8192}, size_t{3 * 8192 + 5}, size_t{100000}}) {
      SCOPED_TRACE(testing::Message() << "direct " << direct << " size " << n);
      RoundTrip((dir_ / ("f" + std::to_string(n))).string(), RandomBytes(n, static_cast<uint32_t>(n)), 5000, small);
      if (HasFatalFailure()) return;
    }
  }
}

TEST_F(StreamingFileWriterTest, LargePiecesAcrossManyBuffersWithTheDefaults) {
  // 20 MiB + 3 bytes in pieces up to 1.5 MiB (a gRPC message's worth) through 4 MiB buffers.
  RoundTrip((dir_ / "big").string(), RandomBytes((size_t{20} << 20) + 3, 7), size_t{3} << 19,
            StreamingFileWriter::Options());
}

TEST_F(StreamingFileWriterTest, TmpfsToo) {
  // tmpfs took O_DIRECT only from Linux 6.6; older kernels refuse it at open and the writer falls
  // back to buffered writes. Either way the bytes must arrive. (Every filesystem on the build
  // machine accepts O_DIRECT, so the fallback itself is not exercised there.)
  const fs::path shm = fs::path("/dev/shm") / ("lowbit_sfw_" + std::to_string(::getpid()));
  std::error_code ec;
  fs::create_directories(shm, ec);
  const fs::path where = ec ? dir_ : shm;
  RoundTrip((where / "f").string(), RandomBytes(50000, 3), 7000, StreamingFileWriter::Options());
  fs::remove_all(shm, ec);
}

TEST_F(StreamingFileWriterTest, FullDiskIsResourceExhaustedAndNothingHangs) {
  // /dev/full fails every write with ENOSPC. With two small buffers the producer blocks waiting
  // for a free one: the writer's failure must wake it with the error.
  StreamingFileWriter::Options small;
  small.buffer_bytes = 4096;
  small.buffers = 2;
  auto w = StreamingFileWriter::Create("/dev/full", small);
  ASSERT_TRUE(w.ok()) << w.status();
  const std::vector<uint8_t> data = RandomBytes(64 << 10, 1);
  absl::Status s;
  for (int i = 0; i < 16 && s.ok(); ++i) s = (*w)->Append({data.data() + i * 4096, 4096});
  absl::Status closed = (*w)->Close();
  EXPECT_EQ(closed.code(), absl::StatusCode::kResourceExhausted) << closed;
  if (!s.ok()) {
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  }
  EXPECT_EQ((*w)->Append({data.data(), 1}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*w)->Close().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(StreamingFileWriterTest, BadPathAndBadOptionsAreRefused) {
  EXPECT_EQ(StreamingFileWriter::Create((dir_ / "no" / "such" / "dir" / "f").string()).status().code(),
            absl::StatusCode::kNotFound);
  StreamingFileWriter::Options odd;
  odd.buffer_bytes = 5000;
  EXPECT_EQ(StreamingFileWriter::Create((dir_ / "f").string(), odd).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(StreamingFileWriterTest, AbandonedWriterStopsWithoutClose) {
  // Destroyed mid-stream with buffers queued: returns, and the file is left for the caller to
  // remove (an abandoned upload's temp directory).
  StreamingFileWriter::Options small;
  small.buffer_bytes = 4096;
  small.buffers = 3;
  const std::string path = (dir_ / "abandoned").string();
  {
    auto w = StreamingFileWriter::Create(path, small);
    ASSERT_TRUE(w.ok());
    const std::vector<uint8_t> data = RandomBytes(40000, 2);
    ASSERT_TRUE((*w)->Append(data).ok());
  }
  EXPECT_TRUE(fs::exists(path));
  EXPECT_LE(fs::file_size(path), 40960u);
}

TEST_F(StreamingFileWriterTest, AtomicWriteFileStreamedReplacesWholeOrNotAtAll) {
  const std::string path = (dir_ / "state.safetensors").string();
  ASSERT_TRUE(AtomicWriteFile(path, "old contents").ok());
  const std::vector<uint8_t> data = RandomBytes((size_t{9} << 20) + 17, 5);
  // A write that fails halfway leaves the old file and no temp file.
  absl::Status failed = AtomicWriteFileStreamed(path, [&](StreamingFileWriter& w) {
    absl::Status s = w.Append({data.data(), data.size() / 2});
    return s.ok() ? absl::InternalError("the producer failed") : s;
  });
  EXPECT_EQ(failed.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(*ReadFileToString(path), "old contents");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1) << "a temp file was left";
  // A whole write replaces it.
  ASSERT_TRUE(AtomicWriteFileStreamed(path, [&](StreamingFileWriter& w) { return w.Append(data); }).ok());
  absl::StatusOr<std::string> back = ReadFileToString(path);
  ASSERT_TRUE(back.ok());
  ASSERT_EQ(back->size(), data.size());
  EXPECT_TRUE(std::equal(data.begin(), data.end(), reinterpret_cast<const uint8_t*>(back->data())));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

}  // namespace
}  // namespace lowbit
