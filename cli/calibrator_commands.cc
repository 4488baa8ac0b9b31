// lowbit calibrate | jobs | fetch | upload-dataset | upload-model: the calibrator's client side.
#include <cstdio>
#include <algorithm>
#include <chrono>
#include <filesystem>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/calibrator_client.h"
#include "cli/commands.h"
#include "cli/connection.h"
#include "common/file_util.h"
#include "nlohmann/json.hpp"
#include "rpc/crc32c.h"
#include "rpc/status.h"

ABSL_FLAG(std::string, model, "", "calibrate: model directory under the calibrator's model root, or uploads/<name>");
ABSL_FLAG(std::string, upload_model, "", "calibrate: a local model directory to upload first");
ABSL_FLAG(std::string, data, "", "calibrate: local tokens (.jsonl, or .bin with .idx) to upload first");
ABSL_FLAG(std::string, dataset, "", "calibrate: a dataset already uploaded (its name)");
ABSL_FLAG(std::string, scheme, "", "calibrate: preset scheme (W8A8, W8A16, W4A16, W4A16_ASYM, FP8, FP8_DYNAMIC)");
ABSL_FLAG(std::string, algorithm, "gptq", "calibrate: with --scheme, gptq or rtn");
ABSL_FLAG(std::string, recipe, "", "calibrate: an llm-compressor recipe YAML file");
ABSL_FLAG(int32_t, num_calibration_samples, 0, "calibrate: samples used (0 = server default 512)");
ABSL_FLAG(int32_t, max_seq_length, 0, "calibrate: tokens per sample (0 = 2048)");
ABSL_FLAG(double, heldout_fraction, -1, "calibrate: fraction held out for the report (< 0 = 0.1)");
ABSL_FLAG(uint64_t, seed, 0, "calibrate: shuffle seed (0 = 42)");
ABSL_FLAG(std::string, output_name, "", "calibrate: checkpoint name under the output root (default: job id)");
ABSL_FLAG(bool, detach, false, "calibrate: print the job id and return without waiting");
ABSL_FLAG(std::string, out, "", "fetch: output directory");
ABSL_FLAG(bool, verify_only, false, "fetch: receive and check the result (chunks, CRC-32C) without writing it");
ABSL_FLAG(std::string, state, "", "jobs list: only jobs in this state (queued, running, succeeded, failed, cancelled)");

