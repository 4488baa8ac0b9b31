// lowbit demo — the README's main job, end to end through both services over gRPC:
//   1. generates the default synthetic Llama (hidden 256, 2 layers, bf16, outlier channels)
//      and calibration tokens under --out;
//   2. starts lowbit-calibrator and lowbit-runtime on loopback (ephemeral ports, a random
//      bearer token), uploads the tokens;
//   3. calibrates the model with W8A8 (SmoothQuant 0.8 + GPTQ), W4A16 (GPTQ) and FP8 (static
//      activation scales + FP8 KV cache), following each job's progress stream;
//   4. loads every checkpoint into the runtime and runs each quantized Linear on the real
//      inputs that Linear sees in the float model (captured from the calibrator's forward
//      pass on held-out tokens), comparing with the float layer computed here in double;
//   5. prints one table (scheme, KL, top-1, GEMM relative error, latency) and stops both.
// Exits non-zero if any step fails or a GEMM's error is over its scheme's bound.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "calibrator/compute.h"
#include "calibrator/llama.h"
#include "calibrator/pipeline.h"
#include "cli/calibrator_client.h"
#include "cli/commands.h"
#include "cli/connection.h"
#include "cli/runtime_client.h"
#include "cli/service_process.h"
#include "cli/tool_dir.h"
#include "common/file_util.h"
#include "common/safetensors.h"
#include "nlohmann/json.hpp"
#include "tools/gen_model/synthetic_llama.h"
#include "tools/gen_tokens/synthetic_tokens.h"

ABSL_DECLARE_FLAG(std::string, out);
ABSL_FLAG(std::string, demo_schemes, "W8A8,W4A16,FP8", "demo: schemes to calibrate and serve");
ABSL_FLAG(int64_t, demo_samples, 96, "demo: synthetic calibration samples (a quarter held out)");
ABSL_FLAG(std::string, demo_backend, "auto", "demo: runtime backend (auto, cpu, cuda)");

namespace lowbit::cli {
namespace fs = std::filesystem;

namespace {

// Relative-error bounds of one GEMM on real activations against the float layer: weight and
// activation quantization together. Measured on the default model: W8A8 ≈ 0.01–0.02,
// FP8 ≈ 0.03–0.05, W4A16 ≈ 0.1–0.2 (GPTQ trades weight error for output error on the
// calibration distribution); the bounds leave room but catch a wrong layout or scale.
double ErrorBound(const std::string& scheme) {
  if (scheme.rfind("W4", 0) == 0) return 0.35;
  if (scheme.rfind("FP8", 0) == 0) return 0.12;
  return 0.08;
}

std::string Describe(const std::string& scheme) {
  if (scheme == "W8A8") return "SmoothQuant+GPTQ";
  if (scheme == "FP8") return "GPTQ +FP8 KV";
  return "GPTQ";
}

// Captures every Linear input site of every layer of the float model on some tokens.
struct CapturedInputs {
  int64_t rows = 0;
  // [layer][site] -> [rows, K]
  std::vector<std::array<std::vector<float>, kNumLinearSites>> x;
};

class CaptureHooks : public LayerHooks {
 public:
  explicit CaptureHooks(std::array<std::vector<float>, kNumLinearSites>* out) : out_(out) {}
  void OnLinearInput(LinearSite site, float* x, int64_t rows, int64_t cols) override {
    (*out_)[static_cast<int>(site)].assign(x, x + rows * cols);
  }

