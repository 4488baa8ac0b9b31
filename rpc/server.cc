#include "rpc/server.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "prometheus/exposer.h"
#include "rpc/tls_files.h"
#include "spdlog/spdlog.h"

namespace lowbit::rpc {
namespace {

// A TCP listening address's port must be 0..65535 (gRPC would take it modulo 65536).
absl::Status CheckListenPort(const std::string& address) {
  if (absl::StartsWith(address, "unix:") || absl::StartsWith(address, "unix-abstract:")) return absl::OkStatus();
  const size_t colon = address.rfind(':');
  const std::string port = colon == std::string::npos ? "" : address.substr(colon + 1);
  int64_t value = -1;
  if (port.empty() || !std::all_of(port.begin(), port.end(), absl::ascii_isdigit) || !absl::SimpleAtoi(port, &value) ||
      value > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("address '", address, "': expected HOST:PORT with a port in 0..65535 (0 = any free port)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const ServerConfig& c) {
  if (c.tls_cert_file.empty() && c.tls_key_file.empty()) {
    if (!c.tls_client_ca_file.empty()) {
      return absl::InvalidArgumentError("a TLS client CA was given without a server certificate and key");
    }
    return grpc::InsecureServerCredentials();
  }
  if (c.tls_cert_file.empty() || c.tls_key_file.empty()) {
    return absl::InvalidArgumentError("TLS needs both a certificate and a key file");
  }
  auto cert = ReadFileToString(c.tls_cert_file);
  if (!cert.ok()) return cert.status();
  auto key = ReadFileToString(c.tls_key_file);
  if (!key.ok()) return key.status();
  if (absl::Status st = CheckTlsPair(*cert, c.tls_cert_file, *key, c.tls_key_file); !st.ok()) return st;
  grpc::SslServerCredentialsOptions opts(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  if (!c.tls_client_ca_file.empty()) {
    auto ca = ReadFileToString(c.tls_client_ca_file);
    if (!ca.ok()) return ca.status();
    if (absl::Status st = CheckPemCertificates(*ca, c.tls_client_ca_file, "TLS client CA"); !st.ok()) return st;
    opts = grpc::SslServerCredentialsOptions(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    opts.pem_root_certs = *ca;
  }
  opts.pem_key_cert_pairs.push_back({*key, *cert});
  return grpc::SslServerCredentials(opts);
}

// Equal-length compare whose time does not depend on where the bytes differ.
bool ConstantTimeEquals(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

int g_signal_pipe[2] = {-1, -1};

void OnSignal(int) {
  const char b = 1;
  [[maybe_unused]] ssize_t n = write(g_signal_pipe[1], &b, 1);
}

}  // namespace

RpcMetrics::RpcMetrics(prometheus::Registry& registry, const std::string& service) : service_(service) {
  requests_ = &prometheus::BuildCounter()
                   .Name("lowbit_rpc_requests_total")
                   .Help("RPCs handled, by service, method and status code")
                   .Register(registry);
  latency_ = &prometheus::BuildHistogram()
                  .Name("lowbit_rpc_latency_seconds")
                  .Help("RPC handling time, by service and method")
                  .Register(registry);
}

void RpcMetrics::Record(std::string_view method, const grpc::Status& status, double seconds) {
  static const auto* const kBuckets = new prometheus::Histogram::BucketBoundaries{
      25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60};
  const std::string m(method);
  requests_->Add({{"service", service_}, {"method", m}, {"code", std::to_string(status.error_code())}}).Increment();
  latency_->Add({{"service", service_}, {"method", m}}, *kBuckets).Observe(seconds);
}

ServiceContext MakeServiceContext(const ServerConfig& config, const std::string& service,
                                  std::shared_ptr<prometheus::Registry> registry) {
  ServiceContext ctx;
  ctx.auth_token = config.auth_token;
  if (registry) ctx.registry = std::move(registry);
  ctx.metrics = std::make_shared<RpcMetrics>(*ctx.registry, service);
  return ctx;
}

grpc::Status CheckBearerToken(const grpc::ServerContext* ctx, const std::string& token) {
  if (token.empty()) return grpc::Status::OK;
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing 'authorization: Bearer <token>' metadata (this server requires a token)");
  }
  const std::string value(it->second.data(), it->second.size());
  const std::string want = "Bearer " + token;
  if (!ConstantTimeEquals(value, want)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "the bearer token is not valid");
  }
  return grpc::Status::OK;
}

absl::Status CallEnded(const grpc::ServerContext* ctx, absl::string_view what) {
  if (ctx->deadline() <= std::chrono::system_clock::now() + std::chrono::milliseconds(50)) {
    return absl::DeadlineExceededError(absl::StrCat(what, ": the call's deadline passed"));
  }
  return absl::CancelledError(absl::StrCat(what, ": the client cancelled or went away"));
}

CallGuard::CallGuard(const grpc::ServerContext* ctx, const ServiceContext& service, std::string_view method)
    : service_(service), method_(method), start_(std::chrono::steady_clock::now()) {
  auth_ = CheckBearerToken(ctx, service.auth_token);
  if (!auth_.ok()) spdlog::warn("{}: refused: {}", method_, auth_.error_message());
}

grpc::Status CallGuard::Finish(grpc::Status status) {
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (service_.metrics) service_.metrics->Record(method_, status, s);
  if (!status.ok() && status.error_code() != grpc::StatusCode::UNAUTHENTICATED) {
    spdlog::debug("{} -> {} {}", method_, static_cast<int>(status.error_code()), status.error_message());
  }
  return status;
}

absl::StatusOr<std::unique_ptr<RpcServer>> RpcServer::Start(const ServerConfig& config,
                                                            const std::vector<grpc::Service*>& services,
                                                            std::shared_ptr<prometheus::Registry> registry) {
  if (config.max_message_bytes <= 0 || config.max_message_bytes > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("max message bytes ", config.max_message_bytes, " is not in 1..2147483647"));
  }
  if (absl::Status st = CheckListenPort(config.address); !st.ok()) return st;
  if (!config.metrics_address.empty()) {
    if (absl::Status st = CheckListenPort(config.metrics_address); !st.ok()) return st;
  }
  auto creds = MakeServerCredentials(config);
  if (!creds.ok()) return creds.status();

  std::unique_ptr<RpcServer> s(new RpcServer());
  s->config_ = config;
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.address, *creds, &s->port_);
  // A second server on a busy port must fail, not share it (gRPC sets SO_REUSEPORT by default).
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config.max_message_bytes));
  for (grpc::Service* service : services) builder.RegisterService(service);
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on '", config.address, "' (address malformed or already in use)"));
  }
  if (!config.metrics_address.empty()) {
    try {
      s->exposer_ = std::make_unique<prometheus::Exposer>(config.metrics_address);
    } catch (const std::exception& e) {
      s->server_->Shutdown();
      return absl::UnavailableError(absl::StrCat("cannot serve metrics on '", config.metrics_address, "': ", e.what()));
    }
    if (registry) s->exposer_->RegisterCollectable(registry);
    const std::string& ma = config.metrics_address;
    spdlog::info("serving Prometheus metrics on http://{}:{}/metrics", ma.substr(0, ma.rfind(':')), s->metrics_port());
  }
  s->server_->GetHealthCheckService()->SetServingStatus(true);
  return s;
}

