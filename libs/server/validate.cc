#include "libs/server/validate.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace connecting::server {

void FieldErrors::Add(absl::string_view field, absl::string_view rule) {
  errors_.push_back({std::string(field), std::string(rule)});
}

absl::Status FieldErrors::ToStatus() const { return FieldErrorsStatus(errors_); }

std::string CheckCode(FieldErrors& errors, absl::string_view field, absl::string_view value,
                      size_t min_chars, size_t max_chars, bool required, absl::string_view hint) {
  std::string code = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(value));
  if (code.empty() && !required) return code;
  bool ok = code.size() >= min_chars && code.size() <= max_chars;
  for (char c : code) ok = ok && absl::ascii_isalnum(static_cast<unsigned char>(c));
  if (!ok) {
    errors.Add(field, absl::StrCat("must be ", min_chars, "–", max_chars, " letters and digits",
                                   hint.empty() ? "" : " ", hint));
  }
  return code;
}

std::string CheckText(FieldErrors& errors, absl::string_view field, absl::string_view value,
                      TextRule rule) {
  absl::string_view t = absl::StripAsciiWhitespace(value);
  if (!IsValidUtf8(t)) {
    errors.Add(field, "must be valid UTF-8 text");
    return std::string(t);
  }
  size_t len = Utf8Length(t);
  if (len < rule.min_chars || len > rule.max_chars) {
    if (rule.min_chars > 0 && len == 0) {
      errors.Add(field, absl::StrCat("is required (1–", rule.max_chars, " characters)"));
    } else {
      errors.Add(field, absl::StrCat("must be ", rule.min_chars, "–", rule.max_chars,
                                     " characters, got ", len));
    }
    return std::string(t);
  }
  for (size_t i = 0; i < t.size(); ++i) {
    unsigned char c = t[i];
    bool control = c < 0x20 || c == 0x7f ||
                   (c == 0xc2 && i + 1 < t.size() && static_cast<unsigned char>(t[i + 1]) < 0xa0);
    if (control && !(rule.multiline && (c == '\n' || c == '\t' || c == '\r'))) {
      errors.Add(field, rule.multiline ? "must not contain control characters"
                                       : "must be one line without control characters");
      break;
    }
  }
  return std::string(t);
}

bool IsUuid(absl::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return true;
}

absl::Status CheckUuid(absl::string_view field, absl::string_view value) {
  if (value.empty()) return FieldError(field, "is required");
  if (!IsUuid(value)) return FieldError(field, "must be a UUID in lower-case 8-4-4-4-12 form");
  return absl::OkStatus();
}

void CheckUuid(FieldErrors& errors, absl::string_view field, absl::string_view value,
               bool required) {
  if (value.empty()) {
    if (required) errors.Add(field, "is required");
    return;
  }
  if (!IsUuid(value)) errors.Add(field, "must be a UUID in lower-case 8-4-4-4-12 form");
}

void CheckRequestId(FieldErrors& errors, absl::string_view field, absl::string_view value) {
  if (value.empty()) return;
  bool printable = true;
  for (char c : value) printable = printable && c > 0x20 && c < 0x7f;
  if (value.size() > 64 || !printable) {
    errors.Add(field, "must be 1–64 printable ASCII characters without spaces (a UUID is ideal)");
  }
}

int PageSize(FieldErrors& errors, int32_t requested, int default_size, int max_size) {
  if (requested == 0) return default_size;
  if (requested < 0 || requested > max_size) {
    errors.Add("page_size", absl::StrCat("must be between 1 and ", max_size, " (0 means ",
                                         default_size, "), got ", requested));
    return default_size;
  }
  return requested;
}

bool IsPlausibleEmail(absl::string_view s) {
  if (s.size() < 3 || s.size() > 254) return false;
  size_t at = s.find('@');
  if (at == absl::string_view::npos || at == 0 || s.find('@', at + 1) != absl::string_view::npos) {
    return false;
  }
  absl::string_view domain = s.substr(at + 1);
  if (domain.size() < 3 || domain.find('.') == absl::string_view::npos || domain.front() == '.' ||
      domain.back() == '.') {
    return false;
  }
  for (char c : s) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return false;
  }
  return true;
}

}  // namespace connecting::server
