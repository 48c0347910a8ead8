#include "libs/db/db.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <random>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "libs/common/log.h"

namespace connecting::db {
namespace {

constexpr char kConstraintPayload[] = "connecting.db/constraint";
// Set on serialization failures and deadlocks: the only errors Transact retries
// (an ABORTED from the caller's own logic, such as a stale etag, is final).
constexpr char kRetryPayload[] = "connecting.db/retry";
constexpr char kLockNotAvailablePayload[] = "connecting.db/lock-not-available";
// A write refused by a server that takes none: the connection is dropped.
constexpr char kReadOnlyPayload[] = "connecting.db/read-only";
// Set on statuses whose message holds the database's or libpq's own words.
constexpr char kSaidPayload[] = "connecting.db/said";
constexpr char kCommitUnknownPayload[] = "connecting.db/commit-outcome-unknown";

absl::Status Said(absl::Status s) {
  if (!s.ok()) s.SetPayload(kSaidPayload, absl::Cord("1"));
  return s;
}

std::string Trimmed(const char* s) {
  std::string out = s != nullptr ? s : "";
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// libpq's view of the parameters: pointers into `params` (null for NULL).
std::vector<const char*> ParamValues(const std::vector<Param>& params) {
  std::vector<const char*> values(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    values[i] = params[i].value() ? params[i].value()->c_str() : nullptr;
  }
  return values;
}

absl::Status Dropped() {
  return Said(absl::UnavailableError(
      "database connection dropped after an earlier failure (lost, or no answer in time)"));
}

absl::Status Skipped() {
  return absl::AbortedError("skipped: an earlier statement in the pipeline failed");
}

}  // namespace

int64_t Result::affected() const {
  int64_t n = 0;
  (void)absl::SimpleAtoi(PQcmdTuples(res_.get()), &n);
  return n;
}

int64_t Result::Int(int row, int col) const {
  int64_t n = 0;
  (void)absl::SimpleAtoi(Text(row, col), &n);
  return n;
}

absl::Status ErrorFromResult(PGconn* conn, const PGresult* res) {
  if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
    return Said(absl::UnavailableError(
        absl::StrCat("database unavailable: ", Trimmed(conn ? PQerrorMessage(conn) : ""))));
  }
  const char* state_c = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
  std::string state = state_c ? state_c : "";
  std::string msg;
  if (res != nullptr && absl::StartsWith(state, "23")) {
    // An integrity violation's DETAIL quotes the row (e-mail addresses,
    // names: personal data), which would go on to logs and dead letters;
    // its message names the constraint and table, enough to find the rule.
    char* terse = PQresultVerboseErrorMessage(res, PQERRORS_TERSE, PQSHOW_CONTEXT_NEVER);
    msg = Trimmed(terse);
    PQfreemem(terse);
  } else {
    msg = Trimmed(res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
  }
  const char* constraint = res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : nullptr;
  absl::Status st;
  if (state == "23505") {
    st = absl::AlreadyExistsError(msg);
  } else if (state == "23503" || state == "23514" || state == "23502") {
    st = absl::FailedPreconditionError(msg);
  } else if (state == "40001" || state == "40P01") {
    st = RetryTransaction(msg);
  } else if (state == "55P03") {
    st = absl::AbortedError(msg);
    st.SetPayload(kLockNotAvailablePayload, absl::Cord("1"));
  } else if (state == "57014") {
    st = absl::DeadlineExceededError(msg);
  } else if (state == "25006") {
    // A write on a server that takes none: a standby (a failover left this
    // connection on the old primary, or a URL naming several hosts found a
    // standby first), or a database set read-only. Not the caller's fault
    // nor a bug: UNAVAILABLE, and the connection is dropped (Collect), so
    // that the next one is made afresh, to the primary if DNS or the URL
    // leads there now.
    st = absl::UnavailableError(
        absl::StrCat("database unavailable: it accepts no writes (a standby, or a database set "
                     "read-only): ",
                     msg));
    st.SetPayload(kReadOnlyPayload, absl::Cord("1"));
  } else if (absl::StartsWith(state, "08") || absl::StartsWith(state, "53") ||
             absl::StartsWith(state, "58") || state == "57P01" || state == "57P02" ||
             state == "57P03" || state == "57P04") {
    // Lost connections (08), the server out of disk, memory or connections
    // (53), an I/O error on its side (58), a shutdown or a dropped database
    // (57P0x): the database's trouble, to retry later, not a bug of ours.
    st = absl::UnavailableError(absl::StrCat("database unavailable: ", msg));
  } else {
    st = absl::InternalError(absl::StrCat("database error ", state, ": ", msg));
  }
  if (constraint != nullptr) st.SetPayload(kConstraintPayload, absl::Cord(constraint));
  return Said(std::move(st));
}

bool IsRetryable(const absl::Status& status) {
  return status.GetPayload(kRetryPayload).has_value();
}

absl::Status RetryTransaction(absl::string_view why) {
  absl::Status st = absl::AbortedError(why);
  st.SetPayload(kRetryPayload, absl::Cord("1"));
  return st;
}

bool IsLockNotAvailable(const absl::Status& status) {
  return status.GetPayload(kLockNotAvailablePayload).has_value();
}

std::string ConstraintOf(const absl::Status& status) {
  auto p = status.GetPayload(kConstraintPayload);
  return p ? std::string(*p) : std::string();
}

bool SaidByDatabase(const absl::Status& status) {
  return status.GetPayload(kSaidPayload).has_value();
}

absl::Status LostAtCommit(const absl::Status& cause) {
  absl::Status s = Said(absl::UnavailableError(
      absl::StrCat("database connection lost during COMMIT: ", cause.message())));
  s.SetPayload(kCommitUnknownPayload, absl::Cord("1"));
  return s;
}

bool CommitOutcomeUnknown(const absl::Status& status) {
  return status.GetPayload(kCommitUnknownPayload).has_value();
}

// What PostgreSQL sends outside a statement's result (a NOTICE or WARNING
// from a statement; a FATAL as the server ends the connection, e.g. at
// shutdown), as a JSON line like every other: libpq's default writes it raw
// to stderr. Its severity, code and primary message only: a DETAIL may
// quote stored values. NOTICE and below (DROP ... IF EXISTS "skipping") at
// debug; WARNING and worse at warn. A FATAL or PANIC means the server is
// ending this connection: it is broken from then on.
void Conn::OnNotice(void* self, const PGresult* notice) {
  auto field = [notice](int code) {
    const char* v = PQresultErrorField(notice, code);
    return v != nullptr ? v : "";
  };
  const absl::string_view severity = field(PG_DIAG_SEVERITY_NONLOCALIZED);
  const bool ending = severity == "FATAL" || severity == "PANIC";
  if (ending && self != nullptr) static_cast<Conn*>(self)->broken_ = true;
  log::Write(ending || severity == "WARNING" || severity == "ERROR" ? log::Level::kWarn
                                                                    : log::Level::kDebug,
             "the database says",
             {{"severity", severity},
              {"sqlstate", field(PG_DIAG_SQLSTATE)},
              {"message", field(PG_DIAG_MESSAGE_PRIMARY)}});
}

absl::StatusOr<std::unique_ptr<Conn>> Conn::Open(const std::string& url,
                                                 absl::string_view application_name,
                                                 absl::Duration connect_timeout) {
  std::string app(application_name);
  // libpq counts whole seconds, and takes less than 2 as 2.
  std::string seconds = absl::StrCat(
      std::max<int64_t>(2, absl::ToInt64Seconds(absl::Ceil(connect_timeout, absl::Seconds(1)))));
  // Later keywords win over earlier ones, and dbname expands the URL in place,
  // so the URL can override the defaults given before it.
  //
  // A server whose host is gone (powered off, a failover to another address,
  // the network cut) sends no reset. Statements with a deadline give up at
  // it; one without (a migration's, which may rightly run for an hour)
  // would wait for the kernel's defaults, over two hours. Probes after 30 s
  // of silence, 10 s apart, and sent data left unacknowledged for 60 s end
  // such a connection within about a minute. A server that is merely busy
  // answers the probes from its kernel, so a long statement runs on.
  const char* keys[] = {"connect_timeout",
                        "application_name",
                        "keepalives",
                        "keepalives_idle",
                        "keepalives_interval",
                        "keepalives_count",
                        "tcp_user_timeout",
                        "dbname",
                        nullptr};
  const char* vals[] = {seconds.c_str(), app.c_str(), "1",    "30", "10", "3",
                        "60000",         url.c_str(), nullptr};
  PGconn* raw = PQconnectdbParams(keys, vals, /*expand_dbname=*/1);
  std::unique_ptr<Conn> conn(new Conn(raw));
  if (raw != nullptr) PQsetNoticeReceiver(raw, &Conn::OnNotice, conn.get());
  if (raw == nullptr || PQstatus(raw) != CONNECTION_OK) {
    return Said(absl::UnavailableError(absl::StrCat(
        "database unavailable: ", Trimmed(raw ? PQerrorMessage(raw) : "out of memory"))));
  }
  // Sending never blocks: FlushOutput waits, up to the answer deadline.
  if (PQsetnonblocking(raw, 1) != 0) {
    return Said(absl::UnavailableError(
        absl::StrCat("database connection: ", Trimmed(PQerrorMessage(raw)))));
  }
  conn->interrupt_fd_ = fcntl(PQsocket(raw), F_DUPFD_CLOEXEC, 0);
  return conn;
}

Conn::~Conn() {
  conn_.reset();
  if (interrupt_fd_ >= 0) close(interrupt_fd_);
}

void Conn::Interrupt() {
  if (interrupt_fd_ >= 0) shutdown(interrupt_fd_, SHUT_RDWR);
}

absl::StatusOr<Result> Conn::Exec(absl::string_view sql, std::initializer_list<Param> params) {
  return Exec(sql, std::vector<Param>(params));
}

std::string LimitClause(int rows) { return absl::StrCat(" LIMIT ", rows); }

TextRange PrefixRange(absl::string_view prefix) {
  TextRange r{std::string(prefix), std::nullopt};
  std::string hi(prefix);
  while (!hi.empty()) {
    // The last character: its lead byte, then continuation bytes (10xxxxxx).
    size_t start = hi.size() - 1;
    while (start > 0 && (static_cast<unsigned char>(hi[start]) & 0xC0) == 0x80) --start;
    auto lead = static_cast<unsigned char>(hi[start]);
    size_t len = hi.size() - start;
    uint32_t cp = len == 1 ? lead : len == 2 ? lead & 0x1F : len == 3 ? lead & 0x0F : lead & 0x07;
    for (size_t i = start + 1; i < hi.size(); ++i) cp = (cp << 6) | (hi[i] & 0x3F);
    hi.resize(start);
    if (cp >= 0x10FFFF) continue;  // nothing above it: raise the one before
    ++cp;
    if (cp == 0xD800) cp = 0xE000;  // past the surrogates, which UTF-8 cannot hold
    if (cp < 0x80) {
      hi.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      hi.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      hi.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      hi.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      hi.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      hi.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      hi.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      hi.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      hi.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      hi.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    r.hi = std::move(hi);
    break;
  }
  return r;
}

std::string CaselessPrefix(absl::string_view lowered, absl::string_view prefix,
                           std::vector<Param>* params) {
  TextRange range = PrefixRange(absl::AsciiStrToLower(prefix));
  params->push_back(range.lo);
  std::string cond = absl::StrCat(lowered, " >= $", params->size());
  if (range.hi) {
    params->push_back(*range.hi);
    absl::StrAppend(&cond, " AND ", lowered, " < $", params->size());
  } else {  // only U+10FFFF characters: no upper bound to walk to
    absl::StrAppend(&cond, " AND starts_with(", lowered, ", $", params->size(), ")");
  }
  return cond;
}

std::string CaselessAfter(absl::string_view lowered, absl::string_view name, absl::string_view id,
                          const std::string& after_name, const std::string& after_id,
                          std::vector<Param>* params) {
  params->push_back(after_name);
  params->push_back(after_id);
  const size_t n = params->size();
  return absl::StrCat("(", lowered, ", ", name, ", ", id, ") > (lower($", n - 1,
                      "::text COLLATE \"C\"), $", n - 1, ", $", n, "::uuid)");
}

const std::string* Conn::FindPrepared(const std::string& sql) {
  auto it = prepared_.find(sql);
  if (it == prepared_.end()) return nullptr;
  it->second.last_use = ++uses_;
  return &it->second.name;
}

void Conn::ForgetLeastUsed() {
  if (prepared_.size() <= kMaxPrepared || PQtransactionStatus(conn_.get()) != PQTRANS_IDLE) return;
  std::vector<std::pair<uint64_t, std::string>> by_use;
  by_use.reserve(prepared_.size());
  for (const auto& [sql, p] : prepared_) by_use.emplace_back(p.last_use, sql);
  std::sort(by_use.begin(), by_use.end());
  by_use.resize(by_use.size() - kMaxPrepared / 2);
  std::string script;
  for (const auto& [use, sql] : by_use) {
    absl::StrAppend(&script, "DEALLOCATE ", prepared_.at(sql).name, ";");
  }
  absl::StatusOr<Result> res = Collect(PQsendQuery(conn_.get(), script.c_str()) == 1);
  if (!res.ok()) return;  // kept; tried next time (or the connection is gone)
  for (const auto& [use, sql] : by_use) prepared_.erase(sql);
}

absl::StatusOr<short> Conn::PollSocket(short events, absl::string_view waiting_for) {
  int wait_ms = -1;
  if (answer_deadline_ != absl::InfiniteFuture()) {
    const absl::Duration left = answer_deadline_ - absl::Now();
    if (left <= absl::ZeroDuration()) {
      broken_ = true;  // the answer may still come: this connection is done
      return absl::DeadlineExceededError(
          absl::StrCat("the database did not ", waiting_for,
                       " in time (it may be hung or unreachable); the connection was dropped"));
    }
    wait_ms = static_cast<int>(std::min<int64_t>(
        absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))), 60'000));
  }
  pollfd p{PQsocket(conn_.get()), events, 0};
  const int ready = poll(&p, 1, wait_ms);
  if (ready < 0 && errno != EINTR) {
    broken_ = true;
    return Said(
        absl::UnavailableError(absl::StrCat("database connection: poll: ", strerror(errno))));
  }
  return ready > 0 ? p.revents : static_cast<short>(0);
}

absl::Status Conn::FlushOutput() {
  PGconn* c = conn_.get();
  for (;;) {
    const int left = PQflush(c);
    if (left == 0) return absl::OkStatus();
    if (left < 0) {
      broken_ = true;
      return ErrorFromResult(c, nullptr);
    }
    // Read what the server sends meanwhile, or it may stop reading in turn.
    absl::StatusOr<short> got = PollSocket(POLLIN | POLLOUT, "take the statement");
    if (!got.ok()) return got.status();
    if ((*got & ~POLLOUT) != 0 && PQconsumeInput(c) != 1) {
      broken_ = true;
      return ErrorFromResult(c, nullptr);
    }
  }
}

absl::Status Conn::AwaitResult() {
  PGconn* c = conn_.get();
  while (PQisBusy(c) == 1) {
    absl::StatusOr<short> got = PollSocket(POLLIN, "answer");
    if (!got.ok()) return got.status();
    // A failed read leaves the error for PQgetResult, which no longer blocks.
    if (*got != 0 && PQconsumeInput(c) != 1) break;
  }
  return absl::OkStatus();
}

absl::StatusOr<Result> Conn::Collect(bool sent) {
  PGconn* c = conn_.get();
  if (broken_) return Dropped();
  if (!sent) {
    broken_ = true;
    return ErrorFromResult(c, nullptr);
  }
  if (absl::Status flushed = FlushOutput(); !flushed.ok()) return flushed;
  std::optional<Result> last;
  std::optional<Result> error;
  for (;;) {
    if (absl::Status waited = AwaitResult(); !waited.ok()) return waited;
    PGresult* raw = PQgetResult(c);
    if (raw == nullptr) break;
    Result r(raw);
    const ExecStatusType st = PQresultStatus(r.raw_for_status());
    if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
      broken_ = true;  // the connection waits for COPY data nobody sends
      return absl::InternalError("COPY is not supported through Conn");
    }
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
      if (!error) error.emplace(std::move(r));
    } else {
      last.emplace(std::move(r));
    }
  }
  if (error) return Dropping(ErrorFromResult(c, error->raw_for_status()));
  if (!last) return ErrorFromResult(c, nullptr);
  return *std::move(last);
}