std::string RpcServer::listening_address() const {
  const std::string& a = config_.address;
  if (absl::StartsWith(a, "unix:") || absl::StartsWith(a, "unix-abstract:")) return a;
  return absl::StrCat(a.substr(0, a.rfind(':')), ":", port_);
}

int RpcServer::metrics_port() const {
  if (!exposer_) return 0;
  auto ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

void RpcServer::AddHealthService(const std::string& full_name) {
  if (server_) server_->GetHealthCheckService()->SetServingStatus(full_name, !shut_down_);
}

void RpcServer::Shutdown() {
  if (shut_down_ || !server_) return;
  shut_down_ = true;
  server_->GetHealthCheckService()->SetServingStatus(false);
  server_->Shutdown(std::chrono::system_clock::now() + config_.shutdown_grace);
}

void RpcServer::Wait() {
  if (server_) server_->Wait();
}

RpcServer::~RpcServer() {
  Shutdown();
  Wait();
}

void WaitForTerminationSignal() {
  if (g_signal_pipe[0] < 0) {
    if (pipe2(g_signal_pipe, O_CLOEXEC) != 0) return;
  }
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  char b;
  while (read(g_signal_pipe[0], &b, 1) < 0 && errno == EINTR) {
  }
}

}  // namespace lowbit::rpc
