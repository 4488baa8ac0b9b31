#include "common/streaming_file_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace lowbit {

namespace {

constexpr size_t kAlign = 4096;                        // O_DIRECT: buffer address, length and offset
constexpr int64_t kWritebackStep = int64_t{16} << 20;  // buffered mode: start the disk every 16 MiB

size_t RoundUp(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

int OpenFlags(bool direct) { return O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | (direct ? O_DIRECT : 0); }

}  // namespace

absl::StatusOr<std::unique_ptr<StreamingFileWriter>> StreamingFileWriter::Create(const std::string& path,
                                                                                 Options options) {
  if (options.buffer_bytes == 0 || options.buffer_bytes % kAlign != 0 || options.buffers < 1) {
    return absl::InvalidArgumentError(absl::StrCat("StreamingFileWriter: buffer_bytes (", options.buffer_bytes,
                                                   ") must be a positive multiple of 4096 and buffers (",
                                                   options.buffers, ") at least 1"));
  }
  bool direct = options.direct;
  int fd = open(path.c_str(), OpenFlags(direct), 0666);
  if (fd < 0 && direct && errno == EINVAL) {  // the filesystem has no O_DIRECT
    direct = false;
    fd = open(path.c_str(), OpenFlags(false), 0666);
  }
  if (fd < 0) return ErrnoError("cannot create", path);
  return std::unique_ptr<StreamingFileWriter>(new StreamingFileWriter(path, fd, direct, options));
}

StreamingFileWriter::StreamingFileWriter(std::string path, int fd, bool direct, Options options)
    : path_(std::move(path)), fd_(fd), options_(options), direct_(direct) {
  buffers_.resize(options_.buffers);
  for (int i = 0; i < options_.buffers; ++i) {
    buffers_[i].data.reset(static_cast<uint8_t*>(std::aligned_alloc(kAlign, options_.buffer_bytes)));
    if (buffers_[i].data != nullptr) free_.push_back(i);
  }
  if (free_.empty()) error_ = absl::ResourceExhaustedError(absl::StrCat("no memory for the write buffers of ", path_));
  writer_ = std::thread([this] { WriterLoop(); });
}

StreamingFileWriter::~StreamingFileWriter() {
  if (writer_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (error_.ok()) error_ = absl::CancelledError("abandoned");  // queued buffers are not written
      stop_ = true;
    }
    cv_.notify_all();
    writer_.join();
  }
  if (fd_ >= 0) close(fd_);
}

bool StreamingFileWriter::direct() const {
  std::lock_guard<std::mutex> lock(mu_);
  return direct_;
}

absl::Status StreamingFileWriter::TakeBuffer() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !free_.empty() || !error_.ok(); });
  if (!error_.ok()) return error_;
  cur_ = free_.back();
  free_.pop_back();
  buffers_[cur_].used = 0;
  buffers_[cur_].offset = size_;
  return absl::OkStatus();
}

void StreamingFileWriter::Submit() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queued_.push_back(cur_);
  }
  cur_ = -1;
  cv_.notify_all();
}

absl::Status StreamingFileWriter::Append(std::span<const uint8_t> bytes) {
  if (closed_) return absl::FailedPreconditionError(absl::StrCat("append to ", path_, " after Close"));
  while (!bytes.empty()) {
    if (cur_ < 0) {
      if (absl::Status s = TakeBuffer(); !s.ok()) return s;
    }
    // The buffer being filled is neither free nor queued: only this thread touches it.
    Buffer& b = buffers_[cur_];
    const size_t n = std::min(bytes.size(), options_.buffer_bytes - b.used);
    std::memcpy(b.data.get() + b.used, bytes.data(), n);
    b.used += n;
    size_ += static_cast<int64_t>(n);
    bytes = bytes.subspan(n);
    if (b.used == options_.buffer_bytes) Submit();
  }
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

absl::Status StreamingFileWriter::Close() {
  if (closed_) return absl::FailedPreconditionError(absl::StrCat(path_, " is already closed"));
  closed_ = true;
  if (cur_ >= 0) {
    Buffer& b = buffers_[cur_];
    // The last block goes out whole under O_DIRECT: zeros after the data, cut off below.
    std::memset(b.data.get() + b.used, 0, RoundUp(b.used) - b.used);
    if (b.used > 0) Submit();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  writer_.join();
  absl::Status status = error_;  // the writer thread has ended
  if (status.ok() && ftruncate(fd_, size_) != 0) status = ErrnoError("cannot truncate", path_);
  if (status.ok() && fsync(fd_) != 0) status = ErrnoError("cannot sync", path_);
  if (close(fd_) != 0 && status.ok()) status = ErrnoError("cannot close", path_);
  fd_ = -1;
  return status;
}

void StreamingFileWriter::WriterLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return !queued_.empty() || stop_; });
    if (queued_.empty()) return;  // stopped, and everything queued is handled
    const int i = queued_.front();
    queued_.pop_front();
    const Buffer& b = buffers_[i];   // queued: the producer leaves it alone until it is free again
    const bool skip = !error_.ok();  // after an error (or when abandoned) nothing more is written
    lock.unlock();
    absl::Status s = skip ? absl::OkStatus() : WriteBuffer(b);
    lock.lock();
    if (!s.ok() && error_.ok()) error_ = s;
    free_.push_back(i);
    cv_.notify_all();
  }
}

// Runs on the writer thread only, which is also the only writer of direct_.
absl::Status StreamingFileWriter::WriteBuffer(const Buffer& b) {
  bool direct = direct_;
  size_t len = direct ? RoundUp(b.used) : b.used;
  size_t done = 0;
  while (done < len) {
    const ssize_t n = pwrite(fd_, b.data.get() + done, len - done, b.offset + static_cast<int64_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL && direct && done == 0) {
      // The filesystem accepted O_DIRECT at open but refuses these writes: buffered from here on.
      if (fcntl(fd_, F_SETFL, fcntl(fd_, F_GETFL) & ~O_DIRECT) != 0) return ErrnoError("cannot write", path_);
      std::lock_guard<std::mutex> lock(mu_);
      direct_ = direct = false;
      len = b.used;
      continue;
    }
    if (n < 0) return ErrnoError("cannot write", path_);
    if (n == 0) return absl::InternalError(absl::StrCat("cannot write ", path_, ": no progress"));
    done += static_cast<size_t>(n);
  }
  const int64_t end = b.offset + static_cast<int64_t>(len);
  if (!direct && end - writeback_from_ >= kWritebackStep) {
    sync_file_range(fd_, writeback_from_, end - writeback_from_, SYNC_FILE_RANGE_WRITE);
    writeback_from_ = end;
  }
  return absl::OkStatus();
}

absl::Status AtomicWriteFileStreamed(const std::string& path,
                                     const std::function<absl::Status(StreamingFileWriter&)>& write) {
  const std::string tmp = AtomicTempPath(path);
  absl::StatusOr<std::unique_ptr<StreamingFileWriter>> w = StreamingFileWriter::Create(tmp);
  if (!w.ok()) return w.status();
  absl::Status status = write(**w);
  if (status.ok()) status = (*w)->Close();
  w->reset();  // closes the file (without a sync) if Close was not reached
  return FinishAtomicWrite(tmp, path, std::move(status));
}

}  // namespace lowbit
