// lowbit-calibrator: the calibration engine's command line.
//
//   lowbit-calibrator calibrate --model DIR --data tokens.jsonl (--recipe R.yaml | --scheme W4A16) --out DIR
//   lowbit-calibrator serve --state_dir DIR --model_root DIR [--address 127.0.0.1:50051] ...
//
// serve runs lowbit.v1.CalibratorService (calibrator/service/, docs/calibrator-service.md).
// Its settings also come from LOWBIT_CALIBRATOR_* environment variables; flags win.
//
// Data: JSONL with an `input_ids` array per line, or a raw little-endian int32 token file
// (X.bin) with its offsets index (X.idx). Progress goes to stderr (a live bar on a terminal,
// one line per layer otherwise); the summary of report.json goes to stdout at the end.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "calibrator/compute.h"
#include "calibrator/dataset.h"
#include "calibrator/job_builder.h"
#include "calibrator/pipeline.h"
#include "common/blas_env.h"
#include "common/file_util.h"
#include "common/flags_help.h"
#include "common/recipe.h"
#ifdef LOWBIT_CALIBRATOR_SERVE
#include <cstdlib>
#include "calibrator/service/calibrator_server.h"
#include "rpc/process.h"
#include "rpc/server.h"
#include "rpc/settings.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"
#endif

ABSL_FLAG(std::string, model, "", "Hugging Face Llama-family model directory");
ABSL_FLAG(std::string, data, "", "tokenized calibration data: .jsonl (input_ids per line) or .bin (+ .idx)");
ABSL_FLAG(std::string, recipe, "", "llm-compressor recipe YAML");
ABSL_FLAG(std::string, scheme, "", "preset scheme instead of a recipe: W8A8, W8A16, W4A16, W4A16_ASYM, FP8, FP8_DYNAMIC");
ABSL_FLAG(std::string, algorithm, "gptq", "with --scheme: gptq (GPTQModifier) or rtn (QuantizationModifier)");
ABSL_FLAG(std::string, out, "", "output checkpoint directory (replaced atomically if it exists)");
ABSL_FLAG(int64_t, num_calibration_samples, 512, "calibration samples to use");
ABSL_FLAG(int64_t, max_seq_length, 2048,
          "truncate samples to this many tokens (0 = no truncation); 2048, as the service's jobs and the product docs' recipes");
ABSL_FLAG(double, heldout_fraction, 0.1, "fraction of the samples held out for the report's KL / perplexity");
ABSL_FLAG(uint64_t, seed, 42, "shuffle seed");
ABSL_FLAG(bool, shuffle, true, "shuffle the samples before choosing");
ABSL_FLAG(int64_t, max_chunk_tokens, 4096, "tokens per forward chunk (bounds temporary memory)");
ABSL_FLAG(bool, quiet, false, "no progress output");

// serve
ABSL_FLAG(std::string, address, "127.0.0.1:50051", "serve: host:port to listen on (port 0 = any free one)");
ABSL_FLAG(std::string, state_dir, "", "serve: directory for jobs, uploads and resume state (env LOWBIT_CALIBRATOR_STATE_DIR)");
ABSL_FLAG(std::string, model_root, "", "serve: directory job models are resolved in (env LOWBIT_CALIBRATOR_MODEL_ROOT)");
ABSL_FLAG(std::string, output_root, "", "serve: checkpoint directory (default <state_dir>/outputs; env LOWBIT_CALIBRATOR_OUTPUT_ROOT)");
ABSL_FLAG(int32_t, max_concurrent_jobs, 1, "serve: jobs running at once, the rest queue (env LOWBIT_CALIBRATOR_MAX_CONCURRENT_JOBS)");
ABSL_FLAG(int64_t, max_upload_bytes, int64_t{8} << 30, "serve: largest dataset / model upload (env LOWBIT_CALIBRATOR_MAX_UPLOAD_BYTES)");
ABSL_FLAG(int64_t, max_message_bytes, int64_t{64} << 20, "serve: largest gRPC message, each way");
ABSL_FLAG(int64_t, shutdown_grace_ms, 5000,
          "serve: on SIGTERM, how long in-flight calls (and connected clients) get before they are cancelled");
