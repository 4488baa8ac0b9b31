// Runs calibration jobs: a FIFO queue and at most max_concurrent_jobs running at once, each on
// a worker thread calling RunCalibration, with its progress events turned into the job's
// JobProgress (and pushed to watchers), the job persisted through JobStore at every state change
// and at most once a second while running.
//
// States: QUEUED → RUNNING → SUCCEEDED | FAILED (error_code = the google.rpc code, and the
// message) | CANCELLED. Cancel: a queued job is cancelled at once; a running one at the
// pipeline's next check (between modules / layers). Shutdown interrupts running jobs without
// recording anything, so they are still RUNNING on disk: the next Start() queues them again
// (resumes + 1) and the pipeline continues from its last persisted layer (or from the start).
// A FAILED job keeps that per-layer state (resume_state_kept), so Retry() — after the cause is
// mended, e.g. a full disk freed — continues after its last finished layer; the state goes when
// the job succeeds or is cancelled, and, unless retried, failed_state_retention after the job
// failed (a retry then starts over; the job itself stays until Delete).
#ifndef LOWBIT_CALIBRATOR_SERVICE_JOB_RUNNER_H_
#define LOWBIT_CALIBRATOR_SERVICE_JOB_RUNNER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "calibrator/pipeline.h"
#include "calibrator/service/job_spec.h"
#include "calibrator/service/job_store.h"
#include "calibrator/service/upload_store.h"
#include "lowbit/v1/calibrator.pb.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

namespace lowbit::calibrator {

struct JobRunnerOptions {
  int max_concurrent_jobs = 1;
  PipelineOptions pipeline;
  // Persist each finished decoder layer under the job's work dir and continue from it after a
  // restart (false: an interrupted job starts over; the result is the same either way).
  bool per_layer_resume = true;
  // How long a FAILED job keeps its finished layers for Retry; then they are removed (checked
  // every failed_state_retention / 10, between 50 ms and a minute, and at Start). 0 = until the
  // job is retried or deleted.
  std::chrono::milliseconds failed_state_retention{std::chrono::hours(24 * 7)};
  // Testing aids: called on the worker thread after each progress event is recorded (may
  // block); a pause at the start of every decoder layer after the first (lets a test stop the
  // server mid-job).
  std::function<void(const std::string& job_id, const ProgressEvent& event)> on_progress;
  std::chrono::milliseconds layer_pause{0};
};

class JobRunner {
 public:
  // `registry` may be null (no metrics).
  JobRunner(JobStore* store, ServicePaths paths, JobRunnerOptions options, prometheus::Registry* registry);
  ~JobRunner();

  // Takes over the jobs the store loaded (unfinished ones are queued again) and starts the
  // workers.
  absl::Status Start();
  // Stops the workers; running jobs are interrupted and stay RUNNING on disk. Idempotent.
  void Shutdown();

  // Validates the spec (ValidateJobSpec), persists the job and queues it. AlreadyExists (naming
  // the job) when the output name is held: by a QUEUED or RUNNING job that will write it, or by a
  // SUCCEEDED job whose checkpoint it is (outputs are never replaced, so FetchResult of a job
  // always returns that job's checkpoint), or when the directory exists in the output root
  // without a job. The output of a FAILED or CANCELLED job was never published: its name may be
  // used again. The check covers the jobs reloaded from the state directory, so it holds across
  // restarts; and Start() does not resume an unfinished job whose output another job holds.
  absl::StatusOr<v1::Job> Create(const v1::JobSpec& spec);
  absl::StatusOr<v1::Job> Get(const std::string& id) const;
  // In creation order; JOB_STATE_UNSPECIFIED = all.
  std::vector<v1::Job> List(v1::JobState state) const;
  // The ids of the queued or running jobs that read upload `name` of `kind`.
  std::vector<std::string> UnfinishedUsers(v1::UploadKind kind, const std::string& name) const;
  // Removes an upload no queued or running job uses (FailedPrecondition naming one that does).
  // The check and the upload's move aside happen under the jobs' lock, and Create / Retry check
  // under it that their uploads are there, so no job is queued on an upload being removed.
  absl::StatusOr<UploadStore::Entry> RemoveUpload(v1::UploadKind kind, const std::string& name);
  // NotFound; FailedPrecondition for a job that already succeeded or failed. Cancelling a
  // cancelled job returns it unchanged.
  absl::StatusOr<v1::Job> Cancel(const std::string& id);
  // Queues a FAILED or CANCELLED job again (retries + 1, error cleared). NotFound;
  // FailedPrecondition for a job that is queued, running or succeeded; AlreadyExists when its
  // output name was taken meanwhile (by another job, or a directory in the output root).
  absl::StatusOr<v1::Job> Retry(const std::string& id);
  // Forgets a finished job: its checkpoint (SUCCEEDED, unless keep_output) is moved aside in the
  // output root (to ".deleting+<id>", a name no output can have), then the job's file goes, then
  // the checkpoint and its work dir; a crash in between is finished by the next Start(). NotFound;
  // FailedPrecondition for a queued or running job (cancel it first).
  struct Deleted {
    v1::Job job;
    int64_t freed_bytes = 0;
  };
  absl::StatusOr<Deleted> Delete(const std::string& id, bool keep_output);

