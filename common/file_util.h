// Small filesystem helpers: read-only memory maps, whole-file reads, and atomic writes
// (temp file in the same directory, fsync, rename, fsync of the directory).
#ifndef LOWBIT_COMMON_FILE_UTIL_H_
#define LOWBIT_COMMON_FILE_UTIL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lowbit {

// A read-only memory map of a whole file; unmapped when the last reference goes.
class MappedFile {
 public:
  static absl::StatusOr<std::shared_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// Writes a file atomically: `write` fills a temp file beside `path` through the callback
// (returning false on a failed write), then the file is fsynced and renamed over `path`.
// A crash leaves either the old file or the new one, never a torn one.
absl::Status AtomicWriteFile(const std::string& path,
                             const std::function<bool(std::FILE*)>& write);
absl::Status AtomicWriteFile(const std::string& path, std::string_view contents);

// The two ends of that protocol, for writers other than a FILE* (AtomicWriteFileStreamed): the
// temp path beside `path`, and — once the temp file is written, fsynced and closed with status
// `written` — its rename over `path` and the directory's sync; on any error the temp file is
// removed and the error returned.
std::string AtomicTempPath(const std::string& path);
absl::Status FinishAtomicWrite(const std::string& tmp, const std::string& path, absl::Status written);

// "<what> <path>: <strerror(errno)>", as NotFound / PermissionDenied / ResourceExhausted (disk
// full) / Internal by errno.
absl::Status ErrnoError(std::string_view what, const std::string& path);

// fsyncs a directory so a rename inside it is durable.
absl::Status SyncDirectory(const std::string& dir);

// Bytes of the regular file `path`, or of every regular file under directory `path`; 0 when
// absent or unreadable.
int64_t TreeBytes(const std::string& path);

}  // namespace lowbit

#endif  // LOWBIT_COMMON_FILE_UTIL_H_
