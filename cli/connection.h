// How the CLI reaches the services: --calibrator / --runtime addresses, TLS files and the
// bearer token (flags, or LOWBIT_TOKEN / LOWBIT_CALIBRATOR / LOWBIT_RUNTIME in the environment).
#ifndef LOWBIT_CLI_CONNECTION_H_
#define LOWBIT_CLI_CONNECTION_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "grpcpp/client_context.h"
#include "lowbit/v1/calibrator.grpc.pb.h"
#include "lowbit/v1/runtime.grpc.pb.h"
#include "rpc/client.h"

namespace lowbit::cli {

rpc::ClientConfig CalibratorConfig();
rpc::ClientConfig RuntimeConfig();
// Stubs on channels from the configs; exit with a message when the config is unusable.
// A channel for `config`; exits with status 2 when its TLS files cannot be read.
std::shared_ptr<grpc::Channel> ChannelFor(const rpc::ClientConfig& config);
std::unique_ptr<v1::CalibratorService::Stub> CalibratorStub(const rpc::ClientConfig& config);
std::unique_ptr<v1::RuntimeService::Stub> RuntimeStub(const rpc::ClientConfig& config);
// Token + --timeout_s deadline (0 = none) on a context.
void Prepare(grpc::ClientContext* ctx, const rpc::ClientConfig& config, bool with_deadline = true);
// "lowbit: <what>: CODE: message" on stderr; returns 1 (for `return Fail(...)`).
int Fail(const std::string& what, const grpc::Status& status);
int Fail(const std::string& what, const absl::Status& status);
std::string CodeName(grpc::StatusCode code);

}  // namespace lowbit::cli

#endif  // LOWBIT_CLI_CONNECTION_H_
