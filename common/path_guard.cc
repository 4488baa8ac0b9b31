#include "common/path_guard.h"

#include <climits>
#include <cstdlib>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace lowbit {

absl::Status ValidatePlainName(const std::string& name, const std::string& what) {
  bool ok = !name.empty() && name.size() <= 128 && name != "." && name != "..";
  for (char c : name) {
    ok = ok && ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                c == '_' || c == '-');
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " '", name, "' is not a plain name: use 1-128 of [A-Za-z0-9._-], not '.' or '..'"));
}

namespace {
absl::StatusOr<std::string> RealPath(const std::string& path) {
  char buf[PATH_MAX];
  if (realpath(path.c_str(), buf) == nullptr) {
    int err = errno;
    if (err == ENOENT || err == ENOTDIR) return absl::NotFoundError(path);
    return absl::FailedPreconditionError(absl::StrCat(path, ": ", std::strerror(err)));
  }
  return std::string(buf);
}
}  // namespace

absl::StatusOr<std::string> ResolveUnderRoot(const std::string& root, const std::string& relative,
                                             const std::string& what) {
  if (relative.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " is empty"));
  if (relative.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(what, " contains a NUL byte"));
  }
  if (relative.front() == '/') {
    return absl::InvalidArgumentError(absl::StrCat(what, " '", relative,
                                                   "' is an absolute path; give a path relative to the root"));
  }
  for (absl::string_view part : absl::StrSplit(relative, '/')) {
    if (part == "..") {
      return absl::InvalidArgumentError(absl::StrCat(what, " '", relative, "' contains '..': it must stay inside the root"));
    }
  }
  if (root.empty()) return absl::FailedPreconditionError(absl::StrCat("no root directory is configured for ", what));
  absl::StatusOr<std::string> real_root = RealPath(root);
  if (!real_root.ok()) return absl::FailedPreconditionError(absl::StrCat("the root ", root, " does not exist"));
  absl::StatusOr<std::string> real = RealPath(absl::StrCat(*real_root, "/", relative));
  if (!real.ok()) {
    if (absl::IsNotFound(real.status())) {
      return absl::NotFoundError(absl::StrCat(what, " '", relative, "' does not exist under the root"));
    }
    return real.status();
  }
  const std::string prefix = *real_root == "/" ? "/" : *real_root + "/";
  if (*real != *real_root && real->compare(0, prefix.size(), prefix) != 0) {
    return absl::PermissionDeniedError(absl::StrCat(what, " '", relative,
                                                    "' resolves outside the root (a symlink leads out of it)"));
  }
  return *real;
}

}  // namespace lowbit
