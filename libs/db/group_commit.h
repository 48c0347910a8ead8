// Group commit for hot rows, in two round trips per batch.
//
// Writes that lock the same row (e.g. the seats of one popular session)
// serialise on that lock, and each holds it through its commit's WAL flush, so
// a hot row sees one commit per flush. GroupCommitter lets such writes share a
// transaction: callers queue their work under a key and return; one thread
// per key at a time runs everything queued for it as one transaction, commits
// once, and calls each caller back with its own status. Whatever queues while
// a batch runs goes into the next one.
//
// Each caller's work has two phases, so that a batch of any size costs two
// round trips to PostgreSQL (pipelined):
//   1. BEGIN, then every item's `first` statement;
//   2. what each item's `then` returns (given its `first` rows), then COMMIT.
// Items may share one `first` statement instead (the committer's Combine):
// e.g. a batch's bookings, one call of a database function that books them
// in the batch's order, taking each site's lock and writing its seat
// counters once for its bookings rather than once each.
// `first` must report refusals as rows rather than raise errors, and write
// nothing when it refuses: `then` turns such rows into the caller's error
// without disturbing the others. A `first` that raises anyway, or a `then`
// that fails with INTERNAL (something unexpected after `first` wrote), fails
// that caller alone: the batch rolls back and runs again without it.
// A serialization failure or deadlock retries the whole batch, so `then` may
// run more than once and must only overwrite what it sets.
//
// A caller whose `first` waits longer than `lock_wait` for a row lock (a
// long transaction holds it: a large session being cancelled, or a client
// that left one open) leaves its batch for a queue of its own per key,
// whose batches wait for their locks as long as their deadlines allow; the
// batch runs again without it. (A combined `first` of callers locking
// different rows that waits too long runs again with them alone, to find
// whose row is held.) Callers behind it that lock the same row
// (its `lock_order`) join it there, in order, while it waits; the rest of
// the key's callers go on being committed meanwhile.
//
// The callers of a batch are answered while the next batch's first round
// trip is at the database (at once when no batch follows, or before the
// next one waits for a connection). Answered one after another before the
// next batch began, their sends held up that batch, and with it a hot key's
// locks.
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
class Counter;
class Gauge;
class Histogram;
}  // namespace prometheus

namespace connecting::db {

class GroupCommitter {
 public:
  struct Work {
    // A batch runs its items by `lock_order` (ties in arrival order), so that
    // it takes row locks in the order every other writer of those rows uses,
    // and never deadlocks with one (e.g. the key of the row `first` locks).
    std::string lock_order;
    // A row `first` also locks that other writers lock before the rows of
    // `lock_order` (e.g. the person booked, before any seats): the batch
    // takes every item's `lock_first` row at its start, through the
    // committer's LockFirst, so that no item waits for one while the batch
    // holds what an earlier item locked. Empty: none.
    std::string lock_first;
    Statement first;
    // This item's values for the committer's Combine; empty: its `first`
    // always runs alone.
    std::vector<Param> args;
    // Runs on the batch's thread while the transaction is open; returns the
    // statements to commit with (e.g. outbox rows) or this caller's error.
    // `row`: this item's row of `first_rows` (0 unless combined).
    std::function<absl::StatusOr<std::vector<Statement>>(const Result& first_rows, int row)> then;
  };
  // Runs a task on some other thread; false if it cannot (e.g. a full queue).
  using Schedule = std::function<bool(std::function<void()>)>;
  using Done = std::function<void(absl::Status)>;
  // The statement locking the rows named by a batch's `lock_first` keys
  // (sorted and distinct; lock them in that order), run after BEGIN.
  using LockFirst = std::function<Statement(const std::vector<std::string>& keys)>;
  // The one statement doing the `first` of a run of items (two or more,
  // adjacent in the batch's order, `args` given), from their `args`, in
  // that order (so it takes their rows' locks in `lock_order`): its result
  // has a row per item, in the run's order. Should it raise, the batch runs
  // again with those items alone, so that the error is only the caller's
  // whose `first` raises it.
  using Combine = std::function<Statement(const std::vector<const Work*>& run)>;
  // Rewrites a batch's second round trip (every `then`'s statements, in the
  // batch's order, before COMMIT) into fewer statements doing the same (e.g.
  // bus::MergeOutboxRows): only their errors are read.
  using Merge = std::function<void(std::vector<Statement>* statements)>;

