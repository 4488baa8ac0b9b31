// lowbit.v1.CalibratorService end to end: the real server (CalibratorServer) in-process on an
// ephemeral loopback port, every RPC driven through the generated stub, on a tiny synthetic
// Llama (hidden 128, 2 layers). Independent expectations: the service's checkpoint equals what
// `lowbit-calibrator calibrate` writes for the same inputs, byte for byte; FetchResult's
// reassembled tensors equal the safetensors file's; QuantizeLayer RTN equals common/numerics;
// GPTQ with H = I equals RTN; jobs run three at a time write the same bytes as one at a time.
// Bad requests get the right code and a message naming the problem, and the server keeps
// serving.
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "calibrator/dataset.h"
#include "calibrator/service/calibrator_server.h"
#include "common/numerics.h"
#include "common/quant_args.h"
#include "common/safetensors.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "rpc/crc32c.h"
#include "rpc/tensor_codec.h"
#include "tests/integration/calibrator_test_util.h"

namespace lowbit {
namespace {

using namespace testing_util;
namespace fs = std::filesystem;

constexpr char kToken[] = "s3cret-token";
constexpr int64_t kMaxUpload = 1 << 20;

// Jobs can be held at the start of layer 1 (the on_progress testing hook) so tests can act on a
// running job deterministically; and gated at the start of layer 0 until the test opens the
// gate, so several jobs are known to be running at once.
struct Hold {
  std::mutex mu;
  std::condition_variable cv;
  bool enabled = false;
  std::string held;  // the job now waiting
  bool gate = false;
  int at_gate = 0;  // jobs now waiting at the gate
  // While set, a job about to write its checkpoint finds a file where the output root should be.
  std::string break_writes_in;
  std::vector<std::string> calibrated;  // "<job id> <layer>" of every calibrate event
};
Hold* g_hold = new Hold();

// Bytes of the regular files under `dir`.
int64_t TreeBytes(const std::string& dir) {
  int64_t total = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) total += static_cast<int64_t>(e.file_size());
  }
  return total;
}

class CalibratorServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = MakeTempDir("calsvc");
    models_ = root_ + "/models";
    fs::create_directories(models_);
    ASSERT_TRUE(WriteSyntheticLlama(models_ + "/tiny", TinyModel()).ok());
    // A model outside the root, and a symlink inside the root pointing at it.
    ASSERT_TRUE(WriteSyntheticLlama(root_ + "/outside", TinyModel()).ok());
    fs::create_directory_symlink(root_ + "/outside", models_ + "/escape");
    tokens_ = TinyTokens();

    absl::StatusOr<std::unique_ptr<calibrator::CalibratorServer>> s = StartServer(root_ + "/state", 1);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s).release();
    stub_ = MakeStub(server_->port()).release();
  }
  // A server on `state_dir` over models_, running at most `max_concurrent_jobs` jobs at once.
  static absl::StatusOr<std::unique_ptr<calibrator::CalibratorServer>> StartServer(
      const std::string& state_dir, int max_concurrent_jobs,
      std::chrono::milliseconds failed_state_retention = calibrator::JobRunnerOptions{}.failed_state_retention) {
    calibrator::CalibratorServerOptions o;
    o.runner.failed_state_retention = failed_state_retention;
    o.server.address = "127.0.0.1:0";
    o.server.auth_token = kToken;
    o.server.shutdown_grace = std::chrono::milliseconds(500);
    o.state_dir = state_dir;
    o.model_root = models_;
    o.max_upload_bytes = kMaxUpload;
    o.runner.max_concurrent_jobs = max_concurrent_jobs;
    o.runner.on_progress = [](const std::string& id, const ProgressEvent& e) {
      std::unique_lock<std::mutex> lock(g_hold->mu);
      if (e.phase == "write" && !g_hold->break_writes_in.empty()) {
        const std::string& outputs = g_hold->break_writes_in;
        fs::rename(outputs, outputs + ".away");
        std::ofstream(outputs) << "not a directory";
      }
      if (e.phase != "calibrate") return;
      g_hold->calibrated.push_back(absl::StrCat(id, " ", e.layer));
      if (e.layer == 0 && g_hold->gate) {
        ++g_hold->at_gate;
        g_hold->cv.notify_all();
        g_hold->cv.wait_for(lock, std::chrono::seconds(30), [] { return !g_hold->gate; });
        --g_hold->at_gate;
        return;
      }
      if (e.layer != 1 || !g_hold->enabled) return;
      g_hold->held = id;
      g_hold->cv.notify_all();
      g_hold->cv.wait_for(lock, std::chrono::seconds(30), [] { return !g_hold->enabled; });
      g_hold->held.clear();
    };
    return calibrator::CalibratorServer::Start(o);
  }
  void TearDown() override {
    Release();
    delete stub_;
    server_->Shutdown();
    delete server_;
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  // Stops the fixture's server and starts another on the same state directory (the jobs come
  // back from their files).
  static void Restart(
      std::chrono::milliseconds failed_state_retention = calibrator::JobRunnerOptions{}.failed_state_retention) {
    Release();
    delete stub_;
    server_->Shutdown();
    delete server_;
    absl::StatusOr<std::unique_ptr<calibrator::CalibratorServer>> s =
        StartServer(root_ + "/state", 1, failed_state_retention);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s).release();
    stub_ = MakeStub(server_->port()).release();
  }
  static grpc::Status Fetch(const std::string& id, v1::ResultHeader* header, int64_t chunk_bytes = 0,
                            std::vector<v1::FetchResultResponse>* files = nullptr) {
    v1::FetchResultRequest freq;
    freq.set_id(id);
    freq.set_chunk_bytes(chunk_bytes);
    auto fctx = Ctx(kToken);
    auto fetch = stub_->FetchResult(fctx.get(), freq);
    v1::FetchResultResponse item;
    while (fetch->Read(&item)) {
      if (item.has_header()) *header = item.header();
      if (item.has_file() && files != nullptr) files->push_back(item);
    }
    return fetch->Finish();
  }

  static void HoldJobs() {
    std::lock_guard<std::mutex> lock(g_hold->mu);
    g_hold->enabled = true;
  }
  static void Release() {
    std::lock_guard<std::mutex> lock(g_hold->mu);
    g_hold->enabled = false;
    g_hold->gate = false;
    g_hold->cv.notify_all();
  }
  // Checkpoint writes fail from now on (the output root is a file while a job writes) until
  // MendWrites() puts the output root back.
  static void BreakWrites() {
    std::lock_guard<std::mutex> lock(g_hold->mu);
    g_hold->break_writes_in = root_ + "/state/outputs";
  }
  static void MendWrites() {
    std::lock_guard<std::mutex> lock(g_hold->mu);
    const std::string outputs = g_hold->break_writes_in;
    g_hold->break_writes_in.clear();
    if (fs::exists(outputs + ".away")) {
      fs::remove(outputs);
      fs::rename(outputs + ".away", outputs);
    }
  }
  // Runs `spec` as output `output` with the checkpoint write failing (BreakWrites), then mends
  // the writes; the job as it ended (FAILED after calibrating every layer).
  static v1::Job RunWithBrokenWrites(v1::JobSpec spec, const std::string& output) {
    BreakWrites();
    spec.set_output_name(output);
    v1::Job job = RunToEnd(spec);
    MendWrites();
    return job;
  }
  // Runs `spec` uninterrupted as output "reference" and reads its checkpoint into `bytes`: what a
  // retried run must write. Fails the test (fatally) when the run does not succeed.
  static void ReferenceCheckpoint(v1::JobSpec spec, std::string* bytes) {
    spec.set_output_name("reference");
    v1::Job ref = RunToEnd(spec);
    ASSERT_EQ(ref.state(), v1::JOB_STATE_SUCCEEDED) << ref.error_message();
    *bytes = ReadAll(root_ + "/state/outputs/reference/model.safetensors");
  }
  // The layers job `id` has calibrated so far (in this process).
  static std::vector<int64_t> Calibrated(const std::string& id) {
    std::lock_guard<std::mutex> lock(g_hold->mu);
    std::vector<int64_t> layers;
    for (const std::string& c : g_hold->calibrated) {
      if (c.rfind(id + " ", 0) == 0) layers.push_back(std::stoll(c.substr(id.size() + 1)));
    }
    return layers;
  }
  static void WaitHeld(const std::string& id) {
    std::unique_lock<std::mutex> lock(g_hold->mu);
    ASSERT_TRUE(g_hold->cv.wait_for(lock, std::chrono::seconds(30), [&] { return g_hold->held == id; }))
        << "job " << id << " never reached layer 1";
  }

  static v1::JobSpec TinySpec(const std::string& scheme = "W4A16") {
    v1::JobSpec spec;
    spec.set_model("tiny");
    spec.set_scheme(scheme);
    SetInline(&spec, tokens_);
    return spec;
  }
  static grpc::Status Create(const v1::JobSpec& spec, v1::Job* job, const std::string& token = kToken) {
    v1::CreateJobRequest req;
    *req.mutable_spec() = spec;
    v1::CreateJobResponse resp;
    grpc::Status s = stub_->CreateJob(Ctx(token).get(), req, &resp);
    if (job != nullptr) *job = resp.job();
    return s;
  }
  static grpc::Status Retry(const std::string& id, v1::Job* job) {
    v1::RetryJobRequest req;
    req.set_id(id);
    v1::RetryJobResponse resp;
    grpc::Status s = stub_->RetryJob(Ctx(kToken).get(), req, &resp);
    if (job != nullptr) *job = resp.job();
    return s;
  }
  static grpc::Status Delete(const std::string& id, bool keep_output, v1::DeleteJobResponse* resp = nullptr) {
    v1::DeleteJobRequest req;
    req.set_id(id);
    req.set_keep_output(keep_output);
    v1::DeleteJobResponse r;
    grpc::Status s = stub_->DeleteJob(Ctx(kToken).get(), req, &r);
    if (resp != nullptr) *resp = r;
    return s;
  }
  static grpc::Status GetJob(const std::string& id, v1::Job* job = nullptr) {
    v1::GetJobRequest req;
    req.set_id(id);
    v1::GetJobResponse resp;
    grpc::Status s = stub_->GetJob(Ctx(kToken).get(), req, &resp);
    if (job != nullptr) *job = resp.job();
    return s;
  }
  static v1::Job RunToEnd(const v1::JobSpec& spec) {
    v1::Job job;
    grpc::Status s = Create(spec, &job);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return WaitForJob(*stub_, kToken, job.id());
  }
  // The server still answers: ListJobs works.
  static void ExpectServing() {
    v1::ListJobsResponse resp;
    grpc::Status s = stub_->ListJobs(Ctx(kToken).get(), v1::ListJobsRequest(), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }

  static inline std::string root_, models_;
  static inline std::vector<std::vector<int32_t>> tokens_;
  static inline calibrator::CalibratorServer* server_ = nullptr;
  static inline v1::CalibratorService::Stub* stub_ = nullptr;
};

#define EXPECT_CODE(status, code, needle)                                                  \
  do {                                                                                     \
    grpc::Status s_ = (status);                                                            \
    EXPECT_EQ(s_.error_code(), grpc::StatusCode::code) << s_.error_message();              \
    EXPECT_NE(s_.error_message().find(needle), std::string::npos)                          \
        << "message '" << s_.error_message() << "' does not mention '" << (needle) << "'"; \
  } while (0)

// ---------------------------------------------------------------------------------------------

