#include "libs/bus/event_json.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/util/json_util.h>

#include <cstdint>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "libs/common/text.h"

namespace connecting::bus {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

constexpr char kHex[] = "0123456789abcdef";

void AppendEscape16(uint32_t unit, std::string* out) {
  char buf[6] = {'\\', 'u', kHex[(unit >> 12) & 15], kHex[(unit >> 8) & 15], kHex[(unit >> 4) & 15],
                 kHex[unit & 15]};
  out->append(buf, 6);
}

// The code points protobuf's JSON printer writes as \u escapes beyond the
// ASCII controls: C1 controls, and the invisible formatting characters.
bool EscapedAboveAscii(uint32_t cp) {
  return (cp >= 0x7f && cp <= 0x9f) || cp == 0xad || (cp >= 0x600 && cp <= 0x603) ||
         cp == 0x6dd || cp == 0x70f || cp == 0x17b4 || cp == 0x17b5 ||
         (cp >= 0x200b && cp <= 0x200f) || (cp >= 0x2028 && cp <= 0x202e) ||
         (cp >= 0x2060 && cp <= 0x2064) || (cp >= 0x206a && cp <= 0x206f) || cp == 0xfeff ||
         (cp >= 0xfff9 && cp <= 0xfffb) || (cp >= 0x1d173 && cp <= 0x1d17a) || cp == 0xe0001 || (cp >= 0xe0020 && cp <= 0xe007f);
}

// A quoted JSON string, escaped as protobuf escapes it; false on invalid UTF-8.
bool AppendString(absl::string_view s, std::string* out) {
  out->push_back('"');
  size_t i = 0;
  while (i < s.size()) {
    // Runs of plain ASCII go in one append.
    size_t run = i;
    while (run < s.size()) {
      unsigned char c = static_cast<unsigned char>(s[run]);
      if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>') break;
      ++run;
    }
    out->append(s.data() + i, run - i);
    i = run;
    if (i == s.size()) break;
    size_t start = i;
    uint32_t cp;
    if (!text::DecodeUtf8(s, &i, &cp)) return false;
    switch (cp) {
      case '"': out->append("\\\""); continue;
      case '\\': out->append("\\\\"); continue;
      case '\b': out->append("\\b"); continue;
      case '\f': out->append("\\f"); continue;
      case '\n': out->append("\\n"); continue;
      case '\r': out->append("\\r"); continue;
      case '\t': out->append("\\t"); continue;
      default: break;
    }
    if (cp < 0x20 || cp == '<' || cp == '>' || EscapedAboveAscii(cp)) {
      if (cp >= 0x10000) {
        AppendEscape16(0xd800 + ((cp - 0x10000) >> 10), out);
        AppendEscape16(0xdc00 + ((cp - 0x10000) & 0x3ff), out);
      } else {
        AppendEscape16(cp, out);
      }
    } else {
      out->append(s.data() + start, i - start);
    }
  }
  out->push_back('"');
  return true;
}

// Days since 1970-01-01 → civil date (proleptic Gregorian).
void CivilFromDays(int64_t z, int64_t* y, unsigned* m, unsigned* d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = static_cast<int64_t>(yoe) + era * 400 + (*m <= 2);
}

void AppendDigits(uint64_t v, int width, std::string* out) {
  char buf[24];
  int n = 0;
  do {
    buf[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v > 0 || n < width);
  while (n > 0) out->push_back(buf[--n]);
}

// google.protobuf.Timestamp as protobuf prints it: 0, 3, 6 or 9 fractional
// digits. False outside 0001-01-01..9999-12-31 (protobuf refuses those).
bool AppendTimestamp(const Message& m, std::string* out) {
  const Descriptor* d = m.GetDescriptor();
  const Reflection* r = m.GetReflection();
  const FieldDescriptor* fs = d->FindFieldByNumber(1);
  const FieldDescriptor* fn = d->FindFieldByNumber(2);
  if (fs == nullptr || fn == nullptr) return false;
  int64_t seconds = r->GetInt64(m, fs);
  int32_t nanos = r->GetInt32(m, fn);
  if (seconds < -62135596800 || seconds > 253402300799 || nanos < 0 || nanos > 999999999) {
    return false;
  }
  int64_t days = seconds >= 0 ? seconds / 86400 : -((-seconds + 86399) / 86400);
  int64_t rem = seconds - days * 86400;
  int64_t y;
  unsigned mo, da;
  CivilFromDays(days, &y, &mo, &da);
  out->push_back('"');
  AppendDigits(static_cast<uint64_t>(y), 4, out);
  out->push_back('-');
  AppendDigits(mo, 2, out);
  out->push_back('-');
  AppendDigits(da, 2, out);
  out->push_back('T');
  AppendDigits(static_cast<uint64_t>(rem / 3600), 2, out);
  out->push_back(':');
  AppendDigits(static_cast<uint64_t>(rem / 60 % 60), 2, out);
  out->push_back(':');
  AppendDigits(static_cast<uint64_t>(rem % 60), 2, out);
  if (nanos != 0) {
    out->push_back('.');
    if (nanos % 1000000 == 0) {
      AppendDigits(static_cast<uint64_t>(nanos / 1000000), 3, out);
    } else if (nanos % 1000 == 0) {
      AppendDigits(static_cast<uint64_t>(nanos / 1000), 6, out);
    } else {
      AppendDigits(static_cast<uint64_t>(nanos), 9, out);
    }
  }
  out->append("Z\"");
  return true;
}

bool AppendMessage(const Message& m, std::string* out);

// One value of field `f` (element `index` if repeated, else -1).
bool AppendValue(const Message& m, const FieldDescriptor* f, int index, std::string* out) {
  const Reflection* r = m.GetReflection();
  const bool rep = index >= 0;
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      absl::StrAppend(out, rep ? r->GetRepeatedInt32(m, f, index) : r->GetInt32(m, f));
      return true;
    case FieldDescriptor::CPPTYPE_UINT32:
      absl::StrAppend(out, rep ? r->GetRepeatedUInt32(m, f, index) : r->GetUInt32(m, f));
      return true;
    case FieldDescriptor::CPPTYPE_INT64:
      absl::StrAppend(out, "\"", rep ? r->GetRepeatedInt64(m, f, index) : r->GetInt64(m, f),
                      "\"");
      return true;
    case FieldDescriptor::CPPTYPE_UINT64:
      absl::StrAppend(out, "\"", rep ? r->GetRepeatedUInt64(m, f, index) : r->GetUInt64(m, f),
                      "\"");
      return true;
    case FieldDescriptor::CPPTYPE_BOOL:
      out->append((rep ? r->GetRepeatedBool(m, f, index) : r->GetBool(m, f)) ? "true" : "false");
      return true;
    case FieldDescriptor::CPPTYPE_ENUM: {
      if (f->enum_type()->full_name() == "google.protobuf.NullValue") return false;
      int v = rep ? r->GetRepeatedEnumValue(m, f, index) : r->GetEnumValue(m, f);
      if (const auto* ev = f->enum_type()->FindValueByNumber(v)) {
        absl::StrAppend(out, "\"", ev->name(), "\"");
      } else {
        absl::StrAppend(out, v);
      }
      return true;
    }
    case FieldDescriptor::CPPTYPE_STRING: {
      std::string scratch;
      const std::string& s = rep ? r->GetRepeatedStringReference(m, f, index, &scratch)
                                 : r->GetStringReference(m, f, &scratch);
      if (f->type() == FieldDescriptor::TYPE_BYTES) {
        absl::StrAppend(out, "\"", absl::Base64Escape(s), "\"");
        return true;
      }
      return AppendString(s, out);
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return AppendMessage(rep ? r->GetRepeatedMessage(m, f, index) : r->GetMessage(m, f), out);
    default:  // float and double: left to protobuf's formatting
      return false;
  }
}

bool IsScalarWrapper(absl::string_view name) {
  return name == "google.protobuf.Int32Value" || name == "google.protobuf.UInt32Value" ||
         name == "google.protobuf.Int64Value" || name == "google.protobuf.UInt64Value" ||
         name == "google.protobuf.BoolValue" || name == "google.protobuf.StringValue" ||
         name == "google.protobuf.BytesValue";
}

bool AppendMessage(const Message& m, std::string* out) {
  const Descriptor* d = m.GetDescriptor();
  const Reflection* r = m.GetReflection();
  if (!r->GetUnknownFields(m).empty()) return false;
  if (d->file()->package() == "google.protobuf") {
    const std::string& name = d->full_name();
    if (name == "google.protobuf.Timestamp") return AppendTimestamp(m, out);
    if (IsScalarWrapper(name)) {
      const FieldDescriptor* v = d->FindFieldByNumber(1);
      return v != nullptr && AppendValue(m, v, -1, out);
    }
    if (name != "google.protobuf.Empty") return false;  // Any, Struct, Duration, ...
  }
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  out->push_back('{');
  bool first = true;
  for (const FieldDescriptor* f : fields) {
    if (f->is_extension() || f->is_map()) return false;
    if (!first) out->push_back(',');
    first = false;
    if (!AppendString(f->json_name(), out)) return false;
    out->push_back(':');
    if (f->is_repeated()) {
      int n = r->FieldSize(m, f);
      out->push_back('[');
      for (int i = 0; i < n; ++i) {
        if (i > 0) out->push_back(',');
        if (!AppendValue(m, f, i, out)) return false;
      }
      out->push_back(']');
    } else if (!AppendValue(m, f, -1, out)) {
      return false;
    }
  }
  out->push_back('}');
  return true;
}

}  // namespace

std::optional<std::string> DirectEventJson(const google::protobuf::Message& message) {
  std::string out;
  out.reserve(512);
  if (!AppendMessage(message, &out)) return std::nullopt;
  return out;
}

absl::StatusOr<std::string> EventJson(const google::protobuf::Message& message) {
  if (std::optional<std::string> direct = DirectEventJson(message)) return *std::move(direct);
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  if (auto s = google::protobuf::util::MessageToJsonString(message, &out, opts); !s.ok()) {
    return absl::InternalError(
        absl::StrCat("cannot encode ", message.GetTypeName(), " as JSON: ", s.ToString()));
  }
  return out;
}

}  // namespace connecting::bus
