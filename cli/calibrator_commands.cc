// lowbit calibrate | jobs | fetch | upload-dataset | upload-model | uploads: the calibrator's client side.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
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
ABSL_FLAG(std::string, scheme, "",
          "calibrate: preset scheme (W8A8 — also named INT8 —, W8A16, W4A16, W4A16_ASYM, FP8, FP8_DYNAMIC)");
ABSL_FLAG(std::string, algorithm, "gptq", "calibrate: with --scheme, gptq or rtn");
ABSL_FLAG(std::string, recipe, "", "calibrate: an llm-compressor recipe YAML file");
ABSL_FLAG(int32_t, num_calibration_samples, 0, "calibrate: samples used (0 = server default 512)");
ABSL_FLAG(int32_t, max_seq_length, 0, "calibrate: tokens per sample (0 = 2048)");
ABSL_FLAG(double, heldout_fraction, -1, "calibrate: fraction held out for the report (< 0 = 0.1)");
ABSL_FLAG(uint64_t, seed, 0, "calibrate: shuffle seed (0 = 42)");
ABSL_FLAG(std::string, output_name, "", "calibrate: checkpoint name under the output root (default: job id)");
ABSL_FLAG(bool, detach, false, "calibrate / jobs retry: print the job id and return without following the job");
ABSL_FLAG(std::string, out, "",
          "fetch / demo / bench-rpc: output directory (fetch: new, empty, or holding only this result's files; "
          "demo, bench-rpc: new, empty, or made by an earlier run of the same command)");
ABSL_FLAG(bool, verify_only, false, "fetch: receive and check the result (chunks, CRC-32C) without writing it");
ABSL_FLAG(std::string, state, "", "jobs list: only jobs in this state (queued, running, succeeded, failed, cancelled)");
ABSL_FLAG(bool, keep_output, false, "jobs delete: leave the job's checkpoint in the server's output root");

