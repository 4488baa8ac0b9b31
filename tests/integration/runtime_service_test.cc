// lowbit.v1.RuntimeService end to end: a real server on an ephemeral loopback port, driven
// through the generated stub. Checkpoints come from the repo's own tools (synthetic Qwen2-style
// model with q/k/v biases → round-to-nearest W8A8 / W4A16 / W4A16_ASYM / FP8_DYNAMIC, plus FP8
// and W8A8 with static input scales written with common/checkpoint). Every Gemm result is
// checked against an independent double-precision reference computed from the checkpoint's
// tensors (common/numerics + common/dtype), with the activation quantization the scheme does.
// The servers run on the CPU backend, or on the one LOWBIT_TEST_BACKEND names (ctest's
// gpu-labelled copy, cuda.runtime_service_test.*, sets cuda; without a GPU it reports skipped).
#include "runtime/service/runtime_service.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "calibrator/rtn.h"
#include "common/checkpoint.h"
#include "common/file_util.h"
#include "common/numerics.h"
#include "common/safetensors.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/impl/client_unary_call.h"
#include "gtest/gtest.h"
#include "inference/predict_v2.grpc.pb.h"
#include "kernels/backend.h"
#include "lowbit/v1/runtime.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "rpc/client.h"
#include "rpc/raw_stream.h"
#include "rpc/server.h"
#include "rpc/tensor_codec.h"
#include "runtime/engine.h"
#include "runtime/service/kserve_service.h"
#include "tools/gen_model/synthetic_llama.h"
#include "tools/quantize_main.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;
using runtime::Engine;
using runtime::EngineOptions;

constexpr char kToken[] = "s3cret-token";
constexpr char kQ[] = "model.layers.0.self_attn.q_proj";  // K = 256, N = 256, bias
constexpr char kDown[] = "model.layers.0.mlp.down_proj";  // K = 512, N = 256

// ---- checkpoints --------------------------------------------------------------------------

// A checkpoint with a static per-tensor input scale (FP8 static, or W8A8 with static int8
// activations), written the way the calibrator writes them.
void WriteStatic(const std::string& model_dir, const std::string& out, bool fp8, float input_scale) {
  auto model = SafetensorsModel::Open(model_dir);
  ASSERT_TRUE(model.ok()) << model.status();
  QuantScheme scheme = *PresetScheme(fp8 ? "FP8" : "W8A8", {"Linear"});
  if (!fp8) {
    scheme.input_activations->dynamic = Dynamic::kStatic;
    scheme.input_activations->strategy = Strategy::kTensor;
  }
  CheckpointSpec spec;
  spec.source_dir = model_dir;
  spec.out_dir = out;
  spec.quantization = MakeQuantizationConfig({{"group_0", scheme}}, {"lm_head"}, std::nullopt);
  std::set<std::string> replaced;
  for (const std::string& module : LinearModules(**model)) {
    if (module == "lm_head") continue;
    Tensor w = *(*model)->Get(module + ".weight");
    DType sd = ScaleDTypeFor(w.dtype());
    auto q = QuantizeLinearRtn(module, w, *scheme.weights, sd);
    ASSERT_TRUE(q.ok()) << q.status();
    q->input_scale = RoundToDType(input_scale, sd);
    auto tensors = EncodeLinear(*q, fp8 ? "float-quantized" : "int-quantized", sd);
    ASSERT_TRUE(tensors.ok()) << tensors.status();
    for (auto& t : *tensors) spec.tensors.push_back(std::move(t));
    replaced.insert(module + ".weight");
  }
  for (const std::string& name : (*model)->names()) {
    if (!replaced.count(name)) spec.tensors.push_back({name, *(*model)->Get(name)});
  }
  ASSERT_TRUE(WriteCheckpoint(spec).ok());
}

struct Fixture {
  std::string dir, root, outside, float_model;
};

Fixture* g_fixture = nullptr;

class CheckpointEnv : public ::testing::Environment {
 public:
  void SetUp() override {
    auto* f = new Fixture;
    char tmpl[] = "/tmp/lowbit-runtime-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    f->dir = tmpl;
    f->root = f->dir + "/root";
    f->outside = f->dir + "/outside";
    f->float_model = f->dir + "/float";
    fs::create_directories(f->root);
    fs::create_directories(f->outside);
    SyntheticLlamaOptions o;
    o.hidden = 256;
    o.intermediate = 512;
    o.layers = 1;
    o.heads = 4;
    o.kv_heads = 2;
    o.vocab = 128;
    o.arch = "qwen2";  // q/k/v biases
    ASSERT_TRUE(WriteSyntheticLlama(f->float_model, o).ok());
    for (const char* scheme : {"W8A8", "W4A16", "W4A16_ASYM", "FP8_DYNAMIC"}) {
      auto plan = PresetPlan(scheme);
      ASSERT_TRUE(plan.ok());
      std::string name = scheme;
      for (char& c : name) c = std::tolower(c);
      auto r = QuantizeDirectory(f->float_model, f->root + "/" + name, *plan, std::nullopt);
      ASSERT_TRUE(r.ok()) << scheme << ": " << r.status();
    }
    WriteStatic(f->float_model, f->root + "/fp8", true, 4.0f / 448.0f);
    WriteStatic(f->float_model, f->root + "/w8a8_static", false, 3.0f / 127.0f);
    // Outside the root, and a symlink inside the root that leads there.
    fs::copy(f->root + "/w8a8", f->outside + "/w8a8", fs::copy_options::recursive);
    fs::create_directory_symlink(f->outside + "/w8a8", f->root + "/escape");
    g_fixture = f;
  }
  void TearDown() override {
    if (g_fixture) fs::remove_all(g_fixture->dir);
  }
};

// ---- server and client ----------------------------------------------------------------------

struct TestServer {
  std::unique_ptr<Engine> engine;
  std::unique_ptr<runtime::RuntimeServiceImpl> service;
  std::unique_ptr<runtime::KServeServiceImpl> kserve;  // on the same server, as lowbit-runtime runs it
  std::unique_ptr<rpc::RpcServer> server;
  std::shared_ptr<prometheus::Registry> registry;
  int port = 0;
  ~TestServer() {
    if (server) server->Shutdown();
  }
};

std::string TestBackend() {
  const char* b = std::getenv("LOWBIT_TEST_BACKEND");
  return b != nullptr && *b != '\0' ? b : "cpu";
}

EngineOptions DefaultOptions() {
  EngineOptions o;
  o.backend = TestBackend();
  o.threads = 2;
  o.registry.model_root = g_fixture->root;
  return o;
}

std::unique_ptr<TestServer> StartServer(EngineOptions options = DefaultOptions(), int port = 0,
                                        int64_t max_message = int64_t{64} << 20) {
  auto s = std::make_unique<TestServer>();
  s->registry = std::make_shared<prometheus::Registry>();
  auto engine = Engine::Create(options, s->registry);
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return nullptr;
  s->engine = *std::move(engine);
  s->engine->RestoreLoads();  // what lowbit-runtime does before it serves (0 without a state_dir)
  rpc::ServerConfig config;
  config.address = "127.0.0.1:" + std::to_string(port);
  config.auth_token = kToken;
  config.max_message_bytes = max_message;
  config.shutdown_grace = std::chrono::milliseconds(500);
  runtime::RuntimeServiceOptions so;
  so.max_message_bytes = max_message;
  s->service = std::make_unique<runtime::RuntimeServiceImpl>(
      s->engine.get(), rpc::MakeServiceContext(config, "runtime", s->registry), so);
  s->kserve = std::make_unique<runtime::KServeServiceImpl>(s->engine.get(),
                                                           rpc::MakeServiceContext(config, "kserve", s->registry), so);
  auto server = rpc::RpcServer::Start(config, {s->service.get(), s->kserve.get()}, s->registry);
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return nullptr;
  s->server = *std::move(server);
  s->port = s->server->port();
  return s;
}

// A client of one of the test server's services: loopback, the token, a 256 MiB message limit.
template <class Service>
struct StubClient {
  rpc::ClientConfig config;
  std::unique_ptr<typename Service::Stub> stub;
  explicit StubClient(int port, std::string token = kToken) {
    config.address = "127.0.0.1:" + std::to_string(port);
    config.auth_token = std::move(token);
    config.max_message_bytes = int64_t{256} << 20;
    auto ch = rpc::MakeChannel(config);
    EXPECT_TRUE(ch.ok());
    stub = Service::NewStub(*ch);
  }
  void Prepare(grpc::ClientContext* ctx, int deadline_ms = 30000) {
    rpc::PrepareContext(ctx, config, std::chrono::milliseconds(deadline_ms));
  }
};

struct Client : StubClient<v1::RuntimeService> {
  using StubClient::StubClient;
  grpc::Status Load(const std::string& name, const std::string& path, v1::LoadModelResponse* resp = nullptr) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::LoadModelRequest req;
    req.set_name(name);
    req.set_path(path);
    v1::LoadModelResponse r;
    return stub->LoadModel(&ctx, req, resp ? resp : &r);
  }
  grpc::Status Unload(const std::string& name) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::UnloadModelRequest req;
    req.set_name(name);
    v1::UnloadModelResponse r;
    return stub->UnloadModel(&ctx, req, &r);
  }
  grpc::Status List(v1::ListModelsResponse* resp) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    return stub->ListModels(&ctx, {}, resp);
  }
  grpc::Status Gemm(const v1::GemmRequest& req, v1::GemmResponse* resp, int deadline_ms = 30000) {
    grpc::ClientContext ctx;
    Prepare(&ctx, deadline_ms);
    return stub->Gemm(&ctx, req, resp);
  }
};

// Activations: N(0, 1) rounded to `dtype`; `floats` gets the rounded values.
Tensor RandomX(int64_t m, int64_t k, DType dtype, uint32_t seed, std::vector<float>* floats = nullptr) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(m * k);
  for (float& x : v) x = nd(rng);
  Tensor t = Tensor::FromFloats(v, {m, k}, dtype);
  if (floats) *floats = t.ToFloats();
  return t;
}

v1::GemmRequest MakeGemm(const std::string& model, const std::string& layer, const Tensor& x,
                         v1::DType out = v1::DTYPE_UNSPECIFIED) {
  v1::GemmRequest req;
  req.set_model(model);
  req.set_layer(layer);
  rpc::TensorToProto(x, req.mutable_x());
  req.set_out_dtype(out);
  return req;
}

struct KServeClient : StubClient<inference::GRPCInferenceService> {
  using StubClient::StubClient;
  grpc::Status Infer(const inference::ModelInferRequest& req, inference::ModelInferResponse* resp) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    return stub->ModelInfer(&ctx, req, resp);
  }
  grpc::Status Config(const std::string& name, inference::ModelConfigResponse* resp) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    inference::ModelConfigRequest req;
    req.set_name(name);
    return stub->ModelConfig(&ctx, req, resp);
  }
  grpc::Status Statistics(const std::string& name, const std::string& version,
                          inference::ModelStatisticsResponse* resp) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    inference::ModelStatisticsRequest req;
    req.set_name(name);
    req.set_version(version);
    return stub->ModelStatistics(&ctx, req, resp);
  }
  // RepositoryIndex as name -> state ("READY" / "UNAVAILABLE"); CHECKs the call.
  std::map<std::string, std::string> Index(bool ready) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    inference::RepositoryIndexRequest req;
    req.set_ready(ready);
    inference::RepositoryIndexResponse resp;
    grpc::Status st = stub->RepositoryIndex(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    std::map<std::string, std::string> out;
    for (const auto& m : resp.models()) {
      EXPECT_EQ(m.version(), m.state() == "READY" ? "1" : "") << m.name();
      out[m.name()] = m.state();
    }
    return out;
  }
  grpc::Status RepositoryLoad(const inference::RepositoryModelLoadRequest& req) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    inference::RepositoryModelLoadResponse resp;
    return stub->RepositoryModelLoad(&ctx, req, &resp);
  }
  grpc::Status RepositoryUnload(const inference::RepositoryModelUnloadRequest& req) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    inference::RepositoryModelUnloadResponse resp;
    return stub->RepositoryModelUnload(&ctx, req, &resp);
  }
  bool Ready(const std::string& name, const std::string& version = "") {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    inference::ModelReadyRequest req;
    req.set_name(name);
    req.set_version(version);
    inference::ModelReadyResponse resp;
    EXPECT_TRUE(stub->ModelReady(&ctx, req, &resp).ok());
    return resp.ready();
  }
};

// A ModelInfer request for layer model `name` with x as its raw input of shape `shape` (x's own
// shape when empty).
inference::ModelInferRequest MakeInfer(const std::string& name, const Tensor& x, Shape shape = {}) {
  inference::ModelInferRequest req;
  req.set_model_name(name);
  auto* in = req.add_inputs();
  in->set_name("x");
  in->set_datatype(runtime::KServeDatatype(x.dtype()));
  if (shape.empty()) shape = x.shape();
  in->mutable_shape()->Assign(shape.begin(), shape.end());
  auto b = x.bytes();
  req.add_raw_input_contents(reinterpret_cast<const char*>(b.data()), b.size());
  return req;
}

std::vector<float> ResultFloats(const v1::GemmResponse& resp) {
  auto t = rpc::TensorFromProto(resp.y(), "y");
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? t->ToFloats() : std::vector<float>();
}

// ---- the independent reference -------------------------------------------------------------

struct Reference {
  std::vector<double> y;    // [M, N]
  std::vector<double> mag;  // [M, N] Σ_k |x·w| (scaled), the magnitude tolerances are stated against
};

// Y = quant(X) · dequant(W)ᵀ + bias in double, from the checkpoint's own tensors.
Reference Expected(const std::string& ckpt, const std::string& layer, const std::string& scheme,
                   const std::vector<float>& x, int64_t m, int64_t k, DType x_dtype) {
  auto model = SafetensorsModel::Open(ckpt);
  EXPECT_TRUE(model.ok());
  const SafetensorsModel& ck = **model;
  auto get = [&](const std::string& n) { return *ck.Get(layer + "." + n); };
  std::vector<float> bias = ck.Has(layer + ".bias") ? get("bias").ToFloats() : std::vector<float>();
  int64_t n = 0;
  std::vector<double> w;                                   // dequantized weight [N, K] (for W4A16 rounded to x dtype)
  std::vector<double> xs(m, 1.0), xq(x.begin(), x.end());  // activation codes and their scale
  if (scheme == "W4A16" || scheme == "W4A16_ASYM") {
    Tensor packed = get("weight_packed");
    n = packed.dim(0);
    std::vector<int8_t> codes = UnpackRows({packed.data<int32_t>(), size_t(packed.numel())}, n, k, 4);
    std::vector<float> scale = get("weight_scale").ToFloats();
    const int64_t groups = scale.size() / n, gs = (k + groups - 1) / groups;
    std::vector<int8_t> zp(n * groups, 0);
    if (scheme == "W4A16_ASYM") {
      Tensor z = get("weight_zero_point");
      zp = UnpackColumns({z.data<int32_t>(), size_t(z.numel())}, n, groups, 4);
    }
    w.resize(n * k);
    const DType compute = x_dtype == DType::kF32 ? DType::kBF16 : x_dtype;
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t c = 0; c < k; ++c) {
        const int64_t g = c / gs;
        w[r * k + c] = RoundToDType((codes[r * k + c] - zp[r * groups + g]) * scale[r * groups + g], compute);
      }
    }
    if (x_dtype == DType::kF32) {
      for (double& v : xq) v = RoundToDType(static_cast<float>(v), compute);
    }
  } else {
    Tensor wt = get("weight");
    n = wt.dim(0);
    std::vector<float> ws = get("weight_scale").ToFloats();
    w.resize(n * k);
    for (int64_t r = 0; r < n; ++r) {
      const double s = ws.size() == 1 ? ws[0] : ws[r];
      for (int64_t c = 0; c < k; ++c) {
        w[r * k + c] = s * (wt.dtype() == DType::kI8 ? wt.data<int8_t>()[r * k + c]
                                                     : Fp8E4M3ToFloat(wt.data<uint8_t>()[r * k + c]));
      }
    }
    const bool fp8 = scheme == "FP8" || scheme == "FP8_DYNAMIC";
    const bool dynamic = scheme == "W8A8" || scheme == "FP8_DYNAMIC";
    float static_scale = dynamic ? 0.0f : get("input_scale").ToFloats()[0];
    for (int64_t i = 0; i < m; ++i) {
      float s = static_scale;
      if (dynamic) {
        float amax = 0;
        for (int64_t c = 0; c < k; ++c) amax = std::max(amax, std::fabs(x[i * k + c]));
        s = amax == 0 ? 1.0f : amax / (fp8 ? 448.0f : 127.0f);
      }
      xs[i] = s;
      for (int64_t c = 0; c < k; ++c) {
        const float v = x[i * k + c] / s;
        xq[i * k + c] =
            fp8 ? Fp8E4M3ToFloat(FloatToFp8E4M3(v)) : std::min(127.0f, std::max(-128.0f, std::nearbyint(v)));
      }
    }
  }
  Reference ref;
  ref.y.assign(m * n, 0.0);
  ref.mag.assign(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0, mag = 0;
      for (int64_t c = 0; c < k; ++c) {
        acc += xq[i * k + c] * w[j * k + c];
        mag += std::fabs(xq[i * k + c] * w[j * k + c]);
      }
      ref.y[i * n + j] = acc * xs[i] + (bias.empty() ? 0.0 : bias[j]);
      ref.mag[i * n + j] = mag * xs[i];
    }
  }
  return ref;
}

class RuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(g_fixture, nullptr);
    if (absl::StartsWith(TestBackend(), "cuda") && !kernels::CudaAvailable()) GTEST_SKIP() << "no CUDA device";
    server_ = StartServer();
    ASSERT_NE(server_, nullptr);
    client_ = std::make_unique<Client>(server_->port);
  }
  std::unique_ptr<TestServer> server_;
  std::unique_ptr<Client> client_;
};

// ---- numerics ------------------------------------------------------------------------------

struct SchemeCase {
  const char* scheme;
  const char* dir;
};

class SchemeTest : public RuntimeTest, public ::testing::WithParamInterface<SchemeCase> {};

TEST_P(SchemeTest, GemmMatchesIndependentReference) {
  const SchemeCase c = GetParam();
  v1::LoadModelResponse loaded;
  ASSERT_TRUE(client_->Load("m", c.dir, &loaded).ok());
  ASSERT_EQ(loaded.model().layers_size(), 7);  // q k v o gate up down
  bool saw_bias = false;
  for (const auto& l : loaded.model().layers()) {
    EXPECT_EQ(l.scheme(), c.scheme) << l.name();
    if (l.name() == kQ) saw_bias = l.has_bias();
  }
  EXPECT_TRUE(saw_bias);
  struct Run {
    const char* layer;
    int64_t m, k;
    DType x_dtype;
    v1::DType out;
  };
  const Run runs[] = {{kQ, 3, 256, DType::kBF16, v1::DTYPE_UNSPECIFIED},
                      {kDown, 17, 512, DType::kF32, v1::DTYPE_F32},
                      {kQ, 1, 256, DType::kF16, v1::DTYPE_UNSPECIFIED}};
  for (const Run& r : runs) {
    SCOPED_TRACE(std::string(c.scheme) + " " + r.layer + " M=" + std::to_string(r.m));
    std::vector<float> xf;
    Tensor x = RandomX(r.m, r.k, r.x_dtype, 7 + r.m, &xf);
    v1::GemmResponse resp;
    grpc::Status st = client_->Gemm(MakeGemm("m", r.layer, x, r.out), &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(resp.y().shape_size(), 2);
    EXPECT_EQ(resp.y().shape(0), r.m);
    EXPECT_EQ(resp.y().shape(1), 256);
    EXPECT_EQ(resp.batch_requests(), 1);
    const DType out = r.out == v1::DTYPE_UNSPECIFIED ? r.x_dtype : *rpc::DTypeFromProto(r.out);
    EXPECT_EQ(*rpc::DTypeFromProto(resp.y().dtype()), out);
    std::vector<float> y = ResultFloats(resp);
    Reference ref = Expected(g_fixture->root + "/" + c.dir, r.layer, c.scheme, xf, r.m, r.k, r.x_dtype);
    // Tolerance: the output rounding (2^-8 relative for bf16, 2^-11 for f16, f32 ≈ 0) plus f32
    // accumulation (1e-5 of Σ|x·w|). The reference reproduces every other rounding the scheme
    // does (activation codes, W4A16's dequantized weight rounded to the activation dtype).
    // W4A16 computes in the activation dtype (F32 activations: the model dtype, bf16), so its
    // output carries that rounding whatever out_dtype says.
    DType rounding = out;
    if (absl::StartsWith(c.scheme, "W4A16")) rounding = r.x_dtype == DType::kF32 ? DType::kBF16 : r.x_dtype;
    const double out_rel = rounding == DType::kBF16 ? 1.0 / 256 : rounding == DType::kF16 ? 1.0 / 2048 : 1e-6;
    const double acc_rel = 1e-5;
    int bad = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      const double tol = out_rel * std::fabs(ref.y[i]) + acc_rel * ref.mag[i] + 1e-6;
      if (std::fabs(y[i] - ref.y[i]) > tol && ++bad < 5) {
        ADD_FAILURE() << "y[" << i << "] = " << y[i] << ", expected " << ref.y[i] << " ± " << tol;
      }
    }
    EXPECT_EQ(bad, 0);
  }
  ASSERT_TRUE(client_->Unload("m").ok());
}

INSTANTIATE_TEST_SUITE_P(Schemes, SchemeTest,
                         ::testing::Values(SchemeCase{"W8A8", "w8a8"}, SchemeCase{"W8A8_STATIC", "w8a8_static"},
                                           SchemeCase{"W4A16", "w4a16"}, SchemeCase{"W4A16_ASYM", "w4a16_asym"},
                                           SchemeCase{"FP8", "fp8"}, SchemeCase{"FP8_DYNAMIC", "fp8_dynamic"}),
                         [](const auto& info) { return std::string(info.param.dir); });

// The quantized layer approximates the float layer it came from (a check that the scheme is
// the right one end to end, independent of the checkpoint's own tensors).
TEST_F(RuntimeTest, GemmApproximatesFloatLayer) {
  auto fm = SafetensorsModel::Open(g_fixture->float_model);
  ASSERT_TRUE(fm.ok());
  std::vector<float> w = (*fm)->Get(std::string(kDown) + ".weight")->ToFloats();
  const int64_t m = 8, k = 512, n = 256;
  std::vector<float> xf;
  Tensor x = RandomX(m, k, DType::kF32, 99, &xf);
  double ref_norm = 0;
  std::vector<double> ref(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t c = 0; c < k; ++c) ref[i * n + j] += double(xf[i * k + c]) * w[j * k + c];
      ref_norm += ref[i * n + j] * ref[i * n + j];
    }
  for (auto [dir, limit] : {std::pair{"w8a8", 0.02}, {"fp8_dynamic", 0.06}, {"w4a16", 0.15}}) {
    ASSERT_TRUE(client_->Load(dir, dir).ok());
    v1::GemmResponse resp;
    ASSERT_TRUE(client_->Gemm(MakeGemm(dir, kDown, x, v1::DTYPE_F32), &resp).ok());
    std::vector<float> y = ResultFloats(resp);
    double err = 0;
    for (size_t i = 0; i < y.size(); ++i) err += (y[i] - ref[i]) * (y[i] - ref[i]);
    const double rel = std::sqrt(err / ref_norm);
    EXPECT_LT(rel, limit) << dir;
    EXPECT_GT(rel, 0.0) << dir;  // it really is quantized
    std::printf("  %s: relative error vs the float layer %.4f\n", dir, rel);
  }
}

// A NaN or an infinity in a request row: dynamic per-token schemes give that output row NaN and
// leave the other rows as they are without it; static per-tensor int8 refuses the request, naming
// the element.
TEST_F(RuntimeTest, NonFiniteActivationsGiveNaNRowsOrARefusal) {
  const int64_t m = 3, k = 256, n = 256;
  std::vector<float> xf;
  Tensor clean = RandomX(m, k, DType::kF32, 7, &xf);
  xf[1 * k + 17] = std::numeric_limits<float>::quiet_NaN();
  Tensor dirty = Tensor::FromFloats(xf, {m, k}, DType::kF32);
  for (const char* dir : {"w8a8", "fp8_dynamic"}) {
    ASSERT_TRUE(client_->Load(dir, dir).ok());
    v1::GemmResponse want, got;
    ASSERT_TRUE(client_->Gemm(MakeGemm(dir, kQ, clean, v1::DTYPE_F32), &want).ok());
    grpc::Status st = client_->Gemm(MakeGemm(dir, kQ, dirty, v1::DTYPE_F32), &got);
    ASSERT_TRUE(st.ok()) << dir << ": " << st.error_message();
    const std::vector<float> yw = ResultFloats(want), yg = ResultFloats(got);
    ASSERT_EQ(yg.size(), static_cast<size_t>(m * n));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        if (i == 1) {
          EXPECT_TRUE(std::isnan(yg[i * n + j])) << dir << " y[1, " << j << "] = " << yg[i * n + j];
        } else {
          EXPECT_EQ(yg[i * n + j], yw[i * n + j]) << dir << " y[" << i << ", " << j << "]";
        }
      }
    ASSERT_TRUE(client_->Unload(dir).ok());
  }
  ASSERT_TRUE(client_->Load("w8a8_static", "w8a8_static").ok());
  v1::GemmResponse resp;
  grpc::Status st = client_->Gemm(MakeGemm("w8a8_static", kQ, dirty, v1::DTYPE_F32), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("x[1, 17] is nan"), std::string::npos) << st.error_message();
  ASSERT_TRUE(client_->Gemm(MakeGemm("w8a8_static", kQ, clean, v1::DTYPE_F32), &resp).ok());  // still serving
  ASSERT_TRUE(client_->Unload("w8a8_static").ok());
}

// ---- batching -------------------------------------------------------------------------------

TEST_F(RuntimeTest, BatchedEqualsUnbatchedBitForBit) {
  EngineOptions o = DefaultOptions();
  o.batching.max_queue_delay_us = 50000;  // 50 ms: every concurrent request lands in one window
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  Client client(server->port);
  ASSERT_TRUE(client.Load("m", "w8a8").ok());
  constexpr int kClients = 12;
  std::vector<Tensor> xs;
  std::vector<v1::GemmResponse> alone(kClients), together(kClients);
  for (int i = 0; i < kClients; ++i) xs.push_back(RandomX(1 + i % 5, 256, DType::kBF16, 1000 + i));
  for (int i = 0; i < kClients; ++i) {  // one at a time: each is a batch of one
    ASSERT_TRUE(client.Gemm(MakeGemm("m", kQ, xs[i], v1::DTYPE_F32), &alone[i]).ok());
    EXPECT_EQ(alone[i].batch_requests(), 1);
  }
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      if (!client.Gemm(MakeGemm("m", kQ, xs[i], v1::DTYPE_F32), &together[i]).ok()) ++failures;
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(failures.load(), 0);
  int max_batch = 0;
  for (int i = 0; i < kClients; ++i) {
    max_batch = std::max(max_batch, together[i].batch_requests());
    EXPECT_EQ(together[i].y().data(), alone[i].y().data()) << "request " << i << " differs when batched";
    EXPECT_EQ(together[i].y().shape(0), xs[i].dim(0));
  }
  EXPECT_GT(max_batch, 1) << "no requests were coalesced";
  std::printf("  largest batch: %d requests\n", max_batch);
}

