#include "libs/common/config.h"

#include <cstdlib>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace connecting::config {
namespace {

const char* Get(const char* name) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? v : nullptr;
}

}  // namespace

std::string EnvReader::Required(const char* name, const char* what) {
  const char* v = Get(name);
  if (v == nullptr) {
    errors_.push_back(absl::StrCat(name, ": required (", what, ")"));
    return "";
  }
  return v;
}

std::string EnvReader::ReadableFile(const char* name) {
  const char* v = Get(name);
  if (v == nullptr) return "";
  if (!std::ifstream(v).good()) errors_.push_back(absl::StrCat(name, ": cannot read ", v));
  return v;
}

std::string EnvReader::String(const char* name, std::string default_value) {
  const char* v = Get(name);
  return v != nullptr ? std::string(v) : std::move(default_value);
}

int64_t EnvReader::Int(const char* name, int64_t default_value, int64_t min, int64_t max) {
  const char* v = Get(name);
  if (v == nullptr) return default_value;
  int64_t out = 0;
  if (!absl::SimpleAtoi(v, &out) || out < min || out > max) {
    errors_.push_back(absl::StrCat(name, ": must be an integer between ", min, " and ", max,
                                   ", got \"", v, "\""));
    return default_value;
  }
  return out;
}

bool EnvReader::Bool(const char* name, bool default_value) {
  const char* v = Get(name);
  if (v == nullptr) return default_value;
  std::string t = absl::AsciiStrToLower(v);
  if (t == "1" || t == "true" || t == "yes" || t == "on") return true;
  if (t == "0" || t == "false" || t == "no" || t == "off") return false;
  errors_.push_back(absl::StrCat(name, ": must be true or false, got \"", v, "\""));
  return default_value;
}

absl::Duration EnvReader::Duration(const char* name, absl::Duration default_value,
                                   absl::Duration min, absl::Duration max) {
  const char* v = Get(name);
  if (v == nullptr) return default_value;
  absl::Duration d;
  if (!absl::ParseDuration(v, &d) || d < min || d > max) {
    errors_.push_back(absl::StrCat(name, ": must be a duration such as \"30s\" between ",
                                   absl::FormatDuration(min), " and ", absl::FormatDuration(max),
                                   ", got \"", v, "\""));
    return default_value;
  }
  return d;
}

std::string EnvReader::Listen(const char* name, std::string default_value, bool allow_zero) {
  const char* v = Get(name);
  std::string s = v != nullptr ? std::string(v) : default_value;
  size_t colon = s.rfind(':');
  int port = -1;
  bool ok = colon != std::string::npos && colon > 0 &&
            absl::SimpleAtoi(s.substr(colon + 1), &port) && port >= (allow_zero ? 0 : 1) &&
            port <= 65535;
  if (!ok) {
    errors_.push_back(
        absl::StrCat(name, ": must be host:port (e.g. 0.0.0.0:50051), got \"", s, "\""));
  }
  return s;
}

absl::Status EnvReader::Finish() const {
  if (errors_.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(errors_, "\n"));
}

}  // namespace connecting::config
