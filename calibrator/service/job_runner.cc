#include "calibrator/service/job_runner.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "calibrator/compute.h"
#include "common/file_util.h"
#include "spdlog/spdlog.h"

namespace lowbit::calibrator {

namespace {

constexpr char kDeletingPrefix[] = ".deleting+";  // '+' is not in output names: no output clashes

std::string StateLabel(v1::JobState s) {
  switch (s) {
    case v1::JOB_STATE_QUEUED:
      return "queued";
    case v1::JOB_STATE_RUNNING:
      return "running";
    case v1::JOB_STATE_SUCCEEDED:
      return "succeeded";
    case v1::JOB_STATE_FAILED:
      return "failed";
    case v1::JOB_STATE_CANCELLED:
      return "cancelled";
    default:
      return "unspecified";
  }
}

}  // namespace

JobRunner::JobRunner(JobStore* store, ServicePaths paths, JobRunnerOptions options, prometheus::Registry* registry)
    : store_(store), paths_(std::move(paths)), options_(std::move(options)) {
  options_.max_concurrent_jobs = std::max(1, options_.max_concurrent_jobs);
  if (registry != nullptr) {
    jobs_gauge_ =
        &prometheus::BuildGauge().Name("lowbit_calibrator_jobs").Help("Calibration jobs by state").Register(*registry);
    layers_done_ = &prometheus::BuildCounter()
                        .Name("lowbit_calibrator_layers_done_total")
                        .Help("Decoder layers calibrated")
                        .Register(*registry)
                        .Add({});
  }
}

JobRunner::~JobRunner() { Shutdown(); }

bool JobRunner::Terminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

int64_t JobRunner::NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

const JobRunner::Entry* JobRunner::OutputHolderLocked(const std::string& output, const std::string& except) const {
  for (const auto& [id, e] : jobs_) {
    if (id == except || OutputName(e.job) != output) continue;
    const v1::JobState s = e.job.state();
    if (s == v1::JOB_STATE_QUEUED || s == v1::JOB_STATE_RUNNING || s == v1::JOB_STATE_SUCCEEDED) return &e;
  }
  return nullptr;
}

absl::Status JobRunner::NoSuchJob(const std::string& id) {
  return absl::NotFoundError(absl::StrCat("no job with id '", id, "'"));
}

const JobRunner::Entry* JobRunner::LiveLocked(const std::string& id) const {
  auto it = jobs_.find(id);
  return it == jobs_.end() || it->second.deleting ? nullptr : &it->second;
}

JobRunner::Entry* JobRunner::LiveLocked(const std::string& id) {
  return const_cast<Entry*>(static_cast<const JobRunner*>(this)->LiveLocked(id));
}

absl::Status JobRunner::CheckOutputFreeLocked(const std::string& out, const std::string& id) const {
  if (const Entry* holder = OutputHolderLocked(out, id); holder != nullptr) {
    const v1::Job& h = holder->job;
    if (h.state() == v1::JOB_STATE_SUCCEEDED) {
      return absl::AlreadyExistsError(absl::StrCat("output '", out, "' holds the checkpoint of job ", h.id(),
                                                   " (succeeded); outputs are never replaced, so choose another "
                                                   "output_name"));
    }
    return absl::AlreadyExistsError(absl::StrCat("output '", out, "' is being written by job ", h.id(), " (",
                                                 StateLabel(h.state()),
                                                 "); choose another output_name, or cancel that job first"));
  }
  // A directory no job holds (a job file lost or moved aside as corrupt, or put there by hand):
  // not replaced either.
  std::error_code ec;
  if (std::filesystem::exists(absl::StrCat(paths_.output_root, "/", out), ec)) {
    return absl::AlreadyExistsError(absl::StrCat("output '", out,
                                                 "' already exists in the output root (no job of this server holds "
                                                 "it); choose another output_name, or remove it from the server"));
  }
  return absl::OkStatus();
}

void JobRunner::BumpLocked(Entry& e) {
  ++e.version;
  changed_.notify_all();
}

void JobRunner::RecountLocked() {
  if (jobs_gauge_ == nullptr) return;
  std::map<v1::JobState, int> counts;
  for (const auto& [id, e] : jobs_) ++counts[e.job.state()];
  for (v1::JobState s : {v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_FAILED,
                         v1::JOB_STATE_CANCELLED}) {
    jobs_gauge_->Add({{"state", StateLabel(s)}}).Set(counts[s]);
  }
}

absl::Status JobRunner::Start() {
  std::vector<std::string> to_persist;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (started_) return absl::FailedPreconditionError("the job runner was already started");
    started_ = true;
    const std::set<std::string> deleted = FinishInterruptedDeletes();
    for (const v1::Job& loaded : store_->loaded()) {
      if (deleted.count(loaded.id())) continue;
      Entry e;
      e.job = loaded;
      if (e.job.state() == v1::JOB_STATE_RUNNING) {
        // Interrupted by a crash or a shutdown: queue it again; the pipeline resumes it.
        e.job.set_resumes(e.job.resumes() + 1);
        e.job.set_state(v1::JOB_STATE_QUEUED);
        to_persist.push_back(e.job.id());
        spdlog::info("job {}: interrupted while running, queued again (resume {})", e.job.id(), e.job.resumes());
      }
      jobs_.emplace(e.job.id(), std::move(e));
    }
    // An unfinished job whose output another job holds (one that succeeded, or a newer
    // unfinished one) is not resumed: it would replace that job's checkpoint. CreateJob never
    // lets two jobs hold one output, so such a job's end was not recorded (its job file could
    // not be written) or the state comes from a server that did not check; it fails instead.
    for (auto& [id, e] : jobs_) {
      if (Terminal(e.job.state())) continue;
      const Entry* holder = OutputHolderLocked(OutputName(e.job), id);
      if (holder == nullptr) continue;
      const bool newer = holder->job.created_unix_ms() > e.job.created_unix_ms() ||
                         (holder->job.created_unix_ms() == e.job.created_unix_ms() && holder->job.id() > id);
      // This job is the newer of two unfinished holders: it is kept; the older fails at its turn.
      if (holder->job.state() != v1::JOB_STATE_SUCCEEDED && !newer) continue;
      e.job.set_state(v1::JOB_STATE_FAILED);
      e.job.set_error_code(static_cast<int>(absl::StatusCode::kAlreadyExists));
      e.job.set_error_message(absl::StrCat("not resumed after the restart: its output '", OutputName(e.job),
                                           "' is held by job ", holder->job.id(), " (", StateLabel(holder->job.state()),
                                           ")"));
      e.job.set_finished_unix_ms(NowMs());
      if (std::find(to_persist.begin(), to_persist.end(), id) == to_persist.end()) to_persist.push_back(id);
      spdlog::warn("job {}: {}", id, e.job.error_message());
    }
    for (auto& [id, e] : jobs_) {
      if (e.job.state() == v1::JOB_STATE_QUEUED) queue_.push_back(id);
      if (!Terminal(e.job.state())) continue;
      if (!e.job.resume_state_kept()) {
        store_->RemoveWorkDir(id);  // a crash right after it ended
      } else if (!store_->HasWorkState(id)) {
        e.job.set_resume_state_kept(false);  // removed by hand: a retry starts over
        to_persist.push_back(id);
      }
    }
    RemoveOrphanWorkDirs();
    // Creation order (ids are time-ordered, as the store loads them).
    std::stable_sort(queue_.begin(), queue_.end(), [&](const std::string& a, const std::string& b) {
      return jobs_.at(a).job.created_unix_ms() < jobs_.at(b).job.created_unix_ms();
    });
    RecountLocked();
  }
  for (const std::string& w : store_->load_warnings()) spdlog::warn("{}", w);
  for (const std::string& id : to_persist) Persist(id);
  for (int i = 0; i < options_.max_concurrent_jobs; ++i) workers_.emplace_back([this] { Worker(); });
  if (options_.failed_state_retention.count() > 0) sweeper_ = std::thread([this] { Sweeper(); });
  return absl::OkStatus();
}

