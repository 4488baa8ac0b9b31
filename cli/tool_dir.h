// The --out directory of `lowbit demo` and `lowbit bench-rpc`. Both delete and rewrite their own
// subdirectories there (models/, state/, checkpoints/, ...) on each run, so they only use a
// directory that is new, empty, or was made by an earlier run of the same command: a command
// that makes (or takes an empty) directory writes its marker file there (".lowbit-demo",
// ".lowbit-bench-rpc"), and a non-empty directory without that marker is refused.
#ifndef LOWBIT_CLI_TOOL_DIR_H_
#define LOWBIT_CLI_TOOL_DIR_H_

#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace lowbit::cli {

// Makes `out` (absolute) the command's directory: creates it (and the marker) when it does not
// exist, writes the marker into an empty one, accepts one that holds the marker. Then removes
// `owned` (names of the command's own subdirectories and files) inside it. FailedPrecondition,
// naming the directory, its marker and the first entries it holds, for a non-empty directory
// without the marker or a path that is not a directory; Internal when it cannot be created.
absl::Status ClaimToolDir(const std::filesystem::path& out, const std::string& command,
                          const std::vector<std::string>& owned);
// ".lowbit-<command>".
std::string ToolDirMarker(const std::string& command);

}  // namespace lowbit::cli

#endif  // LOWBIT_CLI_TOOL_DIR_H_
