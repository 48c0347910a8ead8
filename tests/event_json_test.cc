// bus::EventJson prints what google::protobuf::util::MessageToJsonString
// prints, byte for byte: over random messages with every kind of field, over
// random instances of every event the services publish, and for every Unicode
// code point in a string. The direct writer must also be the one doing the
// work (not its fallback) wherever it claims to.
#include "libs/bus/event_json.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "connecting/events/v1/partners_events.pb.h"
#include "connecting/events/v1/scheduling_events.pb.h"
#include "protos/json_fixture.pb.h"
#include "tests/random_message.h"

namespace connecting {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using test::Everything;
using testing::AppendUtf8;
using testing::RandomFiller;

absl::StatusOr<std::string> Protobuf(const Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  auto s = google::protobuf::util::MessageToJsonString(m, &out, opts);
  if (!s.ok()) return absl::InternalError(s.ToString());
  return out;
}

// Without the fallback fields: those EventJson leaves to protobuf (the test
// message's fields from 41 on) stay unset.
bool IsFallbackField(const FieldDescriptor* f) {
  return f->number() >= 41 && f->containing_type()->full_name() == "connecting.test.Everything";
}

TEST(EventJson, RandomMessagesPrintAsProtobufPrintsThem) {
  RandomFiller fill(1);
  int direct = 0, refused = 0;
  for (int i = 0; i < 20000; ++i) {
    Everything m;
    fill.skip = i % 2 == 1 ? nullptr : IsFallbackField;
    fill.Fill(&m);
    absl::StatusOr<std::string> want = Protobuf(m);
    absl::StatusOr<std::string> got = bus::EventJson(m);
    if (!want.ok()) {  // e.g. NaN in a google.protobuf.Value: refused by both
      ASSERT_EQ(got.status().code(), absl::StatusCode::kInternal) << m.DebugString();
      ++refused;
      continue;
    }
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(*got, *want) << m.DebugString();
    if (i % 2 == 0) {
      // Without the fallback fields the direct writer does it all itself.
      std::optional<std::string> d = bus::DirectEventJson(m);
      ASSERT_TRUE(d.has_value()) << m.DebugString();
      ASSERT_EQ(*d, *want);
      ++direct;
    }
  }
  EXPECT_EQ(direct, 10000);
  EXPECT_LT(refused, 2000);
}

TEST(EventJson, EveryPublishedEventPrintsAsProtobufPrintsIt) {
  RandomFiller fill(2);
  const google::protobuf::FileDescriptor* files[] = {
      events::v1::BookingChanged::descriptor()->file(),
      events::v1::OrganisationCreated::descriptor()->file()};
  int types = 0;
  for (const auto* file : files) {
    for (int t = 0; t < file->message_type_count(); ++t) {
      const Descriptor* d = file->message_type(t);
      const Message* prototype =
          google::protobuf::MessageFactory::generated_factory()->GetPrototype(d);
      ASSERT_NE(prototype, nullptr) << d->full_name();
      ++types;
      for (int i = 0; i < 500; ++i) {
        std::unique_ptr<Message> m(prototype->New());
        fill.Fill(m.get());
        absl::StatusOr<std::string> want = Protobuf(*m);
        ASSERT_TRUE(want.ok()) << want.status();
        // Events have nothing the direct writer leaves to protobuf.
        std::optional<std::string> got = bus::DirectEventJson(*m);
        ASSERT_TRUE(got.has_value()) << d->full_name() << "\n" << m->DebugString();
        ASSERT_EQ(*got, *want) << m->DebugString();
      }
    }
  }
  EXPECT_GE(types, 4);
}

TEST(EventJson, EveryCodePointIsEscapedAsProtobufEscapesIt) {
  // One string per code point, 4096 to a message; on a difference, name the
  // first code point that differs.
  for (uint32_t base = 0; base < 0x110000; base += 4096) {
    Everything m;
    for (uint32_t cp = base; cp < base + 4096; ++cp) {
      if (cp >= 0xd800 && cp <= 0xdfff) continue;
      AppendUtf8(cp, m.add_r_text());
    }
    absl::StatusOr<std::string> want = Protobuf(m);
    ASSERT_TRUE(want.ok()) << want.status();
    std::optional<std::string> got = bus::DirectEventJson(m);
    ASSERT_TRUE(got.has_value());
    if (*got == *want) continue;
    for (int i = 0; i < m.r_text_size(); ++i) {
      Everything one;
      one.set_text(m.r_text(i));
      ASSERT_EQ(*bus::DirectEventJson(one), *Protobuf(one))
          << "code point U+" << absl::StrCat(absl::Hex(base + i));
    }
    FAIL() << "the block from U+" << absl::StrCat(absl::Hex(base)) << " differs";
  }
}

TEST(EventJson, InvalidUtf8AndImpossibleTimesAreLeftToProtobuf) {
  Everything bad_text;
  bad_text.set_text(std::string("ok \xff\xfe then \xc0\x80", 14));
  EXPECT_FALSE(bus::DirectEventJson(bad_text).has_value());
  absl::StatusOr<std::string> want = Protobuf(bad_text);
  absl::StatusOr<std::string> got = bus::EventJson(bad_text);
  EXPECT_EQ(got.ok(), want.ok());
  if (got.ok() && want.ok()) {
    EXPECT_EQ(*got, *want);
  }

  Everything late;
  late.mutable_when()->set_seconds(253402300800);  // 10000-01-01
  EXPECT_FALSE(bus::DirectEventJson(late).has_value());
  EXPECT_FALSE(Protobuf(late).ok());
  absl::StatusOr<std::string> refused = bus::EventJson(late);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace connecting