void JobRunner::Sweeper() {
  const auto every = std::clamp<std::chrono::milliseconds>(options_.failed_state_retention / 10,
                                                           std::chrono::milliseconds(50), std::chrono::minutes(1));
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    ExpireKeptStateLocked();
    sweep_.wait_for(lock, every, [&] { return stopping_; });
  }
}

void JobRunner::ExpireKeptStateLocked() {
  const int64_t cutoff = NowMs() - options_.failed_state_retention.count();
  for (auto& [id, e] : jobs_) {
    if (e.deleting || e.job.state() != v1::JOB_STATE_FAILED || !e.job.resume_state_kept()) continue;
    if (e.job.finished_unix_ms() > cutoff) continue;
    v1::Job job = e.job;
    job.set_resume_state_kept(false);
    // The record first: a crash after it leaves a work dir that Start() removes.
    if (absl::Status s = store_->Save(job); !s.ok()) {
      spdlog::error("job {}: cannot persist the end of its kept state: {}", id, s.ToString());
      continue;
    }
    store_->RemoveWorkDir(id);
    e.job = job;
    BumpLocked(e);
    spdlog::info("job {}: failed {} s ago; its {} finished layers kept for a retry were removed (a retry starts over)",
                 id, (NowMs() - job.finished_unix_ms()) / 1000, job.progress().layers_done());
  }
}

