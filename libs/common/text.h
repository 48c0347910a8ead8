// UTF-8 text: whether bytes are text, and how to keep bytes that are not
// where only text fits (a PostgreSQL text column, a log line).
#ifndef CONNECTING_LIBS_COMMON_TEXT_H_
#define CONNECTING_LIBS_COMMON_TEXT_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace connecting::text {

// Decodes the UTF-8 character at `s[*i]` (i < size) into `*cp` and moves
// `*i` past it; false if none is there.
bool DecodeUtf8(absl::string_view s, size_t* i, uint32_t* cp);
// Well-formed UTF-8: no stray continuation bytes, truncated or overlong
// sequences, surrogates, or code points beyond U+10FFFF.
bool IsValidUtf8(absl::string_view s);
// Code points in valid UTF-8.
size_t Utf8Length(absl::string_view s);

// `s` unchanged if it is valid UTF-8 without NUL (which PostgreSQL's text
// refuses); otherwise every byte outside a valid character, and NUL, as
// \xNN, and each backslash doubled, so that two different inputs never
// give the same text. `*escaped` (if given) says which it was.
std::string StorableText(absl::string_view s, bool* escaped = nullptr);

}  // namespace connecting::text

#endif  // CONNECTING_LIBS_COMMON_TEXT_H_
