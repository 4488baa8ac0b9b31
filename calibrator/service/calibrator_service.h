// lowbit.v1.CalibratorService: the gRPC handlers over JobRunner (jobs), UploadStore (datasets
// and models) and the stateless per-Linear quantizer. Every handler starts with rpc::CallGuard
// (bearer token, request metrics); absl::Status inside, rpc::ToGrpcStatus at the edge.
// Behaviour, errors and limits: docs/calibrator-service.md.
#ifndef LOWBIT_CALIBRATOR_SERVICE_CALIBRATOR_SERVICE_H_
#define LOWBIT_CALIBRATOR_SERVICE_CALIBRATOR_SERVICE_H_

#include <atomic>
#include <chrono>

#include "calibrator/service/job_runner.h"
#include "calibrator/service/job_spec.h"
#include "calibrator/service/upload_store.h"
#include "lowbit/v1/calibrator.grpc.pb.h"
#include "rpc/raw_stream.h"
#include "rpc/server.h"

namespace lowbit::calibrator {

class CalibratorServiceImpl final : public v1::CalibratorService::Service {
 public:
  CalibratorServiceImpl(const rpc::ServiceContext& context, JobRunner* runner, const UploadStore* uploads,
                        ServicePaths paths);

  // Ends open WatchJob streams (UNAVAILABLE) so a graceful shutdown does not wait for them.
  void BeginShutdown() { stopping_ = true; }

  grpc::Status CreateJob(grpc::ServerContext* ctx, const v1::CreateJobRequest* req,
                         v1::CreateJobResponse* resp) override;
  grpc::Status GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req, v1::GetJobResponse* resp) override;
  grpc::Status ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest* req, v1::ListJobsResponse* resp) override;
  grpc::Status CancelJob(grpc::ServerContext* ctx, const v1::CancelJobRequest* req,
                         v1::CancelJobResponse* resp) override;
  grpc::Status RetryJob(grpc::ServerContext* ctx, const v1::RetryJobRequest* req, v1::RetryJobResponse* resp) override;
  grpc::Status DeleteJob(grpc::ServerContext* ctx, const v1::DeleteJobRequest* req,
                         v1::DeleteJobResponse* resp) override;
  grpc::Status ListUploads(grpc::ServerContext* ctx, const v1::ListUploadsRequest* req,
                           v1::ListUploadsResponse* resp) override;
  grpc::Status DeleteUpload(grpc::ServerContext* ctx, const v1::DeleteUploadRequest* req,
                            v1::DeleteUploadResponse* resp) override;
  grpc::Status WatchJob(grpc::ServerContext* ctx, const v1::WatchJobRequest* req,
                        grpc::ServerWriter<v1::WatchJobResponse>* writer) override;
  grpc::Status UploadDataset(grpc::ServerContext* ctx, grpc::ServerReader<v1::UploadDatasetRequest>* reader,
                             v1::UploadDatasetResponse* resp) override;
  // UploadModel and FetchResult are raw streams (rpc/raw_stream.h): their data is framed
  // without protobuf copies. Same messages on the wire.
  grpc::Status UploadModelRaw(grpc::ServerContext* ctx, rpc::RawServerStream* stream);
  grpc::Status FetchResultRaw(grpc::ServerContext* ctx, rpc::RawServerStream* stream);
  grpc::Status QuantizeLayer(grpc::ServerContext* ctx, const v1::QuantizeLayerRequest* req,
                             v1::QuantizeLayerResponse* resp) override;

 private:
  const rpc::ServiceContext& context_;
  JobRunner* runner_;
  const UploadStore* uploads_;
  absl::Status SendResult(const grpc::ServerContext* ctx, const v1::FetchResultRequest& req,
                          rpc::RawServerStream* stream);

  ServicePaths paths_;
  std::atomic<bool> stopping_{false};
  prometheus::Counter* dataset_bytes_ = nullptr;
  prometheus::Counter* model_bytes_ = nullptr;
};

// The stateless QuantizeLayer, callable without gRPC.
absl::StatusOr<v1::QuantizeLayerResponse> QuantizeLayerImpl(const v1::QuantizeLayerRequest& req);

}  // namespace lowbit::calibrator

#endif  // LOWBIT_CALIBRATOR_SERVICE_CALIBRATOR_SERVICE_H_
