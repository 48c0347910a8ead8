// Group commit for hot rows, in two round trips per batch.
//
// Writes that lock the same row (e.g. the seats of one popular session)
// serialise on that lock, and each holds it through its commit's WAL flush, so
// a hot row sees one commit per flush. GroupCommitter lets such writes share a
// transaction: the first caller for a key becomes the leader and runs its own
// work and that of every caller that queued for the same key meanwhile, then
// commits once. Callers get their own status.
//
// Each caller's work has two phases, so that a batch of any size costs two
// round trips to PostgreSQL (pipelined):
//   1. BEGIN, then every item's `first` statement;
//   2. what each item's `then` returns (given its `first` rows), then COMMIT.
// `first` must report refusals as rows rather than raise errors, and write
// nothing when it refuses: `then` turns such rows into the caller's error
// without disturbing the others. A `first` that raises anyway, or a `then`
// that fails with INTERNAL (something unexpected after `first` wrote), fails
// that caller alone: the batch rolls back and runs again without it.
// A serialization failure or deadlock retries the whole batch, so `then` may
// run more than once and must only overwrite what it sets.
#ifndef CONNECTING_LIBS_DB_GROUP_COMMIT_H_
#define CONNECTING_LIBS_DB_GROUP_COMMIT_H_

#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "libs/db/db.h"

namespace prometheus {
class Histogram;
}  // namespace prometheus

namespace connecting::db {

class GroupCommitter {
 public:
  struct Work {
    Statement first;
    // Runs on the leader's thread while the transaction is open; returns the
    // statements to commit with (e.g. outbox rows) or this caller's error.
    std::function<absl::StatusOr<std::vector<Statement>>(const Result& first_rows)> then;
  };

  // `name` labels its metric: connecting_group_commit_batch_size{committer=name},
  // how many callers each committed transaction carried.
  GroupCommitter(Pool& pool, const std::string& name, int max_batch = 64);

  // Runs `work` inside a transaction shared with other work for `key`. Blocks
  // until that transaction has committed (or failed).
  absl::Status Run(const std::string& key, absl::Time deadline, Work work);

 private:
  struct Item {
    Work work;
    absl::Status result;
    bool done = false;
  };
  struct Queue {
    std::vector<Item*> pending;
    bool busy = false;
  };

  // Runs the batch to completion: every item's result is set.
  void RunBatch(std::vector<Item*> batch, absl::Time deadline);

  Pool& pool_;
  const int max_batch_;
  prometheus::Histogram* batch_sizes_;
  absl::Mutex mu_;
  std::unordered_map<std::string, Queue> queues_ ABSL_GUARDED_BY(mu_);
};

}  // namespace connecting::db

#endif  // CONNECTING_LIBS_DB_GROUP_COMMIT_H_
