// bus::EventJson prints what google::protobuf::util::MessageToJsonString
// prints, byte for byte: over random messages with every kind of field, over
// random instances of every event the services publish, and for every Unicode
// code point in a string. The direct writer must also be the one doing the
// work (not its fallback) wherever it claims to.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "connecting/events/v1/partners_events.pb.h"
#include "connecting/events/v1/scheduling_events.pb.h"
#include "protos/json_fixture.pb.h"
#include "libs/bus/event_json.h"

namespace connecting {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;
using test::Everything;

absl::StatusOr<std::string> Protobuf(const Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  auto s = google::protobuf::util::MessageToJsonString(m, &out, opts);
  if (!s.ok()) return absl::InternalError(s.ToString());
  return out;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xc0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xe0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else {
    out->push_back(static_cast<char>(0xf0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
}

// Fills messages with random values, biased to the edges (0, extremes, odd
// characters) where printers go wrong.
class Filler {
 public:
  explicit Filler(uint32_t seed) : rng_(seed) {}

  // fallback_fields: also set the fields EventJson leaves to protobuf.
  void Fill(Message* m, int depth, bool fallback_fields) {
    const Descriptor* d = m->GetDescriptor();
    const Reflection* r = m->GetReflection();
    if (d->full_name() == "google.protobuf.Timestamp") {
      // 0001-01-01 .. 9999-12-31, with 0, 3, 6 or 9 significant fractional digits.
      std::uniform_int_distribution<int64_t> secs(-62135596800, 253402300799);
      int64_t s = Chance(4) ? secs(rng_) : (Chance(2) ? 0 : -1 - Pick(100000));
      int32_t nanos = static_cast<int32_t>(Pick(1000000000));
      switch (Pick(4)) {
        case 0: nanos = 0; break;
        case 1: nanos -= nanos % 1000000; break;
        case 2: nanos -= nanos % 1000; break;
        default: break;
      }
      r->SetInt64(m, d->FindFieldByNumber(1), s);
      r->SetInt32(m, d->FindFieldByNumber(2), nanos);
      return;
    }
    if (d->full_name() == "google.protobuf.Duration") {  // a valid one: same signs
      int64_t s = static_cast<int64_t>(Pick(1000000)) - 500000;
      int32_t nanos = static_cast<int32_t>(Pick(1000000000));
      r->SetInt64(m, d->FindFieldByNumber(1), s);
      r->SetInt32(m, d->FindFieldByNumber(2), s < 0 ? -nanos : (s > 0 ? nanos : 0));
      return;
    }
    for (int i = 0; i < d->field_count(); ++i) {
      const FieldDescriptor* f = d->field(i);
      if (!fallback_fields && f->number() >= 41 && d->full_name() == "connecting.test.Everything") {
        continue;
      }
      if (!Chance(2)) continue;
      // (A map is a repeated message of key and value.)
      for (int n = f->is_repeated() ? Pick(4) : 1; n > 0; --n) Put(m, f, depth, fallback_fields);
    }
  }

  std::string Text() {
    static const uint32_t kOdd[] = {0,     '"',    '\\',   '<',    '>',    '\n',    0x1f,
                                    0x7f,  0x85,   0xad,   0xe9,   0x2028, 0x200b,  0xfeff,
                                    0x600, 0xffff, 0x10000, 0x1f600, 0xe0001, 0x10ffff, '&',
                                    '\'',  '/',    '=',    ' '};
    std::string s;
    for (int n = Pick(12); n > 0; --n) {
      uint32_t cp;
      switch (Pick(4)) {
        case 0: cp = kOdd[Pick(sizeof kOdd / sizeof kOdd[0])]; break;
        case 1: cp = 0x20 + Pick(0x5f); break;
        case 2: cp = Pick(0x800); break;
        default:
          do cp = Pick(0x110000);
          while (cp >= 0xd800 && cp <= 0xdfff);
      }
      AppendUtf8(cp, &s);
    }
    return s;
  }

 private:
  bool Chance(int in) { return Pick(in) == 0; }
  uint32_t Pick(uint32_t n) { return std::uniform_int_distribution<uint32_t>(0, n - 1)(rng_); }
  template <typename T>
  T Int() {
    switch (Pick(5)) {
      case 0: return 0;
      case 1: return std::numeric_limits<T>::max();
      case 2: return std::numeric_limits<T>::min();
      case 3: return static_cast<T>(Pick(100));
      default: return static_cast<T>(rng_() ^ (static_cast<uint64_t>(rng_()) << 32));
    }
  }
  double Double() {
    static const double kOdd[] = {0.0, -0.0, 1.5, 1e300, 1e-300, 0.1,
                                  std::numeric_limits<double>::infinity(),
                                  std::numeric_limits<double>::quiet_NaN()};
    return Chance(2) ? kOdd[Pick(8)] : std::uniform_real_distribution<double>(-1e6, 1e6)(rng_);
  }
  std::string Bytes() {
    std::string s;
    for (int n = Pick(10); n > 0; --n) s.push_back(static_cast<char>(rng_()));
    return s;
  }
  int EnumValue(const FieldDescriptor* f) {
    if (Chance(5)) return static_cast<int>(Pick(1000)) + 100;  // unknown to the schema
    return f->enum_type()->value(static_cast<int>(Pick(f->enum_type()->value_count())))->number();
  }

  // Sets `f`, or appends to it when it is repeated.
  void Put(Message* m, const FieldDescriptor* f, int depth, bool fb) {
    const Reflection* r = m->GetReflection();
    const bool rep = f->is_repeated();
#define PUT(Type, value)                 \
  {                                      \
    auto v = value;                      \
    if (rep)                             \
      r->Add##Type(m, f, std::move(v));  \
    else                                 \
      r->Set##Type(m, f, std::move(v));  \
  }                                      \
  break
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32: PUT(Int32, Int<int32_t>());
      case FieldDescriptor::CPPTYPE_INT64: PUT(Int64, Int<int64_t>());
      case FieldDescriptor::CPPTYPE_UINT32: PUT(UInt32, Int<uint32_t>());
      case FieldDescriptor::CPPTYPE_UINT64: PUT(UInt64, Int<uint64_t>());
      case FieldDescriptor::CPPTYPE_BOOL: PUT(Bool, Chance(2));
      case FieldDescriptor::CPPTYPE_DOUBLE: PUT(Double, Double());
      case FieldDescriptor::CPPTYPE_FLOAT: PUT(Float, static_cast<float>(Double()));
      case FieldDescriptor::CPPTYPE_ENUM: PUT(EnumValue, EnumValue(f));
      case FieldDescriptor::CPPTYPE_STRING:
        PUT(String, f->type() == FieldDescriptor::TYPE_BYTES ? Bytes() : Text());
      case FieldDescriptor::CPPTYPE_MESSAGE:
        if (depth < 3) Fill(rep ? r->AddMessage(m, f) : r->MutableMessage(m, f), depth + 1, fb);
        break;
    }
#undef PUT
  }

  std::mt19937 rng_;
};

TEST(EventJson, RandomMessagesPrintAsProtobufPrintsThem) {
  Filler fill(1);
  int direct = 0, refused = 0;
  for (int i = 0; i < 20000; ++i) {
    Everything m;
    fill.Fill(&m, 0, /*fallback_fields=*/i % 2 == 1);
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
  Filler fill(2);
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
        fill.Fill(m.get(), 0, true);
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
