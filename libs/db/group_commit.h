// Group commit for hot rows.
//
// Writes that lock the same row (e.g. the seats of one popular session)
// serialise on that lock, and each holds it through its commit's WAL flush, so
// a hot row sees one commit per flush. GroupCommitter lets such writes share a
// transaction: the first caller for a key becomes the leader and runs, in one
// transaction, its own work and that of every caller that queued for the same
// key meanwhile, each in its own SAVEPOINT (one caller's error never undoes
// another's work), then commits once. Callers get their own status.
//
// A serialization failure or deadlock in any item retries the whole batch (the
// items' work must be repeatable, as for db::Transact).
#ifndef CONNECTING_LIBS_DB_GROUP_COMMIT_H_
#define CONNECTING_LIBS_DB_GROUP_COMMIT_H_

#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "libs/db/db.h"

namespace connecting::db {

class GroupCommitter {
 public:
  GroupCommitter(Pool& pool, int max_batch = 64) : pool_(pool), max_batch_(max_batch) {}

  // Runs `work` inside a transaction shared with other work for `key`. Blocks
  // until that transaction has committed (or failed).
  absl::Status Run(const std::string& key, absl::Time deadline,
                   std::function<absl::Status(Conn&)> work);

 private:
  struct Item {
    std::function<absl::Status(Conn&)> work;
    absl::Status result;
    bool done = false;
  };
  struct Queue {
    std::vector<Item*> pending;
    bool busy = false;
  };

  Pool& pool_;
  const int max_batch_;
  absl::Mutex mu_;
  std::unordered_map<std::string, Queue> queues_ ABSL_GUARDED_BY(mu_);
};

}  // namespace connecting::db

#endif  // CONNECTING_LIBS_DB_GROUP_COMMIT_H_
