#include "libs/server/errors.h"

#include <grpcpp/support/status.h>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_split.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace connecting::server {
namespace {

constexpr char kReasonPayload[] = "connecting.server/reason";

// A field path as the messages write it: lower-case names joined by dots,
// each optionally indexed ("session.sites[0].capacity").
size_t FieldPathEnd(absl::string_view s) {
  size_t i = 0;
  while (true) {
    size_t start = i;
    while (i < s.size() && (absl::ascii_islower(s[i]) || absl::ascii_isdigit(s[i]) || s[i] == '_'))
      ++i;
    if (i == start || absl::ascii_isdigit(s[start])) return 0;
    if (i < s.size() && s[i] == '[') {
      size_t j = i + 1;
      while (j < s.size() && absl::ascii_isdigit(s[j])) ++j;
      if (j == i + 1 || j >= s.size() || s[j] != ']') return 0;
      i = j + 1;
    }
    if (i < s.size() && s[i] == '.') {
      ++i;
      continue;
    }
    return i;
  }
}

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

std::vector<std::pair<std::string, std::string>> FieldViolations(absl::string_view message) {
  std::vector<std::pair<std::string, std::string>> out;
  for (absl::string_view part : absl::StrSplit(message, "; ")) {
    size_t end = FieldPathEnd(part);
    if (end > 0 && part.substr(end, 2) == ": ") {
      out.emplace_back(std::string(part.substr(0, end)), std::string(part.substr(end + 2)));
    } else if (!out.empty()) {
      out.back().second.append("; ").append(part.data(), part.size());
    } else {
      return {};
    }
  }
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
    auto fields = FieldViolations(message);
    if (!fields.empty()) {
      google::rpc::BadRequest bad;
      for (auto& [field, rule] : fields) {
        auto* v = bad.add_field_violations();
        v->set_field(std::move(field));
        v->set_description(std::move(rule));
      }
      details.add_details()->PackFrom(bad);
    }
  }
  if (details.details_size() == 0)
    return grpc::Status(static_cast<grpc::StatusCode>(code), message);
  return grpc::Status(static_cast<grpc::StatusCode>(code), message, details.SerializeAsString());
}

}  // namespace connecting::server
