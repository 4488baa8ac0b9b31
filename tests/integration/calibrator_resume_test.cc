// Crash safety of the calibrator service: `lowbit-calibrator serve` runs as a subprocess, is
// killed (SIGKILL) in the middle of a job after at least one decoder layer was persisted, and is
// started again on the same state dir. The job resumes (Job.resumes = 1) after its last
// persisted layer — not from the start — and writes the same checkpoint bytes (safetensors and
// config.json) as an uninterrupted `lowbit-calibrator calibrate` of the same inputs. A second
// case stops the server with SIGTERM (graceful) with per-layer resume off: the job starts over
// and still writes the same bytes.
#include <cblas.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "calibrator/compute.h"
#include "calibrator/dataset.h"
#include "calibrator/job_builder.h"
#include "calibrator/pipeline.h"
#include "google/protobuf/util/json_util.h"
#include "tests/integration/calibrator_test_util.h"

extern char** environ;

namespace lowbit {
namespace {

using namespace testing_util;
namespace fs = std::filesystem;

constexpr char kToken[] = "resume-token";

struct ServerProcess {
  pid_t pid = -1;
  int port = 0;
};

// Starts `lowbit-calibrator serve` and reads the port from its "listening on" line.
ServerProcess StartServer(const std::string& state, const std::string& models, const std::vector<std::string>& flags,
                          const std::vector<std::string>& env_extra) {
  ServerProcess p;
  int out[2];
  if (pipe(out) != 0) return p;
  std::string binary = std::string(LOWBIT_BINARY_DIR) + "/calibrator/lowbit-calibrator";
  std::vector<std::string> args = {binary, "serve", "--address", "127.0.0.1:0", "--state_dir", state,
                                   "--model_root", models, "--auth_token", kToken};
  args.insert(args.end(), flags.begin(), flags.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  env.insert(env.end(), env_extra.begin(), env_extra.end());
  std::vector<char*> envp;
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, out[0]);
  int rc = posix_spawn(&p.pid, binary.c_str(), &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);
  if (rc != 0) {
    ADD_FAILURE() << "cannot start " << binary;
    close(out[0]);
    p.pid = -1;
    return p;
  }
  std::string line;
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (line.find('\n') == std::string::npos && std::chrono::steady_clock::now() < end) {
    pollfd pfd{out[0], POLLIN, 0};
    if (poll(&pfd, 1, 200) <= 0) continue;
    char buf[256];
    ssize_t n = read(out[0], buf, sizeof buf);
    if (n <= 0) break;
    line.append(buf, n);
  }
  close(out[0]);
  const std::string marker = "listening on 127.0.0.1:";
  size_t at = line.find(marker);
  EXPECT_NE(at, std::string::npos) << "server said: " << line;
  if (at != std::string::npos) p.port = std::atoi(line.c_str() + at + marker.size());
  return p;
}

int Stop(ServerProcess& p, int sig) {
  if (p.pid <= 0) return -1;
  kill(p.pid, sig);
  int status = 0;
  waitpid(p.pid, &status, 0);
  p.pid = -1;
  return status;
}

v1::Job ReadJobFile(const std::string& state, const std::string& id) {
  v1::Job job;
  std::string text = ReadAll(state + "/jobs/" + id + ".json");
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(text, &job).ok()) << text;
  return job;
}

class CalibratorResumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = MakeTempDir("calresume");
    models_ = root_ + "/models";
    fs::create_directories(models_);
    ASSERT_TRUE(WriteSyntheticLlama(models_ + "/m4", TinyModel(/*layers=*/4)).ok());
    tokens_ = TinyTokens(32, 9);
    recipe_ = ReadAll(std::string(LOWBIT_SOURCE_DIR) + "/tests/fixtures/recipes/int8_w8a8.yaml");  // SmoothQuant + GPTQ
    // The uninterrupted run: the CLI on the same inputs.
    ASSERT_TRUE(WriteJsonlTokens(root_ + "/tokens.jsonl", tokens_).ok());
    std::string cmd = std::string(LOWBIT_BINARY_DIR) + "/calibrator/lowbit-calibrator calibrate --quiet --model " +
                      models_ + "/m4 --data " + root_ + "/tokens.jsonl --recipe " + std::string(LOWBIT_SOURCE_DIR) +
                      "/tests/fixtures/recipes/int8_w8a8.yaml --out " + root_ + "/reference > /dev/null";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  void TearDown() override {
    if (server_.pid > 0) Stop(server_, SIGKILL);
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  v1::JobSpec Spec() const {
    v1::JobSpec spec;
    spec.set_model("m4");
    spec.set_recipe_yaml(recipe_);
    spec.set_heldout_fraction(0.1);
    spec.set_output_name("out");
    SetInline(&spec, tokens_);
    return spec;
  }

  // Creates the job and waits until `layers` layers are persisted.
  std::string CreateAndWaitForLayers(v1::CalibratorService::Stub& stub, int64_t layers) {
    v1::CreateJobRequest req;
    *req.mutable_spec() = Spec();
    v1::CreateJobResponse resp;
    grpc::Status s = stub.CreateJob(Ctx(kToken).get(), req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    const std::string id = resp.job().id();
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < end) {
      v1::GetJobRequest g;
      g.set_id(id);
      v1::GetJobResponse gr;
      if (stub.GetJob(Ctx(kToken).get(), g, &gr).ok()) {
        EXPECT_NE(gr.job().state(), v1::JOB_STATE_SUCCEEDED) << "the job ended before the server could be stopped";
        EXPECT_NE(gr.job().state(), v1::JOB_STATE_FAILED) << gr.job().error_message();
        // layers_done counts a layer once its state is on disk; the next layer's first step
        // comes after the job file recorded it.
        const v1::JobProgress& p = gr.job().progress();
        if (Terminal(gr.job().state()) ||
            (p.layers_done() >= layers && p.layer() >= layers && p.phase() != "smoothquant")) {
          return id;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << "no layer was persisted in time";
    return id;
  }

  std::string root_, models_, recipe_;
  std::vector<std::vector<int32_t>> tokens_;
  ServerProcess server_;
};

TEST_F(CalibratorResumeTest, KillNineMidJobThenRestartResumesAfterTheLastLayer) {
  const std::string state = root_ + "/state";
  // Each persisted layer is followed by a pause, so the kill lands mid-job.
  server_ = StartServer(state, models_, {}, {"LOWBIT_CALIBRATOR_TEST_LAYER_PAUSE_MS=1500"});
  ASSERT_GT(server_.port, 0);
  std::string id;
  {
    auto stub = MakeStub(server_.port);
    id = CreateAndWaitForLayers(*stub, 1);
  }
  int status = Stop(server_, SIGKILL);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

  // On disk: the job is RUNNING with its resume state; no checkpoint yet.
  v1::Job on_disk = ReadJobFile(state, id);
  EXPECT_EQ(on_disk.state(), v1::JOB_STATE_RUNNING);
  EXPECT_GE(on_disk.progress().layers_done(), 1) << ReadAll(state + "/jobs/" + id + ".json");
  EXPECT_TRUE(fs::exists(state + "/work/" + id + "/state.safetensors"));
  EXPECT_TRUE(fs::exists(state + "/work/" + id + "/layer-00000.safetensors"));
  EXPECT_TRUE(fs::exists(state + "/work/" + id + "/smoothquant.safetensors"));
  EXPECT_FALSE(fs::exists(state + "/outputs/out"));

  // Restart (a short pause per layer so the watch sees every step).
  server_ = StartServer(state, models_, {}, {"LOWBIT_CALIBRATOR_TEST_LAYER_PAUSE_MS=200"});
  ASSERT_GT(server_.port, 0);
  auto stub = MakeStub(server_.port);
  v1::WatchJobRequest w;
  w.set_id(id);
  auto ctx = Ctx(kToken);
  auto reader = stub->WatchJob(ctx.get(), w);
  v1::WatchJobResponse msg;
  std::vector<v1::Job> seen;
  while (reader->Read(&msg)) seen.push_back(msg.job());
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_FALSE(seen.empty());
  const v1::Job& done = seen.back();
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error_message();
  EXPECT_EQ(done.resumes(), 1);
  // It continued after the persisted layers: no SmoothQuant pass, no layer 0 again.
  for (const v1::Job& j : seen) {
    EXPECT_NE(j.progress().phase(), "smoothquant");
    if (j.progress().phase() == "calibrate") {
      EXPECT_GE(j.progress().layer(), on_disk.progress().layers_done());
    }
  }
  ExpectSameCheckpoint(state + "/outputs/out", root_ + "/reference");
  EXPECT_FALSE(fs::exists(state + "/work/" + id)) << "resume state is removed once the job ends";
  reader.reset();
  stub.reset();  // a graceful shutdown waits out its grace period for connected clients
  EXPECT_EQ(Stop(server_, SIGTERM), 0);
}

TEST_F(CalibratorResumeTest, GracefulStopWithoutPerLayerResumeStartsOverWithTheSameResult) {
  const std::string state = root_ + "/state";
  server_ = StartServer(state, models_, {"--per_layer_resume=false"}, {"LOWBIT_CALIBRATOR_TEST_LAYER_PAUSE_MS=1500"});
  ASSERT_GT(server_.port, 0);
  std::string id;
  {
    auto stub = MakeStub(server_.port);
    // Without per-layer resume nothing is persisted per layer; wait for layer 1's first step.
    v1::CreateJobRequest req;
    *req.mutable_spec() = Spec();
    v1::CreateJobResponse resp;
    grpc::Status cs = stub->CreateJob(Ctx(kToken).get(), req, &resp);
    ASSERT_TRUE(cs.ok()) << cs.error_code() << " " << cs.error_message();
    id = resp.job().id();
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
      ASSERT_LT(std::chrono::steady_clock::now(), end);
      v1::GetJobRequest g;
      g.set_id(id);
      v1::GetJobResponse gr;
      if (stub->GetJob(Ctx(kToken).get(), g, &gr).ok() && gr.job().state() == v1::JOB_STATE_RUNNING &&
          gr.job().progress().phase() != "smoothquant" && gr.job().progress().phase() != "") {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  int status = Stop(server_, SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(ReadJobFile(state, id).state(), v1::JOB_STATE_RUNNING) << "a shutdown must not end the job";
  EXPECT_FALSE(fs::exists(state + "/work/" + id + "/state.safetensors"));

  server_ = StartServer(state, models_, {"--per_layer_resume=false"}, {});
  ASSERT_GT(server_.port, 0);
  auto stub = MakeStub(server_.port);
  v1::Job done = WaitForJob(*stub, kToken, id);
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error_message();
  EXPECT_EQ(done.resumes(), 1);
  ExpectSameCheckpoint(state + "/outputs/out", root_ + "/reference");
  stub.reset();  // a graceful shutdown waits out its grace period for connected clients
  EXPECT_EQ(Stop(server_, SIGTERM), 0);
}

// A graceful stop waits for connected clients only as long as --shutdown_grace_ms (from the
// environment here): with a client still connected, 200 ms instead of the default 5 s. A grace
// that does not parse is refused at start.
TEST_F(CalibratorResumeTest, ShutdownGraceIsConfigurable) {
  server_ = StartServer(root_ + "/state-grace", models_, {}, {"LOWBIT_CALIBRATOR_SHUTDOWN_GRACE_MS=200"});
  ASSERT_GT(server_.port, 0);
  auto stub = MakeStub(server_.port);  // stays connected through the stop
  v1::ListJobsResponse jobs;
  ASSERT_TRUE(stub->ListJobs(Ctx(kToken).get(), v1::ListJobsRequest(), &jobs).ok());
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(Stop(server_, SIGTERM), 0);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 3.0) << "the stop waited past its 200 ms grace (the default is 5 s)";

  const std::string cmd = std::string(LOWBIT_BINARY_DIR) + "/calibrator/lowbit-calibrator serve --address 127.0.0.1:0 "
                          "--state_dir " + root_ + "/state-grace --shutdown_grace_ms=-1 > /dev/null 2>&1";
  const int rc = std::system(cmd.c_str());
  EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) != 0) << "a negative grace must be refused: " << rc;
}

// A job on the tiny model in `root`/m with the recipe file `recipe` (relative to the source tree).
CalibrationJob TinyJob(const std::string& root, const std::string& recipe, const std::string& out,
                       const DatasetOptions& data) {
  const std::string text = ReadAll(std::string(LOWBIT_SOURCE_DIR) + "/" + recipe);
  absl::StatusOr<RecipeChoice> choice = ResolveRecipe(text, recipe, "", "");
  EXPECT_TRUE(choice.ok()) << choice.status();
  absl::StatusOr<CalibrationJob> job =
      BuildCalibrationJob(root + "/m", out, *std::move(choice), TinyTokens(20, 4), data, "inline");
  EXPECT_TRUE(job.ok()) << job.status();
  return *job;
}

// Runs `job` and cancels it once layer `layer` is saved: its resume state stays on disk.
absl::Status RunUntilLayerSaved(const CalibrationJob& job, const PipelineOptions& options, int64_t layer) {
  std::atomic<bool> cancel{false};
  return RunCalibration(
             job, options, CpuCompute(),
             [&](const ProgressEvent& e) {
               if (e.phase == "layer_saved" && e.layer == layer) cancel = true;
             },
             &cancel)
      .status();
}

constexpr char kW8A8Recipe[] = "tests/fixtures/recipes/int8_w8a8.yaml";

// Writes a 3-layer model to root/m and runs the W8A8 job on it (into root/resumed) until layer 1
// is persisted under root/resume: the job, and the options that resume it.
void StopAfterLayer1(const std::string& root, CalibrationJob* job, PipelineOptions* resumable) {
  ASSERT_TRUE(WriteSyntheticLlama(root + "/m", TinyModel(/*layers=*/3)).ok());
  resumable->resume_dir = root + "/resume";
  *job = TinyJob(root, kW8A8Recipe, root + "/resumed", DatasetOptions());
  absl::Status first = RunUntilLayerSaved(*job, *resumable, 1);
  ASSERT_TRUE(absl::IsCancelled(first)) << first;
  ASSERT_TRUE(fs::exists(resumable->resume_dir + "/layer-00001.safetensors"));
}

// The pipeline's resume on its own, in-process: a run stopped (cancelled) after a persisted layer
// and run again on the same resume_dir continues from there and writes what an uninterrupted run
// writes, for recipes that carry state across layers (SmoothQuant scales, static FP8 input and
// KV-cache scales, GPTQ).
TEST(PipelineResumeTest, CancelAfterAPersistedLayerThenResumeEqualsUninterrupted) {
  const std::string root = MakeTempDir("piperesume");
  ASSERT_TRUE(WriteSyntheticLlama(root + "/m", TinyModel(/*layers=*/3)).ok());
  DatasetOptions data;
  data.heldout_fraction = 0.2;
  for (const char* recipe : {"tests/fixtures/recipes/int8_w8a8.yaml", "tests/fixtures/calib/fp8_kv_gptq.yaml"}) {
    SCOPED_TRACE(recipe);
    CalibrationJob reference = TinyJob(root, recipe, root + "/reference", data);
    ASSERT_TRUE(RunCalibration(reference, PipelineOptions(), CpuCompute()).ok());

    PipelineOptions resumable;
    resumable.resume_dir = root + "/resume";
    std::filesystem::remove_all(resumable.resume_dir);
    CalibrationJob job = TinyJob(root, recipe, root + "/resumed", data);
    absl::Status first = RunUntilLayerSaved(job, resumable, 1);
    ASSERT_TRUE(absl::IsCancelled(first)) << first;
    EXPECT_FALSE(fs::exists(root + "/resumed"));
    EXPECT_TRUE(fs::exists(resumable.resume_dir + "/layer-00001.safetensors"));

    std::vector<std::string> phases;
    std::set<int64_t> calibrated;
    absl::StatusOr<CalibrationResult> second = RunCalibration(job, resumable, CpuCompute(), [&](const ProgressEvent& e) {
      phases.push_back(e.phase);
      if (e.phase == "calibrate") calibrated.insert(e.layer);
    });
    ASSERT_TRUE(second.ok()) << second.status();
    EXPECT_EQ(calibrated, (std::set<int64_t>{2})) << "only the layer after the persisted ones runs again";
    EXPECT_EQ(std::count(phases.begin(), phases.end(), "smoothquant"), 0);
    ExpectSameCheckpoint(root + "/resumed", root + "/reference");
    // The report's numbers other than times agree too.
    nlohmann::json a = nlohmann::json::parse(ReadAll(root + "/resumed/report.json"));
    nlohmann::json b = nlohmann::json::parse(ReadAll(root + "/reference/report.json"));
    EXPECT_EQ(a["eval"], b["eval"]);
    EXPECT_EQ(a["total_loss"], b["total_loss"]);
    EXPECT_EQ(a["modules"].size(), b["modules"].size());
    EXPECT_EQ(a.value("kv_cache", nlohmann::json()), b.value("kv_cache", nlohmann::json()));
    EXPECT_EQ(a.value("smoothquant", nlohmann::json()), b.value("smoothquant", nlohmann::json()));
    fs::remove_all(root + "/resumed");
    fs::remove_all(root + "/reference");
  }
  std::error_code ec;
  fs::remove_all(root, ec);
}

// CpuCompute, but reporting another NumericsId: the same job "on another machine".
class OtherMachineCompute final : public Compute {
 public:
  std::string Name() const override { return CpuCompute().Name(); }
  std::string NumericsId() const override { return CpuCompute().NumericsId() + "; another machine"; }
  void Gemm(bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
            const float* b, int64_t ldb, float beta, float* c, int64_t ldc) override {
    CpuCompute().Gemm(transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  void AddGram(int64_t rows, int64_t k, float alpha, const float* x, float* h) override {
    CpuCompute().AddGram(rows, k, alpha, x, h);
  }
  absl::Status CholeskyInverseUpper(int64_t n, float* h) override { return CpuCompute().CholeskyInverseUpper(n, h); }
};

// OpenBLAS's bits depend on its thread count, so resume state saved under one BLAS configuration
// is not reused under another: the run starts over (every layer, SmoothQuant again) and writes
// what an uninterrupted run writes.
TEST(PipelineResumeTest, ResumeUnderAnotherBlasConfigurationStartsOver) {
  const std::string id = CpuCompute().NumericsId();
  EXPECT_NE(id.find(absl::StrCat("threads ", openblas_get_num_threads())), std::string::npos) << id;
  EXPECT_NE(id.find(openblas_get_corename()), std::string::npos) << id;
  const int threads = openblas_get_num_threads();
  openblas_set_num_threads(threads + 1);
  EXPECT_NE(CpuCompute().NumericsId(), id) << "the thread count is part of the identity";
  openblas_set_num_threads(threads);

  const std::string root = MakeTempDir("piperesume-blas");
  CalibrationJob job;
  PipelineOptions resumable;
  ASSERT_NO_FATAL_FAILURE(StopAfterLayer1(root, &job, &resumable));
  CalibrationJob reference = TinyJob(root, kW8A8Recipe, root + "/reference", DatasetOptions());
  ASSERT_TRUE(RunCalibration(reference, PipelineOptions(), CpuCompute()).ok());

  OtherMachineCompute other;
  std::set<int64_t> calibrated;
  int smoothquant = 0;
  absl::StatusOr<CalibrationResult> second = RunCalibration(job, resumable, other, [&](const ProgressEvent& e) {
    if (e.phase == "calibrate") calibrated.insert(e.layer);
    smoothquant += e.phase == "smoothquant";
  });
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(calibrated, (std::set<int64_t>{0, 1, 2})) << "every layer runs again";
  EXPECT_GT(smoothquant, 0);
  ExpectSameCheckpoint(root + "/resumed", root + "/reference");
  std::error_code ec;
  fs::remove_all(root, ec);
}

// State kept for a retry must not outlive the model it was computed from: a model directory
// whose files were replaced (here: other weights of the same shapes, with the old files' sizes and
// modification times) after the run stopped makes the next run start over, and its checkpoint is
// the new model's.
TEST(PipelineResumeTest, ResumeAfterTheModelChangedStartsOver) {
  const std::string root = MakeTempDir("piperesume-model");
  CalibrationJob job;
  PipelineOptions resumable;
  ASSERT_NO_FATAL_FAILURE(StopAfterLayer1(root, &job, &resumable));

  // Replaced as `cp -p` / `rsync -a` would: same names, same sizes, and the old modification times.
  std::map<std::string, fs::file_time_type> mtimes;
  for (const auto& e : fs::directory_iterator(root + "/m")) mtimes[e.path().filename()] = fs::last_write_time(e);
  SyntheticLlamaOptions other = TinyModel(/*layers=*/3);
  other.seed += 1;
  fs::remove_all(root + "/m");
  ASSERT_TRUE(WriteSyntheticLlama(root + "/m", other).ok());
  for (const auto& [name, t] : mtimes) fs::last_write_time(root + "/m/" + name, t);
  CalibrationJob reference = TinyJob(root, kW8A8Recipe, root + "/reference", DatasetOptions());
  ASSERT_TRUE(RunCalibration(reference, PipelineOptions(), CpuCompute()).ok());

  std::set<int64_t> calibrated;
  absl::StatusOr<CalibrationResult> second = RunCalibration(job, resumable, CpuCompute(), [&](const ProgressEvent& e) {
    if (e.phase == "calibrate") calibrated.insert(e.layer);
  });
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(calibrated, (std::set<int64_t>{0, 1, 2})) << "every layer runs again";
  ExpectSameCheckpoint(root + "/resumed", root + "/reference");
  std::error_code ec;
  fs::remove_all(root, ec);
}

}  // namespace
}  // namespace lowbit
