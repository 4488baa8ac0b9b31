// What every Lowbit gRPC server shares: listening address and TLS / mTLS, a bearer token,
// explicit message size limits, grpc.health.v1, server reflection, Prometheus /metrics, and
// graceful shutdown (health NOT_SERVING, drain in-flight calls up to a grace period, stop).
//
// Auth: a bearer token ("authorization: Bearer <token>" metadata) checked by each handler
// through CallGuard, so it works on plaintext loopback too (gRPC 1.51 aborts the process when
// an AuthMetadataProcessor is set on insecure credentials). Health and reflection stay open,
// for probes.
#ifndef LOWBIT_RPC_SERVER_H_
#define LOWBIT_RPC_SERVER_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/server.h"
#include "grpcpp/server_context.h"
#include "prometheus/counter.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace prometheus {
class Exposer;
}

namespace lowbit::rpc {

struct ServerConfig {
  std::string address = "127.0.0.1:0";            // host:port; port 0 = pick a free one (see port())
  int64_t max_message_bytes = int64_t{64} << 20;  // receive and send, per message
  // TLS when cert and key are set; mTLS (client certificates required) when client_ca is too.
  std::string tls_cert_file, tls_key_file, tls_client_ca_file;
  std::string auth_token;       // bearer token; empty = no auth
  std::string metrics_address;  // "host:port" for Prometheus /metrics; empty = off
  std::chrono::milliseconds shutdown_grace{5000};
};

// Filled from flags and LOWBIT_<PREFIX>_* by ServerConfigFromFlags (rpc/settings.h).

// Request counts by method and code, latency histograms by method.
class RpcMetrics {
 public:
  RpcMetrics(prometheus::Registry& registry, const std::string& service);
  void Record(std::string_view method, const grpc::Status& status, double seconds);

 private:
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Histogram>* latency_;
  std::string service_;
};

// What a handler needs from the server plumbing: the auth check and the metrics.
struct ServiceContext {
  std::string auth_token;  // empty = no auth
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::shared_ptr<RpcMetrics> metrics;  // made by MakeServiceContext
};
ServiceContext MakeServiceContext(const ServerConfig& config, const std::string& service,
                                  std::shared_ptr<prometheus::Registry> registry = nullptr);

// One per call:  CallGuard guard(ctx, service_ctx, "Gemm");
//                if (!guard.ok()) return guard.Finish(guard.auth_status());
//                ... return guard.Finish(status);
class CallGuard {
 public:
  CallGuard(const grpc::ServerContext* ctx, const ServiceContext& service, std::string_view method);
  bool ok() const { return auth_.ok(); }
  const grpc::Status& auth_status() const { return auth_; }
  grpc::Status Finish(grpc::Status status);

 private:
  const ServiceContext& service_;
  std::string method_;
  std::chrono::steady_clock::time_point start_;
  grpc::Status auth_;
};

// Why a call whose client is gone ended, for the logs and the request metrics: DEADLINE_EXCEEDED
// once the call's deadline has passed or is within 50 ms, else CANCELLED; `what` says what was
// cut short. (The client's own deadline comes first: it sent its remaining time, which the
// server counts from the moment the call arrived, so the client ends the call — and the server
// sees a cancellation — up to a network delay plus the timeout header's rounding before the
// server's deadline. A client that cancels in its last 50 ms is counted as out of time.)
absl::Status CallEnded(const grpc::ServerContext* ctx, absl::string_view what);

// Checks "authorization: Bearer <token>" in constant time. OK when `token` is empty.
grpc::Status CheckBearerToken(const grpc::ServerContext* ctx, const std::string& token);

class RpcServer {
 public:
  // Builds and starts a server with the given services (not owned; they must outlive it),
  // health (the server, service "", SERVING) and reflection. Errors: an address that is not
  // HOST:PORT with a port in 0..65535 (INVALID_ARGUMENT), a port in use, unreadable TLS files or a
  // key that is not the certificate's, a metrics address that cannot be bound.
  static absl::StatusOr<std::unique_ptr<RpcServer>> Start(const ServerConfig& config,
                                                          const std::vector<grpc::Service*>& services,
                                                          std::shared_ptr<prometheus::Registry> registry);
  ~RpcServer();
  int port() const { return port_; }
  // Where clients reach it: HOST:PORT with the port bound (for port 0, the one chosen), or the
  // configured unix:PATH / unix-abstract:NAME as given (gRPC reports port 1 for those).
  std::string listening_address() const;
  int metrics_port() const;
  // Also answers health checks for this service name (e.g. "lowbit.v1.RuntimeService"), with the
  // server's status (NOT_SERVING once Shutdown began).
  void AddHealthService(const std::string& full_name);
  grpc::Server* server() { return server_.get(); }
  // Health NOT_SERVING, then Shutdown with the grace deadline (in-flight calls finish or are
  // cancelled at the deadline). Idempotent.
  void Shutdown();
  void Wait();

 private:
  RpcServer() = default;
  ServerConfig config_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
  bool shut_down_ = false;
};

// Blocks until SIGINT or SIGTERM, then returns (for main()s: then call Shutdown()).
void WaitForTerminationSignal();

}  // namespace lowbit::rpc

#endif  // LOWBIT_RPC_SERVER_H_
