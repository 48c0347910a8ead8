// A read-through cache kept coherent by PostgreSQL LISTEN/NOTIFY.
//
// A trigger on the cached table calls pg_notify(<channel>, <key>) when a row
// changes; every replica listens and drops that key, so a cached value is at
// most one notification delivery (~1 ms) behind a commit made by another
// replica, and never behind the replica's own writes (it calls Invalidate
// after committing). While the listening connection is down the cache is
// emptied and bypassed, since notifications may have been missed.
//
// Loading is race-free with generations: take Generation() before reading the
// database and pass it to Put(); a value read before an invalidation is never
// stored after it.
#ifndef CONNECTING_LIBS_DB_NOTIFY_CACHE_H_
#define CONNECTING_LIBS_DB_NOTIFY_CACHE_H_

#include <atomic>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>

#include "absl/synchronization/mutex.h"

namespace connecting::db {

// Listens on a channel and calls OnInvalidate(key) / OnReset().
class NotifyListener {
 public:
  NotifyListener(std::string db_url, std::string channel);
  virtual ~NotifyListener();
  void Start();
  void Stop();
  // True while LISTEN is in place (notifications are being received).
  bool listening() const { return listening_.load(); }

 protected:
  virtual void OnInvalidate(const std::string& key) = 0;
  virtual void OnReset() = 0;

 private:
  void Run();
  const std::string db_url_;
  const std::string channel_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> listening_{false};
  int wake_fd_ = -1;
  std::thread thread_;
};

template <class V>
class NotifyCache final : public NotifyListener {
 public:
  // With `any_change_clears`, every notification empties the whole cache (for
  // values derived from many rows, such as list pages).
  NotifyCache(std::string db_url, std::string channel, size_t max_entries,
              bool any_change_clears = false)
      : NotifyListener(std::move(db_url), std::move(channel)),
        max_entries_(max_entries),
        any_change_clears_(any_change_clears) {}
  ~NotifyCache() override { Stop(); }

  std::optional<V> Get(const std::string& key) {
    if (!listening()) return std::nullopt;
    absl::MutexLock lock(&mu_);
    auto it = map_.find(key);
    if (it == map_.end()) return std::nullopt;
    return it->second;
  }
  uint64_t Generation() {
    absl::MutexLock lock(&mu_);
    return generation_;
  }
  void Put(const std::string& key, V value, uint64_t generation) {
    if (!listening()) return;
    absl::MutexLock lock(&mu_);
    if (generation != generation_) return;  // something changed meanwhile
    if (map_.size() >= max_entries_) map_.clear();
    map_.insert_or_assign(key, std::move(value));
  }
  void Invalidate(const std::string& key) {
    absl::MutexLock lock(&mu_);
    ++generation_;
    if (any_change_clears_) {
      map_.clear();
    } else {
      map_.erase(key);
    }
  }

 private:
  void OnInvalidate(const std::string& key) override { Invalidate(key); }
  void OnReset() override {
    absl::MutexLock lock(&mu_);
    ++generation_;
    map_.clear();
  }

  const size_t max_entries_;
  const bool any_change_clears_;
  absl::Mutex mu_;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  std::unordered_map<std::string, V> map_ ABSL_GUARDED_BY(mu_);
};

}  // namespace connecting::db

#endif  // CONNECTING_LIBS_DB_NOTIFY_CACHE_H_
