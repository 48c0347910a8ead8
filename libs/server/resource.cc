#include "libs/server/resource.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <openssl/sha.h>

#include <algorithm>
#include <memory>
#include <set>

#include "absl/strings/escaping.h"
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

std::string RequestDigest(const google::protobuf::Message& m,
                          const std::vector<std::string>& paths) {
  google::protobuf::FieldMask mask;
  for (const std::string& p : paths) mask.add_paths(p);
  std::unique_ptr<google::protobuf::Message> only(m.New());
  google::protobuf::util::FieldMaskUtil::MergeMessageTo(m, mask, {}, only.get());
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream out(&bytes);
    google::protobuf::io::CodedOutputStream coded(&out);
    coded.SetSerializationDeterministic(true);
    only->SerializeToCodedStream(&coded);
  }
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), digest);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof digest));
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
