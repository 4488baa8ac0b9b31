#include "rpc/tls_files.h"

#include "absl/strings/str_cat.h"
#include "openssl/bio.h"
#include "openssl/evp.h"
#include "openssl/pem.h"
#include "openssl/x509.h"

namespace lowbit::rpc {
namespace {

// The first PEM certificate of `pem`, or null (the caller frees it).
X509* FirstCertificate(const std::string& pem) {
  BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* cert = b ? PEM_read_bio_X509(b, nullptr, nullptr, nullptr) : nullptr;
  BIO_free(b);
  return cert;
}

}  // namespace

absl::Status CheckPemCertificates(const std::string& pem, const std::string& file, const std::string& what) {
  X509* cert = FirstCertificate(pem);
  if (cert == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", file, "' holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
  }
  X509_free(cert);
  return absl::OkStatus();
}

absl::Status CheckTlsPair(const std::string& cert_pem, const std::string& cert_file, const std::string& key_pem,
                          const std::string& key_file) {
  X509* cert = FirstCertificate(cert_pem);
  if (cert == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS certificate '", cert_file, "' holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
  }
  BIO* kb = BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size()));
  EVP_PKEY* key = kb ? PEM_read_bio_PrivateKey(kb, nullptr, nullptr, nullptr) : nullptr;
  BIO_free(kb);
  absl::Status st;
  if (key == nullptr) {
    st = absl::InvalidArgumentError(
        absl::StrCat("TLS key '", key_file, "' holds no unencrypted PEM private key (-----BEGIN PRIVATE KEY-----)"));
  } else if (X509_check_private_key(cert, key) != 1) {
    st = absl::InvalidArgumentError(
        absl::StrCat("TLS key '", key_file, "' is not the private key of the certificate in '", cert_file, "'"));
  }
  EVP_PKEY_free(key);
  X509_free(cert);
  return st;
}

}  // namespace lowbit::rpc
