#include "libs/server/strict_parse.h"

#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/unknown_field_set.h>

#include <mutex>

namespace connecting::server {
namespace {

// The largest field number protobuf allows; no API message uses it.
constexpr int kMalformedMarker = 536870911;

thread_local std::string* t_capture = nullptr;

void CaptureLog(google::protobuf::LogLevel level, const char* filename, int line,
                const std::string& message) {
  if (t_capture != nullptr) {
    *t_capture = message;
    return;
  }
  if (level >= google::protobuf::LOGLEVEL_WARNING) {
    fprintf(stderr, "[protobuf %s:%d] %s\n", filename, line, message.c_str());
  }
}

std::string Describe(const std::string& log_line) {
  // "String field 'pkg.Msg.field' contains invalid UTF-8 data when parsing ..."
  size_t a = log_line.find('\'');
  size_t b = a == std::string::npos ? a : log_line.find('\'', a + 1);
  if (log_line.find("UTF-8") != std::string::npos && b != std::string::npos) {
    return "field " + log_line.substr(a + 1, b - a - 1) + ": must be valid UTF-8 text";
  }
  return "request: not a valid protocol buffer message";
}

}  // namespace

grpc::Status ParseRequestStrictly(grpc::ByteBuffer* buffer, google::protobuf::Message* msg) {
  static std::once_flag once;
  std::call_once(once, [] { google::protobuf::SetLogHandler(&CaptureLog); });
  std::string captured;
  t_capture = &captured;
  grpc::Status s =
      grpc::GenericDeserialize<grpc::ProtoBufferReader, google::protobuf::Message>(buffer, msg);
  t_capture = nullptr;
  if (s.ok()) return s;
  msg->Clear();
  msg->GetReflection()->MutableUnknownFields(msg)->AddLengthDelimited(kMalformedMarker,
                                                                      Describe(captured));
  return grpc::Status::OK;
}

std::optional<std::string> MalformedReason(const google::protobuf::Message& msg) {
  const google::protobuf::UnknownFieldSet& unknown = msg.GetReflection()->GetUnknownFields(msg);
  for (int i = 0; i < unknown.field_count(); ++i) {
    const auto& f = unknown.field(i);
    if (f.number() == kMalformedMarker &&
        f.type() == google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) {
      return f.length_delimited();
    }
  }
  return std::nullopt;
}

}  // namespace connecting::server
