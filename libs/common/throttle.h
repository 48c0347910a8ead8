// A log line that could otherwise be written once per call or per event (a
// dependency down, a server refusing every publish): the first goes out at
// once, then at most one every `every`, each saying how many were held back
// since the one before.
#ifndef CONNECTING_LIBS_COMMON_THROTTLE_H_
#define CONNECTING_LIBS_COMMON_THROTTLE_H_

#include <cstdint>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace connecting::log {

class Throttle {
 public:
  explicit Throttle(absl::Duration every) : every_(every) {}
  // How many were held back since the last line let through, when this one
  // may go out now; nullopt when it is held back (and counted).
  std::optional<int64_t> Admit();

 private:
  const absl::Duration every_;
  absl::Mutex mu_;
  absl::Time next_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int64_t held_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace connecting::log

#endif  // CONNECTING_LIBS_COMMON_THROTTLE_H_
