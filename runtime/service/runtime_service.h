// lowbit.v1.RuntimeService over the runtime engine (sync gRPC API): LoadModel (path under the
// model root), LoadModelStream (header with config.json, then tensor chunks), UnloadModel,
// ListModels, GetServerInfo, Gemm and GemmStream (bidirectional; a failed request is reported
// in its response and the stream goes on). A Gemm or GemmStream message that does not parse is
// INVALID_ARGUMENT (it ends the stream). Every handler starts with rpc::CallGuard (bearer
// token + request metrics); errors are absl::Status inside and rpc::ToGrpcStatus at the edge.
#ifndef LOWBIT_RUNTIME_SERVICE_RUNTIME_SERVICE_H_
#define LOWBIT_RUNTIME_SERVICE_RUNTIME_SERVICE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "lowbit/v1/runtime.grpc.pb.h"
#include "rpc/raw_stream.h"
#include "rpc/server.h"
#include "runtime/engine.h"

namespace lowbit::runtime {

struct RuntimeServiceOptions {
  int64_t max_message_bytes = int64_t{64} << 20;  // the server's limit: results over it are refused
  int max_stream_inflight = 64;                    // GemmStream requests running at once per stream
};

class RuntimeServiceImpl final : public v1::RuntimeService::Service {
 public:
  RuntimeServiceImpl(Engine* engine, rpc::ServiceContext service, RuntimeServiceOptions options = {});

  grpc::Status LoadModel(grpc::ServerContext* ctx, const v1::LoadModelRequest* req, v1::LoadModelResponse* resp) override;
  // A raw stream (rpc/raw_stream.h): chunk data goes from the receive slices straight into the
  // tensors. Same messages on the wire.
  grpc::Status LoadModelStreamRaw(grpc::ServerContext* ctx, rpc::RawServerStream* stream);
  grpc::Status UnloadModel(grpc::ServerContext* ctx, const v1::UnloadModelRequest* req,
                           v1::UnloadModelResponse* resp) override;
  grpc::Status ListModels(grpc::ServerContext* ctx, const v1::ListModelsRequest* req,
                          v1::ListModelsResponse* resp) override;
  grpc::Status GetServerInfo(grpc::ServerContext* ctx, const v1::GetServerInfoRequest* req,
                             v1::GetServerInfoResponse* resp) override;
  // Gemm (unary on the wire) served as a raw one-message stream, so that a request that does not
  // parse is INVALID_ARGUMENT naming the message, as in GemmStream (gRPC's own unary handler
  // answers INTERNAL, which reads as a server fault). The response goes out with the status.
  grpc::Status GemmRaw(grpc::ServerContext* ctx, rpc::RawServerStream* stream);
  // GemmStream, as a raw stream: the handler parses each request itself, so that a message that
  // does not parse ends the stream with INVALID_ARGUMENT (the sync API's typed Read() reports a
  // parse failure as the end of the stream, and the requests after it would vanish silently).
  // Same messages on the wire.
  grpc::Status GemmStreamRaw(grpc::ServerContext* ctx, rpc::RawServerStream* stream);

 private:
  absl::Status DoGemm(const CallControl& control, const v1::GemmRequest& req, v1::GemmResponse* resp);
  absl::StatusOr<v1::LoadModelStreamResponse> ReceiveModel(grpc::ServerContext* ctx, rpc::RawServerStream* stream);

  Engine* engine_;
  rpc::ServiceContext service_;
  RuntimeServiceOptions options_;
};

// Engine::LoadFromPath for a gRPC call (lowbit.v1 LoadModel, KServe RepositoryModelLoad): the
// call's deadline and cancellation are asked between layers, and once more after the model was
// published — a call that ended just then would never see its model, so it is unloaded again
// (unless something replaced it under the same name meanwhile) and the result is the call's end.
absl::StatusOr<std::shared_ptr<const LoadedModel>> LoadForCall(Engine& engine, grpc::ServerContext* ctx,
                                                               const std::string& name, const std::string& path,
                                                               const char* method);

// The ModelInfo message of a loaded model.
void ModelInfoToProto(const LoadedModel& model, const std::string& backend, v1::ModelInfo* out);

}  // namespace lowbit::runtime

#endif  // LOWBIT_RUNTIME_SERVICE_RUNTIME_SERVICE_H_
