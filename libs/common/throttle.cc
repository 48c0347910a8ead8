#include "libs/common/throttle.h"

#include <utility>

#include "absl/time/clock.h"

namespace connecting::log {

std::optional<int64_t> Throttle::Admit() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  if (now < next_) {
    ++held_;
    return std::nullopt;
  }
  next_ = now + every_;
  return std::exchange(held_, 0);
}

}  // namespace connecting::log
