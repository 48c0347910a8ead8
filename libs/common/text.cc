#include "libs/common/text.h"

#include <cstdint>

namespace connecting::text {

bool DecodeUtf8(absl::string_view s, size_t* i, uint32_t* cp) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), k = *i;
  unsigned char c = p[k];
  int len;
  uint32_t v, min;
  if (c < 0x80) {
    *cp = c;
    *i = k + 1;
    return true;
  } else if ((c & 0xe0) == 0xc0) {
    len = 2, v = c & 0x1f, min = 0x80;
  } else if ((c & 0xf0) == 0xe0) {
    len = 3, v = c & 0x0f, min = 0x800;
  } else if ((c & 0xf8) == 0xf0) {
    len = 4, v = c & 0x07, min = 0x10000;
  } else {
    return false;
  }
  if (k + len > n) return false;
  for (int j = 1; j < len; ++j) {
    if ((p[k + j] & 0xc0) != 0x80) return false;
    v = (v << 6) | (p[k + j] & 0x3f);
  }
  if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return false;
  *cp = v;
  *i = k + len;
  return true;
}

bool IsValidUtf8(absl::string_view s) {
  uint32_t cp;
  for (size_t i = 0; i < s.size();) {
    if (!DecodeUtf8(s, &i, &cp)) return false;
  }
  return true;
}

size_t Utf8Length(absl::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) {
    if ((c & 0xc0) != 0x80) ++n;
  }
  return n;
}

std::string StorableText(absl::string_view s, bool* escaped) {
  const bool text = IsValidUtf8(s) && s.find('\0') == absl::string_view::npos;
  if (escaped != nullptr) *escaped = !text;
  if (text) return std::string(s);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size() + 16);
  uint32_t cp;
  for (size_t i = 0; i < s.size();) {
    size_t next = i;
    if (s[i] == '\0' || !DecodeUtf8(s, &next, &cp)) {
      unsigned char c = s[i];
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
      ++i;
    } else if (s[i] == '\\') {
      out += "\\\\";
      ++i;
    } else {
      out.append(s.data() + i, next - i);
      i = next;
    }
  }
  return out;
}

}  // namespace connecting::text
