// PostgreSQL access for the services: a fixed-size libpq connection pool,
// parameterised statements (prepared once per connection, text format), and
// transactions that retry on serialization failure and deadlock.
//
// Errors become absl::Status here and nowhere else:
//   unique violation (23505)           → ALREADY_EXISTS, constraint in ConstraintOf()
//   foreign key / check (23503, 23514) → FAILED_PRECONDITION, constraint in ConstraintOf()
//   serialization / deadlock           → ABORTED (Transact retries these)
//   lock not available (55P03)         → ABORTED, IsLockNotAvailable() (lock_timeout, NOWAIT)
//   statement timeout (57014)          → DEADLINE_EXCEEDED
//   lost or refused connection, server
//   out of disk, memory or connections
//   (08, 53), I/O error (58), shutdown → UNAVAILABLE
//   a write on a read-only server
//   (25006: a standby)                 → UNAVAILABLE, and the connection is dropped
//                                        (Transact and group commit try once more
//                                        on a new connection first)
//   anything else                      → INTERNAL (a bug in our SQL)
//
// Such a status (every one above, and every UNAVAILABLE this layer makes)
// keeps the database's own words (libpq's and PostgreSQL's messages: hosts,
// users, tables, constraints, stored values) for the server's log and dead
// letters, marked SaidByDatabase(): the RPC boundary answers a client in
// plain words instead (server::ToGrpcStatus).
//
// Threading: a Conn belongs to one thread at a time (the Lease holder); Pool is
// thread-safe.
#ifndef CONNECTING_LIBS_DB_DB_H_
#define CONNECTING_LIBS_DB_DB_H_

#include <libpq-fe.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace connecting::db {

// One statement parameter in PostgreSQL text format; std::nullopt is NULL.
class Param {
 public:
  Param(std::nullopt_t) {}                                   // NOLINT: implicit by design
  Param(absl::string_view s) : v_(std::string(s)) {}         // NOLINT
  Param(const char* s) : v_(std::string(s)) {}               // NOLINT
  Param(const std::string& s) : v_(s) {}                     // NOLINT
  Param(std::string&& s) : v_(std::move(s)) {}               // NOLINT
  Param(int64_t i) : v_(std::to_string(i)) {}                // NOLINT
  Param(int32_t i) : v_(std::to_string(i)) {}                // NOLINT
  Param(bool b) : v_(b ? "t" : "f") {}                       // NOLINT
  Param(std::optional<std::string> s) : v_(std::move(s)) {}  // NOLINT
  const std::optional<std::string>& value() const { return v_; }

 private:
  std::optional<std::string> v_;
};

// Empty string → NULL, for optional text columns.
inline Param NullIfEmpty(absl::string_view s) { return s.empty() ? Param(std::nullopt) : Param(s); }

// The rows of one statement. Accessors take (row, column) and must be in range.
class Result {
 public:
  explicit Result(PGresult* r) : res_(r, &PQclear) {}
  int rows() const { return PQntuples(res_.get()); }
  // Rows changed by INSERT/UPDATE/DELETE.
  int64_t affected() const;
  bool IsNull(int row, int col) const { return PQgetisnull(res_.get(), row, col) != 0; }
  absl::string_view Text(int row, int col) const {
    return {PQgetvalue(res_.get(), row, col),
            static_cast<size_t>(PQgetlength(res_.get(), row, col))};
  }
  std::string String(int row, int col) const { return std::string(Text(row, col)); }
  int64_t Int(int row, int col) const;
  bool Bool(int row, int col) const { return Text(row, col) == "t"; }
  const PGresult* raw_for_status() const { return res_.get(); }

 private:
  std::unique_ptr<PGresult, decltype(&PQclear)> res_;
};

// " LIMIT n" for a page of n rows, written into the statement text rather
// than passed as a parameter: PostgreSQL costs a LIMIT parameter as a tenth of
// the table, finds a plan for the actual value cheaper every time, and so
// plans every call afresh (for a page of 50, longer than running it). One
// text per page size: Conn keeps the statements it prepared bounded.
std::string LimitClause(int rows);

