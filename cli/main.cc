// lowbit: the command-line client of the Lowbit services.
//   lowbit calibrate --model M (--scheme S | --recipe R.yaml) (--data F | --dataset D) [...]
//   lowbit jobs [list|get ID|cancel ID|retry ID|delete ID|watch ID]     lowbit fetch ID --out DIR
//   lowbit upload-dataset FILE [NAME]                 lowbit upload-model DIR [NAME]
//   lowbit load --name N (--path P | --dir LOCAL)     lowbit unload N    lowbit models    lowbit info
//   lowbit gemm --name N --layer L [--x x.npy]        lowbit health [--service calibrator]
//   lowbit demo [--out demo-out]                      lowbit bench-rpc [--out DIR]
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "common/blas_env.h"
#include "rpc/process.h"

namespace {

constexpr const char* kUsage =
    "lowbit COMMAND [ARGS] [FLAGS]\n"
    "  calibrate        create a calibration job and follow it (uploads --data / --upload_model first)\n"
    "  jobs             list | get ID | cancel ID | retry ID [--detach] | delete ID [--keep_output] | watch ID\n"
    "  fetch ID         download a finished job's checkpoint (--out DIR | --verify_only)\n"
    "  upload-dataset   FILE(.jsonl | .bin + .idx) [NAME]\n"
    "  upload-model     DIR [NAME]\n"
    "  uploads          list | delete (model | dataset) NAME   (the calibrator's uploads)\n"
    "  load             --name N (--path DIR under the runtime's model root | --dir LOCAL_DIR)\n"
    "  unload NAME | models | info\n"
    "  gemm             --name MODEL --layer MODULE [--x x.npy | --m M] [--dtype bf16] [--y y.npy]\n"
    "  health           grpc.health.v1 check of --service runtime|calibrator\n"
    "  demo             start both services, calibrate, load, run GEMMs, print the table\n"
    "  bench-rpc        RPC latency / batching / streaming benchmark\n"
    "Addresses: --calibrator / --runtime (or LOWBIT_CALIBRATOR / LOWBIT_RUNTIME); --token or LOWBIT_TOKEN;\n"
    "TLS: --tls_ca [--tls_cert --tls_key]. Deadlines: --timeout_s (each unary call, default 600),\n"
    "--stream_timeout_s (uploads, fetch, load --dir; default 0 = none).\n"
    "`lowbit --help` lists the flags of every command, `lowbit COMMAND --help` those of one command;\n"
    "`lowbit --helpfull` also lists Abseil's and gRPC's own flags.\n"
    "Exit status: 0 ok, 1 a failed call or job, 2 a usage error (an unknown flag or a flag value\n"
    "of the wrong type is reported by Abseil's flag parser, with status 1).";

const std::set<std::string>& CommandNames() {
  static const std::set<std::string> names = {"calibrate", "jobs",   "fetch",  "upload-dataset", "upload-model",
                                              "uploads",   "load",   "unload", "models",         "info",
                                              "gemm",      "health", "demo",   "bench-rpc"};
  return names;
}

// The commands a flag belongs to, from the "command[ / command...]: " prefix of its help text;
// empty for the flags every command takes (connection.cc).
std::set<std::string> FlagCommands(const std::string& help) {
  std::set<std::string> commands;
  const size_t colon = help.find(": ");
  if (colon == std::string::npos) return commands;
  for (absl::string_view part : absl::StrSplit(help.substr(0, colon), " / ")) {
    const std::string word(part.substr(0, part.find(' ')));  // "jobs list" -> jobs
    if (!CommandNames().count(word)) return {};
    commands.insert(word);
  }
  return commands;
}

// Why the first flag on the command line does not apply to `command`, or empty when all do:
// a flag of other commands (by FlagCommands), or an address / token / TLS flag given to demo or
// bench-rpc, which start their own services on loopback. Such a flag would be ignored silently
// (`lowbit jobs --out x` fetches nothing, `lowbit demo --runtime H:P` does not use that runtime).
// Arguments after "--" and flag values are skipped; "--noNAME" of a bool flag counts as NAME.
std::string ForeignFlag(int argc, char** argv, const std::string& command) {
  static const std::set<std::string> kServiceFlags = {"calibrator", "runtime",  "token",          "tls_ca",
                                                      "tls_cert",   "tls_key",  "tls_server_name"};
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    if (a == "--") break;
    if (a.size() < 2 || a[0] != '-') continue;
    a.remove_prefix(a[1] == '-' ? 2 : 1);
    const std::string name(a.substr(0, a.find('=')));
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && name.rfind("no", 0) == 0) flag = absl::FindCommandLineFlag(name.substr(2));
    if (flag == nullptr || flag->Filename().find("cli/") == std::string::npos) continue;
    const std::string shown = "--" + std::string(flag->Name());
    const std::set<std::string> owners = FlagCommands(flag->Help());
    if (!owners.empty() && !owners.count(command)) {
      return absl::StrCat(shown, " is a flag of lowbit ", absl::StrJoin(owners, " / "), ", not of ", command,
                          " (`lowbit ", command, " --help` lists its flags)");
    }
    if ((command == "demo" || command == "bench-rpc") && kServiceFlags.count(std::string(flag->Name()))) {
      return absl::StrCat(shown, " is not used: lowbit ", command,
                          " starts its own services on loopback, with a token of its own and no TLS");
    }
  }
  return "";
}