bool RefusedForReadOnly(const absl::Status& status) {
  return status.GetPayload(kReadOnlyPayload).has_value();
}

absl::Status Conn::Dropping(absl::Status s) {
  if (RefusedForReadOnly(s)) broken_ = true;
  return s;
}

absl::StatusOr<Result> Conn::Exec(absl::string_view sql, const std::vector<Param>& params) {
  PGconn* c = conn_.get();
  ForgetLeastUsed();
  std::string key(sql);
  const std::string* name = FindPrepared(key);
  if (name == nullptr) {
    std::string fresh = absl::StrCat("s", ++next_prepared_);
    absl::StatusOr<Result> prep =
        Collect(PQsendPrepare(c, fresh.c_str(), key.c_str(), static_cast<int>(params.size()),
                              nullptr) == 1);
    if (!prep.ok()) return prep.status();
    name = &prepared_.insert_or_assign(std::move(key), Prepared{std::move(fresh), ++uses_})
                .first->second.name;
  }
  std::vector<const char*> values = ParamValues(params);
  return Collect(PQsendQueryPrepared(c, name->c_str(), static_cast<int>(params.size()),
                                     values.data(), nullptr, nullptr, 0) == 1);
}

absl::Status Conn::ExecScript(absl::string_view sql) {
  std::string s(sql);
  return Collect(PQsendQuery(conn_.get(), s.c_str()) == 1).status();
}

