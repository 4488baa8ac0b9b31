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
#include "nlohmann/json.hpp"
#include "rpc/client.h"

namespace lowbit::cli {

// The configs from the flags and the environment (an empty LOWBIT_CALIBRATOR / LOWBIT_RUNTIME
// counts as unset). A config that cannot work is a usage error: the CLI prints what is wrong,
// naming the flag, and exits with status 2 — an address that is not HOST:PORT with a port in
// 1..65535 (or unix:PATH, or a gRPC target with a scheme), --max_message_bytes outside
// 1..2147483647, --chunk_bytes outside 1..32 MiB or not 64 KiB below --max_message_bytes,
// --tls_cert without --tls_key (or the reverse) or without --tls_ca, a negative or non-finite
// --timeout_s / --stream_timeout_s. `check_address`: false for a config whose address the
// caller sets itself (`lowbit demo` and bench-rpc talk to the services they start).
rpc::ClientConfig CalibratorConfig(bool check_address = true);
rpc::ClientConfig RuntimeConfig(bool check_address = true);
// A channel for `config`; exits with status 2 when its TLS files cannot be read.
std::shared_ptr<grpc::Channel> ChannelFor(const rpc::ClientConfig& config);
std::unique_ptr<v1::CalibratorService::Stub> CalibratorStub(const rpc::ClientConfig& config);
std::unique_ptr<v1::RuntimeService::Stub> RuntimeStub(const rpc::ClientConfig& config);
// Which deadline a call gets: kUnary, --timeout_s (default 600 s); kStream (uploads, fetches,
// streamed loads, whose length grows with the model), --stream_timeout_s (default 0 = none);
// kNone (following a job, which takes as long as the job); kProbe (a health check), 5 s unless
// --timeout_s is given with another value than its default.
enum class Deadline { kUnary, kStream, kNone, kProbe };
// The token and the deadline on a context.
void Prepare(grpc::ClientContext* ctx, const rpc::ClientConfig& config, Deadline deadline = Deadline::kUnary);
// "lowbit: <what>: CODE: message" on stderr; returns 1 (for `return Fail(...)`).
int Fail(const std::string& what, const grpc::Status& status);
int Fail(const std::string& what, const absl::Status& status);
// "lowbit <command>: <message>" on stderr; returns 2, the exit status of a usage error.
int UsageError(const std::string& command, const std::string& message);
std::string CodeName(grpc::StatusCode code);
// `message` as JSON, with the .proto field names and every field (defaults too), for output a
// user reads and a script parses (`lowbit jobs get`, `lowbit info`).
nlohmann::json MessageJson(const google::protobuf::Message& message);

}  // namespace lowbit::cli

#endif  // LOWBIT_CLI_CONNECTION_H_