 private:
  std::array<std::vector<float>, kNumLinearSites>* out_;
};

absl::StatusOr<CapturedInputs> CaptureFloatInputs(const LlamaModel& model, const std::vector<int32_t>& tokens) {
  CapturedInputs c;
  c.rows = static_cast<int64_t>(tokens.size());
  auto hidden = model.Embed(tokens);
  if (!hidden.ok()) return hidden.status();
  const std::vector<int64_t> lengths = {c.rows};
  const SequenceSpans spans = SequenceSpans::FromLengths(lengths);
  for (int64_t l = 0; l < model.config().num_layers; ++l) {
    auto w = model.LoadLayer(l);
    if (!w.ok()) return w.status();
    c.x.emplace_back();
    CaptureHooks hooks(&c.x.back());
    if (absl::Status s = DecoderLayerForward(model.config(), *w, CpuCompute(), spans, hidden->data(), &hooks); !s.ok())
      return s;
  }
  return c;
}

struct LayerCheck {
  double rel_error = 0;
  double latency_us = 0;
};

// Runs `module` on the runtime with the captured input and compares with the float layer.
absl::StatusOr<LayerCheck> CheckLayer(RuntimeStubT& stub, const rpc::ClientConfig& config,
                                      const std::string& model_name, const std::string& module,
                                      const LlamaModel& original, const SafetensorsModel& checkpoint,
                                      const CapturedInputs& inputs, DType dtype) {
  // "model.layers.3.mlp.up_proj" -> layer 3, suffix "mlp.up_proj".
  std::vector<std::string> parts = absl::StrSplit(module, '.');
  if (parts.size() != 5 || parts[0] != "model" || parts[1] != "layers") {
    return absl::InvalidArgumentError(absl::StrCat("unexpected module name '", module, "'"));
  }
  int64_t layer = 0;
  if (!absl::SimpleAtoi(parts[2], &layer) || layer < 0 || layer >= original.config().num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected module name '", module, "'"));
  }
  const std::string suffix = parts[3] + "." + parts[4];
  auto weights = original.LoadLayer(layer);
  if (!weights.ok()) return weights.status();
  const LinearWeights* lin = weights->Linear(suffix);
  if (!lin) return absl::InvalidArgumentError(absl::StrCat("'", module, "' is not a decoder Linear"));
  const LinearSite site = SiteOf(suffix);
  const std::vector<float>& x = inputs.x[layer][static_cast<int>(site)];
  const int64_t m = inputs.rows, k = lin->in, n = lin->out;

  // SmoothQuant folded s into the norm (norm / s) and the Linear (W · diag(s)): the Linear's
  // input in the quantized model is x / s. Recover s from the two norms.
  std::vector<float> s(k, 1.0f);
  const char* norm = site == LinearSite::kAttentionInput ? "input_layernorm"
                     : site == LinearSite::kMlpInput     ? "post_attention_layernorm"
                                                         : nullptr;
  if (norm) {
    const std::string name = absl::StrCat("model.layers.", layer, ".", norm, ".weight");
    auto q = checkpoint.Get(name);
    auto o = original.tensors().Get(name);
    if (q.ok() && o.ok()) {
      auto qf = q->ToFloats(), of = o->ToFloats();
      for (int64_t j = 0; j < k; ++j) s[j] = (qf[j] != 0 && of[j] != 0) ? of[j] / qf[j] : 1.0f;
    }
  }
  std::vector<float> xs(m * k);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < k; ++j) xs[i * k + j] = x[i * k + j] / s[j];
  Tensor xt = Tensor::FromFloats(xs, {m, k}, dtype);
  const std::vector<float> sent = xt.ToFloats();  // what the runtime sees, after rounding

  const auto t0 = std::chrono::steady_clock::now();
  auto r = CallGemm(stub, config, model_name, module, xt, dtype);  // W4A16 answers in the activation dtype
  const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  if (!r.ok()) return r.status();
  if (r->y.shape() != Shape{m, n}) {
    return absl::InternalError(absl::StrCat(module, ": runtime returned ", ShapeString(r->y.shape())));
  }
  const std::vector<float> y = r->y.ToFloats();
  double err2 = 0, ref2 = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t o = 0; o < n; ++o) {
      double acc = lin->bias.empty() ? 0.0 : lin->bias[o];
      for (int64_t j = 0; j < k; ++j) acc += double(sent[i * k + j]) * s[j] * lin->weight[o * k + j];
      err2 += (y[i * n + o] - acc) * (y[i * n + o] - acc);
      ref2 += acc * acc;
    }
  }
  return LayerCheck{std::sqrt(err2 / std::max(ref2, 1e-30)), us};
}

struct Row {
  std::string scheme, recipe;
  double kl = NAN, top1 = NAN, max_err = 0, p50_us = 0, calib_s = 0;
  int layers = 0;
  bool ok = true;
};

// The services' settings the demo makes itself, set in their environment (so the bearer token
// is not in their argv, which `ps` shows): the token, and no TLS whatever this environment says.
EnvOverrides ServiceEnv(const std::string& prefix, const std::string& token) {
  EnvOverrides env;
  env["LOWBIT_" + prefix + "_AUTH_TOKEN"] = token;
  for (const char* tls : {"TLS_CERT", "TLS_KEY", "TLS_CLIENT_CA"}) env["LOWBIT_" + prefix + "_" + tls] = "";
  return env;
}

