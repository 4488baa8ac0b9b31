// inference.GRPCInferenceService (KServe v2 / Open Inference Protocol, proto/inference) over the
// same runtime engine as lowbit.v1.RuntimeService, so that stock Triton / KServe clients can
// call the loaded layers. Requests batch with lowbit.v1 Gemm requests for the same layer.
//
// Mapping (docs/runtime.md, "KServe v2 / Triton clients"):
//  - every quantized Linear of a loaded model is a KServe model "<model>/<layer>" (split at the
//    last '/': layer names have none), version "1";
//  - its one input is "x", FP32 / FP16 / BF16, shape [..., K] (leading dims flattened into M;
//    raw_input_contents, or fp32_contents for FP32); its one output is "y", shape [..., N],
//    in x's datatype unless the request parameter "out_dtype" (string "FP32" / "FP16" / "BF16")
//    says otherwise, always as raw_output_contents;
//  - the response's parameters carry "kernel_us" (double) and "batch_requests" (int64);
//  - ModelConfig (Triton's) gives max_batch_size = --max_rows, x dims [K] and y dims [N] (the rows
//    are the batch dim), so perf_analyzer's -b works, and dynamic_batching (its queue delay) when
//    the runtime batches;
//  - ModelReady is true for a layer model ModelInfer takes (not for a whole loaded model);
//  - input / output parameters (shared memory, classification) and the sequence parameters are
//    refused with INVALID_ARGUMENT, not ignored; other request parameters are ignored;
//  - ModelStreamInfer (Triton's streaming extension) runs a stream's requests concurrently, up to
//    max_stream_inflight at once, and answers each as it finishes (concurrent_stream.h); a failed
//    request's answer has error_message (and its id), and the stream goes on;
//  - ModelStatistics (Triton's) reports each layer model's LayerStats (runtime/layer_stats.h):
//    every request for the layer, from either front end, since its model was loaded;
//  - the repository calls (Triton's) work on the model root: RepositoryIndex lists every layer
//    model of the loaded models (READY) and the checkpoint directories directly under the root
//    not loaded under their own name (UNAVAILABLE); RepositoryModelLoad "<dir>" loads the
//    checkpoint <root>/<dir> as model "<dir>" (as lowbit.v1 LoadModel would, recorded in the
//    state directory; nothing to do when that model is already loaded from that directory);
//    RepositoryModelUnload unloads a loaded model by name. The only repository is "" (the
//    root); repository parameters (Triton's config / file overrides) are refused, but for
//    unload's "unload_dependents" (nothing depends on a model here).
// ServerLive and ServerReady are open (probes, like grpc.health.v1); every other call needs the
// bearer token when the server has one, and is counted in the request metrics under service
// "kserve". Errors are absl::Status inside and gRPC codes at the edge, as in lowbit.v1.
#ifndef LOWBIT_RUNTIME_SERVICE_KSERVE_SERVICE_H_
#define LOWBIT_RUNTIME_SERVICE_KSERVE_SERVICE_H_

#include <cstdint>
#include <string>

#include "inference/predict_v2.grpc.pb.h"
#include "rpc/server.h"
#include "runtime/engine.h"
#include "runtime/service/runtime_service.h"

namespace lowbit::runtime {

class KServeServiceImpl final : public inference::GRPCInferenceService::Service {
 public:
  // The same options as lowbit.v1's service: the server's send limit (results over it are
  // RESOURCE_EXHAUSTED) and the requests one stream runs at once.
  KServeServiceImpl(Engine* engine, rpc::ServiceContext service, RuntimeServiceOptions options = {});

  grpc::Status ServerLive(grpc::ServerContext* ctx, const inference::ServerLiveRequest* req,
                          inference::ServerLiveResponse* resp) override;
  grpc::Status ServerReady(grpc::ServerContext* ctx, const inference::ServerReadyRequest* req,
                           inference::ServerReadyResponse* resp) override;
  grpc::Status ModelReady(grpc::ServerContext* ctx, const inference::ModelReadyRequest* req,
                          inference::ModelReadyResponse* resp) override;
  grpc::Status ServerMetadata(grpc::ServerContext* ctx, const inference::ServerMetadataRequest* req,
                              inference::ServerMetadataResponse* resp) override;
  grpc::Status ModelMetadata(grpc::ServerContext* ctx, const inference::ModelMetadataRequest* req,
                             inference::ModelMetadataResponse* resp) override;
  grpc::Status ModelConfig(grpc::ServerContext* ctx, const inference::ModelConfigRequest* req,
                           inference::ModelConfigResponse* resp) override;
  grpc::Status ModelInfer(grpc::ServerContext* ctx, const inference::ModelInferRequest* req,
                          inference::ModelInferResponse* resp) override;
  grpc::Status ModelStatistics(grpc::ServerContext* ctx, const inference::ModelStatisticsRequest* req,
                               inference::ModelStatisticsResponse* resp) override;
  grpc::Status RepositoryIndex(grpc::ServerContext* ctx, const inference::RepositoryIndexRequest* req,
                               inference::RepositoryIndexResponse* resp) override;
  grpc::Status RepositoryModelLoad(grpc::ServerContext* ctx, const inference::RepositoryModelLoadRequest* req,
                                   inference::RepositoryModelLoadResponse* resp) override;
  grpc::Status RepositoryModelUnload(grpc::ServerContext* ctx, const inference::RepositoryModelUnloadRequest* req,
                                     inference::RepositoryModelUnloadResponse* resp) override;
  // ModelStreamInfer as a raw stream (same messages on the wire): a message that does not parse
  // ends the stream with INVALID_ARGUMENT, after the requests before it were answered.
  grpc::Status ModelStreamInferRaw(grpc::ServerContext* ctx, rpc::RawServerStream* stream);

 private:
  absl::Status Infer(const CallControl& control, const inference::ModelInferRequest& req,
                     inference::ModelInferResponse* resp);

  Engine* engine_;
  rpc::ServiceContext service_;
  RuntimeServiceOptions options_;
};

// "FP32" / "FP16" / "BF16" (the protocol's datatype names) <-> the activation dtypes.
absl::StatusOr<DType> ActivationDTypeFromKServe(const std::string& datatype, const std::string& what);
std::string KServeDatatype(DType dtype);

}  // namespace lowbit::runtime

#endif  // LOWBIT_RUNTIME_SERVICE_KSERVE_SERVICE_H_