std::set<std::string> JobRunner::FinishInterruptedDeletes() {
  std::set<std::string> ids;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(paths_.output_root, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(kDeletingPrefix, 0) != 0) continue;
    const std::string id = name.substr(sizeof(kDeletingPrefix) - 1);
    if (!JobStore::ValidId(id)) continue;
    if (absl::Status s = store_->Remove(id); !s.ok()) {
      spdlog::error("job {}: cannot finish its deletion: {}", id, s.ToString());
      continue;
    }
    std::error_code rec;
    std::filesystem::remove_all(entry.path(), rec);
    store_->RemoveWorkDir(id);
    ids.insert(id);
    spdlog::info("job {}: its deletion, interrupted by a crash, is finished", id);
  }
  return ids;
}

void JobRunner::RemoveOrphanWorkDirs() const {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(store_->state_dir() + "/work", ec)) {
    const std::string id = entry.path().filename().string();
    // A delete cut short after the job's file went. Not the work dir of a job file moved aside as
    // corrupt: an operator who mends that file keeps the job's resume state.
    std::error_code cec;
    if (jobs_.count(id) == 0 && !std::filesystem::exists(store_->JobFile(id) + ".corrupt", cec)) {
      store_->RemoveWorkDir(id);
    }
  }
}

absl::StatusOr<JobRunner::Deleted> JobRunner::Delete(const std::string& id, bool keep_output) {
  Deleted out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return NoSuchJob(id);
    if (it->second.deleting) return absl::AbortedError(absl::StrCat("job ", id, " is being deleted by another call"));
    Entry& e = it->second;
    if (!Terminal(e.job.state())) {
      return absl::FailedPreconditionError(absl::StrCat("job ", id, " is ", StateLabel(e.job.state()),
                                                        "; cancel it first (lowbit jobs cancel ", id, ")"));
    }
    e.deleting = true;
    out.job = e.job;
  }
  // The checkpoint first, moved aside in one rename: from then on the delete is decided, and a
  // crash before the end is finished at the next start.
  std::string trash;
  const std::string output = absl::StrCat(paths_.output_root, "/", out.job.output_path());
  // A step failed: the checkpoint goes back and the job stays. When even that rename fails, the
  // job stays marked (it reads as gone) and the next start finishes the delete.
  auto undo = [&](const absl::Status& s) {
    std::error_code rec;
    if (!trash.empty()) std::filesystem::rename(trash, output, rec);
    if (rec) {
      spdlog::error("job {}: cannot put its checkpoint back ({}); the delete completes at the next start", id,
                    rec.message());
      return absl::Status(s.code(), absl::StrCat(s.message(), "; the delete completes at the next start"));
    }
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.at(id).deleting = false;
    return s;
  };
  std::error_code ec;
  if (out.job.state() == v1::JOB_STATE_SUCCEEDED && !keep_output && !out.job.output_path().empty() &&
      std::filesystem::exists(output, ec)) {
    out.freed_bytes += TreeBytes(output);
    const std::string aside = absl::StrCat(paths_.output_root, "/", kDeletingPrefix, id);
    std::filesystem::rename(output, aside, ec);
    if (ec) return undo(absl::InternalError(absl::StrCat("cannot move ", output, " aside: ", ec.message())));
    trash = aside;
    // Durable before the job's file goes: else a crash could leave the checkpoint under its name
    // with no job holding it.
    if (absl::Status s = SyncDirectory(paths_.output_root); !s.ok()) return undo(s);
  }
  out.freed_bytes += TreeBytes(store_->WorkDir(id)) + TreeBytes(store_->JobFile(id));
  if (absl::Status s = store_->Remove(id); !s.ok()) return undo(s);
  if (!trash.empty()) std::filesystem::remove_all(trash, ec);
  store_->RemoveWorkDir(id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.erase(id);
    RecountLocked();
    changed_.notify_all();
  }
  spdlog::info("job {}: deleted ({} bytes freed{})", id, out.freed_bytes,
               keep_output && out.job.state() == v1::JOB_STATE_SUCCEEDED ? "; its checkpoint was kept" : "");
  return out;
}

