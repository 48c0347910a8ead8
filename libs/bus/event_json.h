// Events as proto3 canonical JSON, written straight from the message.
//
// google::protobuf::util::MessageToJsonString serialises the message to binary
// and parses that back through a type resolver before printing: most of the
// CPU an event costs the service (measured on the booking path). EventJson
// walks the message by reflection and appends the JSON directly. Its output is
// byte for byte MessageToJsonString's with default options (lowerCamelCase or
// json_name keys, fields in number order, defaults omitted, 64-bit integers as
// strings, enums by name, Timestamp as RFC 3339, protobuf's string escaping);
// tests/event_json_test.cc checks that over random messages and every Unicode
// code point. Whatever it does not write itself it hands, whole message, to
// MessageToJsonString: floating point, maps, extensions, unknown fields,
// invalid UTF-8, out-of-range timestamps and the well-known types other than
// Timestamp, the integer/bool/string/bytes wrappers and Empty.
#ifndef CONNECTING_LIBS_BUS_EVENT_JSON_H_
#define CONNECTING_LIBS_BUS_EVENT_JSON_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace google::protobuf {
class Message;
}  // namespace google::protobuf

namespace connecting::bus {

// `message` as canonical JSON; an error only where MessageToJsonString fails.
absl::StatusOr<std::string> EventJson(const google::protobuf::Message& message);

// The direct writer alone: nullopt where EventJson hands the message to
// MessageToJsonString (for tests and benchmarks).
std::optional<std::string> DirectEventJson(const google::protobuf::Message& message);

}  // namespace connecting::bus

#endif  // CONNECTING_LIBS_BUS_EVENT_JSON_H_
