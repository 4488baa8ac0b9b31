#include "calibrator/service/job_store.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "google/protobuf/util/json_util.h"

namespace lowbit::calibrator {

namespace fs = std::filesystem;

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& state_dir) {
  if (state_dir.empty()) return absl::InvalidArgumentError("the state directory is not set");
  auto store = std::unique_ptr<JobStore>(new JobStore());
  store->state_dir_ = state_dir;
  std::error_code ec;
  for (const char* sub : {"jobs", "work"}) {
    fs::create_directories(fs::path(state_dir) / sub, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create ", state_dir, "/", sub, ": ", ec.message()));
  }
  for (const auto& entry : fs::directory_iterator(fs::path(state_dir) / "jobs", ec)) {
    const fs::path& p = entry.path();
    if (p.filename().string().find(".json.tmp.") != std::string::npos) {
      fs::remove(p, ec);  // the temp file of a write a crash interrupted
      ec.clear();
      continue;
    }
    if (p.extension() != ".json") continue;  // .corrupt files
    absl::StatusOr<std::string> text = ReadFileToString(p.string());
    v1::Job job;
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = true;
    bool ok = text.ok() &&
              google::protobuf::util::JsonStringToMessage(*text, &job, options).ok() &&
              ValidId(job.id()) && job.id() == p.stem().string();
    if (!ok) {
      store->load_warnings_.push_back(absl::StrCat(p.string(), ": not a job file; moved to .corrupt"));
      fs::rename(p, fs::path(p.string() + ".corrupt"), ec);
      continue;
    }
    store->loaded_.push_back(std::move(job));
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list ", state_dir, "/jobs: ", ec.message()));
  std::sort(store->loaded_.begin(), store->loaded_.end(),
            [](const v1::Job& a, const v1::Job& b) { return a.id() < b.id(); });
  return store;
}

absl::Status JobStore::Save(const v1::Job& job) {
  if (!ValidId(job.id())) return absl::InvalidArgumentError(absl::StrCat("bad job id '", job.id(), "'"));
  std::string text;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  if (auto s = google::protobuf::util::MessageToJsonString(job, &text, options); !s.ok()) {
    return absl::InternalError(absl::StrCat("cannot encode job ", job.id(), ": ", s.ToString()));
  }
  std::lock_guard<std::mutex> lock(write_mu_);
  return AtomicWriteFile(JobFile(job.id()), text);
}

absl::Status JobStore::Remove(const std::string& id) {
  if (!ValidId(id)) return absl::InvalidArgumentError(absl::StrCat("bad job id '", id, "'"));
  std::lock_guard<std::mutex> lock(write_mu_);
  const std::string path = JobFile(id);
  std::error_code ec;
  if (!fs::remove(path, ec) && ec) {
    return absl::InternalError(absl::StrCat("cannot remove ", path, ": ", ec.message()));
  }
  return SyncDirectory(absl::StrCat(state_dir_, "/jobs"));
}

std::string JobStore::JobFile(const std::string& id) const { return absl::StrCat(state_dir_, "/jobs/", id, ".json"); }

std::string JobStore::WorkDir(const std::string& id) const { return absl::StrCat(state_dir_, "/work/", id); }

void JobStore::RemoveWorkDir(const std::string& id) const {
  if (!ValidId(id)) return;
  std::error_code ec;
  fs::remove_all(WorkDir(id), ec);
}

bool JobStore::HasWorkState(const std::string& id) const {
  if (!ValidId(id)) return false;
  std::error_code ec;
  return fs::is_directory(WorkDir(id), ec) && !fs::is_empty(WorkDir(id), ec) && !ec;
}

std::string JobStore::NewId() {
  static std::mutex mu;
  static std::mt19937_64 rng(std::random_device{}());
  std::lock_guard<std::mutex> lock(mu);
  int64_t ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::system_clock::now().time_since_epoch()).count();
  return absl::StrFormat("job-%011x-%06x", ms, rng() & 0xffffff);
}

bool JobStore::ValidId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; });
}

}  // namespace lowbit::calibrator