// The text values (in the "C" collation, byte order) that start with
// `prefix`, as the bounds lo <= v < hi: `hi` is the prefix with its last
// character raised by one code point (U+10FFFF characters dropped first);
// nullopt when nothing is left to raise. As parameters (`col >= $1 AND col <
// $2`) they walk an index on the column in a prepared statement's generic
// plan too, which `col LIKE $1` (a pattern PostgreSQL cannot see when it
// plans) never does: it reads the whole index.
struct TextRange {
  std::string lo;
  std::optional<std::string> hi;
};
TextRange PrefixRange(absl::string_view prefix);

// The condition that `lowered` (lower() of a "C"-collated column, or a
// column holding it) starts with `prefix` ignoring the case of ASCII letters
// (as lower() in "C" lowers them), written as a PrefixRange of an index on
// it; its parameters are appended to `params`.
std::string CaselessPrefix(absl::string_view lowered, absl::string_view prefix,
                           std::vector<Param>* params);

// The keyset condition of a list in the order (`lowered`, `name`, `id`),
// where `lowered` is lower() of the "C"-collated `name` (or a column holding
// it): the rows after the one whose name and id a page token holds. The
// lowered name follows from the name, so the token need not carry it. Its
// parameters are appended to `params`.
std::string CaselessAfter(absl::string_view lowered, absl::string_view name, absl::string_view id,
                          const std::string& after_name, const std::string& after_id,
                          std::vector<Param>* params);

// A statement with its parameters, to run later (see Conn::Pipeline).
struct Statement {
  std::string sql;
  std::vector<Param> params;
};

// One libpq connection.
class Conn {
 public:
  static constexpr absl::Duration kConnectTimeout = absl::Seconds(5);
  // Connects (blocking, bounded by connect_timeout in the URL or else
  // `connect_timeout`, in whole seconds and at least 2).
  static absl::StatusOr<std::unique_ptr<Conn>> Open(
      const std::string& url, absl::string_view application_name,
      absl::Duration connect_timeout = kConnectTimeout);
  absl::StatusOr<Result> Exec(absl::string_view sql, std::initializer_list<Param> params = {});
  absl::StatusOr<Result> Exec(absl::string_view sql, const std::vector<Param>& params);
  // Runs several statements without parameters (migrations, BEGIN/COMMIT).
  absl::Status ExecScript(absl::string_view sql);
  // Sends every statement, then waits once: n statements cost one round trip
  // (libpq pipeline mode). Results come back in order; after a failed
  // statement PostgreSQL skips the rest, which report ABORTED ("skipped").
  // Keep pipelines small (tens of statements): results are read only after
  // everything is sent. `while_waiting`, if given, runs once everything is
  // sent, before the answers are read (not if sending failed).
  std::vector<absl::StatusOr<Result>> Pipeline(const std::vector<Statement>& statements,
                                               const std::function<void()>& while_waiting = {});
  // Whether the server takes writes (false on a standby or a database set
  // read-only: transaction_read_only on), waiting at most `timeout` for the
  // answer (and no later than the answer deadline); UNAVAILABLE past it.
  absl::StatusOr<bool> PingTakesWrites(absl::Duration timeout);
  // The same, for whether the server answers at all.
  absl::Status Ping(absl::Duration timeout);
  // How long any statement on this connection may wait for its answer. A
  // server that stopped answering (hung, or its host or the network between
  // gone without a reset) keeps its connection open, and a query would wait
  // until TCP gives up, many minutes later, holding its thread. Past this
  // time the wait ends: the connection is marked broken (healthy() is false,
  // so the pool drops it and the server rolls back whatever was open) and the
  // statement fails with DEADLINE_EXCEEDED. Pool::Acquire sets it from the
  // caller's deadline; InfiniteFuture waits for ever.
  void set_answer_deadline(absl::Time t) { answer_deadline_ = t; }
  bool healthy() const { return !broken_ && PQstatus(conn_.get()) == CONNECTION_OK; }
  // Marks this connection for closing: the pool drops it when its lease
  // ends and opens a fresh one (e.g. for one found on a server that takes
  // no writes, whose read-only setting lasts as long as the connection).
  void Discard() { broken_ = true; }
  // For a connection that sat idle: false if the server ended it meanwhile
  // (a restart, a failover, pg_terminate_backend), which it says on the
  // socket. Reads only what already arrived; never waits. Pool::Acquire asks
  // it, so that a caller gets a fresh connection rather than a failure at
  // its first statement.
  bool UsableAfterIdle();
  // Asks which server this connection reached: when its postmaster started
  // (pg_postmaster_start_time()), which server() then returns ("" before).
  // Not its address: one server can be reached at several, and a restarted
  // or newly promoted one at the same. Pool::Acquire asks it of every
  // connection it opens, so that Renew can tell those reaching the server
  // that took over from those reaching the one gone.
  absl::Status LearnServer();
  const std::string& server() const { return server_; }
  // Statements prepared on this connection now (at most about kMaxPrepared).
  size_t prepared_count() const { return prepared_.size(); }
  PGconn* raw() { return conn_.get(); }
  // Ends the connection's traffic, from any thread (shutdown(2) of its
  // socket): whatever its owner waits for fails at once as a lost
  // connection (at a COMMIT: outcome unknown), and the pool drops it. For
  // connections to a server that is gone (Pool::Renew).
  void Interrupt();
  ~Conn();
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

