// Service settings from flags and the environment, one rule for both services: a flag given on
// the command line wins, then LOWBIT_<PREFIX>_<NAME> (parsed as the flag's type), then the
// flag's default. Debian's Abseil (20220623) keeps IsSpecifiedOnCommandLine private, so a flag
// given with exactly its default value counts as not given (the environment then wins).
#ifndef LOWBIT_RPC_SETTINGS_H_
#define LOWBIT_RPC_SETTINGS_H_

#include <cstdlib>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/marshalling.h"
#include "absl/flags/reflection.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "rpc/server.h"

namespace lowbit::rpc {

template <typename T>
bool FlagOnCommandLine(const absl::Flag<T>& flag) {
  const absl::CommandLineFlag& f = absl::GetFlagReflectionHandle(flag);
  return f.CurrentValue() != f.DefaultValue();
}

// InvalidArgument naming the variable when its value does not parse as T.
template <typename T>
absl::Status FlagOrEnv(const absl::Flag<T>& flag, const std::string& prefix, const char* name, T* out) {
  *out = absl::GetFlag(flag);
  if (FlagOnCommandLine(flag)) return absl::OkStatus();
  const std::string var = absl::StrCat("LOWBIT_", prefix, "_", name);
  const char* v = std::getenv(var.c_str());
  if (v == nullptr) return absl::OkStatus();
  std::string error;
  if (!absl::ParseFlag<T>(v, out, &error)) {  // <T>: not absl::Duration's deprecated overload
    return absl::InvalidArgumentError(
        absl::StrCat(var, "='", v, "': ", error.empty() ? "not a valid value for --" : error + "; see --",
                     absl::GetFlagReflectionHandle(flag).Name()));
  }
  return absl::OkStatus();
}

// The flags every server defines (each main defines its own, with its own default address).
struct ServerFlags {
  const absl::Flag<std::string>& address;
  const absl::Flag<std::string>& tls_cert;
  const absl::Flag<std::string>& tls_key;
  const absl::Flag<std::string>& tls_client_ca;
  const absl::Flag<std::string>& auth_token;
  const absl::Flag<std::string>& metrics_address;
  const absl::Flag<int64_t>& max_message_bytes;
  const absl::Flag<int64_t>& shutdown_grace_ms;
};

// Fills `config` by FlagOrEnv, from LOWBIT_<PREFIX>_ADDRESS, _TLS_CERT, _TLS_KEY,
// _TLS_CLIENT_CA, _AUTH_TOKEN, _METRICS_ADDRESS, _MAX_MESSAGE_BYTES and _SHUTDOWN_GRACE_MS.
inline absl::Status ServerConfigFromFlags(const ServerFlags& f, const std::string& prefix, ServerConfig* config) {
  absl::Status s;
  if (s.ok()) s = FlagOrEnv(f.address, prefix, "ADDRESS", &config->address);
  if (s.ok()) s = FlagOrEnv(f.tls_cert, prefix, "TLS_CERT", &config->tls_cert_file);
  if (s.ok()) s = FlagOrEnv(f.tls_key, prefix, "TLS_KEY", &config->tls_key_file);
  if (s.ok()) s = FlagOrEnv(f.tls_client_ca, prefix, "TLS_CLIENT_CA", &config->tls_client_ca_file);
  if (s.ok()) s = FlagOrEnv(f.auth_token, prefix, "AUTH_TOKEN", &config->auth_token);
  if (s.ok()) s = FlagOrEnv(f.metrics_address, prefix, "METRICS_ADDRESS", &config->metrics_address);
  if (s.ok()) s = FlagOrEnv(f.max_message_bytes, prefix, "MAX_MESSAGE_BYTES", &config->max_message_bytes);
  int64_t grace_ms = 0;
  if (s.ok()) s = FlagOrEnv(f.shutdown_grace_ms, prefix, "SHUTDOWN_GRACE_MS", &grace_ms);
  if (s.ok() && grace_ms < 0) {
    s = absl::InvalidArgumentError(absl::StrCat("shutdown_grace_ms must be 0 or more, not ", grace_ms));
  }
  if (s.ok()) config->shutdown_grace = std::chrono::milliseconds(grace_ms);
  return s;
}

}  // namespace lowbit::rpc

#endif  // LOWBIT_RPC_SETTINGS_H_
