#include "cli/connection.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/json_util.h"
#include "rpc/status.h"

ABSL_FLAG(std::string, calibrator, "", "calibrator address host:port (default $LOWBIT_CALIBRATOR or 127.0.0.1:50051)");
ABSL_FLAG(std::string, runtime, "", "runtime address host:port (default $LOWBIT_RUNTIME or 127.0.0.1:50052)");
ABSL_FLAG(std::string, token, "", "bearer token (default $LOWBIT_TOKEN)");
ABSL_FLAG(std::string, tls_ca, "", "CA certificate (PEM): connect with TLS");
ABSL_FLAG(std::string, tls_cert, "", "client certificate (PEM), for mTLS");
ABSL_FLAG(std::string, tls_key, "", "client key (PEM), for mTLS");
ABSL_FLAG(std::string, tls_server_name, "", "name to check in the server certificate");
ABSL_FLAG(double, timeout_s, 600, "deadline of each unary call in seconds (0 = none)");
ABSL_FLAG(double, stream_timeout_s, 0,
          "deadline in seconds of each upload, fetch and streamed load (load --dir), which take as long as the "
          "model is large (0 = none, the default)");
ABSL_FLAG(int64_t, max_message_bytes, int64_t{64} << 20, "max gRPC message size in bytes (1 .. 2147483647)");
ABSL_FLAG(int64_t, chunk_bytes, int64_t{4} << 20,
          "data bytes per message of uploads, streamed loads and fetches (at most 32 MiB)");

