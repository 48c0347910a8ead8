// Strict request parsing for the callback API.
//
// When a request's bytes do not parse (invalid UTF-8 in a proto3 string field,
// truncated bytes), gRPC's callback API answers UNIMPLEMENTED with no message.
// CONNECTING_STRICT_REQUEST(T) replaces the parsing of request type T: a
// malformed request reaches the handler empty but marked, and RpcRunner answers
// INVALID_ARGUMENT naming the offending field. The generated "<name>.api.h"
// headers apply it to every request type of a service; include those, never
// the ".grpc.pb.h" directly, so that every translation unit agrees.
#ifndef CONNECTING_LIBS_SERVER_STRICT_PARSE_H_
#define CONNECTING_LIBS_SERVER_STRICT_PARSE_H_

#include <google/protobuf/message.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/status.h>

#include <optional>
#include <string>

namespace connecting::server {

// Protobuf's own messages (outside a request's parsing, which keeps its
// message as the rule) as JSON log lines, at warn or error, instead of its
// format on stderr. ServiceMain calls it; the first parse does too.
void RouteProtobufLogs();
// Parses `buffer` into `msg`; on failure leaves `msg` empty and marked.
grpc::Status ParseRequestStrictly(grpc::ByteBuffer* buffer, google::protobuf::Message* msg);
// Why a marked request failed to parse: the field's path from the request
// ("session.sites[1].name") when one field is to blame, else empty, and the
// rule ("must be valid UTF-8 text", or that the bytes are no message).
struct MalformedRequest {
  std::string field;
  std::string rule;
};
// Why a marked request failed to parse, or nullopt for a good request.
std::optional<MalformedRequest> MalformedReason(const google::protobuf::Message& msg);

}  // namespace connecting::server

namespace connecting::server {

// gRPC's serialization of a request type T: parsed strictly, serialized as
// protobuf does it (a client's).
template <class T>
struct StrictRequestTraits {
  static grpc::Status Serialize(const google::protobuf::MessageLite& msg, grpc::ByteBuffer* bb,
                                bool* own_buffer) {
    return grpc::GenericSerialize<grpc::ProtoBufferWriter, T>(msg, bb, own_buffer);
  }
  static grpc::Status Deserialize(grpc::ByteBuffer* buffer, google::protobuf::MessageLite* msg) {
    return ParseRequestStrictly(buffer, static_cast<T*>(msg));
  }
};

}  // namespace connecting::server

// Gives type T the serialization `Traits<T>` (before anything uses T's).
#define CONNECTING_SERIALIZATION_TRAITS(T, Traits)                                \
  namespace grpc {                                                                \
  template <>                                                                     \
  class SerializationTraits<T, void> : public ::connecting::server::Traits<T> {}; \
  }

#define CONNECTING_STRICT_REQUEST(T) CONNECTING_SERIALIZATION_TRAITS(T, StrictRequestTraits)

#endif  // CONNECTING_LIBS_SERVER_STRICT_PARSE_H_
