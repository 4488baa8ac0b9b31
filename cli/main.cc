// lowbit: the command-line client of the Lowbit services.
//   lowbit calibrate --model M (--scheme S | --recipe R.yaml) (--data F | --dataset D) [...]
//   lowbit jobs [list|get ID|cancel ID|watch ID]     lowbit fetch ID --out DIR
//   lowbit upload-dataset FILE [NAME]                 lowbit upload-model DIR [NAME]
//   lowbit load --name N (--path P | --dir LOCAL)     lowbit unload N    lowbit models    lowbit info
//   lowbit gemm --name N --layer L [--x x.npy]        lowbit health [--service calibrator]
//   lowbit demo [--out demo-out]                      lowbit bench-rpc [--out DIR]
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "cli/commands.h"
#include "common/blas_env.h"
#include "rpc/process.h"

namespace {

constexpr const char* kUsage =
    "lowbit COMMAND [ARGS] [FLAGS]\n"
    "  calibrate        create a calibration job and follow it (uploads --data / --upload_model first)\n"
    "  jobs             list | get ID | cancel ID | watch ID\n"
    "  fetch ID         download a finished job's checkpoint (--out DIR)\n"
    "  upload-dataset   FILE(.jsonl | .bin + .idx) [NAME]\n"
    "  upload-model     DIR [NAME]\n"
    "  load             --name N (--path DIR under the runtime's model root | --dir LOCAL_DIR)\n"
    "  unload NAME | models | info\n"
    "  gemm             --name MODEL --layer MODULE [--x x.npy | --m M] [--y y.npy]\n"
    "  health           grpc.health.v1 check of --service runtime|calibrator\n"
    "  demo             start both services, calibrate, load, run GEMMs, print the table\n"
    "  bench-rpc        RPC latency / batching / streaming benchmark\n"
    "Addresses: --calibrator / --runtime (or LOWBIT_CALIBRATOR / LOWBIT_RUNTIME); --token or LOWBIT_TOKEN;\n"
    "TLS: --tls_ca [--tls_cert --tls_key]. `lowbit --help` lists every flag.";

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress (stderr) and results (stdout) stay in order
  lowbit::rpc::SetUpProcess();
  lowbit::StopIdleBlasThreads();  // the CLI moves data; `demo` restarts them when it computes
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() < 2) {
    std::fprintf(stderr, "%s\n", kUsage);
    return 2;
  }
  using namespace lowbit::cli;
  const std::map<std::string, int (*)(const Args&)> commands = {
      {"calibrate", RunCalibrate}, {"jobs", RunJobs},     {"fetch", RunFetch},
      {"upload-dataset", RunUploadDataset}, {"upload-model", RunUploadModel},
      {"load", RunLoad},           {"unload", RunUnload}, {"models", RunModels},
      {"info", RunInfo},           {"gemm", RunGemm},     {"health", RunHealth},
      {"demo", RunDemo},           {"bench-rpc", RunBenchRpc},
  };
  auto it = commands.find(rest[1]);
  if (it == commands.end()) {
    std::fprintf(stderr, "lowbit: unknown command '%s'\n%s\n", rest[1], kUsage);
    return 2;
  }
  Args args(rest.begin() + 2, rest.end());
  return it->second(args);
}
