#include "calibrator/service/calibrator_server.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/dir_lock.h"

namespace lowbit::calibrator {

absl::StatusOr<std::unique_ptr<CalibratorServer>> CalibratorServer::Start(CalibratorServerOptions options) {
  if (options.state_dir.empty()) return absl::InvalidArgumentError("--state_dir is required");
  if (options.output_root.empty()) options.output_root = options.state_dir + "/outputs";
  std::error_code ec;
  std::filesystem::create_directories(options.output_root, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", options.output_root, ": ", ec.message()));
  if (!options.model_root.empty() && !std::filesystem::is_directory(options.model_root, ec)) {
    return absl::InvalidArgumentError(absl::StrCat("the model root ", options.model_root, " is not a directory"));
  }
  auto s = std::unique_ptr<CalibratorServer>(new CalibratorServer());
  std::filesystem::create_directories(options.state_dir, ec);
  absl::StatusOr<std::unique_ptr<DirectoryLock>> lock =
      DirectoryLock::Acquire(options.state_dir, "calibrator.lock", "lowbit-calibrator");
  if (!lock.ok()) return absl::Status(lock.status().code(), absl::StrCat("--state_dir ", lock.status().message()));
  s->lock_ = *std::move(lock);
  s->options_ = options;
  s->context_ = rpc::MakeServiceContext(options.server, "calibrator");
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(options.state_dir);
  if (!store.ok()) return store.status();
  s->store_ = *std::move(store);
  absl::StatusOr<std::unique_ptr<UploadStore>> uploads = UploadStore::Open(options.state_dir, options.max_upload_bytes);
  if (!uploads.ok()) return uploads.status();
  s->uploads_ = *std::move(uploads);
  ServicePaths paths{options.model_root, options.output_root, s->uploads_.get()};
  s->runner_ = std::make_unique<JobRunner>(s->store_.get(), paths, options.runner, s->context_.registry.get());
  s->service_ = std::make_unique<CalibratorServiceImpl>(s->context_, s->runner_.get(), s->uploads_.get(), paths);
  // The stored jobs are taken over before the first call can arrive.
  if (absl::Status st = s->runner_->Start(); !st.ok()) return st;
  absl::StatusOr<std::unique_ptr<rpc::RpcServer>> server =
      rpc::RpcServer::Start(options.server, {s->service_.get()}, s->context_.registry);
  if (!server.ok()) return server.status();
  s->server_ = *std::move(server);
  s->server_->AddHealthService(lowbit::v1::CalibratorService::service_full_name());
  return s;
}

CalibratorServer::~CalibratorServer() { Shutdown(); }

void CalibratorServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  if (service_) service_->BeginShutdown();
  if (server_) server_->Shutdown();
  if (runner_) runner_->Shutdown();
}

}  // namespace lowbit::calibrator
