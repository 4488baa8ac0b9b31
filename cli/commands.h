// The `lowbit` subcommands. Each takes its positional arguments (after the subcommand name)
// and returns the process exit code; flags are absl flags defined beside each command.
#ifndef LOWBIT_CLI_COMMANDS_H_
#define LOWBIT_CLI_COMMANDS_H_

#include <string>
#include <vector>

namespace lowbit::cli {

using Args = std::vector<std::string>;

// calibrator_commands.cc
int RunCalibrate(const Args& args);
int RunJobs(const Args& args);
int RunUploads(const Args& args);
int RunFetch(const Args& args);
int RunUploadDataset(const Args& args);
int RunUploadModel(const Args& args);
// runtime_commands.cc
int RunLoad(const Args& args);
int RunUnload(const Args& args);
int RunModels(const Args& args);
int RunInfo(const Args& args);
int RunGemm(const Args& args);
int RunHealth(const Args& args);
// demo.cc
int RunDemo(const Args& args);
// bench_rpc.cc
int RunBenchRpc(const Args& args);

}  // namespace lowbit::cli

#endif  // LOWBIT_CLI_COMMANDS_H_