absl::StatusOr<bool> Conn::PingTakesWrites(absl::Duration timeout) {
  const absl::Time saved = answer_deadline_;
  answer_deadline_ = std::min(saved, absl::Now() + timeout);
  absl::StatusOr<Result> r = Exec("SELECT current_setting('transaction_read_only') = 'off'");
  answer_deadline_ = saved;
  if (absl::IsDeadlineExceeded(r.status())) {
    return Said(absl::UnavailableError(
        absl::StrCat("database unavailable: no answer within ", absl::FormatDuration(timeout))));
  }
  if (!r.ok()) return r.status();
  return r->rows() == 1 && r->String(0, 0) == "t";
}

absl::Status Conn::Ping(absl::Duration timeout) { return PingTakesWrites(timeout).status(); }

absl::Status Conn::LearnServer() {
  absl::StatusOr<Result> r = Exec("SELECT pg_postmaster_start_time()::text");
  if (!r.ok()) return r.status();
  if (r->rows() != 1 || r->IsNull(0, 0)) {
    return absl::InternalError("pg_postmaster_start_time() gave no time");
  }
  server_ = r->String(0, 0);
  return absl::OkStatus();
}

std::vector<absl::StatusOr<Result>> Conn::Pipeline(const std::vector<Statement>& statements,
                                                   const std::function<void()>& while_waiting) {
  PGconn* c = conn_.get();
  std::vector<absl::StatusOr<Result>> out;
  out.reserve(statements.size());
  auto fail_rest = [&](const absl::Status& s) {
    while (out.size() < statements.size()) out.emplace_back(s);
    return std::move(out);
  };
  if (statements.empty()) return out;
  if (broken_) return fail_rest(Dropped());
  ForgetLeastUsed();
  if (PQenterPipelineMode(c) != 1) return fail_rest(ErrorFromResult(c, nullptr));
  // Each statement is sent as Parse (first use on this connection) then Bind/Execute.
  struct Sent {
    size_t statement;
    bool is_prepare;
    std::string name;
  };
  std::vector<Sent> sent;
  std::unordered_map<std::string, std::string> preparing;
  bool send_ok = true;
  for (size_t i = 0; i < statements.size() && send_ok; ++i) {
    const Statement& st = statements[i];
    const std::string* name = FindPrepared(st.sql);
    if (name == nullptr) {
      if (auto p = preparing.find(st.sql); p != preparing.end()) name = &p->second;
    }
    if (name == nullptr) {
      auto [ins, unused] = preparing.emplace(st.sql, absl::StrCat("s", ++next_prepared_));
      name = &ins->second;
      send_ok = PQsendPrepare(c, name->c_str(), st.sql.c_str(), static_cast<int>(st.params.size()),
                              nullptr) == 1;
      sent.push_back({i, true, *name});
      if (!send_ok) break;
    }
    std::vector<const char*> values = ParamValues(st.params);
    send_ok = PQsendQueryPrepared(c, name->c_str(), static_cast<int>(values.size()), values.data(),
                                  nullptr, nullptr, 0) == 1;
    sent.push_back({i, false, *name});
  }
  if (!send_ok || PQpipelineSync(c) != 1) {
    absl::Status s = ErrorFromResult(c, nullptr);
    if (s.ok() || !absl::IsUnavailable(s)) {
      s = Said(absl::UnavailableError(absl::StrCat("database pipeline failed: ", s.message())));
    }
    broken_ = true;  // unusable mid-pipeline: the pool drops it
    return fail_rest(s);
  }
  if (absl::Status flushed = FlushOutput(); !flushed.ok()) return fail_rest(flushed);
  if (while_waiting) while_waiting();
  absl::Status prepare_error;
  // An answer that does not come in time fails what is left; the connection
  // is then broken and dropped.
  absl::Status waited;
  auto next_result = [&]() -> PGresult* {
    if (waited.ok()) waited = AwaitResult();
    return waited.ok() ? PQgetResult(c) : nullptr;
  };
  for (const Sent& s : sent) {
    PGresult* raw = next_result();
    if (raw == nullptr) break;  // the connection went: handled below
    Result res(raw);
    while (PGresult* extra = next_result()) PQclear(extra);  // up to the command's end
    ExecStatusType st = PQresultStatus(res.raw_for_status());
    if (s.is_prepare) {
      if (st == PGRES_COMMAND_OK) {
        prepared_.insert_or_assign(statements[s.statement].sql, Prepared{s.name, ++uses_});
      } else if (st == PGRES_PIPELINE_ABORTED) {
        prepare_error = Skipped();
      } else {
        prepare_error = ErrorFromResult(c, res.raw_for_status());
      }
      continue;
    }
    if (!prepare_error.ok()) {
      out.emplace_back(prepare_error);
      prepare_error = absl::OkStatus();
    } else if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
      out.emplace_back(std::move(res));
    } else if (st == PGRES_PIPELINE_ABORTED) {
      out.emplace_back(Skipped());
    } else {
      out.emplace_back(Dropping(ErrorFromResult(c, res.raw_for_status())));
    }
  }
  PGresult* sync = next_result();  // PGRES_PIPELINE_SYNC
  bool synced = sync != nullptr && PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
  PQclear(sync);
  if (!waited.ok()) {
    for (auto& r : out) {
      if (!r.ok()) r = waited;
    }
    return fail_rest(waited);
  }
  if (!synced || PQstatus(c) != CONNECTION_OK || PQexitPipelineMode(c) != 1) {
    // Lost mid-pipeline: what did not succeed failed for that reason, not
    // because of a statement ("skipped" would invite a retry on this handle).
    broken_ = true;
    absl::Status lost = Said(absl::UnavailableError(
        absl::StrCat("database connection lost during a pipeline: ", Trimmed(PQerrorMessage(c)))));
    for (auto& r : out) {
      if (!r.ok()) r = lost;
    }
    return fail_rest(lost);
  }
  return out;
}

