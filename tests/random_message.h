// Random protobuf messages for property tests: every field of any message
// filled (or not) through reflection, with values biased to the edges where
// code goes wrong (0, extremes, odd characters, enum numbers the schema does
// not know). What strings look like can be chosen per field (`text`), and
// fields can be left out (`skip`).
#ifndef CONNECTING_TESTS_RANDOM_MESSAGE_H_
#define CONNECTING_TESTS_RANDOM_MESSAGE_H_

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include <cstdint>
#include <functional>
#include <random>
#include <string>

namespace connecting::testing {

// Appends code point `cp` as UTF-8.
void AppendUtf8(uint32_t cp, std::string* out);

class RandomFiller {
 public:
  explicit RandomFiller(uint32_t seed) : rng_(seed) {}

  // The value of a string field; OddText() unless set.
  std::function<std::string(const google::protobuf::FieldDescriptor*)> text;
  // Fields to leave unset; none unless set.
  std::function<bool(const google::protobuf::FieldDescriptor*)> skip;
  // Plausible numbers only: integers 0–99, enum values the schema knows,
  // other than 0 (UNSPECIFIED) three times in four; and four fields in five
  // set rather than half.
  bool tame = false;

  // Sets about half of the fields of `m` (repeated ones 0–3 times), nested
  // messages to a depth of 3. Timestamps and Durations get valid values.
  void Fill(google::protobuf::Message* m, int depth = 0);

  // Changes one field of `m` (or of a message it holds), leaving the rest as
  // they are: clears it, or sets it to a value as wild as Fill's untamed ones.
  // From a valid request, this reaches the rules checked after the first ones.
  void MutateOne(google::protobuf::Message* m, int depth = 0);

  // Up to 12 code points: ASCII, escapes, controls, separators, BOM,
  // surrogate-pair territory, the last code point.
  std::string OddText();
  uint32_t Pick(uint32_t n) { return std::uniform_int_distribution<uint32_t>(0, n - 1)(rng_); }
  bool Chance(int in) { return Pick(in) == 0; }

 private:
  template <typename T>
  T Int();
  double Double();
  std::string Bytes();
  int EnumValue(const google::protobuf::FieldDescriptor* f);
  // Sets `f`, or appends to it when it is repeated.
  void Put(google::protobuf::Message* m, const google::protobuf::FieldDescriptor* f, int depth);

  std::mt19937 rng_;
};

}  // namespace connecting::testing

#endif  // CONNECTING_TESTS_RANDOM_MESSAGE_H_
