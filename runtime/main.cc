// lowbit-runtime: the runtime service (lowbit.v1.RuntimeService) on the runtime engine.
//
//   lowbit-runtime serve --address 127.0.0.1:50052 --model_root DIR [--backend auto|cpu|cuda]
//       [--memory_budget_bytes N] [--batching=true] [--max_queue_delay_us 0]
//       [--max_batch_rows 4096] [--auth_token T] [--tls_cert F --tls_key F [--tls_client_ca F]]
//       [--metrics_address host:port] [--threads N] [--load name=path ...] [--kserve=true]
//
// Beside lowbit.v1.RuntimeService it serves inference.GRPCInferenceService (KServe v2, for stock
// Triton / KServe clients; --kserve=false turns it off) on the same port and engine.
//
// Every setting can also come from the environment (LOWBIT_RUNTIME_ADDRESS, _MODEL_ROOT,
// _BACKEND, _MEMORY_BUDGET_BYTES, _BATCHING, _MAX_QUEUE_DELAY_US, _MAX_BATCH_ROWS, _AUTH_TOKEN,
// _TLS_CERT, _TLS_KEY, _TLS_CLIENT_CA, _METRICS_ADDRESS, _MAX_MESSAGE_BYTES, _THREADS, _KSERVE);
// flags given on the command line win. Prints "lowbit-runtime listening on HOST:PORT" (the
// real port when 0 was asked for) once serving; SIGTERM / SIGINT drain and stop.
// The runtime uses no BLAS (its kernels are its own), so it needs no OpenBLAS core-type re-exec.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/flags_help.h"
#include "rpc/process.h"
#include "rpc/server.h"
#include "rpc/settings.h"
#include "runtime/engine.h"
#include "runtime/service/kserve_service.h"
#include "runtime/service/runtime_service.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, address, "127.0.0.1:50052", "host:port to listen on (port 0 = any free port)");
ABSL_FLAG(std::string, model_root, "", "directory LoadModel paths are confined to (empty = stream loads only)");
ABSL_FLAG(std::string, backend, "auto",
          "auto (cuda when a GPU is present, else cpu), cpu, cpu-avx2, cpu-generic, cpu-ref, cuda, cuda-simple");
ABSL_FLAG(int64_t, memory_budget_bytes, 0, "weight memory budget for loaded models (0 = unlimited)");
ABSL_FLAG(bool, batching, true, "coalesce concurrent Gemm requests for the same layer into one GEMM");
ABSL_FLAG(int64_t, max_queue_delay_us, 0,
          "how long the first request of a batch waits for others (µs); at 0, requests that arrive while "
          "a GEMM runs still form the next batch");
ABSL_FLAG(int64_t, max_batch_rows, 4096, "rows (M) one batched GEMM may hold");
ABSL_FLAG(int64_t, max_rows, 16384, "rows (M) one request may hold");
ABSL_FLAG(std::string, auth_token, "", "bearer token clients must send (empty = no auth)");
ABSL_FLAG(std::string, tls_cert, "", "TLS server certificate (PEM)");
ABSL_FLAG(std::string, tls_key, "", "TLS server key (PEM)");
ABSL_FLAG(std::string, tls_client_ca, "", "CA for client certificates (mTLS)");
ABSL_FLAG(std::string, metrics_address, "", "host:port for Prometheus /metrics (empty = off)");
ABSL_FLAG(int64_t, max_message_bytes, int64_t{64} << 20, "gRPC max message size, receive and send");
ABSL_FLAG(int64_t, shutdown_grace_ms, 5000,
          "serve: on SIGTERM, how long in-flight calls (and connected clients) get before they are cancelled");
ABSL_FLAG(int32_t, threads, 0, "CPU backend worker threads (0 = all cores)");
ABSL_FLAG(std::vector<std::string>, load, {},
          "models to load at start, name=path (path under --model_root); repeatable or comma-separated");
ABSL_FLAG(std::string, state_dir, "",
          "directory that records the models clients load (path loads by path, streamed loads as a copy), so "
          "that a restart loads them again (empty = not recorded)");
ABSL_FLAG(bool, kserve, true,
          "also serve inference.GRPCInferenceService (KServe v2 / Triton clients): each layer is a model "
          "'<model>/<layer>' with input x and output y");
ABSL_FLAG(std::string, log_level, "info", "spdlog level: trace, debug, info, warn, error");

namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "lowbit-runtime: %s\n", std::string(s.message()).c_str());
  return 1;
}

