// Client side of the plumbing: channels with TLS / mTLS or plaintext, explicit message limits,
// and the bearer token added to each call's metadata (also on plaintext channels).
#ifndef LOWBIT_RPC_CLIENT_H_
#define LOWBIT_RPC_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"

namespace lowbit::rpc {

// The largest chunk a server sends (FetchResult clamps to it); clients keep theirs at or below.
inline constexpr int64_t kMaxChunkBytes = int64_t{32} << 20;

struct ClientConfig {
  std::string address = "127.0.0.1:50051";
  int64_t max_message_bytes = int64_t{64} << 20;
  // Data bytes per message of the chunked streams this client sends (uploads, streamed loads) or
  // asks for (FetchResult). Bigger chunks mean fewer messages, each a hand-off between gRPC's
  // threads; they must stay under max_message_bytes (of this client and of the server).
  int64_t chunk_bytes = int64_t{4} << 20;  // 1 .. kMaxChunkBytes
  std::string tls_ca_file;                          // TLS when set
  std::string tls_cert_file, tls_key_file;          // client certificate (mTLS)
  std::string tls_server_name;                      // override the name checked in the cert
  std::string auth_token;
};

// InvalidArgument for a config that cannot work (chunk_bytes out of range or not below
// max_message_bytes, a client certificate without TLS, unreadable TLS files).
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ClientConfig& config);
// Adds the token (if any) and a deadline (if > 0) to a call.
void PrepareContext(grpc::ClientContext* ctx, const ClientConfig& config,
                    std::chrono::milliseconds deadline = std::chrono::milliseconds(0));

}  // namespace lowbit::rpc

#endif  // LOWBIT_RPC_CLIENT_H_
