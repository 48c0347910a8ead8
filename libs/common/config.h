// Reading service configuration from environment variables.
//
// EnvReader collects every problem instead of stopping at the first, so an
// operator sees all of them at once:
//   EnvReader env;
//   std::string url = env.Required("DATABASE_URL");
//   int64_t n = env.Int("DB_POOL_SIZE", 8, 1, 256);
//   if (absl::Status s = env.Finish(); !s.ok()) { /* print and exit 2 */ }
#ifndef CONNECTING_LIBS_COMMON_CONFIG_H_
#define CONNECTING_LIBS_COMMON_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace connecting::config {

class EnvReader {
 public:
  // Unset or empty → an error "NAME: required".
  std::string Required(const char* name, const char* what);
  std::string String(const char* name, std::string default_value);
  // Integer in [min, max].
  int64_t Int(const char* name, int64_t default_value, int64_t min, int64_t max);
  // true/false/1/0/yes/no/on/off.
  bool Bool(const char* name, bool default_value);
  // absl duration syntax ("500ms", "30s", "2m") in [min, max].
  absl::Duration Duration(const char* name, absl::Duration default_value, absl::Duration min,
                          absl::Duration max);
  // "host:port" or "[v6]:port" with a port in 1–65535 (0 allowed when allow_zero).
  std::string Listen(const char* name, std::string default_value, bool allow_zero = false);
  // The path of a file this process must be able to read; "" when unset.
  std::string ReadableFile(const char* name);

  // Records a problem found by the caller's own checks.
  void AddError(std::string error) { errors_.push_back(std::move(error)); }
  // OK, or INVALID_ARGUMENT listing every problem, one per line.
  absl::Status Finish() const;

 private:
  std::vector<std::string> errors_;
};

}  // namespace connecting::config

#endif  // CONNECTING_LIBS_COMMON_CONFIG_H_
