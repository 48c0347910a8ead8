#include "libs/server/wire_reply.h"

#include <google/protobuf/message.h>
#include <google/protobuf/unknown_field_set.h>

#include <string>

namespace connecting::server {

WireReply::WireReply(const google::protobuf::Message& reply) {
  auto fields = std::make_shared<google::protobuf::UnknownFieldSet>();
  // Top-level fields only: a submessage stays one piece of bytes.
  std::string bytes = reply.SerializeAsString();
  fields->ParseFromString(bytes);
  fields_ = std::move(fields);
}

void WireReply::CopyTo(google::protobuf::Message* out) const {
  out->Clear();
  out->GetReflection()->MutableUnknownFields(out)->MergeFrom(*fields_);
}

size_t WireReply::SpaceUsedLong() const {
  return sizeof(*this) + sizeof(google::protobuf::UnknownFieldSet) +
         fields_->SpaceUsedExcludingSelfLong() + 32;  // the shared_ptr's control block
}

}  // namespace connecting::server
