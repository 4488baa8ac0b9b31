// Client-side operations on the runtime shared by the CLI commands, the demo and the RPC
// benchmark: streaming a local checkpoint into LoadModelStream, one Gemm call.
#ifndef LOWBIT_CLI_RUNTIME_CLIENT_H_
#define LOWBIT_CLI_RUNTIME_CLIENT_H_

#include <string>

#include "absl/status/statusor.h"
#include "common/tensor.h"
#include "grpcpp/channel.h"
#include "lowbit/v1/runtime.grpc.pb.h"
#include "rpc/client.h"

namespace lowbit::cli {

using RuntimeStubT = v1::RuntimeService::StubInterface;

// A raw stream on `channel` (rpc/raw_stream.h): chunk data are slices of the mapped files.
absl::StatusOr<v1::ModelInfo> StreamCheckpoint(grpc::ChannelInterface& channel, const rpc::ClientConfig& config,
                                               const std::string& dir, const std::string& name);
absl::StatusOr<v1::ModelInfo> LoadFromPath(RuntimeStubT& stub, const rpc::ClientConfig& config,
                                           const std::string& name, const std::string& path);

struct GemmResult {
  Tensor y;
  double kernel_us = 0;
  int batch_requests = 0;
};
absl::StatusOr<GemmResult> CallGemm(RuntimeStubT& stub, const rpc::ClientConfig& config, const std::string& model,
                                    const std::string& layer, const Tensor& x, DType out_dtype);

}  // namespace lowbit::cli

#endif  // LOWBIT_CLI_RUNTIME_CLIENT_H_
