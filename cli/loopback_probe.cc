#include "cli/loopback_probe.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"

namespace lowbit::cli {
namespace {

// Closes the descriptor when it goes out of scope.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

absl::Status Errno(const char* what) { return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno))); }

void NoDelay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

}  // namespace

absl::StatusOr<std::vector<double>> MeasureLoopbackTcpRoundTrip(int calls) {
  if (calls < 1) return absl::InvalidArgumentError("calls must be ≥ 1");
  Fd listener(::socket(AF_INET, SOCK_STREAM, 0));
  if (listener.fd < 0) return Errno("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(listener.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return Errno("bind");
  if (::getsockname(listener.fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return Errno("getsockname");
  if (::listen(listener.fd, 1) != 0) return Errno("listen");
  Fd client(::socket(AF_INET, SOCK_STREAM, 0));
  if (client.fd < 0) return Errno("socket");
  if (::connect(client.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return Errno("connect");
  Fd server(::accept(listener.fd, nullptr, nullptr));
  if (server.fd < 0) return Errno("accept");
  NoDelay(client.fd);
  NoDelay(server.fd);

  // The echo thread answers each byte until the client closes its end.
  std::thread echo([fd = server.fd] {
    char b;
    while (::read(fd, &b, 1) == 1 && ::write(fd, &b, 1) == 1) {
    }
  });
  std::vector<double> us;
  us.reserve(calls);
  bool ok = true;
  for (int i = 0; i < calls + 100 && ok; ++i) {
    char b = 'x';
    const auto t0 = std::chrono::steady_clock::now();
    ok = ::write(client.fd, &b, 1) == 1 && ::read(client.fd, &b, 1) == 1;
    if (i >= 100) us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  ::shutdown(client.fd, SHUT_RDWR);
  echo.join();
  if (!ok) return Errno("loopback ping-pong");
  return us;
}

}  // namespace lowbit::cli
