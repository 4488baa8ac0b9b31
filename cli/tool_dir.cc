#include "cli/tool_dir.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"

namespace lowbit::cli {
namespace fs = std::filesystem;

std::string ToolDirMarker(const std::string& command) { return ".lowbit-" + command; }

absl::Status ClaimToolDir(const fs::path& out, const std::string& command, const std::vector<std::string>& owned) {
  const std::string marker = ToolDirMarker(command);
  const fs::path marker_path = out / marker;
  std::error_code ec;
  const fs::file_status st = fs::status(out, ec);
  bool claimed = false;
  if (fs::exists(st)) {
    if (!fs::is_directory(st)) {
      return absl::FailedPreconditionError(absl::StrCat("--out '", out.string(), "' is not a directory"));
    }
    claimed = fs::is_regular_file(fs::symlink_status(marker_path, ec));
    if (!claimed) {
      std::vector<std::string> held;
      size_t count = 0;
      for (const auto& e : fs::directory_iterator(out, ec)) {
        if (++count <= 5) held.push_back(e.path().filename().string());
      }
      if (ec)
        return absl::FailedPreconditionError(absl::StrCat("cannot list --out '", out.string(), "': ", ec.message()));
      if (count > 0) {
        std::sort(held.begin(), held.end());
        return absl::FailedPreconditionError(absl::StrCat(
            "--out '", out.string(), "' is not empty (it holds ", absl::StrJoin(held, ", "),
            count > held.size() ? absl::StrCat(" and ", count - held.size(), " more") : "",
            ") and was not made by lowbit ", command, " (no ", marker, " in it): lowbit ", command,
            " deletes and rewrites ", absl::StrJoin(owned, ", "),
            " there, so it only uses a new or empty directory or one an earlier run made; choose another --out"));
      }
    }
  } else {
    fs::create_directories(out, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create --out '", out.string(), "': ", ec.message()));
  }
  if (!claimed) {
    absl::Status s = AtomicWriteFile(marker_path.string(),
                                     absl::StrCat("made by `lowbit ", command, "`, which deletes and rewrites ",
                                                  absl::StrJoin(owned, ", "), " here on each run\n"));
    if (!s.ok()) return s;
  }
  for (const std::string& name : owned) {
    fs::remove_all(out / name, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot remove '", (out / name).string(), "': ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace lowbit::cli
