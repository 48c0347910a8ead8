#include "libs/db/migrations.h"

#include <algorithm>
#include <random>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

namespace connecting::db {
namespace {

// Any constant works; it only has to be the same for every replica.
constexpr char kLockKey[] = "7355608120260101";

bool Repeatable(const Migration& m) { return absl::StartsWith(m.name, "R__"); }

bool NoTransaction(const Migration& m) {
  absl::string_view sql = m.sql;
  return absl::StripTrailingAsciiWhitespace(sql.substr(0, sql.find('\n'))) == kNoTransaction;
}

bool IdentStart(char c) { return absl::ascii_isalpha(c) || c == '_'; }
bool IdentChar(char c) { return absl::ascii_isalnum(c) || c == '_' || c == '$'; }

// Where the comment, quoted text or dollar-quoted text starting at `i` ends
// (the index just past it), or `i` when none starts there.
size_t SkipQuoted(absl::string_view sql, size_t i) {
  const size_t n = sql.size();
  if (sql.substr(i, 2) == "--") {
    size_t e = sql.find('\n', i);
    return e == absl::string_view::npos ? n : e + 1;
  }
  if (sql.substr(i, 2) == "/*") {  // nested, as PostgreSQL has them
    int depth = 0;
    for (size_t j = i; j < n; ++j) {
      if (sql.substr(j, 2) == "/*") {
        ++depth;
        ++j;
      } else if (sql.substr(j, 2) == "*/") {
        ++j;
        if (--depth == 0) return j + 1;
      }
    }
    return n;
  }
  if (sql[i] == '\'' || sql[i] == '"') {
    // An E'' string takes backslash escapes; '' and "" inside are two
    // quoted runs side by side, which is the same for finding the end.
    const bool escapes = sql[i] == '\'' && i > 0 && (sql[i - 1] == 'E' || sql[i - 1] == 'e') &&
                         (i < 2 || !IdentChar(sql[i - 2]));
    for (size_t j = i + 1; j < n; ++j) {
      if (escapes && sql[j] == '\\') {
        ++j;
      } else if (sql[j] == sql[i]) {
        return j + 1;
      }
    }
    return n;
  }
  if (sql[i] == '$' && (i == 0 || !IdentChar(sql[i - 1]))) {  // $tag$ … $tag$
    size_t j = i + 1;
    if (j < n && absl::ascii_isdigit(sql[j])) return i;  // a parameter, $1
    while (j < n && IdentChar(sql[j]) && sql[j] != '$') ++j;
    if (j >= n || sql[j] != '$') return i;
    absl::string_view tag = sql.substr(i, j + 1 - i);
    size_t e = sql.find(tag, j + 1);
    return e == absl::string_view::npos ? n : e + tag.size();
  }
  return i;
}

bool CommentAt(absl::string_view sql, size_t i) {
  return sql.substr(i, 2) == "--" || sql.substr(i, 2) == "/*";
}

// Past the white space and comments starting at `i`.
size_t SkipSpaceAndComments(absl::string_view sql, size_t i) {
  while (i < sql.size()) {
    if (absl::ascii_isspace(sql[i])) {
      ++i;
    } else if (CommentAt(sql, i)) {
      i = SkipQuoted(sql, i);
    } else {
      break;
    }
  }
  return i;
}

// The statements of `sql`, split at the semicolons outside comments and
// quoted text, each without its semicolon; those holding only comments and
// white space are left out.
std::vector<std::string> Statements(absl::string_view sql) {
  std::vector<std::string> out;
  size_t start = 0;
  bool content = false;
  for (size_t i = 0; i <= sql.size();) {
    if (i == sql.size() || sql[i] == ';') {
      if (content) out.emplace_back(absl::StripAsciiWhitespace(sql.substr(start, i - start)));
      start = ++i;
      content = false;
      continue;
    }
    size_t end = SkipQuoted(sql, i);
    if (end == i) end = i + 1;
    if (!CommentAt(sql, i) && !absl::ascii_isspace(sql[i])) content = true;
    i = end;
  }
  return out;
}

// The words a statement starts with, comments skipped: keywords upper-cased,
// names as written (a quoted name with its quotes, a qualified one whole).
std::vector<std::string> LeadingWords(absl::string_view sql, size_t count) {
  std::vector<std::string> words;
  for (size_t i = SkipSpaceAndComments(sql, 0); i < sql.size() && words.size() < count;
       i = SkipSpaceAndComments(sql, i)) {
    size_t j = i;
    while (j < sql.size()) {  // a name, possibly qualified: a.b, "A".b
      if (sql[j] == '"') {
        j = SkipQuoted(sql, j);
      } else if (IdentStart(sql[j])) {
        while (j < sql.size() && IdentChar(sql[j])) ++j;
      } else {
        break;
      }
      if (j >= sql.size() || sql[j] != '.') break;
      ++j;
    }
    if (j == i) break;  // punctuation: no more words
    std::string word(sql.substr(i, j - i));
    if (word[0] != '"' && word.find('.') == std::string::npos) absl::AsciiStrToUpper(&word);
    words.push_back(std::move(word));
    i = j;
  }
  return words;
}

// A statement's first line once the comments before it are left out.
absl::string_view FirstLine(absl::string_view sql) {
  absl::string_view rest = sql.substr(SkipSpaceAndComments(sql, 0));
  return absl::StripTrailingAsciiWhitespace(rest.substr(0, rest.find('\n')));
}

// The index a CREATE INDEX statement builds; "" for any other statement.
// A CREATE INDEX in a migration run outside a transaction must read
// CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS name (else an error):
// only that can run again after a failure part-way.
absl::StatusOr<std::string> IndexBuilt(absl::string_view statement) {
  std::vector<std::string> w = LeadingWords(statement, 8);
  if (w.empty() || w[0] != "CREATE") return std::string();
  size_t k = w.size() > 1 && w[1] == "UNIQUE" ? 2 : 1;
  if (w.size() <= k || w[k] != "INDEX") return std::string();
  ++k;
  if (w.size() < k + 5 || w[k] != "CONCURRENTLY" || w[k + 1] != "IF" || w[k + 2] != "NOT" ||
      w[k + 3] != "EXISTS" || w[k + 4] == "ON") {
    return absl::FailedPreconditionError(
        "a migration run outside a transaction builds an index with "
        "CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS <name> (so that running it again "
        "after a failure part-way resumes it)");
  }
  return w[k + 4];
}

// True for a statement that changes an index CONCURRENTLY: it never holds
// writes back, and it waits for every older transaction, as long as they
// take, whatever lock_timeout says.
bool Concurrently(absl::string_view statement) {
  std::vector<std::string> w = LeadingWords(statement, 4);
  if (w.empty() || (w[0] != "CREATE" && w[0] != "DROP" && w[0] != "REINDEX")) return false;
  return std::find(w.begin(), w.end(), "CONCURRENTLY") != w.end();
}

// `d` as PostgreSQL's lock_timeout: whole milliseconds, at least one (0
// would mean no limit).
std::string LockTimeout(absl::Duration d) {
  return absl::StrCat(std::max<int64_t>(1, absl::ToInt64Milliseconds(d)), "ms");
}

// The sessions of pg_stat_activity (as `a`) that `from_where` selects
// ("FROM … WHERE …"), oldest `since` first, at most 5: "pid N (application,
// state, <since_label> S s; last statement: …)", joined by "; ".
absl::StatusOr<std::string> Sessions(Conn& conn, absl::string_view since,
                                     absl::string_view since_label, absl::string_view from_where,
                                     const std::vector<Param>& params = {}) {
  absl::StatusOr<Result> r = conn.Exec(
      absl::StrCat("SELECT a.pid, coalesce(nullif(a.application_name, ''), a.usename::text, '?'), "
                   "coalesce(a.state, '?'), floor(extract(epoch FROM clock_timestamp() - a.",
                   since,
                   "))::bigint, "
                   "left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 100) ",
                   from_where, " ORDER BY a.", since, " LIMIT 5"),
      params);
  if (!r.ok()) return r.status();
  std::vector<std::string> out;
  for (int i = 0; i < r->rows(); ++i) {
    out.push_back(absl::StrCat("pid ", r->Int(i, 0), " (", r->String(i, 1), ", ", r->String(i, 2),
                               ", ", since_label, " ", r->Int(i, 3),
                               " s; last statement: ", r->String(i, 4), ")"));
  }
  return absl::StrJoin(out, "; ");
}

// The transactions open in this database since at least `age` ago that
// hold a table lock, oldest first: who a migration most likely waited for.
std::string OpenTransactions(Conn& conn, absl::Duration age) {
  absl::StatusOr<std::string> open =
      Sessions(conn, "xact_start", "transaction open",
               "FROM pg_stat_activity a "
               "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() "
               "AND a.xact_start <= clock_timestamp() - $1::interval "
               "AND EXISTS (SELECT 1 FROM pg_locks l "
               "            WHERE l.pid = a.pid AND l.granted AND l.locktype = 'relation')",
               {absl::StrCat(absl::ToInt64Milliseconds(age), " milliseconds")});
  return open.ok() ? *open : absl::StrCat("(could not be listed: ", open.status().message(), ")");
}

// Runs `attempt` (given the lock_timeout to set, "" for none) until it ends
// other than by a lock_timeout, as MigrateOptions says; ABORTED once
// lock_wait is spent.
absl::Status WithLockRetries(Conn& conn, const std::string& what, const MigrateOptions& o,
                             absl::FunctionRef<absl::Status(const std::string&)> attempt) {
  if (o.lock_timeout <= absl::ZeroDuration()) return attempt("");
  thread_local std::minstd_rand random(std::random_device{}());
  const absl::Time give_up = absl::Now() + o.lock_wait;
  absl::Duration wait = std::min(absl::Milliseconds(100), o.lock_timeout);
  absl::Duration pause = absl::Milliseconds(500);
  for (int n = 1;; ++n) {
    const absl::Time began = absl::Now();
    absl::Status s = attempt(LockTimeout(wait));
    if (!IsLockNotAvailable(s)) return s;
    const absl::Duration waited = absl::Now() - began;
    std::string holders = OpenTransactions(conn, waited);
    const absl::Duration left = give_up - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::AbortedError(absl::StrCat(
          "could not take the locks it needs within ", absl::FormatDuration(o.lock_wait), " (", n,
          " attempts, none waiting longer than ", absl::FormatDuration(wait),
          ", so as not to hold the service's queries up); transactions open since before the "
          "last attempt: ",
          holders.empty() ? "none" : holders,
          ". Run it again once they end (or end them: pg_terminate_backend(pid))"));
    }
    // Up to a quarter longer, so that replicas retrying together spread;
    // the last attempt comes when lock_wait is up.
    const absl::Duration next =
        std::min(pause * (1 + std::uniform_real_distribution<>(0, 0.25)(random)), left);
    if (o.on_lock_busy) o.on_lock_busy(what, n, waited, next, holders);
    absl::SleepFor(next);
    wait = std::min(wait * 2, o.lock_timeout);
    pause = std::min(pause * 2, absl::Seconds(10));
  }
}

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

// Drops `index` if a build of it failed part-way (it is left INVALID:
// never read, yet kept up to date by every write).
absl::Status DropIfInvalid(Conn& conn, const std::string& index) {
  absl::StatusOr<Result> invalid =
      conn.Exec("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", {index});
  if (!invalid.ok()) return invalid.status();
  if (invalid->rows() == 0 || !invalid->Bool(0, 0)) return absl::OkStatus();
  return conn.ExecScript(absl::StrCat("DROP INDEX CONCURRENTLY IF EXISTS ", index));
}

// Runs a migration marked kNoTransaction: statement by statement, each in
// its own transaction, so CREATE INDEX CONCURRENTLY lets writes through
// while it builds; recorded once all have run. Nothing runs unless every
// index build is written to be run again.
absl::Status ApplyWithoutTransaction(Conn& conn, const MigrationSet& set, const Migration& m,
                                     const MigrateOptions& o) {
  std::vector<std::string> statements = Statements(m.sql);
  std::vector<std::string> indexes;
  for (const std::string& st : statements) {
    absl::StatusOr<std::string> index = IndexBuilt(st);
    if (!index.ok()) return index.status();
    indexes.push_back(*index);
  }
  for (size_t i = 0; i < statements.size(); ++i) {
    if (o.progress) {
      o.progress(absl::StrCat(set.component, "/", m.name), i + 1, statements.size(),
                 FirstLine(statements[i]));
    }
    absl::Status s = indexes[i].empty() ? absl::OkStatus() : DropIfInvalid(conn, indexes[i]);
    if (s.ok() && Concurrently(statements[i])) {
      s = conn.ExecScript(statements[i]);
    } else if (s.ok()) {
      s = WithLockRetries(
          conn,
          absl::StrCat(set.component, "/", m.name, " statement ", i + 1, " of ", statements.size()),
          o, [&](const std::string& lock_timeout) {
            if (lock_timeout.empty()) return conn.ExecScript(statements[i]);
            // For the session: the statement may commit (a DO block's batches).
            absl::Status s =
                conn.ExecScript(absl::StrCat("SET lock_timeout = '", lock_timeout, "'"));
            if (s.ok()) s = conn.ExecScript(statements[i]);
            absl::Status reset = conn.ExecScript("RESET lock_timeout");
            return s.ok() ? reset : s;
          });
    }
    if (!s.ok()) {
      if (!indexes[i].empty()) (void)DropIfInvalid(conn, indexes[i]);
      return absl::Status(s.code(), absl::StrCat("at statement ", i + 1, " of ", statements.size(),
                                                 " (running it again resumes): ", s.message()));
    }
  }
  return conn
      .Exec("INSERT INTO schema_migrations (component, name, checksum) VALUES ($1, $2, md5($3))",
            {set.component, m.name, m.sql})
      .status();
}

absl::StatusOr<std::vector<std::string>> MigrateLocked(Conn& conn,
                                                       const std::vector<MigrationSet>& sets,
                                                       const MigrateOptions& o) {
  std::vector<std::string> applied;
  for (const MigrationSet& set : sets) {
    absl::StatusOr<std::vector<const Migration*>> plan = ToApply(conn, set, o.ahead);
    if (!plan.ok()) return plan.status();
    for (const Migration* m : *plan) {
      if (NoTransaction(*m)) {
        absl::Status s = Repeatable(*m)
                             ? absl::FailedPreconditionError(absl::StrCat(
                                   "a repeatable migration runs in a transaction; only a "
                                   "versioned one may start with ",
                                   kNoTransaction))
                             : ApplyWithoutTransaction(conn, set, *m, o);
        if (!s.ok()) {
          return absl::Status(s.code(), absl::StrCat("migration ", set.component, "/", m->name,
                                                     " failed: ", s.message()));
        }
        applied.push_back(absl::StrCat(set.component, "/", m->name));
        continue;
      }
      const std::string name = absl::StrCat(set.component, "/", m->name);
      absl::Status s = WithLockRetries(conn, name, o, [&](const std::string& lock_timeout) {
        absl::Status s = conn.ExecScript("BEGIN");
        if (s.ok() && !lock_timeout.empty()) {
          s = conn.ExecScript(absl::StrCat("SET LOCAL lock_timeout = '", lock_timeout, "'"));
        }
        if (s.ok()) s = conn.ExecScript(m->sql);
        if (s.ok()) {
          s = conn.Exec(
                      "INSERT INTO schema_migrations (component, name, checksum) "
                      "VALUES ($1, $2, md5($3)) ON CONFLICT (component, name) DO UPDATE "
                      "SET checksum = EXCLUDED.checksum, applied_at = now()",
                      {set.component, m->name, m->sql})
                  .status();
        }
        if (s.ok()) s = conn.ExecScript("COMMIT");
        if (!s.ok()) (void)conn.ExecScript("ROLLBACK");
        return s;
      });
      if (!s.ok()) {
        return absl::Status(s.code(), absl::StrCat("migration ", set.component, "/", m->name,
                                                   " failed: ", s.message()));
      }
      applied.push_back(absl::StrCat(set.component, "/", m->name));
    }
  }
  return applied;
}

// Who holds the migration lock: "pid N (application, state, connected S s;
// last statement: …)", or "".
std::string Migrating(Conn& conn) {
  absl::StatusOr<std::string> holder =
      Sessions(conn, "backend_start", "connected",
               absl::StrCat("FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                            "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
                            "(SELECT oid FROM pg_database WHERE datname = current_database()) "
                            "AND ((l.classid::bigint << 32) | l.objid::bigint) = ",
                            kLockKey));
  return holder.ok() ? *holder : "";
}

}  // namespace

