// The PEM files of TLS / mTLS, checked with OpenSSL before gRPC sees them: gRPC only says
// "Unable to create secure server" or, on a client, fails every call with UNAVAILABLE ("empty
// address list"), naming neither the file nor what is wrong with it.
#ifndef LOWBIT_RPC_TLS_FILES_H_
#define LOWBIT_RPC_TLS_FILES_H_

#include <string>

#include "absl/status/status.h"

namespace lowbit::rpc {

// `pem` (read from `file`) holds at least one PEM certificate: a CA bundle's first certificate
// parses. `what` names the file's role in the message ("TLS CA").
absl::Status CheckPemCertificates(const std::string& pem, const std::string& file, const std::string& what);

// The PEM certificate and the unencrypted PEM private key parse and belong together.
absl::Status CheckTlsPair(const std::string& cert_pem, const std::string& cert_file, const std::string& key_pem,
                          const std::string& key_file);

}  // namespace lowbit::rpc

#endif  // LOWBIT_RPC_TLS_FILES_H_