int Serve() {
  // Logs go to stderr; stdout carries only the "listening on" line that launchers wait for.
  spdlog::set_default_logger(spdlog::stderr_color_mt("lowbit-runtime"));
  spdlog::set_level(spdlog::level::from_str(absl::GetFlag(FLAGS_log_level)));
  lowbit::rpc::SetUpProcess();
  lowbit::rpc::ServerConfig config;
  const lowbit::rpc::ServerFlags server_flags{FLAGS_address,           FLAGS_tls_cert,         FLAGS_tls_key,
                                              FLAGS_tls_client_ca,     FLAGS_auth_token,       FLAGS_metrics_address,
                                              FLAGS_max_message_bytes, FLAGS_shutdown_grace_ms};
  absl::Status s = lowbit::rpc::ServerConfigFromFlags(server_flags, "RUNTIME", &config);

  lowbit::runtime::EngineOptions options;
  auto setting = [&s](const auto& flag, const char* env, auto* out) {
    if (s.ok()) s = lowbit::rpc::FlagOrEnv(flag, "RUNTIME", env, out);
  };
  setting(FLAGS_model_root, "MODEL_ROOT", &options.registry.model_root);
  setting(FLAGS_backend, "BACKEND", &options.backend);
  setting(FLAGS_memory_budget_bytes, "MEMORY_BUDGET_BYTES", &options.registry.memory_budget_bytes);
  setting(FLAGS_batching, "BATCHING", &options.batching.enabled);
  setting(FLAGS_max_queue_delay_us, "MAX_QUEUE_DELAY_US", &options.batching.max_queue_delay_us);
  setting(FLAGS_max_batch_rows, "MAX_BATCH_ROWS", &options.batching.max_batch_rows);
  setting(FLAGS_max_rows, "MAX_ROWS", &options.max_rows);
  setting(FLAGS_threads, "THREADS", &options.threads);
  setting(FLAGS_state_dir, "STATE_DIR", &options.state_dir);
  bool kserve = true;
  setting(FLAGS_kserve, "KSERVE", &kserve);
  if (!s.ok()) return Fail(s);
  // Tests only (no flag): a pause before each Linear is prepared, so a load can be cut half way.
  if (const char* pause = std::getenv("LOWBIT_RUNTIME_TEST_LAYER_PAUSE_MS"); pause != nullptr && *pause != '\0') {
    if (!absl::SimpleAtoi(pause, &options.registry.test_layer_pause_ms) || options.registry.test_layer_pause_ms < 0) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("LOWBIT_RUNTIME_TEST_LAYER_PAUSE_MS='", pause, "' is not a number of milliseconds")));
    }
  }

  auto registry = std::make_shared<prometheus::Registry>();
  auto engine = lowbit::runtime::Engine::Create(options, registry);
  if (!engine.ok()) return Fail(engine.status());
  for (const std::string& item : absl::GetFlag(FLAGS_load)) {
    std::vector<std::string> parts = absl::StrSplit(item, absl::MaxSplits('=', 1));
    if (parts.size() != 2 || parts[0].empty() || parts[1].empty()) {
      return Fail(absl::InvalidArgumentError(absl::StrCat("--load '", item, "': expected name=path")));
    }
    auto model = (*engine)->LoadFromPath(parts[0], parts[1], {}, /*remember=*/false);
    if (!model.ok())
      return Fail(absl::Status(model.status().code(), absl::StrCat("--load ", item, ": ", model.status().message())));
  }
  if (!options.state_dir.empty()) {
    const int restored = (*engine)->RestoreLoads();
    spdlog::info("state: {} model(s) loaded again from {}", restored, options.state_dir);
  }
  lowbit::runtime::RuntimeServiceOptions sopts;
  sopts.max_message_bytes = config.max_message_bytes;
  lowbit::runtime::RuntimeServiceImpl service(engine->get(),
                                              lowbit::rpc::MakeServiceContext(config, "runtime", registry), sopts);
  lowbit::runtime::KServeServiceImpl kserve_service(engine->get(),
                                                    lowbit::rpc::MakeServiceContext(config, "kserve", registry), sopts);
  std::vector<grpc::Service*> services = {&service};
  if (kserve) services.push_back(&kserve_service);
  auto server = lowbit::rpc::RpcServer::Start(config, services, registry);
  if (!server.ok()) return Fail(server.status());
  (*server)->AddHealthService(lowbit::v1::RuntimeService::service_full_name());
  if (kserve) (*server)->AddHealthService(inference::GRPCInferenceService::service_full_name());
  std::printf("lowbit-runtime listening on %s\n", (*server)->listening_address().c_str());
  std::fflush(stdout);
  lowbit::runtime::EngineInfo info = (*engine)->Info();
  spdlog::info("serving: backend {} ({}), batching {} (delay {} µs, {} rows), budget {} bytes, KServe v2 {}",
               info.backend, info.device, info.batching.enabled ? "on" : "off", info.batching.max_queue_delay_us,
               info.batching.max_batch_rows, info.memory_budget_bytes, kserve ? "on" : "off");
  lowbit::rpc::WaitForTerminationSignal();
  spdlog::info("shutting down: draining in-flight calls");
  (*server)->Shutdown();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  lowbit::HelpListsFlagsOf(__FILE__);
  absl::SetProgramUsageMessage(
      "lowbit-runtime serve --address HOST:PORT --model_root DIR [--backend auto|cpu|cuda] [--load name=path] ...");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2 || std::string(args[1]) != "serve") {
    std::fprintf(stderr, "usage: lowbit-runtime serve [flags]   (--help for the flags)\n");
    return 2;
  }
  return Serve();
}