// `lowbit [COMMAND] --help`: the usage and the flags of lowbit's own commands (of COMMAND and
// the connection flags when one is named), on stdout.
void PrintHelp(const std::string& command) {
  std::printf("%s\n", kUsage);
  std::vector<const absl::CommandLineFlag*> common, own;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (flag->Filename().find("cli/") == std::string::npos) continue;  // Abseil's, gRPC's: --helpfull
    const std::set<std::string> commands = FlagCommands(flag->Help());
    if (commands.empty()) {
      common.push_back(flag);
    } else if (command.empty() || commands.count(command)) {
      own.push_back(flag);
    }
  }
  auto by_name = [](const absl::CommandLineFlag* a, const absl::CommandLineFlag* b) { return a->Name() < b->Name(); };
  auto print = [](const char* title, std::vector<const absl::CommandLineFlag*>& flags, auto order) {
    std::sort(flags.begin(), flags.end(), order);
    if (!flags.empty()) std::printf("\n%s\n", title);
    for (const absl::CommandLineFlag* f : flags) {
      std::printf("  --%s (default \"%s\")\n      %s\n", std::string(f->Name()).c_str(), f->DefaultValue().c_str(),
                  f->Help().c_str());
    }
  };
  const std::string title = command.empty() ? "Command flags:" : "Flags of lowbit " + command + ":";
  print(title.c_str(), own, by_name);
  print("Flags of every command (connection):", common, by_name);
}

// True when argv asks for help (--help, -help, -h, or `help` as the command); `command` is then
// the command it asks about, if any.
bool WantsHelp(int argc, char** argv, std::string* command) {
  bool help = argc > 1 && std::strcmp(argv[1], "help") == 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-help" || a == "-h") help = true;
    if (command->empty() && CommandNames().count(a)) *command = a;
  }
  return help;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress (stderr) and results (stdout) stay in order
  lowbit::rpc::SetUpProcess();
  lowbit::StopIdleBlasThreads();  // the CLI moves data; `demo` restarts them when it computes
  if (std::string command; WantsHelp(argc, argv, &command)) {
    PrintHelp(command);
    return 0;
  }
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() < 2) {
    std::fprintf(stderr, "%s\n", kUsage);
    return 2;
  }
  using namespace lowbit::cli;
  const std::map<std::string, int (*)(const Args&)> commands = {
      {"calibrate", RunCalibrate},
      {"jobs", RunJobs},
      {"fetch", RunFetch},
      {"upload-dataset", RunUploadDataset},
      {"upload-model", RunUploadModel},
      {"uploads", RunUploads},
      {"load", RunLoad},
      {"unload", RunUnload},
      {"models", RunModels},
      {"info", RunInfo},
      {"gemm", RunGemm},
      {"health", RunHealth},
      {"demo", RunDemo},
      {"bench-rpc", RunBenchRpc},
  };
  auto it = commands.find(rest[1]);
  if (it == commands.end()) {
    std::fprintf(stderr, "lowbit: unknown command '%s'\n%s\n", rest[1], kUsage);
    return 2;
  }
  if (const std::string why = ForeignFlag(argc, argv, it->first); !why.empty()) {
    std::fprintf(stderr, "lowbit %s: %s\n", it->first.c_str(), why.c_str());
    return 2;
  }
  Args args(rest.begin() + 2, rest.end());
  return it->second(args);
}
