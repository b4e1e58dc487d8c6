// Streamed SHA-256 of model files over OpenSSL's EVP digest API.
#include "common/sha256.h"

#include <openssl/evp.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "common/status.h"

namespace adore {

namespace {

struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

// Feeds every byte of `path` to `ctx`.
absl::Status HashInto(EVP_MD_CTX* ctx, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("%s: cannot open for reading", path));
  std::vector<char> buf(size_t{1} << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const std::streamsize n = in.gcount();
    if (n > 0 && EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(n)) != 1) {
      return absl::InternalError(absl::StrFormat("%s: sha256 failed", path));
    }
  }
  if (in.bad()) return absl::InternalError(absl::StrFormat("%s: read error", path));
  return absl::OkStatus();
}

// sha256 over the files in order, as one stream.
absl::StatusOr<std::string> HashFiles(const std::vector<std::string>& paths) {
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  if (ctx == nullptr || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    return absl::InternalError("sha256: cannot initialise OpenSSL's digest");
  }
  for (const std::string& p : paths) ADORE_RETURN_IF_ERROR(HashInto(ctx.get(), p));
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), md, &len) != 1 || len != 32) return absl::InternalError("sha256: digest failed");
  std::string hex;
  hex.reserve(64);
  for (unsigned int i = 0; i < len; ++i) absl::StrAppendFormat(&hex, "%02x", md[i]);
  return hex;
}

}  // namespace

absl::StatusOr<std::string> ParseSha256Hex(std::string_view hex, std::string_view what) {
  std::string out = absl::AsciiStrToLower(std::string(hex));
  const bool ok = out.size() == 64 && std::all_of(out.begin(), out.end(), [](char c) {
                    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
                  });
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: '%s' is not a sha256 digest (64 hex digits)", std::string(what), std::string(hex)));
  }
  return out;
}

absl::StatusOr<std::string> Sha256File(const std::string& path) { return HashFiles({path}); }

absl::StatusOr<std::string> ModelSha256(const std::string& model_path) {
  std::error_code ec;
  const std::filesystem::path root(model_path);
  if (!std::filesystem::exists(root, ec)) return absl::NotFoundError(absl::StrFormat("%s: no such file", model_path));
  if (!std::filesystem::is_directory(root, ec)) return HashFiles({model_path});
  std::vector<std::string> names;
  for (std::filesystem::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;
    if (it->is_regular_file(type_ec)) names.push_back(it->path().filename().string());
  }
  if (ec) return absl::NotFoundError(absl::StrFormat("%s: cannot list the directory", model_path));
  std::sort(names.begin(), names.end());  // byte order, as LC_ALL=C sort
  std::vector<std::string> paths;
  for (const std::string& n : names) paths.push_back((root / n).string());
  return HashFiles(paths);
}

absl::StatusOr<std::string> VerifyModelSha256(const std::string& model_path, const std::string& expected) {
  ADORE_ASSIGN_OR_RETURN(std::string actual, ModelSha256(model_path));
  if (actual != expected) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s has sha256 %s, expected %s", model_path, actual, expected));
  }
  return actual;
}

}  // namespace adore
