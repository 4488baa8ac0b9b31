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
//  - ModelReady also answers for a whole loaded model "<model>".
// ServerLive and ServerReady are open (probes, like grpc.health.v1); every other call needs the
// bearer token when the server has one, and is counted in the request metrics under service
// "kserve". Errors are absl::Status inside and gRPC codes at the edge, as in lowbit.v1.
#ifndef LOWBIT_RUNTIME_SERVICE_KSERVE_SERVICE_H_
#define LOWBIT_RUNTIME_SERVICE_KSERVE_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "inference/predict_v2.grpc.pb.h"
#include "rpc/server.h"
#include "runtime/engine.h"

namespace lowbit::runtime {

class KServeServiceImpl final : public inference::GRPCInferenceService::Service {
 public:
  // `max_message_bytes`: the server's send limit (results over it are RESOURCE_EXHAUSTED).
  KServeServiceImpl(Engine* engine, rpc::ServiceContext service, int64_t max_message_bytes);

  // ServerReady answers false from here on (call it when the server starts to drain).
  void BeginDrain() { draining_ = true; }

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
  grpc::Status ModelInfer(grpc::ServerContext* ctx, const inference::ModelInferRequest* req,
                          inference::ModelInferResponse* resp) override;

 private:
  absl::Status Infer(grpc::ServerContext* ctx, const inference::ModelInferRequest& req,
                     inference::ModelInferResponse* resp);

  Engine* engine_;
  rpc::ServiceContext service_;
  int64_t max_message_bytes_;
  std::atomic<bool> draining_{false};
};

// "FP32" / "FP16" / "BF16" (the protocol's datatype names) <-> the activation dtypes.
absl::StatusOr<DType> ActivationDTypeFromKServe(const std::string& datatype, const std::string& what);
std::string KServeDatatype(DType dtype);

}  // namespace lowbit::runtime

#endif  // LOWBIT_RUNTIME_SERVICE_KSERVE_SERVICE_H_
