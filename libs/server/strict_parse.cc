#include "libs/server/strict_parse.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/stubs/common.h>
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/unknown_field_set.h>

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "libs/common/log.h"

namespace connecting::server {
namespace {

// The largest field numbers protobuf allows; no API message uses them.
constexpr int kMalformedMarker = 536870911;  // the rule broken
constexpr int kMalformedField = 536870910;   // the field's path, when known

thread_local std::string* t_capture = nullptr;

void CaptureLog(google::protobuf::LogLevel level, const char* filename, int line,
                const std::string& message) {
  if (t_capture != nullptr) {
    *t_capture = message;
    return;
  }
  // Otherwise a JSON line like every other (protobuf's default handler
  // writes its own format to stderr).
  if (level >= google::protobuf::LOGLEVEL_WARNING) {
    log::Write(level >= google::protobuf::LOGLEVEL_ERROR ? log::Level::kError : log::Level::kWarn,
               message, {{"source", "protobuf"}, {"at", absl::StrCat(filename, ":", line)}});
  }
}

std::string Describe(const std::string& log_line) {
  // "String field 'pkg.Msg.field' contains invalid UTF-8 data when parsing ..."
  size_t a = log_line.find('\'');
  size_t b = a == std::string::npos ? a : log_line.find('\'', a + 1);
  if (log_line.find("UTF-8") != std::string::npos && b != std::string::npos) {
    return "field " + log_line.substr(a + 1, b - a - 1) + ": must be valid UTF-8 text";
  }
  return "the request is not a valid protocol buffer message";
}

// The path from the request to the first string field holding invalid UTF-8
// in `bytes`, a message of `type` ("session.sites[1].name"); "" if none is
// found (bytes that are not a message at all).
std::string InvalidUtf8Path(const std::string& bytes, const google::protobuf::Descriptor* type,
                            int depth) {
  using google::protobuf::FieldDescriptor;
  using google::protobuf::UnknownField;
  google::protobuf::UnknownFieldSet fields;
  if (depth > 32 || !fields.ParseFromString(bytes)) return "";
  std::map<int, int> occurrences;  // so far, by field number: a repeated field's index
  for (int i = 0; i < fields.field_count(); ++i) {
    const UnknownField& f = fields.field(i);
    const int index = occurrences[f.number()]++;
    const FieldDescriptor* fd = type->FindFieldByNumber(f.number());
    if (fd == nullptr || f.type() != UnknownField::TYPE_LENGTH_DELIMITED) continue;
    std::string name = fd->name();
    if (fd->is_repeated()) name += "[" + std::to_string(index) + "]";
    if (fd->type() == FieldDescriptor::TYPE_STRING &&
        !google::protobuf::internal::IsStructurallyValidUTF8(f.length_delimited())) {
      return name;
    }
    if (fd->type() == FieldDescriptor::TYPE_MESSAGE) {
      std::string inner = InvalidUtf8Path(f.length_delimited(), fd->message_type(), depth + 1);
      if (!inner.empty()) return name + "." + inner;
    }
  }
  return "";
}

}  // namespace

void RouteProtobufLogs() {
  static std::once_flag once;
  std::call_once(once, [] { google::protobuf::SetLogHandler(&CaptureLog); });
}

grpc::Status ParseRequestStrictly(grpc::ByteBuffer* buffer, google::protobuf::Message* msg) {
  RouteProtobufLogs();
  std::string captured;
  t_capture = &captured;
  grpc::ByteBuffer kept(*buffer);  // shares the slices; parsing empties `buffer`
  grpc::Status s =
      grpc::GenericDeserialize<grpc::ProtoBufferReader, google::protobuf::Message>(buffer, msg);
  t_capture = nullptr;
  if (s.ok()) return s;
  msg->Clear();
  // The field by its path from the request, as every other INVALID_ARGUMENT
  // names it ("session.title: …"); protobuf's log names only its type.
  std::string field, rule;
  std::vector<grpc::Slice> slices;
  if (kept.Dump(&slices).ok()) {
    std::string bytes;
    for (const grpc::Slice& slice : slices) {
      bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    }
    field = InvalidUtf8Path(bytes, msg->GetDescriptor(), 0);
    if (!field.empty()) rule = "must be valid UTF-8 text";
  }
  if (rule.empty()) rule = Describe(captured);
  auto* unknown = msg->GetReflection()->MutableUnknownFields(msg);
  unknown->AddLengthDelimited(kMalformedMarker, rule);
  if (!field.empty()) unknown->AddLengthDelimited(kMalformedField, field);
  return grpc::Status::OK;
}

std::optional<MalformedRequest> MalformedReason(const google::protobuf::Message& msg) {
  const google::protobuf::UnknownFieldSet& unknown = msg.GetReflection()->GetUnknownFields(msg);
  std::optional<MalformedRequest> out;
  for (int i = 0; i < unknown.field_count(); ++i) {
    const auto& f = unknown.field(i);
    if (f.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) continue;
    if (f.number() == kMalformedMarker) {
      if (!out) out.emplace();
      out->rule = f.length_delimited();
    } else if (f.number() == kMalformedField) {
      if (!out) out.emplace();
      out->field = f.length_delimited();
    }
  }
  return out;
}

}  // namespace connecting::server
