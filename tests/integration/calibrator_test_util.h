// Shared helpers of the calibrator service integration tests: temp dirs, a synthetic model and
// tokens, a stub with the bearer token, waiting for a job to end, byte comparisons.
#ifndef LOWBIT_TESTS_INTEGRATION_CALIBRATOR_TEST_UTIL_H_
#define LOWBIT_TESTS_INTEGRATION_CALIBRATOR_TEST_UTIL_H_

#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/file_util.h"
#include "common/safetensors.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "lowbit/v1/calibrator.grpc.pb.h"
#include "tools/gen_model/synthetic_llama.h"
#include "tools/gen_tokens/synthetic_tokens.h"

namespace lowbit::testing_util {

inline std::string MakeTempDir(const std::string& tag) {
  std::string tmpl = (std::filesystem::temp_directory_path() / ("lowbit-" + tag + "-XXXXXX")).string();
  char* p = mkdtemp(tmpl.data());
  EXPECT_NE(p, nullptr);
  return tmpl;
}

inline SyntheticLlamaOptions TinyModel(int64_t layers = 2) {
  SyntheticLlamaOptions o;
  o.hidden = 128;
  o.intermediate = 256;
  o.layers = layers;
  o.heads = 4;
  o.kv_heads = 2;
  o.vocab = 256;
  o.seed = 7;
  return o;
}

inline std::vector<std::vector<int32_t>> TinyTokens(int64_t samples = 24, uint64_t seed = 3) {
  SyntheticTokenOptions o;
  o.vocab = 256;
  o.samples = samples;
  o.min_len = 16;
  o.max_len = 40;
  o.seed = seed;
  return SyntheticTokens(o);
}

inline void SetInline(v1::JobSpec* spec, const std::vector<std::vector<int32_t>>& tokens) {
  for (const auto& s : tokens) spec->mutable_inline_tokens()->add_sequences()->mutable_ids()->Add(s.begin(), s.end());
}

inline std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token, int deadline_ms = 60000) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
  return ctx;
}

inline std::unique_ptr<v1::CalibratorService::Stub> MakeStub(int port) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials(), args);
  return v1::CalibratorService::NewStub(channel);
}

inline bool Terminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

// Polls GetJob until the job ends (or the timeout passes; then the last state).
inline v1::Job WaitForJob(v1::CalibratorService::Stub& stub, const std::string& token, const std::string& id,
                          int timeout_ms = 60000) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  v1::Job job;
  while (std::chrono::steady_clock::now() < end) {
    v1::GetJobRequest req;
    req.set_id(id);
    v1::GetJobResponse resp;
    grpc::Status s = stub.GetJob(Ctx(token).get(), req, &resp);
    if (s.ok()) {
      job = resp.job();
      if (Terminal(job.state())) return job;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ADD_FAILURE() << "job " << id << " did not end in " << timeout_ms << " ms";
  return job;
}

inline std::string ReadAll(const std::string& path) {
  absl::StatusOr<std::string> s = ReadFileToString(path);
  EXPECT_TRUE(s.ok()) << path << ": " << s.status();
  return s.ok() ? *s : std::string();
}

// The checkpoint's bytes that must match: weights and config.json (report.json holds times).
inline void ExpectSameCheckpoint(const std::string& a, const std::string& b) {
  for (const char* f : {"model.safetensors", "config.json"}) {
    std::string x = ReadAll(a + "/" + f), y = ReadAll(b + "/" + f);
    EXPECT_FALSE(x.empty()) << a << "/" << f;
    EXPECT_TRUE(x == y) << f << " differs between " << a << " and " << b << " (" << x.size() << " vs " << y.size()
                        << " bytes)";
    if (x != y && std::string(f) == "model.safetensors") {
      auto ma = SafetensorsModel::Open(a), mb = SafetensorsModel::Open(b);
      if (!ma.ok() || !mb.ok()) continue;
      for (const std::string& name : (*ma)->names()) {
        auto ta = (*ma)->Get(name), tb = (*mb)->Get(name);
        if (!tb.ok() || !std::equal(ta->bytes().begin(), ta->bytes().end(), tb->bytes().begin(), tb->bytes().end())) {
          ADD_FAILURE() << "tensor " << name << " differs";
        }
      }
    }
  }
}

}  // namespace lowbit::testing_util

#endif  // LOWBIT_TESTS_INTEGRATION_CALIBRATOR_TEST_UTIL_H_
