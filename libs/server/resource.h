// Helpers for AIP-style resources shared by the services: update masks and
// etags.
#ifndef CONNECTING_LIBS_SERVER_RESOURCE_H_
#define CONNECTING_LIBS_SERVER_RESOURCE_H_

#include <google/protobuf/field_mask.pb.h>
#include <google/protobuf/util/field_mask_util.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "libs/server/validate.h"

namespace connecting::server {

// Checks a mask: non-empty, only `allowed` paths, none twice.
void ValidateMask(FieldErrors& errors, const google::protobuf::FieldMask& mask,
                  const std::vector<std::string>& allowed);

// Copies the masked fields of `from` onto `to` (repeated fields replaced) and
// returns the paths whose values actually changed.
template <class T>
std::vector<std::string> ApplyMask(const T& from, const google::protobuf::FieldMask& mask, T* to) {
  using google::protobuf::util::FieldMaskUtil;
  T before = *to;
  FieldMaskUtil::MergeOptions opts;
  opts.set_replace_repeated_fields(true);
  opts.set_replace_message_fields(true);
  FieldMaskUtil::MergeMessageTo(from, mask, opts, to);
  std::vector<std::string> changed;
  for (const std::string& path : mask.paths()) {
    google::protobuf::FieldMask one;
    one.add_paths(path);
    T a = before, b = *to;
    FieldMaskUtil::TrimMessage(one, &a);
    FieldMaskUtil::TrimMessage(one, &b);
    if (a.SerializeAsString() != b.SerializeAsString()) changed.push_back(path);
  }
  return changed;
}

// Idempotent creation by a client request_id (AIP-155), inside the caller's
// transaction. With a request_id, `lookup()` first returns what an earlier call
// made; otherwise `insert()` runs (its checks, then an INSERT … ON CONFLICT
// (request_id) DO NOTHING returning nullopt when a concurrent call with the same
// request_id won, in which case that call's resource is looked up). Both
// return absl::StatusOr<std::optional<T>>. Sets `*out` and returns true when
// this call created it (so it emits the event), false when an earlier one did.
template <class T, class Lookup, class Insert>
absl::StatusOr<bool> CreateOnce(const std::string& request_id, Lookup lookup, Insert insert,
                                T* out) {
  if (!request_id.empty()) {
    absl::StatusOr<std::optional<T>> prior = lookup();
    if (!prior.ok()) return prior.status();
    if (prior->has_value()) {
      *out = **prior;
      return false;
    }
  }
  absl::StatusOr<std::optional<T>> created = insert();
  if (!created.ok()) return created.status();
  if (created->has_value()) {
    *out = **created;
    return true;
  }
  absl::StatusOr<std::optional<T>> prior = lookup();
  if (!prior.ok()) return prior.status();
  if (!prior->has_value()) return absl::AbortedError("request_id race; retry");
  *out = **prior;
  return false;
}

// ABORTED naming the current etag: the caller must read again.
absl::Status StaleEtag(const char* what, const std::string& current);
// OK when `given` is empty or matches `current`.
absl::Status CheckEtag(const char* what, const std::string& given, const std::string& current);

}  // namespace connecting::server

#endif  // CONNECTING_LIBS_SERVER_RESOURCE_H_
