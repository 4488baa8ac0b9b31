// lowbit load | unload | models | info | gemm | health: the runtime's client side (health
// also probes the calibrator with --calibrator).
#include <cstdio>
#include <random>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "cli/connection.h"
#include "cli/npy.h"
#include "cli/runtime_client.h"
#include "grpc/health/v1/health.grpc.pb.h"

ABSL_FLAG(std::string, name, "", "load / gemm: the model's name (load: the name clients will address it by)");
ABSL_FLAG(std::string, path, "", "load: checkpoint directory under the runtime's model root");
ABSL_FLAG(std::string, dir, "", "load: a local checkpoint directory to stream to the runtime");
ABSL_FLAG(std::string, layer, "", "gemm: module name of a quantized Linear");
ABSL_FLAG(std::string, x, "", "gemm: activations [M, K] as .npy (float32 / float16); default random");
ABSL_FLAG(int64_t, m, 4, "gemm: rows of random activations");
ABSL_FLAG(std::string, dtype, "bf16", "gemm: activation dtype sent (f32, f16, bf16)");
ABSL_FLAG(std::string, y, "", "gemm: write Y to this .npy");
ABSL_FLAG(std::string, service, "runtime", "health: runtime or calibrator");

namespace lowbit::cli {

namespace {

void PrintModel(const v1::ModelInfo& m) {
  std::printf("model %s (%s, backend %s): %d layers, %.2f MiB\n", m.name().c_str(), m.source().c_str(),
              m.backend().c_str(), m.layers_size(), m.weight_bytes() / 1048576.0);
  for (const auto& l : m.layers()) {
    std::printf("  %-44s %-12s N=%-6lld K=%-6lld %s%s\n", l.name().c_str(), l.scheme().c_str(),
                static_cast<long long>(l.n()), static_cast<long long>(l.k()), l.activations().c_str(),
                l.has_bias() ? " +bias" : "");
  }
}

absl::StatusOr<DType> ParseFloatDType(const std::string& s) {
  if (s == "f32") return DType::kF32;
  if (s == "f16") return DType::kF16;
  if (s == "bf16") return DType::kBF16;
  return absl::InvalidArgumentError(absl::StrCat("--dtype '", s, "' is not f32, f16 or bf16"));
}

}  // namespace

int RunLoad(const Args& args) {
  const std::string name = absl::GetFlag(FLAGS_name);
  if (!args.empty() || name.empty() || (absl::GetFlag(FLAGS_path).empty() == absl::GetFlag(FLAGS_dir).empty())) {
    std::fprintf(stderr, "usage: lowbit load --name NAME (--path DIR_UNDER_MODEL_ROOT | --dir LOCAL_DIR)\n");
    return 2;
  }
  auto config = RuntimeConfig();
  auto channel = ChannelFor(config);
  auto stub = v1::RuntimeService::NewStub(channel);
  auto info = absl::GetFlag(FLAGS_dir).empty() ? LoadFromPath(*stub, config, name, absl::GetFlag(FLAGS_path))
                                               : StreamCheckpoint(*channel, config, absl::GetFlag(FLAGS_dir), name);
  if (!info.ok()) return Fail("load", info.status());
  PrintModel(*info);
  return 0;
}

int RunUnload(const Args& args) {
  if (args.size() != 1) {
    std::fprintf(stderr, "usage: lowbit unload NAME\n");
    return 2;
  }
  auto config = RuntimeConfig();
  auto stub = RuntimeStub(config);
  grpc::ClientContext ctx;
  Prepare(&ctx, config);
  v1::UnloadModelRequest req;
  req.set_name(args[0]);
  v1::UnloadModelResponse resp;
  if (auto st = stub->UnloadModel(&ctx, req, &resp); !st.ok()) return Fail("unload", st);
  std::printf("unloaded %s\n", args[0].c_str());
  return 0;
}

int RunModels(const Args& args) {
  if (!args.empty()) return UsageError("models", "takes no arguments (got '" + args[0] + "')");
  auto config = RuntimeConfig();
  auto stub = RuntimeStub(config);
  grpc::ClientContext ctx;
  Prepare(&ctx, config);
  v1::ListModelsResponse resp;
  if (auto st = stub->ListModels(&ctx, v1::ListModelsRequest(), &resp); !st.ok()) return Fail("models", st);
  for (const auto& m : resp.models()) PrintModel(m);
  return 0;
}

int RunInfo(const Args& args) {
  if (!args.empty()) return UsageError("info", "takes no arguments (got '" + args[0] + "')");
  auto config = RuntimeConfig();
  auto stub = RuntimeStub(config);
  grpc::ClientContext ctx;
  Prepare(&ctx, config);
  v1::GetServerInfoResponse resp;
  if (auto st = stub->GetServerInfo(&ctx, v1::GetServerInfoRequest(), &resp); !st.ok()) return Fail("info", st);
  std::printf("%s\n", MessageJson(resp).dump(2).c_str());
  return 0;
}

int RunGemm(const Args& args) {
  const std::string model = absl::GetFlag(FLAGS_name), layer = absl::GetFlag(FLAGS_layer);
  if (!args.empty() || model.empty() || layer.empty()) {
    std::fprintf(stderr,
                 "usage: lowbit gemm --name MODEL --layer MODULE [--x x.npy | --m M] [--dtype bf16] [--y y.npy]\n");
    return 2;
  }
  auto dtype = ParseFloatDType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) return UsageError("gemm", std::string(dtype.status().message()));
  auto config = RuntimeConfig();
  auto stub = RuntimeStub(config);
  Tensor x;
  if (!absl::GetFlag(FLAGS_x).empty()) {
    auto t = ReadNpy(absl::GetFlag(FLAGS_x));
    if (!t.ok()) return Fail("gemm", t.status());
    auto f = t->ToFloats();
    Shape shape = t->shape();
    if (shape.size() == 1) shape.insert(shape.begin(), 1);
    x = Tensor::FromFloats(f, shape, *dtype);
  } else {
    // The runtime's own bound on M is its --max_rows (16384 by default); this one keeps the
    // random activations' count positive and their memory bounded.
    const int64_t m = absl::GetFlag(FLAGS_m);
    constexpr int64_t kMaxRandomRows = 1 << 20;
    if (m < 1 || m > kMaxRandomRows) {
      std::fprintf(stderr, "lowbit gemm: --m %lld is not in 1..%lld\n", static_cast<long long>(m),
                   static_cast<long long>(kMaxRandomRows));
      return 2;
    }
    // K from the model's layer list.
    grpc::ClientContext ctx;
    Prepare(&ctx, config);
    v1::ListModelsResponse resp;
    if (auto st = stub->ListModels(&ctx, v1::ListModelsRequest(), &resp); !st.ok()) return Fail("gemm", st);
    int64_t k = -1;
    for (const auto& m : resp.models())
      for (const auto& l : m.layers())
        if (m.name() == model && l.name() == layer) k = l.k();
    if (k < 0) {
      std::fprintf(stderr, "lowbit gemm: model '%s' has no layer '%s' (see lowbit models)\n", model.c_str(),
                   layer.c_str());
      return 1;
    }
    if (m * k > (int64_t{1} << 31)) {
      std::fprintf(stderr, "lowbit gemm: --m %lld × K = %lld is over 2^31 activations\n", static_cast<long long>(m),
                   static_cast<long long>(k));
      return 2;
    }
    std::mt19937 rng(0);
    std::normal_distribution<float> nd;
    std::vector<float> v(m * k);
    for (auto& e : v) e = nd(rng);
    x = Tensor::FromFloats(v, {m, k}, *dtype);
  }
  auto r = CallGemm(*stub, config, model, layer, x, *dtype);
  if (!r.ok()) return Fail("gemm", r.status());
  std::printf("Y %s %s, kernel %.1f us, batched with %d request(s)\n", ShapeString(r->y.shape()).c_str(),
              std::string(DTypeName(r->y.dtype())).c_str(), r->kernel_us, r->batch_requests);
  if (!absl::GetFlag(FLAGS_y).empty()) {
    if (auto s = WriteNpy(absl::GetFlag(FLAGS_y), r->y); !s.ok()) return Fail("gemm", s);
  } else {
    auto f = r->y.ToFloats();
    const int64_t n = r->y.shape().back();
    for (int64_t i = 0; i < std::min<int64_t>(r->y.shape()[0], 4); ++i) {
      std::printf("  [");
      for (int64_t j = 0; j < std::min<int64_t>(n, 6); ++j) std::printf("%s%.4g", j ? ", " : "", f[i * n + j]);
      std::printf("%s]\n", n > 6 ? ", ..." : "");
    }
  }
  return 0;
}

int RunHealth(const Args& args) {
  const std::string service = absl::GetFlag(FLAGS_service);
  if (service != "runtime" && service != "calibrator") {
    return UsageError("health", "--service '" + service + "' is not runtime or calibrator");
  }
  if (args.size() > 1) {
    std::fprintf(stderr, "usage: lowbit health [--service runtime|calibrator] [GRPC_SERVICE_NAME]\n");
    return 2;
  }
  auto config = service == "calibrator" ? CalibratorConfig() : RuntimeConfig();
  auto stub = grpc::health::v1::Health::NewStub(ChannelFor(config));
  grpc::ClientContext ctx;
  Prepare(&ctx, config, Deadline::kProbe);
  grpc::health::v1::HealthCheckRequest req;
  if (!args.empty()) req.set_service(args[0]);
  grpc::health::v1::HealthCheckResponse resp;
  if (auto st = stub->Check(&ctx, req, &resp); !st.ok()) return Fail("health", st);
  std::printf("%s\n", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status()).c_str());
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

}  // namespace lowbit::cli
