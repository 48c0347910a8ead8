// Opaque, tamper-proof page tokens for keyset pagination.
//
// A token carries the sort key of the last row served, signed (HMAC-SHA256)
// together with a "scope": the method and the filters of the request. A token
// that was altered, forged, or is replayed with different filters fails with
// INVALID_ARGUMENT "page_token: ...", never silently skipping rows.
#ifndef CONNECTING_LIBS_SERVER_PAGE_TOKEN_H_
#define CONNECTING_LIBS_SERVER_PAGE_TOKEN_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace connecting::server {

class PageTokens {
 public:
  explicit PageTokens(std::string key) : key_(std::move(key)) {}
  std::string Encode(absl::string_view scope, const std::vector<std::string>& key_values) const;
  absl::StatusOr<std::vector<std::string>> Decode(absl::string_view scope,
                                                  absl::string_view token) const;

 private:
  std::string Mac(absl::string_view scope, absl::string_view payload) const;
  std::string key_;
};

}  // namespace connecting::server

#endif  // CONNECTING_LIBS_SERVER_PAGE_TOKEN_H_
