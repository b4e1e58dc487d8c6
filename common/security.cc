// Constant-time comparison, bearer tokens and TLS certificate files (OpenSSL for the PEM checks).
#include "common/security.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"

namespace adore {

namespace {

// The whole file, or nullopt when it cannot be opened or read.
std::optional<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return ss.str();
}

// OpenSSL's password callback: never prompt (an encrypted key would otherwise ask on the terminal).
int NoPassword(char*, int, int, void*) { return -1; }

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};

std::unique_ptr<BIO, BioFree> MemBio(const std::string& data) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

}  // namespace

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  std::optional<std::string> data = ReadWholeFile(path);
  if (!data.has_value()) return absl::NotFoundError(absl::StrFormat("cannot read %s", path));
  std::string token(absl::StripTrailingAsciiWhitespace(*data));
  if (token.empty()) return absl::InvalidArgumentError(absl::StrFormat("%s is empty (a token is required)", path));
  // gRPC metadata and HTTP header values carry printable ASCII; a space would also split "Bearer <token>".
  for (char c : token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: the token holds a character other than visible ASCII (no spaces or control "
                          "characters; e.g. openssl rand -hex 32)", path));
    }
  }
  return token;
}

absl::Status CheckBearerAuthorization(std::optional<std::string_view> value, std::string_view token) {
  if (!value.has_value()) {
    return absl::UnauthenticatedError("authorization: missing; this server requires \"authorization: Bearer <token>\"");
  }
  const std::string_view v = *value;
  const size_t space = v.find(' ');
  std::string scheme(v.substr(0, space));
  if (space == std::string_view::npos || absl::AsciiStrToLower(scheme) != "bearer") {
    return absl::UnauthenticatedError("authorization: not a Bearer credential (expected \"Bearer <token>\")");
  }
  std::string_view given = v.substr(space);
  while (!given.empty() && given.front() == ' ') given.remove_prefix(1);
  while (!given.empty() && (given.back() == ' ' || given.back() == '\t')) given.remove_suffix(1);
  if (!ConstantTimeEquals(given, token)) return absl::UnauthenticatedError("authorization: wrong bearer token");
  return absl::OkStatus();
}

absl::StatusOr<TlsCertKey> ReadTlsCertKey(const std::string& cert_file, const std::string& key_file) {
  TlsCertKey out;
  std::optional<std::string> cert = ReadWholeFile(cert_file);
  if (!cert.has_value()) return absl::NotFoundError(absl::StrFormat("tls_cert_file: cannot read %s", cert_file));
  std::optional<std::string> key = ReadWholeFile(key_file);
  if (!key.has_value()) return absl::NotFoundError(absl::StrFormat("tls_key_file: cannot read %s", key_file));
  out.cert_pem = *std::move(cert);
  out.key_pem = *std::move(key);

  auto cert_bio = MemBio(out.cert_pem);
  std::unique_ptr<X509, X509Free> x509(PEM_read_bio_X509(cert_bio.get(), nullptr, NoPassword, nullptr));
  auto key_bio = MemBio(out.key_pem);
  std::unique_ptr<EVP_PKEY, PkeyFree> pkey(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, NoPassword, nullptr));
  ERR_clear_error();  // what failed is reported below; leave nothing in this thread's queue for gRPC
  if (x509 == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("tls_cert_file: %s holds no PEM certificate", cert_file));
  }
  if (pkey == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "tls_key_file: %s holds no PEM private key (an encrypted key is not supported)", key_file));
  }
  if (X509_check_private_key(x509.get(), pkey.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrFormat(
        "tls_key_file: the key in %s does not belong to the certificate in %s", key_file, cert_file));
  }
  return out;
}

}  // namespace adore