namespace lowbit::cli {
namespace fs = std::filesystem;

namespace {

void PrintReportSummary(const v1::Job& job) {
  std::printf("job %s %s  output %s\n", job.id().c_str(), JobStateName(job.state()).c_str(), job.output_path().c_str());
  if (job.report_json().empty()) return;
  auto report = nlohmann::json::parse(job.report_json(), nullptr, false);
  if (report.is_discarded() || !report.contains("eval") || !report["eval"].is_object()) return;
  const auto& e = report["eval"];
  auto num = [&](const char* k) { return e.contains(k) && e[k].is_number() ? e[k].get<double>() : NAN; };
  std::printf("held-out: KL mean %.5f  p99 %.5f  top-1 %.2f%%  PPL %.3f (original %.3f)\n", num("kl_mean"),
              num("kl_p99"), 100 * num("top1_agreement"), num("perplexity_quantized"), num("perplexity_original"));
}

std::string NameFromPath(const std::string& path) {
  std::string n = fs::path(path).stem().string();
  for (auto& c : n) if (!isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') c = '_';
  return n.empty() ? "data" : n.substr(0, 100);
}

// Content-addressed upload names for `calibrate`: "<stem>-<CRC-32C of the bytes>", so running
// it again with the same data reuses the earlier upload (uploads are immutable: the server
// refuses a second upload under a name with ALREADY_EXISTS).
absl::StatusOr<std::string> ContentName(const std::string& stem, const std::vector<fs::path>& files) {
  uint32_t crc = 0;
  for (const auto& f : files) {
    auto mapped = MappedFile::Open(f.string());
    if (!mapped.ok()) return mapped.status();
    const std::string fname = f.filename().string();
    crc = rpc::Crc32c(fname.data(), fname.size(), crc);
    crc = rpc::Crc32c((*mapped)->bytes().data(), (*mapped)->bytes().size(), crc);
  }
  return absl::StrFormat("%s-%08x", NameFromPath(stem + ".x").substr(0, 90), crc);
}

bool AlreadyExists(const absl::Status& s) { return s.code() == absl::StatusCode::kAlreadyExists; }

}  // namespace

int RunUploadDataset(const Args& args) {
  if (args.empty()) {
    std::fprintf(stderr, "usage: lowbit upload-dataset FILE(.jsonl|.bin) [NAME]\n");
    return 2;
  }
  auto config = CalibratorConfig();
  auto stub = CalibratorStub(config);
  auto r = UploadDatasetFile(*stub, config, args[0], args.size() > 1 ? args[1] : NameFromPath(args[0]));
  if (!r.ok()) return Fail("upload-dataset", r.status());
  std::printf("dataset %s: %lld sequences, %lld tokens, %lld bytes\n", r->name().c_str(),
              static_cast<long long>(r->sequences()), static_cast<long long>(r->tokens()),
              static_cast<long long>(r->bytes()));
  return 0;
}

int RunUploadModel(const Args& args) {
  if (args.empty()) {
    std::fprintf(stderr, "usage: lowbit upload-model DIR [NAME]\n");
    return 2;
  }
  auto config = CalibratorConfig();
  auto r = UploadModelDir(*ChannelFor(config), config, args[0], args.size() > 1 ? args[1] : NameFromPath(args[0]));
  if (!r.ok()) return Fail("upload-model", r.status());
  std::printf("model %s: %d files, %lld bytes\n", r->model().c_str(), r->files(), static_cast<long long>(r->bytes()));
  return 0;
}

int RunCalibrate(const Args& args) {
  auto config = CalibratorConfig();
  auto channel = ChannelFor(config);
  auto stub = v1::CalibratorService::NewStub(channel);
  v1::JobSpec spec;
  spec.set_model(absl::GetFlag(FLAGS_model));
  if (!absl::GetFlag(FLAGS_upload_model).empty()) {
    const fs::path dir = fs::path(absl::GetFlag(FLAGS_upload_model)).lexically_normal();
    std::vector<fs::path> files;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    auto name = ContentName((dir.has_filename() ? dir : dir.parent_path()).filename().string(), files);
    if (!name.ok()) return Fail("upload-model", name.status());
    auto r = UploadModelDir(*channel, config, dir.string(), *name);
    if (!r.ok() && !AlreadyExists(r.status())) return Fail("upload-model", r.status());
    spec.set_model("uploads/" + *name);
  }
  if (spec.model().empty()) {
    std::fprintf(stderr, "lowbit calibrate: give --model (under the server's model root) or --upload_model DIR\n");
    return 2;
  }
  if (!absl::GetFlag(FLAGS_recipe).empty()) {
    auto yaml = ReadFileToString(absl::GetFlag(FLAGS_recipe));
    if (!yaml.ok()) return Fail("calibrate", yaml.status());
    spec.set_recipe_yaml(*yaml);
  } else if (!absl::GetFlag(FLAGS_scheme).empty()) {
    spec.set_scheme(absl::GetFlag(FLAGS_scheme));
    spec.set_algorithm(absl::GetFlag(FLAGS_algorithm));
  } else {
    std::fprintf(stderr, "lowbit calibrate: give --scheme or --recipe\n");
    return 2;
  }
  if (!absl::GetFlag(FLAGS_data).empty()) {
    const fs::path data = absl::GetFlag(FLAGS_data);
    std::vector<fs::path> files = {data};
    if (data.extension() == ".bin") files.push_back(fs::path(data).replace_extension(".idx"));
    auto name = ContentName(data.stem().string(), files);
    if (!name.ok()) return Fail("upload-dataset", name.status());
    auto r = UploadDatasetFile(*stub, config, data.string(), *name);
    if (!r.ok() && !AlreadyExists(r.status())) return Fail("upload-dataset", r.status());
    spec.set_dataset(*name);
  } else if (!absl::GetFlag(FLAGS_dataset).empty()) {
    spec.set_dataset(absl::GetFlag(FLAGS_dataset));
  } else {
    std::fprintf(stderr, "lowbit calibrate: give --data FILE or --dataset NAME\n");
    return 2;
  }
  spec.set_num_calibration_samples(absl::GetFlag(FLAGS_num_calibration_samples));
  spec.set_max_seq_length(absl::GetFlag(FLAGS_max_seq_length));
  spec.set_heldout_fraction(absl::GetFlag(FLAGS_heldout_fraction));
  spec.set_seed(absl::GetFlag(FLAGS_seed));
  spec.set_output_name(absl::GetFlag(FLAGS_output_name));

  grpc::ClientContext ctx;
  Prepare(&ctx, config);
  v1::CreateJobRequest req;
  *req.mutable_spec() = spec;
  v1::CreateJobResponse resp;
  if (auto st = stub->CreateJob(&ctx, req, &resp); !st.ok()) return Fail("create job", st);
  std::fprintf(stderr, "job %s created\n", resp.job().id().c_str());
  if (absl::GetFlag(FLAGS_detach)) {
    std::printf("%s\n", resp.job().id().c_str());
    return 0;
  }
  auto job = WaitForJob(*stub, config, resp.job().id(), /*bar=*/true);
  if (!job.ok()) return Fail("watch job", job.status());
  PrintReportSummary(*job);
  if (job->state() != v1::JOB_STATE_SUCCEEDED) {
    std::fprintf(stderr, "lowbit: job %s %s: %s: %s\n", job->id().c_str(), JobStateName(job->state()).c_str(),
                 CodeName(static_cast<grpc::StatusCode>(job->error_code())).c_str(), job->error_message().c_str());
    return 1;
  }
  return 0;
}

int RunJobs(const Args& args) {
  const std::string verb = args.empty() ? "list" : args[0];
  auto config = CalibratorConfig();
  auto stub = CalibratorStub(config);
  if (verb == "list") {
    v1::ListJobsRequest req;
    const std::string state = absl::GetFlag(FLAGS_state);
    if (!state.empty()) {
      std::string upper = "JOB_STATE_";
      for (char c : state) upper.push_back(static_cast<char>(toupper(c)));
      v1::JobState s;
      if (!v1::JobState_Parse(upper, &s)) {
        std::fprintf(stderr, "lowbit jobs: unknown state '%s'\n", state.c_str());
        return 2;
      }
      req.set_state(s);
    }
    grpc::ClientContext ctx;
    Prepare(&ctx, config);
    v1::ListJobsResponse resp;
    if (auto st = stub->ListJobs(&ctx, req, &resp); !st.ok()) return Fail("list jobs", st);
    for (const auto& j : resp.jobs()) std::printf("%s\n", JobLine(j).c_str());
    return 0;
  }
  if (args.size() < 2) {
    std::fprintf(stderr, "usage: lowbit jobs list | get ID | cancel ID | watch ID\n");
    return 2;
  }
  const std::string& id = args[1];
  if (verb == "get") {
    grpc::ClientContext ctx;
    Prepare(&ctx, config);
    v1::GetJobRequest req;
    req.set_id(id);
    v1::GetJobResponse resp;
    if (auto st = stub->GetJob(&ctx, req, &resp); !st.ok()) return Fail("get job", st);
    std::printf("%s\n", resp.job().DebugString().c_str());
    return 0;
  }
  if (verb == "cancel") {
    grpc::ClientContext ctx;
    Prepare(&ctx, config);
    v1::CancelJobRequest req;
    req.set_id(id);
    v1::CancelJobResponse resp;
    if (auto st = stub->CancelJob(&ctx, req, &resp); !st.ok()) return Fail("cancel job", st);
    std::printf("%s\n", JobLine(resp.job()).c_str());
    return 0;
  }
  if (verb == "watch") {
    auto job = WaitForJob(*stub, config, id, /*bar=*/true);
    if (!job.ok()) return Fail("watch job", job.status());
    PrintReportSummary(*job);
    return job->state() == v1::JOB_STATE_SUCCEEDED ? 0 : 1;
  }
  std::fprintf(stderr, "lowbit jobs: unknown verb '%s' (list, get, cancel, watch)\n", verb.c_str());
  return 2;
}

int RunFetch(const Args& args) {
  const bool verify = absl::GetFlag(FLAGS_verify_only);
  if (args.empty() || (absl::GetFlag(FLAGS_out).empty() && !verify)) {
    std::fprintf(stderr, "usage: lowbit fetch JOB_ID (--out DIR | --verify_only)\n");
    return 2;
  }
  auto config = CalibratorConfig();
  auto channel = ChannelFor(config);
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<int64_t> bytes;
  if (verify) {
    auto r = FetchResult(*channel, config, args[0]);
    bytes = r.ok() ? absl::StatusOr<int64_t>(r->tensor_bytes) : r.status();
  } else {
    bytes = FetchResultToDir(*channel, config, args[0], absl::GetFlag(FLAGS_out));
  }
  if (!bytes.ok()) return Fail("fetch", bytes.status());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("fetched %lld tensor bytes (%s) in %.2f s, %.0f MB/s\n", static_cast<long long>(*bytes),
              verify ? "reassembled and CRC-checked, not written" : ("into " + absl::GetFlag(FLAGS_out)).c_str(), s,
              *bytes / 1e6 / s);
  return 0;
}

}  // namespace lowbit::cli