Pool::Pool(std::string url, int size, std::string application_name)
    : url_(std::move(url)), size_(size), application_name_(std::move(application_name)) {}

Pool::Lease::~Lease() {
  if (pool_ != nullptr && conn_ != nullptr) pool_->Release(std::move(conn_), generation_);
}

bool Conn::UsableAfterIdle() {
  if (!healthy()) return false;
  // Nothing arrived while idle: the usual case, one poll. A server ending
  // the connection sends a FATAL, then closes it: libpq reads the message
  // and hands it to OnNotice (the close may not have arrived yet).
  for (int reads = 0; reads < 4; ++reads) {
    pollfd p = {PQsocket(conn_.get()), POLLIN, 0};
    if (poll(&p, 1, 0) <= 0) break;
    if (PQconsumeInput(conn_.get()) == 0) {
      broken_ = true;
      return false;
    }
    (void)PQisBusy(conn_.get());  // parses what was read: a FATAL marks it broken
  }
  return healthy();
}

absl::StatusOr<Pool::Lease> Pool::Acquire(absl::Time deadline, bool fresh,
                                          const std::function<void()>& before_waiting) {
  const absl::Time answers_until =
      deadline == absl::InfiniteFuture() ? deadline : deadline + kAnswerGrace;
  std::unique_ptr<Conn> idle;
  uint64_t generation;
  bool slot_taken = false;  // idle, or a slot for a new connection
  {
    absl::MutexLock lock(&mu_);
    generation = generation_;
    // An idle connection at hand is taken in the same critical section that
    // saw it, so `before_waiting` never runs for nothing, and is never left
    // out when another thread took that connection first.
    if (!fresh && !idle_.empty()) {
      idle = std::move(idle_.back());
      idle_.pop_back();
      slot_taken = true;
    }
  }
  // An idle connection is leased unless the server ended it while it sat;
  // then it goes, and its slot stays taken, for the new one.
  auto lease_idle = [&]() -> std::optional<Lease> {
    if (idle == nullptr) return std::nullopt;
    if (!idle->UsableAfterIdle()) {
      idle.reset();
      return std::nullopt;
    }
    idle->set_answer_deadline(answers_until);
    return Leased(std::move(idle), generation);
  };
  if (std::optional<Lease> l = lease_idle()) return *std::move(l);
  if (before_waiting) before_waiting();
  if (!slot_taken) {
    absl::MutexLock lock(&mu_);
    generation = generation_;
    auto can_take = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !idle_.empty() || open_or_leased_ < size_;
    };
    if (!mu_.AwaitWithDeadline(absl::Condition(&can_take), deadline)) {
      return absl::ResourceExhaustedError("all database connections are busy");
    }
    if (fresh && open_or_leased_ < size_) {
      ++open_or_leased_;
    } else if (!idle_.empty()) {
      idle = std::move(idle_.back());
      idle_.pop_back();
    } else {
      ++open_or_leased_;
    }
  }
  if (fresh) idle.reset();  // its slot is the new connection's
  if (std::optional<Lease> l = lease_idle()) return *std::move(l);
  // Open outside the lock: connecting can take seconds when the server is
  // down, and as long as connect_timeout when it accepts but does not answer.
  absl::StatusOr<std::unique_ptr<Conn>> c =
      Conn::Open(url_, application_name_,
                 std::clamp(deadline - absl::Now(), absl::Seconds(2), Conn::kConnectTimeout));
  if (c.ok()) {
    (*c)->set_answer_deadline(answers_until);
    // Closed here, outside the lock, if the server went meanwhile.
    if (absl::Status learned = (*c)->LearnServer(); !learned.ok()) c = learned;
  }
  if (!c.ok()) {
    absl::MutexLock lock(&mu_);
    --open_or_leased_;
    return c.status();
  }
  return Leased(*std::move(c), generation);
}

