#include "libs/db/migrations.h"

#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace connecting::db {
namespace {

// Any constant works; it only has to be the same for every replica.
constexpr char kLockKey[] = "7355608120260101";

bool Repeatable(const Migration& m) { return absl::StartsWith(m.name, "R__"); }

// `set`'s migrations in the order they apply: the versioned ones, then (with
// `repeatables`) the repeatable ones, each in the order given.
std::vector<const Migration*> InOrder(const MigrationSet& set, bool repeatables) {
  std::vector<const Migration*> order;
  for (const Migration& m : set.migrations) {
    if (!Repeatable(m)) order.push_back(&m);
  }
  for (const Migration& m : set.migrations) {
    if (Repeatable(m) && repeatables) order.push_back(&m);
  }
  return order;
}

// What Migrate would apply of `set`, in order: versioned migrations first,
// then the repeatable ones (unless a newer release migrated the component:
// its repeatables stay as they are), each in the order given, leaving out
// what is applied as it is. A versioned migration edited since it was applied
// is an error.
absl::StatusOr<std::vector<const Migration*>> ToApply(Conn& conn, const MigrationSet& set,
                                                      std::vector<std::string>* ahead) {
  std::set<std::string> versioned;
  for (const Migration& m : set.migrations) {
    if (!Repeatable(m)) versioned.insert(m.name);
  }
  absl::StatusOr<Result> recorded = conn.Exec(
      "SELECT name FROM schema_migrations WHERE component = $1 AND left(name, 3) <> 'R__' "
      "ORDER BY name",
      {set.component});
  if (!recorded.ok()) return recorded.status();
  bool newer = false;
  for (int i = 0; i < recorded->rows(); ++i) {
    if (versioned.count(recorded->String(i, 0)) > 0) continue;
    newer = true;
    if (ahead != nullptr) {
      ahead->push_back(absl::StrCat(set.component, "/", recorded->String(i, 0)));
    }
  }
  std::vector<const Migration*> out;
  for (const Migration* m : InOrder(set, !newer)) {
    absl::StatusOr<Result> seen = conn.Exec(
        "SELECT checksum = md5($3) FROM schema_migrations WHERE component = $1 AND name = $2",
        {set.component, m->name, m->sql});
    if (!seen.ok()) return seen.status();
    if (seen->rows() == 1) {
      if (seen->Bool(0, 0)) continue;  // applied as it is
      if (!Repeatable(*m)) {
        return absl::FailedPreconditionError(
            absl::StrCat("migration ", set.component, "/", m->name,
                         " was edited after it was applied; add a new migration instead"));
      }
    }
    out.push_back(m);
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> MigrateLocked(Conn& conn,
                                                       const std::vector<MigrationSet>& sets,
                                                       std::vector<std::string>* ahead) {
  std::vector<std::string> applied;
  for (const MigrationSet& set : sets) {
    absl::StatusOr<std::vector<const Migration*>> plan = ToApply(conn, set, ahead);
    if (!plan.ok()) return plan.status();
    for (const Migration* m : *plan) {
      if (absl::Status s = conn.ExecScript("BEGIN"); !s.ok()) return s;
      absl::Status s = conn.ExecScript(m->sql);
      if (s.ok()) {
        s = conn.Exec(
                    "INSERT INTO schema_migrations (component, name, checksum) "
                    "VALUES ($1, $2, md5($3)) ON CONFLICT (component, name) DO UPDATE "
                    "SET checksum = EXCLUDED.checksum, applied_at = now()",
                    {set.component, m->name, m->sql})
                .status();
      }
      if (s.ok()) s = conn.ExecScript("COMMIT");
      if (!s.ok()) {
        (void)conn.ExecScript("ROLLBACK");
        return absl::Status(s.code(), absl::StrCat("migration ", set.component, "/", m->name,
                                                   " failed: ", s.message()));
      }
      applied.push_back(absl::StrCat(set.component, "/", m->name));
    }
  }
  return applied;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> Migrate(Conn& conn, const std::vector<MigrationSet>& sets,
                                                 std::vector<std::string>* ahead) {
  if (absl::Status s = conn.ExecScript(absl::StrCat("SELECT pg_advisory_lock(", kLockKey, ")"));
      !s.ok()) {
    return s;
  }
  absl::Status s = conn.ExecScript(
      "CREATE TABLE IF NOT EXISTS schema_migrations ("
      "  component text NOT NULL,"
      "  name text NOT NULL,"
      "  checksum text NOT NULL,"
      "  applied_at timestamptz NOT NULL DEFAULT now(),"
      "  PRIMARY KEY (component, name))");
  absl::StatusOr<std::vector<std::string>> result =
      s.ok() ? MigrateLocked(conn, sets, ahead) : absl::StatusOr<std::vector<std::string>>(s);
  (void)conn.ExecScript(absl::StrCat("SELECT pg_advisory_unlock(", kLockKey, ")"));
  return result;
}

absl::StatusOr<std::vector<std::string>> Pending(Conn& conn,
                                                 const std::vector<MigrationSet>& sets) {
  std::vector<std::string> out;
  absl::StatusOr<Result> table = conn.Exec("SELECT to_regclass('schema_migrations') IS NOT NULL");
  if (!table.ok()) return table.status();
  for (const MigrationSet& set : sets) {
    // A database never migrated (no schema_migrations yet) lacks all of it.
    absl::StatusOr<std::vector<const Migration*>> plan =
        table->Bool(0, 0) ? ToApply(conn, set, nullptr) : InOrder(set, true);
    if (!plan.ok()) return plan.status();
    for (const Migration* m : *plan) out.push_back(absl::StrCat(set.component, "/", m->name));
  }
  return out;
}

}  // namespace connecting::db
