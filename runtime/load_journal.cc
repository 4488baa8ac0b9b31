#include "runtime/load_journal.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "nlohmann/json.hpp"

namespace lowbit::runtime {
namespace {

constexpr char kFormat[] = "lowbit-runtime-loaded-models/1";

absl::Status Unreadable(const std::string& file, const std::string& why) {
  return absl::FailedPreconditionError(absl::StrCat(
      "the runtime's record of loaded models '", file, "' ", why,
      "; fix or remove it (removing it starts with no models but those of --load)"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<LoadJournal>> LoadJournal::Open(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::FailedPreconditionError(absl::StrCat("cannot create --state_dir '", dir, "': ", ec.message()));
  const std::string lock = dir + "/runtime.lock";
  const int fd = open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot open the state lock", lock);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    close(fd);
    return absl::FailedPreconditionError(absl::StrCat("--state_dir '", dir,
                                                      "' is in use by another lowbit-runtime (it holds ", lock,
                                                      "); give each runtime its own state directory"));
  }
  std::unique_ptr<LoadJournal> j(new LoadJournal(dir + "/loaded-models.json", fd));
  if (!std::filesystem::exists(j->file_, ec)) return j;
  absl::StatusOr<std::string> text = ReadFileToString(j->file_);
  if (!text.ok()) return Unreadable(j->file_, absl::StrCat("cannot be read (", text.status().message(), ")"));
  const nlohmann::json doc = nlohmann::json::parse(*text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return Unreadable(j->file_, "is not JSON");
  if (doc.value("format", "") != kFormat) {
    return Unreadable(j->file_, absl::StrCat("does not say \"format\": \"", kFormat, "\""));
  }
  if (!doc.contains("models") || !doc["models"].is_object()) return Unreadable(j->file_, "has no \"models\" object");
  for (const auto& [name, path] : doc["models"].items()) {
    if (name.empty() || !path.is_string() || path.get<std::string>().empty()) {
      return Unreadable(j->file_, absl::StrCat("has an entry '", name, "' that is not a name and a path"));
    }
    j->models_[name] = path.get<std::string>();
  }
  return j;
}

LoadJournal::~LoadJournal() { close(lock_fd_); }

std::map<std::string, std::string> LoadJournal::Models() const {
  std::lock_guard<std::mutex> lock(mu_);
  return models_;
}

absl::Status LoadJournal::Record(const std::string& name, const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  auto next = models_;
  next[name] = path;
  return WriteLocked(next);
}

absl::Status LoadJournal::Forget(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!models_.count(name)) return absl::OkStatus();
  auto next = models_;
  next.erase(name);
  return WriteLocked(next);
}

absl::Status LoadJournal::WriteLocked(const std::map<std::string, std::string>& models) {
  nlohmann::json doc = {{"format", kFormat}, {"models", nlohmann::json::object()}};
  for (const auto& [name, path] : models) doc["models"][name] = path;
  if (absl::Status s = AtomicWriteFile(file_, doc.dump(2) + "\n"); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("cannot update '", file_, "': ", s.message()));
  }
  models_ = models;
  return absl::OkStatus();
}

}  // namespace lowbit::runtime
