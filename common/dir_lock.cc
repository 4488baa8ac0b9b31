#include "common/dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace lowbit {

absl::StatusOr<std::unique_ptr<DirectoryLock>> DirectoryLock::Acquire(const std::string& dir, const std::string& file,
                                                                      const std::string& holder) {
  const std::string path = dir + "/" + file;
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot open the lock file", path);
  // flock locks belong to the open file description: a second open in this process conflicts too.
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err != EWOULDBLOCK) {  // a filesystem without locks (ENOLCK, EOPNOTSUPP): go on unlocked, and say so
      std::fprintf(stderr, "warning: cannot lock %s (%s): nothing keeps a second server off '%s'\n", path.c_str(),
                   std::strerror(err), dir.c_str());
      return std::unique_ptr<DirectoryLock>(new DirectoryLock(fd));
    }
    close(fd);
    return absl::FailedPreconditionError(absl::StrCat("'", dir, "' is in use by another ", holder, " (it holds ", path,
                                                      "); give each one its own state directory"));
  }
  return std::unique_ptr<DirectoryLock>(new DirectoryLock(fd));
}

DirectoryLock::~DirectoryLock() { close(fd_); }

}  // namespace lowbit
