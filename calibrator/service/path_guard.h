// Confinement of client-given names and paths: upload and output names are plain names
// ([A-Za-z0-9._-]{1,128}, not "." or ".."), and model paths resolve inside a root directory —
// an absolute path, a ".." component, or a symlink whose target lies outside the root is
// refused (the check runs on the fully resolved path, realpath(3), after the syntactic ones).
#ifndef LOWBIT_CALIBRATOR_SERVICE_PATH_GUARD_H_
#define LOWBIT_CALIBRATOR_SERVICE_PATH_GUARD_H_

#include <string>

#include "absl/status/statusor.h"

namespace lowbit::calibrator {

// InvalidArgument naming `what` unless `name` is a plain name.
absl::Status ValidatePlainName(const std::string& name, const std::string& what);

// The canonical absolute path of `relative` inside `root`. InvalidArgument: empty, absolute,
// "..", NUL, or resolving (through symlinks) outside the root; NotFound: it does not exist.
absl::StatusOr<std::string> ResolveUnderRoot(const std::string& root, const std::string& relative,
                                             const std::string& what);

}  // namespace lowbit::calibrator

#endif  // LOWBIT_CALIBRATOR_SERVICE_PATH_GUARD_H_