absl::StatusOr<std::vector<std::string>> Migrate(Conn& conn, const std::vector<MigrationSet>& sets,
                                                 const MigrateOptions& options) {
  // Tried rather than waited for in PostgreSQL: a statement waiting for the
  // lock holds a snapshot, which CREATE INDEX CONCURRENTLY under that lock
  // would wait for in turn (a deadlock, which PostgreSQL breaks by failing
  // one of them). Waiting here, between statements, holds none.
  const absl::Time start = absl::Now();
  absl::Time tell_at = start + absl::Seconds(1);
  for (;;) {
    absl::StatusOr<Result> got =
        conn.Exec(absl::StrCat("SELECT pg_try_advisory_lock(", kLockKey, ")"));
    if (!got.ok()) return got.status();
    if (got->Bool(0, 0)) break;
    if (options.on_waiting_for_other && absl::Now() >= tell_at) {
      options.on_waiting_for_other(absl::Now() - start, Migrating(conn));
      tell_at = absl::Now() + absl::Seconds(30);
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  absl::Status s = conn.ExecScript(
      "CREATE TABLE IF NOT EXISTS schema_migrations ("
      "  component text NOT NULL,"
      "  name text NOT NULL,"
      "  checksum text NOT NULL,"
      "  applied_at timestamptz NOT NULL DEFAULT now(),"
      "  PRIMARY KEY (component, name))");
  absl::StatusOr<std::vector<std::string>> result =
      s.ok() ? MigrateLocked(conn, sets, options) : absl::StatusOr<std::vector<std::string>>(s);
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
