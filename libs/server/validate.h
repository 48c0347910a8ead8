// Request validation shared by the services. Every rule reports the field it
// applies to, as the API promises: INVALID_ARGUMENT "organisation.name: must be
// 1–200 characters".
#ifndef CONNECTING_LIBS_SERVER_VALIDATE_H_
#define CONNECTING_LIBS_SERVER_VALIDATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "libs/common/text.h"
#include "libs/server/errors.h"

namespace connecting::server {

// Collects field violations so a caller learns all of them at once.
class FieldErrors {
 public:
  void Add(absl::string_view field, absl::string_view rule);
  bool empty() const { return errors_.empty(); }
  // OK when empty, else INVALID_ARGUMENT "f1: rule; f2: rule" carrying each
  // violation (FieldErrorsStatus).
  absl::Status ToStatus() const;

 private:
  std::vector<FieldViolation> errors_;
};

using text::IsValidUtf8;
using text::Utf8Length;

struct TextRule {
  size_t min_chars = 0;
  size_t max_chars = 200;
  bool multiline = false;  // allow \n and \t
};

// Checks `value` (after trimming ASCII white space) against `rule` and returns
// the trimmed text; records a violation for `field` otherwise.
std::string CheckText(FieldErrors& errors, absl::string_view field, absl::string_view value,
                      TextRule rule);

// An identifier code such as an ODS code or a staff number: trimmed and upper-
// cased, `min_chars`–`max_chars` ASCII letters and digits. Returns the
// canonical form; records "<field>: must be <min>–<max> letters and digits
// <hint>" otherwise. Empty is allowed unless `required`.
std::string CheckCode(FieldErrors& errors, absl::string_view field, absl::string_view value,
                      size_t min_chars, size_t max_chars, bool required,
                      absl::string_view hint = "");

// Canonical lower-case UUID text (8-4-4-4-12 hex).
bool IsUuid(absl::string_view s);
// FieldError "<field>: must be a UUID …" unless `value` is one.
absl::Status CheckUuid(absl::string_view field, absl::string_view value);
void CheckUuid(FieldErrors& errors, absl::string_view field, absl::string_view value,
               bool required);

// An idempotency key: empty, or 1–64 printable ASCII characters.
void CheckRequestId(FieldErrors& errors, absl::string_view field, absl::string_view value);

// page_size: 0 → `default_size`, 1..`max_size` as given, anything else invalid.
int PageSize(FieldErrors& errors, int32_t requested, int default_size = 50, int max_size = 500);

// "local@domain.tld", at most 254 characters, no spaces.
bool IsPlausibleEmail(absl::string_view s);

}  // namespace connecting::server

#endif  // CONNECTING_LIBS_SERVER_VALIDATE_H_
