// NOT_FOUND that names the resource it did not find, so that the error's
// details can say which of a request's ids it was (google.rpc.ResourceInfo,
// libs/server/errors.h): BookSession names a participant and a session.
#ifndef CONNECTING_LIBS_COMMON_NOT_FOUND_H_
#define CONNECTING_LIBS_COMMON_NOT_FOUND_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace connecting {

inline constexpr char kNotFoundPayload[] = "connecting/not-found";  // "<type>\n<id>"

// NOT_FOUND "<type> <id> not found" carrying `type` ("session") and `id`.
inline absl::Status NotFound(absl::string_view type, absl::string_view id) {
  absl::Status s = absl::NotFoundError(absl::StrCat(type, " ", id, " not found"));
  s.SetPayload(kNotFoundPayload, absl::Cord(absl::StrCat(type, "\n", id)));
  return s;
}

// The type and id a NotFound status carries; false for any other status.
inline bool NotFoundResource(const absl::Status& s, std::string* type, std::string* id) {
  auto p = s.GetPayload(kNotFoundPayload);
  if (!p) return false;
  std::string v(*p);
  size_t nl = v.find('\n');
  if (nl == std::string::npos) return false;
  *type = v.substr(0, nl);
  *id = v.substr(nl + 1);
  return true;
}

}  // namespace connecting

#endif  // CONNECTING_LIBS_COMMON_NOT_FOUND_H_
