#include "tests/random_message.h"

#include <limits>
#include <utility>

namespace connecting::testing {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

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

void RandomFiller::Fill(Message* m, int depth) {
  const Descriptor* d = m->GetDescriptor();
  const Reflection* r = m->GetReflection();
  if (d->full_name() == "google.protobuf.Timestamp") {
    // 0001-01-01 .. 9999-12-31, with 0, 3, 6 or 9 significant fractional digits.
    std::uniform_int_distribution<int64_t> secs(-62135596800, 253402300799);
    int64_t s = Chance(4) ? secs(rng_) : (Chance(2) ? 0 : -1 - Pick(100000));
    int32_t nanos = static_cast<int32_t>(Pick(1000000000));
    switch (Pick(4)) {
      case 0:
        nanos = 0;
        break;
      case 1:
        nanos -= nanos % 1000000;
        break;
      case 2:
        nanos -= nanos % 1000;
        break;
      default:
        break;
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
    if (skip && skip(f)) continue;
    if (tame ? Chance(5) : !Chance(2)) continue;
    // (A map is a repeated message of key and value.)
    for (int n = f->is_repeated() ? Pick(4) : 1; n > 0; --n) Put(m, f, depth);
  }
}

std::string RandomFiller::OddText() {
  static const uint32_t kOdd[] = {0,     '"',    '\\',    '<',     '>',     '\n',     0x1f,
                                  0x7f,  0x85,   0xad,    0xe9,    0x2028,  0x200b,   0xfeff,
                                  0x600, 0xffff, 0x10000, 0x1f600, 0xe0001, 0x10ffff, '&',
                                  '\'',  '/',    '=',     ' '};
  std::string s;
  for (int n = Pick(12); n > 0; --n) {
    uint32_t cp;
    switch (Pick(4)) {
      case 0:
        cp = kOdd[Pick(sizeof kOdd / sizeof kOdd[0])];
        break;
      case 1:
        cp = 0x20 + Pick(0x5f);
        break;
      case 2:
        cp = Pick(0x800);
        break;
      default:
        do cp = Pick(0x110000);
        while (cp >= 0xd800 && cp <= 0xdfff);
    }
    AppendUtf8(cp, &s);
  }
  return s;
}

template <typename T>
T RandomFiller::Int() {
  if (tame) return static_cast<T>(Pick(100));
  switch (Pick(5)) {
    case 0:
      return 0;
    case 1:
      return std::numeric_limits<T>::max();
    case 2:
      return std::numeric_limits<T>::min();
    case 3:
      return static_cast<T>(Pick(100));
    default:
      return static_cast<T>(rng_() ^ (static_cast<uint64_t>(rng_()) << 32));
  }
}

double RandomFiller::Double() {
  static const double kOdd[] = {0.0,
                                -0.0,
                                1.5,
                                1e300,
                                1e-300,
                                0.1,
                                std::numeric_limits<double>::infinity(),
                                std::numeric_limits<double>::quiet_NaN()};
  return Chance(2) ? kOdd[Pick(8)] : std::uniform_real_distribution<double>(-1e6, 1e6)(rng_);
}

std::string RandomFiller::Bytes() {
  std::string s;
  for (int n = Pick(10); n > 0; --n) s.push_back(static_cast<char>(rng_()));
  return s;
}

int RandomFiller::EnumValue(const FieldDescriptor* f) {
  const auto* e = f->enum_type();
  if (tame && e->value_count() > 1 && !Chance(4)) {
    return e->value(1 + static_cast<int>(Pick(e->value_count() - 1)))->number();
  }
  if (!tame && Chance(5)) return static_cast<int>(Pick(1000)) + 100;  // unknown to the schema
  return e->value(static_cast<int>(Pick(e->value_count())))->number();
}

void RandomFiller::MutateOne(Message* m, int depth) {
  const google::protobuf::Descriptor* d = m->GetDescriptor();
  if (d->field_count() == 0) return;
  const Reflection* r = m->GetReflection();
  const FieldDescriptor* f = d->field(static_cast<int>(Pick(d->field_count())));
  if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && depth < 2 && Chance(2)) {
    if (!f->is_repeated() && r->HasField(*m, f))
      return MutateOne(r->MutableMessage(m, f), depth + 1);
    if (f->is_repeated() && r->FieldSize(*m, f) > 0) {
      int i = static_cast<int>(Pick(static_cast<uint32_t>(r->FieldSize(*m, f))));
      return MutateOne(r->MutableRepeatedMessage(m, f, i), depth + 1);
    }
  }
  r->ClearField(m, f);
  if (Chance(4)) return;
  const bool was_tame = tame;
  tame = false;
  Put(m, f, depth);
  tame = was_tame;
}

void RandomFiller::Put(Message* m, const FieldDescriptor* f, int depth) {
  const Reflection* r = m->GetReflection();
  const bool rep = f->is_repeated();
#define PUT(Type, value)                \
  {                                     \
    auto v = value;                     \
    if (rep)                            \
      r->Add##Type(m, f, std::move(v)); \
    else                                \
      r->Set##Type(m, f, std::move(v)); \
  }                                     \
  break
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      PUT(Int32, Int<int32_t>());
    case FieldDescriptor::CPPTYPE_INT64:
      PUT(Int64, Int<int64_t>());
    case FieldDescriptor::CPPTYPE_UINT32:
      PUT(UInt32, Int<uint32_t>());
    case FieldDescriptor::CPPTYPE_UINT64:
      PUT(UInt64, Int<uint64_t>());
    case FieldDescriptor::CPPTYPE_BOOL:
      PUT(Bool, Chance(2));
    case FieldDescriptor::CPPTYPE_DOUBLE:
      PUT(Double, Double());
    case FieldDescriptor::CPPTYPE_FLOAT:
      PUT(Float, static_cast<float>(Double()));
    case FieldDescriptor::CPPTYPE_ENUM:
      PUT(EnumValue, EnumValue(f));
    case FieldDescriptor::CPPTYPE_STRING:
      PUT(String, f->type() == FieldDescriptor::TYPE_BYTES ? Bytes() : text ? text(f) : OddText());
    case FieldDescriptor::CPPTYPE_MESSAGE:
      if (depth < 3) Fill(rep ? r->AddMessage(m, f) : r->MutableMessage(m, f), depth + 1);
      break;
  }
#undef PUT
}

}  // namespace connecting::testing