ABSL_FLAG(std::string, auth_token, "", "serve: bearer token clients must send (env LOWBIT_CALIBRATOR_AUTH_TOKEN)");
ABSL_FLAG(std::string, tls_cert, "", "serve: TLS certificate (PEM)");
ABSL_FLAG(std::string, tls_key, "", "serve: TLS private key (PEM)");
ABSL_FLAG(std::string, tls_client_ca, "", "serve: CA for client certificates (mTLS)");
ABSL_FLAG(std::string, metrics_address, "", "serve: host:port for Prometheus /metrics (empty = off)");
ABSL_FLAG(bool, per_layer_resume, true, "serve: persist each finished layer so an interrupted job resumes from it");
ABSL_FLAG(absl::Duration, failed_state_retention, absl::Hours(24 * 7),
          "serve: how long a failed job keeps its finished layers for RetryJob, e.g. 168h or 30m; 0 = until it is "
          "retried or deleted (env LOWBIT_CALIBRATOR_FAILED_STATE_RETENTION)");

namespace lowbit {
namespace {

std::string Duration(double s) {
  if (s < 0) return "?";
  int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return absl::StrFormat("%dh%02dm", t / 3600, (t / 60) % 60);
  if (t >= 60) return absl::StrFormat("%dm%02ds", t / 60, t % 60);
  return absl::StrFormat("%.1fs", s);
}

class ProgressPrinter {
 public:
  explicit ProgressPrinter(bool quiet) : quiet_(quiet), tty_(isatty(STDERR_FILENO)) {}

