#include "libs/server/resource.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_join.h"
#include "libs/server/errors.h"

namespace connecting::server {

void ValidateMask(FieldErrors& errors, const google::protobuf::FieldMask& mask,
                  const std::vector<std::string>& allowed) {
  if (mask.paths_size() == 0) {
    errors.Add("update_mask", absl::StrCat("is required: name the fields to change among ",
                                           absl::StrJoin(allowed, ", ")));
    return;
  }
  std::set<std::string> seen;
  for (const std::string& path : mask.paths()) {
    if (std::find(allowed.begin(), allowed.end(), path) == allowed.end()) {
      errors.Add("update_mask", absl::StrCat("\"", path, "\" is not an updatable field (",
                                             absl::StrJoin(allowed, ", "), ")"));
      return;
    }
    if (!seen.insert(path).second) {
      errors.Add("update_mask", absl::StrCat("\"", path, "\" is named twice"));
      return;
    }
  }
}

absl::Status StaleEtag(const char* what, const std::string& current) {
  return WithReason(absl::AbortedError(absl::StrCat(
                        "etag: the ", what, " changed since you read it (current etag ", current,
                        "); read it again and reapply your change")),
                    "ETAG_MISMATCH", {{"etag", current}});
}

absl::Status RequestIdReused(absl::string_view what) {
  return WithReason(absl::AlreadyExistsError(absl::StrCat(
                        "request_id: already used for another request, whose ", what,
                        " this one could not have made (a request_id names one request)")),
                    "REQUEST_ID_REUSED");
}

absl::Status CheckEtag(const char* what, const std::string& given, const std::string& current) {
  if (!given.empty() && given != current) return StaleEtag(what, current);
  return absl::OkStatus();
}

}  // namespace connecting::server
