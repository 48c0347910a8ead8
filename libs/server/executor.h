// A fixed pool of worker threads with a bounded queue.
//
// gRPC's callback threads must never block, so handlers hand their database
// work to an Executor. When the queue is full TrySubmit refuses at once and the
// caller answers RESOURCE_EXHAUSTED: overload is shed, not queued without bound.
#ifndef CONNECTING_LIBS_SERVER_EXECUTOR_H_
#define CONNECTING_LIBS_SERVER_EXECUTOR_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace connecting::server {

class Executor {
 public:
  Executor(int threads, int queue_capacity);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // False (and `task` not run) when the queue is full or Shutdown began.
  bool TrySubmit(std::function<void()> task);
  // Runs what is queued, then joins the workers. Idempotent.
  void Shutdown();

 private:
  void Work();

  const size_t capacity_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace connecting::server

#endif  // CONNECTING_LIBS_SERVER_EXECUTOR_H_