 private:
  explicit Conn(PGconn* c) : conn_(c, &PQfinish) {}
  // libpq's notice receiver (`self`: this connection).
  static void OnNotice(void* self, const PGresult* notice);
  // Polls the socket for `events` until the answer deadline: the events
  // that came (0: none yet, poll again). DEADLINE_EXCEEDED once the deadline
  // has passed ("the database did not <waiting_for> in time"), UNAVAILABLE
  // if poll fails; either marks the connection broken.
  absl::StatusOr<short> PollSocket(short events, absl::string_view waiting_for);
  // The connection is in nonblocking mode: a statement sent may still sit in
  // libpq's buffer. Sends it, reading what comes meanwhile, until the answer
  // deadline (DEADLINE_EXCEEDED, the connection marked broken): a server
  // that stopped reading costs the caller its deadline, not its thread.
  absl::Status FlushOutput();
  // Waits until PQgetResult would not block, or until the answer deadline
  // (DEADLINE_EXCEEDED, the connection marked broken).
  absl::Status AwaitResult();
  // After a statement was sent (`sent` is what the PQsend call returned):
  // its results, as PQexec gives them (the first error, else the last),
  // each awaited within the answer deadline.
  absl::StatusOr<Result> Collect(bool sent);
  // `s`, after marking this connection broken if it says the server takes
  // no writes (the pool then connects afresh).
  absl::Status Dropping(absl::Status s);
  std::unique_ptr<PGconn, decltype(&PQfinish)> conn_;
  absl::Time answer_deadline_ = absl::InfiniteFuture();
  struct Prepared {
    std::string name;
    uint64_t last_use;
  };
  // The name `sql` is prepared under (counting a use), or nullptr.
  const std::string* FindPrepared(const std::string& sql);
  // Once more than kMaxPrepared texts are prepared, deallocates all but the
  // kMaxPrepared / 2 used last, when no transaction is open: a statement text
  // can carry a page size, so their number is bounded only by the callers.
  void ForgetLeastUsed();
  static constexpr size_t kMaxPrepared = 256;
  // SQL text → prepared statement name on this connection.
  std::unordered_map<std::string, Prepared> prepared_;
  uint64_t uses_ = 0;
  int next_prepared_ = 0;
  bool broken_ = false;  // a pipeline failed half-way: the protocol state is unknown
  std::string server_;   // LearnServer
  // A duplicate of libpq's socket, for Interrupt: libpq closes its own when
  // the connection fails, and that number may then be another socket's;
  // this one stays this socket's until the Conn goes.
  int interrupt_fd_ = -1;
};

