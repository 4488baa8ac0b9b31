// `--help` for the project's binaries. Abseil's --help lists only the flags defined in a file
// named after the program (lowbit-runtime.cc, lowbit-runtime-main.cc, ...): ours define theirs in
// the main.cc beside main(), so --help printed "No flags matched". Called before
// ParseCommandLine with the caller's __FILE__, --help and --helpshort list that file's flags
// (--helpfull still lists Abseil's own too).
#ifndef LOWBIT_COMMON_FLAGS_HELP_H_
#define LOWBIT_COMMON_FLAGS_HELP_H_

#include <string>

#include "absl/flags/usage_config.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace lowbit {

inline void HelpListsFlagsOf(const char* main_file) {
  // Abseil hands the filter the file name without its leading "/" or "./" parts.
  auto bare = [](absl::string_view f) {
    while (absl::ConsumePrefix(&f, "/") || absl::ConsumePrefix(&f, "./")) {
    }
    return std::string(f);
  };
  auto mine = [bare, file = bare(main_file)](absl::string_view f) { return bare(f) == file; };
  absl::FlagsUsageConfig config;
  config.contains_help_flags = mine;
  config.contains_helpshort_flags = mine;
  absl::SetFlagsUsageConfig(config);
}

}  // namespace lowbit

#endif  // LOWBIT_COMMON_FLAGS_HELP_H_
