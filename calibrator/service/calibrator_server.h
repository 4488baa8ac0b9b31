// The whole calibrator server in one object, for `lowbit-calibrator serve` and in-process
// tests: job store + upload store under the state dir, the job runner, the gRPC service on an
// rpc::RpcServer (health, reflection, metrics, TLS, token). Shutdown: WatchJob streams end,
// the server drains, running jobs are interrupted and stay RUNNING on disk (they resume at the
// next start).
#ifndef LOWBIT_CALIBRATOR_SERVICE_CALIBRATOR_SERVER_H_
#define LOWBIT_CALIBRATOR_SERVICE_CALIBRATOR_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "calibrator/service/calibrator_service.h"
#include "calibrator/service/job_runner.h"
#include "calibrator/service/job_store.h"
#include "calibrator/service/upload_store.h"
#include "common/dir_lock.h"
#include "rpc/server.h"

namespace lowbit::calibrator {

struct CalibratorServerOptions {
  rpc::ServerConfig server;
  std::string state_dir;
  std::string model_root;
  std::string output_root;  // "" = <state_dir>/outputs
  int64_t max_upload_bytes = int64_t{8} << 30;
  JobRunnerOptions runner;
};

class CalibratorServer {
 public:
  static absl::StatusOr<std::unique_ptr<CalibratorServer>> Start(CalibratorServerOptions options);
  ~CalibratorServer();
  int port() const { return server_->port(); }
  std::string listening_address() const { return server_->listening_address(); }
  int metrics_port() const { return server_->metrics_port(); }
  JobRunner& runner() { return *runner_; }
  prometheus::Registry& registry() { return *context_.registry; }
  const CalibratorServerOptions& options() const { return options_; }
  void Shutdown();  // idempotent

 private:
  CalibratorServer() = default;
  std::unique_ptr<DirectoryLock> lock_;  // held for the server's life; released last
  CalibratorServerOptions options_;
  rpc::ServiceContext context_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<UploadStore> uploads_;
  std::unique_ptr<JobRunner> runner_;
  std::unique_ptr<CalibratorServiceImpl> service_;
  std::unique_ptr<rpc::RpcServer> server_;
  bool shut_down_ = false;
};

}  // namespace lowbit::calibrator

#endif  // LOWBIT_CALIBRATOR_SERVICE_CALIBRATOR_SERVER_H_