void JobRunner::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && workers_.empty()) return;
    stopping_ = true;
    for (auto& [id, e] : jobs_) {
      if (e.job.state() == v1::JOB_STATE_RUNNING) e.cancel->store(true);
    }
  }
  work_.notify_all();
  sweep_.notify_all();
  for (std::thread& t : workers_) t.join();
  workers_.clear();
  if (sweeper_.joinable()) sweeper_.join();
  changed_.notify_all();
}

absl::StatusOr<v1::Job> JobRunner::Create(const v1::JobSpec& spec) {
  if (absl::Status s = ValidateJobSpec(spec, paths_); !s.ok()) return s;
  v1::Job job;
  job.set_id(JobStore::NewId());
  *job.mutable_spec() = spec;
  job.set_state(v1::JOB_STATE_QUEUED);
  job.set_created_unix_ms(NowMs());
  job.mutable_progress()->set_eta_s(-1);
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return absl::UnavailableError("the calibrator is shutting down");
  if (absl::Status s = CheckOutputFreeLocked(OutputName(job), job.id()); !s.ok()) return s;
  if (absl::Status s = UploadsPresentLocked(spec); !s.ok()) return s;
  if (absl::Status s = store_->Save(job); !s.ok()) return s;
  Entry e;
  e.job = job;
  jobs_.emplace(job.id(), std::move(e));
  queue_.push_back(job.id());
  RecountLocked();
  work_.notify_one();
  changed_.notify_all();
  spdlog::info("job {}: created (model {}, output {})", job.id(), spec.model(), OutputName(job));
  return job;
}

absl::StatusOr<v1::Job> JobRunner::Get(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Entry* live = LiveLocked(id);
  if (live == nullptr) return NoSuchJob(id);
  return live->job;
}

std::vector<v1::Job> JobRunner::List(v1::JobState state) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<v1::Job> out;
  for (const auto& [id, e] : jobs_) {
    if (e.deleting) continue;
    if (state == v1::JOB_STATE_UNSPECIFIED || e.job.state() == state) out.push_back(e.job);
  }
  return out;
}

std::vector<std::string> JobRunner::UnfinishedUsersLocked(v1::UploadKind kind, const std::string& name) const {
  std::vector<std::string> ids;
  for (const auto& [id, e] : jobs_) {
    if (Terminal(e.job.state())) continue;
    const v1::JobSpec& s = e.job.spec();
    const bool uses =
        (kind == v1::UPLOAD_KIND_MODEL && UploadedModelName(s) == name) ||
        (kind == v1::UPLOAD_KIND_DATASET && s.data_case() == v1::JobSpec::kDataset && s.dataset() == name);
    if (uses) ids.push_back(id);
  }
  return ids;
}

std::vector<std::string> JobRunner::UnfinishedUsers(v1::UploadKind kind, const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  return UnfinishedUsersLocked(kind, name);
}