  // Batches run on threads `schedule` provides (one per key at a time), so a
  // waiting caller holds no thread. `name` labels the metrics
  // connecting_group_commit_batch_size{committer=name}, how many callers each
  // committed transaction carried, and connecting_group_commit_waiting, how
  // many wait now, and connecting_group_commit_lock_waits_total, how many
  // callers left their batch to wait for a lock; and, of a caller's time,
  // connecting_group_commit_queued_seconds, from Submit to the first round
  // trip of the first transaction to carry it (the batches before it), and
  // connecting_group_commit_transaction_seconds, a committed transaction's
  // time from its first round trip to its COMMIT's answer (its tries all).
  // At most `max_pending` callers wait at once. `lock_wait`: infinite,
  // every caller waits for its locks in its batch. `combine`: none, every
  // item's `first` runs alone. `merge`: none, the second round trip sends
  // every `then`'s statements.
  GroupCommitter(Pool& pool, const std::string& name, Schedule schedule, int max_batch = 64,
                 int max_pending = 4096, LockFirst lock_first = nullptr,
                 absl::Duration lock_wait = absl::InfiniteDuration(), Combine combine = nullptr,
                 Merge merge = nullptr);
  // Waits for the batches still running (a batch's thread goes on touching
  // the committer after it answered its last caller); `schedule` must run
  // what it accepted, as Executor does even when shutting down.
  ~GroupCommitter();

  // Queues `work` for a transaction shared with other work for `key` and
  // returns at once; `done` runs exactly once, on the batch's thread after
  // that transaction committed or failed (`done` must not block: the next
  // batch is at the database meanwhile). RESOURCE_EXHAUSTED, on the calling
  // thread, if too many wait or no thread can be had; DEADLINE_EXCEEDED if
  // `deadline` passed before the batch began.
  void Submit(const std::string& key, absl::Time deadline, Work work, Done done);

 private:
  struct Item {
    Work work;
    absl::Time deadline;
    Done done;
    absl::Status result;
    absl::Time submitted;  // for connecting_group_commit_queued_seconds
    bool carried = false;  // set by RunBatch: a transaction carried it (queued time observed)
    bool waits_for_lock = false;  // set by RunBatch: to its key's patient queue
    bool alone = false;           // set by RunBatch: its combined `first` raised or waited too long
  };
  struct Queue {
    std::vector<Item*> pending;
    // A patient queue (see Patient): how many of its callers, queued or in
    // its running batch, lock each row (by lock_order).
    std::unordered_map<std::string, int> rows;
  };

  // The queue of `key`'s callers that wait for a lock as long as it takes.
  static std::string Patient(const std::string& key) { return key + "\x1f(waiting for a lock)"; }
  static bool IsPatient(const std::string& key);
  // Whether `b`, just after `a` in a batch, shares its first statement.
  static bool Combinable(const Item& a, const Item& b);
  // Queues `items` under `key`, and starts a Drain for it if none runs;
  // fails them if no thread can be had for it.
  void Enqueue(const std::string& key, std::vector<Item*> items);
  // Runs the batches of `key` until none is waiting.
  void Drain(const std::string& key);
  // Runs the batch to completion: every item's result is set, or, unless
  // `patient`, its waits_for_lock. `answer` answers the batch before it:
  // RunBatch calls it while its first round trip is at the database, or
  // before it waits for a connection.
  void RunBatch(std::vector<Item*> batch, absl::Time deadline, bool patient,
                const std::function<void()>& answer);
  bool Idle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return queues_.empty(); }

  Pool& pool_;
  const Schedule schedule_;
  const int max_batch_;
  const int max_pending_;
  const LockFirst lock_first_;
  const absl::Duration lock_wait_;
  const Combine combine_;
  const Merge merge_;
  prometheus::Counter* lock_waits_;
  prometheus::Histogram* batch_sizes_;
  prometheus::Histogram* queued_;
  prometheus::Histogram* transactions_;
  prometheus::Gauge* waiting_;  // callers queued or in a running batch
  absl::Mutex mu_;
  // A key is present while a Drain for it is scheduled or running.
  std::unordered_map<std::string, Queue> queues_ ABSL_GUARDED_BY(mu_);
  int pending_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace connecting::db

#endif  // CONNECTING_LIBS_DB_GROUP_COMMIT_H_
