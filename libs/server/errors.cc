#include "libs/server/errors.h"

#include <grpcpp/support/status.h>

#include <algorithm>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "libs/common/not_found.h"

namespace connecting::server {
namespace {

// Payload keys, each holding that message serialised; a payload never
// leaves the process (DetailedStatus sends what it holds as details).
constexpr char kReasonPayload[] = "type.googleapis.com/google.rpc.ErrorInfo";
constexpr char kViolationsPayload[] = "type.googleapis.com/google.rpc.BadRequest";

// The ErrorInfo WithReason attached (no domain: DetailedStatus adds it).
bool AttachedInfo(const absl::Status& status, google::rpc::ErrorInfo* info) {
  auto p = status.GetPayload(kReasonPayload);
  return p && info->ParseFromString(std::string(*p));
}

}  // namespace

absl::Status WithDefaultReason(absl::Status s) {
  if (s.ok() || s.GetPayload(kReasonPayload)) return s;
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
      return s.GetPayload(kViolationsPayload) ? WithReason(s, "FIELD_INVALID")
                                              : WithReason(s, "REQUEST_MALFORMED");
    case absl::StatusCode::kNotFound: {
      std::string type, id;
      if (!NotFoundResource(s, &type, &id)) return WithReason(s, "RESOURCE_NOT_FOUND");
      return WithReason(s, "RESOURCE_NOT_FOUND", {{"resourceType", type}, {"resourceName", id}});
    }
    case absl::StatusCode::kPermissionDenied:
      return WithReason(s, "NOT_PERMITTED");
    case absl::StatusCode::kAlreadyExists:
      return WithReason(s, "RESOURCE_EXISTS");
    case absl::StatusCode::kFailedPrecondition:
      return WithReason(s, "PRECONDITION_FAILED");
    case absl::StatusCode::kAborted:
      return WithReason(s, "CONCURRENT_CHANGE");
    case absl::StatusCode::kUnavailable:
      return WithReason(s, "DEPENDENCY_UNAVAILABLE");
    case absl::StatusCode::kDeadlineExceeded:
      return WithReason(s, "DEADLINE_EXCEEDED");
    case absl::StatusCode::kResourceExhausted:
      // The executor's queue, a lane's waiters, the pool's connections: all
      // this server's capacity (a request too large never reaches us).
      return WithReason(s, "SERVER_AT_CAPACITY");
    case absl::StatusCode::kCancelled:
      return WithReason(s, "REQUEST_CANCELLED");
    case absl::StatusCode::kUnauthenticated:
      return WithReason(s, "TOKEN_INVALID");
    default:  // INTERNAL, UNKNOWN, DATA_LOSS; no method answers any other code
      return WithReason(s, "INTERNAL_ERROR");
  }
}

absl::Status WithReason(absl::Status status, absl::string_view reason,
                        const ErrorMetadata& metadata) {
  if (status.ok()) return status;
  google::rpc::ErrorInfo info;
  info.set_reason(std::string(reason));
  for (const auto& [key, value] : metadata) (*info.mutable_metadata())[key] = value;
  status.SetPayload(kReasonPayload, absl::Cord(info.SerializeAsString()));
  return status;
}

std::string ReasonOf(const absl::Status& status) {
  google::rpc::ErrorInfo info;
  return AttachedInfo(status, &info) ? info.reason() : std::string();
}

ErrorMetadata MetadataOf(const absl::Status& status) {
  google::rpc::ErrorInfo info;
  if (!AttachedInfo(status, &info)) return {};
  ErrorMetadata out(info.metadata().begin(), info.metadata().end());
  std::sort(out.begin(), out.end());
  return out;
}

absl::Status Refusal(absl::string_view reason, absl::string_view message,
                     const ErrorMetadata& metadata) {
  return WithReason(absl::FailedPreconditionError(message), reason, metadata);
}

absl::Status FieldError(absl::string_view field, absl::string_view rule) {
  return FieldErrorsStatus({{std::string(field), std::string(rule)}});
}

absl::Status FieldErrorsStatus(const std::vector<FieldViolation>& violations) {
  if (violations.empty()) return absl::OkStatus();
  std::string message;
  google::rpc::BadRequest bad;
  for (const FieldViolation& v : violations) {
    absl::StrAppend(&message, message.empty() ? "" : "; ", v.field, ": ", v.rule);
    auto* out = bad.add_field_violations();
    out->set_field(v.field);
    out->set_description(v.rule);
  }
  absl::Status status = absl::InvalidArgumentError(message);
  status.SetPayload(kViolationsPayload, absl::Cord(bad.SerializeAsString()));
  return status;
}

std::vector<FieldViolation> FieldViolationsOf(const absl::Status& status) {
  std::vector<FieldViolation> out;
  auto p = status.GetPayload(kViolationsPayload);
  google::rpc::BadRequest bad;
  if (!p || !bad.ParseFromString(std::string(*p))) return out;
  for (const auto& v : bad.field_violations()) out.push_back({v.field(), v.description()});
  return out;
}

std::string ReasonIn(const grpc::Status& status) {
  if (status.error_details().empty()) return "";
  google::rpc::Status details;
  if (!details.ParseFromString(status.error_details())) return "";
  google::rpc::ErrorInfo info;
  for (const google::protobuf::Any& any : details.details()) {
    if (any.UnpackTo(&info)) return info.reason();
  }
  return "";
}

grpc::Status DetailedStatus(const absl::Status& given, absl::string_view domain) {
  if (given.ok()) return grpc::Status::OK;
  const absl::Status status = WithDefaultReason(given);
  const int code = static_cast<int>(status.code());
  const std::string message(status.message());
  google::rpc::Status details;
  details.set_code(code);
  details.set_message(message);
  if (google::rpc::ErrorInfo info; AttachedInfo(status, &info) && !info.reason().empty()) {
    info.set_domain(std::string(domain));
    details.add_details()->PackFrom(info);
  }
  if (code == static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT)) {
    if (auto bad = status.GetPayload(kViolationsPayload)) {
      google::protobuf::Any* any = details.add_details();
      any->set_type_url(kViolationsPayload);
      any->set_value(std::string(*bad));
    }
  }
  if (std::string type, id; NotFoundResource(status, &type, &id)) {
    google::rpc::ResourceInfo info;
    info.set_resource_type(std::move(type));
    info.set_resource_name(std::move(id));
    details.add_details()->PackFrom(info);
  }
  return grpc::Status(static_cast<grpc::StatusCode>(code), message, details.SerializeAsString());
}

}  // namespace connecting::server
