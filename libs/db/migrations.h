// Versioned and repeatable SQL migrations.
//
// Each component (the shared bus tables, then the service's own) has an ordered
// list of migrations named NNNN_description. Migrate() applies the ones not yet
// recorded in `schema_migrations`, each in its own transaction, while holding a
// session advisory lock, so several replicas starting at once apply each
// migration exactly once. A migration whose text changed after it was applied
// is refused (FAILED_PRECONDITION): write a new one instead.
//
// A repeatable migration, named R__description, holds the whole current
// definition of something that is replaced rather than altered (a function):
// it is applied, after every versioned one of its component, whenever its text
// differs from what was last applied. Change the definition by editing the
// file, not by restating it in a new versioned migration; it must be safe to
// run again (CREATE OR REPLACE, or DROP … IF EXISTS then CREATE).
//
// A binary older than its database (a newer release already applied
// versioned migrations this one does not have, as while old and new replicas
// overlap in a rolling update) leaves the component's repeatable migrations
// as they are: it would otherwise put back its own, older definitions. So a
// release that edits a repeatable migration adds a versioned one too (a
// no-op, `SELECT 1`, if it has nothing else to change): that is what tells
// the older binaries. (Remembering replaced texts instead would also refuse a
// release that reverts to an earlier text.) tests/repeatable_migrations_test.sh
// enforces it: each directory's repeatable.lock lists every text of its R__
// files with the versioned migration released with it.
//
// A versioned migration whose first line is kNoTransaction runs outside a
// transaction, one statement at a time, so that it can build indexes with
// CREATE INDEX CONCURRENTLY, which lets the table's writes through while it
// builds (inside a transaction, CREATE INDEX holds them until it ends). It is
// recorded once its last statement has run; a failure part-way leaves the
// statements before it done, and the next Migrate runs it again from the
// start, so each statement must be safe to run again: Migrate refuses
// (FAILED_PRECONDITION, before running any) a CREATE INDEX not written
// CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS <name>, and drops an index
// of that name a failed build left invalid before building it again. Use
// DROP INDEX CONCURRENTLY IF EXISTS, and build a replacement under a new name
// before dropping the index it replaces, so that reads keep an index. Each
// statement runs at the top level, so a DO block there may COMMIT: that is
// how a backfill changes rows in batches (docs/operations.md), skipping the
// rows already done so that it too can run again.
#ifndef CONNECTING_LIBS_DB_MIGRATIONS_H_
#define CONNECTING_LIBS_DB_MIGRATIONS_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "libs/db/db.h"

namespace connecting::db {

// The first line of a migration that runs outside a transaction (above).
inline constexpr char kNoTransaction[] = "-- connecting:no-transaction";

struct Migration {
  std::string name;  // e.g. "0001_init" (in the order given), or "R__book_session"
  std::string sql;
};

struct MigrationSet {
  std::string component;  // e.g. "bus", "partners"
  std::vector<Migration> migrations;
};

// Told before each statement of a migration run outside a transaction (an
// index build may take minutes): "component/name", the statement's number
// (from 1) and how many there are, and its first line (comments left out).
using MigrationProgress = std::function<void(const std::string& migration, size_t statement,
                                             size_t statements, absl::string_view first_line)>;

// Told each time a migration (or one statement of a migration run outside
// a transaction) gave up waiting for a lock and will try again: which
// ("component/name"), the attempt that failed (from 1), how long it waited,
// how long until the next, and the transactions open in the database since
// before that attempt began, the likely holders ("" if none).
using MigrationLockBusy =
    std::function<void(const std::string& migration, int attempt, absl::Duration waited,
                       absl::Duration next_in, const std::string& holders)>;

struct MigrateOptions {
  // Receives the versioned migrations the database has and the sets do
  // not (the components whose repeatable migrations were left alone).
  std::vector<std::string>* ahead = nullptr;
  MigrationProgress progress;
  // A statement waiting for a table lock (ALTER TABLE behind a long read)
  // makes every later query of that table wait behind it: the service
  // stops. So each attempt waits at most lock_timeout (100 ms at first,
  // doubling up to this), then rolls back, lets the queue through for a
  // pause (0.5 s at first, doubling up to 10 s) and tries again, until
  // lock_wait has passed: then ABORTED, naming the open transactions.
  // Zero: wait without bound. Index builds and drops CONCURRENTLY never
  // hold writes back and wait as long as they must.
  absl::Duration lock_timeout = absl::Seconds(1);
  absl::Duration lock_wait = absl::Minutes(10);
  MigrationLockBusy on_lock_busy;
  // Told while another process migrates this database (each replica with
  // MIGRATE_ON_START waits its turn, however long): after 1 s, then every
  // 30 s, with how long this one has waited and who migrates ("pid N
  // (application, state, …)", or "" if it could not be seen).
  std::function<void(absl::Duration waited, const std::string& migrating)> on_waiting_for_other;
};

// Returns "component/name" of each migration applied by this call.
absl::StatusOr<std::vector<std::string>> Migrate(Conn& conn, const std::vector<MigrationSet>& sets,
                                                 const MigrateOptions& options = {});

// What Migrate would apply now ("component/name", in order), without
// applying anything or taking the lock: empty once the database is at least
// as migrated as `sets` (a newer release's database counts). FAILED_PRECONDITION
// as Migrate, for a versioned migration edited after it was applied.
absl::StatusOr<std::vector<std::string>> Pending(Conn& conn, const std::vector<MigrationSet>& sets);

}  // namespace connecting::db

#endif  // CONNECTING_LIBS_DB_MIGRATIONS_H_