namespace lowbit::cli {
namespace {

[[noreturn]] void ConfigError(const std::string& message) {
  std::fprintf(stderr, "lowbit: %s\n", message.c_str());
  std::exit(2);
}

// Empty when one "HOST:PORT" is usable, else what is wrong with it.
std::string HostPortProblem(const std::string& hp) {
  const size_t colon = hp.rfind(':');
  if (colon == std::string::npos) return "has no port (HOST:PORT)";
  const std::string host = hp.substr(0, colon), port = hp.substr(colon + 1);
  if (host.empty()) return "has no host (HOST:PORT)";
  if (host.find(':') != std::string::npos && (host.front() != '[' || host.back() != ']')) {
    return "has an IPv6 address without brackets ([ADDRESS]:PORT)";
  }
  int value = 0;
  if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(port, &value) || value < 1 || value > 65535) {
    return absl::StrCat("has port '", port, "', which is not in 1..65535");
  }
  return "";
}

// Empty when `a` is a target the CLI can dial, else what is wrong with it: HOST:PORT, unix:PATH,
// unix-abstract:NAME, or dns:[//AUTHORITY/]HOST:PORT / ipv4:A:P[,A:P...] / ipv6:[A]:P[,...].
std::string AddressProblem(const std::string& a) {
  for (const char* unix_scheme : {"unix:", "unix-abstract:"}) {
    if (a.rfind(unix_scheme, 0) == 0) return a.size() > strlen(unix_scheme) ? "" : "names no socket";
  }
  std::string rest = a;
  bool list = false;
  if (rest.rfind("dns:", 0) == 0) {
    rest = rest.substr(4);
    if (rest.rfind("//", 0) == 0) {
      const size_t slash = rest.find('/', 2);
      if (slash == std::string::npos) return "has a dns://AUTHORITY but no /HOST:PORT";
      rest = rest.substr(slash + 1);
    }
  } else if (rest.rfind("ipv4:", 0) == 0 || rest.rfind("ipv6:", 0) == 0) {
    rest = rest.substr(5);
    list = true;
  }
  if (!list) return HostPortProblem(rest);
  for (absl::string_view hp : absl::StrSplit(rest, ',')) {
    if (std::string p = HostPortProblem(std::string(hp)); !p.empty()) return p;
  }
  return "";
}

void CheckTimeout(const char* flag, double t) {
  if (!std::isfinite(t) || t < 0) ConfigError(absl::StrCat("--", flag, " ", t, " is not a number of seconds >= 0"));
}

rpc::ClientConfig Base(const std::string& flag_name, const std::string& flag, const char* env, const char* fallback,
                       bool check_address) {
  rpc::ClientConfig c;
  const char* env_value = std::getenv(env);
  const bool from_env = flag.empty() && env_value != nullptr && *env_value != '\0';  // empty = unset
  c.address = !flag.empty() ? flag : (from_env ? env_value : fallback);
  if (check_address) {
    if (std::string problem = AddressProblem(c.address); !problem.empty()) {
      ConfigError(absl::StrCat(from_env ? absl::StrCat("$", env) : "--" + flag_name, " '", c.address, "' ", problem));
    }
  }
  c.auth_token = absl::GetFlag(FLAGS_token);
  if (c.auth_token.empty() && std::getenv("LOWBIT_TOKEN")) c.auth_token = std::getenv("LOWBIT_TOKEN");
  c.tls_ca_file = absl::GetFlag(FLAGS_tls_ca);
  c.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  c.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  c.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  if (c.tls_cert_file.empty() != c.tls_key_file.empty()) {
    ConfigError(c.tls_key_file.empty() ? "--tls_cert needs --tls_key (the client certificate's private key)"
                                       : "--tls_key needs --tls_cert (the client certificate)");
  }
  if (!c.tls_cert_file.empty() && c.tls_ca_file.empty()) {
    ConfigError("--tls_cert / --tls_key need --tls_ca (a client certificate is only sent over TLS)");
  }
  if (c.tls_ca_file.empty() && !c.tls_server_name.empty()) {
    ConfigError("--tls_server_name needs --tls_ca (it names the server certificate TLS checks)");
  }
  c.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  if (c.max_message_bytes < 1 || c.max_message_bytes > 2147483647) {
    ConfigError(absl::StrCat("--max_message_bytes ", c.max_message_bytes, " is not in 1..2147483647"));
  }
  c.chunk_bytes = absl::GetFlag(FLAGS_chunk_bytes);
  if (c.chunk_bytes < 1 || c.chunk_bytes > rpc::kMaxChunkBytes) {
    ConfigError(absl::StrCat("--chunk_bytes ", c.chunk_bytes, " is not in 1..", rpc::kMaxChunkBytes));
  }
  if (c.chunk_bytes + (int64_t{64} << 10) > c.max_message_bytes) {
    ConfigError(absl::StrCat("--max_message_bytes ", c.max_message_bytes,
                             " must be at least 64 KiB above --chunk_bytes ", c.chunk_bytes,
                             " (lower --chunk_bytes or raise --max_message_bytes)"));
  }
  CheckTimeout("timeout_s", absl::GetFlag(FLAGS_timeout_s));
  CheckTimeout("stream_timeout_s", absl::GetFlag(FLAGS_stream_timeout_s));
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

rpc::ClientConfig CalibratorConfig(bool check_address) {
  return Base("calibrator", absl::GetFlag(FLAGS_calibrator), "LOWBIT_CALIBRATOR", "127.0.0.1:50051", check_address);
}
rpc::ClientConfig RuntimeConfig(bool check_address) {
  return Base("runtime", absl::GetFlag(FLAGS_runtime), "LOWBIT_RUNTIME", "127.0.0.1:50052", check_address);
}

std::unique_ptr<v1::CalibratorService::Stub> CalibratorStub(const rpc::ClientConfig& config) {
  return v1::CalibratorService::NewStub(ChannelFor(config));
}
std::unique_ptr<v1::RuntimeService::Stub> RuntimeStub(const rpc::ClientConfig& config) {
  return v1::RuntimeService::NewStub(ChannelFor(config));
}

void Prepare(grpc::ClientContext* ctx, const rpc::ClientConfig& config, Deadline deadline) {
  double t = 0;
  if (deadline == Deadline::kUnary) t = absl::GetFlag(FLAGS_timeout_s);
  if (deadline == Deadline::kStream) t = absl::GetFlag(FLAGS_stream_timeout_s);
  if (deadline == Deadline::kProbe) {
    const absl::CommandLineFlag* f = absl::FindCommandLineFlag("timeout_s");
    t = f->CurrentValue() == f->DefaultValue() ? 5 : absl::GetFlag(FLAGS_timeout_s);
  }
  // Over ~100 years counts as none (and keeps the milliseconds in range).
  const bool finite = std::isfinite(t) && t > 0 && t < 3e9;
  rpc::PrepareContext(ctx, config, std::chrono::milliseconds(finite ? std::max<int64_t>(1, t * 1000) : 0));
}

std::string CodeName(grpc::StatusCode code) {
  static const char* kNames[] = {
      "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
      "DATA_LOSS", "UNAUTHENTICATED"};
  const int c = static_cast<int>(code);
  return c >= 0 && c <= 16 ? kNames[c] : std::to_string(c);
}

nlohmann::json MessageJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string text;
  if (!google::protobuf::util::MessageToJsonString(message, &text, options).ok()) return message.DebugString();
  return nlohmann::json::parse(text, nullptr, false);
}

int Fail(const std::string& what, const grpc::Status& status) {
  std::fprintf(stderr, "lowbit: %s: %s: %s\n", what.c_str(), CodeName(status.error_code()).c_str(),
               status.error_message().c_str());
  return 1;
}

int Fail(const std::string& what, const absl::Status& status) { return Fail(what, rpc::ToGrpcStatus(status)); }

int UsageError(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "lowbit %s: %s\n", command.c_str(), message.c_str());
  return 2;
}

}  // namespace lowbit::cli
