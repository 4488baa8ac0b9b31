// The runtime's record of the models clients loaded, kept in a state directory so that a
// restarted runtime loads them again: `<state_dir>/loaded-models.json`, rewritten atomically
// (temp file, fsync, rename) on every load and unload; a path load is recorded by its path under
// the model root, a streamed load (LoadModelStream) by the copy of its checkpoint the runtime
// wrote under `<state_dir>/streamed/` as it arrived. A lock file keeps a second runtime off the
// same directory.
#ifndef LOWBIT_RUNTIME_LOAD_JOURNAL_H_
#define LOWBIT_RUNTIME_LOAD_JOURNAL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "common/dir_lock.h"

namespace lowbit::runtime {

class LoadJournal {
 public:
  struct Entry {
    std::string path;      // a path load: the path under the model root
    std::string streamed;  // a streamed load: its copy, relative to the state directory
  };

  // Creates `dir` (and `dir/streamed`) if needed, takes its lock, reads the record, and removes
  // the streamed copies no entry names (a load cut short by a crash, or an unload whose removal
  // did not finish). FAILED_PRECONDITION: another process holds the lock, or the record is not one
  // this runtime wrote (the message names the file: fix or remove it — nothing is dropped
  // silently).
  static absl::StatusOr<std::unique_ptr<LoadJournal>> Open(const std::string& dir);

  std::map<std::string, Entry> Models() const;
  // Adds or replaces a model's entry / removes it (no-op when absent); durable when OK. Forget
  // also removes the model's streamed copy.
  absl::Status Record(const std::string& name, const Entry& entry);
  absl::Status Forget(const std::string& name);

  const std::string& dir() const { return dir_; }
  const std::string& file() const { return file_; }
  // A new directory name under `dir()/streamed/` for a streamed copy ("streamed/<unique>"),
  // relative to dir().
  std::string NewStreamedCopyName();

 private:
  LoadJournal(std::string dir, std::unique_ptr<DirectoryLock> lock)
      : dir_(std::move(dir)), file_(dir_ + "/loaded-models.json"), lock_(std::move(lock)) {}
  absl::Status WriteLocked(const std::map<std::string, Entry>& models);
  void RemoveUnrecordedCopies();

  const std::string dir_, file_;
  const std::unique_ptr<DirectoryLock> lock_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> models_;
  uint64_t copies_made_ = 0;
};

}  // namespace lowbit::runtime

#endif  // LOWBIT_RUNTIME_LOAD_JOURNAL_H_