absl::StatusOr<UploadStore::Entry> JobRunner::RemoveUpload(v1::UploadKind kind, const std::string& name) {
  if (paths_.uploads == nullptr) return absl::FailedPreconditionError("this calibrator has no upload store");
  absl::StatusOr<UploadStore::Removal> removal;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> users = UnfinishedUsersLocked(kind, name);
    if (!users.empty()) {
      const v1::JobState state = jobs_.at(users[0]).job.state();
      return absl::FailedPreconditionError(absl::StrCat(
          kind == v1::UPLOAD_KIND_MODEL ? "model 'uploads/" : "dataset '", name, "' is used by job ", users[0], " (",
          StateLabel(state), ")", users.size() > 1 ? absl::StrCat(" and ", users.size() - 1, " more") : "",
          "; cancel it or let it end first"));
    }
    removal = paths_.uploads->MoveAside(kind, name);
  }
  if (!removal.ok()) return removal.status();
  paths_.uploads->Purge(*removal);  // the files, outside the lock
  spdlog::info("upload {} '{}' removed ({} bytes)", kind == v1::UPLOAD_KIND_MODEL ? "model" : "dataset", name,
               removal->entry.bytes);
  return removal->entry;
}

absl::Status JobRunner::UploadsPresentLocked(const v1::JobSpec& spec) const {
  if (paths_.uploads == nullptr) return absl::OkStatus();
  if (std::optional<std::string> model = UploadedModelName(spec)) {
    if (absl::StatusOr<std::string> d = paths_.uploads->ModelDir(*model); !d.ok()) return d.status();
  }
  if (spec.data_case() == v1::JobSpec::kDataset) {
    if (absl::StatusOr<std::string> f = paths_.uploads->DatasetFile(spec.dataset()); !f.ok()) return f.status();
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Job> JobRunner::Cancel(const std::string& id) {
  v1::Job out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Entry* live = LiveLocked(id);
    if (live == nullptr) return NoSuchJob(id);
    Entry& e = *live;
    switch (e.job.state()) {
      case v1::JOB_STATE_SUCCEEDED:
      case v1::JOB_STATE_FAILED:
        return absl::FailedPreconditionError(
            absl::StrCat("job ", id, " already ", StateLabel(e.job.state()), "; nothing to cancel"));
      case v1::JOB_STATE_QUEUED:
        queue_.erase(std::remove(queue_.begin(), queue_.end(), id), queue_.end());
        e.user_cancelled = true;
        e.job.set_state(v1::JOB_STATE_CANCELLED);
        e.job.set_error_code(static_cast<int>(absl::StatusCode::kCancelled));
        e.job.set_error_message("cancelled by the client before it started");
        e.job.set_finished_unix_ms(NowMs());
        // Recorded and its work dir removed under the lock, as Retry and Delete act under it: a
        // retry or delete right after this cancel never meets a late write of it.
        if (absl::Status s = store_->Save(e.job); !s.ok()) {
          spdlog::error("job {}: cannot persist: {}", id, s.ToString());
        }
        store_->RemoveWorkDir(id);
        RecountLocked();
        BumpLocked(e);
        spdlog::info("job {}: cancelled while queued", id);
        break;
      case v1::JOB_STATE_RUNNING:
        e.user_cancelled = true;
        e.cancel->store(true);
        break;
      default:
        break;
    }
    out = e.job;
  }
  return out;
}

absl::StatusOr<v1::Job> JobRunner::Retry(const std::string& id) {
  auto retryable = [&](const v1::Job& j) {
    if (j.state() == v1::JOB_STATE_FAILED || j.state() == v1::JOB_STATE_CANCELLED) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id, " is ", StateLabel(j.state()), "; only a failed or cancelled job can be retried"));
  };
  absl::StatusOr<v1::Job> current = Get(id);
  if (!current.ok()) return current.status();
  if (absl::Status s = retryable(*current); !s.ok()) return s;
  // What may have changed since it was created (an upload or model directory gone) is refused here.
  if (absl::Status s = ValidateJobSpec(current->spec(), paths_); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("job ", id, " cannot be retried: ", s.message()));
  }
  v1::Job job;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Entry* live = LiveLocked(id);
    if (live == nullptr) return NoSuchJob(id);
    Entry& e = *live;
    if (absl::Status s = retryable(e.job); !s.ok()) return s;  // retried meanwhile
    if (stopping_) return absl::UnavailableError("the calibrator is shutting down");
    if (absl::Status s = CheckOutputFreeLocked(OutputName(e.job), id); !s.ok()) {
      return absl::AlreadyExistsError(absl::StrCat("job ", id, " cannot be retried: ", s.message()));
    }
    if (absl::Status s = UploadsPresentLocked(e.job.spec()); !s.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("job ", id, " cannot be retried: ", s.message()));
    }
    job = e.job;
    const bool resumes = job.resume_state_kept();
    job.set_state(v1::JOB_STATE_QUEUED);
    job.set_retries(job.retries() + 1);
    job.clear_error_code();
    job.clear_error_message();
    job.clear_finished_unix_ms();
    job.clear_resume_state_kept();
    if (!resumes) job.mutable_progress()->set_layers_done(0);  // it starts over
    job.mutable_progress()->set_eta_s(-1);
    if (absl::Status s = store_->Save(job); !s.ok()) return s;
    e.job = job;
    e.cancel = std::make_shared<std::atomic<bool>>(false);
    e.user_cancelled = false;
    queue_.push_back(id);
    RecountLocked();
    BumpLocked(e);
    work_.notify_one();
  }
  spdlog::info("job {}: queued again (retry {}){}", id, job.retries(),
               job.progress().layers_done() > 0
                   ? absl::StrCat(", continuing after layer ", job.progress().layers_done() - 1)
                   : "");
  return job;
}

