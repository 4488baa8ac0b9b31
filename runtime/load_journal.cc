#include "runtime/load_journal.h"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/dir_lock.h"
#include "common/file_util.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace lowbit::runtime {
namespace fs = std::filesystem;
namespace {

constexpr char kFormat[] = "lowbit-runtime-loaded-models/1";
constexpr char kStreamed[] = "streamed/";

absl::Status Unreadable(const std::string& file, const std::string& why) {
  return absl::FailedPreconditionError(
      absl::StrCat("the runtime's record of loaded models '", file, "' ", why,
                   "; fix or remove it (removing it starts with no models but those of --load)"));
}

// A streamed copy's name as the record may hold it: "streamed/<one plain component>".
bool IsCopyName(const std::string& s) {
  if (!absl::StartsWith(s, kStreamed)) return false;
  const std::string rest = s.substr(sizeof(kStreamed) - 1);
  return !rest.empty() && rest != "." && rest != ".." && rest.find('/') == std::string::npos;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LoadJournal>> LoadJournal::Open(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(fs::path(dir) / "streamed", ec);
  if (ec) return absl::FailedPreconditionError(absl::StrCat("cannot create --state_dir '", dir, "': ", ec.message()));
  absl::StatusOr<std::unique_ptr<DirectoryLock>> lock = DirectoryLock::Acquire(dir, "runtime.lock", "lowbit-runtime");
  if (!lock.ok()) return absl::Status(lock.status().code(), absl::StrCat("--state_dir ", lock.status().message()));
  std::unique_ptr<LoadJournal> j(new LoadJournal(dir, *std::move(lock)));
  if (fs::exists(j->file_, ec)) {
    absl::StatusOr<std::string> text = ReadFileToString(j->file_);
    if (!text.ok()) return Unreadable(j->file_, absl::StrCat("cannot be read (", text.status().message(), ")"));
    const nlohmann::json doc = nlohmann::json::parse(*text, nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) return Unreadable(j->file_, "is not JSON");
    if (doc.value("format", "") != kFormat) {
      return Unreadable(j->file_, absl::StrCat("does not say \"format\": \"", kFormat, "\""));
    }
    if (!doc.contains("models") || !doc["models"].is_object()) return Unreadable(j->file_, "has no \"models\" object");
    for (const auto& [name, e] : doc["models"].items()) {
      Entry entry;
      if (e.is_object() && e.size() == 1 && e.contains("path") && e["path"].is_string()) {
        entry.path = e["path"].get<std::string>();
      } else if (e.is_object() && e.size() == 1 && e.contains("streamed") && e["streamed"].is_string()) {
        entry.streamed = e["streamed"].get<std::string>();
      }
      if (name.empty() || (entry.path.empty() && !IsCopyName(entry.streamed))) {
        return Unreadable(j->file_, absl::StrCat("has an entry '", name,
                                                 "' that is neither {\"path\": P} nor {\"streamed\": \"streamed/D\"}"));
      }
      j->models_[name] = entry;
    }
  }
  j->RemoveUnrecordedCopies();
  return j;
}

void LoadJournal::RemoveUnrecordedCopies() {
  std::set<std::string> kept;
  for (const auto& [name, e] : models_) kept.insert(e.streamed);
  std::error_code ec;
  for (const auto& d : fs::directory_iterator(fs::path(dir_) / "streamed", ec)) {
    const std::string rel = kStreamed + d.path().filename().string();
    if (kept.count(rel)) continue;
    spdlog::info("state: removing {} (a streamed copy no recorded model uses)", d.path().string());
    fs::remove_all(d.path(), ec);
  }
}

std::map<std::string, LoadJournal::Entry> LoadJournal::Models() const {
  std::lock_guard<std::mutex> lock(mu_);
  return models_;
}

std::string LoadJournal::NewStreamedCopyName() {
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return absl::StrCat(kStreamed, std::chrono::duration_cast<std::chrono::microseconds>(now).count(), "-", getpid(), "-",
                      ++copies_made_);
}

absl::Status LoadJournal::Record(const std::string& name, const Entry& entry) {
  std::lock_guard<std::mutex> lock(mu_);
  auto next = models_;
  next[name] = entry;
  return WriteLocked(next);
}

absl::Status LoadJournal::Forget(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = models_.find(name);
  if (it == models_.end()) return absl::OkStatus();
  const std::string copy = it->second.streamed;
  auto next = models_;
  next.erase(name);
  if (absl::Status s = WriteLocked(next); !s.ok()) return s;
  if (!copy.empty()) {  // a failure here leaves a copy the next start removes
    std::error_code ec;
    fs::remove_all(fs::path(dir_) / copy, ec);
  }
  return absl::OkStatus();
}

absl::Status LoadJournal::WriteLocked(const std::map<std::string, Entry>& models) {
  nlohmann::json doc = {{"format", kFormat}, {"models", nlohmann::json::object()}};
  for (const auto& [name, e] : models) {
    doc["models"][name] =
        e.streamed.empty() ? nlohmann::json{{"path", e.path}} : nlohmann::json{{"streamed", e.streamed}};
  }
  if (absl::Status s = AtomicWriteFile(file_, doc.dump(2) + "\n"); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("cannot update '", file_, "': ", s.message()));
  }
  models_ = models;
  return absl::OkStatus();
}

}  // namespace lowbit::runtime
