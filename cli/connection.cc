#include "cli/connection.h"

#include <cstdio>
#include <cstdlib>

#include "absl/flags/flag.h"
#include "rpc/status.h"

ABSL_FLAG(std::string, calibrator, "", "calibrator address host:port (default $LOWBIT_CALIBRATOR or 127.0.0.1:50051)");
ABSL_FLAG(std::string, runtime, "", "runtime address host:port (default $LOWBIT_RUNTIME or 127.0.0.1:50052)");
ABSL_FLAG(std::string, token, "", "bearer token (default $LOWBIT_TOKEN)");
ABSL_FLAG(std::string, tls_ca, "", "CA certificate (PEM): connect with TLS");
ABSL_FLAG(std::string, tls_cert, "", "client certificate (PEM), for mTLS");
ABSL_FLAG(std::string, tls_key, "", "client key (PEM), for mTLS");
ABSL_FLAG(std::string, tls_server_name, "", "name to check in the server certificate");
ABSL_FLAG(double, timeout_s, 600, "deadline of each unary call in seconds (0 = none)");
ABSL_FLAG(int64_t, max_message_bytes, int64_t{64} << 20, "max gRPC message size");
ABSL_FLAG(int64_t, chunk_bytes, int64_t{4} << 20,
          "data bytes per message of uploads, streamed loads and fetches (at most 32 MiB)");

namespace lowbit::cli {
namespace {

rpc::ClientConfig Base(const std::string& flag, const char* env, const char* fallback) {
  rpc::ClientConfig c;
  c.address = !flag.empty() ? flag : (std::getenv(env) ? std::getenv(env) : fallback);
  c.auth_token = absl::GetFlag(FLAGS_token);
  if (c.auth_token.empty() && std::getenv("LOWBIT_TOKEN")) c.auth_token = std::getenv("LOWBIT_TOKEN");
  c.tls_ca_file = absl::GetFlag(FLAGS_tls_ca);
  c.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  c.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  c.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  c.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  c.chunk_bytes = absl::GetFlag(FLAGS_chunk_bytes);
  return c;
}

}  // namespace

std::shared_ptr<grpc::Channel> ChannelFor(const rpc::ClientConfig& config) {
  auto ch = rpc::MakeChannel(config);
  if (!ch.ok()) {
    std::fprintf(stderr, "lowbit: %s\n", std::string(ch.status().message()).c_str());
    std::exit(2);
  }
  return *ch;
}

rpc::ClientConfig CalibratorConfig() {
  return Base(absl::GetFlag(FLAGS_calibrator), "LOWBIT_CALIBRATOR", "127.0.0.1:50051");
}
rpc::ClientConfig RuntimeConfig() { return Base(absl::GetFlag(FLAGS_runtime), "LOWBIT_RUNTIME", "127.0.0.1:50052"); }

std::unique_ptr<v1::CalibratorService::Stub> CalibratorStub(const rpc::ClientConfig& config) {
  return v1::CalibratorService::NewStub(ChannelFor(config));
}
std::unique_ptr<v1::RuntimeService::Stub> RuntimeStub(const rpc::ClientConfig& config) {
  return v1::RuntimeService::NewStub(ChannelFor(config));
}

void Prepare(grpc::ClientContext* ctx, const rpc::ClientConfig& config, bool with_deadline) {
  const double t = absl::GetFlag(FLAGS_timeout_s);
  rpc::PrepareContext(ctx, config,
                      std::chrono::milliseconds(with_deadline && t > 0 ? static_cast<int64_t>(t * 1000) : 0));
}

std::string CodeName(grpc::StatusCode code) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                 "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                 "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int c = static_cast<int>(code);
  return c >= 0 && c <= 16 ? kNames[c] : std::to_string(c);
}

int Fail(const std::string& what, const grpc::Status& status) {
  std::fprintf(stderr, "lowbit: %s: %s: %s\n", what.c_str(), CodeName(status.error_code()).c_str(),
               status.error_message().c_str());
  return 1;
}

int Fail(const std::string& what, const absl::Status& status) { return Fail(what, rpc::ToGrpcStatus(status)); }

}  // namespace lowbit::cli