int Demo(const Args& args) {
  // Every argument is checked before anything is started or written.
  if (!args.empty()) return UsageError("demo", "takes no positional arguments (got '" + args[0] + "')");
  const std::vector<std::string> schemes = absl::StrSplit(absl::GetFlag(FLAGS_demo_schemes), ',', absl::SkipEmpty());
  if (schemes.empty()) return UsageError("demo", "--demo_schemes is empty");
  for (const std::string& scheme : schemes) {
    static const char* kSchemes[] = {"W8A8", "W8A16", "W4A16", "W4A16_ASYM", "FP8", "FP8_DYNAMIC"};
    if (std::find(std::begin(kSchemes), std::end(kSchemes), scheme) == std::end(kSchemes)) {
      return UsageError("demo", absl::StrCat("--demo_schemes: '", scheme,
                                             "' is not W8A8, W8A16, W4A16, W4A16_ASYM, FP8 or FP8_DYNAMIC"));
    }
  }
  const int64_t samples = absl::GetFlag(FLAGS_demo_samples);
  if (samples < 4 || samples > 1000000) {
    return UsageError("demo", absl::StrCat("--demo_samples ", samples, " is not in 4..1000000"));
  }
  const std::string backend = absl::GetFlag(FLAGS_demo_backend);
  if (backend != "auto" && backend != "cpu" && backend != "cuda") {
    return UsageError("demo", "--demo_backend '" + backend + "' is not auto, cpu or cuda");
  }
  rpc::ClientConfig cal_cfg = CalibratorConfig(/*check_address=*/false);
  rpc::ClientConfig rt_cfg = RuntimeConfig(/*check_address=*/false);
  const fs::path out = fs::absolute(absl::GetFlag(FLAGS_out).empty() ? "demo-out" : absl::GetFlag(FLAGS_out));
  if (absl::Status s = ClaimToolDir(
          out, "demo", {"state", "checkpoints", "models", "tokens.jsonl", "calibrator.log", "runtime.log"});
      !s.ok()) {
    return s.code() == absl::StatusCode::kFailedPrecondition ? UsageError("demo", std::string(s.message()))
                                                             : Fail("demo", s);
  }
  std::error_code ec;
  fs::create_directories(out / "models", ec);
  fs::create_directories(out / "checkpoints", ec);

  // 1. model and tokens
  SyntheticLlamaOptions options;
  const fs::path model_dir = out / "models" / "default";
  if (absl::Status s = WriteSyntheticLlama(model_dir.string(), options); !s.ok()) return Fail("generate model", s);
  SyntheticTokenOptions topts;
  topts.vocab = options.vocab;
  topts.samples = samples;
  auto seqs = SyntheticTokens(topts);
  std::string jsonl;
  for (const auto& s : seqs) jsonl += nlohmann::json{{"input_ids", s}}.dump() + "\n";
  if (absl::Status s = AtomicWriteFile((out / "tokens.jsonl").string(), jsonl); !s.ok()) return Fail("tokens", s);
  std::printf("model: synthetic Llama, hidden %lld, %lld layers, bf16, %d outlier channels (%s)\n",
              static_cast<long long>(options.hidden), static_cast<long long>(options.layers), options.outlier_channels,
              model_dir.c_str());

  // 2. services
  std::mt19937_64 rng(std::random_device{}());
  const std::string token = absl::StrFormat("%016x%016x", rng(), rng());
  auto calibrator = ServiceProcess::Start(
      FindSiblingBinary("lowbit-calibrator", "calibrator"),
      {"serve", "--address=127.0.0.1:0", "--state_dir=" + (out / "state").string(),
       "--model_root=" + (out / "models").string(), "--output_root=" + (out / "checkpoints").string()},
      (out / "calibrator.log").string(), ServiceEnv("CALIBRATOR", token));
  if (!calibrator.ok()) return Fail("start lowbit-calibrator", calibrator.status());
  auto runtime = ServiceProcess::Start(
      FindSiblingBinary("lowbit-runtime", "runtime"),
      {"serve", "--address=127.0.0.1:0", "--model_root=" + (out / "checkpoints").string(), "--backend=" + backend},
      (out / "runtime.log").string(), ServiceEnv("RUNTIME", token));
  if (!runtime.ok()) return Fail("start lowbit-runtime", runtime.status());
  std::printf("calibrator on %s, runtime on %s (bearer token required; logs in %s)\n", (*calibrator)->address().c_str(),
              (*runtime)->address().c_str(), out.c_str());
  cal_cfg.address = (*calibrator)->address();
  rt_cfg.address = (*runtime)->address();
  cal_cfg.auth_token = rt_cfg.auth_token = token;
  for (rpc::ClientConfig* c : {&cal_cfg, &rt_cfg}) {  // plaintext loopback, whatever --tls_* say
    c->tls_ca_file.clear();
    c->tls_cert_file.clear();
    c->tls_key_file.clear();
    c->tls_server_name.clear();
  }
  auto cal = CalibratorStub(cal_cfg);
  auto rt = RuntimeStub(rt_cfg);
  auto ds = UploadDatasetFile(*cal, cal_cfg, (out / "tokens.jsonl").string(), "demo-tokens");
  if (!ds.ok()) return Fail("upload dataset", ds.status());
  std::printf("uploaded %lld samples (%lld tokens)\n", static_cast<long long>(ds->sequences()),
              static_cast<long long>(ds->tokens()));

  auto original = LlamaModel::Open(model_dir.string());
  if (!original.ok()) return Fail("open model", original.status());
  // Held-out-like tokens for the GEMM check: the last sample (the split holds out a quarter).
  auto captured = CaptureFloatInputs(**original, seqs.back());
  if (!captured.ok()) return Fail("capture inputs", captured.status());

  std::vector<Row> rows;
  for (const std::string& scheme : schemes) {
    Row row;
    row.scheme = scheme;
    row.recipe = Describe(scheme);
    std::string lower;
    for (char c : scheme) lower.push_back(static_cast<char>(tolower(c)));
    v1::CreateJobRequest req;
    auto* spec = req.mutable_spec();
    spec->set_model("default");
    spec->set_recipe_yaml(GuideRecipeYaml(scheme, /*gptq=*/true));
    spec->set_dataset(ds->name());
    spec->set_heldout_fraction(0.25);
    spec->set_output_name(lower);
    grpc::ClientContext ctx;
    Prepare(&ctx, cal_cfg);
    v1::CreateJobResponse created;
    if (auto st = cal->CreateJob(&ctx, req, &created); !st.ok()) return Fail("create job " + scheme, st);
    std::fprintf(stderr, "%s: job %s\n", scheme.c_str(), created.job().id().c_str());
    auto job = WaitForJob(*cal, cal_cfg, created.job().id(), /*bar=*/true);
    if (!job.ok()) return Fail("watch job " + scheme, job.status());
    if (job->state() != v1::JOB_STATE_SUCCEEDED) {
      std::fprintf(stderr, "lowbit demo: %s job %s: %s\n", scheme.c_str(), JobStateName(job->state()).c_str(),
                   job->error_message().c_str());
      return 1;
    }
    row.calib_s = (job->finished_unix_ms() - job->started_unix_ms()) / 1000.0;
    auto report = nlohmann::json::parse(job->report_json(), nullptr, false);
    if (!report.is_discarded() && report.contains("eval") && report["eval"].is_object()) {
      const auto& e = report["eval"];
      if (e.contains("kl_mean") && e["kl_mean"].is_number()) row.kl = e["kl_mean"].get<double>();
      if (e.contains("top1_agreement") && e["top1_agreement"].is_number()) row.top1 = e["top1_agreement"].get<double>();
    }

    auto info = LoadFromPath(*rt, rt_cfg, scheme, job->output_path().empty() ? lower : job->output_path());
    if (!info.ok()) return Fail("load " + scheme, info.status());
    auto ckpt = SafetensorsModel::Open((out / "checkpoints" / lower).string());
    if (!ckpt.ok()) return Fail("open checkpoint " + scheme, ckpt.status());
    std::vector<double> lat;
    for (const auto& layer : info->layers()) {
      auto c = CheckLayer(*rt, rt_cfg, scheme, layer.name(), **original, **ckpt, *captured, options.dtype);
      if (!c.ok()) return Fail("gemm " + scheme + " " + layer.name(), c.status());
      row.max_err = std::max(row.max_err, c->rel_error);
      lat.push_back(c->latency_us);
      ++row.layers;
    }
    std::sort(lat.begin(), lat.end());
    row.p50_us = lat.empty() ? 0 : lat[lat.size() / 2];
    row.ok = row.layers > 0 && row.max_err <= ErrorBound(scheme);
    rows.push_back(row);
  }

  std::printf(
      "\n| scheme | recipe | KL mean | top-1 | GEMM rel. error (max over layers) | bound | GEMM p50 (M=%lld, RPC) | "
      "calibration |\n",
      static_cast<long long>(captured->rows));
  std::printf("|---|---|---:|---:|---:|---:|---:|---:|\n");
  bool all_ok = true;
  for (const Row& r : rows) {
    std::printf("| %s | %s | %.5f | %.2f%% | %.4f (%d layers)%s | %.2f | %.0f us | %.1f s |\n", r.scheme.c_str(),
                r.recipe.c_str(), r.kl, 100 * r.top1, r.max_err, r.layers, r.ok ? "" : " FAIL", ErrorBound(r.scheme),
                r.p50_us, r.calib_s);
    all_ok = all_ok && r.ok;
  }
  std::printf(
      "\ncheckpoints in %s; GEMM error = ||Y_runtime - X.W_float^T|| / ||X.W_float^T|| on the float model's "
      "own Linear inputs\n",
      (out / "checkpoints").c_str());
  // Close the client connections first: a server's graceful shutdown waits (up to its grace
  // period) for connected clients to go, and an idle channel nobody polls does not notice the
  // GOAWAY.
  cal.reset();
  rt.reset();
  const int cs = (*calibrator)->Stop(), rs = (*runtime)->Stop();
  if (cs != 0 || rs != 0) std::fprintf(stderr, "lowbit demo: services exited with %d / %d\n", cs, rs);
  return all_ok ? 0 : 1;
}

}  // namespace

int RunDemo(const Args& args) { return Demo(args); }

}  // namespace lowbit::cli
