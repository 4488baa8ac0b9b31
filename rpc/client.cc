#include "rpc/client.h"

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "rpc/tls_files.h"

namespace lowbit::rpc {

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ClientConfig& config) {
  if (config.chunk_bytes < 1 || config.chunk_bytes > kMaxChunkBytes ||
      config.chunk_bytes + (int64_t{64} << 10) > config.max_message_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("chunk_bytes ", config.chunk_bytes, " must be 1 to ", kMaxChunkBytes,
                                                   " and at least 64 KiB below max_message_bytes (",
                                                   config.max_message_bytes, ")"));
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(config.max_message_bytes));
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (config.tls_ca_file.empty()) {
    if (!config.tls_cert_file.empty()) {
      return absl::InvalidArgumentError("a client certificate needs --tls_ca (TLS) as well");
    }
    creds = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions opts;
    auto ca = ReadFileToString(config.tls_ca_file);
    if (!ca.ok()) return ca.status();
    if (absl::Status st = CheckPemCertificates(*ca, config.tls_ca_file, "TLS CA"); !st.ok()) return st;
    opts.pem_root_certs = *ca;
    if (!config.tls_cert_file.empty() || !config.tls_key_file.empty()) {
      auto cert = ReadFileToString(config.tls_cert_file);
      if (!cert.ok()) return cert.status();
      auto key = ReadFileToString(config.tls_key_file);
      if (!key.ok()) return key.status();
      if (absl::Status st = CheckTlsPair(*cert, config.tls_cert_file, *key, config.tls_key_file); !st.ok()) return st;
      opts.pem_cert_chain = *cert;
      opts.pem_private_key = *key;
    }
    if (!config.tls_server_name.empty()) args.SetSslTargetNameOverride(config.tls_server_name);
    creds = grpc::SslCredentials(opts);
  }
  return grpc::CreateCustomChannel(config.address, creds, args);
}

void PrepareContext(grpc::ClientContext* ctx, const ClientConfig& config, std::chrono::milliseconds deadline) {
  if (!config.auth_token.empty()) ctx->AddMetadata("authorization", "Bearer " + config.auth_token);
  if (deadline.count() > 0) ctx->set_deadline(std::chrono::system_clock::now() + deadline);
}

}  // namespace lowbit::rpc
