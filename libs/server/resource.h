// Helpers for AIP-style resources shared by the services: update masks and
// etags.
#ifndef CONNECTING_LIBS_SERVER_RESOURCE_H_
#define CONNECTING_LIBS_SERVER_RESOURCE_H_

#include <google/protobuf/field_mask.pb.h>
#include <google/protobuf/util/field_mask_util.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "libs/server/validate.h"

namespace connecting::server {

// ABORTED naming the current etag: the caller must read again.
absl::Status StaleEtag(const char* what, const std::string& current);
// OK when `given` is empty or matches `current`.
absl::Status CheckEtag(const char* what, const std::string& given, const std::string& current);

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

// An update by field mask (AIP-134) inside the caller's transaction, once
// `current` has been read FOR UPDATE and the caller may change it. The etag
// of `in` must be current's (ABORTED naming it otherwise); the masked fields
// of `in` are laid over `current` and `check(merged)` judges the result (its
// FieldErrors, and any rule on the whole) and may normalise it (trimmed text):
// what changed is judged after that. When no masked field changes, `*out` is
// `current` and nothing is written or emitted; otherwise `write(merged)`
// stores it (absl::StatusOr<T>) and `emit(*out, changed)` writes its event,
// `changed` being the masked paths whose values changed.
template <class T, class Check, class Write, class Emit>
absl::Status UpdateByMask(const char* what, const T& in, const google::protobuf::FieldMask& mask,
                          T current, Check check, Write write, Emit emit, T* out) {
  if (in.etag() != current.etag()) return StaleEtag(what, current.etag());
  T merged = current;
  ApplyMask(in, mask, &merged);
  if (absl::Status s = check(merged); !s.ok()) return s;
  const std::vector<std::string> changed = ApplyMask(merged, mask, &current);
  if (changed.empty()) {
    *out = std::move(current);
    return absl::OkStatus();
  }
  absl::StatusOr<T> updated = write(std::as_const(merged));
  if (!updated.ok()) return updated.status();
  *out = *std::move(updated);
  return emit(std::as_const(*out), changed);
}

// UpdateByMask's `check` when the rules are one validator filling FieldErrors
// (its field paths under `prefix`, e.g. "participant").
template <class T>
auto ValidatedBy(void (*validate)(FieldErrors&, const std::string&, T&), std::string prefix) {
  return [validate, prefix = std::move(prefix)](T& merged) {
    FieldErrors errors;
    validate(errors, prefix, merged);
    return errors.ToStatus();
  };
}

// The `<resource>.updated` event of an update by mask: the resource as it is
// now (`resource` names the event's field, e.g.
// &ev::ParticipantUpdated::mutable_participant) and the paths that changed.
template <class Event, class T>
Event UpdatedEvent(T* (Event::*resource)(), const T& updated,
                   const std::vector<std::string>& changed) {
  Event event;
  *(event.*resource)() = updated;
  for (const std::string& path : changed) event.add_changed_fields(path);
  return event;
}

// What a create request asked for: the SHA-256 of `m`'s fields named by
// `paths` (top-level fields, as an update mask names them), serialized
// deterministically, in hex. Stored with the resource a request_id made
// (a `request_digest` column), so that a retry (the same fields, normalised
// alike) is told from another request under the same key: AIP-155 asks
// for an error then, not the first request's resource. Fields a resource
// may change later are in it too; the digest is of the request, not of
// the resource as it is now.
std::string RequestDigest(const google::protobuf::Message& m,
                          const std::vector<std::string>& paths);
// Whether a request whose digest is `digest` could have made the resource
// stored with `stored`: the same digest, or none stored (made before the
// digest was kept, or by a release that kept none): nothing to compare.
inline bool SameRequest(absl::string_view stored, absl::string_view digest) {
  return stored.empty() || stored == digest;
}

// ALREADY_EXISTS, reason REQUEST_ID_REUSED: `request_id` already made a
// `what` ("participant", "session"…) that this request could not have made.
// A key names one request; the caller gets an error, not another request's
// resource as if it were the one asked for.
absl::Status RequestIdReused(absl::string_view what);

// Idempotent creation by a client request_id (AIP-155), inside the caller's
// transaction. With a request_id, `lookup()` first returns what an earlier call
// made; otherwise `insert()` runs (its checks, then an INSERT … ON CONFLICT
// (request_id) DO NOTHING returning nullopt when a concurrent call with the same
// request_id won, in which case that call's resource is looked up). Both
// return absl::StatusOr<std::optional<T>>. What an earlier call made is
// returned only if `same(prior)` (a bool) says this request could have made
// it: its fields that never change (who it is for, its parent, a staff
// number) are the request's; else RequestIdReused(what). Sets `*out` and
// returns true when this call created it (so it emits the event), false when
// an earlier one did.
template <class T, class Lookup, class Insert, class Same>
absl::StatusOr<bool> CreateOnce(const std::string& request_id, absl::string_view what,
                                Lookup lookup, Insert insert, Same same, T* out) {
  auto earlier = [&]() -> absl::StatusOr<bool> {  // true: it was there
    absl::StatusOr<std::optional<T>> prior = lookup();
    if (!prior.ok()) return prior.status();
    if (!prior->has_value()) return false;
    if (!same(static_cast<const T&>(**prior))) return RequestIdReused(what);
    *out = **std::move(prior);
    return true;
  };
  if (!request_id.empty()) {
    absl::StatusOr<bool> found = earlier();
    if (!found.ok()) return found.status();
    if (*found) return false;
  }
  absl::StatusOr<std::optional<T>> created = insert();
  if (!created.ok()) return created.status();
  if (created->has_value()) {
    *out = **created;
    return true;
  }
  absl::StatusOr<bool> found = earlier();
  if (!found.ok()) return found.status();
  if (!*found) return absl::AbortedError("request_id race; retry");
  return false;
}

}  // namespace connecting::server

#endif  // CONNECTING_LIBS_SERVER_RESOURCE_H_