// The status for a failed libpq call (see the mapping above).
absl::Status ErrorFromResult(PGconn* conn, const PGresult* res);
// True for a serialization failure or deadlock reported by PostgreSQL (the
// transaction may succeed if run again), not for an ABORTED of our own logic.
bool IsRetryable(const absl::Status& status);
// True when a lock was not had within lock_timeout (or at once, with NOWAIT).
bool IsLockNotAvailable(const absl::Status& status);
// An ABORTED that Transact retries, as it does a serialization failure: for
// work that stopped waiting on purpose (a lock_timeout) and must start again
// with its locks released, since what it waits for may be waiting for them.
absl::Status RetryTransaction(absl::string_view why);
// The constraint a violation named, or "" (from ALREADY_EXISTS/FAILED_PRECONDITION).
std::string ConstraintOf(const absl::Status& status);
// True for a write refused by a server that takes none (25006: a standby, or
// a database set read-only); the transaction did nothing.
bool RefusedForReadOnly(const absl::Status& status);
// True for a status made here from what the database or libpq said (above).
bool SaidByDatabase(const absl::Status& status);
// UNAVAILABLE for a transaction whose connection was lost at its COMMIT: the
// change may or may not have been made (CommitOutcomeUnknown), `cause` says why.
absl::Status LostAtCommit(const absl::Status& cause);
bool CommitOutcomeUnknown(const absl::Status& status);
// True when `status` came from `conn` being lost (a restart, a failover,
// pg_terminate_backend, the pool ending it). Before a COMMIT was sent, the
// server has rolled the transaction back, and running it again is safe.
bool LostBeforeCommit(const Conn& conn, const absl::Status& status);

// A fixed-size pool. Connections open lazily and are replaced when they break,
// so the pool works across a database restart.
class Pool {
 public:
  class Lease {
   public:
    Lease(Pool* pool, std::unique_ptr<Conn> conn, uint64_t generation)
        : pool_(pool), conn_(std::move(conn)), generation_(generation) {}
    Lease(Lease&&) = default;
    Lease& operator=(Lease&&) = delete;
    ~Lease();
    Conn& operator*() { return *conn_; }
    Conn* operator->() { return conn_.get(); }

   private:
    Pool* pool_;
    std::unique_ptr<Conn> conn_;
    uint64_t generation_;  // the pool's when leased (Renew)
  };

  Pool(std::string url, int size, std::string application_name);
  // Waits for a free connection until `deadline`; RESOURCE_EXHAUSTED when none
  // frees in time, UNAVAILABLE when the database cannot be reached. The
  // connection's statements wait for their answers until `deadline` plus
  // kAnswerGrace (Conn::set_answer_deadline): a server that is merely slow
  // ends a statement itself at the deadline (statement_timeout, which
  // Transact sets) and says so; one that does not answer by then is given up.
  static constexpr absl::Duration kAnswerGrace = absl::Seconds(1);
  // With `fresh`, the connection is a new one, never one that sat idle (an
  // idle one is closed to make room, if the pool is full).
  // `before_waiting`, if given, runs first unless an idle connection is at
  // hand (so before waiting for one, or opening one).
  absl::StatusOr<Lease> Acquire(absl::Time deadline, bool fresh = false,
                                const std::function<void()>& before_waiting = {});
  const std::string& url() const { return url_; }
  int size() const { return size_; }
  // Closes the idle connections, and each leased one when its lease ends,
  // so that every later Acquire opens a new one: for when the server behind
  // the URL changed (a failover; a standby, or a database set read-only,
  // taking writes again), where a connection made before keeps the old
  // server, or its read-only setting. With `end_leased`, the leased ones are
  // also interrupted now (Conn::Interrupt), for when the server they lead to
  // is known to be gone: their callers fail at once instead of waiting out
  // their deadlines for answers that will not come. Returns how many were.
  // With `keep_server` (a Conn::server()), the connections that reached
  // that server stay, idle, leased or returned: after a restart or a
  // failover, those the new server already took (a transaction on one,
  // ended at its COMMIT, would answer its caller "outcome unknown").
  int Renew(bool end_leased = false, const std::string& keep_server = "");

