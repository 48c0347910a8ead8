#include "libs/server/periodic.h"

#include <utility>

#include "libs/common/log.h"

namespace connecting::server {

PeriodicRunner::PeriodicRunner(PeriodicTask task) : task_(std::move(task)) {}

PeriodicRunner::~PeriodicRunner() { Stop(); }

void PeriodicRunner::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { Loop(); });
}

void PeriodicRunner::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

int PeriodicRunner::runs() const {
  absl::MutexLock lock(&mu_);
  return runs_;
}

void PeriodicRunner::Loop() {
  log::Debug("periodic task started", {{"task", task_.name}});
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
    }
    task_.run();
    absl::MutexLock lock(&mu_);
    ++runs_;
    // Sleeps the interval unless Stop() comes first.
    if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), task_.interval)) break;
  }
  log::Debug("periodic task stopped", {{"task", task_.name}});
}

}  // namespace connecting::server