absl::StatusOr<JobRunner::Snapshot> JobRunner::Wait(const std::string& id, uint64_t after_version,
                                                    std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = jobs_.end();
  // Looked up on every wake: a job may be deleted while it is waited on.
  changed_.wait_for(lock, timeout, [&] {
    it = jobs_.find(id);
    return it == jobs_.end() || it->second.version > after_version || stopping_;
  });
  if (it == jobs_.end()) return NoSuchJob(id);
  return Snapshot{it->second.job, it->second.version};
}

void JobRunner::Persist(const std::string& id) {
  std::lock_guard<std::mutex> plock(persist_mu_);
  v1::Job copy;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return;
    it->second.last_persist = std::chrono::steady_clock::now();
    copy = it->second.job;
  }
  if (absl::Status s = store_->Save(copy); !s.ok()) spdlog::error("job {}: cannot persist: {}", id, s.ToString());
}

void JobRunner::Worker() {
  for (;;) {
    std::string id;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      id = queue_.front();
      queue_.pop_front();
    }
    RunOne(id);
  }
}

void JobRunner::RunOne(const std::string& id) {
  v1::Job job;
  std::shared_ptr<std::atomic<bool>> cancel;
  absl::Status conflict;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(id);
    // Gone or not queued: cancelled (and maybe deleted) after the worker took it off the queue,
    // or a second queue entry of a job cancelled and retried meanwhile.
    if (it == jobs_.end() || it->second.job.state() != v1::JOB_STATE_QUEUED || stopping_) return;
    Entry& e = it->second;
    // Start() and Create() keep one holder per output; this guards the invariant where the
    // checkpoint would be written.
    if (const Entry* holder = OutputHolderLocked(OutputName(e.job), id);
        holder != nullptr && holder->job.state() != v1::JOB_STATE_QUEUED) {
      conflict = absl::AlreadyExistsError(absl::StrCat("output '", OutputName(e.job), "' is held by job ",
                                                       holder->job.id(), " (", StateLabel(holder->job.state()),
                                                       "); this job does not replace it"));
    }
    e.job.set_state(v1::JOB_STATE_RUNNING);
    if (e.job.started_unix_ms() == 0) e.job.set_started_unix_ms(NowMs());
    cancel = e.cancel;
    job = e.job;
    RecountLocked();
    BumpLocked(e);
  }
  Persist(id);
  if (!conflict.ok()) {
    Finish(id, conflict, nullptr);
    return;
  }
  spdlog::info("job {}: running{}", id, job.resumes() > 0 ? absl::StrCat(" (resume ", job.resumes(), ")") : "");

  const std::string out_dir = absl::StrCat(paths_.output_root, "/", OutputName(job));
  absl::StatusOr<CalibrationJob> cj = BuildJobFromSpec(job.spec(), out_dir, paths_);
  if (!cj.ok()) {
    Finish(id, cj.status(), nullptr);
    return;
  }
  PipelineOptions options = options_.pipeline;
  if (options_.per_layer_resume) options.resume_dir = store_->WorkDir(id);
  absl::StatusOr<CalibrationResult> result = RunCalibration(
      *cj, options, CpuCompute(), [&](const ProgressEvent& e) { OnProgress(id, e); }, cancel.get());
  Finish(id, result.status(), result.ok() ? &*result : nullptr);
}

