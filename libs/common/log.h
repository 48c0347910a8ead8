// Structured JSON logging to stdout, one object per line:
//   {"ts":"2026-11-25T10:00:00.123Z","level":"info","msg":"...","key":"value"}
// Thread-safe; lines from different threads never interleave.
#ifndef CONNECTING_LIBS_COMMON_LOG_H_
#define CONNECTING_LIBS_COMMON_LOG_H_

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace connecting::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

using Fields = std::initializer_list<std::pair<absl::string_view, absl::string_view>>;

// Lines below `level` are dropped. Default kInfo.
void SetLevel(Level level);
// "debug", "info", "warn", "error" (case-insensitive).
absl::StatusOr<Level> ParseLevel(absl::string_view text);
// Sets a field added to every line (e.g. "service":"partners").
void SetService(absl::string_view service);

void Write(Level level, absl::string_view msg, Fields fields = {});
inline void Debug(absl::string_view msg, Fields f = {}) { Write(Level::kDebug, msg, f); }
inline void Info(absl::string_view msg, Fields f = {}) { Write(Level::kInfo, msg, f); }
inline void Warn(absl::string_view msg, Fields f = {}) { Write(Level::kWarn, msg, f); }
inline void Error(absl::string_view msg, Fields f = {}) { Write(Level::kError, msg, f); }

// A status as people read it, for a log line or a stored error: its code and
// message, without the payloads its error details travel in
// (libs/server/errors.h).
inline std::string Text(const absl::Status& s) {
  return s.ToString(absl::StatusToStringMode::kWithNoExtraData);
}

// Appends `s` to `out` as a JSON string literal (with quotes).
void AppendJsonString(std::string& out, absl::string_view s);

}  // namespace connecting::log

#endif  // CONNECTING_LIBS_COMMON_LOG_H_
