#include "libs/db/notify_cache.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "libs/common/log.h"
#include "libs/common/metrics.h"
#include "libs/db/db.h"

namespace connecting::db {

CacheStats::CacheStats(const std::string& name) {
  static auto& lookups = prometheus::BuildCounter()
                             .Name("connecting_cache_lookups_total")
                             .Help("Read-cache lookups by cache and result (hit, miss)")
                             .Register(*metrics::Registry());
  static auto& entries = prometheus::BuildGauge()
                             .Name("connecting_cache_entries")
                             .Help("Entries a read cache holds")
                             .Register(*metrics::Registry());
  static auto& bytes =
      prometheus::BuildGauge()
          .Name("connecting_cache_bytes")
          .Help("Bytes a read cache holds, by its own count (its budget bounds it)")
          .Register(*metrics::Registry());
  hits_ = &lookups.Add({{"cache", name}, {"result", "hit"}});
  misses_ = &lookups.Add({{"cache", name}, {"result", "miss"}});
  entries_ = &entries.Add({{"cache", name}});
  bytes_ = &bytes.Add({{"cache", name}});
}

void CacheStats::Lookup(bool hit) { (hit ? hits_ : misses_)->Increment(); }

void CacheStats::Size(size_t entries, size_t bytes) {
  entries_->Set(static_cast<double>(entries));
  bytes_->Set(static_cast<double>(bytes));
}

NotifyListener::NotifyListener(std::string db_url, std::string channel)
    : db_url_(std::move(db_url)), channel_(std::move(channel)) {
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

NotifyListener::~NotifyListener() {
  Stop();
  if (wake_fd_ >= 0) close(wake_fd_);
}

void NotifyListener::Start() {
  thread_ = std::thread([this] { Run(); });
}

void NotifyListener::Stop() {
  stop_.store(true);
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof one);
  if (thread_.joinable()) thread_.join();
}

void NotifyListener::Run() {
  std::unique_ptr<Conn> conn;
  while (!stop_.load()) {
    if (conn == nullptr || !conn->healthy()) {
      if (listening_.exchange(false)) log::Warn("cache listener lost", {{"channel", channel_}});
      OnReset();
      auto c = Conn::Open(db_url_, "cache-listener");
      if (!c.ok() || !(*c)->ExecScript(absl::StrCat("LISTEN ", channel_)).ok()) {
        pollfd p{wake_fd_, POLLIN, 0};
        (void)poll(&p, 1, 1000);
        continue;
      }
      conn = *std::move(c);
      OnReset();  // anything cached before LISTEN may have missed a change
      listening_.store(true);
    }
    pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {PQsocket(conn->raw()), POLLIN, 0}};
    const int ready = poll(fds, 2, static_cast<int>(absl::ToInt64Milliseconds(kCheckEvery)));
    if (ready == 0) {
      // Nothing heard for a while. A connection that died without a reset
      // (the server's host or the network gone, a failover) reads as quiet
      // for ever, while the changes it should announce go unheard and the
      // cache serves stale values: ask, briefly, whether anyone is there.
      if (!conn->Ping(kCheckTimeout).ok()) {
        conn.reset();  // logged as lost, and the cache emptied, above
        continue;
      }
    }
    {
      if (PQconsumeInput(conn->raw()) == 0) {
        conn.reset();
        continue;
      }
      while (PGnotify* n = PQnotifies(conn->raw())) {
        OnInvalidate(n->extra != nullptr ? n->extra : "");
        PQfreemem(n);
      }
    }
  }
  listening_.store(false);
}

}  // namespace connecting::db
