// Machine-readable errors (AIP-193). Besides its code and message, an error
// a service returns carries a google.rpc.Status in the
// `grpc-status-details-bin` trailer (what grpc::Status::error_details()
// gives a C++ client) with:
//  - always, one google.rpc.ErrorInfo {reason, domain "connecting.<service>",
//    metadata}: a stable UPPER_SNAKE_CASE reason a client can act on, the
//    refusal's own (PARTNER_NOT_ACTIVE, ETAG_MISMATCH, ALREADY_IN_STATE, …)
//    or the one its code implies (WithDefaultReason), listed in the README
//    with its metadata keys (the ids and states the message names:
//    "bookingId", "status"); a reason, once given, is never renamed;
//  - google.rpc.BadRequest for INVALID_ARGUMENT: one field violation per
//    field the request broke, each with its rule, so a form can mark each
//    field. They travel with the status from where the rule was checked
//    (FieldError, FieldErrors::ToStatus), never read back from the message,
//    which says the same for people ("a.b: rule; c: rule").
//  - google.rpc.ResourceInfo for NOT_FOUND made by connecting::NotFound
//    (libs/common/not_found.h): resource_type "session", resource_name its
//    id, so that a program knows which of the request's ids it was.
#ifndef CONNECTING_LIBS_SERVER_ERRORS_H_
#define CONNECTING_LIBS_SERVER_ERRORS_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace grpc {
class Status;
}

namespace connecting::server {

// The facts of a named cause that a program may act on without reading the
// message (ErrorInfo.metadata, AIP-193): lowerCamelCase keys, text values,
// e.g. {"bookingId", id} for the booking that is in the way. Each reason's
// keys are listed in the README; a key, once sent, is never renamed.
using ErrorMetadata = std::vector<std::pair<std::string, std::string>>;

// `status` with `reason` (ErrorInfo.reason when sent) and its metadata.
absl::Status WithReason(absl::Status status, absl::string_view reason,
                        const ErrorMetadata& metadata = {});
// The reason attached by WithReason; empty if none.
std::string ReasonOf(const absl::Status& status);
// The metadata attached by WithReason, sorted by key.
ErrorMetadata MetadataOf(const absl::Status& status);

// FAILED_PRECONDITION with a reason: the rule the request met.
absl::Status Refusal(absl::string_view reason, absl::string_view message,
                     const ErrorMetadata& metadata = {});

// A field the request broke, and the rule it broke.
struct FieldViolation {
  std::string field;  // its path from the request: "session.sites[0].capacity"
  std::string rule;   // "must be 1–10000"
  bool operator==(const FieldViolation& o) const { return field == o.field && rule == o.rule; }
};

// INVALID_ARGUMENT "field: rule" carrying that violation.
absl::Status FieldError(absl::string_view field, absl::string_view rule);
// INVALID_ARGUMENT "f1: rule; f2: rule" carrying each violation; OK if none.
absl::Status FieldErrorsStatus(const std::vector<FieldViolation>& violations);
// The violations a status carries (empty for one made otherwise).
std::vector<FieldViolation> FieldViolationsOf(const absl::Status& status);

// The ErrorInfo reason in a gRPC status's details; "" if none.
std::string ReasonIn(const grpc::Status& status);

// `s` with the reason its code implies when the code that refused named none
// (FIELD_INVALID, RESOURCE_NOT_FOUND, NOT_PERMITTED, DEPENDENCY_UNAVAILABLE,
// INTERNAL_ERROR, …; the README lists them), so that every error a service
// sends carries exactly one ErrorInfo, as AIP-193 requires.
absl::Status WithDefaultReason(absl::Status s);

// `status` as gRPC sends it: its code and message, with the details above
// (its reason, or the default one, under `domain`; the field violations and
// the resource not found it carries).
grpc::Status DetailedStatus(const absl::Status& status, absl::string_view domain);

}  // namespace connecting::server

#endif  // CONNECTING_LIBS_SERVER_ERRORS_H_
