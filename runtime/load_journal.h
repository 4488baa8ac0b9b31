// The runtime's record of the models clients loaded from a path (LoadModel with a path under
// the model root), kept in a state directory so that a restarted runtime loads them again:
// `<state_dir>/loaded-models.json`, rewritten atomically (temp file, fsync, rename) on every
// load and unload, and a lock file that keeps a second runtime off the same directory.
// Streamed loads (LoadModelStream) are not recorded: their bytes were never on the server's disk.
#ifndef LOWBIT_RUNTIME_LOAD_JOURNAL_H_
#define LOWBIT_RUNTIME_LOAD_JOURNAL_H_

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"

namespace lowbit::runtime {

class LoadJournal {
 public:
  // Creates `dir` if needed, takes its lock and reads the record. FAILED_PRECONDITION: another
  // process holds the lock, or the record is not one this runtime wrote (the message names the
  // file: fix or remove it — nothing is dropped silently).
  static absl::StatusOr<std::unique_ptr<LoadJournal>> Open(const std::string& dir);
  ~LoadJournal();

  // model name -> path under the model root, as recorded.
  std::map<std::string, std::string> Models() const;
  // Adds or replaces a model's entry / removes it (no-op when absent); durable when OK.
  absl::Status Record(const std::string& name, const std::string& path);
  absl::Status Forget(const std::string& name);

  const std::string& file() const { return file_; }

 private:
  LoadJournal(std::string file, int lock_fd) : file_(std::move(file)), lock_fd_(lock_fd) {}
  absl::Status WriteLocked(const std::map<std::string, std::string>& models);

  const std::string file_;
  const int lock_fd_;
  mutable std::mutex mu_;
  std::map<std::string, std::string> models_;
};

}  // namespace lowbit::runtime

#endif  // LOWBIT_RUNTIME_LOAD_JOURNAL_H_
