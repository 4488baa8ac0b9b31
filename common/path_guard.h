// Confinement of client-given names and paths (both services): names are plain names
// ([A-Za-z0-9._-]{1,128}, not "." or ".."), and model paths resolve inside a root directory —
// an absolute path, a ".." component, or a symlink whose target lies outside the root is
// refused (the check runs on the fully resolved path, realpath(3), after the syntactic ones).
#ifndef LOWBIT_COMMON_PATH_GUARD_H_
#define LOWBIT_COMMON_PATH_GUARD_H_

#include <string>

#include "absl/status/statusor.h"

namespace lowbit {

// InvalidArgument naming `what` unless `name` is a plain name.
absl::Status ValidatePlainName(const std::string& name, const std::string& what);

// The canonical absolute path of `relative` inside `root`. InvalidArgument: empty, absolute,
// "..", NUL; PermissionDenied: it resolves (through symlinks) outside the root; NotFound: it
// does not exist; FailedPrecondition: no root is configured or it does not exist.
absl::StatusOr<std::string> ResolveUnderRoot(const std::string& root, const std::string& relative,
                                             const std::string& what);

}  // namespace lowbit

#endif  // LOWBIT_COMMON_PATH_GUARD_H_