namespace lowbit::cli {
namespace fs = std::filesystem;

namespace {

void PrintReportSummary(const v1::Job& job) {
  std::printf("job %s %s%s%s\n", job.id().c_str(), JobStateName(job.state()).c_str(),
              job.output_path().empty() ? "" : "  output ", job.output_path().c_str());
  if (job.report_json().empty()) return;
  auto report = nlohmann::json::parse(job.report_json(), nullptr, false);
  if (report.is_discarded() || !report.contains("eval") || !report["eval"].is_object()) return;
  const auto& e = report["eval"];
  auto num = [&](const char* k) { return e.contains(k) && e[k].is_number() ? e[k].get<double>() : NAN; };
  std::printf("held-out: KL mean %.5f  p99 %.5f  top-1 %.2f%%  PPL %.3f (original %.3f)\n", num("kl_mean"),
              num("kl_p99"), 100 * num("top1_agreement"), num("perplexity_quantized"), num("perplexity_original"));
}

// The text of SIGINT's note (set before the handler is installed; the handler only writes it).
char interrupt_note[512];
size_t interrupt_note_size = 0;

void OnInterrupt(int) {
  ssize_t ignored = write(2, interrupt_note, interrupt_note_size);
  (void)ignored;
  raise(SIGINT);  // SA_RESETHAND restored the default: the process ends as interrupted (130)
}

// Follows job `id` to its end with a progress bar, prints its summary, and returns the exit
// status: 0 when it succeeded, 1 when it failed or was cancelled (with its error on stderr) or
// the stream broke. Ctrl-C ends only the following: the note says the job goes on and how to
// find it again.
int FollowJob(CalibratorStubT& stub, const rpc::ClientConfig& config, const std::string& id) {
  const std::string note = absl::StrCat("\nlowbit: interrupted; job ", id,
                                        " goes on on the calibrator: `lowbit jobs watch ", id,
                                        "` follows it again, `lowbit jobs cancel ", id, "` stops it\n");
  interrupt_note_size = std::min(note.size(), sizeof(interrupt_note));
  std::memcpy(interrupt_note, note.data(), interrupt_note_size);
  struct sigaction sa = {};
  sa.sa_handler = OnInterrupt;
  sa.sa_flags = SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  auto job = WaitForJob(stub, config, id, /*bar=*/true);
  signal(SIGINT, SIG_DFL);
  if (!job.ok()) return Fail("watch job", job.status());
  PrintReportSummary(*job);
  if (job->state() == v1::JOB_STATE_SUCCEEDED) return 0;
  std::fprintf(stderr, "lowbit: job %s %s", job->id().c_str(), JobStateName(job->state()).c_str());
  if (job->error_code() != 0 || !job->error_message().empty()) {
    std::fprintf(stderr, ": %s: %s", CodeName(static_cast<grpc::StatusCode>(job->error_code())).c_str(),
                 job->error_message().c_str());
  }
  std::fprintf(stderr, "\n");
  if (job->resume_state_kept()) {
    std::fprintf(stderr, "lowbit: its %lld finished layers are kept; `lowbit jobs retry %s` continues after them\n",
                 static_cast<long long>(job->progress().layers_done()), id.c_str());
  }
  return 1;
}

// A default upload name from `base` (a directory's or a file's name): characters outside
// [A-Za-z0-9._-] become '_', leading dots go (no hidden names); InvalidArgument when nothing is left.
absl::StatusOr<std::string> PlainName(const std::string& base, const std::string& path, size_t max_size = 100) {
  std::string n = base;
  for (auto& c : n)
    if (!isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') c = '_';
  n.erase(0, n.find_first_not_of('.'));
  if (n.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot derive an upload name from '", path, "'; give NAME"));
  }
  return n.substr(0, max_size);
}

// A model directory's default name: the last component of its normalized absolute path, so
// "models/tiny/", "models/tiny/." and "." (in models/tiny) are all "tiny".
absl::StatusOr<std::string> NameFromDir(const std::string& path, size_t max_size = 100) {
  std::error_code ec;
  fs::path p = fs::absolute(path, ec).lexically_normal();
  if (ec) return absl::InvalidArgumentError(absl::StrCat("cannot resolve '", path, "': ", ec.message()));
  if (!p.has_filename()) p = p.parent_path();  // a trailing '/'
  return PlainName(p.filename().string(), path, max_size);
}

// A data file's default name: its name without the extension ("work/tokens.jsonl" -> "tokens").
absl::StatusOr<std::string> NameFromFile(const std::string& path, size_t max_size = 100) {
  return PlainName(fs::path(path).filename().stem().string(), path, max_size);
}

// The local files of a dataset: FILE, and for a .bin its .idx beside it.
std::vector<fs::path> DatasetFiles(const std::string& file) {
  std::vector<fs::path> files = {file};
  if (fs::path(file).extension() == ".bin") files.push_back(fs::path(file).replace_extension(".idx"));
  return files;
}

// An explicit NAME: not empty, ".", ".." (the server checks the rest).
absl::Status CheckName(const std::string& name) {
  if (name.empty() || name == "." || name == "..") {
    return absl::InvalidArgumentError(absl::StrCat("NAME '", name, "' is not a usable upload name"));
  }
  return absl::OkStatus();
}

// Content-addressed upload names for `calibrate`: "<name>-<CRC-32C of the bytes>", so running
// it again with the same data reuses the earlier upload (uploads are immutable: the server
// refuses a second upload under a name with ALREADY_EXISTS).
absl::StatusOr<std::string> ContentName(const std::string& name, const std::vector<fs::path>& files) {
  uint32_t crc = 0;
  for (const auto& f : files) {
    auto mapped = MappedFile::Open(f.string());
    if (!mapped.ok()) return mapped.status();
    const std::string fname = f.filename().string();
    crc = rpc::Crc32c(fname.data(), fname.size(), crc);
    crc = rpc::Crc32c((*mapped)->bytes().data(), (*mapped)->bytes().size(), crc);
  }
  return absl::StrFormat("%s-%08x", name, crc);
}

bool AlreadyExists(const absl::Status& s) { return s.code() == absl::StatusCode::kAlreadyExists; }

}  // namespace

int RunUploadDataset(const Args& args) {
  if (args.empty() || args.size() > 2) {
    std::fprintf(stderr, "usage: lowbit upload-dataset FILE(.jsonl|.bin) [NAME]\n");
    return 2;
  }
  absl::StatusOr<std::string> name = args.size() > 1 ? absl::StatusOr<std::string>(args[1]) : NameFromFile(args[0]);
  if (absl::Status c = name.ok() ? CheckName(*name) : absl::OkStatus(); !c.ok()) name = c;
  if (!name.ok()) return UsageError("upload-dataset", std::string(name.status().message()));
  for (const fs::path& f : DatasetFiles(args[0])) {  // a missing local file is a usage error, not the server's
    if (auto mapped = MappedFile::Open(f.string()); !mapped.ok()) {
      return UsageError("upload-dataset", std::string(mapped.status().message()));
    }
  }
  auto config = CalibratorConfig();
  auto stub = CalibratorStub(config);
  auto r = UploadDatasetFile(*stub, config, args[0], *name);
  if (!r.ok()) return Fail("upload-dataset", r.status());
  std::printf("dataset %s: %lld sequences, %lld tokens, %lld bytes\n", r->name().c_str(),
              static_cast<long long>(r->sequences()), static_cast<long long>(r->tokens()),
              static_cast<long long>(r->bytes()));
  return 0;
}

int RunUploadModel(const Args& args) {
  if (args.empty() || args.size() > 2) {
    std::fprintf(stderr, "usage: lowbit upload-model DIR [NAME]\n");
    return 2;
  }
  absl::StatusOr<std::string> name = args.size() > 1 ? absl::StatusOr<std::string>(args[1]) : NameFromDir(args[0]);
  if (absl::Status c = name.ok() ? CheckName(*name) : absl::OkStatus(); !c.ok()) name = c;
  if (!name.ok()) return UsageError("upload-model", std::string(name.status().message()));
  if (std::error_code ec; !fs::is_directory(args[0], ec)) {
    return UsageError("upload-model", absl::StrCat("'", args[0], "' is not a directory"));
  }
  auto config = CalibratorConfig();
  auto r = UploadModelDir(*ChannelFor(config), config, args[0], *name);
  if (!r.ok()) return Fail("upload-model", r.status());
  std::printf("model %s: %d files, %lld bytes\n", r->model().c_str(), r->files(), static_cast<long long>(r->bytes()));
  return 0;
}

int RunCalibrate(const Args& args) {
  // Every argument is checked, and every local file read, before anything is uploaded.
  const std::string cmd = "calibrate";
  if (!args.empty()) {
    return UsageError(cmd, absl::StrCat("takes no positional arguments (got '", args[0],
                                        "'); give --model / --upload_model, --scheme / --recipe, --data / --dataset"));
  }
  const std::string model = absl::GetFlag(FLAGS_model), upload_model = absl::GetFlag(FLAGS_upload_model);
  const std::string scheme = absl::GetFlag(FLAGS_scheme), recipe = absl::GetFlag(FLAGS_recipe);
  const std::string data = absl::GetFlag(FLAGS_data), dataset = absl::GetFlag(FLAGS_dataset);
  if (model.empty() == upload_model.empty()) {
    return UsageError(cmd, model.empty() ? "give --model (under the server's model root) or --upload_model DIR"
                                         : "give --model or --upload_model, not both");
  }
  if (scheme.empty() == recipe.empty()) {
    return UsageError(cmd, scheme.empty() ? "give --scheme or --recipe" : "give --scheme or --recipe, not both");
  }
  if (!recipe.empty() && absl::GetFlag(FLAGS_algorithm) != "gptq") {
    return UsageError(cmd, "--algorithm goes with --scheme; a recipe names its own algorithms");
  }
  if (data.empty() == dataset.empty()) {
    return UsageError(cmd, data.empty() ? "give --data FILE or --dataset NAME" : "give --data or --dataset, not both");
  }
  v1::JobSpec spec;
  spec.set_model(model);
  if (!recipe.empty()) {
    auto yaml = ReadFileToString(recipe);
    if (!yaml.ok()) return UsageError(cmd, absl::StrCat("--recipe: ", yaml.status().message()));
    spec.set_recipe_yaml(*yaml);
  } else {
    spec.set_scheme(scheme);
    spec.set_algorithm(absl::GetFlag(FLAGS_algorithm));
  }
  std::string model_upload_name;
  if (!upload_model.empty()) {
    std::error_code ec;
    if (!fs::is_directory(upload_model, ec)) {
      return UsageError(cmd, absl::StrCat("--upload_model '", upload_model, "' is not a directory"));
    }
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(upload_model, ec))
      if (e.is_regular_file()) files.push_back(e.path());
    if (ec) return UsageError(cmd, absl::StrCat("cannot list --upload_model '", upload_model, "': ", ec.message()));
    std::sort(files.begin(), files.end());
    absl::StatusOr<std::string> base = NameFromDir(upload_model, 90);
    if (base.ok()) base = ContentName(*base, files);
    if (!base.ok()) return UsageError(cmd, absl::StrCat("--upload_model: ", base.status().message()));
    model_upload_name = *base;
    spec.set_model("uploads/" + model_upload_name);
  }
  if (!data.empty()) {
    const std::vector<fs::path> files = DatasetFiles(data);
    absl::StatusOr<std::string> name = NameFromFile(data, 90);
    if (name.ok()) name = ContentName(*name, files);
    if (!name.ok()) return UsageError(cmd, absl::StrCat("--data: ", name.status().message()));
    spec.set_dataset(*name);
  } else {
    spec.set_dataset(dataset);
  }
  spec.set_num_calibration_samples(absl::GetFlag(FLAGS_num_calibration_samples));
  spec.set_max_seq_length(absl::GetFlag(FLAGS_max_seq_length));
  spec.set_heldout_fraction(absl::GetFlag(FLAGS_heldout_fraction));
  spec.set_seed(absl::GetFlag(FLAGS_seed));
  spec.set_output_name(absl::GetFlag(FLAGS_output_name));

