// A Lowbit service started as a child process (for `lowbit demo` and the benchmarks): waits for
// its "listening on HOST:PORT" line, stops it with SIGTERM (then SIGKILL) when destroyed.
// Children are started without a shell (fork + execve) and with PR_SET_PDEATHSIG = SIGTERM, so
// they stop when this process dies, however it dies (a signal, an abort); secrets travel in
// their environment, not in argv (which `ps` shows to every user).
#ifndef LOWBIT_CLI_SERVICE_PROCESS_H_
#define LOWBIT_CLI_SERVICE_PROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lowbit::cli {

// Environment variables to set (or, with an empty value, to set empty) in a child, on top of
// this process's environment.
using EnvOverrides = std::map<std::string, std::string>;

class ServiceProcess {
 public:
  // Runs `binary args...` with stdout piped; stderr goes to `log_path` (appended); `env` on top
  // of this process's environment. Returns once the process printed its listening line, or an
  // error with the log's tail.
  static absl::StatusOr<std::unique_ptr<ServiceProcess>> Start(const std::string& binary,
                                                               const std::vector<std::string>& args,
                                                               const std::string& log_path,
                                                               const EnvOverrides& env = {},
                                                               std::chrono::seconds timeout = std::chrono::seconds(60));
  ~ServiceProcess();
  const std::string& address() const { return address_; }
  pid_t pid() const { return pid_; }
  // SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status (or -signal).
  int Stop(std::chrono::milliseconds grace = std::chrono::milliseconds(5000));
  void Kill();  // SIGKILL at once

 private:
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string address_;
};

// Runs `binary args...` to the end without a shell, its stdout and stderr appended to `log_path`
// (which may hold any character). Returns its exit status, or -signal when a signal ended it.
absl::StatusOr<int> RunLogged(const std::string& binary, const std::vector<std::string>& args,
                              const std::string& log_path);

// Finds a Lowbit binary: next to this executable, in the build tree beside it
// (../calibrator/, ../runtime/), or on PATH.
std::string FindSiblingBinary(const std::string& name, const std::string& build_subdir);

}  // namespace lowbit::cli

#endif  // LOWBIT_CLI_SERVICE_PROCESS_H_