 private:
  void Release(std::unique_ptr<Conn> conn, uint64_t generation);
  // The lease of `conn`, counted among the leased (for Renew).
  Lease Leased(std::unique_ptr<Conn> conn, uint64_t generation);

  const std::string url_;
  const int size_;
  const std::string application_name_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<Conn>> idle_ ABSL_GUARDED_BY(mu_);
  std::vector<Conn*> leased_ ABSL_GUARDED_BY(mu_);
  int open_or_leased_ ABSL_GUARDED_BY(mu_) = 0;  // connections counted against size_
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;  // raised by Renew
  std::string keep_server_ ABSL_GUARDED_BY(mu_);  // the last Renew's
};

enum class Isolation { kReadCommitted, kRepeatableRead, kSerializable };

struct TxOptions {
  Isolation isolation = Isolation::kReadCommitted;
  bool read_only = false;
  // Attempts in all, for ABORTED (serialization failure, deadlock).
  int max_attempts = 8;
  // Bounds waiting for a connection, each statement (statement_timeout) and,
  // a server that does not answer, each answer (Pool::kAnswerGrace later).
  absl::Time deadline = absl::InfiniteFuture();
};

// A new connection for running again a transaction lost before its COMMIT
// (LostBeforeCommit). The loss may be the server restarting, or a failover
// whose address has not moved yet, so a connection refused (UNAVAILABLE) is
// tried again, 50 ms later and then twice as long each time up to 1 s, for
// at most kReconnectFor and while `deadline` leaves kReconnectMargin after
// the wait; then the last refusal is the answer. `before_waiting` as
// Pool::Acquire's.
inline constexpr absl::Duration kReconnectFor = absl::Seconds(10);
inline constexpr absl::Duration kReconnectMargin = absl::Milliseconds(100);
absl::StatusOr<Pool::Lease> AcquireAfterLoss(Pool& pool, absl::Time deadline,
                                             const std::function<void()>& before_waiting = {});

// The statement_timeout, in milliseconds, under which a transaction's
// statements end by `deadline`: nullopt for no deadline (InfiniteFuture),
// DEADLINE_EXCEEDED once it has passed.
absl::StatusOr<std::optional<int64_t>> StatementTimeout(absl::Time deadline);

// Sleeps before attempt `attempt` + 1 of a transaction that hit a serialization
// failure or deadlock (jittered exponential backoff, 1 ms up to 50 ms).
void BackoffBeforeRetry(int attempt);

// Runs `fn` inside BEGIN … COMMIT on a pooled connection. `fn` returning an
// error rolls back and returns it. On a serialization failure or deadlock (an
// ABORTED from PostgreSQL, not one `fn` returns) the whole transaction is retried
// with jittered backoff, so `fn` must have no effect outside the database
// except on values it overwrites each attempt. A write refused because the
// server takes none (25006) is tried once more at once, on a new connection:
// the refusing one may have been made before a failover, or before the
// database took writes again. So is a transaction whose connection was lost
// before its COMMIT was sent (LostBeforeCommit), while its deadline lasts:
// the server it reaches now (another after a failover, or the same once
// restarted; AcquireAfterLoss waits a little for one that refuses
// connections) runs it; one lost at COMMIT is not (LostAtCommit).
absl::Status Transact(Pool& pool, const TxOptions& options,
                      absl::FunctionRef<absl::Status(Conn&)> fn);
inline absl::Status Transact(Pool& pool, absl::FunctionRef<absl::Status(Conn&)> fn) {
  return Transact(pool, TxOptions{}, fn);
}

// Runs `fn` on a pooled connection without BEGIN/COMMIT (each statement
// commits on its own): for reads that are a single statement, saving two
// round trips. Waits for a connection, and for each answer, until `deadline`
// (and Pool::kAnswerGrace).
absl::Status WithConnection(Pool& pool, absl::Time deadline,
                            absl::FunctionRef<absl::Status(Conn&)> fn);

}  // namespace connecting::db

#endif  // CONNECTING_LIBS_DB_DB_H_