TEST_F(CalibratorServiceTest, CheckpointEqualsCliAndFetchResultReassemblesIt) {
  // The CLI on the same model, tokens and settings.
  const std::string data = root_ + "/tokens.jsonl", cli_out = root_ + "/cli-w4a16";
  ASSERT_TRUE(WriteJsonlTokens(data, tokens_).ok());
  std::string cmd = std::string(LOWBIT_BINARY_DIR) + "/calibrator/lowbit-calibrator calibrate --quiet --model " +
                    models_ + "/tiny --data " + data + " --scheme W4A16 --out " + cli_out + " > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;

  v1::JobSpec spec = TinySpec("W4A16");
  spec.set_output_name("w4a16");
  spec.set_heldout_fraction(0.1);  // the CLI's default (the spec's 0 holds nothing out)
  v1::Job job;
  ASSERT_TRUE(Create(spec, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
  EXPECT_FALSE(job.id().empty());

  // WatchJob: the current state first, then updates until the end.
  v1::WatchJobRequest wreq;
  wreq.set_id(job.id());
  auto wctx = Ctx(kToken);
  auto reader = stub_->WatchJob(wctx.get(), wreq);
  std::vector<v1::Job> seen;
  v1::WatchJobResponse msg;
  while (reader->Read(&msg)) seen.push_back(msg.job());
  grpc::Status ws = reader->Finish();
  ASSERT_TRUE(ws.ok()) << ws.error_message();
  ASSERT_GE(seen.size(), 2u);
  const v1::Job& done = seen.back();
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error_message();
  EXPECT_EQ(done.progress().layers_done(), 2);
  EXPECT_EQ(done.progress().num_layers(), 2);
  EXPECT_EQ(done.output_path(), "w4a16");
  EXPECT_NE(done.report_json().find("\"modules\""), std::string::npos);
  bool saw_quantize = false;
  for (const v1::Job& j : seen) saw_quantize |= j.progress().phase() == "quantize" && !j.progress().module().empty();
  EXPECT_TRUE(saw_quantize);

  const std::string out = root_ + "/state/outputs/w4a16";
  ExpectSameCheckpoint(out, cli_out);

  // Metrics: jobs by state, layers done.
  double succeeded = -1, layers = -1;
  for (const prometheus::MetricFamily& f : server_->registry().Collect()) {
    for (const prometheus::ClientMetric& m : f.metric) {
      if (f.name == "lowbit_calibrator_jobs") {
        for (const auto& l : m.label) {
          if (l.name == "state" && l.value == "succeeded") succeeded = m.gauge.value;
        }
      }
      if (f.name == "lowbit_calibrator_layers_done_total") layers = m.counter.value;
    }
  }
  EXPECT_EQ(succeeded, 1);
  EXPECT_EQ(layers, 2);

  // FetchResult in small chunks, reassembled, equals the files.
  v1::FetchResultRequest freq;
  freq.set_id(job.id());
  freq.set_chunk_bytes(1000);
  auto fctx = Ctx(kToken);
  auto fetch = stub_->FetchResult(fctx.get(), freq);
  v1::FetchResultResponse item;
  ASSERT_TRUE(fetch->Read(&item));
  ASSERT_TRUE(item.has_header());
  const v1::ResultHeader header = item.header();
  EXPECT_EQ(header.config_json(), ReadAll(out + "/config.json"));
  EXPECT_EQ(header.recipe_yaml(), ReadAll(out + "/recipe.yaml"));
  EXPECT_EQ(header.report_json(), ReadAll(out + "/report.json"));
  rpc::ChunkAssembler assembler;
  int chunks = 0;
  std::map<std::string, std::string> files;  // the checkpoint's other files, before the tensors
  while (fetch->Read(&item)) {
    if (item.has_file()) {
      EXPECT_EQ(chunks, 0) << "a file piece after a tensor chunk";
      files[item.file().name()] += item.file().data();
      continue;
    }
    ASSERT_TRUE(item.has_chunk());
    EXPECT_LE(item.chunk().data().size(), 1000u);
    ASSERT_TRUE(assembler.Add(item.chunk()).ok());
    ++chunks;
  }
  ASSERT_TRUE(fetch->Finish().ok());
  ASSERT_TRUE(assembler.Finish().ok());
  ASSERT_EQ(header.files_size(), 1);
  EXPECT_EQ(header.files(0).name(), "generation_config.json");
  EXPECT_EQ(files["generation_config.json"], ReadAll(out + "/generation_config.json"));
  absl::StatusOr<std::unique_ptr<SafetensorsModel>> model = SafetensorsModel::Open(out);
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(assembler.tensors().size(), (*model)->names().size());
  EXPECT_EQ(header.tensors(), static_cast<int>((*model)->names().size()));
  EXPECT_EQ(header.tensor_bytes(), assembler.total_bytes());
  EXPECT_GT(chunks, header.tensors());
  for (const std::string& name : (*model)->names()) {
    absl::StatusOr<Tensor> t = (*model)->Get(name);
    ASSERT_TRUE(t.ok());
    auto it = assembler.tensors().find(name);
    ASSERT_NE(it, assembler.tensors().end()) << name;
    EXPECT_EQ(it->second.dtype(), t->dtype()) << name;
    EXPECT_EQ(it->second.shape(), t->shape()) << name;
    EXPECT_TRUE(std::equal(t->bytes().begin(), t->bytes().end(), it->second.bytes().begin(), it->second.bytes().end()))
        << name;
  }
  EXPECT_TRUE(assembler.tensors().count("model.layers.0.self_attn.q_proj.weight_packed"));
  for (const v1::TensorInfo& t : header.manifest()) EXPECT_EQ(t.file(), "model.safetensors") << t.name();
  ASSERT_EQ(header.manifest_size(), header.tensors());

  // A reader too slow for its deadline: the client sees DEADLINE_EXCEEDED, and so do the request
  // metrics (the client's cancel reaches the server just before the server's own deadline).
  {
    auto fetches_by_code = [&] {
      std::map<std::string, double> by_code;
      for (const prometheus::MetricFamily& f : server_->registry().Collect()) {
        if (f.name != "lowbit_rpc_requests_total") continue;
        for (const prometheus::ClientMetric& m : f.metric) {
          std::map<std::string, std::string> l;
          for (const auto& label : m.label) l[label.name] = label.value;
          if (l["method"] == "FetchResult") by_code[l["code"]] += m.counter.value;
        }
      }
      return by_code;
    };
    const std::map<std::string, double> before = fetches_by_code();
    auto slow_ctx = Ctx(kToken);
    slow_ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(150));
    freq.set_chunk_bytes(1);  // far more messages than the transport buffers, and slow to write
    auto slow = stub_->FetchResult(slow_ctx.get(), freq);
    ASSERT_TRUE(slow->Read(&item));
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
    while (slow->Read(&item)) {
    }
    EXPECT_EQ(slow->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    std::map<std::string, double> after = fetches_by_code();
    for (int i = 0; i < 200 && after == before; ++i) {  // the handler ends after the client
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      after = fetches_by_code();
    }
    std::map<std::string, double> added;
    for (const auto& [code, n] : after) {
      const double was = before.count(code) ? before.at(code) : 0;
      if (n != was) added[code] = n - was;
    }
    EXPECT_EQ(added, (std::map<std::string, double>{{"4", 1}}));
  }

  // `lowbit fetch` writes each chunk in place as it arrives (from the header's manifest): the
  // files it writes are the server's, byte for byte, with chunks far smaller than the tensors.
  const std::string fetched = root_ + "/fetched";
  cmd = std::string(LOWBIT_BINARY_DIR) + "/cli/lowbit fetch " + job.id() + " --out " + fetched + " --chunk_bytes 1000" +
        " --calibrator 127.0.0.1:" + std::to_string(server_->port()) + " --token " + kToken + " > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::set<std::string> names, server_names;
  for (const auto& e : fs::directory_iterator(fetched)) names.insert(e.path().filename().string());
  for (const auto& e : fs::directory_iterator(out)) server_names.insert(e.path().filename().string());
  // Every file of the server's checkpoint, generation_config.json (copied from the model) too.
  EXPECT_EQ(names, server_names);
  EXPECT_EQ(names, (std::set<std::string>{"config.json", "generation_config.json", "model.safetensors", "recipe.yaml",
                                          "report.json"}));
  for (const std::string& f : names) EXPECT_EQ(ReadAll(fetched + "/" + f), ReadAll(out + "/" + f)) << f;
}

TEST_F(CalibratorServiceTest, ListJobsFiltersByStateAndBadTokensFailTheJob) {
  v1::Job good = RunToEnd(TinySpec("W8A16"));
  EXPECT_EQ(good.state(), v1::JOB_STATE_SUCCEEDED) << good.error_message();

  v1::JobSpec bad = TinySpec("W8A16");
  bad.clear_inline_tokens();
  SetInline(&bad, {{1, 2, 3}, {4, 300, 6}, {7, 8, 9}});
  bad.set_heldout_fraction(0);
  v1::Job failed = RunToEnd(bad);
  EXPECT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.error_code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_NE(failed.error_message().find("300"), std::string::npos) << failed.error_message();
  EXPECT_NE(failed.error_message().find("vocabulary"), std::string::npos) << failed.error_message();

  v1::ListJobsRequest req;
  req.set_state(v1::JOB_STATE_SUCCEEDED);
  v1::ListJobsResponse resp;
  ASSERT_TRUE(stub_->ListJobs(Ctx(kToken).get(), req, &resp).ok());
  ASSERT_EQ(resp.jobs_size(), 1);
  EXPECT_EQ(resp.jobs(0).id(), good.id());
  req.set_state(v1::JOB_STATE_FAILED);
  ASSERT_TRUE(stub_->ListJobs(Ctx(kToken).get(), req, &resp).ok());
  ASSERT_EQ(resp.jobs_size(), 1);
  EXPECT_EQ(resp.jobs(0).id(), failed.id());
  req.set_state(v1::JOB_STATE_UNSPECIFIED);
  ASSERT_TRUE(stub_->ListJobs(Ctx(kToken).get(), req, &resp).ok());
  EXPECT_EQ(resp.jobs_size(), 2);

  // FetchResult of a job that did not succeed.
  v1::FetchResultRequest freq;
  freq.set_id(failed.id());
  auto fctx = Ctx(kToken);
  auto fetch = stub_->FetchResult(fctx.get(), freq);
  v1::FetchResultResponse item;
  EXPECT_FALSE(fetch->Read(&item));
  EXPECT_CODE(fetch->Finish(), FAILED_PRECONDITION, "JOB_STATE_FAILED");
  // Cancelling a finished job.
  v1::CancelJobRequest creq;
  creq.set_id(good.id());
  v1::CancelJobResponse cresp;
  EXPECT_CODE(stub_->CancelJob(Ctx(kToken).get(), creq, &cresp), FAILED_PRECONDITION, "succeeded");
}

TEST_F(CalibratorServiceTest, RecipeThatMatchesNothingFailsTheJob) {
  v1::JobSpec spec = TinySpec();
  spec.set_recipe_yaml(ReadAll(std::string(LOWBIT_SOURCE_DIR) + "/tests/fixtures/calib/matches_nothing.yaml"));
  v1::Job job = RunToEnd(spec);
  EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.error_code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_NE(job.error_message().find("match no"), std::string::npos) << job.error_message();
  ExpectServing();
}

TEST_F(CalibratorServiceTest, CreateJobRejectsBadSpecs) {
  struct Case {
    std::string name;
    std::function<void(v1::JobSpec&)> edit;
    grpc::StatusCode code;
    std::string needle;
  };
  std::vector<Case> cases = {
      {"path traversal", [](v1::JobSpec& s) { s.set_model("../outside"); }, grpc::StatusCode::INVALID_ARGUMENT, ".."},
      {"nested traversal", [](v1::JobSpec& s) { s.set_model("tiny/../../outside"); },
       grpc::StatusCode::INVALID_ARGUMENT, ".."},
      {"absolute path", [&](v1::JobSpec& s) { s.set_model(root_ + "/outside"); }, grpc::StatusCode::INVALID_ARGUMENT,
       "absolute"},
      {"symlink escape", [](v1::JobSpec& s) { s.set_model("escape"); }, grpc::StatusCode::PERMISSION_DENIED,
       "outside the root"},
      {"missing model", [](v1::JobSpec& s) { s.set_model("nope"); }, grpc::StatusCode::NOT_FOUND, "nope"},
      {"empty model", [](v1::JobSpec& s) { s.set_model(""); }, grpc::StatusCode::INVALID_ARGUMENT, "model"},
      {"missing upload", [](v1::JobSpec& s) { s.set_model("uploads/nothing"); }, grpc::StatusCode::NOT_FOUND,
       "nothing"},
      {"unknown scheme", [](v1::JobSpec& s) { s.set_scheme("W3A5"); }, grpc::StatusCode::INVALID_ARGUMENT,
       "spec.scheme: unknown preset scheme 'W3A5' (known: W8A8"},
      {"unknown algorithm", [](v1::JobSpec& s) { s.set_algorithm("awq"); }, grpc::StatusCode::INVALID_ARGUMENT, "awq"},
      {"bad recipe", [](v1::JobSpec& s) { s.set_recipe_yaml("quant_stage: [1, 2"); },
       grpc::StatusCode::INVALID_ARGUMENT, "recipe"},
      {"no recipe", [](v1::JobSpec& s) { s.clear_scheme(); }, grpc::StatusCode::INVALID_ARGUMENT, "scheme"},
      {"no data", [](v1::JobSpec& s) { s.clear_inline_tokens(); }, grpc::StatusCode::INVALID_ARGUMENT, "data"},
      {"unknown dataset", [](v1::JobSpec& s) { s.set_dataset("nodata"); }, grpc::StatusCode::NOT_FOUND, "nodata"},
      {"bad output name", [](v1::JobSpec& s) { s.set_output_name("a/../b"); }, grpc::StatusCode::INVALID_ARGUMENT,
       "output_name"},
      {"heldout fraction", [](v1::JobSpec& s) { s.set_heldout_fraction(1.5); }, grpc::StatusCode::INVALID_ARGUMENT,
       "heldout_fraction"},
      {"empty inline sequence", [](v1::JobSpec& s) { s.mutable_inline_tokens()->add_sequences(); },
       grpc::StatusCode::INVALID_ARGUMENT, "spec.inline_tokens.sequences[24] is empty"},
      {"only an empty inline sequence",
       [](v1::JobSpec& s) {
         s.clear_inline_tokens();
         s.mutable_inline_tokens()->add_sequences();
       },
       grpc::StatusCode::INVALID_ARGUMENT, "spec.inline_tokens.sequences[0] is empty"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    v1::JobSpec spec = TinySpec();
    c.edit(spec);
    grpc::Status s = Create(spec, nullptr);
    EXPECT_EQ(s.error_code(), c.code) << s.error_message();
    EXPECT_NE(s.error_message().find(c.needle), std::string::npos) << s.error_message();
    ExpectServing();
  }
  v1::ListJobsResponse resp;
  ASSERT_TRUE(stub_->ListJobs(Ctx(kToken).get(), v1::ListJobsRequest(), &resp).ok());
  EXPECT_EQ(resp.jobs_size(), 0) << "a refused spec must not create a job";
}

// A second calibrator on the same state directory is refused at start (it would run the first's
// jobs a second time and write the same files); the first goes on serving; a restart of the first
// takes the directory again (the Restart() of other tests).
TEST_F(CalibratorServiceTest, SecondServerOnTheStateDirIsRefused) {
  absl::StatusOr<std::unique_ptr<calibrator::CalibratorServer>> second = StartServer(root_ + "/state", 1);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find("in use by another lowbit-calibrator"), std::string::npos)
      << second.status();
  ExpectServing();
}

TEST_F(CalibratorServiceTest, UnknownJobIsNotFound) {
  v1::GetJobRequest g;
  g.set_id("job-does-not-exist");
  v1::GetJobResponse gr;
  EXPECT_CODE(stub_->GetJob(Ctx(kToken).get(), g, &gr), NOT_FOUND, "job-does-not-exist");
  v1::CancelJobRequest c;
  c.set_id("job-does-not-exist");
  v1::CancelJobResponse cr;
  EXPECT_CODE(stub_->CancelJob(Ctx(kToken).get(), c, &cr), NOT_FOUND, "job-does-not-exist");
  v1::WatchJobRequest w;
  w.set_id("../../etc/passwd");
  auto wctx = Ctx(kToken);
  auto reader = stub_->WatchJob(wctx.get(), w);
  v1::WatchJobResponse wm;
  EXPECT_FALSE(reader->Read(&wm));
  EXPECT_CODE(reader->Finish(), NOT_FOUND, "no job");
  v1::FetchResultRequest f;
  f.set_id("nope");
  auto fctx = Ctx(kToken);
  auto fetch = stub_->FetchResult(fctx.get(), f);
  v1::FetchResultResponse fm;
  EXPECT_FALSE(fetch->Read(&fm));
  EXPECT_CODE(fetch->Finish(), NOT_FOUND, "nope");
  ExpectServing();
}

TEST_F(CalibratorServiceTest, MissingOrWrongTokenIsUnauthenticated) {
  for (const std::string token : {"", "wrong-token"}) {
    SCOPED_TRACE(token);
    v1::ListJobsResponse resp;
    EXPECT_EQ(stub_->ListJobs(Ctx(token).get(), v1::ListJobsRequest(), &resp).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(Create(TinySpec(), nullptr, token).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    v1::WatchJobRequest w;
    w.set_id("x");
    auto wctx = Ctx(token);
    auto reader = stub_->WatchJob(wctx.get(), w);
    v1::WatchJobResponse wm;
    EXPECT_FALSE(reader->Read(&wm));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
    auto uctx = Ctx(token);
    v1::UploadDatasetResponse ur;
    auto writer = stub_->UploadDataset(uctx.get(), &ur);
    v1::UploadDatasetRequest m;
    m.set_name("unauth");
    m.set_format("jsonl");
    m.set_last(true);
    writer->Write(m);
    writer->WritesDone();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  ExpectServing();
}

// Sends `data` (and `idx`) as an UploadDataset stream in pieces.
grpc::Status UploadDataset(v1::CalibratorService::Stub& stub, const std::string& name, const std::string& format,
                           const std::string& data, const std::string& idx, bool send_last, uint32_t crc_xor = 0,
                           v1::UploadDatasetResponse* out = nullptr) {
  auto ctx = Ctx(kToken);
  v1::UploadDatasetResponse resp;
  auto writer = stub.UploadDataset(ctx.get(), &resp);
  const size_t piece = 4096;
  size_t n = std::max(data.size(), idx.size());
  for (size_t off = 0; off == 0 || off < n; off += piece) {
    v1::UploadDatasetRequest m;
    if (off == 0) {
      m.set_name(name);
      m.set_format(format);
    }
    if (off < data.size()) m.set_data(data.substr(off, piece));
    if (off < idx.size()) m.set_idx_data(idx.substr(off, piece));
    if (send_last && off + piece >= n) {
      m.set_last(true);
      uint32_t crc = rpc::Crc32c(data.data(), data.size());
      crc = rpc::Crc32c(idx.data(), idx.size(), crc);
      m.set_crc32c(crc ^ crc_xor);
    }
    if (!writer->Write(m)) break;
  }
  writer->WritesDone();
  grpc::Status s = writer->Finish();
  if (out != nullptr) *out = resp;
  return s;
}

TEST_F(CalibratorServiceTest, UploadDatasetsThenRunAJobOnOne) {
  const std::string jsonl = root_ + "/up.jsonl", bin = root_ + "/up.bin";
  ASSERT_TRUE(WriteJsonlTokens(jsonl, tokens_).ok());
  ASSERT_TRUE(WriteBinTokens(bin, tokens_).ok());
  int64_t tokens = 0;
  for (const auto& s : tokens_) tokens += static_cast<int64_t>(s.size());

  v1::UploadDatasetResponse resp;
  grpc::Status s = UploadDataset(*stub_, "calib-jsonl", "jsonl", ReadAll(jsonl), "", true, 0, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.sequences(), static_cast<int64_t>(tokens_.size()));
  EXPECT_EQ(resp.tokens(), tokens);
  s = UploadDataset(*stub_, "calib-bin", "bin", ReadAll(bin), ReadAll(root_ + "/up.idx"), true, 0, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.tokens(), tokens);
  // Uploads are immutable.
  EXPECT_CODE(UploadDataset(*stub_, "calib-jsonl", "jsonl", ReadAll(jsonl), "", true), ALREADY_EXISTS, "calib-jsonl");

  // Jobs on an uploaded dataset and on the same tokens inline write the same checkpoint.
  v1::JobSpec a = TinySpec("W8A8");
  a.set_dataset("calib-bin");
  a.set_output_name("from-dataset");
  v1::JobSpec b = TinySpec("W8A8");
  b.set_output_name("inline");
  v1::Job ja = RunToEnd(a), jb = RunToEnd(b);
  ASSERT_EQ(ja.state(), v1::JOB_STATE_SUCCEEDED) << ja.error_message();
  ASSERT_EQ(jb.state(), v1::JOB_STATE_SUCCEEDED) << jb.error_message();
  ExpectSameCheckpoint(root_ + "/state/outputs/from-dataset", root_ + "/state/outputs/inline");
}

TEST_F(CalibratorServiceTest, BadUploadsAreRefusedAndLeaveNothing) {
  const std::string good = "{\"input_ids\": [1, 2, 3, 4]}\n{\"input_ids\": [5, 6, 7]}\n";
  EXPECT_CODE(UploadDataset(*stub_, "truncated", "jsonl", good, "", /*send_last=*/false), INVALID_ARGUMENT,
              "truncated");
  EXPECT_CODE(UploadDataset(*stub_, "badcrc", "jsonl", good, "", true, /*crc_xor=*/1), DATA_LOSS, "CRC-32C");
  EXPECT_CODE(UploadDataset(*stub_, "huge", "jsonl", std::string(kMaxUpload + 4096, ' '), "", true), RESOURCE_EXHAUSTED,
              "limit");
  EXPECT_CODE(UploadDataset(*stub_, "../escape", "jsonl", good, "", true), INVALID_ARGUMENT, "plain name");
  EXPECT_CODE(UploadDataset(*stub_, "fmt", "csv", good, "", true), INVALID_ARGUMENT, "format");
  // The message names the dataset, never the server's temp path.
  {
    grpc::Status s = UploadDataset(*stub_, "notjson", "jsonl", "hello\n", "", true);
    EXPECT_CODE(s, INVALID_ARGUMENT, "dataset 'notjson' does not parse: notjson:1: not valid JSON");
    EXPECT_EQ(s.error_message().find("tmp"), std::string::npos) << s.error_message();
    EXPECT_EQ(s.error_message().find(root_), std::string::npos) << s.error_message();
  }
  {
    std::string bin(12, '\0'), idx(16, '\0');
    idx[8] = 5;  // offsets 0, 5: past the 3 tokens
    grpc::Status s = UploadDataset(*stub_, "badidx", "bin", bin, idx, true);
    EXPECT_CODE(s, INVALID_ARGUMENT, "dataset 'badidx' does not parse: badidx: index offset 1 (5)");
    EXPECT_EQ(s.error_message().find("tmp"), std::string::npos) << s.error_message();
  }
  EXPECT_CODE(UploadDataset(*stub_, "emptyseq", "jsonl", "{\"input_ids\": []}\n", "", true), INVALID_ARGUMENT,
              "dataset 'emptyseq': sequence 0 (0-based) has no token ids");
  EXPECT_CODE(UploadDataset(*stub_, "emptyseq2", "jsonl", good + "{\"input_ids\": []}\n", "", true), INVALID_ARGUMENT,
              "sequence 2 (0-based) has no token ids");
  EXPECT_CODE(UploadDataset(*stub_, "blank", "jsonl", "\n\n", "", true), INVALID_ARGUMENT,
              "dataset 'blank' holds no sequences");
  for (const char* name :
       {"truncated", "badcrc", "huge", "fmt", "notjson", "badidx", "emptyseq", "emptyseq2", "blank"}) {
    v1::JobSpec spec = TinySpec();
    spec.set_dataset(name);
    EXPECT_CODE(Create(spec, nullptr), NOT_FOUND, name);
  }
  EXPECT_TRUE(fs::is_empty(root_ + "/state/datasets"));
  EXPECT_TRUE(fs::is_empty(root_ + "/state/tmp"));
  ExpectServing();
}

grpc::Status UploadModelDir(v1::CalibratorService::Stub& stub, const std::string& name, const std::string& dir,
                            bool truncate, bool corrupt, v1::UploadModelResponse* out = nullptr,
                            bool name_alone = false) {
  auto ctx = Ctx(kToken);
  v1::UploadModelResponse resp;
  auto writer = stub.UploadModel(ctx.get(), &resp);
  bool first = true;
  if (name_alone) {  // a first message with only the name
    v1::UploadModelRequest m;
    m.set_name(name);
    writer->Write(m);
    first = false;
  }
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string file = entry.path().filename().string();
    const std::string bytes = ReadAll(entry.path().string());
    const size_t piece = 16 << 10;
    for (size_t off = 0; off == 0 || off < bytes.size(); off += piece) {
      v1::UploadModelRequest m;
      if (first) m.set_name(name);
      first = false;
      m.set_file_name(file);
      m.set_offset(static_cast<int64_t>(off));
      m.set_data(bytes.substr(off, piece));
      bool last = off + piece >= bytes.size();
      if (last && truncate && file == "model.safetensors") break;
      if (last) {
        m.set_file_last(true);
        m.set_crc32c(rpc::Crc32c(bytes.data(), bytes.size()) ^ (corrupt ? 0x10u : 0u));
      }
      writer->Write(m);
    }
    if (truncate && file == "model.safetensors") break;
  }
  writer->WritesDone();
  grpc::Status s = writer->Finish();
  if (out != nullptr) *out = resp;
  return s;
}

TEST_F(CalibratorServiceTest, UploadModelThenCalibrateIt) {
  v1::UploadModelResponse resp;
  grpc::Status s = UploadModelDir(*stub_, "tiny-up", models_ + "/tiny", false, false, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.model(), "uploads/tiny-up");
  EXPECT_GE(resp.files(), 2);
  EXPECT_CODE(UploadModelDir(*stub_, "trunc", models_ + "/tiny", true, false), INVALID_ARGUMENT, "truncated");
  EXPECT_CODE(UploadModelDir(*stub_, "corrupt", models_ + "/tiny", false, true), DATA_LOSS, "CRC-32C");
  EXPECT_CODE(UploadModelDir(*stub_, "tiny-up", models_ + "/tiny", false, false), ALREADY_EXISTS, "tiny-up");

  v1::JobSpec a = TinySpec("W8A16");
  a.set_model("uploads/tiny-up");
  a.set_algorithm("rtn");
  a.set_output_name("uploaded");
  v1::JobSpec b = TinySpec("W8A16");
  b.set_algorithm("rtn");
  b.set_output_name("rooted");
  v1::Job ja = RunToEnd(a), jb = RunToEnd(b);
  ASSERT_EQ(ja.state(), v1::JOB_STATE_SUCCEEDED) << ja.error_message();
  ASSERT_EQ(jb.state(), v1::JOB_STATE_SUCCEEDED) << jb.error_message();
  EXPECT_EQ(ReadAll(root_ + "/state/outputs/uploaded/model.safetensors"),
            ReadAll(root_ + "/state/outputs/rooted/model.safetensors"));
  v1::JobSpec c = TinySpec();
  c.set_model("uploads/trunc");
  EXPECT_CODE(Create(c, nullptr), NOT_FOUND, "trunc");
}

// ListUploads lists datasets and models with their bytes and the unfinished jobs that use them;
// DeleteUpload removes one (its files gone, its name free again), refuses while a queued or running
// job uses it, and a failed job that used it then cannot be retried (NOT_FOUND naming it).
TEST_F(CalibratorServiceTest, UploadsAreListedAndDeletedWhenNoUnfinishedJobUsesThem) {
  const std::string jsonl = root_ + "/up.jsonl";
  ASSERT_TRUE(WriteJsonlTokens(jsonl, tokens_).ok());
  ASSERT_TRUE(UploadDataset(*stub_, "toks", "jsonl", ReadAll(jsonl), "", true).ok());
  ASSERT_TRUE(UploadModelDir(*stub_, "tiny-up", models_ + "/tiny", false, false).ok());
  auto list = [] {
    v1::ListUploadsResponse resp;
    grpc::Status s = stub_->ListUploads(Ctx(kToken).get(), v1::ListUploadsRequest(), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  };
  auto remove = [](v1::UploadKind kind, const std::string& name, v1::DeleteUploadResponse* out = nullptr) {
    v1::DeleteUploadRequest req;
    req.set_kind(kind);
    req.set_name(name);
    v1::DeleteUploadResponse resp;
    grpc::Status s = stub_->DeleteUpload(Ctx(kToken).get(), req, &resp);
    if (out != nullptr) *out = resp;
    return s;
  };
  const int64_t model_bytes = TreeBytes(root_ + "/state/models/tiny-up");
  v1::ListUploadsResponse l = list();
  ASSERT_EQ(l.uploads_size(), 2);
  EXPECT_EQ(l.uploads(0).kind(), v1::UPLOAD_KIND_DATASET);
  EXPECT_EQ(l.uploads(0).name(), "toks");
  EXPECT_EQ(l.uploads(0).bytes(), static_cast<int64_t>(fs::file_size(jsonl)));
  EXPECT_EQ(l.uploads(1).kind(), v1::UPLOAD_KIND_MODEL);
  EXPECT_EQ(l.uploads(1).name(), "tiny-up");
  EXPECT_EQ(l.uploads(1).bytes(), model_bytes);
  EXPECT_EQ(l.uploads(1).bytes(), TreeBytes(models_ + "/tiny")) << "the upload holds the model's files";
  EXPECT_GT(l.uploads(1).modified_unix_ms(), 0);
  EXPECT_TRUE(l.uploads(1).used_by().empty());

  // A running job holds both: listed as their user, and neither can be deleted.
  HoldJobs();
  v1::JobSpec spec = TinySpec("W8A16");
  spec.set_algorithm("rtn");
  spec.set_model("uploads/tiny-up");
  spec.clear_inline_tokens();
  spec.set_dataset("toks");
  spec.set_output_name("from-uploads");
  v1::Job j;
  ASSERT_TRUE(Create(spec, &j).ok());
  WaitHeld(j.id());
  l = list();
  ASSERT_EQ(l.uploads_size(), 2);
  EXPECT_EQ(std::vector<std::string>(l.uploads(0).used_by().begin(), l.uploads(0).used_by().end()),
            std::vector<std::string>{j.id()});
  EXPECT_EQ(std::vector<std::string>(l.uploads(1).used_by().begin(), l.uploads(1).used_by().end()),
            std::vector<std::string>{j.id()});
  EXPECT_CODE(remove(v1::UPLOAD_KIND_MODEL, "tiny-up"), FAILED_PRECONDITION,
              "model 'uploads/tiny-up' is used by job " + j.id() + " (running)");
  EXPECT_CODE(remove(v1::UPLOAD_KIND_DATASET, "toks"), FAILED_PRECONDITION,
              "dataset 'toks' is used by job " + j.id() + " (running)");
  Release();
  ASSERT_EQ(WaitForJob(*stub_, kToken, j.id()).state(), v1::JOB_STATE_SUCCEEDED);

  // Ended: deleted, bytes counted, gone from disk and from the list; the name can be uploaded again.
  v1::DeleteUploadResponse d;
  grpc::Status s = remove(v1::UPLOAD_KIND_MODEL, "tiny-up", &d);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(d.freed_bytes(), model_bytes);
  EXPECT_EQ(d.upload().name(), "tiny-up");
  EXPECT_FALSE(fs::exists(root_ + "/state/models/tiny-up"));
  EXPECT_TRUE(fs::is_empty(root_ + "/state/tmp")) << "nothing left in the trash";
  l = list();
  ASSERT_EQ(l.uploads_size(), 1);
  EXPECT_EQ(l.uploads(0).name(), "toks");
  EXPECT_CODE(Create(spec, nullptr), NOT_FOUND, "uploads/tiny-up");
  EXPECT_CODE(remove(v1::UPLOAD_KIND_MODEL, "tiny-up"), NOT_FOUND, "tiny-up");
  EXPECT_CODE(remove(v1::UPLOAD_KIND_UNSPECIFIED, "toks"), INVALID_ARGUMENT, "upload kind");
  EXPECT_CODE(remove(v1::UPLOAD_KIND_DATASET, "../jobs"), INVALID_ARGUMENT, "not a plain name");

  // A failed job on the dataset; once the dataset is deleted, its retry names what is missing.
  v1::JobSpec f = TinySpec("W8A16");
  f.clear_inline_tokens();
  f.set_dataset("toks");
  f.set_recipe_yaml(ReadAll(std::string(LOWBIT_SOURCE_DIR) + "/tests/fixtures/calib/matches_nothing.yaml"));
  v1::Job jf = RunToEnd(f);
  ASSERT_EQ(jf.state(), v1::JOB_STATE_FAILED);
  ASSERT_TRUE(remove(v1::UPLOAD_KIND_DATASET, "toks").ok());
  EXPECT_CODE(Retry(jf.id(), nullptr), FAILED_PRECONDITION, "job " + jf.id() + " cannot be retried: dataset 'toks'");
  ASSERT_TRUE(UploadModelDir(*stub_, "tiny-up", models_ + "/tiny", false, false).ok());
  EXPECT_EQ(list().uploads_size(), 1);
  ExpectServing();
}

// UploadModel's first message may carry the name alone; a stream without a name, or a file piece
// without its file_name, is refused saying what the message must carry. A model that does not
// load is named by the client's file names, not the server's temp paths.
TEST_F(CalibratorServiceTest, UploadModelFirstMessageAndErrorsNameTheClientsFiles) {
  v1::UploadModelResponse resp;
  grpc::Status s = UploadModelDir(*stub_, "name-alone", models_ + "/tiny", false, false, &resp, /*name_alone=*/true);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.model(), "uploads/name-alone");
  EXPECT_EQ(resp.files(), static_cast<int>(std::distance(fs::directory_iterator(models_ + "/tiny"), {})));

  auto send = [&](const std::vector<v1::UploadModelRequest>& msgs) {
    auto ctx = Ctx(kToken);
    v1::UploadModelResponse r;
    auto writer = stub_->UploadModel(ctx.get(), &r);
    for (const auto& m : msgs) writer->Write(m);
    writer->WritesDone();
    return writer->Finish();
  };
  const std::string config = ReadAll(models_ + "/tiny/config.json");
  v1::UploadModelRequest piece;
  piece.set_file_name("config.json");
  piece.set_data(config);
  piece.set_file_last(true);
  piece.set_crc32c(rpc::Crc32c(config.data(), config.size()));
  EXPECT_CODE(send({piece}), INVALID_ARGUMENT, "model name is missing: the first message");
  v1::UploadModelRequest name_only;
  name_only.set_name("nofile");
  v1::UploadModelRequest no_file_name = piece;
  no_file_name.clear_file_name();
  EXPECT_CODE(send({name_only, no_file_name}), INVALID_ARGUMENT, "file_name is missing: the first piece of each file");
  v1::UploadModelRequest first = piece;
  first.set_name("nofile2");
  EXPECT_CODE(send({first, no_file_name}), INVALID_ARGUMENT, "the last complete file was 'config.json'");

  // A config.json that is not JSON: the message says "config.json", not the temp directory.
  const std::string bad_dir = root_ + "/badconfig";
  fs::create_directories(bad_dir);
  ASSERT_TRUE(AtomicWriteFile(bad_dir + "/config.json", "{not json").ok());
  s = UploadModelDir(*stub_, "badconfig", bad_dir, false, false);
  EXPECT_CODE(s, INVALID_ARGUMENT, "model 'badconfig' does not load: config.json");
  EXPECT_EQ(s.error_message().find("tmp"), std::string::npos) << s.error_message();
  EXPECT_EQ(s.error_message().find(root_), std::string::npos) << s.error_message();
  EXPECT_TRUE(fs::is_empty(root_ + "/state/tmp"));
  ExpectServing();
}

TEST_F(CalibratorServiceTest, CancelRunningAndQueuedJobsAndWatchDeadline) {
  HoldJobs();
  v1::Job a, b;
  ASSERT_TRUE(Create(TinySpec(), &a).ok());
  WaitHeld(a.id());
  ASSERT_TRUE(Create(TinySpec("W8A16"), &b).ok());

  // B waits behind A (max_concurrent_jobs = 1).
  v1::GetJobRequest g;
  g.set_id(b.id());
  v1::GetJobResponse gr;
  ASSERT_TRUE(stub_->GetJob(Ctx(kToken).get(), g, &gr).ok());
  EXPECT_EQ(gr.job().state(), v1::JOB_STATE_QUEUED);
  g.set_id(a.id());
  ASSERT_TRUE(stub_->GetJob(Ctx(kToken).get(), g, &gr).ok());
  EXPECT_EQ(gr.job().state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(gr.job().progress().layer(), 1);

  // WatchJob on a job that does not move: the current state, then DEADLINE_EXCEEDED.
  v1::WatchJobRequest w;
  w.set_id(b.id());
  auto wctx = Ctx(kToken, 400);
  auto reader = stub_->WatchJob(wctx.get(), w);
  v1::WatchJobResponse wm;
  ASSERT_TRUE(reader->Read(&wm));
  EXPECT_EQ(wm.job().state(), v1::JOB_STATE_QUEUED);
  EXPECT_FALSE(reader->Read(&wm));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);

  // FetchResult of an unfinished job.
  v1::FetchResultRequest f;
  f.set_id(a.id());
  auto fctx = Ctx(kToken);
  auto fetch = stub_->FetchResult(fctx.get(), f);
  v1::FetchResultResponse fm;
  EXPECT_FALSE(fetch->Read(&fm));
  EXPECT_CODE(fetch->Finish(), FAILED_PRECONDITION, "JOB_STATE_RUNNING");

  // A queued job is cancelled at once.
  v1::CancelJobRequest c;
  c.set_id(b.id());
  v1::CancelJobResponse cr;
  ASSERT_TRUE(stub_->CancelJob(Ctx(kToken).get(), c, &cr).ok());
  EXPECT_EQ(cr.job().state(), v1::JOB_STATE_CANCELLED);

  // A running one at the pipeline's next check.
  c.set_id(a.id());
  ASSERT_TRUE(stub_->CancelJob(Ctx(kToken).get(), c, &cr).ok());
  Release();
  v1::Job ended = WaitForJob(*stub_, kToken, a.id());
  EXPECT_EQ(ended.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(ended.error_code(), static_cast<int>(grpc::StatusCode::CANCELLED));
  EXPECT_FALSE(fs::exists(root_ + "/state/outputs/" + a.id())) << "a cancelled job leaves no checkpoint";
  EXPECT_FALSE(fs::exists(root_ + "/state/work/" + a.id())) << "nor resume state";
  // And the next job runs.
  v1::Job next = RunToEnd(TinySpec("W8A16"));
  EXPECT_EQ(next.state(), v1::JOB_STATE_SUCCEEDED) << next.error_message();
}

// A result directory's files, by name.
std::map<std::string, std::string> ResultFiles(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_regular_file()) out[entry.path().filename().string()] = ReadAll(entry.path().string());
  }
  return out;
}

// report.json without its timings: what must not depend on how the job was scheduled.
nlohmann::json ReportWithoutTimes(const std::string& text) {
  nlohmann::json r = nlohmann::json::parse(text);
  r.erase("seconds");
  for (nlohmann::json& m : r["modules"]) m.erase("seconds");
  return r;
}

// Several jobs at once in one process (max_concurrent_jobs = 3: each on its own worker thread,
// all sharing OpenBLAS) write the same bytes as the same jobs run one at a time. The reference
// is the one-at-a-time run on this fixture's server (max_concurrent_jobs = 1); the concurrent
// run is on a second server with a fresh state dir. Its jobs are gated at the start of layer 0
// until all three are RUNNING there, so their GPTQ passes (Hessians, Cholesky factors, block
// updates, forwards) run at the same time.
TEST_F(CalibratorServiceTest, ConcurrentJobsWriteTheSameBytesAsJobsRunOneAtATime) {
  const std::string fixtures = std::string(LOWBIT_SOURCE_DIR) + "/tests/fixtures";
  std::vector<v1::JobSpec> specs;
  {
    v1::JobSpec s = TinySpec();  // SmoothQuant, then GPTQ W8A8
    s.clear_scheme();
    s.set_recipe_yaml(ReadAll(fixtures + "/recipes/int8_w8a8.yaml"));
    s.set_output_name("sq-gptq-w8a8");
    specs.push_back(s);
  }
  {
    v1::JobSpec s = TinySpec("W4A16");  // GPTQ, grouped int4, with a held-out evaluation
    s.set_heldout_fraction(0.1);
    s.set_output_name("gptq-w4a16");
    specs.push_back(s);
  }
  {
    v1::JobSpec s = TinySpec();  // GPTQ with static FP8 weights and inputs, FP8 KV cache
    s.clear_scheme();
    s.set_recipe_yaml(ReadAll(fixtures + "/calib/fp8_kv_gptq.yaml"));
    s.set_output_name("gptq-fp8-kv");
    specs.push_back(s);
  }

  // The reference: one at a time.
  auto t0 = std::chrono::steady_clock::now();
  for (const v1::JobSpec& spec : specs) {
    v1::Job job = RunToEnd(spec);
    ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << spec.output_name() << ": " << job.error_message();
  }
  auto t1 = std::chrono::steady_clock::now();

  // The same specs, all at once.
  {
    std::lock_guard<std::mutex> lock(g_hold->mu);
    g_hold->gate = true;
  }
  absl::StatusOr<std::unique_ptr<calibrator::CalibratorServer>> started =
      StartServer(root_ + "/state-concurrent", static_cast<int>(specs.size()));
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<calibrator::CalibratorServer> server = *std::move(started);
  auto open_gate = absl::MakeCleanup([] { Release(); });  // before the server shuts down
  std::unique_ptr<v1::CalibratorService::Stub> stub = MakeStub(server->port());
  std::vector<std::string> ids;
  for (const v1::JobSpec& spec : specs) {
    v1::CreateJobRequest req;
    *req.mutable_spec() = spec;
    v1::CreateJobResponse resp;
    grpc::Status s = stub->CreateJob(Ctx(kToken).get(), req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ids.push_back(resp.job().id());
  }
  {
    std::unique_lock<std::mutex> lock(g_hold->mu);
    ASSERT_TRUE(g_hold->cv.wait_for(lock, std::chrono::seconds(60),
                                    [&] { return g_hold->at_gate == static_cast<int>(specs.size()); }))
        << g_hold->at_gate << " of " << specs.size() << " jobs reached layer 0 together";
  }
  v1::ListJobsRequest lreq;
  lreq.set_state(v1::JOB_STATE_RUNNING);
  v1::ListJobsResponse lresp;
  ASSERT_TRUE(stub->ListJobs(Ctx(kToken).get(), lreq, &lresp).ok());
  EXPECT_EQ(lresp.jobs_size(), static_cast<int>(specs.size())) << "the jobs are not all running at once";
  for (const v1::Job& j : lresp.jobs()) {
    EXPECT_EQ(j.progress().phase(), "calibrate") << j.id();
    EXPECT_EQ(j.progress().layer(), 0) << j.id();
  }
  auto t2 = std::chrono::steady_clock::now();
  Release();
  for (size_t i = 0; i < ids.size(); ++i) {
    v1::Job job = WaitForJob(*stub, kToken, ids[i]);
    ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << specs[i].output_name() << ": " << job.error_message();
  }
  auto t3 = std::chrono::steady_clock::now();
  auto ms = [](auto d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); };
  RecordProperty("one_at_a_time_ms", static_cast<int>(ms(t1 - t0)));
  RecordProperty("at_once_ms", static_cast<int>(ms(t3 - t2)));

  // Byte for byte, every file but report.json; report.json but for its timings.
  for (const v1::JobSpec& spec : specs) {
    SCOPED_TRACE(spec.output_name());
    const std::string ref = root_ + "/state/outputs/" + spec.output_name();
    const std::string got = root_ + "/state-concurrent/outputs/" + spec.output_name();
    ExpectSameCheckpoint(ref, got);
    std::map<std::string, std::string> a = ResultFiles(ref), b = ResultFiles(got);
    ASSERT_TRUE(a.count("model.safetensors") && a.count("report.json"));
    std::vector<std::string> names_a, names_b;
    for (const auto& [name, bytes] : a) names_a.push_back(name);
    for (const auto& [name, bytes] : b) names_b.push_back(name);
    EXPECT_EQ(names_a, names_b);
    for (const auto& [name, bytes] : a) {
      if (name == "report.json" || !b.count(name)) continue;
      EXPECT_TRUE(bytes == b[name]) << name << " differs";
    }
    EXPECT_EQ(ReportWithoutTimes(a["report.json"]), ReportWithoutTimes(b["report.json"]));
  }
}

// ---------------------------------------------------------------------------------------------
// Output names: a checkpoint belongs to the job that wrote it.

// The pack-quantized format (W4A16) or int-quantized (W8A16) of a fetched config.json.
std::string FormatOf(const v1::ResultHeader& h) {
  return nlohmann::json::parse(h.config_json())["quantization_config"]["format"].get<std::string>();
}

TEST_F(CalibratorServiceTest, OutputOfASucceededJobIsNeverReplacedAcrossRestarts) {
  v1::JobSpec a = TinySpec("W4A16");
  a.set_algorithm("rtn");
  a.set_output_name("shared");
  v1::Job ja = RunToEnd(a);
  ASSERT_EQ(ja.state(), v1::JOB_STATE_SUCCEEDED) << ja.error_message();
  const std::string out = root_ + "/state/outputs/shared";
  const std::string weights = ReadAll(out + "/model.safetensors");

  // Another job on the same output: refused, naming the job that holds it.
  v1::JobSpec b = TinySpec("W8A16");
  b.set_algorithm("rtn");
  b.set_output_name("shared");
  EXPECT_CODE(Create(b, nullptr), ALREADY_EXISTS, "output 'shared' holds the checkpoint of job " + ja.id());

  // An unfinished job holds its output too.
  HoldJobs();
  v1::JobSpec h = TinySpec("W8A16");
  h.set_algorithm("rtn");
  h.set_output_name("held");
  v1::Job jh;
  ASSERT_TRUE(Create(h, &jh).ok());
  WaitHeld(jh.id());
  EXPECT_CODE(Create(h, nullptr), ALREADY_EXISTS, "output 'held' is being written by job " + jh.id() + " (running)");
  v1::CancelJobRequest creq;
  creq.set_id(jh.id());
  v1::CancelJobResponse cresp;
  ASSERT_TRUE(stub_->CancelJob(Ctx(kToken).get(), creq, &cresp).ok());
  Release();
  ASSERT_EQ(WaitForJob(*stub_, kToken, jh.id()).state(), v1::JOB_STATE_CANCELLED);

  // A failed job's output was never published: its name can be used again, as can a cancelled one's.
  v1::JobSpec f = TinySpec("W8A16");
  f.clear_inline_tokens();
  SetInline(&f, {{1, 2, 3}, {4, 300, 6}});  // 300 ≥ vocab: fails when it runs
  f.set_heldout_fraction(0);
  f.set_output_name("reused");
  v1::Job jf = RunToEnd(f);
  ASSERT_EQ(jf.state(), v1::JOB_STATE_FAILED);
  EXPECT_FALSE(fs::exists(root_ + "/state/outputs/reused"));
  v1::JobSpec g = TinySpec("W8A16");
  g.set_algorithm("rtn");
  g.set_output_name("reused");
  v1::Job jg = RunToEnd(g);
  EXPECT_EQ(jg.state(), v1::JOB_STATE_SUCCEEDED) << jg.error_message();
  v1::Job jh2 = RunToEnd(h);
  EXPECT_EQ(jh2.state(), v1::JOB_STATE_SUCCEEDED) << jh2.error_message();

  // A directory in the output root that no job holds is not replaced either.
  fs::create_directories(root_ + "/state/outputs/stray");
  v1::JobSpec st = TinySpec("W8A16");
  st.set_output_name("stray");
  EXPECT_CODE(Create(st, nullptr), ALREADY_EXISTS, "output 'stray' already exists in the output root");

  // After a restart the check uses the jobs reloaded from their files.
  Restart();
  b.set_output_name("shared");
  EXPECT_CODE(Create(b, nullptr), ALREADY_EXISTS, "output 'shared' holds the checkpoint of job " + ja.id());
  g.set_output_name("reused");
  EXPECT_CODE(Create(g, nullptr), ALREADY_EXISTS, "output 'reused' holds the checkpoint of job " + jg.id());
  EXPECT_EQ(ReadAll(out + "/model.safetensors"), weights);
  v1::ResultHeader header;
  grpc::Status s = Fetch(ja.id(), &header);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(FormatOf(header), "pack-quantized");  // A's W4A16, not a W8A16 that replaced it
  EXPECT_EQ(header.report_json(), ja.report_json() + "\n");
  ExpectServing();
}

// A job whose checkpoint write fails (a transient fault: here the output root is briefly not a
// directory; in life a full disk) keeps its finished layers, across a restart too, and RetryJob
// continues after them: no layer runs again, and the checkpoint is byte for byte an uninterrupted
// run's. A cancelled job retried starts over; a job whose output was taken meanwhile is refused.
TEST_F(CalibratorServiceTest, FailedJobKeepsItsLayersAndRetryContinuesAfterThem) {
  v1::JobSpec spec = TinySpec("W8A8");  // GPTQ
  std::string reference;
  ASSERT_NO_FATAL_FAILURE(ReferenceCheckpoint(spec, &reference));

  v1::Job failed = RunWithBrokenWrites(spec, "retried");
  ASSERT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(failed.error_message().find("/state/outputs"), std::string::npos) << failed.error_message();
  EXPECT_TRUE(failed.resume_state_kept());
  EXPECT_EQ(failed.progress().layers_done(), 2);
  EXPECT_EQ(Calibrated(failed.id()), (std::vector<int64_t>{0, 1}));
  EXPECT_TRUE(fs::exists(root_ + "/state/work/" + failed.id() + "/layer-00001.safetensors"));
  EXPECT_FALSE(fs::exists(root_ + "/state/outputs/retried"));

  Restart();  // the kept state survives it
  v1::Job retried;
  grpc::Status s = Retry(failed.id(), &retried);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(retried.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(retried.retries(), 1);
  EXPECT_EQ(retried.error_code(), 0);
  EXPECT_EQ(retried.error_message(), "");
  EXPECT_EQ(retried.progress().layers_done(), 2);
  retried = WaitForJob(*stub_, kToken, failed.id());
  ASSERT_EQ(retried.state(), v1::JOB_STATE_SUCCEEDED) << retried.error_message();
  EXPECT_FALSE(retried.resume_state_kept());
  EXPECT_EQ(Calibrated(failed.id()), (std::vector<int64_t>{0, 1})) << "the retry calibrated no layer again";
  EXPECT_EQ(ReadAll(root_ + "/state/outputs/retried/model.safetensors"), reference);
  EXPECT_FALSE(fs::exists(root_ + "/state/work/" + failed.id()));

  EXPECT_CODE(Retry(failed.id(), nullptr), FAILED_PRECONDITION, "is succeeded; only a failed or cancelled job");
  EXPECT_CODE(Retry("job-nope", nullptr), NOT_FOUND, "job-nope");

  // Cancelled: the retry starts over (its state went with the cancel) and writes the same bytes.
  HoldJobs();
  spec.set_output_name("cancelled");
  v1::Job c;
  ASSERT_TRUE(Create(spec, &c).ok());
  WaitHeld(c.id());
  v1::CancelJobRequest creq;
  creq.set_id(c.id());
  v1::CancelJobResponse cresp;
  ASSERT_TRUE(stub_->CancelJob(Ctx(kToken).get(), creq, &cresp).ok());
  Release();
  ASSERT_EQ(WaitForJob(*stub_, kToken, c.id()).state(), v1::JOB_STATE_CANCELLED);
  ASSERT_TRUE(Retry(c.id(), nullptr).ok());
  v1::Job c2 = WaitForJob(*stub_, kToken, c.id());
  ASSERT_EQ(c2.state(), v1::JOB_STATE_SUCCEEDED) << c2.error_message();
  EXPECT_EQ(c2.retries(), 1);
  EXPECT_EQ(Calibrated(c.id()), (std::vector<int64_t>{0, 1, 0, 1}));
  EXPECT_EQ(ReadAll(root_ + "/state/outputs/cancelled/model.safetensors"), reference);

  // A failed job whose output another job took meanwhile is not retried into it.
  v1::Job f = RunWithBrokenWrites(spec, "taken");
  ASSERT_EQ(f.state(), v1::JOB_STATE_FAILED);
  v1::JobSpec other = TinySpec("W8A16");
  other.set_algorithm("rtn");
  other.set_output_name("taken");
  v1::Job o = RunToEnd(other);
  ASSERT_EQ(o.state(), v1::JOB_STATE_SUCCEEDED) << o.error_message();
  EXPECT_CODE(Retry(f.id(), nullptr), ALREADY_EXISTS,
              "job " + f.id() + " cannot be retried: output 'taken' holds the checkpoint of job " + o.id());
  v1::GetJobRequest greq;
  greq.set_id(f.id());
  v1::GetJobResponse gresp;
  ASSERT_TRUE(stub_->GetJob(Ctx(kToken).get(), greq, &gresp).ok());
  EXPECT_EQ(gresp.job().state(), v1::JOB_STATE_FAILED) << "a refused retry changes nothing";
  EXPECT_TRUE(gresp.job().resume_state_kept());

  // A failed job whose model was replaced before the retry: its kept layers are not used, and its
  // progress says it started over from its first event on, not the old count until it passes it.
  v1::Job g = RunWithBrokenWrites(spec, "changed");
  ASSERT_EQ(g.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(g.progress().layers_done(), 2);
  SyntheticLlamaOptions replaced = TinyModel();
  replaced.seed = 99;
  fs::remove_all(models_ + "/tiny");
  ASSERT_TRUE(WriteSyntheticLlama(models_ + "/tiny", replaced).ok());
  {
    std::lock_guard<std::mutex> lock(g_hold->mu);
    g_hold->gate = true;  // the retry waits at the start of its layer 0 (Release opens it)
  }
  ASSERT_TRUE(Retry(g.id(), nullptr).ok());
  {
    std::unique_lock<std::mutex> lock(g_hold->mu);
    ASSERT_TRUE(g_hold->cv.wait_for(lock, std::chrono::seconds(30), [] { return g_hold->at_gate == 1; }));
  }
  v1::Job held;
  ASSERT_TRUE(GetJob(g.id(), &held).ok());
  EXPECT_EQ(held.progress().layer(), 0);
  EXPECT_EQ(held.progress().layers_done(), 0) << "the old run's 2 layers are not this run's";
  Release();
  g = WaitForJob(*stub_, kToken, g.id());
  ASSERT_EQ(g.state(), v1::JOB_STATE_SUCCEEDED) << g.error_message();
  EXPECT_EQ(Calibrated(g.id()), (std::vector<int64_t>{0, 1, 0, 1}));
  ExpectServing();
}

// A failed job keeps its finished layers for failed_state_retention, then they go: the job stays
// FAILED with resume_state_kept false and no work dir (also after a restart), and a retry starts
// over and writes the bytes an uninterrupted run writes.
TEST_F(CalibratorServiceTest, FailedJobsKeptLayersGoAfterTheRetention) {
  constexpr auto kRetention = std::chrono::seconds(2);
  Restart(kRetention);
  v1::JobSpec spec = TinySpec("W8A8");
  std::string reference;
  ASSERT_NO_FATAL_FAILURE(ReferenceCheckpoint(spec, &reference));

  v1::Job failed = RunWithBrokenWrites(spec, "expires");
  ASSERT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  ASSERT_TRUE(failed.resume_state_kept());
  const std::string work = root_ + "/state/work/" + failed.id();
  ASSERT_TRUE(fs::exists(work + "/layer-00001.safetensors"));

  v1::Job now = failed;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (now.resume_state_kept() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_TRUE(GetJob(failed.id(), &now).ok());
  }
  const int64_t expired_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  ASSERT_FALSE(now.resume_state_kept()) << "still kept 30 s after a 2 s retention";
  EXPECT_GE(expired_ms - failed.finished_unix_ms(), 2000) << "removed before the retention passed";
  EXPECT_EQ(now.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(now.error_message(), failed.error_message());
  EXPECT_FALSE(fs::exists(work));

  Restart(kRetention);
  ASSERT_TRUE(GetJob(failed.id(), &now).ok());
  EXPECT_EQ(now.state(), v1::JOB_STATE_FAILED);
  EXPECT_FALSE(now.resume_state_kept());
  v1::Job retried;
  ASSERT_TRUE(Retry(failed.id(), &retried).ok());
  EXPECT_EQ(retried.progress().layers_done(), 0) << "nothing kept: it starts over";
  retried = WaitForJob(*stub_, kToken, failed.id());
  ASSERT_EQ(retried.state(), v1::JOB_STATE_SUCCEEDED) << retried.error_message();
  EXPECT_EQ(Calibrated(failed.id()), (std::vector<int64_t>{0, 1, 0, 1})) << "both layers calibrated again";
  EXPECT_EQ(ReadAll(root_ + "/state/outputs/expires/model.safetensors"), reference);
  ExpectServing();
}

// DeleteJob forgets a finished job: its record, its checkpoint (unless keep_output) and any kept
// resume state go, the output name is free again, and all of it holds after a restart. A delete
// cut short by a crash after its checkpoint was moved aside is finished at the next start, and
// a work dir no job owns is removed.
TEST_F(CalibratorServiceTest, DeleteJobForgetsAFinishedJobAndFreesItsFiles) {
  const std::string state = root_ + "/state";
  v1::JobSpec spec = TinySpec("W8A16");
  spec.set_algorithm("rtn");
  spec.set_output_name("gone");
  v1::Job a = RunToEnd(spec);
  ASSERT_EQ(a.state(), v1::JOB_STATE_SUCCEEDED) << a.error_message();
  const int64_t expected = TreeBytes(state + "/outputs/gone") + fs::file_size(state + "/jobs/" + a.id() + ".json");
  v1::DeleteJobResponse d;
  grpc::Status s = Delete(a.id(), false, &d);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(d.job().id(), a.id());
  EXPECT_EQ(d.job().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(d.freed_bytes(), expected);
  EXPECT_FALSE(fs::exists(state + "/outputs/gone"));
  EXPECT_FALSE(fs::exists(state + "/jobs/" + a.id() + ".json"));
  EXPECT_CODE(GetJob(a.id()), NOT_FOUND, a.id());
  v1::ResultHeader header;
  EXPECT_CODE(Fetch(a.id(), &header), NOT_FOUND, a.id());
  EXPECT_CODE(Delete(a.id(), false), NOT_FOUND, a.id());
  v1::Job a2 = RunToEnd(spec);  // the name is free again
  EXPECT_EQ(a2.state(), v1::JOB_STATE_SUCCEEDED) << a2.error_message();

  // keep_output: the checkpoint stays, unowned, so its name is still refused.
  spec.set_output_name("kept");
  v1::Job b = RunToEnd(spec);
  ASSERT_EQ(b.state(), v1::JOB_STATE_SUCCEEDED);
  const int64_t record = fs::file_size(state + "/jobs/" + b.id() + ".json");
  ASSERT_TRUE(Delete(b.id(), true, &d).ok());
  EXPECT_EQ(d.freed_bytes(), record) << "only the record was removed";
  EXPECT_TRUE(fs::exists(state + "/outputs/kept/model.safetensors"));
  EXPECT_CODE(Create(spec, nullptr), ALREADY_EXISTS, "output 'kept' already exists in the output root");

  // A failed job's kept resume state goes with it.
  v1::Job f = RunWithBrokenWrites(TinySpec("W8A8"), "failed");
  ASSERT_EQ(f.state(), v1::JOB_STATE_FAILED);
  ASSERT_TRUE(f.resume_state_kept());
  const int64_t work = TreeBytes(state + "/work/" + f.id());
  ASSERT_GT(work, 0);
  const int64_t f_record = fs::file_size(state + "/jobs/" + f.id() + ".json");
  ASSERT_TRUE(Delete(f.id(), false, &d).ok());
  EXPECT_EQ(d.freed_bytes(), work + f_record);
  EXPECT_FALSE(fs::exists(state + "/work/" + f.id()));

  // Not while it is queued or running.
  HoldJobs();
  spec.set_output_name("running");
  v1::Job r;
  ASSERT_TRUE(Create(spec, &r).ok());
  WaitHeld(r.id());
  EXPECT_CODE(Delete(r.id(), false), FAILED_PRECONDITION, "job " + r.id() + " is running; cancel it first");
  Release();
  ASSERT_EQ(WaitForJob(*stub_, kToken, r.id()).state(), v1::JOB_STATE_SUCCEEDED);

  // A crash after the checkpoint was moved aside (what Delete does first), and a work dir that no
  // job owns: the restart finishes the one and removes the other.
  fs::rename(state + "/outputs/running", state + "/outputs/.deleting+" + r.id());
  fs::create_directories(state + "/work/job-00000000001-orphan");
  std::ofstream(state + "/work/job-00000000001-orphan/state.safetensors") << "x";
  // A job file that does not parse is moved aside as corrupt; its work dir stays for whoever mends it.
  fs::create_directories(state + "/work/job-00000000002-broken");
  std::ofstream(state + "/work/job-00000000002-broken/state.safetensors") << "x";
  std::ofstream(state + "/jobs/job-00000000002-broken.json") << "{ not json";
  Restart();
  EXPECT_TRUE(fs::exists(state + "/jobs/job-00000000002-broken.json.corrupt"));
  EXPECT_TRUE(fs::exists(state + "/work/job-00000000002-broken/state.safetensors"));
  EXPECT_CODE(GetJob(r.id()), NOT_FOUND, r.id());
  EXPECT_FALSE(fs::exists(state + "/outputs/.deleting+" + r.id()));
  EXPECT_FALSE(fs::exists(state + "/jobs/" + r.id() + ".json"));
  EXPECT_FALSE(fs::exists(state + "/work/job-00000000001-orphan"));
  EXPECT_CODE(GetJob(a.id()), NOT_FOUND, a.id());  // deleted before the restart: still gone
  v1::Job a2_after;
  ASSERT_TRUE(GetJob(a2.id(), &a2_after).ok());
  EXPECT_EQ(a2_after.state(), v1::JOB_STATE_SUCCEEDED);
  ExpectServing();
}

// A job found unfinished at start whose output another job holds is not resumed (it would
// replace that checkpoint): it fails with ALREADY_EXISTS. And a state directory from a server
// that let a later job overwrite an earlier one's output: FetchResult of the earlier job says its
// checkpoint is gone rather than returning the other job's.
TEST_F(CalibratorServiceTest, StaleJobsDoNotClobberAnOutputAfterARestart) {
  v1::JobSpec a = TinySpec("W4A16");
  a.set_algorithm("rtn");
  a.set_output_name("out1");
  v1::Job ja = RunToEnd(a);
  ASSERT_EQ(ja.state(), v1::JOB_STATE_SUCCEEDED) << ja.error_message();
  const std::string weights = ReadAll(root_ + "/state/outputs/out1/model.safetensors");

  // Written while the server is down: a job that was running when the server stopped, created
  // before A (its end never recorded), and a second SUCCEEDED job on out1 whose report differs.
  Release();
  delete stub_;
  stub_ = nullptr;
  server_->Shutdown();
  auto write_job = [&](v1::Job job) {
    std::string text;
    ASSERT_TRUE(google::protobuf::util::MessageToJsonString(job, &text).ok());
    ASSERT_TRUE(AtomicWriteFile(root_ + "/state/jobs/" + job.id() + ".json", text).ok());
  };
  v1::Job stale = ja;
  stale.set_id("job-0000000001-stale");
  stale.set_state(v1::JOB_STATE_RUNNING);
  stale.set_created_unix_ms(ja.created_unix_ms() - 1000);
  stale.clear_report_json();
  stale.clear_output_path();
  stale.mutable_spec()->set_scheme("W8A16");
  write_job(stale);
  v1::Job older = ja;
  older.set_id("job-0000000002-older");
  older.set_created_unix_ms(ja.created_unix_ms() - 500);
  older.set_report_json("{\"another\": \"report\"}");
  write_job(older);
  delete server_;
  absl::StatusOr<std::unique_ptr<calibrator::CalibratorServer>> started = StartServer(root_ + "/state", 1);
  ASSERT_TRUE(started.ok()) << started.status();
  server_ = std::move(*started).release();
  stub_ = MakeStub(server_->port()).release();

  v1::Job ended = WaitForJob(*stub_, kToken, stale.id());
  EXPECT_EQ(ended.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(ended.error_code(), static_cast<int>(grpc::StatusCode::ALREADY_EXISTS));
  EXPECT_NE(ended.error_message().find("not resumed after the restart: its output 'out1' is held by job "),
            std::string::npos)
      << ended.error_message();
  EXPECT_EQ(ReadAll(root_ + "/state/outputs/out1/model.safetensors"), weights);

  v1::ResultHeader header;
  EXPECT_CODE(Fetch(older.id(), &header), DATA_LOSS,
              "output 'out1' no longer holds the checkpoint of job " + older.id());
  grpc::Status s = Fetch(ja.id(), &header);
  EXPECT_TRUE(s.ok()) << s.error_message();
  ExpectServing();
}

// ---------------------------------------------------------------------------------------------
// FetchResult carries the checkpoint's other files.

TEST_F(CalibratorServiceTest, FetchResultCarriesTokenizerAndGenerationFiles) {
  // A model with the files a Hugging Face model has beside its weights; tokenizer.json bigger
  // than gRPC's default 4 MiB message and than the chunks, tokenizer.model binary, one empty.
  const std::string model = models_ + "/tok";
  fs::copy(models_ + "/tiny", model);
  std::string tokenizer = "{\"version\": \"1.0\", \"model\": {\"vocab\": {";
  for (int i = 0; tokenizer.size() < (5u << 20); ++i)
    tokenizer += "\"tok" + std::to_string(i) + "\": " + std::to_string(i) + ", ";
  tokenizer += "\"end\": 0}}}\n";
  std::string sp(70000, '\0');
  std::mt19937 rng(9);
  for (char& c : sp) c = static_cast<char>(rng());
  const std::map<std::string, std::string> extra = {
      {"tokenizer.json", tokenizer},
      {"tokenizer_config.json", "{\"chat_template\": \"{{ messages }}\", \"model_max_length\": 2048}\n"},
      {"special_tokens_map.json", "{\"bos_token\": \"<s>\"}\n"},
      {"generation_config.json", "{\"do_sample\": true, \"temperature\": 0.6}\n"},
      {"tokenizer.model", sp},
      {"chat_template.jinja", "{% for m in messages %}{{ m.content }}{% endfor %}"},
      {"added_tokens.json", ""},
  };
  for (const auto& [name, bytes] : extra) ASSERT_TRUE(AtomicWriteFile(model + "/" + name, bytes).ok()) << name;

  v1::JobSpec spec = TinySpec("W8A16");
  spec.set_model("tok");
  spec.set_algorithm("rtn");
  spec.set_output_name("tok-w8");
  v1::Job job = RunToEnd(spec);
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.error_message();
  const std::string out = root_ + "/state/outputs/tok-w8";
  for (const auto& [name, bytes] : extra) EXPECT_EQ(ReadAll(out + "/" + name), bytes) << name;

  // The stream: the header lists the files (name order, sizes), their pieces follow in order,
  // none over chunk_bytes, each file's last piece with its CRC-32C.
  v1::ResultHeader header;
  std::vector<v1::FetchResultResponse> pieces;
  grpc::Status s = Fetch(job.id(), &header, 1 << 20, &pieces);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(header.files_size(), static_cast<int>(extra.size()));
  std::map<std::string, std::string> got;
  int i = 0;
  for (const auto& [name, bytes] : extra) {
    EXPECT_EQ(header.files(i).name(), name);
    EXPECT_EQ(header.files(i).size(), static_cast<int64_t>(bytes.size())) << name;
    ++i;
  }
  for (const v1::FetchResultResponse& p : pieces) {
    const v1::ResultFileChunk& c = p.file();
    EXPECT_LE(c.data().size(), 1u << 20);
    std::string& buf = got[c.name()];
    EXPECT_EQ(c.offset(), static_cast<int64_t>(buf.size())) << c.name();
    buf += c.data();
    if (c.last()) {
      EXPECT_EQ(c.crc32c(), rpc::Crc32c(buf.data(), buf.size())) << c.name();
    }
  }
  EXPECT_TRUE(got == extra) << "the pieces do not reassemble to the model's files";
  EXPECT_GT(pieces.size(), extra.size());  // tokenizer.json came in several pieces

  // `lowbit fetch`: the directory has every file of the server's checkpoint, byte for byte.
  const std::string fetched = root_ + "/fetched-tok";
  std::string cmd = std::string(LOWBIT_BINARY_DIR) + "/cli/lowbit fetch " + job.id() + " --out " + fetched +
                    " --chunk_bytes 300000 --calibrator 127.0.0.1:" + std::to_string(server_->port()) + " --token " +
                    kToken + " > /dev/null";
  auto expect_same_dir = [&] {
    std::map<std::string, std::string> a = ResultFiles(fetched), b = ResultFiles(out);
    std::set<std::string> na, nb;
    for (const auto& [name, bytes] : a) na.insert(name);
    for (const auto& [name, bytes] : b) nb.insert(name);
    EXPECT_EQ(na, nb);
    for (const auto& [name, bytes] : b) EXPECT_TRUE(a[name] == bytes) << name << " differs";
    EXPECT_EQ(std::distance(fs::directory_iterator(fetched), {}), static_cast<long>(b.size())) << "temp files left";
  };
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  expect_same_dir();
  for (const auto& [name, bytes] : extra) EXPECT_TRUE(fs::exists(fetched + "/" + name)) << name;
  // A second fetch into the same directory replaces the files.
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  expect_same_dir();
}

// ---------------------------------------------------------------------------------------------
// QuantizeLayer

std::vector<float> RandomWeight(int64_t n, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.05f);
  std::vector<float> w(n * k);
  for (float& v : w) v = RoundToDType(d(rng), DType::kBF16);
  return w;
}

v1::QuantizeLayerRequest LayerRequest(const std::vector<float>& w, int64_t n, int64_t k, const std::string& scheme) {
  v1::QuantizeLayerRequest req;
  req.set_name("model.layers.0.mlp.down_proj");
  req.set_scheme(scheme);
  rpc::TensorToProto(Tensor::FromFloats(w, {n, k}, DType::kBF16), req.mutable_weight());
  return req;
}

std::map<std::string, Tensor> ResponseTensors(const v1::QuantizeLayerResponse& resp) {
  std::map<std::string, Tensor> out;
  for (const auto& t : resp.tensors()) {
    absl::StatusOr<Tensor> x = rpc::TensorFromProto(t.tensor(), t.name());
    EXPECT_TRUE(x.ok()) << x.status();
    if (x.ok()) out[t.name()] = *x;
  }
  return out;
}

TEST_F(CalibratorServiceTest, QuantizeLayerRtnEqualsNumerics) {
  const int64_t n = 32, k = 256;
  std::vector<float> w = RandomWeight(n, k, 11);
  for (const std::string scheme : {"W8A16", "W4A16"}) {
    SCOPED_TRACE(scheme);
    v1::QuantizeLayerResponse resp;
    grpc::Status s = stub_->QuantizeLayer(Ctx(kToken).get(), LayerRequest(w, n, k, scheme), &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(resp.algorithm(), "RTN");
    std::map<std::string, Tensor> got = ResponseTensors(resp);

    // The reference: common/numerics observers, codes and packing.
    absl::StatusOr<QuantScheme> preset = PresetScheme(scheme, {"Linear"});
    ASSERT_TRUE(preset.ok());
    const QuantArgs& args = *preset->weights;
    absl::StatusOr<WeightQParams> qp = ObserveWeight(w, n, k, args, DType::kBF16);
    ASSERT_TRUE(qp.ok());
    std::vector<int8_t> codes = QuantizeWeightInt(w, n, k, args, *qp);
    ASSERT_TRUE(got.count("weight_scale"));
    std::vector<float> scales = got["weight_scale"].ToFloats();
    ASSERT_EQ(scales.size(), qp->scale.size());
    for (size_t i = 0; i < scales.size(); ++i) EXPECT_EQ(scales[i], qp->scale[i]) << i;
    if (got.count("weight")) {  // int-quantized
      EXPECT_EQ(got["weight"].dtype(), DType::kI8);
      EXPECT_EQ(got["weight"].shape(), (Shape{n, k}));
      EXPECT_TRUE(std::equal(codes.begin(), codes.end(), got["weight"].data<int8_t>()));
    } else {  // pack-quantized
      ASSERT_TRUE(got.count("weight_packed"));
      std::vector<int32_t> packed = PackRows(codes, n, k, args.num_bits);
      EXPECT_EQ(got["weight_packed"].dtype(), DType::kI32);
      EXPECT_EQ(got["weight_packed"].numel(), static_cast<int64_t>(packed.size()));
      EXPECT_TRUE(std::equal(packed.begin(), packed.end(), got["weight_packed"].data<int32_t>()));
      ASSERT_TRUE(got.count("weight_shape"));
    }
  }
}

TEST_F(CalibratorServiceTest, QuantizeLayerGptqWithIdentityHessianEqualsRtn) {
  const int64_t n = 16, k = 256;
  std::vector<float> w = RandomWeight(n, k, 5);
  v1::QuantizeLayerRequest req = LayerRequest(w, n, k, "W4A16");
  v1::QuantizeLayerResponse rtn, gptq;
  ASSERT_TRUE(stub_->QuantizeLayer(Ctx(kToken).get(), req, &rtn).ok());
  std::vector<float> eye(k * k, 0.0f);
  for (int64_t i = 0; i < k; ++i) eye[i * k + i] = 1.0f;
  rpc::TensorToProto(Tensor::FromFloats(eye, {k, k}, DType::kF32), req.mutable_hessian());
  grpc::Status s = stub_->QuantizeLayer(Ctx(kToken).get(), req, &gptq);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(gptq.algorithm(), "GPTQ");
  EXPECT_FALSE(gptq.fell_back_to_rtn());
  std::map<std::string, Tensor> a = ResponseTensors(rtn), b = ResponseTensors(gptq);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_TRUE(std::equal(t.bytes().begin(), t.bytes().end(), b[name].bytes().begin(), b[name].bytes().end())) << name;
  }
}

TEST_F(CalibratorServiceTest, QuantizeLayerRejectsBadInput) {
  const int64_t n = 8, k = 128;
  std::vector<float> w = RandomWeight(n, k, 1);
  v1::QuantizeLayerResponse resp;
  {
    v1::QuantizeLayerRequest req = LayerRequest(w, n, k, "W4A16");
    req.mutable_weight()->set_dtype(v1::DTYPE_I32);
    EXPECT_CODE(stub_->QuantizeLayer(Ctx(kToken).get(), req, &resp), INVALID_ARGUMENT, "weight");
  }
  {
    v1::QuantizeLayerRequest req = LayerRequest(w, n, k, "W4A16");
    req.mutable_weight()->mutable_data()->resize(10);
    EXPECT_CODE(stub_->QuantizeLayer(Ctx(kToken).get(), req, &resp), INVALID_ARGUMENT, "weight");
  }
  {
    v1::QuantizeLayerRequest req = LayerRequest(w, n, k, "W4A16");
    rpc::TensorToProto(Tensor::FromFloats(std::vector<float>(16, 1.0f), {4, 4}, DType::kF32), req.mutable_hessian());
    EXPECT_CODE(stub_->QuantizeLayer(Ctx(kToken).get(), req, &resp), INVALID_ARGUMENT, "hessian");
  }
  {
    v1::QuantizeLayerRequest req = LayerRequest(w, n, k, "W3A5");
    EXPECT_CODE(stub_->QuantizeLayer(Ctx(kToken).get(), req, &resp), INVALID_ARGUMENT, "W3A5");
  }
  {
    v1::QuantizeLayerRequest req = LayerRequest(w, n, k, "W4A16");
    req.set_recipe_yaml(ReadAll(std::string(LOWBIT_SOURCE_DIR) + "/tests/fixtures/calib/matches_nothing.yaml"));
    EXPECT_CODE(stub_->QuantizeLayer(Ctx(kToken).get(), req, &resp), INVALID_ARGUMENT, "match no");
  }
  {
    v1::QuantizeLayerRequest req = LayerRequest(w, n, k, "W4A16");
    req.mutable_weight()->set_shape(1, 96);  // bytes ≠ shape
    EXPECT_CODE(stub_->QuantizeLayer(Ctx(kToken).get(), req, &resp), INVALID_ARGUMENT, "weight");
  }
  {
    v1::QuantizeLayerRequest req = LayerRequest(std::vector<float>(n * 96, 0.01f), n, 96, "W4A16");
    EXPECT_CODE(stub_->QuantizeLayer(Ctx(kToken).get(), req, &resp), INVALID_ARGUMENT, "group_size");
  }
  ExpectServing();
}

TEST_F(CalibratorServiceTest, QuantizeLayerRejectsBadOptionsAndNonFiniteValues) {
  const int64_t n = 8, k = 128;
  const std::vector<float> w = RandomWeight(n, k, 2);
  std::vector<float> eye(k * k, 0.0f);
  for (int64_t i = 0; i < k; ++i) eye[i * k + i] = 1.0f;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  auto with_weight = [&](std::vector<float> v, DType dtype = DType::kF32) {
    return [v, dtype](v1::QuantizeLayerRequest& r) {
      rpc::TensorToProto(Tensor::FromFloats(v, {n, k}, dtype), r.mutable_weight());
    };
  };
  std::vector<float> w_nan = w, w_inf = w, w_ninf_bf16 = w;
  w_nan[3 * k + 5] = nan;
  w_inf[7] = inf;
  w_ninf_bf16[k] = -inf;
  std::vector<float> h_nan = eye;
  h_nan[2 * k + 1] = nan;
  struct Case {
    std::string name;
    std::function<void(v1::QuantizeLayerRequest&)> edit;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"missing weight", [](v1::QuantizeLayerRequest& r) { r.clear_weight(); }, "weight is missing"},
      {"NaN dampening", [&](v1::QuantizeLayerRequest& r) { r.set_dampening_frac(nan); },
       "dampening_frac must be a finite number in [0, 1]"},
      {"infinite dampening", [&](v1::QuantizeLayerRequest& r) { r.set_dampening_frac(inf); },
       "dampening_frac must be a finite number in [0, 1]"},
      {"negative dampening", [](v1::QuantizeLayerRequest& r) { r.set_dampening_frac(-0.5); }, "got -0.5"},
      {"dampening over 1", [](v1::QuantizeLayerRequest& r) { r.set_dampening_frac(2); }, "got 2"},
      {"huge block size", [](v1::QuantizeLayerRequest& r) { r.set_block_size(std::numeric_limits<int32_t>::max()); },
       "block_size must be in [0, 65536]"},
      {"negative block size", [](v1::QuantizeLayerRequest& r) { r.set_block_size(-1); }, "got -1"},
      {"NaN in weight", with_weight(w_nan), "weight[3, 5] (element 389) is nan"},
      {"inf in weight", with_weight(w_inf), "weight[0, 7] (element 7) is inf"},
      {"-inf in a bf16 weight", with_weight(w_ninf_bf16, DType::kBF16), "weight[1, 0] (element 128) is -inf"},
      {"NaN in hessian",
       [&](v1::QuantizeLayerRequest& r) {
         rpc::TensorToProto(Tensor::FromFloats(h_nan, {k, k}, DType::kF32), r.mutable_hessian());
       },
       "hessian[2, 1] (element 257) is nan"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    v1::QuantizeLayerRequest req = LayerRequest(w, n, k, "W4A16");
    rpc::TensorToProto(Tensor::FromFloats(eye, {k, k}, DType::kF32), req.mutable_hessian());  // GPTQ
    c.edit(req);
    v1::QuantizeLayerResponse resp;
    EXPECT_CODE(stub_->QuantizeLayer(Ctx(kToken).get(), req, &resp), INVALID_ARGUMENT, c.needle);
    ExpectServing();
  }
  // The bounds themselves are accepted: block_size 65536 acts as K, dampening 1.
  v1::QuantizeLayerRequest req = LayerRequest(w, n, k, "W4A16");
  rpc::TensorToProto(Tensor::FromFloats(eye, {k, k}, DType::kF32), req.mutable_hessian());
  req.set_block_size(65536);
  req.set_dampening_frac(1);
  v1::QuantizeLayerResponse resp;
  grpc::Status s = stub_->QuantizeLayer(Ctx(kToken).get(), req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.algorithm(), "GPTQ");
}

}  // namespace
}  // namespace lowbit
