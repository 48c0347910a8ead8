// A reply kept as its wire bytes, one piece per top-level field: what a cache
// of replies holds (partners' organisations and list pages).
//
// Given back with CopyTo, the pieces become the reply's unknown fields, which
// protobuf writes out as they are: the reply gRPC sends is byte for byte the
// message it was made from, for the cost of copying those pieces, where a
// cached message costs a deep copy (every string and submessage) and then its
// serialization. It also takes about half the memory of the message, and
// copies share it: a cache hands out a reference, not a copy made under its
// lock.
//
// The reply filled by CopyTo is for sending: read in the process, its fields
// are empty.
#ifndef CONNECTING_LIBS_SERVER_WIRE_REPLY_H_
#define CONNECTING_LIBS_SERVER_WIRE_REPLY_H_

#include <cstddef>
#include <memory>

namespace google::protobuf {
class Message;
class UnknownFieldSet;
}  // namespace google::protobuf

namespace connecting::server {

class WireReply {
 public:
  explicit WireReply(const google::protobuf::Message& reply);
  // Clears `out` (of the reply's type) and fills it to send the reply.
  void CopyTo(google::protobuf::Message* out) const;
  // Bytes held, for a cache's budget.
  size_t SpaceUsedLong() const;

 private:
  std::shared_ptr<const google::protobuf::UnknownFieldSet> fields_;
};

}  // namespace connecting::server

#endif  // CONNECTING_LIBS_SERVER_WIRE_REPLY_H_
