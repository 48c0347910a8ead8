#include "libs/server/wire_reply.h"

#include <string>

namespace connecting::server {

WireReply::WireReply(const google::protobuf::Message& reply)
    : bytes_(std::make_shared<const std::string>(reply.SerializeAsString())) {}

void WireReply::CopyTo(google::protobuf::Message* out) const {
  out->Clear();
  out->GetReflection()->MutableUnknownFields(out)->AddLengthDelimited(kField, *bytes_);
}

size_t WireReply::SpaceUsedLong() const {
  return sizeof(*this) + sizeof(std::string) + bytes_->capacity() +
         32;  // the shared_ptr's control block
}

}  // namespace connecting::server
