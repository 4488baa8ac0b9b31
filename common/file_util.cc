#include "common/file_util.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace lowbit {

absl::Status ErrnoError(std::string_view what, const std::string& path) {
  int err = errno;
  std::string msg = absl::StrCat(std::string(what), " ", path, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(msg);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
  if (err == ENOSPC) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

absl::StatusOr<std::shared_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    absl::Status s = ErrnoError("cannot stat", path);
    ::close(fd);
    return s;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      absl::Status s = ErrnoError("cannot mmap", path);
      ::close(fd);
      return s;
    }
    f->data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  return f;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoError("cannot read", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status SyncDirectory(const std::string& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open directory", dir);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return ErrnoError("cannot fsync directory", dir);
  return absl::OkStatus();
}

int64_t TreeBytes(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_directory(path, ec)) {
    const uintmax_t n = std::filesystem::file_size(path, ec);
    return ec ? 0 : static_cast<int64_t>(n);
  }
  int64_t total = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(path, ec)) {
    std::error_code fec;
    if (entry.is_regular_file(fec)) total += static_cast<int64_t>(entry.file_size(fec));
  }
  return total;
}

std::string AtomicTempPath(const std::string& path) { return absl::StrCat(path, ".tmp.", ::getpid()); }

absl::Status FinishAtomicWrite(const std::string& tmp, const std::string& path, absl::Status written) {
  if (written.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) written = ErrnoError("cannot rename onto", path);
  if (!written.ok()) {
    std::remove(tmp.c_str());
    return written;
  }
  return SyncDirectory(std::filesystem::path(path).parent_path().string());
}

absl::Status AtomicWriteFile(const std::string& path, const std::function<bool(std::FILE*)>& write) {
  const std::string tmp = AtomicTempPath(path);
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return ErrnoError("cannot create", tmp);
  bool ok = write(f) && std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
  absl::Status status = ok ? absl::OkStatus() : ErrnoError("cannot write", tmp);
  if (std::fclose(f) != 0 && status.ok()) status = ErrnoError("cannot close", tmp);
  return FinishAtomicWrite(tmp, path, std::move(status));
}

absl::Status AtomicWriteFile(const std::string& path, std::string_view contents) {
  return AtomicWriteFile(path, [&](std::FILE* f) {
    return std::fwrite(contents.data(), 1, contents.size(), f) == contents.size();
  });
}

}  // namespace lowbit
