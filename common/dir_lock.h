// An exclusive lock on a state directory for as long as the object lives (flock on a file in it),
// so that two servers never write one directory's state: the second is refused at start with a
// message naming the directory. The kernel drops the lock when the process dies, kill -9 too, so a
// restart after a crash takes it at once.
#ifndef LOWBIT_COMMON_DIR_LOCK_H_
#define LOWBIT_COMMON_DIR_LOCK_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace lowbit {

class DirectoryLock {
 public:
  // Locks `dir`/`file` (created if needed). FAILED_PRECONDITION when another process (or another
  // lock in this one) holds it: "... is in use by another <holder>". On a filesystem that has no
  // locks it warns on stderr and returns an object that locks nothing.
  static absl::StatusOr<std::unique_ptr<DirectoryLock>> Acquire(const std::string& dir, const std::string& file,
                                                                const std::string& holder);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

 private:
  explicit DirectoryLock(int fd) : fd_(fd) {}
  const int fd_;
};

}  // namespace lowbit

#endif  // LOWBIT_COMMON_DIR_LOCK_H_
