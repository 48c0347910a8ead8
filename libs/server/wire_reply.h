// A reply kept as its wire bytes: what a cache of replies holds (partners'
// organisations and list pages).
//
// Given back with CopyTo, the bytes ride in the reply as one unknown field of
// a reserved number, and gRPC sends them as they are: the "<name>.api.h"
// headers give every reply type of a service serialization that sends such a
// reply's bytes instead of serializing the message
// (CONNECTING_WIRE_REPLY below). A reply sent from the cache costs one copy
// of its bytes into the message and one into gRPC's buffer, where a cached
// message costs a deep copy (every string and submessage, an allocation
// each) and then its serialization. The cache holds one string per reply,
// about half the memory of the message, and copies share it: a cache hands
// out a reference, not a copy made under its lock.
//
// The reply filled by CopyTo is for sending through gRPC only: read in the
// process, its fields are empty, and protobuf's own serialization would
// write the bytes wrapped in that unknown field. Only a reply type of the
// service's own package gets the serialization (a type of another package,
// google.protobuf.Empty say, is not the .api.h's to give it), so cache
// replies of those types only; the partners cache tests send both cached
// types through gRPC and compare the bytes.
#ifndef CONNECTING_LIBS_SERVER_WIRE_REPLY_H_
#define CONNECTING_LIBS_SERVER_WIRE_REPLY_H_

#include <google/protobuf/message.h>
#include <google/protobuf/unknown_field_set.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstddef>
#include <memory>
#include <string>

#include "libs/server/strict_parse.h"  // CONNECTING_SERIALIZATION_TRAITS

namespace connecting::server {

class WireReply {
 public:
  explicit WireReply(const google::protobuf::Message& reply);
  // Clears `out` (of the reply's type) and fills it to send the reply.
  void CopyTo(google::protobuf::Message* out) const;
  // Bytes held, for a cache's budget.
  size_t SpaceUsedLong() const;

  // The field number CopyTo puts the bytes under: the largest protobuf allows
  // but the two strict parsing reserves (libs/server/strict_parse.cc).
  static constexpr int kField = 536870909;
  // The bytes a reply filled by CopyTo carries, or nullptr for any other
  // message (a cheap test: most replies have no unknown fields at all).
  static const std::string* BytesIn(const google::protobuf::Message& msg) {
    const google::protobuf::UnknownFieldSet& unknown = msg.GetReflection()->GetUnknownFields(msg);
    if (unknown.field_count() != 1) return nullptr;
    const google::protobuf::UnknownField& f = unknown.field(0);
    if (f.number() != kField || f.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) {
      return nullptr;
    }
    return &f.length_delimited();
  }

 private:
  std::shared_ptr<const std::string> bytes_;
};

// gRPC's serialization of a reply type T: a reply filled by WireReply::CopyTo
// is sent as the bytes it carries, any other as protobuf serializes it.
// Parsing (a client's) is protobuf's own.
template <class T>
struct WireReplyTraits {
  static grpc::Status Serialize(const google::protobuf::MessageLite& msg, grpc::ByteBuffer* bb,
                                bool* own_buffer) {
    if (const std::string* bytes = WireReply::BytesIn(static_cast<const T&>(msg))) {
      grpc::Slice slice(*bytes);
      grpc::ByteBuffer wire(&slice, 1);
      bb->Swap(&wire);
      *own_buffer = true;
      return grpc::Status::OK;
    }
    return grpc::GenericSerialize<grpc::ProtoBufferWriter, T>(msg, bb, own_buffer);
  }
  static grpc::Status Deserialize(grpc::ByteBuffer* buffer, google::protobuf::MessageLite* msg) {
    return grpc::GenericDeserialize<grpc::ProtoBufferReader, T>(buffer, msg);
  }
};

}  // namespace connecting::server

#define CONNECTING_WIRE_REPLY(T) CONNECTING_SERIALIZATION_TRAITS(T, WireReplyTraits)

#endif  // CONNECTING_LIBS_SERVER_WIRE_REPLY_H_