void JobRunner::OnProgress(const std::string& id, const ProgressEvent& ev) {
  bool persist = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Entry& e = jobs_.at(id);
    v1::JobProgress* p = e.job.mutable_progress();
    int64_t done = p->layers_done();
    if (ev.phase == "start") {
      // What this run restored: a retried or restarted job whose kept layers could not be used
      // (the model changed) starts over, and says so, instead of showing the old count.
      done = std::min(ev.layer, ev.num_layers);
      persist = done != p->layers_done();
    } else if (ev.phase == "layer_saved") {
      done = ev.layer + 1;  // on disk: a restart resumes after it
      persist = true;
    } else if (ev.phase == "write") {
      done = ev.num_layers;
    } else if (ev.phase != "smoothquant") {
      done = std::max(done, std::min(ev.layer, ev.num_layers));
    }
    if (done > p->layers_done() && ev.phase != "start" && layers_done_ != nullptr) {
      layers_done_->Increment(static_cast<double>(done - p->layers_done()));
    }
    p->set_layers_done(done);
    p->set_num_layers(ev.num_layers);
    p->set_elapsed_s(ev.elapsed_s);
    p->set_eta_s(ev.eta_s);
    if (ev.phase != "layer_saved") {
      bool new_step = ev.layer != p->layer() || ev.phase != p->phase();
      p->set_phase(ev.phase);
      p->set_layer(ev.layer);
      p->set_module(ev.module);
      if (ev.phase == "quantized") p->set_loss(ev.loss);
      persist = persist || (new_step && std::chrono::steady_clock::now() - e.last_persist > std::chrono::seconds(1));
    }
    BumpLocked(e);
  }
  if (persist) Persist(id);
  if (options_.on_progress) options_.on_progress(id, ev);
  if (ev.phase == "calibrate" && ev.layer > 0 && options_.layer_pause.count() > 0) {
    std::this_thread::sleep_for(options_.layer_pause);
  }
}

void JobRunner::Finish(const std::string& id, const absl::Status& status, const CalibrationResult* result) {
  v1::Job job;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Entry& e = jobs_.at(id);
    if (absl::IsCancelled(status) && !e.user_cancelled && stopping_) {
      // Interrupted by shutdown: leave it RUNNING on disk so the next start resumes it.
      spdlog::info("job {}: interrupted by shutdown; it resumes at the next start", id);
      return;
    }
    job = e.job;
  }
  if (status.ok()) {
    job.set_state(v1::JOB_STATE_SUCCEEDED);
    job.set_output_path(OutputName(job));
    job.set_report_json(result->report.dump(2));
    job.mutable_progress()->set_eta_s(0);
  } else if (absl::IsCancelled(status)) {
    job.set_state(v1::JOB_STATE_CANCELLED);
    job.set_error_code(static_cast<int>(status.code()));
    job.set_error_message("cancelled by the client");
  } else {
    job.set_state(v1::JOB_STATE_FAILED);
    job.set_error_code(static_cast<int>(status.code()));
    job.set_error_message(std::string(status.message()));
  }
  job.set_finished_unix_ms(NowMs());
  // A failed job keeps its finished layers for RetryJob; otherwise the resume state goes.
  const bool keep = job.state() == v1::JOB_STATE_FAILED && store_->HasWorkState(id);
  job.set_resume_state_kept(keep);
  // On disk first (the job file, then the resume state goes); then clients see it.
  {
    std::lock_guard<std::mutex> plock(persist_mu_);
    if (absl::Status s = store_->Save(job); !s.ok()) spdlog::error("job {}: cannot persist: {}", id, s.ToString());
  }
  if (!keep) store_->RemoveWorkDir(id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    Entry& e = jobs_.at(id);
    e.job = job;
    RecountLocked();
    BumpLocked(e);
  }
  if (status.ok()) {
    spdlog::info("job {}: succeeded", id);
  } else {
    spdlog::info("job {}: {}{}", id, status.ToString(),
                 keep ? absl::StrCat(" (", job.progress().layers_done(), " finished layers kept for a retry)") : "");
  }
}

}  // namespace lowbit::calibrator