Pool::Lease Pool::Leased(std::unique_ptr<Conn> conn, uint64_t generation) {
  absl::MutexLock lock(&mu_);
  leased_.push_back(conn.get());
  return Lease(this, std::move(conn), generation);
}

void Pool::Release(std::unique_ptr<Conn> conn, uint64_t generation) {
  {
    absl::MutexLock lock(&mu_);
    if (auto it = std::find(leased_.begin(), leased_.end(), conn.get()); it != leased_.end()) {
      leased_.erase(it);
    }
    // A connection left inside a transaction (a caller bug or a lost COMMIT),
    // broken, or made before Renew (unless it reached the server that Renew
    // kept) is dropped rather than handed to the next caller.
    if (conn->healthy() && PQtransactionStatus(conn->raw()) == PQTRANS_IDLE &&
        (generation == generation_ || (!keep_server_.empty() && conn->server() == keep_server_))) {
      idle_.push_back(std::move(conn));
      return;
    }
    --open_or_leased_;
  }
  conn.reset();  // closed outside the lock
}

int Pool::Renew(bool end_leased, const std::string& keep_server) {
  std::vector<std::unique_ptr<Conn>> old;
  int ended = 0;
  auto kept = [&keep_server](const Conn& c) {
    return !keep_server.empty() && c.server() == keep_server;
  };
  {
    absl::MutexLock lock(&mu_);
    ++generation_;
    keep_server_ = keep_server;
    std::vector<std::unique_ptr<Conn>> idle;
    for (auto& c : idle_) (kept(*c) ? idle : old).push_back(std::move(c));
    idle_.swap(idle);
    open_or_leased_ -= static_cast<int>(old.size());
    // Under the lock: a lease cannot end, and its Conn go, meanwhile.
    if (end_leased) {
      for (Conn* c : leased_) {
        if (kept(*c)) continue;
        c->Interrupt();
        ++ended;
      }
    }
  }
  return ended;
}

