// A read-through cache kept coherent by PostgreSQL LISTEN/NOTIFY.
//
// A trigger on the cached table calls pg_notify(<channel>, <key>) when a row
// changes; every replica listens and drops that key, so a cached value is at
// most one notification delivery (~1 ms) behind a commit made by another
// replica, and never behind the replica's own writes (it calls Invalidate
// after committing). While the listening connection is down the cache is
// emptied and bypassed, since notifications may have been missed; one that
// falls silent without closing (a failover, the network gone) counts as down
// within about three seconds (see kCheckEvery).
//
// Loading is race-free with generations: take Generation() before reading the
// database and pass it to Put(); a value read before an invalidation is never
// stored after it.
//
// Memory is bounded in bytes, not entries: a value's cost is its in-memory
// size (protobuf's SpaceUsedLong) plus its key's, and a Put that would go
// past the budget evicts entries, in no particular order, until it fits. A
// value larger than the whole budget is not kept. Each cache reports
// connecting_cache_bytes, _entries and _lookups_total{result} by its name.
#ifndef CONNECTING_LIBS_DB_NOTIFY_CACHE_H_
#define CONNECTING_LIBS_DB_NOTIFY_CACHE_H_

#include <atomic>
#include <cstddef>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace prometheus {
class Counter;
class Gauge;
}  // namespace prometheus

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
  // After this long without a word from the server the listener asks
  // whether its connection still stands (SELECT 1, answered within
  // kCheckTimeout, or the connection is dropped and the cache bypassed until
  // LISTEN is in place again): a change is missed for at most about their sum.
  static constexpr absl::Duration kCheckEvery = absl::Seconds(1);
  static constexpr absl::Duration kCheckTimeout = absl::Seconds(2);
  const std::string db_url_;
  const std::string channel_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> listening_{false};
  int wake_fd_ = -1;
  std::thread thread_;
};

// A cache's metrics (libs/db/notify_cache.cc keeps Prometheus out of this
// header).
class CacheStats {
 public:
  explicit CacheStats(const std::string& name);
  void Lookup(bool hit);
  void Size(size_t entries, size_t bytes);

 private:
  prometheus::Counter* hits_;
  prometheus::Counter* misses_;
  prometheus::Gauge* entries_;
  prometheus::Gauge* bytes_;
};

template <class V>
class NotifyCache final : public NotifyListener {
 public:
  // key → value and its cost in bytes
  using Map = std::unordered_map<std::string, std::pair<V, size_t>>;
  // Each entry's bookkeeping beyond its key and value (hash node, sizes).
  static constexpr size_t kEntryOverhead = 64;

  // `name` labels its metrics. With `any_change_clears`, every notification
  // empties the whole cache (for values derived from many rows, such as list
  // pages). A budget of 0 keeps nothing.
  NotifyCache(const std::string& name, std::string db_url, std::string channel, size_t max_bytes,
              bool any_change_clears = false)
      : NotifyListener(std::move(db_url), std::move(channel)),
        max_bytes_(max_bytes),
        any_change_clears_(any_change_clears),
        stats_(name) {}
  ~NotifyCache() override { Stop(); }

  std::optional<V> Get(const std::string& key) {
    if (!listening()) return std::nullopt;
    absl::MutexLock lock(&mu_);
    auto it = map_.find(key);
    stats_.Lookup(it != map_.end());
    if (it == map_.end()) return std::nullopt;
    return it->second.first;
  }
  uint64_t Generation() {
    absl::MutexLock lock(&mu_);
    return generation_;
  }
  void Put(const std::string& key, V value, uint64_t generation) {
    if (!listening()) return;
    // Measured outside the lock: a page of organisations takes a while.
    const size_t cost = value.SpaceUsedLong() + key.size() + kEntryOverhead;
    absl::MutexLock lock(&mu_);
    if (generation != generation_) return;  // something changed meanwhile
    EraseLocked(key);
    if (cost > max_bytes_) return;
    while (bytes_ + cost > max_bytes_ && !map_.empty()) EraseLocked(map_.begin());
    map_.emplace(key, std::make_pair(std::move(value), cost));
    bytes_ += cost;
    stats_.Size(map_.size(), bytes_);
  }
  void Invalidate(const std::string& key) {
    absl::MutexLock lock(&mu_);
    ++generation_;
    if (any_change_clears_) {
      ClearLocked();
    } else {
      EraseLocked(key);
    }
    stats_.Size(map_.size(), bytes_);
  }
  // What the cache holds now, by its own count.
  std::pair<size_t, size_t> EntriesAndBytes() {
    absl::MutexLock lock(&mu_);
    return {map_.size(), bytes_};
  }

 private:
  void OnInvalidate(const std::string& key) override { Invalidate(key); }
  void OnReset() override {
    absl::MutexLock lock(&mu_);
    ++generation_;
    ClearLocked();
    stats_.Size(0, 0);
  }
  void EraseLocked(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = map_.find(key);
    if (it != map_.end()) EraseLocked(it);
  }
  void EraseLocked(typename Map::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    bytes_ -= it->second.second;
    map_.erase(it);
  }
  void ClearLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    map_.clear();
    bytes_ = 0;
  }

  const size_t max_bytes_;
  const bool any_change_clears_;
  CacheStats stats_;
  absl::Mutex mu_;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  Map map_ ABSL_GUARDED_BY(mu_);
};

}  // namespace connecting::db

#endif  // CONNECTING_LIBS_DB_NOTIFY_CACHE_H_
