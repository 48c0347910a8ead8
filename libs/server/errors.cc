#include "libs/server/errors.h"

#include <grpcpp/support/status.h>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace connecting::server {
namespace {

// Payload keys; a payload never leaves the process (DetailedStatus sends
// what it holds as details).
constexpr char kReasonPayload[] = "connecting.server/reason";
constexpr char kViolationsPayload[] = "type.googleapis.com/google.rpc.BadRequest";

}  // namespace

absl::Status WithReason(absl::Status status, absl::string_view reason) {
  if (!status.ok()) status.SetPayload(kReasonPayload, absl::Cord(reason));
  return status;
}

std::string ReasonOf(const absl::Status& status) {
  auto p = status.GetPayload(kReasonPayload);
  return p ? std::string(*p) : std::string();
}

absl::Status Refusal(absl::string_view reason, absl::string_view message) {
  return WithReason(absl::FailedPreconditionError(message), reason);
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

grpc::Status DetailedStatus(const absl::Status& status, absl::string_view domain) {
  const int code = static_cast<int>(status.code());
  const std::string message(status.message());
  google::rpc::Status details;
  details.set_code(code);
  details.set_message(message);
  if (std::string reason = ReasonOf(status); !reason.empty()) {
    google::rpc::ErrorInfo info;
    info.set_reason(std::move(reason));
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
  if (details.details_size() == 0)
    return grpc::Status(static_cast<grpc::StatusCode>(code), message);
  return grpc::Status(static_cast<grpc::StatusCode>(code), message, details.SerializeAsString());
}

}  // namespace connecting::server
