#include "cli/runtime_client.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "cli/connection.h"
#include "common/file_util.h"
#include "common/safetensors.h"
#include "rpc/raw_stream.h"
#include "rpc/status.h"
#include "rpc/tensor_codec.h"

namespace lowbit::cli {
namespace fs = std::filesystem;

absl::StatusOr<v1::ModelInfo> StreamCheckpoint(grpc::ChannelInterface& channel, const rpc::ClientConfig& config,
                                               const std::string& dir, const std::string& name) {
  auto config_json = ReadFileToString((fs::path(dir) / "config.json").string());
  if (!config_json.ok()) return config_json.status();
  auto model = SafetensorsModel::Open(dir);
  if (!model.ok()) return model.status();
  grpc::ClientContext ctx;
  Prepare(&ctx, config, Deadline::kStream);
  v1::LoadModelStreamResponse resp;
  auto writer = rpc::RawClientWriter(&channel, rpc::kLoadModelStreamPath, &ctx, &resp);
  v1::LoadModelStreamRequest header;
  header.mutable_header()->set_name(name);
  header.mutable_header()->set_config_json(*config_json);
  // By name: a layer's tensors arrive together, and the runtime prepares it at once.
  rpc::AddModelManifest(**model, rpc::TensorOrder::kByName, header.mutable_header()->mutable_manifest());
  if (writer->Write(rpc::Encode(header))) {
    // A write that fails means the server ended the stream: Finish() says why.
    absl::StatusOr<bool> sent = rpc::WriteModelChunks(**model, rpc::TensorOrder::kByName, config.chunk_bytes,
                                                      [&](const grpc::ByteBuffer& m) { return writer->Write(m); });
    if (!sent.ok()) return sent.status();
  }
  writer->WritesDone();
  auto st = writer->Finish();
  if (!st.ok()) return rpc::FromGrpcStatus(st);
  return resp.model();
}

absl::StatusOr<v1::ModelInfo> LoadFromPath(RuntimeStubT& stub, const rpc::ClientConfig& config, const std::string& name,
                                           const std::string& path) {
  grpc::ClientContext ctx;
  Prepare(&ctx, config);
  v1::LoadModelRequest req;
  req.set_name(name);
  req.set_path(path);
  v1::LoadModelResponse resp;
  auto st = stub.LoadModel(&ctx, req, &resp);
  if (!st.ok()) return rpc::FromGrpcStatus(st);
  return resp.model();
}

absl::StatusOr<GemmResult> CallGemm(RuntimeStubT& stub, const rpc::ClientConfig& config, const std::string& model,
                                    const std::string& layer, const Tensor& x, DType out_dtype) {
  grpc::ClientContext ctx;
  Prepare(&ctx, config);
  v1::GemmRequest req;
  req.set_model(model);
  req.set_layer(layer);
  rpc::TensorToProto(x, req.mutable_x());
  req.set_out_dtype(rpc::DTypeToProto(out_dtype));
  v1::GemmResponse resp;
  auto st = stub.Gemm(&ctx, req, &resp);
  if (!st.ok()) return rpc::FromGrpcStatus(st);
  auto y = rpc::TensorFromProto(resp.y(), "y");
  if (!y.ok()) return y.status();
  return GemmResult{std::move(*y), resp.kernel_us(), resp.batch_requests()};
}

}  // namespace lowbit::cli