TEST_F(RuntimeTest, BatchingDisabledRunsEachAlone) {
  EngineOptions o = DefaultOptions();
  o.batching.enabled = false;
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  Client client(server->port);
  ASSERT_TRUE(client.Load("m", "w8a8").ok());
  std::vector<std::thread> threads;
  std::atomic<int> max_batch{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      v1::GemmResponse r;
      if (client.Gemm(MakeGemm("m", kQ, RandomX(2, 256, DType::kF32, i)), &r).ok()) {
        max_batch = std::max(max_batch.load(), r.batch_requests());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(max_batch.load(), 1);
  // Triton's ModelConfig says so: no dynamic_batching.
  KServeClient kc(server->port);
  inference::ModelConfigResponse conf;
  ASSERT_TRUE(kc.Config(std::string("m/") + kQ, &conf).ok());
  EXPECT_FALSE(conf.config().has_dynamic_batching());
}

// ---- the other RPCs -------------------------------------------------------------------------

TEST_F(RuntimeTest, ServerInfoAndListModels) {
  grpc::ClientContext ctx;
  client_->Prepare(&ctx);
  v1::GetServerInfoResponse info;
  ASSERT_TRUE(client_->stub->GetServerInfo(&ctx, {}, &info).ok());
  EXPECT_EQ(info.backend(), TestBackend());
  EXPECT_FALSE(info.device().empty());
  EXPECT_EQ(info.compute_capability().empty(), TestBackend() == "cpu");  // "9.0" on an H100
  EXPECT_TRUE(info.batching());
  EXPECT_EQ(info.max_queue_delay_us(), 0);  // the default
  EXPECT_EQ(info.max_message_bytes(), int64_t{64} << 20);
  EXPECT_NE(info.requirements().find("K"), std::string::npos);
  std::set<std::string> schemes(info.schemes().begin(), info.schemes().end());
  for (const char* s : {"W8A8", "W4A16", "W4A16_ASYM", "FP8", "FP8_DYNAMIC"}) EXPECT_TRUE(schemes.count(s)) << s;
  EXPECT_EQ(info.memory_used_bytes(), 0);

  ASSERT_TRUE(client_->Load("a", "w8a8").ok());
  ASSERT_TRUE(client_->Load("b", "w4a16").ok());
  v1::ListModelsResponse list;
  ASSERT_TRUE(client_->List(&list).ok());
  ASSERT_EQ(list.models_size(), 2);
  EXPECT_EQ(list.models(0).name(), "a");
  EXPECT_EQ(list.models(0).source(), "w8a8");
  EXPECT_EQ(list.models(1).layers(0).group_size(), 128);
  int64_t total = list.models(0).weight_bytes() + list.models(1).weight_bytes();
  grpc::ClientContext ctx3;
  client_->Prepare(&ctx3);
  ASSERT_TRUE(client_->stub->GetServerInfo(&ctx3, {}, &info).ok());
  EXPECT_EQ(info.memory_used_bytes(), total);
  ASSERT_TRUE(client_->Unload("a").ok());
  EXPECT_EQ(client_->Unload("a").error_code(), grpc::StatusCode::NOT_FOUND);
  // Metrics reach the registry.
  bool found = false;
  for (const auto& fam : server_->registry->Collect()) {
    if (fam.name == "lowbit_runtime_models_loaded") {
      found = true;
      EXPECT_EQ(fam.metric.at(0).gauge.value, 1.0);
    }
  }
  EXPECT_TRUE(found);
}

TEST_F(RuntimeTest, GemmStreamReportsErrorsAndContinues) {
  ASSERT_TRUE(client_->Load("m", "w8a8").ok());
  grpc::ClientContext ctx;
  client_->Prepare(&ctx);
  auto stream = client_->stub->GemmStream(&ctx);
  constexpr int kN = 20;
  std::map<uint64_t, Tensor> xs;
  for (int i = 0; i < kN; ++i) {
    v1::GemmStreamRequest req;
    req.set_request_id(100 + i);
    Tensor x = RandomX(1 + i % 3, 256, DType::kF32, 500 + i);
    const char* layer = i == 5 ? "model.layers.9.nope" : kQ;
    if (i == 11) x = RandomX(2, 300, DType::kF32, 1);  // K mismatch
    *req.mutable_request() = MakeGemm("m", layer, x);
    xs[100 + i] = x;
    ASSERT_TRUE(stream->Write(req));
  }
  stream->WritesDone();
  std::map<uint64_t, v1::GemmStreamResponse> got;
  v1::GemmStreamResponse r;
  while (stream->Read(&r)) got[r.request_id()] = r;
  ASSERT_TRUE(stream->Finish().ok());
  ASSERT_EQ(got.size(), size_t(kN));
  EXPECT_EQ(got[105].error_code(), int(grpc::StatusCode::NOT_FOUND));
  EXPECT_NE(got[105].error_message().find("model.layers.9.nope"), std::string::npos);
  EXPECT_EQ(got[111].error_code(), int(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_NE(got[111].error_message().find("K = 300"), std::string::npos);
  for (auto& [id, resp] : got) {
    if (id == 105 || id == 111) continue;
    EXPECT_EQ(resp.error_code(), 0) << resp.error_message();
    v1::GemmResponse unary;
    ASSERT_TRUE(client_->Gemm(MakeGemm("m", kQ, xs[id]), &unary).ok());
    EXPECT_EQ(resp.response().y().data(), unary.y().data()) << id;
  }
}

// Many requests of one stream waiting in the batcher at once, long enough to be asked (all the
// time here) whether the stream was cancelled: all run, together, and equal the unary results.
TEST_F(RuntimeTest, GemmStreamWithManyRequestsWaitingInTheQueue) {
  EngineOptions o = DefaultOptions();
  o.batching.max_queue_delay_us = 200'000;  // every request waits 0.2 s for company
  o.batching.cancel_poll_us = 1;            // and asks all the time
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  Client client(server->port);
  ASSERT_TRUE(client.Load("m", "w8a8").ok());
  ASSERT_TRUE(client_->Load("m", "w8a8").ok());
  grpc::ClientContext ctx;
  client.Prepare(&ctx);
  auto stream = client.stub->GemmStream(&ctx);
  constexpr int kN = 48;
  std::map<uint64_t, Tensor> xs;
  for (int i = 0; i < kN; ++i) {
    v1::GemmStreamRequest req;
    req.set_request_id(i);
    xs[i] = RandomX(1, 256, DType::kF32, 700 + i);
    *req.mutable_request() = MakeGemm("m", kQ, xs[i]);
    ASSERT_TRUE(stream->Write(req));
  }
  stream->WritesDone();
  std::map<uint64_t, v1::GemmStreamResponse> got;
  v1::GemmStreamResponse r;
  while (stream->Read(&r)) got[r.request_id()] = r;
  grpc::Status st = stream->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(got.size(), size_t(kN));
  int max_batch = 0;
  for (auto& [id, resp] : got) {
    ASSERT_EQ(resp.error_code(), 0) << id << ": " << resp.error_message();
    max_batch = std::max(max_batch, resp.response().batch_requests());
    v1::GemmResponse unary;  // from the fixture's server, without a batching delay
    ASSERT_TRUE(client_->Gemm(MakeGemm("m", kQ, xs[id]), &unary).ok());
    EXPECT_EQ(resp.response().y().data(), unary.y().data()) << id;
  }
  EXPECT_GT(max_batch, 1) << "the stream's requests did not wait together";
}

// The value of a server's gauge or counter `name` (its first series), -1 when it has none.
double Gauge(TestServer& server, const std::string& name) {
  for (const auto& fam : server.registry->Collect()) {
    if (fam.name == name && !fam.metric.empty())
      return fam.type == prometheus::MetricType::Gauge ? fam.metric.at(0).gauge.value : fam.metric.at(0).counter.value;
  }
  return -1.0;
}

// A stream cancelled while its requests wait in a long batching window: they leave the queue
// (within the cancel poll), no GEMM runs for them, and the server serves the next call.
TEST_F(RuntimeTest, CancelledGemmStreamLeavesTheQueue) {
  EngineOptions o = DefaultOptions();
  o.batching.max_queue_delay_us = 5'000'000;
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  Client client(server->port);
  ASSERT_TRUE(client.Load("m", "w8a8").ok());
  grpc::ClientContext ctx;
  client.Prepare(&ctx);
  auto stream = client.stub->GemmStream(&ctx);
  for (int i = 0; i < 5; ++i) {
    v1::GemmStreamRequest req;
    req.set_request_id(i);
    *req.mutable_request() = MakeGemm("m", kQ, RandomX(1, 256, DType::kF32, 40 + i));
    ASSERT_TRUE(stream->Write(req));
  }
  const auto t0 = std::chrono::steady_clock::now();
  while (Gauge(*server, "lowbit_runtime_queue_depth") < 5 &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(Gauge(*server, "lowbit_runtime_queue_depth"), 5.0);
  ctx.TryCancel();
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  const auto t1 = std::chrono::steady_clock::now();
  while (Gauge(*server, "lowbit_runtime_queue_depth") > 0 &&
         std::chrono::steady_clock::now() - t1 < std::chrono::seconds(3)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(Gauge(*server, "lowbit_runtime_queue_depth"), 0.0);
  EXPECT_LT(std::chrono::steady_clock::now() - t1, std::chrono::seconds(1))
      << "the queue emptied only at the window's end";
  EXPECT_EQ(Gauge(*server, "lowbit_runtime_gemms_total"), 0.0);
  // The server still serves: a request fills the window alone after 5 s, so give it rows enough
  // to fill max_batch_rows instead.
  v1::GemmResponse resp;
  ASSERT_TRUE(client.Gemm(MakeGemm("m", kQ, RandomX(4096, 256, DType::kF32, 1)), &resp, 10000).ok());
}

// The first message of a LoadModelStream: the model's name and the directory's config.json.
v1::LoadModelStreamRequest StreamHeader(const std::string& name, const std::string& dir) {
  v1::LoadModelStreamRequest header;
  header.mutable_header()->set_name(name);
  header.mutable_header()->set_config_json(*ReadFileToString(dir + "/config.json"));
  return header;
}

// Streams a checkpoint directory's tensors (ForEachChunk) with its config.json; with
// `manifest`, the header lists every tensor (the runtime then prepares layer by layer), edited
// by `edit_manifest` when given.
grpc::Status StreamLoad(
    Client& client, const std::string& name, const std::string& dir,
    const std::function<void(v1::TensorChunk&)>& tamper = nullptr, bool truncate = false, bool manifest = false,
    const std::function<void(google::protobuf::RepeatedPtrField<v1::TensorInfo>&)>& edit_manifest = nullptr) {
  grpc::ClientContext ctx;
  client.Prepare(&ctx);
  v1::LoadModelStreamResponse resp;
  auto writer = client.stub->LoadModelStream(&ctx, &resp);
  v1::LoadModelStreamRequest header = StreamHeader(name, dir);
  auto model = SafetensorsModel::Open(dir);
  if (manifest) {
    rpc::AddModelManifest(**model, rpc::TensorOrder::kByName, header.mutable_header()->mutable_manifest());
    if (edit_manifest) edit_manifest(*header.mutable_header()->mutable_manifest());
  }
  writer->Write(header);
  bool stop = false;
  for (const std::string& n : (*model)->names()) {
    if (stop) break;
    Tensor t = *(*model)->Get(n);
    rpc::ForEachChunk(n, t, 16 << 10, [&](const v1::TensorChunk& chunk, std::span<const uint8_t> data) {
      v1::LoadModelStreamRequest m;
      *m.mutable_chunk() = chunk;
      m.mutable_chunk()->set_data(data.data(), data.size());
      if (tamper && chunk.last()) tamper(*m.mutable_chunk());
      if (truncate && n == std::string(kQ) + ".weight" && chunk.offset() > 0) {
        stop = true;
        return false;
      }
      return writer->Write(m);
    });
  }
  writer->WritesDone();
  return writer->Finish();
}

// A LoadModelStream cancelled half way: CANCELLED, no model under that name, and the name (and
// the memory reserved for it) free again for the next load.
TEST_F(RuntimeTest, CancelledLoadModelStreamLeavesNothing) {
  const std::string dir = g_fixture->root + "/w8a8";
  for (bool manifest : {false, true}) {
    SCOPED_TRACE(manifest ? "with manifest" : "without manifest");
    grpc::ClientContext ctx;
    client_->Prepare(&ctx);
    v1::LoadModelStreamResponse resp;
    auto writer = client_->stub->LoadModelStream(&ctx, &resp);
    v1::LoadModelStreamRequest header = StreamHeader("half", dir);
    auto model = SafetensorsModel::Open(dir);
    ASSERT_TRUE(model.ok());
    if (manifest) {
      rpc::AddModelManifest(**model, rpc::TensorOrder::kByName, header.mutable_header()->mutable_manifest());
    }
    ASSERT_TRUE(writer->Write(header));
    int sent = 0;
    for (const std::string& n : (*model)->names()) {
      if (++sent > 3) break;
      Tensor t = *(*model)->Get(n);
      rpc::ForEachChunk(n, t, 4 << 10, [&](const v1::TensorChunk& chunk, std::span<const uint8_t> data) {
        v1::LoadModelStreamRequest m;
        *m.mutable_chunk() = chunk;
        m.mutable_chunk()->set_data(data.data(), data.size());
        return writer->Write(m);
      });
    }
    ctx.TryCancel();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::CANCELLED);
    // The server's handler may still be unwinding: its models are checked until it has.
    bool listed = true;
    for (int i = 0; i < 200 && listed; ++i) {
      v1::ListModelsResponse list;
      ASSERT_TRUE(client_->List(&list).ok());
      listed = false;
      for (const auto& m : list.models()) listed = listed || m.name() == "half";
      if (listed) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_FALSE(listed) << "a cancelled stream left a model behind";
    grpc::Status st;
    for (int i = 0; i < 200; ++i) {  // the name is released when the handler returns
      st = StreamLoad(*client_, "half", dir, nullptr, false, manifest);
      if (st.error_code() != grpc::StatusCode::ALREADY_EXISTS) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_TRUE(st.ok()) << st.error_message();
    v1::UnloadModelRequest u;
    u.set_name("half");
    v1::UnloadModelResponse ur;
    grpc::ClientContext uctx;
    client_->Prepare(&uctx);
    ASSERT_TRUE(client_->stub->UnloadModel(&uctx, u, &ur).ok());
  }
}

// Streamed with or without a manifest (layer by layer, or assembled first), a checkpoint computes
// what the same checkpoint loaded from its directory computes, for every quantized layer.
TEST_F(RuntimeTest, LoadModelStreamEqualsPathLoad) {
  for (const char* ck : {"w8a8", "w4a16"}) {
    SCOPED_TRACE(ck);
    const std::string dir = g_fixture->root + "/" + ck;
    const std::string path_name = std::string("path-") + ck;
    ASSERT_TRUE(client_->Load(path_name, ck).ok());
    for (bool manifest : {false, true}) {
      SCOPED_TRACE(manifest ? "with manifest" : "without manifest");
      const std::string name = std::string(manifest ? "streamed-m-" : "streamed-") + ck;
      grpc::Status st = StreamLoad(*client_, name, dir, nullptr, false, manifest);
      ASSERT_TRUE(st.ok()) << st.error_message();
      for (const char* layer : {kQ, kDown}) {
        const int64_t k = std::string(layer) == kDown ? 512 : 256;
        Tensor x = RandomX(4, k, DType::kBF16, 3);
        v1::GemmResponse a, b;
        ASSERT_TRUE(client_->Gemm(MakeGemm(name, layer, x), &a).ok()) << layer;
        ASSERT_TRUE(client_->Gemm(MakeGemm(path_name, layer, x), &b).ok()) << layer;
        EXPECT_EQ(a.y().data(), b.y().data()) << layer;
      }
    }
  }
  const std::string dir = g_fixture->root + "/w8a8";
  ASSERT_TRUE(StreamLoad(*client_, "streamed", dir).ok());
  v1::ListModelsResponse list;
  ASSERT_TRUE(client_->List(&list).ok());
  for (const auto& m : list.models()) {
    if (m.name() == "streamed") {
      EXPECT_EQ(m.source(), "stream");
    }
  }
}

// A W4A16 checkpoint whose scales are f32 computes f32 activations in the dtype config.json
// names, read also under its newer key ("dtype", transformers ≥ 4.56): float16 here, so f32
// input gives exactly what the same input rounded to f16 gives. An unknown dtype refuses the
// load, naming the key.
TEST_F(RuntimeTest, ConfigDtypeKeySetsW4A16ComputeType) {
  auto f32_scales_copy = [](const std::string& dir, const std::string& dtype) {
    const fs::path src = fs::path(g_fixture->root) / "w4a16", dst = fs::path(g_fixture->root) / dir;
    fs::remove_all(dst);
    fs::create_directories(dst);
    auto ck = SafetensorsModel::Open(src.string());
    ASSERT_TRUE(ck.ok());
    std::vector<NamedTensor> tensors;
    for (const std::string& n : (*ck)->names()) {
      Tensor t = *(*ck)->Get(n);
      if (absl::EndsWith(n, "weight_scale")) t = Tensor::FromFloats(t.ToFloats(), t.shape(), DType::kF32);
      tensors.push_back({n, std::move(t)});
    }
    ASSERT_TRUE(WriteSafetensorsModel(dst.string(), std::move(tensors), uint64_t{1} << 40).ok());
    nlohmann::json config = nlohmann::json::parse(*ReadFileToString((src / "config.json").string()));
    config.erase("torch_dtype");
    config["dtype"] = dtype;
    ASSERT_TRUE(AtomicWriteFile((dst / "config.json").string(), config.dump()).ok());
  };
  f32_scales_copy("w4a16_f16", "float16");
  f32_scales_copy("w4a16_bf16", "bfloat16");
  f32_scales_copy("w4a16_int8", "int8");
  ASSERT_TRUE(client_->Load("f16", "w4a16_f16").ok());
  ASSERT_TRUE(client_->Load("bf16", "w4a16_bf16").ok());
  std::vector<float> xf;
  Tensor x = RandomX(3, 512, DType::kF32, 7, &xf);
  Tensor x16 = Tensor::FromFloats(xf, {3, 512}, DType::kF16);
  v1::GemmResponse from_f32, from_f16, bf16;
  ASSERT_TRUE(client_->Gemm(MakeGemm("f16", kDown, x, v1::DTYPE_F16), &from_f32).ok());
  ASSERT_TRUE(client_->Gemm(MakeGemm("f16", kDown, x16, v1::DTYPE_F16), &from_f16).ok());
  ASSERT_TRUE(client_->Gemm(MakeGemm("bf16", kDown, x, v1::DTYPE_F16), &bf16).ok());
  EXPECT_EQ(from_f32.y().data(), from_f16.y().data());
  EXPECT_NE(from_f32.y().data(), bf16.y().data());  // bf16 rounding differs: the key was read
  v1::LoadModelResponse resp;
  grpc::Status st = client_->Load("bad", "w4a16_int8", &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(st.error_message(), "\"dtype\"")) << st.error_message();
}

// ---- bad input: each gets the right code and a message naming the problem, and the server
// then serves a good request ----------------------------------------------------------------

struct BadCase {
  std::string what;
  std::function<grpc::Status(Client&)> call;
  grpc::StatusCode code;
  std::string message;  // a substring of the error message
};

TEST_F(RuntimeTest, BadInputTable) {
  ASSERT_TRUE(client_->Load("m", "w8a8").ok());
  auto gemm_with = [](std::function<void(v1::GemmRequest&)> edit) {
    return [edit](Client& c) {
      v1::GemmRequest req = MakeGemm("m", kQ, RandomX(2, 256, DType::kF32, 1));
      edit(req);
      v1::GemmResponse resp;
      return c.Gemm(req, &resp);
    };
  };
  auto load = [](std::string name, std::string path) { return [name, path](Client& c) { return c.Load(name, path); }; };
  const std::vector<BadCase> cases = {
      {"wrong dtype", gemm_with([](auto& r) {
         r = MakeGemm("m", kQ, Tensor::Zeros(DType::kI8, {2, 256}));
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "dtype I8"},
      {"bytes != shape", gemm_with([](auto& r) { r.mutable_x()->mutable_data()->resize(100); }),
       grpc::StatusCode::INVALID_ARGUMENT, "x"},
      {"negative dim", gemm_with([](auto& r) { r.mutable_x()->set_shape(0, -2); }), grpc::StatusCode::INVALID_ARGUMENT,
       "negative"},
      {"huge dims", gemm_with([](auto& r) {
         r.mutable_x()->set_shape(0, int64_t{1} << 40);
         r.mutable_x()->set_shape(1, int64_t{1} << 40);
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "limit"},
      {"rank 3", gemm_with([](auto& r) {
         r.mutable_x()->set_shape(0, 1);
         r.mutable_x()->add_shape(2);
         r.mutable_x()->set_shape(1, 256);
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "[M, K]"},
      {"M = 0", gemm_with([](auto& r) {
         r = MakeGemm("m", kQ, Tensor::Zeros(DType::kF32, {0, 256}));
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "M = 0"},
      {"M over the limit", gemm_with([](auto& r) {
         r = MakeGemm("m", kQ, Tensor::Zeros(DType::kBF16, {16385, 256}));
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "16384"},
      {"K mismatch", gemm_with([](auto& r) { r = MakeGemm("m", kQ, RandomX(2, 255, DType::kF32, 2)); }),
       grpc::StatusCode::INVALID_ARGUMENT, "K = 255"},
      {"bad out dtype", gemm_with([](auto& r) { r.set_out_dtype(v1::DTYPE_I32); }), grpc::StatusCode::INVALID_ARGUMENT,
       "out_dtype"},
      {"missing x", gemm_with([](auto& r) { r.clear_x(); }), grpc::StatusCode::INVALID_ARGUMENT, "x is missing"},
      {"unknown model", gemm_with([](auto& r) { r.set_model("nope"); }), grpc::StatusCode::NOT_FOUND, "'nope'"},
      {"unknown layer", gemm_with([](auto& r) { r.set_layer("model.layers.7.mlp.up_proj"); }),
       grpc::StatusCode::NOT_FOUND, "model.layers.7.mlp.up_proj"},
      {"float layer", gemm_with([](auto& r) { r.set_layer("lm_head"); }), grpc::StatusCode::NOT_FOUND, "not quantized"},
      {"path traversal", load("t", "../outside/w8a8"), grpc::StatusCode::INVALID_ARGUMENT, "'..'"},
      {"inner traversal", load("t", "w8a8/../../outside/w8a8"), grpc::StatusCode::INVALID_ARGUMENT, "'..'"},
      {"absolute path", load("t", g_fixture->outside + "/w8a8"), grpc::StatusCode::INVALID_ARGUMENT, "absolute"},
      {"symlink escape", load("t", "escape"), grpc::StatusCode::PERMISSION_DENIED, "outside the root"},
      {"missing path", load("t", "no_such_dir"), grpc::StatusCode::NOT_FOUND, "does not exist"},
      {"not a checkpoint", load("t", "."), grpc::StatusCode::FAILED_PRECONDITION, "config.json"},
      {"empty name", load("", "w8a8"), grpc::StatusCode::INVALID_ARGUMENT, "name is empty"},
      {"duplicate load", load("m", "w4a16"), grpc::StatusCode::ALREADY_EXISTS, "'m'"},
      {"unload unknown", [](Client& c) { return c.Unload("ghost"); }, grpc::StatusCode::NOT_FOUND, "'ghost'"},
      {"missing token",
       [&](Client&) {
         Client anon(server_->port, "");
         return anon.Load("t", "w8a8");
       },
       grpc::StatusCode::UNAUTHENTICATED, ""},
      {"wrong token",
       [&](Client&) {
         Client wrong(server_->port, "not-the-token");
         v1::GemmResponse resp;
         return wrong.Gemm(MakeGemm("m", kQ, RandomX(1, 256, DType::kF32, 1)), &resp);
       },
       grpc::StatusCode::UNAUTHENTICATED, ""},
      {"bad chunk CRC",
       [](Client& c) {
         return StreamLoad(c, "crc", g_fixture->root + "/w8a8",
                           [](v1::TensorChunk& ch) { ch.set_crc32c(ch.crc32c() ^ 1); });
       },
       grpc::StatusCode::DATA_LOSS, "CRC-32C mismatch"},
      {"truncated stream",
       [](Client& c) { return StreamLoad(c, "trunc", g_fixture->root + "/w8a8", nullptr, /*truncate=*/true); },
       grpc::StatusCode::INVALID_ARGUMENT, "ended early"},
      {"truncated stream with a manifest",
       [](Client& c) {
         return StreamLoad(c, "trunc-m", g_fixture->root + "/w8a8", nullptr, /*truncate=*/true, /*manifest=*/true);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "ended early"},
      {"tensor not in the manifest",
       [](Client& c) {
         return StreamLoad(c, "unlisted", g_fixture->root + "/w8a8", nullptr, false, true,
                           [](auto& m) { m.RemoveLast(); });
       },
       grpc::StatusCode::INVALID_ARGUMENT, "is not in the header's manifest"},
      {"manifest lists a tensor never sent",
       [](Client& c) {
         return StreamLoad(c, "extra", g_fixture->root + "/w8a8", nullptr, false, true, [](auto& m) {
           v1::TensorInfo* t = m.Add();
           t->set_name(std::string(kQ) + ".never_sent");
           t->set_dtype(v1::DTYPE_F32);
           t->add_shape(256);
         });
       },
       grpc::StatusCode::INVALID_ARGUMENT, "ended"},
      {"manifest dtype differs from the stream",
       [](Client& c) {
         return StreamLoad(c, "dtype", g_fixture->root + "/w8a8", nullptr, false, true, [](auto& m) {
           for (auto& t : m) {
             if (t.name() == std::string(kQ) + ".weight") t.set_dtype(v1::DTYPE_U8);
           }
         });
       },
       grpc::StatusCode::INVALID_ARGUMENT, "another dtype or shape"},
      {"tensor twice in the manifest",
       [](Client& c) {
         return StreamLoad(c, "twice", g_fixture->root + "/w8a8", nullptr, false, true,
                           [](auto& m) { *m.Add() = m.Get(0); });
       },
       grpc::StatusCode::INVALID_ARGUMENT, "twice in the header's manifest"},
      {"stream without header",
       [](Client& c) {
         grpc::ClientContext ctx;
         c.Prepare(&ctx);
         v1::LoadModelStreamResponse resp;
         auto w = c.stub->LoadModelStream(&ctx, &resp);
         v1::LoadModelStreamRequest m;
         m.mutable_chunk()->set_name("x");
         w->Write(m);
         w->WritesDone();
         return w->Finish();
       },
       grpc::StatusCode::INVALID_ARGUMENT, "header"},
  };
  Tensor good_x = RandomX(2, 256, DType::kF32, 42);
  v1::GemmResponse good_ref;
  ASSERT_TRUE(client_->Gemm(MakeGemm("m", kQ, good_x), &good_ref).ok());
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.what);
    grpc::Status st = c.call(*client_);
    EXPECT_EQ(st.error_code(), c.code) << st.error_message();
    EXPECT_NE(st.error_message().find(c.message), std::string::npos) << st.error_message();
    v1::GemmResponse good;
    ASSERT_TRUE(client_->Gemm(MakeGemm("m", kQ, good_x), &good).ok()) << "server stopped serving after " << c.what;
    EXPECT_EQ(good.y().data(), good_ref.y().data());
  }
}

TEST_F(RuntimeTest, OversizedMessageIsResourceExhausted) {
  auto server = StartServer(DefaultOptions(), 0, /*max_message=*/1 << 20);
  ASSERT_NE(server, nullptr);
  Client client(server->port);
  ASSERT_TRUE(client.Load("m", "w8a8").ok());
  v1::GemmResponse resp;
  grpc::Status st = client.Gemm(MakeGemm("m", kQ, RandomX(2048, 256, DType::kF32, 1)), &resp);  // 2 MiB
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  // A request under the limit whose result is over it.
  st = client.Gemm(MakeGemm("m", kQ, RandomX(1500, 256, DType::kBF16, 1), v1::DTYPE_F32), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_NE(st.error_message().find("message limit"), std::string::npos) << st.error_message();
  auto gemms = [&] { return Gauge(*server, "lowbit_runtime_gemms_total"); };
  // The same through KServe, refused before the GEMM runs: 1500 BF16 rows fit (a 768 KB result),
  // as FP32 (1.5 MB) they do not; the id the response echoes counts too.
  KServeClient kc(server->port);
  inference::ModelInferResponse kresp;
  st = kc.Infer(MakeInfer(std::string("m/") + kQ, RandomX(1500, 256, DType::kBF16, 1)), &kresp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  const double ran = gemms();
  inference::ModelInferRequest big = MakeInfer(std::string("m/") + kQ, RandomX(1500, 256, DType::kBF16, 1));
  (*big.mutable_parameters())["out_dtype"].set_string_param("FP32");
  st = kc.Infer(big, &kresp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_NE(st.error_message().find("message limit"), std::string::npos) << st.error_message();
  inference::ModelInferRequest long_id = MakeInfer(std::string("m/") + kQ, RandomX(800, 256, DType::kBF16, 1));
  (*long_id.mutable_parameters())["out_dtype"].set_string_param("FP32");  // 819 KB
  long_id.set_id(std::string(250000, 'i'));
  st = kc.Infer(long_id, &kresp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_EQ(gemms(), ran) << "a refused result ran its GEMM";
  long_id.clear_id();
  st = kc.Infer(long_id, &kresp);
  EXPECT_TRUE(st.ok()) << "without the id it fits: " << st.error_message();
  ASSERT_TRUE(client.Gemm(MakeGemm("m", kQ, RandomX(4, 256, DType::kF32, 1)), &resp).ok());
  ASSERT_TRUE(kc.Infer(MakeInfer(std::string("m/") + kQ, RandomX(4, 256, DType::kF32, 1)), &kresp).ok());

  // ModelStatistics of every layer over the limit (8 models × 7 layers, ≈ 70 bytes each, on a
  // 2 KB limit): RESOURCE_EXHAUSTED saying to ask per layer; one layer's fits.
  auto small = StartServer(DefaultOptions(), 0, /*max_message=*/2048);
  ASSERT_NE(small, nullptr);
  Client small_client(small->port);
  for (int i = 1; i <= 8; ++i) ASSERT_TRUE(small_client.Load("m" + std::to_string(i), "w8a8").ok());
  KServeClient skc(small->port);
  inference::ModelStatisticsResponse stats;
  st = skc.Statistics("", "", &stats);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_NE(st.error_message().find("ask for one layer model at a time"), std::string::npos) << st.error_message();
  ASSERT_TRUE(skc.Statistics(std::string("m4/") + kQ, "", &stats).ok());
  EXPECT_EQ(stats.model_stats_size(), 1);
}

TEST_F(RuntimeTest, MemoryBudgetRefusesLoad) {
  grpc::ClientContext ctx;
  v1::LoadModelResponse first;
  ASSERT_TRUE(client_->Load("probe", "w8a8", &first).ok());
  const int64_t one = first.model().weight_bytes();
  ASSERT_GT(one, 0);
  EngineOptions o = DefaultOptions();
  o.registry.memory_budget_bytes = one + one / 2;  // room for one model, not two
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  Client client(server->port);
  ASSERT_TRUE(client.Load("a", "w8a8").ok());
  grpc::Status st = client.Load("b", "w8a8");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find(std::to_string(one / 2) + " of the"), std::string::npos) << st.error_message();
  // The stream path is bounded by the same budget.
  st = StreamLoad(client, "s", g_fixture->root + "/w8a8");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  ASSERT_TRUE(client.Unload("a").ok());
  EXPECT_TRUE(client.Load("b", "w8a8").ok());
}

// The budget counts what the backend holds, not the checkpoint's bytes: the portable CPU kernels
// ("cpu-generic", and the AVX-512 ones) keep FP8 weights as bf16 (exact, for bf16 dot products),
// twice the checkpoint's E4M3 bytes. (The AVX2 kernels keep the E4M3 codes.)
TEST_F(RuntimeTest, MemoryBudgetCountsTheBackendLayout) {
  if (TestBackend() != "cpu") GTEST_SKIP() << "the bf16 FP8 layout is the CPU backend's";
  auto ck = SafetensorsModel::Open(g_fixture->root + "/fp8");
  ASSERT_TRUE(ck.ok());
  int64_t fp8_bytes = 0;
  for (const std::string& n : (*ck)->names()) {
    Tensor t = *(*ck)->Get(n);
    if (t.dtype() == DType::kF8E4M3) fp8_bytes += static_cast<int64_t>(t.nbytes());
  }
  ASSERT_GT(fp8_bytes, 0);
  EngineOptions o = DefaultOptions();
  o.backend = "cpu-generic";
  {
    auto probe = StartServer(o);
    ASSERT_NE(probe, nullptr);
    Client probe_client(probe->port);
    v1::LoadModelResponse loaded;
    ASSERT_TRUE(probe_client.Load("fp8_probe", "fp8", &loaded).ok());
    EXPECT_GE(loaded.model().weight_bytes(), 2 * fp8_bytes);
  }
  o.registry.memory_budget_bytes = fp8_bytes * 3 / 2;  // the checkpoint fits, the bf16 layout does not
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  Client client(server->port);
  grpc::Status st = client.Load("fp8", "fp8");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_TRUE(absl::StrContains(st.error_message(), "weight layout")) << st.error_message();
  // Nothing stays behind: the same load is refused the same way (not "already loading"), and
  // the server holds no weight bytes.
  st = client.Load("fp8", "fp8");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  v1::GetServerInfoResponse info;
  grpc::ClientContext ctx;
  client.Prepare(&ctx);
  ASSERT_TRUE(client.stub->GetServerInfo(&ctx, {}, &info).ok());
  EXPECT_EQ(info.memory_used_bytes(), 0);
}

// ---- deadlines, restart ---------------------------------------------------------------------

TEST_F(RuntimeTest, DeadlineExceededWhileQueued) {
  EngineOptions o = DefaultOptions();
  o.batching.max_queue_delay_us = 700'000;  // a 0.7 s batching window: the request waits in the queue
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  Client client(server->port);
  ASSERT_TRUE(client.Load("m", "w8a8").ok());
  auto t0 = std::chrono::steady_clock::now();
  v1::GemmResponse resp;
  grpc::Status st = client.Gemm(MakeGemm("m", kQ, RandomX(1, 256, DType::kF32, 1)), &resp, /*deadline_ms=*/100);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // The server withdraws it from the queue: nothing stays queued.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  for (const auto& fam : server->registry->Collect()) {
    if (fam.name == "lowbit_runtime_queue_depth") {
      EXPECT_EQ(fam.metric.at(0).gauge.value, 0.0);
    }
    if (fam.name == "lowbit_runtime_gemms_total") {
      EXPECT_EQ(fam.metric.at(0).counter.value, 0.0);
    }
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1500));
  // The server still serves (with a deadline long enough for the window).
  ASSERT_TRUE(client.Gemm(MakeGemm("m", kQ, RandomX(1, 256, DType::kF32, 1)), &resp, 10000).ok());
}

TEST_F(RuntimeTest, RestartThenReload) {
  const int port = server_->port;
  ASSERT_TRUE(client_->Load("m", "w8a8").ok());
  Tensor x = RandomX(2, 256, DType::kF32, 5);
  v1::GemmResponse before;
  ASSERT_TRUE(client_->Gemm(MakeGemm("m", kQ, x), &before).ok());
  server_.reset();  // shut down
  v1::GemmResponse resp;
  grpc::Status st = client_->Gemm(MakeGemm("m", kQ, x), &resp, 2000);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  server_ = StartServer(DefaultOptions(), port);
  ASSERT_NE(server_, nullptr);
  ASSERT_EQ(server_->port, port);
  // The new server has no models until the client reloads.
  grpc::Status nf;
  for (int i = 0; i < 50; ++i) {  // the channel reconnects with backoff
    nf = client_->Gemm(MakeGemm("m", kQ, x), &resp, 2000);
    if (nf.error_code() != grpc::StatusCode::UNAVAILABLE) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(nf.error_code(), grpc::StatusCode::NOT_FOUND) << nf.error_message();
  ASSERT_TRUE(client_->Load("m", "w8a8").ok());
  ASSERT_TRUE(client_->Gemm(MakeGemm("m", kQ, x), &resp).ok());
  EXPECT_EQ(resp.y().data(), before.y().data());
}

// ---- the fixes of the runtime-service audit -------------------------------------------------

v1::GetServerInfoResponse ServerInfo(Client& client) {
  v1::GetServerInfoResponse info;
  grpc::ClientContext ctx;
  client.Prepare(&ctx);
  EXPECT_TRUE(client.stub->GetServerInfo(&ctx, {}, &info).ok());
  return info;
}

std::vector<std::string> ModelNames(Client& client) {
  v1::ListModelsResponse list;
  EXPECT_TRUE(client.List(&list).ok());
  std::vector<std::string> names;
  for (const auto& m : list.models()) names.push_back(m.name());
  return names;
}

// With a state directory, the models clients loaded — from a path, or streamed with or without a
// manifest — come back after a restart (the same GEMM bits); an unloaded one does not (its copy
// goes with it); one whose checkpoint went is dropped from the record while the others load; a
// copy a crash left is removed; a second runtime cannot take the directory; a record that is not
// the runtime's stops the start with a message naming it.
TEST_F(RuntimeTest, StateDirLoadsRecordedModelsAfterRestart) {
  const std::string state = g_fixture->root + "/../runtime-state-" + std::to_string(getpid());
  const std::string copy = g_fixture->root + "/w8a8-copy";
  fs::remove_all(state);
  fs::remove_all(copy);
  fs::copy(g_fixture->root + "/w8a8", copy, fs::copy_options::recursive);
  EngineOptions o = DefaultOptions();
  o.state_dir = state;
  auto a = StartServer(o);
  ASSERT_NE(a, nullptr);
  Client ca(a->port);
  ASSERT_TRUE(ca.Load("m", "w8a8").ok());
  ASSERT_TRUE(ca.Load("gone", "w8a8-copy").ok());
  ASSERT_TRUE(ca.Load("unloaded", "w8a8").ok());
  ASSERT_TRUE(ca.Unload("unloaded").ok());
  // Streamed loads, with and without a manifest: their checkpoints are copied to the state dir.
  ASSERT_TRUE(StreamLoad(ca, "s/manifest", g_fixture->root + "/w4a16", nullptr, false, true).ok());
  ASSERT_TRUE(StreamLoad(ca, "s/plain", g_fixture->root + "/w8a8", nullptr, false, false).ok());
  ASSERT_TRUE(StreamLoad(ca, "s/unloaded", g_fixture->root + "/w8a8", nullptr, false, true).ok());
  ASSERT_TRUE(ca.Unload("s/unloaded").ok());
  auto copies = [&] {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(state + "/streamed")) names.insert(e.path().filename().string());
    return names;
  };
  EXPECT_EQ(copies().size(), 2u);  // the unloaded model's copy went with it
  Tensor x = RandomX(3, 256, DType::kF32, 7);
  v1::GemmResponse before, before_manifest, before_plain;
  ASSERT_TRUE(ca.Gemm(MakeGemm("m", kQ, x), &before).ok());
  ASSERT_TRUE(ca.Gemm(MakeGemm("s/manifest", kQ, x), &before_manifest).ok());
  ASSERT_TRUE(ca.Gemm(MakeGemm("s/plain", kQ, x), &before_plain).ok());
  // A second runtime on the same directory is refused while the first runs.
  auto second = Engine::Create(o);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find("in use by another lowbit-runtime"), std::string::npos)
      << second.status();
  a.reset();
  auto record = nlohmann::json::parse(*ReadFileToString(state + "/loaded-models.json"));
  EXPECT_EQ(record["models"]["gone"], nlohmann::json({{"path", "w8a8-copy"}})) << record.dump();
  EXPECT_EQ(record["models"]["m"], nlohmann::json({{"path", "w8a8"}})) << record.dump();
  EXPECT_EQ(record["models"].size(), 4u) << record.dump();
  // The manifest stream's copy holds every tensor byte for byte, also those no quantized Linear
  // reads (never assembled in memory: their chunks went straight to the copy).
  {
    auto src = SafetensorsModel::Open(g_fixture->root + "/w4a16");
    auto dst = SafetensorsModel::Open(state + "/" + record["models"]["s/manifest"]["streamed"].get<std::string>());
    ASSERT_TRUE(src.ok() && dst.ok());
    ASSERT_EQ((*dst)->names(), (*src)->names());
    EXPECT_TRUE(std::find((*src)->names().begin(), (*src)->names().end(), "model.embed_tokens.weight") !=
                (*src)->names().end());
    for (const std::string& n : (*src)->names()) {
      auto ts = (*src)->Get(n);
      auto td = (*dst)->Get(n);
      ASSERT_TRUE(ts.ok() && td.ok()) << n;
      EXPECT_EQ(td->dtype(), ts->dtype()) << n;
      EXPECT_EQ(td->shape(), ts->shape()) << n;
      EXPECT_TRUE(std::equal(td->bytes().begin(), td->bytes().end(), ts->bytes().begin(), ts->bytes().end())) << n;
    }
  }

  fs::remove_all(copy);  // the checkpoint of "gone" is deleted while the runtime is down
  fs::create_directories(state + "/streamed/leftover.tmp");  // a copy a crash cut short
  auto b = StartServer(o);
  ASSERT_NE(b, nullptr);
  Client cb(b->port);
  EXPECT_EQ(ModelNames(cb), (std::vector<std::string>{"m", "s/manifest", "s/plain"}));
  EXPECT_EQ(copies().size(), 2u);  // the leftover is gone
  v1::GemmResponse after;
  ASSERT_TRUE(cb.Gemm(MakeGemm("m", kQ, x), &after).ok());
  EXPECT_EQ(after.y().data(), before.y().data());
  ASSERT_TRUE(cb.Gemm(MakeGemm("s/manifest", kQ, x), &after).ok());
  EXPECT_EQ(after.y().data(), before_manifest.y().data());
  ASSERT_TRUE(cb.Gemm(MakeGemm("s/plain", kQ, x), &after).ok());
  EXPECT_EQ(after.y().data(), before_plain.y().data());
  record = nlohmann::json::parse(*ReadFileToString(state + "/loaded-models.json"));
  EXPECT_FALSE(record["models"].contains("gone")) << record.dump();
  for (const char* name : {"m", "s/manifest", "s/plain"}) ASSERT_TRUE(cb.Unload(name).ok()) << name;
  EXPECT_TRUE(copies().empty());
  b.reset();
  auto c = StartServer(o);
  ASSERT_NE(c, nullptr);
  Client cc(c->port);
  EXPECT_TRUE(ModelNames(cc).empty());
  c.reset();

  // A record the runtime did not write: the start fails, naming the file; the file stays.
  for (const std::string bad : {"{not json", "{\"format\": \"other/1\", \"models\": {}}",
                                "{\"format\": \"lowbit-runtime-loaded-models/1\", \"models\": {\"m\": 3}}",
                                "{\"format\": \"lowbit-runtime-loaded-models/1\", \"models\": {\"m\": "
                                "{\"streamed\": \"streamed/../../etc\"}}}"}) {
    ASSERT_TRUE(AtomicWriteFile(state + "/loaded-models.json", bad).ok());
    auto e = Engine::Create(o);
    ASSERT_FALSE(e.ok()) << bad;
    EXPECT_EQ(e.status().code(), absl::StatusCode::kFailedPrecondition) << bad;
    EXPECT_NE(e.status().message().find(state + "/loaded-models.json"), std::string::npos) << e.status();
    EXPECT_NE(e.status().message().find("fix or remove it"), std::string::npos) << e.status();
    EXPECT_EQ(*ReadFileToString(state + "/loaded-models.json"), bad);
  }
  fs::remove_all(state);
}

// A load the state directory cannot record is undone and fails with the reason: a client is
// never told "loaded" for a model a restart would lose. (The record and the copies' directory are
// replaced by entries the runtime cannot write into — permissions would not stop root.)
TEST_F(RuntimeTest, StateDirThatCannotRecordUndoesTheLoad) {
  const std::string state = g_fixture->root + "/../runtime-state-broken-" + std::to_string(getpid());
  fs::remove_all(state);
  EngineOptions o = DefaultOptions();
  o.state_dir = state;
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  Client client(server->port);
  fs::create_directories(state + "/loaded-models.json");  // a directory: the rename onto it fails
  grpc::Status st = client.Load("m", "w8a8");
  EXPECT_NE(st.error_code(), grpc::StatusCode::OK);
  EXPECT_NE(st.error_message().find("was not loaded: the state directory could not record it"), std::string::npos)
      << st.error_message();
  fs::remove_all(state + "/streamed");
  std::ofstream(state + "/streamed") << "a file where the copies go";
  st = StreamLoad(client, "s", g_fixture->root + "/w8a8", nullptr, false, true);
  EXPECT_NE(st.error_code(), grpc::StatusCode::OK);
  EXPECT_NE(st.error_message().find("copy of the streamed model"), std::string::npos) << st.error_message();
  EXPECT_TRUE(ModelNames(client).empty());
  EXPECT_EQ(server->engine->registry().used_bytes(), 0);
  // Repaired, the same loads succeed.
  fs::remove_all(state + "/loaded-models.json");
  fs::remove(state + "/streamed");
  fs::create_directories(state + "/streamed");
  EXPECT_TRUE(client.Load("m", "w8a8").ok());
  EXPECT_TRUE(StreamLoad(client, "s", g_fixture->root + "/w8a8", nullptr, false, true).ok());
  EXPECT_EQ(ModelNames(client), (std::vector<std::string>{"m", "s"}));
  server.reset();
  fs::remove_all(state);
}

// A LoadModel whose deadline passes, or whose client cancels, half way through preparing the
// layers: the client's error is the server's too — nothing is published, the budget gets its
// bytes back, the name is free (a retry loads), and the server goes on serving.
TEST_F(RuntimeTest, LoadModelHonoursDeadlineAndCancel) {
  EngineOptions o = DefaultOptions();
  o.registry.test_layer_pause_ms = 60;           // 7 quantized layers: ≈ 0.42 s per load
  constexpr int64_t kBudget = int64_t{1} << 30;  // so that a reservation left behind shows
  o.registry.memory_budget_bytes = kBudget;
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  Client client(server->port);
  ASSERT_TRUE(client.Load("other", "w8a8").ok());
  const int64_t before = ServerInfo(client).memory_used_bytes();
  ASSERT_GT(before, 0);
  for (bool cancel : {false, true}) {
    SCOPED_TRACE(cancel ? "cancelled" : "deadline");
    grpc::ClientContext ctx;
    client.Prepare(&ctx, cancel ? 30000 : 150);
    v1::LoadModelRequest req;
    req.set_name("slow");
    req.set_path("w8a8");
    v1::LoadModelResponse resp;
    std::thread canceller;
    if (cancel) {
      canceller = std::thread([&ctx] {
        std::this_thread::sleep_for(std::chrono::milliseconds(150));
        ctx.TryCancel();
      });
    }
    grpc::Status st = client.stub->LoadModel(&ctx, req, &resp);
    if (canceller.joinable()) canceller.join();
    EXPECT_EQ(st.error_code(), cancel ? grpc::StatusCode::CANCELLED : grpc::StatusCode::DEADLINE_EXCEEDED)
        << st.error_message();
    // Longer than the whole load would take: a load that ran on would be published by now.
    std::this_thread::sleep_for(std::chrono::milliseconds(800));
    const std::vector<std::string> names = ModelNames(client);
    EXPECT_EQ(std::count(names.begin(), names.end(), "slow"), 0) << "the abandoned load was published";
    EXPECT_EQ(ServerInfo(client).memory_used_bytes(), before);
    EXPECT_EQ(server->engine->registry().bytes_left(), kBudget - before);  // no reservation left
    v1::LoadModelResponse loaded;
    grpc::Status retry = client.Load("slow", "w8a8", &loaded);
    ASSERT_TRUE(retry.ok()) << retry.error_message();
    EXPECT_EQ(ServerInfo(client).memory_used_bytes(), before + loaded.model().weight_bytes());
    ASSERT_TRUE(client.Unload("slow").ok());
  }
  v1::GemmResponse resp;
  ASSERT_TRUE(client.Gemm(MakeGemm("other", kQ, RandomX(2, 256, DType::kF32, 1)), &resp).ok());
}

// The same at the engine, where the moment is exact: the error says how far the load got, and
// a call that ends after the last layer, just before publishing, publishes nothing either.
TEST_F(RuntimeTest, LoadStoppedByCallControlPublishesNothing) {
  EngineOptions o = DefaultOptions();
  constexpr int64_t kBudget = int64_t{1} << 30;  // so that a reservation left behind shows
  o.registry.memory_budget_bytes = kBudget;
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  Engine& engine = *server->engine;
  runtime::CallControl past;
  past.deadline = std::chrono::system_clock::now() - std::chrono::seconds(1);
  auto r = engine.LoadFromPath("m", "w8a8", past);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "deadline passed while loading 'm' (after 0 of 7")) << r.status();
  for (int stop_at : {3, 8}) {  // before layer 3, and after all 7 (the check before publishing)
    SCOPED_TRACE(stop_at);
    int asked = 0;
    runtime::CallControl control;
    control.cancelled = [&] { return ++asked >= stop_at; };
    r = engine.LoadFromPath("m", "w8a8", control);
    ASSERT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(),
                                  stop_at == 3 ? "after 2 of 7 quantized layers" : "all 7 quantized layers prepared"))
        << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), "nothing was loaded")) << r.status();
    EXPECT_EQ(engine.registry().model_count(), 0u);
    EXPECT_EQ(engine.registry().used_bytes(), 0);
    EXPECT_EQ(engine.registry().bytes_left(), kBudget);  // the reservation was given back
  }
  ASSERT_TRUE(engine.LoadFromPath("m", "w8a8").ok());
}

// A GemmStream message that does not parse ends the stream with INVALID_ARGUMENT saying so; the
// request before it is answered, the one after it is not silently dropped with an OK, and the
// server goes on serving streams.
TEST_F(RuntimeTest, GemmStreamMalformedMessageIsInvalidArgument) {
  ASSERT_TRUE(client_->Load("m", "w8a8").ok());
  auto channel = rpc::MakeChannel(client_->config);
  ASSERT_TRUE(channel.ok());
  auto encode = [](const v1::GemmStreamRequest& req) {
    grpc::ByteBuffer bb;
    bool own = false;
    EXPECT_TRUE(grpc::SerializationTraits<v1::GemmStreamRequest>::Serialize(req, &bb, &own).ok());
    return bb;
  };
  v1::GemmStreamRequest first, after;
  first.set_request_id(1);
  *first.mutable_request() = MakeGemm("m", kQ, RandomX(2, 256, DType::kF32, 1));
  after.set_request_id(9);
  *after.mutable_request() = MakeGemm("m", kQ, RandomX(2, 256, DType::kF32, 2));
  const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff};  // field 0x1fffffff.. a truncated varint tag
  grpc::Slice slice(garbage, sizeof(garbage));
  grpc::ClientContext ctx;
  client_->Prepare(&ctx);
  const grpc::internal::RpcMethod method("/lowbit.v1.RuntimeService/GemmStream",
                                         grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(channel->get(), method,
                                                                                            &ctx));
  ASSERT_TRUE(stream->Write(encode(first)));
  stream->Write(grpc::ByteBuffer(&slice, 1));
  stream->Write(encode(after));  // may fail: the server stops reading at the garbage
  stream->WritesDone();
  std::vector<int64_t> answered;
  grpc::ByteBuffer raw;
  while (stream->Read(&raw)) {
    v1::GemmStreamResponse r;
    ASSERT_TRUE(grpc::SerializationTraits<v1::GemmStreamResponse>::Deserialize(&raw, &r).ok());
    EXPECT_EQ(r.error_code(), 0) << r.error_message();
    answered.push_back(r.request_id());
  }
  grpc::Status st = stream->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_TRUE(absl::StrContains(st.error_message(), "GemmStream request message 2 (4 bytes) did not parse"))
      << st.error_message();
  EXPECT_EQ(answered, std::vector<int64_t>{1});
  // A well-formed stream on the same server still runs every request.
  grpc::ClientContext ok_ctx;
  client_->Prepare(&ok_ctx);
  auto ok_stream = client_->stub->GemmStream(&ok_ctx);
  ASSERT_TRUE(ok_stream->Write(first));
  ASSERT_TRUE(ok_stream->Write(after));
  ok_stream->WritesDone();
  std::set<int64_t> ids;
  v1::GemmStreamResponse r;
  while (ok_stream->Read(&r)) {
    EXPECT_EQ(r.error_code(), 0) << r.error_message();
    ids.insert(r.request_id());
  }
  EXPECT_TRUE(ok_stream->Finish().ok());
  EXPECT_EQ(ids, (std::set<int64_t>{1, 9}));
}

// A unary Gemm whose bytes do not parse as a GemmRequest is INVALID_ARGUMENT naming the message
// (gRPC's own unary handler would answer INTERNAL); a well-formed one on the same server, sent as
// raw bytes too, gets the typed client's answer bit for bit.
TEST_F(RuntimeTest, GemmMalformedRequestIsInvalidArgument) {
  ASSERT_TRUE(client_->Load("m", "w8a8").ok());
  auto channel = rpc::MakeChannel(client_->config);
  ASSERT_TRUE(channel.ok());
  const grpc::internal::RpcMethod method("/lowbit.v1.RuntimeService/Gemm", grpc::internal::RpcMethod::NORMAL_RPC);
  auto raw_call = [&](const grpc::ByteBuffer& request, grpc::ByteBuffer* response) {
    grpc::ClientContext ctx;
    client_->Prepare(&ctx);
    return grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(channel->get(), method, &ctx,
                                                                                request, response);
  };
  const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff};  // a truncated varint tag
  grpc::Slice slice(garbage, sizeof(garbage));
  grpc::ByteBuffer ignored;
  grpc::Status st = raw_call(grpc::ByteBuffer(&slice, 1), &ignored);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_TRUE(
      absl::StrContains(st.error_message(), "the Gemm request (4 bytes) did not parse as a lowbit.v1.GemmRequest"))
      << st.error_message();

  const v1::GemmRequest req = MakeGemm("m", kQ, RandomX(3, 256, DType::kF32, 5));
  grpc::ByteBuffer encoded, answer;
  bool own = false;
  ASSERT_TRUE(grpc::SerializationTraits<v1::GemmRequest>::Serialize(req, &encoded, &own).ok());
  st = raw_call(encoded, &answer);
  ASSERT_TRUE(st.ok()) << st.error_message();
  v1::GemmResponse from_raw, typed;
  ASSERT_TRUE(grpc::SerializationTraits<v1::GemmResponse>::Deserialize(&answer, &from_raw).ok());
  ASSERT_TRUE(client_->Gemm(req, &typed).ok());
  EXPECT_EQ(from_raw.y().data(), typed.y().data());
  EXPECT_EQ(from_raw.y().shape_size(), 2);
  // A request the engine refuses still answers with its own code through the raw handler.
  v1::GemmRequest unknown = req;
  unknown.set_layer("model.layers.0.self_attn.nope");
  v1::GemmResponse none;
  EXPECT_EQ(client_->Gemm(unknown, &none).error_code(), grpc::StatusCode::NOT_FOUND);
}

// Copies the fixture checkpoint `src` to `dst` under the root without the tensors `drop` picks,
// with config.json edited by `edit`.
void WriteVariant(const std::string& src, const std::string& dst, const std::function<bool(const std::string&)>& drop,
                  const std::function<void(nlohmann::json&)>& edit = nullptr) {
  const fs::path from = fs::path(g_fixture->root) / src, to = fs::path(g_fixture->root) / dst;
  fs::remove_all(to);
  fs::create_directories(to);
  auto ck = SafetensorsModel::Open(from.string());
  ASSERT_TRUE(ck.ok());
  std::vector<NamedTensor> tensors;
  for (const std::string& n : (*ck)->names()) {
    if (!drop(n)) tensors.push_back({n, *(*ck)->Get(n)});
  }
  ASSERT_TRUE(WriteSafetensorsModel(to.string(), std::move(tensors), uint64_t{1} << 40).ok());
  nlohmann::json config = nlohmann::json::parse(*ReadFileToString((from / "config.json").string()));
  if (edit) edit(config);
  ASSERT_TRUE(AtomicWriteFile((to / "config.json").string(), config.dump()).ok());
}

// Streams the first `count` tensors of `dir` in name order, each whole, then ends the stream
// cleanly (no manifest): a truncated upload that looks complete to the chunk layer.
grpc::Status StreamFirstTensors(Client& client, const std::string& name, const std::string& dir, size_t count) {
  grpc::ClientContext ctx;
  client.Prepare(&ctx);
  v1::LoadModelStreamResponse resp;
  auto writer = client.stub->LoadModelStream(&ctx, &resp);
  v1::LoadModelStreamRequest header = StreamHeader(name, dir);
  writer->Write(header);
  auto model = SafetensorsModel::Open(dir);
  std::vector<std::string> names = (*model)->names();
  for (size_t i = 0; i < count && i < names.size(); ++i) {
    Tensor t = *(*model)->Get(names[i]);
    rpc::ForEachChunk(names[i], t, 1 << 20, [&](const v1::TensorChunk& chunk, std::span<const uint8_t> data) {
      v1::LoadModelStreamRequest m;
      *m.mutable_chunk() = chunk;
      m.mutable_chunk()->set_data(data.data(), data.size());
      return writer->Write(m);
    });
  }
  writer->WritesDone();
  return writer->Finish();
}

// A checkpoint that lost tensors a quantized Linear needs, a Linear, or a decoder layer is
// refused with INVALID_ARGUMENT naming what is missing (by path and streamed without a
// manifest); Linears the config leaves in float (ignored, or matched by no target) still load.
TEST_F(RuntimeTest, IncompleteCheckpointsAreRefused) {
  const std::string down = kDown;
  WriteVariant("w8a8", "miss_scale", [&](const std::string& n) { return n == down + ".weight_scale"; });
  WriteVariant("w8a8", "miss_weight", [&](const std::string& n) { return n == down + ".weight"; });
  WriteVariant("w8a8", "miss_linear", [&](const std::string& n) { return absl::StartsWith(n, down + "."); });
  WriteVariant("w4a16", "miss_w4_scale", [&](const std::string& n) { return n == down + ".weight_scale"; });
  WriteVariant(
      "w8a8", "miss_layer", [](const std::string&) { return false; },
      [](nlohmann::json& c) { c["num_hidden_layers"] = 3; });  // the tensors hold layer 0 only
  // Legitimately float: lm_head not ignored, but the only group targets *_proj modules.
  WriteVariant(
      "w8a8", "float_by_targets", [](const std::string&) { return false; },
      [](nlohmann::json& c) {
        auto& qc = c["quantization_config"];
        qc["ignore"] = nlohmann::json::array();
        for (auto& group : qc["config_groups"].items())
          group.value()["targets"] = nlohmann::json::array({"re:.*_proj$"});
      });
  struct Case {
    const char* path;
    std::vector<std::string> message;
  };
  const std::vector<Case> cases = {
      {"miss_scale", {down + ".weight_scale is missing; quantization_config group '", "' targets " + down}},
      {"miss_weight", {down + ".weight is missing; quantization_config group '", "' targets " + down}},
      {"miss_linear", {"the Linear " + down + " is missing"}},
      {"miss_w4_scale", {down + ".weight_scale is missing; quantization_config group '"}},
      {"miss_layer", {"num_hidden_layers = 3", "no model.layers.1.* tensors", "decoder layers 1, 2 missing"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.path);
    grpc::Status st = client_->Load(c.path, c.path);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    for (const std::string& part : c.message) {
      EXPECT_TRUE(absl::StrContains(st.error_message(), part)) << st.error_message() << "\n  wanted: " << part;
    }
    st = StreamLoad(*client_, std::string(c.path) + "-s", g_fixture->root + "/" + c.path);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "streamed: " << st.error_message();
    EXPECT_TRUE(absl::StrContains(st.error_message(), c.message[0])) << "streamed: " << st.error_message();
  }
  EXPECT_TRUE(ModelNames(*client_).empty());
  EXPECT_EQ(ServerInfo(*client_).memory_used_bytes(), 0);
  // The complete checkpoints, and the one whose lm_head no group targets, load; lm_head is float.
  for (const char* path : {"w8a8", "float_by_targets"}) {
    SCOPED_TRACE(path);
    v1::LoadModelResponse resp;
    grpc::Status st = client_->Load(path, path, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(resp.model().layers_size(), 7);
    v1::GemmResponse g;
    st = client_->Gemm(MakeGemm(path, "lm_head", RandomX(1, 256, DType::kF32, 1)), &g);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_TRUE(absl::StrContains(st.error_message(), "left in float")) << st.error_message();
  }
  // A stream without a manifest that ends cleanly after any number of tensors short of every
  // quantized Linear's is refused, never loaded in part (only model.norm.weight, the last in name
  // order, is not needed by the runtime).
  const std::string dir = g_fixture->root + "/w8a8";
  auto ck = SafetensorsModel::Open(dir);
  ASSERT_TRUE(ck.ok());
  const size_t total = (*ck)->names().size();
  ASSERT_EQ((*ck)->names().back(), "model.norm.weight");
  for (size_t count = 3; count + 1 < total; ++count) {
    SCOPED_TRACE(count);
    grpc::Status st = StreamFirstTensors(*client_, "cut", dir, count);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_TRUE(absl::StrContains(st.error_message(), "missing")) << st.error_message();
  }
  const std::vector<std::string> names = ModelNames(*client_);
  EXPECT_EQ(std::count(names.begin(), names.end(), "cut"), 0);
  v1::GemmResponse g;
  ASSERT_TRUE(client_->Gemm(MakeGemm("w8a8", kQ, RandomX(2, 256, DType::kF32, 1)), &g).ok());
}

// LoadModelStream: a tensor that is valid but larger than what the memory budget has left is
// RESOURCE_EXHAUSTED naming the budget (as is a manifest that lists more); sizes that are invalid
// whatever the budget stay INVALID_ARGUMENT.
TEST_F(RuntimeTest, StreamedTensorOverTheBudgetIsResourceExhausted) {
  EngineOptions o = DefaultOptions();
  o.registry.memory_budget_bytes = 40'000'000;
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  Client client(server->port);
  ASSERT_TRUE(client.Load("m", "w8a8").ok());
  const int64_t left = server->engine->registry().bytes_left();
  ASSERT_LT(left, 40'000'000);
  auto send = [&](std::vector<int64_t> shape, bool manifest) {
    grpc::ClientContext ctx;
    client.Prepare(&ctx);
    v1::LoadModelStreamResponse resp;
    auto writer = client.stub->LoadModelStream(&ctx, &resp);
    v1::LoadModelStreamRequest header;
    header.mutable_header()->set_name("big");
    header.mutable_header()->set_config_json(*ReadFileToString(g_fixture->root + "/w8a8/config.json"));
    if (manifest) {
      v1::TensorInfo* t = header.mutable_header()->add_manifest();
      t->set_name("a");
      t->set_dtype(v1::DTYPE_F32);
      t->mutable_shape()->Assign(shape.begin(), shape.end());
    }
    writer->Write(header);
    v1::LoadModelStreamRequest m;
    m.mutable_chunk()->set_name("a");
    m.mutable_chunk()->set_dtype(v1::DTYPE_F32);
    m.mutable_chunk()->mutable_shape()->Assign(shape.begin(), shape.end());
    m.mutable_chunk()->set_data(std::string(16, '\0'));
    writer->Write(m);
    writer->WritesDone();
    return writer->Finish();
  };
  // Without a manifest the whole checkpoint is assembled before anything is prepared: every
  // streamed byte counts against the budget.
  grpc::Status st = send({100'000'000}, false);  // 400 MB of F32
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_TRUE(absl::StrContains(st.error_message(), "'a'")) << st.error_message();
  EXPECT_TRUE(absl::StrContains(st.error_message(), "the memory budget (--memory_budget_bytes 40000000) has " +
                                                        std::to_string(left) + " bytes left"))
      << st.error_message();
  // With a manifest the budget is asked up front for the quantized Linears' bytes: a q_proj
  // announced at 400 MB is refused before any data.
  st = StreamLoad(client, "big", g_fixture->root + "/w8a8", nullptr, false, true,
                  [](google::protobuf::RepeatedPtrField<v1::TensorInfo>& m) {
                    for (v1::TensorInfo& t : m) {
                      if (t.name() == std::string(kQ) + ".weight") {
                        t.clear_shape();
                        t.add_shape(400'000'000);
                      }
                    }
                  });
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_TRUE(absl::StrContains(st.error_message(), "loading 'big' needs ")) << st.error_message();
  EXPECT_TRUE(absl::StrContains(st.error_message(), std::to_string(left) + " of the 40000000-byte memory budget"))
      << st.error_message();
  for (bool manifest : {false, true}) {
    SCOPED_TRACE(manifest ? "with manifest" : "without manifest");
    st = send({int64_t{1} << 40}, manifest);  // 4 TiB: over the 16 GiB any tensor may have
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_TRUE(absl::StrContains(st.error_message(), "17179869184-byte limit")) << st.error_message();
    st = send({int64_t{1} << 62, 4}, manifest);  // overflows int64
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    st = send({-3}, manifest);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  }
  EXPECT_EQ(ModelNames(client), std::vector<std::string>{"m"});
  v1::GemmResponse g;
  ASSERT_TRUE(client.Gemm(MakeGemm("m", kQ, RandomX(2, 256, DType::kF32, 1)), &g).ok());
}

// A streamed load (with a manifest) and a path load of the same checkpoint count the same bytes
// against the budget: the quantized Linears', not the embeddings' or any other tensor no quantized
// Linear reads. A checkpoint with a large extra table loads both ways under a budget that holds
// its Linears but not the table (a streamed load used to be refused: the whole manifest counted).
TEST_F(RuntimeTest, StreamedAndPathLoadsCountTheSameBytesAgainstTheBudget) {
  const std::string dir = g_fixture->root + "/w8a8-big-table";
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(g_fixture->root + "/w8a8/config.json", dir + "/config.json");
  {
    auto src = SafetensorsModel::Open(g_fixture->root + "/w8a8");
    ASSERT_TRUE(src.ok());
    std::vector<NamedTensor> tensors;
    for (const std::string& n : (*src)->names()) {
      Tensor t = *(*src)->Get(n);
      tensors.push_back({n, Tensor::FromBytes(t.dtype(), t.shape(), t.bytes())});
    }
    std::vector<float> table(2'000'000, 0.5f);  // 8 MB: several times the Linears' bytes
    tensors.push_back({"model.extra_table", Tensor::FromFloats(table, {2'000'000}, DType::kF32)});
    ASSERT_TRUE(WriteSafetensorsFile(dir + "/model.safetensors", tensors).ok());
  }
  int64_t linears = 0;
  {
    auto probe = StartServer();
    ASSERT_NE(probe, nullptr);
    Client c(probe->port);
    ASSERT_TRUE(c.Load("probe", "w8a8").ok());
    linears = probe->engine->registry().used_bytes();
  }
  ASSERT_GT(linears, 0);
  ASSERT_LT(4 * linears, 8'000'000);
  EngineOptions o = DefaultOptions();
  o.registry.memory_budget_bytes = 2 * linears + linears / 2;  // two models' Linears, not the table
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  Client client(server->port);
  grpc::Status st = StreamLoad(client, "streamed", dir, nullptr, false, /*manifest=*/true);
  ASSERT_TRUE(st.ok()) << st.error_message();
  st = client.Load("path", "w8a8-big-table");
  ASSERT_TRUE(st.ok()) << st.error_message();
  // A third copy of the Linears does not fit: refused up front, both ways, naming the budget.
  st = StreamLoad(client, "third", dir, nullptr, false, true);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_TRUE(absl::StrContains(st.error_message(), "memory budget")) << st.error_message();
  st = client.Load("third", "w8a8-big-table");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  Tensor x = RandomX(2, 256, DType::kF32, 4);
  v1::GemmResponse a, b;
  ASSERT_TRUE(client.Gemm(MakeGemm("streamed", kQ, x), &a).ok());
  ASSERT_TRUE(client.Gemm(MakeGemm("path", kQ, x), &b).ok());
  EXPECT_EQ(a.y().data(), b.y().data());
  fs::remove_all(dir);
}

// A load refused because another load in progress holds the budget says so.
TEST_F(RuntimeTest, BudgetRefusalCountsLoadsInProgress) {
  v1::LoadModelResponse probe;
  ASSERT_TRUE(client_->Load("probe", "w8a8", &probe).ok());
  const int64_t one = probe.model().weight_bytes();
  EngineOptions o = DefaultOptions();
  o.registry.memory_budget_bytes = one + one / 2;
  o.registry.test_layer_pause_ms = 100;
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  Client client(server->port);
  grpc::Status first;
  std::thread loader([&] { first = client.Load("a", "w8a8"); });
  const auto t0 = std::chrono::steady_clock::now();
  while (server->engine->registry().bytes_left() == o.registry.memory_budget_bytes &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const int64_t reserved = o.registry.memory_budget_bytes - server->engine->registry().bytes_left();
  ASSERT_GT(reserved, 0);
  grpc::Status st = client.Load("b", "w8a8");
  loader.join();
  ASSERT_TRUE(first.ok()) << first.error_message();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  // (The reservation may grow while the load runs: the backend's layout can outgrow the estimate.)
  EXPECT_TRUE(absl::StrContains(st.error_message(), "(0 used by 0 loaded models, ")) << st.error_message();
  EXPECT_TRUE(absl::StrContains(st.error_message(), " reserved by 1 load in progress)")) << st.error_message();
  // Once it is loaded, the same refusal counts it as used.
  st = client.Load("b", "w8a8");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_TRUE(absl::StrContains(
      st.error_message(), "(" + std::to_string(one) + " used by 1 loaded model, 0 reserved by 0 loads in progress)"))
      << st.error_message();
}

// UnloadModel while something still holds the model (a GEMM): the budget keeps counting its bytes
// until the last reference goes, and then gives them back (and the memory gauge follows).
TEST_F(RuntimeTest, UnloadKeepsTheBudgetUntilTheLastReferenceGoes) {
  v1::LoadModelResponse probe;
  ASSERT_TRUE(client_->Load("probe", "w8a8", &probe).ok());
  const int64_t one = probe.model().weight_bytes();
  EngineOptions o = DefaultOptions();
  o.registry.memory_budget_bytes = one + one / 2;
  o.batching.max_queue_delay_us = 1'500'000;  // a GEMM waits 1.5 s in the batcher: a long GEMM
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  Client client(server->port);
  ASSERT_TRUE(client.Load("m", "w8a8").ok());
  ASSERT_EQ(ServerInfo(client).memory_used_bytes(), one);

  // A reference held in the registry's own terms.
  {
    auto held = server->engine->registry().Get("m");
    ASSERT_TRUE(held.ok());
    ASSERT_TRUE(client.Unload("m").ok());
    EXPECT_TRUE(ModelNames(client).empty());
    EXPECT_EQ(ServerInfo(client).memory_used_bytes(), one);
    EXPECT_EQ(Gauge(*server, "lowbit_runtime_memory_used_bytes"), static_cast<double>(one));
    grpc::Status st = client.Load("n", "w8a8");
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
    EXPECT_TRUE(absl::StrContains(st.error_message(),
                                  std::to_string(one) + " still held by 1 unloaded model that running GEMMs use"))
        << st.error_message();
  }
  EXPECT_EQ(ServerInfo(client).memory_used_bytes(), 0);
  EXPECT_EQ(Gauge(*server, "lowbit_runtime_memory_used_bytes"), 0.0);

  // A GEMM that runs across the unload.
  ASSERT_TRUE(client.Load("m", "w8a8").ok());
  grpc::Status gemm;
  v1::GemmResponse resp;
  std::thread runner([&] { gemm = client.Gemm(MakeGemm("m", kQ, RandomX(2, 256, DType::kF32, 1)), &resp, 10000); });
  const auto t0 = std::chrono::steady_clock::now();
  while (Gauge(*server, "lowbit_runtime_queue_depth") < 1 &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(Gauge(*server, "lowbit_runtime_queue_depth"), 1.0);
  ASSERT_TRUE(client.Unload("m").ok());
  EXPECT_EQ(ServerInfo(client).memory_used_bytes(), one) << "the budget was given back under a running GEMM";
  runner.join();
  ASSERT_TRUE(gemm.ok()) << gemm.error_message();
  EXPECT_EQ(ResultFloats(resp).size(), 2u * 256u);
  // The GEMM's call has ended: its reference went with it (the handler may still be unwinding).
  for (int i = 0; i < 200 && ServerInfo(client).memory_used_bytes() != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(ServerInfo(client).memory_used_bytes(), 0);
  EXPECT_EQ(Gauge(*server, "lowbit_runtime_memory_used_bytes"), 0.0);
  ASSERT_TRUE(client.Load("n", "w8a8").ok());
}

}  // namespace
// ---- KServe v2 (inference.GRPCInferenceService) on the same server ---------------------------

// Every scheme through ModelInfer: the same bytes as lowbit.v1 Gemm on the same server (which
// SchemeTest checks against the independent reference), and for W8A8 in F32 the reference
// itself; leading dims are kept ([2, 2, K] -> [2, 2, N]).
TEST_F(RuntimeTest, KServeInferEqualsGemmForEveryScheme) {
  KServeClient kc(server_->port);
  for (const char* dir : {"w8a8", "w8a8_static", "w4a16", "w4a16_asym", "fp8", "fp8_dynamic"}) {
    SCOPED_TRACE(dir);
    ASSERT_TRUE(client_->Load(dir, dir).ok());
    const std::string name = std::string(dir) + "/" + kQ;
    for (DType dt : {DType::kBF16, DType::kF16, DType::kF32}) {
      std::vector<float> xf;
      Tensor x = RandomX(4, 256, dt, 31, &xf);
      v1::GemmResponse g;
      ASSERT_TRUE(client_->Gemm(MakeGemm(dir, kQ, x), &g).ok());
      inference::ModelInferResponse r;
      grpc::Status st = kc.Infer(MakeInfer(name, x, {2, 2, 256}), &r);
      ASSERT_TRUE(st.ok()) << st.error_message();
      ASSERT_EQ(r.outputs_size(), 1);
      EXPECT_EQ(r.model_name(), name);
      EXPECT_EQ(r.model_version(), "1");
      EXPECT_EQ(r.outputs(0).name(), "y");
      EXPECT_EQ(r.outputs(0).datatype(), runtime::KServeDatatype(dt));
      EXPECT_EQ(std::vector<int64_t>(r.outputs(0).shape().begin(), r.outputs(0).shape().end()),
                (std::vector<int64_t>{2, 2, 256}));
      ASSERT_EQ(r.raw_output_contents_size(), 1);
      EXPECT_EQ(r.raw_output_contents(0), g.y().data());
      EXPECT_GE(r.parameters().at("batch_requests").int64_param(), 1);
      if (std::string(dir) == "w8a8" && dt == DType::kF32) {
        Reference ref = Expected(g_fixture->root + "/w8a8", kQ, "W8A8", xf, 4, 256, dt);
        std::vector<float> y(ref.y.size());
        ASSERT_EQ(r.raw_output_contents(0).size(), y.size() * sizeof(float));
        std::memcpy(y.data(), r.raw_output_contents(0).data(), r.raw_output_contents(0).size());
        for (size_t i = 0; i < y.size(); ++i) {
          EXPECT_NEAR(y[i], ref.y[i], 1e-5 * ref.mag[i] + 1e-6 * std::fabs(ref.y[i]) + 1e-6) << i;
        }
      }
    }
    // Rank 1: one row [K] -> [N].
    Tensor x1 = RandomX(1, 256, DType::kBF16, 5);
    v1::GemmResponse g1;
    ASSERT_TRUE(client_->Gemm(MakeGemm(dir, kQ, x1), &g1).ok());
    inference::ModelInferResponse r1;
    ASSERT_TRUE(kc.Infer(MakeInfer(name, x1, {256}), &r1).ok());
    EXPECT_EQ(std::vector<int64_t>(r1.outputs(0).shape().begin(), r1.outputs(0).shape().end()),
              std::vector<int64_t>{256});
    EXPECT_EQ(r1.raw_output_contents(0), g1.y().data());
    ASSERT_TRUE(client_->Unload(dir).ok());
  }
}

// lowbit.v1 Gemm and KServe ModelInfer requests for the same layer batch together (one engine),
// and each gets its own rows back.
TEST_F(RuntimeTest, KServeAndGemmRequestsBatchTogether) {
  EngineOptions o = DefaultOptions();
  o.batching.max_queue_delay_us = 50000;  // 50 ms: both requests land in one window
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  Client client(server->port);
  KServeClient kc(server->port);
  ASSERT_TRUE(client.Load("m", "w8a8").ok());
  const Tensor xa = RandomX(3, 256, DType::kBF16, 41), xb = RandomX(2, 256, DType::kBF16, 42);
  v1::GemmResponse alone_a, together_a;
  inference::ModelInferResponse alone_b, together_b;
  ASSERT_TRUE(client.Gemm(MakeGemm("m", kQ, xa), &alone_a).ok());
  ASSERT_TRUE(kc.Infer(MakeInfer(std::string("m/") + kQ, xb), &alone_b).ok());
  grpc::Status sa, sb;
  std::thread ta([&] { sa = client.Gemm(MakeGemm("m", kQ, xa), &together_a); });
  std::thread tb([&] { sb = kc.Infer(MakeInfer(std::string("m/") + kQ, xb), &together_b); });
  ta.join();
  tb.join();
  ASSERT_TRUE(sa.ok()) << sa.error_message();
  ASSERT_TRUE(sb.ok()) << sb.error_message();
  EXPECT_EQ(together_a.batch_requests(), 2);
  EXPECT_EQ(together_b.parameters().at("batch_requests").int64_param(), 2);
  EXPECT_EQ(together_a.y().data(), alone_a.y().data());
  EXPECT_EQ(together_b.raw_output_contents(0), alone_b.raw_output_contents(0));
}

// ModelStreamInfer: every request answered (matched by id) with the bytes ModelInfer gives, a
// failed one in-stream with its id and the stream going on; a message that does not parse ends
// the stream with INVALID_ARGUMENT after the requests before it.
TEST_F(RuntimeTest, KServeStreamInfer) {
  ASSERT_TRUE(client_->Load("m", "w8a8").ok());
  KServeClient kc(server_->port);
  const std::string layer = std::string("m/") + kQ;
  std::map<std::string, std::string> expected;
  std::vector<inference::ModelInferRequest> reqs;
  for (int i = 0; i < 12; ++i) {
    inference::ModelInferRequest r = MakeInfer(layer, RandomX(1 + i % 4, 256, DType::kF32, 70 + i));
    r.set_id("r" + std::to_string(i));
    if (i == 5) r.set_model_name("m/model.layers.0.mlp.nope");  // fails, in its answer
    inference::ModelInferResponse alone;
    if (i != 5) {
      ASSERT_TRUE(kc.Infer(r, &alone).ok());
      expected[r.id()] = alone.raw_output_contents(0);
    }
    reqs.push_back(std::move(r));
  }
  grpc::ClientContext ctx;
  kc.Prepare(&ctx);
  auto stream = kc.stub->ModelStreamInfer(&ctx);
  for (const auto& r : reqs) ASSERT_TRUE(stream->Write(r));
  stream->WritesDone();
  inference::ModelStreamInferResponse resp;
  std::set<std::string> answered;
  while (stream->Read(&resp)) {
    const std::string id = resp.infer_response().id();
    EXPECT_TRUE(answered.insert(id).second) << id << " answered twice";
    if (id == "r5") {
      EXPECT_NE(resp.error_message().find("NOT_FOUND: no model 'm/model.layers.0.mlp.nope'"), std::string::npos)
          << resp.error_message();
      EXPECT_EQ(resp.infer_response().outputs_size(), 0);
    } else {
      EXPECT_EQ(resp.error_message(), "") << id;
      ASSERT_EQ(resp.infer_response().raw_output_contents_size(), 1) << id;
      EXPECT_EQ(resp.infer_response().raw_output_contents(0), expected[id]) << id;
    }
  }
  grpc::Status st = stream->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(answered.size(), reqs.size());

  // A message that does not parse: the one before it is answered, the stream ends there.
  auto channel = rpc::MakeChannel(kc.config);
  ASSERT_TRUE(channel.ok());
  grpc::ClientContext raw_ctx;
  kc.Prepare(&raw_ctx);
  const grpc::internal::RpcMethod method("/inference.GRPCInferenceService/ModelStreamInfer",
                                         grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> raw(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(channel->get(), method,
                                                                                            &raw_ctx));
  grpc::ByteBuffer first;
  bool own = false;
  ASSERT_TRUE(grpc::SerializationTraits<inference::ModelInferRequest>::Serialize(reqs[0], &first, &own).ok());
  const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff};
  grpc::Slice slice(garbage, sizeof(garbage));
  ASSERT_TRUE(raw->Write(first));
  raw->Write(grpc::ByteBuffer(&slice, 1));
  raw->WritesDone();
  int answers = 0;
  grpc::ByteBuffer bytes;
  while (raw->Read(&bytes)) ++answers;
  st = raw->Finish();
  EXPECT_EQ(answers, 1);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_TRUE(absl::StrContains(st.error_message(), "ModelStreamInfer request message 2 (4 bytes) did not parse"))
      << st.error_message();
}

TEST_F(RuntimeTest, KServeProbesMetadataAndMetrics) {
  ASSERT_TRUE(client_->Load("m", "w4a16").ok());
  KServeClient kc(server_->port), anonymous(server_->port, "");
  {  // Liveness and readiness need no token (probes).
    grpc::ClientContext c1, c2;
    anonymous.Prepare(&c1);
    anonymous.Prepare(&c2);
    inference::ServerLiveResponse live;
    inference::ServerReadyResponse ready;
    ASSERT_TRUE(anonymous.stub->ServerLive(&c1, {}, &live).ok());
    ASSERT_TRUE(anonymous.stub->ServerReady(&c2, {}, &ready).ok());
    EXPECT_TRUE(live.live());
    EXPECT_TRUE(ready.ready());
  }
  {
    grpc::ClientContext c1, c2;
    anonymous.Prepare(&c1);
    kc.Prepare(&c2);
    inference::ServerMetadataResponse meta;
    EXPECT_EQ(anonymous.stub->ServerMetadata(&c1, {}, &meta).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    ASSERT_TRUE(kc.stub->ServerMetadata(&c2, {}, &meta).ok());
    EXPECT_EQ(meta.name(), "lowbit-runtime");
    EXPECT_EQ(meta.version(), runtime::kRuntimeVersion);
  }
  EXPECT_FALSE(kc.Ready("m")) << "a whole model is not something ModelInfer takes";
  EXPECT_TRUE(kc.Ready(std::string("m/") + kDown));
  EXPECT_TRUE(kc.Ready(std::string("m/") + kDown, "1"));
  EXPECT_FALSE(kc.Ready(std::string("m/") + kDown, "2"));
  EXPECT_FALSE(kc.Ready("m/model.layers.5.mlp.down_proj"));
  EXPECT_FALSE(kc.Ready("other"));

  grpc::ClientContext c3;
  kc.Prepare(&c3);
  inference::ModelMetadataRequest mreq;
  mreq.set_name(std::string("m/") + kDown);
  inference::ModelMetadataResponse md;
  ASSERT_TRUE(kc.stub->ModelMetadata(&c3, mreq, &md).ok());
  EXPECT_EQ(md.name(), mreq.name());
  EXPECT_EQ(md.platform(), "lowbit:W4A16");
  ASSERT_EQ(md.versions_size(), 1);
  EXPECT_EQ(md.versions(0), "1");
  ASSERT_EQ(md.inputs_size(), 1);
  ASSERT_EQ(md.outputs_size(), 1);
  EXPECT_EQ(md.inputs(0).name(), "x");
  EXPECT_EQ(md.inputs(0).datatype(), "BF16");  // the synthetic model's dtype
  EXPECT_EQ(std::vector<int64_t>(md.inputs(0).shape().begin(), md.inputs(0).shape().end()),
            (std::vector<int64_t>{-1, 512}));
  EXPECT_EQ(md.outputs(0).name(), "y");
  EXPECT_EQ(std::vector<int64_t>(md.outputs(0).shape().begin(), md.outputs(0).shape().end()),
            (std::vector<int64_t>{-1, 256}));
  // Triton's ModelConfig: the rows are the batch dim (max_batch_size = --max_rows), dims without it.
  inference::ModelConfigResponse conf;
  ASSERT_TRUE(kc.Config(std::string("m/") + kDown, &conf).ok());
  EXPECT_EQ(conf.config().name(), std::string("m/") + kDown);
  EXPECT_EQ(conf.config().backend(), "lowbit");
  EXPECT_EQ(conf.config().max_batch_size(), 16384);
  ASSERT_TRUE(conf.config().has_dynamic_batching()) << "the server batches (the default)";
  EXPECT_EQ(conf.config().dynamic_batching().max_queue_delay_microseconds(), 0u);
  ASSERT_EQ(conf.config().input_size(), 1);
  ASSERT_EQ(conf.config().output_size(), 1);
  EXPECT_EQ(conf.config().input(0).name(), "x");
  EXPECT_EQ(conf.config().input(0).data_type(), inference::TYPE_BF16);
  EXPECT_EQ(std::vector<int64_t>(conf.config().input(0).dims().begin(), conf.config().input(0).dims().end()),
            std::vector<int64_t>{512});
  EXPECT_EQ(conf.config().output(0).name(), "y");
  EXPECT_EQ(std::vector<int64_t>(conf.config().output(0).dims().begin(), conf.config().output(0).dims().end()),
            std::vector<int64_t>{256});
  EXPECT_EQ(kc.Config("m/model.layers.0.mlp.nope", &conf).error_code(), grpc::StatusCode::NOT_FOUND);

  grpc::ClientContext c4;
  kc.Prepare(&c4);
  mreq.set_name("m");
  grpc::Status st = kc.stub->ModelMetadata(&c4, mreq, &md);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("'m/model.layers.0."), std::string::npos) << st.error_message();

  // KServe calls are counted under their own service label, beside lowbit.v1's.
  double metadata_ok = 0;
  for (const auto& fam : server_->registry->Collect()) {
    if (fam.name != "lowbit_rpc_requests_total") continue;
    for (const auto& m : fam.metric) {
      std::map<std::string, std::string> labels;
      for (const auto& l : m.label) labels[l.name] = l.value;
      if (labels["service"] == "kserve" && labels["method"] == "ModelMetadata" && labels["code"] == "0") {
        metadata_ok += m.counter.value;
      }
    }
  }
  EXPECT_EQ(metadata_ok, 1.0);
}

// ModelStatistics against what the test sent: requests, rows, GEMMs and batch sizes counted
// exactly, per-request times consistent with the per-GEMM ones, failures apart, layers apart,
// lowbit.v1 Gemm and KServe ModelInfer in the same counts; reset by a reload.
TEST_F(RuntimeTest, KServeStatisticsCountWhatRan) {
  EngineOptions o = DefaultOptions();
  o.batching.max_queue_delay_us = 100000;  // 100 ms: the two concurrent requests share one GEMM
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  Client client(server->port);
  KServeClient kc(server->port);
  ASSERT_TRUE(client.Load("m", "w8a8").ok());
  const std::string q = std::string("m/") + kQ;
  const auto now_ms = [] {
    return static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
  };
  inference::ModelStatisticsResponse st;
  ASSERT_TRUE(kc.Statistics(q, "", &st).ok());
  ASSERT_EQ(st.model_stats_size(), 1);
  EXPECT_EQ(st.model_stats(0).inference_count(), 0u);
  EXPECT_EQ(st.model_stats(0).last_inference(), 0u);

  const uint64_t before_ms = now_ms();
  v1::GemmResponse alone;  // 3 rows, a GEMM of its own
  ASSERT_TRUE(client.Gemm(MakeGemm("m", kQ, RandomX(3, 256, DType::kBF16, 1)), &alone).ok());
  v1::GemmResponse together_a;  // 3 + 2 rows, one GEMM
  inference::ModelInferResponse together_b;
  grpc::Status sa, sb;
  std::thread ta([&] { sa = client.Gemm(MakeGemm("m", kQ, RandomX(3, 256, DType::kBF16, 2)), &together_a); });
  std::thread tb([&] { sb = kc.Infer(MakeInfer(q, RandomX(2, 256, DType::kBF16, 3)), &together_b); });
  ta.join();
  tb.join();
  ASSERT_TRUE(sa.ok()) << sa.error_message();
  ASSERT_TRUE(sb.ok()) << sb.error_message();
  ASSERT_EQ(together_a.batch_requests(), 2);
  inference::ModelInferResponse bad;  // reaches the layer, refused there (K = 255): a failure
  EXPECT_EQ(kc.Infer(MakeInfer(q, RandomX(1, 255, DType::kBF16, 4)), &bad).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  inference::ModelInferResponse other;  // another layer: counted there
  ASSERT_TRUE(kc.Infer(MakeInfer(std::string("m/") + kDown, RandomX(4, 512, DType::kBF16, 5)), &other).ok());
  const uint64_t after_ms = now_ms();

  ASSERT_TRUE(kc.Statistics(q, "1", &st).ok());
  ASSERT_EQ(st.model_stats_size(), 1);
  const inference::ModelStatistics& s = st.model_stats(0);
  EXPECT_EQ(s.name(), q);
  EXPECT_EQ(s.version(), "1");
  EXPECT_EQ(s.inference_count(), 3u + 3u + 2u);  // rows of the successful requests
  EXPECT_EQ(s.execution_count(), 2u);
  EXPECT_GE(s.last_inference(), before_ms);
  EXPECT_LE(s.last_inference(), after_ms);
  const inference::InferStatistics& is = s.inference_stats();
  EXPECT_EQ(is.success().count(), 3u);
  EXPECT_EQ(is.fail().count(), 1u);
  for (const auto* d : {&is.queue(), &is.compute_input(), &is.compute_infer(), &is.compute_output()}) {
    EXPECT_EQ(d->count(), 3u);
  }
  EXPECT_EQ(is.cache_hit().count(), 0u);
  // Each request's time in the engine holds its queue wait and its GEMM's three phases.
  EXPECT_GE(is.success().ns(),
            is.queue().ns() + is.compute_input().ns() + is.compute_infer().ns() + is.compute_output().ns());
  EXPECT_GT(is.compute_infer().ns(), 0u);
  ASSERT_EQ(s.batch_stats_size(), 2);
  const inference::InferBatchStatistics& b3 = s.batch_stats(0);
  const inference::InferBatchStatistics& b5 = s.batch_stats(1);
  EXPECT_EQ(b3.batch_size(), 3u);
  EXPECT_EQ(b5.batch_size(), 5u);
  for (const auto* b : {&b3, &b5}) {
    EXPECT_EQ(b->compute_input().count(), 1u);
    EXPECT_EQ(b->compute_infer().count(), 1u);
    EXPECT_EQ(b->compute_output().count(), 1u);
  }
  // Per request, the GEMM's phases: the 5-row GEMM counts for both of its requests.
  EXPECT_EQ(is.compute_infer().ns(), b3.compute_infer().ns() + 2 * b5.compute_infer().ns());
  EXPECT_EQ(is.compute_output().ns(), b3.compute_output().ns() + 2 * b5.compute_output().ns());
  // The lone request's kernel_us is its GEMM's infer phase.
  EXPECT_NEAR(alone.kernel_us(), b3.compute_infer().ns() * 1e-3, 1.0);

  ASSERT_TRUE(kc.Statistics(std::string("m/") + kDown, "", &st).ok());
  EXPECT_EQ(st.model_stats(0).inference_count(), 4u);
  EXPECT_EQ(st.model_stats(0).execution_count(), 1u);
  EXPECT_EQ(st.model_stats(0).inference_stats().fail().count(), 0u);

  // No name: every layer model of every loaded model.
  v1::ListModelsResponse list;
  ASSERT_TRUE(client.List(&list).ok());
  ASSERT_EQ(list.models_size(), 1);
  std::set<std::string> expected;
  for (const auto& l : list.models(0).layers()) expected.insert("m/" + l.name());
  ASSERT_TRUE(kc.Statistics("", "", &st).ok());
  std::set<std::string> got;
  for (const auto& m : st.model_stats()) got.insert(m.name());
  EXPECT_EQ(got, expected);

  EXPECT_EQ(kc.Statistics(q, "2", &st).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(kc.Statistics("m/model.layers.7.mlp.down_proj", "", &st).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(kc.Statistics("", "2", &st).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(kc.Statistics("m", "", &st).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // A reloaded model starts from zero.
  ASSERT_TRUE(client.Unload("m").ok());
  ASSERT_TRUE(client.Load("m", "w8a8").ok());
  ASSERT_TRUE(kc.Statistics(q, "", &st).ok());
  EXPECT_EQ(st.model_stats(0).inference_count(), 0u);
  EXPECT_EQ(st.model_stats(0).batch_stats_size(), 0);
}

// The repository calls over the model root: the index against the fixture's checkpoint
// directories (the symlink that escapes the root is not one), load and unload by name, the
// index following them, and the refusals.
TEST_F(RuntimeTest, KServeRepositoryLoadIndexUnload) {
  // A root of its own (other tests add checkpoints to the shared one): two checkpoints, a
  // directory and a file that are not checkpoints, and a symlink leading out of the root.
  const std::string root = g_fixture->dir + "/repository-root";
  fs::remove_all(root);
  fs::create_directories(root + "/notes");
  for (const char* c : {"w8a8", "w4a16"})
    fs::copy(g_fixture->root + "/" + c, root + "/" + c, fs::copy_options::recursive);
  ASSERT_TRUE(AtomicWriteFile(root + "/README", "not a checkpoint").ok());
  fs::create_directory_symlink(g_fixture->outside + "/w8a8", root + "/escape");
  EngineOptions o = DefaultOptions();
  o.registry.model_root = root;
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  Client client(server->port);
  KServeClient kc(server->port), anonymous(server->port, "");
  std::map<std::string, std::string> expected = {{"w4a16", "UNAVAILABLE"}, {"w8a8", "UNAVAILABLE"}};
  EXPECT_EQ(kc.Index(false), expected);
  EXPECT_TRUE(kc.Index(true).empty());

  inference::RepositoryModelLoadRequest load;
  load.set_model_name("w8a8");
  ASSERT_TRUE(kc.RepositoryLoad(load).ok());
  EXPECT_TRUE(kc.Ready(std::string("w8a8/") + kQ));
  v1::ListModelsResponse list;
  ASSERT_TRUE(client.List(&list).ok());
  ASSERT_EQ(list.models_size(), 1);
  EXPECT_EQ(list.models(0).source(), "w8a8");
  std::map<std::string, std::string> ready;
  for (const auto& l : list.models(0).layers()) ready["w8a8/" + l.name()] = "READY";
  EXPECT_EQ(kc.Index(true), ready);
  expected.erase("w8a8");
  expected.insert(ready.begin(), ready.end());
  EXPECT_EQ(kc.Index(false), expected);
  // Loading it again changes nothing: the same model stays (its statistics too).
  inference::ModelInferResponse r;
  ASSERT_TRUE(kc.Infer(MakeInfer(std::string("w8a8/") + kQ, RandomX(1, 256, DType::kBF16, 6)), &r).ok());
  ASSERT_TRUE(kc.RepositoryLoad(load).ok());
  inference::ModelStatisticsResponse st;
  ASSERT_TRUE(kc.Statistics(std::string("w8a8/") + kQ, "", &st).ok());
  EXPECT_EQ(st.model_stats(0).inference_count(), 1u);

  // Refusals, each naming the problem.
  ASSERT_TRUE(client.Load("other", "w4a16").ok());
  struct Bad {
    std::string name, repository, parameter;
    grpc::StatusCode code;
    std::string says;
  };
  const std::vector<Bad> bad = {
      {"other", "", "", grpc::StatusCode::ALREADY_EXISTS, "already loaded from w4a16"},
      {"escape", "", "", grpc::StatusCode::PERMISSION_DENIED, "escape"},
      {"../outside/w8a8", "", "", grpc::StatusCode::INVALID_ARGUMENT, ".."},
      {"nope", "", "", grpc::StatusCode::NOT_FOUND, "nope"},
      {"", "", "", grpc::StatusCode::INVALID_ARGUMENT, "model_name is empty"},
      {"w4a16", "", "config", grpc::StatusCode::INVALID_ARGUMENT, "parameter 'config'"},
      {"w4a16", "models", "", grpc::StatusCode::NOT_FOUND, "no repository 'models'"},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.name + " / " + b.repository + " / " + b.parameter);
    inference::RepositoryModelLoadRequest req;
    req.set_model_name(b.name);
    req.set_repository_name(b.repository);
    if (!b.parameter.empty()) (*req.mutable_parameters())[b.parameter].set_string_param("{}");
    grpc::Status s = kc.RepositoryLoad(req);
    EXPECT_EQ(s.error_code(), b.code) << s.error_message();
    EXPECT_NE(s.error_message().find(b.says), std::string::npos) << s.error_message();
  }
  EXPECT_EQ(anonymous.RepositoryLoad(load).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(kc.Index(false).count("w4a16"), 1u) << "'other' is loaded from w4a16, not as 'w4a16'";

  inference::RepositoryModelUnloadRequest unload;
  unload.set_model_name("w8a8");
  (*unload.mutable_parameters())["unload_dependents"].set_bool_param(true);
  ASSERT_TRUE(kc.RepositoryUnload(unload).ok());
  EXPECT_FALSE(kc.Ready(std::string("w8a8/") + kQ));
  EXPECT_EQ(kc.Index(false).at("w8a8"), "UNAVAILABLE");
  grpc::Status again = kc.RepositoryUnload(unload);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::NOT_FOUND) << again.error_message();
  unload.set_model_name("other");
  (*unload.mutable_parameters())["force"].set_bool_param(true);
  EXPECT_EQ(kc.RepositoryUnload(unload).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(kc.Ready(std::string("other/") + kQ)) << "a refused unload leaves the model";
}

TEST_F(RuntimeTest, KServeBadInputTable) {
  ASSERT_TRUE(client_->Load("m", "w8a8").ok());
  KServeClient kc(server_->port);
  const std::string layer = std::string("m/") + kQ;
  const Tensor x = RandomX(2, 256, DType::kF32, 3);
  using Request = inference::ModelInferRequest;
  struct Case {
    const char* what;
    std::function<void(Request*)> mutate;
    grpc::StatusCode code;
    const char* message;  // a part of the message that names the problem
  };
  const Case cases[] = {
      {"unknown model", [](Request* r) { r->set_model_name(std::string("nope/") + kQ); }, grpc::StatusCode::NOT_FOUND,
       "nope"},
      {"unknown layer", [](Request* r) { r->set_model_name("m/model.layers.0.mlp.nope"); }, grpc::StatusCode::NOT_FOUND,
       "no quantized layer 'model.layers.0.mlp.nope'"},
      {"no layer in the name", [](Request* r) { r->set_model_name("nope"); }, grpc::StatusCode::NOT_FOUND,
       "'<loaded model>/<layer>'"},
      {"a whole model's name", [](Request* r) { r->set_model_name("m"); }, grpc::StatusCode::INVALID_ARGUMENT, "'m/"},
      {"unknown version", [](Request* r) { r->set_model_version("2"); }, grpc::StatusCode::NOT_FOUND, "only version 1"},
      {"no input", [](Request* r) { r->clear_inputs(); }, grpc::StatusCode::INVALID_ARGUMENT, "one input 'x'"},
      {"two inputs", [](Request* r) { *r->add_inputs() = r->inputs(0); }, grpc::StatusCode::INVALID_ARGUMENT,
       "the request has 2"},
      {"wrong input name", [](Request* r) { r->mutable_inputs(0)->set_name("input"); },
       grpc::StatusCode::INVALID_ARGUMENT, "no input 'input'"},
      {"INT8 datatype", [](Request* r) { r->mutable_inputs(0)->set_datatype("INT8"); },
       grpc::StatusCode::INVALID_ARGUMENT, "'INT8'"},
      {"no datatype", [](Request* r) { r->mutable_inputs(0)->clear_datatype(); }, grpc::StatusCode::INVALID_ARGUMENT,
       "datatype ''"},
      {"no shape", [](Request* r) { r->mutable_inputs(0)->clear_shape(); }, grpc::StatusCode::INVALID_ARGUMENT,
       "no shape"},
      {"negative dim", [](Request* r) { r->mutable_inputs(0)->set_shape(0, -2); }, grpc::StatusCode::INVALID_ARGUMENT,
       "-2"},
      {"huge dims",
       [](Request* r) {
         r->mutable_inputs(0)->set_shape(0, int64_t{1} << 40);
         r->mutable_inputs(0)->add_shape(int64_t{1} << 40);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "input 'x'"},
      {"2^61 elements (their bytes overflow int64)",
       [](Request* r) {
         r->mutable_inputs(0)->set_shape(0, int64_t{1} << 30);
         r->mutable_inputs(0)->set_shape(1, int64_t{1} << 31);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "holds 2305843009213693952 elements of 4 bytes"},
      {"bytes != shape", [](Request* r) { r->mutable_raw_input_contents(0)->resize(100); },
       grpc::StatusCode::INVALID_ARGUMENT, "100 data bytes"},
      {"wrong K",
       [](Request* r) {
         r->mutable_inputs(0)->set_shape(0, 4);
         r->mutable_inputs(0)->set_shape(1, 128);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "K = 128"},
      {"zero rows",
       [](Request* r) {
         r->mutable_inputs(0)->set_shape(0, 0);
         r->mutable_raw_input_contents(0)->clear();
       },
       grpc::StatusCode::INVALID_ARGUMENT, "M = 0"},
      {"raw and typed contents", [](Request* r) { r->mutable_inputs(0)->mutable_contents()->add_fp32_contents(1); },
       grpc::StatusCode::INVALID_ARGUMENT, "both"},
      {"two raw contents", [](Request* r) { r->add_raw_input_contents("x"); }, grpc::StatusCode::INVALID_ARGUMENT,
       "2 raw_input_contents"},
      {"no data", [](Request* r) { r->clear_raw_input_contents(); }, grpc::StatusCode::INVALID_ARGUMENT,
       "carries no data"},
      {"FP16 as typed contents",
       [](Request* r) {
         r->clear_raw_input_contents();
         r->mutable_inputs(0)->set_datatype("FP16");
         r->mutable_inputs(0)->mutable_contents()->add_fp32_contents(1);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "raw_input_contents"},
      {"FP32 as int contents",
       [](Request* r) {
         r->clear_raw_input_contents();
         r->mutable_inputs(0)->mutable_contents()->add_int_contents(1);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "not fp32_contents"},
      {"FP32 contents with int contents besides",
       [](Request* r) {
         r->clear_raw_input_contents();
         for (int i = 0; i < 512; ++i) r->mutable_inputs(0)->mutable_contents()->add_fp32_contents(0.5f);
         r->mutable_inputs(0)->mutable_contents()->add_int_contents(1);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "not fp32_contents alone"},
      {"unknown output", [](Request* r) { r->add_outputs()->set_name("z"); }, grpc::StatusCode::INVALID_ARGUMENT,
       "no output 'z'"},
      {"shared memory input",
       [](Request* r) {
         (*r->mutable_inputs(0)->mutable_parameters())["shared_memory_region"].set_string_param("shm0");
       },
       grpc::StatusCode::INVALID_ARGUMENT, "input 'x' has parameter 'shared_memory_region'"},
      {"classification output",
       [](Request* r) {
         auto* out = r->add_outputs();
         out->set_name("y");
         (*out->mutable_parameters())["classification"].set_int64_param(3);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "output 'y' has parameter 'classification'"},
      {"a sequence", [](Request* r) { (*r->mutable_parameters())["sequence_id"].set_int64_param(7); },
       grpc::StatusCode::INVALID_ARGUMENT, "the request has parameter 'sequence_id'"},
      {"out_dtype not a string", [](Request* r) { (*r->mutable_parameters())["out_dtype"].set_int64_param(1); },
       grpc::StatusCode::INVALID_ARGUMENT, "must be a string"},
      {"out_dtype INT8", [](Request* r) { (*r->mutable_parameters())["out_dtype"].set_string_param("INT8"); },
       grpc::StatusCode::INVALID_ARGUMENT, "'INT8'"},
  };
  inference::ModelInferResponse good;
  ASSERT_TRUE(kc.Infer(MakeInfer(layer, x), &good).ok());
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    Request req = MakeInfer(layer, x);
    c.mutate(&req);
    inference::ModelInferResponse resp;
    grpc::Status st = kc.Infer(req, &resp);
    EXPECT_EQ(st.error_code(), c.code) << st.error_message();
    EXPECT_NE(st.error_message().find(c.message), std::string::npos) << st.error_message();
    // The server keeps serving: the next good request gets the same answer.
    inference::ModelInferResponse again;
    ASSERT_TRUE(kc.Infer(MakeInfer(layer, x), &again).ok());
    EXPECT_EQ(again.raw_output_contents(0), good.raw_output_contents(0));
  }
  inference::ModelInferResponse resp;
  EXPECT_EQ(KServeClient(server_->port, "wrong").Infer(MakeInfer(layer, x), &resp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // FP32 as typed contents: the same answer as raw bytes.
  Request typed = MakeInfer(layer, x);
  typed.clear_raw_input_contents();
  for (float v : x.ToFloats()) typed.mutable_inputs(0)->mutable_contents()->add_fp32_contents(v);
  ASSERT_TRUE(kc.Infer(typed, &resp).ok());
  EXPECT_EQ(resp.raw_output_contents(0), good.raw_output_contents(0));
  // out_dtype BF16: the F32 answer rounded.
  Request bf = MakeInfer(layer, x);
  (*bf.mutable_parameters())["out_dtype"].set_string_param("BF16");
  ASSERT_TRUE(kc.Infer(bf, &resp).ok());
  EXPECT_EQ(resp.outputs(0).datatype(), "BF16");
  std::vector<float> f32(good.raw_output_contents(0).size() / 4);
  std::memcpy(f32.data(), good.raw_output_contents(0).data(), good.raw_output_contents(0).size());
  const Tensor rounded = Tensor::FromFloats(f32, {2, 256}, DType::kBF16);
  EXPECT_EQ(resp.raw_output_contents(0),
            std::string(reinterpret_cast<const char*>(rounded.bytes().data()), rounded.bytes().size()));
}

}  // namespace lowbit

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new lowbit::CheckpointEnv);
  return RUN_ALL_TESTS();
}