  void operator()(const ProgressEvent& e) {
    if (quiet_) return;
    if (e.phase == "quantized") {
      // One log line per module, like llm-compressor's GPTQ log (time, error).
      if (!tty_) std::fprintf(stderr, "  %s  loss %.4g  time %.3fs\n", e.module.c_str(), e.loss, e.module_seconds);
      return;
    }
    const int width = 24;
    int filled = e.num_layers > 0 ? static_cast<int>(width * e.layer / e.num_layers) : 0;
    std::string bar = std::string(filled, '#') + std::string(width - filled, '.');
    std::string where = e.layer < e.num_layers ? absl::StrCat("layer ", e.layer + 1, "/", e.num_layers)
                                               : std::string("final");
    std::string line = absl::StrFormat("[%s] %-10s %-12s %-40s elapsed %-7s ETA %-7s", bar, e.phase, where,
                                       e.module, Duration(e.elapsed_s), Duration(e.eta_s));
    if (e.loss > 0) absl::StrAppendFormat(&line, " loss %.4g", e.loss);
    if (tty_) {
      std::fprintf(stderr, "\r%-140s", line.c_str());
      std::fflush(stderr);
      dirty_ = true;
    } else if (e.phase != last_phase_ || e.layer != last_layer_) {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    last_phase_ = e.phase;
    last_layer_ = e.layer;
  }
  void Done() {
    if (dirty_) std::fprintf(stderr, "\n");
  }

 private:
  bool quiet_, tty_, dirty_ = false;
  std::string last_phase_;
  int64_t last_layer_ = -1;
};

void PrintSummary(const CalibrationResult& r, const std::string& out) {
  const nlohmann::json& rep = r.report;
  std::printf("wrote %s (%s, %zu modules quantized in %s)\n", out.c_str(),
              rep.value("algorithm", std::string("?")).c_str(), r.modules.size(), Duration(r.seconds).c_str());
  double worst = 0;
  std::string worst_module;
  for (const ModuleResult& m : r.modules) {
    if (m.loss >= worst) worst = m.loss, worst_module = m.module;
  }
  if (rep.value("algorithm", std::string()) == "GPTQ") {
    std::printf("  total GPTQ loss %.4g (largest %.4g at %s)\n", rep.value("total_loss", 0.0), worst,
                worst_module.c_str());
  }
  if (r.eval) {
    std::printf("  held-out (%lld tokens): KL mean %.5f  p99 %.5f  top-1 agreement %.2f%%  perplexity %.3f -> %.3f\n",
                static_cast<long long>(r.eval->tokens), r.eval->kl_mean, r.eval->kl_p99,
                100.0 * r.eval->top1_agreement, r.eval->ref_perplexity.value_or(NAN), r.eval->quant_perplexity.value_or(NAN));
  } else {
    std::printf("  no held-out samples: KL / perplexity not measured (--heldout_fraction)\n");
  }
  for (const auto& w : rep.value("warnings", nlohmann::json::array())) {
    std::printf("  warning: %s\n", w.get<std::string>().c_str());
  }
  std::printf("  report: %s/report.json\n", out.c_str());
}

absl::StatusOr<CalibrationJob> BuildJob() {
  const std::string model_dir = absl::GetFlag(FLAGS_model), out_dir = absl::GetFlag(FLAGS_out);
  const std::string data = absl::GetFlag(FLAGS_data);
  const std::string recipe = absl::GetFlag(FLAGS_recipe), scheme = absl::GetFlag(FLAGS_scheme);
  if (model_dir.empty() || out_dir.empty() || data.empty()) {
    return absl::InvalidArgumentError("--model, --data and --out are required");
  }
  if (recipe.empty() == scheme.empty()) return absl::InvalidArgumentError("give exactly one of --recipe and --scheme");

  absl::StatusOr<RecipeChoice> choice;
  if (!recipe.empty()) {
    absl::StatusOr<std::string> text = ReadFileToString(recipe);
    if (!text.ok()) return text.status();
    absl::StatusOr<RecipePlan> plan = ParseRecipe(*text, recipe);
    if (!plan.ok()) return plan.status();
    choice = RecipeChoice{*text, *std::move(plan)};
  } else {
    const std::string algorithm = absl::GetFlag(FLAGS_algorithm);
    if (algorithm != "gptq" && algorithm != "rtn") {
      return absl::InvalidArgumentError(absl::StrCat("--algorithm must be gptq or rtn, not '", algorithm, "'"));
    }
    choice = ResolveRecipe("", "--scheme", scheme, algorithm);
  }
  if (!choice.ok()) return choice.status();

  absl::StatusOr<std::vector<std::vector<int32_t>>> samples = LoadTokenDataset(data);
  if (!samples.ok()) return samples.status();
  DatasetOptions options;
  options.num_calibration_samples = absl::GetFlag(FLAGS_num_calibration_samples);
  if (absl::GetFlag(FLAGS_max_seq_length) > 0) options.max_seq_length = absl::GetFlag(FLAGS_max_seq_length);
  options.heldout_fraction = absl::GetFlag(FLAGS_heldout_fraction);
  options.seed = absl::GetFlag(FLAGS_seed);
  options.shuffle = absl::GetFlag(FLAGS_shuffle);
  return BuildCalibrationJob(model_dir, out_dir, *std::move(choice), *samples, options, data);
}

int Calibrate() {
  absl::StatusOr<CalibrationJob> job = BuildJob();
  if (!job.ok()) {
    std::fprintf(stderr, "lowbit-calibrator: %s\n", std::string(job.status().message()).c_str());
    return 2;
  }
  PipelineOptions options;
  options.max_chunk_tokens = absl::GetFlag(FLAGS_max_chunk_tokens);
  ProgressPrinter printer(absl::GetFlag(FLAGS_quiet));
  absl::StatusOr<CalibrationResult> result =
      RunCalibration(*job, options, CpuCompute(), [&](const ProgressEvent& e) { printer(e); });
  printer.Done();
  if (!result.ok()) {
    std::fprintf(stderr, "lowbit-calibrator: %s\n", std::string(result.status().message()).c_str());
    return 1;
  }
  PrintSummary(*result, job->out_dir);
  return 0;
}

#ifdef LOWBIT_CALIBRATOR_SERVE
std::string FromEnv(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::string(v) : std::string();
}

int Serve() {
  // Logs go to stderr; stdout carries only the "listening on" line (scripts read the port).
  spdlog::set_default_logger(spdlog::stderr_color_mt("lowbit-calibrator"));
  rpc::SetUpProcess();
  calibrator::CalibratorServerOptions o;
  const rpc::ServerFlags server_flags{FLAGS_address,    FLAGS_tls_cert,        FLAGS_tls_key,
                                      FLAGS_tls_client_ca, FLAGS_auth_token, FLAGS_metrics_address,
                                      FLAGS_max_message_bytes, FLAGS_shutdown_grace_ms};
  absl::Status s = rpc::ServerConfigFromFlags(server_flags, "CALIBRATOR", &o.server);
  auto setting = [&s](const auto& flag, const char* env, auto* out) {
    if (s.ok()) s = rpc::FlagOrEnv(flag, "CALIBRATOR", env, out);
  };
  setting(FLAGS_state_dir, "STATE_DIR", &o.state_dir);
  setting(FLAGS_model_root, "MODEL_ROOT", &o.model_root);
  setting(FLAGS_output_root, "OUTPUT_ROOT", &o.output_root);
  setting(FLAGS_max_concurrent_jobs, "MAX_CONCURRENT_JOBS", &o.runner.max_concurrent_jobs);
  setting(FLAGS_max_upload_bytes, "MAX_UPLOAD_BYTES", &o.max_upload_bytes);
  absl::Duration retention;
  setting(FLAGS_failed_state_retention, "FAILED_STATE_RETENTION", &retention);
  if (s.ok() && retention < absl::ZeroDuration()) {
    s = absl::InvalidArgumentError(
        absl::StrCat("failed_state_retention must not be negative, not ", absl::FormatDuration(retention)));
  }
  o.runner.failed_state_retention = absl::ToChronoMilliseconds(retention);
  if (s.ok() && o.runner.max_concurrent_jobs < 1) {
    s = absl::InvalidArgumentError(absl::StrCat("max_concurrent_jobs must be at least 1, not ", o.runner.max_concurrent_jobs));
  }
  if (!s.ok()) {
    std::fprintf(stderr, "lowbit-calibrator: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  o.runner.per_layer_resume = absl::GetFlag(FLAGS_per_layer_resume);
  o.runner.pipeline.max_chunk_tokens = absl::GetFlag(FLAGS_max_chunk_tokens);
  // Testing aid (the kill -9 test): pause after each persisted layer.
  if (std::string pause = FromEnv("LOWBIT_CALIBRATOR_TEST_LAYER_PAUSE_MS"); !pause.empty()) {
    o.runner.layer_pause = std::chrono::milliseconds(std::atoll(pause.c_str()));
  }
  if (o.state_dir.empty()) {
    std::fprintf(stderr, "lowbit-calibrator: serve needs --state_dir (or LOWBIT_CALIBRATOR_STATE_DIR)\n");
    return 2;
  }
  absl::StatusOr<std::unique_ptr<calibrator::CalibratorServer>> server = calibrator::CalibratorServer::Start(o);
  if (!server.ok()) {
    std::fprintf(stderr, "lowbit-calibrator: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf("lowbit-calibrator listening on %s\n", (*server)->listening_address().c_str());
  std::fflush(stdout);
  rpc::WaitForTerminationSignal();
  std::fprintf(stderr, "lowbit-calibrator: shutting down\n");
  (*server)->Shutdown();
  return 0;
}
#endif

}  // namespace
}  // namespace lowbit

int main(int argc, char** argv) {
  lowbit::EnsureBlasCoreType(argv);
  lowbit::HelpListsFlagsOf(__FILE__);
  absl::SetProgramUsageMessage(
      "lowbit-calibrator calibrate --model DIR --data tokens.jsonl (--recipe R.yaml | --scheme W4A16) --out DIR\n"
      "       lowbit-calibrator serve --state_dir DIR --model_root DIR [--address HOST:PORT] [--auth_token T] ...");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() == 2 && std::string(args[1]) == "calibrate") return lowbit::Calibrate();
#ifdef LOWBIT_CALIBRATOR_SERVE
  if (args.size() == 2 && std::string(args[1]) == "serve") return lowbit::Serve();
#endif
  std::fprintf(stderr, "usage: %s\n", absl::ProgramUsageMessage().data());
  return 2;
}