void BackoffBeforeRetry(int attempt) {
  static thread_local std::minstd_rand rng(std::random_device{}());
  // Jittered exponential backoff: 1, 2, 4 … ms, capped at 50 ms.
  int cap = std::min(50, 1 << std::min(attempt, 6));
  std::this_thread::sleep_for(
      std::chrono::microseconds(std::uniform_int_distribution<int>(cap * 500, cap * 1000)(rng)));
}

absl::StatusOr<std::optional<int64_t>> StatementTimeout(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return std::optional<int64_t>();
  int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
  if (ms <= 0) return absl::DeadlineExceededError("deadline passed before the transaction began");
  return std::optional<int64_t>(ms);
}

bool LostBeforeCommit(const Conn& conn, const absl::Status& status) {
  return !conn.healthy() && absl::IsUnavailable(status) && !RefusedForReadOnly(status);
}

absl::StatusOr<Pool::Lease> AcquireAfterLoss(Pool& pool, absl::Time deadline,
                                             const std::function<void()>& before_waiting) {
  const absl::Time until = std::min(deadline, absl::Now() + kReconnectFor);
  absl::Duration wait = absl::Milliseconds(50);
  for (;;) {
    absl::StatusOr<Pool::Lease> lease = pool.Acquire(deadline, /*fresh=*/true, before_waiting);
    if (lease.ok() || !absl::IsUnavailable(lease.status())) return lease;
    if (absl::Now() + wait + kReconnectMargin >= until) return lease;
    absl::SleepFor(wait);
    wait = std::min(wait * 2, absl::Seconds(1));
  }
}