  struct Snapshot {
    v1::Job job;
    uint64_t version = 0;  // grows with every change of the job
  };
  // The job once its version exceeds `after_version`, or as it is when `timeout` passes.
  absl::StatusOr<Snapshot> Wait(const std::string& id, uint64_t after_version, std::chrono::milliseconds timeout) const;

  static bool Terminal(v1::JobState state);

 private:
  struct Entry {
    v1::Job job;
    uint64_t version = 1;
    std::shared_ptr<std::atomic<bool>> cancel = std::make_shared<std::atomic<bool>>(false);
    bool user_cancelled = false;
    bool deleting = false;  // Delete() is removing its files; it leaves jobs_ after
    std::chrono::steady_clock::time_point last_persist{};
  };

  // Job `id`, or null when there is none or it is being deleted (it reads as gone).
  const Entry* LiveLocked(const std::string& id) const;
  Entry* LiveLocked(const std::string& id);
  static absl::Status NoSuchJob(const std::string& id);
  // The job other than `except` that holds output name `output`: QUEUED or RUNNING (it will
  // write it) or SUCCEEDED (it wrote it); null when none does.
  const Entry* OutputHolderLocked(const std::string& output, const std::string& except) const;
  // OK when job `id` may write output `out`: no other job holds it and no directory of that name
  // is in the output root; else AlreadyExists naming the holder.
  absl::Status CheckOutputFreeLocked(const std::string& out, const std::string& id) const;
  // NotFound when an upload `spec` reads was removed since it was validated.
  absl::Status UploadsPresentLocked(const v1::JobSpec& spec) const;
  std::vector<std::string> UnfinishedUsersLocked(v1::UploadKind kind, const std::string& name) const;
  // Start(): finishes deletes a crash interrupted (returns their ids) and removes work dirs of jobs
  // that no longer exist.
  std::set<std::string> FinishInterruptedDeletes();
  void RemoveOrphanWorkDirs() const;
  void Worker();
  void RunOne(const std::string& id);
  void OnProgress(const std::string& id, const ProgressEvent& e);
  void Finish(const std::string& id, const absl::Status& status, const CalibrationResult* result);
  // Removes the kept layers of the FAILED jobs that failed failed_state_retention ago or more
  // (the job file first, then the state). Under mu_.
  void ExpireKeptStateLocked();
  void Sweeper();
  void Persist(const std::string& id);
  void BumpLocked(Entry& e);
  void RecountLocked();
  static int64_t NowMs();

  JobStore* store_;
  ServicePaths paths_;
  JobRunnerOptions options_;

  mutable std::mutex mu_;
  mutable std::condition_variable changed_;  // any job changed
  std::condition_variable work_;             // queue_ non-empty or stopping_
  std::map<std::string, Entry> jobs_;
  std::deque<std::string> queue_;
  bool stopping_ = false;
  bool started_ = false;
  std::vector<std::thread> workers_;
  std::condition_variable sweep_;  // stopping_
  std::thread sweeper_;            // ExpireKeptStateLocked, when failed_state_retention > 0
  std::mutex persist_mu_;

  prometheus::Family<prometheus::Gauge>* jobs_gauge_ = nullptr;
  prometheus::Counter* layers_done_ = nullptr;
};

}  // namespace lowbit::calibrator

#endif  // LOWBIT_CALIBRATOR_SERVICE_JOB_RUNNER_H_
