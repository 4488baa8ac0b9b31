#include "rpc/client.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace lowbit::rpc {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", what, " '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ClientConfig& config) {
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
    auto ca = ReadFile(config.tls_ca_file, "TLS CA");
    if (!ca.ok()) return ca.status();
    opts.pem_root_certs = *ca;
    if (!config.tls_cert_file.empty() || !config.tls_key_file.empty()) {
      auto cert = ReadFile(config.tls_cert_file, "TLS client certificate");
      if (!cert.ok()) return cert.status();
      auto key = ReadFile(config.tls_key_file, "TLS client key");
      if (!key.ok()) return key.status();
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