absl::Status Transact(Pool& pool, const TxOptions& options,
                      absl::FunctionRef<absl::Status(Conn&)> fn) {
  const char* begin = "BEGIN ISOLATION LEVEL READ COMMITTED";
  if (options.isolation == Isolation::kRepeatableRead) {
    begin = options.read_only ? "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
                              : "BEGIN ISOLATION LEVEL REPEATABLE READ";
  } else if (options.isolation == Isolation::kSerializable) {
    begin = options.read_only ? "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY"
                              : "BEGIN ISOLATION LEVEL SERIALIZABLE";
  } else if (options.read_only) {
    begin = "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY";
  }
  absl::Status last;
  bool fresh = false;           // the next attempt on a new connection
  bool tried_on_fresh = false;  // after a refusal to write
  bool tried_after_loss = false;  // after a connection lost before COMMIT
  bool reconnect = false;         // the next attempt's connection: AcquireAfterLoss
  for (int attempt = 1; attempt <= options.max_attempts; ++attempt) {
    absl::StatusOr<Pool::Lease> lease = reconnect ? AcquireAfterLoss(pool, options.deadline)
                                                  : pool.Acquire(options.deadline, fresh);
    fresh = reconnect = false;
    if (!lease.ok()) return lease.status();
    Conn& conn = **lease;
    absl::StatusOr<std::optional<int64_t>> timeout = StatementTimeout(options.deadline);
    if (!timeout.ok()) return timeout.status();
    // One round trip: BEGIN and the statement timeout that honours the deadline.
    last = conn.ExecScript(
        *timeout ? absl::StrCat(begin, "; SET LOCAL statement_timeout = ", **timeout) : begin);
    if (last.ok()) last = fn(conn);
    if (last.ok()) {
      last = conn.ExecScript("COMMIT");
      if (last.ok()) return last;
      if (!conn.healthy()) {
        // The COMMIT may or may not have landed; the caller must not assume either.
        return LostAtCommit(last);
      }
    } else if (conn.healthy()) {
      (void)conn.ExecScript("ROLLBACK");
    }
    if (RefusedForReadOnly(last) && !tried_on_fresh) {
      // A write refused by a server that takes none: the transaction did
      // nothing. The connection may be one made before a failover, or
      // before the database took writes again (its setting read at
      // connect); a new one, made now, reaches the server the URL leads to
      // now. Tried once: on a standby it is refused again.
      tried_on_fresh = true;
      fresh = true;
      continue;
    }
    if (LostBeforeCommit(conn, last) && !tried_after_loss && absl::Now() < options.deadline) {
      tried_after_loss = true;
      reconnect = true;
      continue;
    }
    if (!IsRetryable(last) || attempt == options.max_attempts) break;
    BackoffBeforeRetry(attempt);
  }
  return last;
}

absl::Status WithConnection(Pool& pool, absl::Time deadline,
                            absl::FunctionRef<absl::Status(Conn&)> fn) {
  absl::StatusOr<Pool::Lease> lease = pool.Acquire(deadline);
  if (!lease.ok()) return lease.status();
  return fn(**lease);
}

}  // namespace connecting::db
