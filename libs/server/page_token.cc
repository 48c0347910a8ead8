#include "libs/server/page_token.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "libs/server/errors.h"

namespace connecting::server {
namespace {

constexpr char kSep = '\x1f';  // unit separator: never valid in stored text
constexpr size_t kMacBytes = 16;

}  // namespace

std::string PageTokens::Mac(absl::string_view scope, absl::string_view payload) const {
  std::string data = absl::StrCat(scope, std::string(1, '\0'), payload);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &len);
  return std::string(reinterpret_cast<char*>(out), kMacBytes);
}

std::string PageTokens::Encode(absl::string_view scope,
                               const std::vector<std::string>& key_values) const {
  std::string payload = absl::StrJoin(key_values, std::string(1, kSep));
  return absl::StrCat(absl::WebSafeBase64Escape(payload), ".",
                      absl::WebSafeBase64Escape(Mac(scope, payload)));
}

absl::StatusOr<std::vector<std::string>> PageTokens::Decode(absl::string_view scope,
                                                            absl::string_view token) const {
  auto bad = FieldError("page_token",
                        "is not a token this method issued for these filters; start again "
                        "without page_token");
  if (token.size() > 4096) return bad;
  std::vector<absl::string_view> parts = absl::StrSplit(token, '.');
  std::string payload, mac;
  if (parts.size() != 2 || !absl::WebSafeBase64Unescape(parts[0], &payload) ||
      !absl::WebSafeBase64Unescape(parts[1], &mac) || mac.size() != kMacBytes) {
    return bad;
  }
  std::string expected = Mac(scope, payload);
  if (CRYPTO_memcmp(expected.data(), mac.data(), kMacBytes) != 0) return bad;
  return std::vector<std::string>(absl::StrSplit(payload, kSep));
}

}  // namespace connecting::server
