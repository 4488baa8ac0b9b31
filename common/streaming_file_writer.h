// Writes a new file from a stream of byte pieces (a network upload) with the disk writes on a
// background thread, so receiving and writing overlap, and — where the filesystem allows it —
// with O_DIRECT, so the bytes go from a few reused, aligned buffers straight to the device
// instead of through the page cache.
//
// Why: a buffered write(2) copies each byte into page-cache pages; on a VM whose guest pages are
// first touched there (fresh host memory), that copy cost the calibrator ≈ 600 ms of CPU per
// 445 MB upload, growing past 2 s as uploads filled the page cache, and the disk writes only
// began once the pages were dirty. Here the receiving thread copies each piece into a 4 MiB
// staging buffer (hot, reused: no page faults) and hands full buffers to the writer thread.
//
// Close() writes what is left (the last block padded to the direct-I/O alignment, then the file
// truncated to its real size), fsyncs and closes: only after an OK Close are the bytes durable.
// A filesystem that refuses O_DIRECT (tmpfs, some network filesystems) gets ordinary buffered
// writes from the same thread, with writeback started every 16 MiB. Not thread-safe: one
// producer.
#ifndef LOWBIT_COMMON_STREAMING_FILE_WRITER_H_
#define LOWBIT_COMMON_STREAMING_FILE_WRITER_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lowbit {

class StreamingFileWriter {
 public:
  struct Options {
    size_t buffer_bytes = size_t{4} << 20;  // a multiple of 4096
    int buffers = 4;                        // in flight at most: buffer_bytes × buffers of memory
    bool direct = true;                     // try O_DIRECT (false: buffered writes always)
  };
  // Creates (or truncates) `path`, mode 0666 & ~umask. Internal / PermissionDenied /
  // ResourceExhausted (disk full) when it cannot be created.
  static absl::StatusOr<std::unique_ptr<StreamingFileWriter>> Create(const std::string& path, Options options);
  static absl::StatusOr<std::unique_ptr<StreamingFileWriter>> Create(const std::string& path) {
    return Create(path, Options());
  }
  // Stops the writer thread and closes the file without syncing it (an abandoned upload).
  ~StreamingFileWriter();
  StreamingFileWriter(const StreamingFileWriter&) = delete;
  StreamingFileWriter& operator=(const StreamingFileWriter&) = delete;

  // Queues `bytes` for writing after what came before. Returns the writer's first error (a
  // failed write of an earlier piece: Internal, or ResourceExhausted when the disk is full).
  absl::Status Append(std::span<const uint8_t> bytes);
  // Writes the rest, truncates to size(), fsyncs and closes. The first error of any write, the
  // truncation, the fsync or the close. Once only; Append after Close is FailedPrecondition.
  absl::Status Close();

  int64_t size() const { return size_; }
  // Whether the file is written with O_DIRECT (false after a fallback to buffered writes).
  bool direct() const;

 private:
  struct Buffer {
    std::unique_ptr<uint8_t, void (*)(void*)> data{nullptr, &std::free};  // aligned_alloc'ed
    size_t used = 0;
    int64_t offset = 0;  // in the file
  };
  StreamingFileWriter(std::string path, int fd, bool direct, Options options);
  // Takes a free buffer, waiting for the writer thread if all are in flight. Under no lock.
  absl::Status TakeBuffer();
  void Submit();  // hands cur_ to the writer thread
  void WriterLoop();
  absl::Status WriteBuffer(const Buffer& b);

  const std::string path_;
  int fd_;  // -1 once closed
  const Options options_;
  int64_t size_ = 0;
  int cur_ = -1;  // index of the buffer being filled, -1 when none
  bool closed_ = false;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // a buffer queued (writer) or freed (producer)
  std::vector<Buffer> buffers_;
  std::deque<int> queued_;  // full buffers, in file order
  std::vector<int> free_;
  bool direct_;        // under mu_ (the writer thread may fall back)
  bool stop_ = false;  // no more buffers will be queued
  absl::Status error_;
  int64_t writeback_from_ = 0;  // buffered mode: end of the last sync_file_range (writer thread)
  std::thread writer_;
};

// AtomicWriteFile (common/file_util.h) for large files: `write` appends the contents to a
// StreamingFileWriter on a temp file beside `path`; then the file is closed (fsynced), renamed over
// `path` and the directory synced. A crash leaves the old file or the new one, never a torn one;
// on any error the temp file is removed.
absl::Status AtomicWriteFileStreamed(const std::string& path,
                                     const std::function<absl::Status(StreamingFileWriter&)>& write);

}  // namespace lowbit

#endif  // LOWBIT_COMMON_STREAMING_FILE_WRITER_H_
