// Work a service repeats in the background while it runs: a repair sweep, a
// reminder run. Each task has its own thread; a run never overlaps the next.
#ifndef CONNECTING_LIBS_SERVER_PERIODIC_H_
#define CONNECTING_LIBS_SERVER_PERIODIC_H_

#include <functional>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace connecting::server {

struct PeriodicTask {
  std::string name;         // for logs
  absl::Duration interval;  // from the end of one run to the start of the next
  std::function<void()> run;
};

// Runs a task at Start() and then every interval until Stop(), which wakes a
// waiting thread at once and waits for a run in progress to end.
class PeriodicRunner {
 public:
  explicit PeriodicRunner(PeriodicTask task);
  ~PeriodicRunner();  // Stop()
  PeriodicRunner(const PeriodicRunner&) = delete;
  PeriodicRunner& operator=(const PeriodicRunner&) = delete;

  void Start();
  void Stop();
  // Completed runs so far.
  int runs() const;

 private:
  void Loop();

  const PeriodicTask task_;
  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int runs_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;
};

}  // namespace connecting::server

#endif  // CONNECTING_LIBS_SERVER_PERIODIC_H_
