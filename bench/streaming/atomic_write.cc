// Replaces one file several times with buffered AtomicWriteFile and with AtomicWriteFileStreamed,
// alternated, and prints wall and CPU time per write (docs/benchmarks.md, "Uploads around the
// page cache"). Usage: lowbit-bench-atomic-write [PATH] [MIB] [ROUNDS]
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "common/streaming_file_writer.h"

namespace {

double CpuSeconds() {
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  return static_cast<double>(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(r.ru_utime.tv_usec + r.ru_stime.tv_usec);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "/tmp/lowbit-bench-atomic-write.bin";
  const size_t bytes = (argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 400) << 20;
  const int rounds = argc > 3 ? std::atoi(argv[3]) : 3;
  std::vector<uint8_t> data(bytes);
  for (size_t i = 0; i < bytes; ++i) data[i] = static_cast<uint8_t>(i * 7);
  for (int round = 0; round < rounds; ++round) {
    for (bool streamed : {false, true}) {
      const auto t0 = std::chrono::steady_clock::now();
      const double c0 = CpuSeconds();
      absl::Status s = streamed ? lowbit::AtomicWriteFileStreamed(
                                      path, [&](lowbit::StreamingFileWriter& w) { return w.Append(data); })
                                : lowbit::AtomicWriteFile(path, [&](std::FILE* f) {
                                    return std::fwrite(data.data(), 1, bytes, f) == bytes;
                                  });
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("%-24s %.2f s = %5.0f MB/s, cpu %.2f s%s%s\n",
                  streamed ? "AtomicWriteFileStreamed" : "AtomicWriteFile (FILE*)", dt, bytes / dt / 1e6,
                  CpuSeconds() - c0, s.ok() ? "" : "  ", s.ok() ? "" : s.ToString().c_str());
      if (!s.ok()) return 1;
    }
  }
  std::remove(path.c_str());
  return 0;
}