  auto config = CalibratorConfig();
  auto channel = ChannelFor(config);
  auto stub = v1::CalibratorService::NewStub(channel);
  if (!upload_model.empty()) {
    auto r = UploadModelDir(*channel, config, upload_model, model_upload_name);
    if (!r.ok() && !AlreadyExists(r.status())) return Fail("upload-model", r.status());
  }
  if (!data.empty()) {
    auto r = UploadDatasetFile(*stub, config, data, spec.dataset());
    if (!r.ok() && !AlreadyExists(r.status())) return Fail("upload-dataset", r.status());
  }

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
  return FollowJob(*stub, config, resp.job().id());
}

int RunJobs(const Args& args) {
  const std::string verb = args.empty() ? "list" : args[0];
  static const std::set<std::string> verbs = {"list", "get", "cancel", "retry", "delete", "watch"};
  if (!verbs.count(verb)) {
    return UsageError("jobs", "unknown verb '" + verb + "' (list, get ID, cancel ID, retry ID, delete ID, watch ID)");
  }
  if (absl::GetFlag(FLAGS_keep_output) && verb != "delete") {
    return UsageError("jobs", "--keep_output is a flag of jobs delete, not of jobs " + verb);
  }
  if (absl::GetFlag(FLAGS_detach) && verb != "retry") {
    return UsageError("jobs", "--detach is a flag of calibrate and jobs retry, not of jobs " + verb);
  }
  if (verb == "list" ? args.size() > 1 : args.size() != 2) {
    return UsageError("jobs", verb == "list" ? "list takes no arguments (got '" + args[1] + "')"
                                             : "usage: lowbit jobs " + verb + " ID");
  }
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
  const std::string& id = args[1];
  if (verb == "get") {
    grpc::ClientContext ctx;
    Prepare(&ctx, config);
    v1::GetJobRequest req;
    req.set_id(id);
    v1::GetJobResponse resp;
    if (auto st = stub->GetJob(&ctx, req, &resp); !st.ok()) return Fail("get job", st);
    nlohmann::json job = MessageJson(resp.job());
    if (!resp.job().report_json().empty()) {  // the report inline, not as an escaped string
      auto report = nlohmann::json::parse(resp.job().report_json(), nullptr, false);
      if (!report.is_discarded()) {
        job.erase("report_json");
        job["report"] = std::move(report);
      }
    }
    std::printf("%s\n", job.dump(2).c_str());
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
  if (verb == "retry") {  // then follows the job, as calibrate does
    grpc::ClientContext ctx;
    Prepare(&ctx, config);
    v1::RetryJobRequest req;
    req.set_id(id);
    v1::RetryJobResponse resp;
    if (auto st = stub->RetryJob(&ctx, req, &resp); !st.ok()) return Fail("retry job", st);
    const int64_t done = resp.job().progress().layers_done();
    std::fprintf(
        stderr, "job %s queued again (retry %d%s)\n", id.c_str(), resp.job().retries(),
        done > 0 ? absl::StrCat(", continuing after its ", done, " finished layers").c_str() : ", from the start");
    if (absl::GetFlag(FLAGS_detach)) {
      std::printf("%s\n", id.c_str());
      return 0;
    }
    return FollowJob(*stub, config, id);
  }
  if (verb == "delete") {
    grpc::ClientContext ctx;
    Prepare(&ctx, config);
    v1::DeleteJobRequest req;
    req.set_id(id);
    req.set_keep_output(absl::GetFlag(FLAGS_keep_output));
    v1::DeleteJobResponse resp;
    if (auto st = stub->DeleteJob(&ctx, req, &resp); !st.ok()) return Fail("delete job", st);
    std::printf("deleted %s (%s), %.1f MB freed%s\n", id.c_str(), JobStateName(resp.job().state()).c_str(),
                resp.freed_bytes() / 1e6,
                req.keep_output() && !resp.job().output_path().empty()
                    ? absl::StrCat("; checkpoint kept in the output root as ", resp.job().output_path()).c_str()
                    : "");
    return 0;
  }
  return FollowJob(*stub, config, id);  // watch
}

int RunUploads(const Args& args) {
  const std::string verb = args.empty() ? "list" : args[0];
  if (verb == "list" ? args.size() > 1 : verb != "delete" || args.size() != 3) {
    return UsageError("uploads", "usage: lowbit uploads [list] | lowbit uploads delete (model | dataset) NAME");
  }
  v1::UploadKind kind = v1::UPLOAD_KIND_UNSPECIFIED;
  if (verb == "delete") {
    if (args[1] != "model" && args[1] != "dataset") {
      return UsageError("uploads", "delete takes 'model' or 'dataset', then the name (got '" + args[1] + "')");
    }
    kind = args[1] == "model" ? v1::UPLOAD_KIND_MODEL : v1::UPLOAD_KIND_DATASET;
  }
  auto config = CalibratorConfig();
  auto stub = CalibratorStub(config);
  grpc::ClientContext ctx;
  Prepare(&ctx, config);
  if (verb == "list") {
    v1::ListUploadsResponse resp;
    if (auto st = stub->ListUploads(&ctx, v1::ListUploadsRequest(), &resp); !st.ok()) return Fail("list uploads", st);
    for (const v1::Upload& u : resp.uploads()) {
      std::printf("%-8s %-40s %12.1f MB%s%s\n", u.kind() == v1::UPLOAD_KIND_MODEL ? "model" : "dataset",
                  (u.kind() == v1::UPLOAD_KIND_MODEL ? "uploads/" + u.name() : u.name()).c_str(), u.bytes() / 1e6,
                  u.used_by().empty() ? "" : "  used by ", absl::StrJoin(u.used_by(), ", ").c_str());
    }
    return 0;
  }
  v1::DeleteUploadRequest req;
  req.set_kind(kind);
  req.set_name(args[2]);
  v1::DeleteUploadResponse resp;
  if (auto st = stub->DeleteUpload(&ctx, req, &resp); !st.ok()) return Fail("delete upload", st);
  std::printf("deleted %s %s, %.1f MB freed\n", args[1].c_str(), args[2].c_str(), resp.freed_bytes() / 1e6);
  return 0;
}

int RunFetch(const Args& args) {
  const bool verify = absl::GetFlag(FLAGS_verify_only);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (args.size() != 1 || out.empty() == !verify) {
    std::fprintf(stderr, "usage: lowbit fetch JOB_ID (--out DIR | --verify_only)\n");
    return 2;
  }
  auto config = CalibratorConfig();
  auto channel = ChannelFor(config);
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<int64_t> bytes;
  bool refused = false;
  if (verify) {
    auto r = FetchResult(*channel, config, args[0]);
    bytes = r.ok() ? absl::StatusOr<int64_t>(r->tensor_bytes) : r.status();
  } else {
    bytes = FetchResultToDir(*channel, config, args[0], out, &refused);
  }
  if (refused) return UsageError("fetch", std::string(bytes.status().message()));
  if (!bytes.ok()) return Fail("fetch", bytes.status());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("fetched %lld tensor bytes (%s) in %.2f s, %.0f MB/s\n", static_cast<long long>(*bytes),
              verify ? "reassembled and CRC-checked, not written" : ("into " + out).c_str(), s, *bytes / 1e6 / s);
  return 0;
}

}  // namespace lowbit::cli
