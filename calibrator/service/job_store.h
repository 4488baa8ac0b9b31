// Durable calibration jobs: one file per job under <state_dir>/jobs/<id>.json (the lowbit.v1.Job
// message as JSON), each written atomically (temp file, fsync, rename, fsync of the directory),
// so a crash leaves the previous version or the new one, never a torn file. Open() reloads every
// job; files that do not parse are moved aside to jobs/<id>.json.corrupt and reported.
//
// <state_dir>/work/<id>/ is the job's scratch directory (the pipeline's per-layer resume state);
// it is removed when the job succeeds or is cancelled, and kept when it fails (RetryJob continues
// from it).
#ifndef LOWBIT_CALIBRATOR_SERVICE_JOB_STORE_H_
#define LOWBIT_CALIBRATOR_SERVICE_JOB_STORE_H_

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lowbit/v1/calibrator.pb.h"

namespace lowbit::calibrator {

class JobStore {
 public:
  // Creates <state_dir>/jobs and <state_dir>/work when missing and loads the jobs.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& state_dir);

  // Every job found at Open (in id order) and the problems met reading the others.
  const std::vector<v1::Job>& loaded() const { return loaded_; }
  const std::vector<std::string>& load_warnings() const { return load_warnings_; }

  // Writes the job's file atomically (serialized: concurrent saves of one job never interleave).
  absl::Status Save(const v1::Job& job);
  // Removes the job's file (and syncs the directory): the job is gone after a crash too.
  absl::Status Remove(const std::string& id);
  std::string JobFile(const std::string& id) const;  // <state_dir>/jobs/<id>.json
  std::string WorkDir(const std::string& id) const;
  void RemoveWorkDir(const std::string& id) const;
  // The job's work dir holds something (resume state a retry can continue from).
  bool HasWorkState(const std::string& id) const;
  const std::string& state_dir() const { return state_dir_; }

  // A new, unique, time-ordered id: "job-<unix ms, hex>-<random hex>".
  static std::string NewId();
  // Ids are what NewId makes: [a-z0-9-]{1,64}. Guards the paths built from them.
  static bool ValidId(const std::string& id);

 private:
  std::string state_dir_;
  std::vector<v1::Job> loaded_;
  std::vector<std::string> load_warnings_;
  std::mutex write_mu_;
};

}  // namespace lowbit::calibrator

#endif  // LOWBIT_CALIBRATOR_SERVICE_JOB_STORE_H_
