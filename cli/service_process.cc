#include "cli/service_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"

extern char** environ;

namespace lowbit::cli {
namespace fs = std::filesystem;

namespace {

std::string LogTail(const std::string& path) {
  std::ifstream in(path);
  std::string all((std::istreambuf_iterator<char>(in)), {});
  return all.size() > 2000 ? all.substr(all.size() - 2000) : all;
}

// Forks and execs `binary args...` with `env` on top of this process's environment, stdout on
// `stdout_fd` and stderr on `stderr_fd`. The child gets SIGTERM when this process dies
// (PR_SET_PDEATHSIG; checked against a parent that died before the prctl). Everything the child
// runs before exec is async-signal-safe: argv and envp are built here, before the fork.
absl::StatusOr<pid_t> Spawn(const std::string& binary, const std::vector<std::string>& args, const EnvOverrides& env,
                            int stdout_fd, int stderr_fd) {
  if (access(binary.c_str(), X_OK) != 0) {
    return absl::NotFoundError(absl::StrCat("binary '", binary, "' not found or not executable"));
  }
  std::vector<std::string> argv_s = {binary};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_s;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string entry = *e;
    const std::string name = entry.substr(0, entry.find('='));
    if (!env.count(name)) env_s.push_back(entry);
  }
  for (const auto& [name, value] : env) env_s.push_back(name + "=" + value);
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  // Copies above 2 (close-on-exec), so that neither dup2 below is a no-op that leaves the flag
  // set (a parent started with fd 1 closed gets 1 from pipe2 / open) or overwrites the other.
  const int out_fd = fcntl(stdout_fd, F_DUPFD_CLOEXEC, 3);
  const int err_fd = out_fd < 0 ? -1 : fcntl(stderr_fd, F_DUPFD_CLOEXEC, 3);
  if (err_fd < 0) {
    const int e = errno;
    if (out_fd >= 0) close(out_fd);
    return absl::InternalError(absl::StrCat("fcntl(F_DUPFD_CLOEXEC) failed: ", std::strerror(e)));
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // PR_SET_PDEATHSIG fires when the *thread* that forked ends: services are started from the
    // main thread (demo, bench-rpc), which lives as long as the process.
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent) _exit(126);
    if (dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0) _exit(126);
    execve(binary.c_str(), argv.data(), envp.data());
    _exit(127);
  }
  const int fork_errno = errno;
  close(out_fd);
  close(err_fd);
  if (pid < 0) return absl::InternalError(absl::StrCat("fork failed: ", std::strerror(fork_errno)));
  return pid;
}

}  // namespace

absl::StatusOr<int> RunLogged(const std::string& binary, const std::vector<std::string>& args,
                              const std::string& log_path) {
  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return absl::InternalError(absl::StrCat("cannot open log '", log_path, "': ", std::strerror(errno)));
  absl::StatusOr<pid_t> pid = Spawn(binary, args, {}, log_fd, log_fd);
  close(log_fd);
  if (!pid.ok()) return pid.status();
  int status = 0;
  while (waitpid(*pid, &status, 0) < 0) {
    if (errno != EINTR) return absl::InternalError(absl::StrCat("waitpid failed: ", std::strerror(errno)));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

absl::StatusOr<std::unique_ptr<ServiceProcess>> ServiceProcess::Start(const std::string& binary,
                                                                      const std::vector<std::string>& args,
                                                                      const std::string& log_path,
                                                                      const EnvOverrides& env,
                                                                      std::chrono::seconds timeout) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    close(out[0]);
    close(out[1]);
    return absl::InternalError(absl::StrCat("cannot open log '", log_path, "': ", std::strerror(errno)));
  }
  absl::StatusOr<pid_t> spawned = Spawn(binary, args, env, out[1], log_fd);
  close(out[1]);
  close(log_fd);
  if (!spawned.ok()) {
    close(out[0]);
    return spawned.status();
  }
  const pid_t pid = *spawned;
  std::unique_ptr<ServiceProcess> p(new ServiceProcess());
  p->pid_ = pid;
  p->stdout_fd_ = out[0];
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string buf;
  const std::string marker = " listening on ";
  while (true) {
    size_t nl = buf.find('\n');
    while (nl != std::string::npos) {
      std::string line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      const size_t at = line.find(marker);
      if (at != std::string::npos) {
        p->address_ = line.substr(at + marker.size());
        return p;
      }
      nl = buf.find('\n');
    }
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      p->Kill();
      return absl::DeadlineExceededError(absl::StrCat(binary, " did not report its address within ", timeout.count(),
                                                      " s; log ", log_path, ":\n", LogTail(log_path)));
    }
    pollfd pfd{p->stdout_fd_, POLLIN, 0};
    if (poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;
    char chunk[512];
    const ssize_t n = read(p->stdout_fd_, chunk, sizeof(chunk));
    if (n <= 0) {
      int status = 0;
      waitpid(pid, &status, 0);
      p->pid_ = -1;
      return absl::FailedPreconditionError(absl::StrCat(binary, " exited before listening (status ", status, "); log ",
                                                        log_path, ":\n", LogTail(log_path)));
    }
    buf.append(chunk, n);
  }
}

int ServiceProcess::Stop(std::chrono::milliseconds grace) {
  if (pid_ <= 0) return 0;
  kill(pid_, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + grace;
  int status = 0;
  while (true) {
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) break;
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  pid_ = -1;
  if (stdout_fd_ >= 0) close(stdout_fd_);
  stdout_fd_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

void ServiceProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

ServiceProcess::~ServiceProcess() {
  Stop();
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

std::string FindSiblingBinary(const std::string& name, const std::string& build_subdir) {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path dir = self.parent_path();
    for (const fs::path& p : {dir / name, dir.parent_path() / build_subdir / name}) {
      if (access(p.c_str(), X_OK) == 0) return p.string();
    }
  }
  if (const char* path = std::getenv("PATH")) {
    std::string all = path;
    size_t start = 0;
    while (start <= all.size()) {
      size_t end = all.find(':', start);
      if (end == std::string::npos) end = all.size();
      const fs::path p = fs::path(all.substr(start, end - start)) / name;
      if (access(p.c_str(), X_OK) == 0) return p.string();
      start = end + 1;
    }
  }
  return name;
}

}  // namespace lowbit::cli
