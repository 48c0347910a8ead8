#include "libs/bus/outbox.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <unordered_set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "libs/bus/event_json.h"
#include "libs/common/log.h"
#include "libs/common/metrics.h"
#include "libs/common/throttle.h"

namespace connecting::bus {
namespace {

// Each event's outbox row number, for CheckForRestore.
constexpr char kOutboxSeqHeader[] = "connecting-outbox-seq";
// The last outbox row number the database handed out (0: none yet).
constexpr char kDatabaseOutboxSeq[] =
    "(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM outbox_seq_seq)";

struct RelayMetrics {
  prometheus::Counter& published;
  prometheus::Counter& failed;
  prometheus::Gauge& pending;
  prometheus::Gauge& oldest_seconds;
  prometheus::Gauge& behind_stream;

  static RelayMetrics& Get() {
    static RelayMetrics* m = [] {
      auto& reg = *metrics::Registry();
      auto& pub = prometheus::BuildCounter()
                      .Name("connecting_outbox_published_total")
                      .Help("Events published to JetStream (and removed from the outbox)")
                      .Register(reg);
      auto& fail = prometheus::BuildCounter()
                       .Name("connecting_outbox_publish_failures_total")
                       .Help("Events not acknowledged by JetStream (retried)")
                       .Register(reg);
      auto& pending = prometheus::BuildGauge()
                          .Name("connecting_outbox_pending")
                          .Help("Events committed but not yet published")
                          .Register(reg);
      auto& lag = prometheus::BuildGauge()
                      .Name("connecting_outbox_lag_seconds")
                      .Help("Age of the oldest unpublished event (outbox lag)")
                      .Register(reg);
      auto& behind = prometheus::BuildGauge()
                         .Name("connecting_outbox_database_behind_stream")
                         .Help(
                             "1 while a restore of the database is recorded and not settled: "
                             "the stream holds events from outbox rows it no longer reaches")
                         .Register(reg);
      return new RelayMetrics{pub.Add({}), fail.Add({}), pending.Add({}), lag.Add({}),
                              behind.Add({})};
    }();
    return *m;
  }
};

}  // namespace

std::vector<db::Migration> SqlMigrations();  // generated from libs/bus/migrations

db::MigrationSet Migrations() { return {"bus", SqlMigrations()}; }

namespace {
thread_local bool t_emitted = false;

// One outbox row, as Prepare writes it; MergeOutboxRows recognises its rows by it.
constexpr char kInsertRow[] =
    "INSERT INTO outbox (subject, type, source, ce_subject, payload, traceparent) "
    "VALUES ($1, $2, $3, $4, $5, $6)";
constexpr size_t kRowParams = 6;
// Rows per merged INSERT at most: a statement text per count, each
// prepared once per connection (db::Conn keeps 256).
constexpr size_t kMaxMergedRows = 64;
}  // namespace

bool Outbox::TakeEmitted() {
  bool was = t_emitted;
  t_emitted = false;
  return was;
}

absl::StatusOr<db::Statement> Outbox::Prepare(absl::string_view subject_suffix,
                                              absl::string_view ce_subject,
                                              const google::protobuf::Message& event,
                                              absl::string_view traceparent) const {
  absl::StatusOr<std::string> json = EventJson(event);
  if (!json.ok()) return json.status();
  t_emitted = true;
  return db::Statement{
      kInsertRow,
      {absl::StrCat(prefix_, ".", subject_suffix), event.GetDescriptor()->full_name(), source_,
       ce_subject, *std::move(json), traceparent}};
}

void MergeOutboxRows(std::vector<db::Statement>* statements) {
  std::vector<db::Statement>& in = *statements;
  auto is_row = [](const db::Statement& st) {
    return st.params.size() == kRowParams && st.sql == kInsertRow;
  };
  std::vector<db::Statement> out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size();) {
    size_t end = i;
    while (end < in.size() && end - i < kMaxMergedRows && is_row(in[end])) ++end;
    if (end - i < 2) {
      out.push_back(std::move(in[i]));
      i = std::max(end, i + 1);
      continue;
    }
    db::Statement merged;
    // kInsertRow up to its one row of values, then a row per event.
    const absl::string_view row(kInsertRow);
    merged.sql = std::string(row.substr(0, row.rfind('(')));
    merged.params.reserve((end - i) * kRowParams);
    for (size_t k = i; k < end; ++k) {
      const size_t at = (k - i) * kRowParams;
      absl::StrAppend(&merged.sql, k > i ? ", " : "", "($", at + 1, ", $", at + 2, ", $", at + 3,
                      ", $", at + 4, ", $", at + 5, ", $", at + 6, ")");
      for (db::Param& p : in[k].params) merged.params.push_back(std::move(p));
    }
    out.push_back(std::move(merged));
    i = end;
  }
  in = std::move(out);
}

absl::Status Outbox::Emit(db::Conn& tx, absl::string_view subject_suffix,
                          absl::string_view ce_subject, const google::protobuf::Message& event,
                          absl::string_view traceparent) const {
  absl::StatusOr<db::Statement> insert = Prepare(subject_suffix, ce_subject, event, traceparent);
  if (!insert.ok()) return insert.status();
  return tx.Exec(insert->sql, insert->params).status();
}

OutboxRelay::OutboxRelay(RelayOptions options, const Nats* nats)
    : options_(std::move(options)), nats_(nats) {
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  RelayMetrics::Get();
}

OutboxRelay::~OutboxRelay() {
  Stop(absl::Now());
  if (wake_fd_ >= 0) close(wake_fd_);
}

void OutboxRelay::Start() {
  thread_ = std::thread([this] { Run(); });
}

void OutboxRelay::Stop(absl::Time flush_deadline) {
  if (!thread_.joinable()) return;
  flush_deadline_ = flush_deadline;
  stopping_.store(true);
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof one);
  thread_.join();
}

void OutboxRelay::Wake() {
  // Only the first wake since the relay last took them writes the eventfd (a
  // system call, and the relay's wake-up); the linger counts from it.
  int64_t none = 0;
  if (first_wake_ns_.compare_exchange_strong(none, absl::ToUnixNanos(absl::Now()))) {
    uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof one);
  }
}

void OutboxRelay::TakeWakes() {
  uint64_t drained;
  (void)!read(wake_fd_, &drained, sizeof drained);
  // After the read: a Wake() from here on writes the eventfd again. One that
  // came between the read and this store wrote nothing, but its commit came
  // before it, so the claim that follows sees that commit's rows.
  first_wake_ns_.store(0);
}

void OutboxRelay::OnAck(jsCtx*, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae, void* closure) {
  auto* self = static_cast<OutboxRelay*>(closure);
  const char* id = nullptr;
  if (pa != nullptr && pae == nullptr && natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK &&
      id != nullptr) {
    absl::MutexLock lock(&self->mu_);
    self->acked_.emplace_back(id);
  } else if (pae != nullptr) {
    // Each event of a batch is refused alike (a full stream, a subject no
    // stream takes), again at every try: one line every 10 s, with a count.
    if (std::optional<int64_t> held = self->refused_lines_.Admit()) {
      const char* subject = natsMsg_GetSubject(msg);
      if (id == nullptr) (void)natsMsgHeader_Get(msg, "Nats-Msg-Id", &id);
      log::Warn("outbox publish rejected", {{"error", pae->ErrText ? pae->ErrText : ""},
                                            {"subject", subject != nullptr ? subject : ""},
                                            {"event_id", id != nullptr ? id : ""},
                                            {"more_since_the_last_line", absl::StrCat(*held)}});
    }
  }
  natsMsg_Destroy(msg);
}

void OutboxRelay::WaitForWork() {
  pollfd fd = {wake_fd_, POLLIN, 0};
  int woken = poll(&fd, 1, static_cast<int>(absl::ToInt64Milliseconds(options_.poll_interval)));
  if (woken > 0 && !stopping_.load() && options_.linger > absl::ZeroDuration() &&
      absl::Now() - last_published_ < options_.linger) {
    // Busy: let the commits that follow the first one join its batch: one
    // relay transaction, one round of PubAcks and one set of wake-ups for
    // many events (docs/performance.md). Counted from that first commit's
    // wake, which under load came while the batch before was out: its
    // events have waited for company already. After a quiet spell the
    // event goes at once: a lone booking's event reaches a dashboard
    // without the wait.
    const int64_t first = first_wake_ns_.load();
    const absl::Time until =
        (first != 0 ? absl::FromUnixNanos(first) : absl::Now()) + options_.linger;
    const absl::Duration left = until - absl::Now();
    if (left > absl::ZeroDuration()) absl::SleepFor(std::min(left, options_.linger));
  }
  TakeWakes();
}

void OutboxRelay::WaitToRetry(absl::Duration& wait) {
  wait = wait <= absl::ZeroDuration() ? options_.poll_interval
                                      : std::min(2 * wait, options_.max_retry_wait);
  const bool was_stopping = stopping_.load();
  absl::Time until = absl::Now() + wait;
  if (was_stopping) until = std::min(until, flush_deadline_);
  // Stop() while waiting: its flush starts now, with a fresh try.
  while (was_stopping || !stopping_.load()) {
    const absl::Duration left = until - absl::Now();
    if (left <= absl::ZeroDuration()) return;
    pollfd fd = {wake_fd_, POLLIN, 0};
    if (poll(&fd, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1) > 0) TakeWakes();
  }
}

// The outbox row number of the last event in `stream`: 0 if it holds none, or
// none from a relay (a release before the header, or purged).
absl::StatusOr<int64_t> LastOutboxSeqInStream(jsCtx* js, const std::string& stream) {
  jsStreamInfo* si = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  natsStatus s = js_GetStreamInfo(&si, js, stream.c_str(), nullptr, &code);
  if (s == NATS_NOT_FOUND || code == JSStreamNotFoundErr) return 0;
  if (s != NATS_OK) {
    return absl::UnavailableError(
        absl::StrCat("reading stream ", stream, ": ", natsStatus_GetText(s)));
  }
  uint64_t last = si->State.LastSeq;
  jsStreamInfo_Destroy(si);
  if (last == 0) return 0;
  natsMsg* raw = nullptr;
  s = js_GetMsg(&raw, js, stream.c_str(), last, nullptr, &code);
  if (s == NATS_NOT_FOUND || code == JSNoMessageFoundErr) return 0;  // purged
  if (s != NATS_OK) {
    return absl::UnavailableError(
        absl::StrCat("reading the last event of stream ", stream, ": ", natsStatus_GetText(s)));
  }
  NatsPtr<natsMsg> msg(raw);
  const char* header = nullptr;
  int64_t seq = 0;
  if (natsMsgHeader_Get(msg.get(), kOutboxSeqHeader, &header) != NATS_OK ||
      !absl::SimpleAtoi(header, &seq)) {
    return 0;
  }
  return seq;
}

bool OutboxRelay::CheckForRestore(db::Conn& conn, jsCtx* js) {
  // NATS unreachable: what this relay published still counts.
  absl::StatusOr<int64_t> last = LastOutboxSeqInStream(js, options_.stream.name);
  if (last.ok()) highest_in_stream_ = std::max(highest_in_stream_, *last);
  absl::StatusOr<db::Result> r = conn.Exec(absl::StrCat(
      "SELECT ", kDatabaseOutboxSeq,
      ", (SELECT to_char(detected_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
      "FROM outbox_restores WHERE settled_at IS NULL)"));
  if (!r.ok() || r->rows() != 1) return false;  // tried again at the next check
  const int64_t database = r->Int(0, 0);
  bool recorded = !r->IsNull(0, 1);
  if (database < highest_in_stream_) {
    // Recorded with the highest row any replica knows the stream holds, so
    // that --after-restore numbers the events past every one of them.
    absl::StatusOr<db::Result> rec = conn.Exec(
        "INSERT INTO outbox_restores (database_seq, stream_seq) VALUES ($1, $2) "
        "ON CONFLICT ((true)) WHERE settled_at IS NULL DO UPDATE "
        "SET stream_seq = GREATEST(outbox_restores.stream_seq, EXCLUDED.stream_seq) "
        "RETURNING xmax = 0",
        {database, highest_in_stream_});
    if (rec.ok() && rec->rows() == 1 && rec->String(0, 0) == "t") {
      recorded = told_of_recorded_restore_ = true;
      log::Error(
          "database behind its stream (restored to an earlier point, or replaced?): consumers "
          "hold events of changes it no longer has; once it is the database to keep, run this "
          "service with --republish --after-restore",
          {{"stream", options_.stream.name},
           {"published_outbox_seq", absl::StrCat(highest_in_stream_)},
           {"database_outbox_seq", absl::StrCat(database)}});
    }
  }
  if (recorded && !told_of_recorded_restore_) {
    told_of_recorded_restore_ = true;
    log::Error(
        "a restore of this database awaits --republish --after-restore: consumers hold events "
        "of changes it no longer has",
        {{"stream", options_.stream.name}, {"detected_at", r->String(0, 1)}});
  }
  if (!recorded) told_of_recorded_restore_ = false;
  RelayMetrics::Get().behind_stream.Set(recorded ? 1 : 0);
  return recorded;
}

std::string OutboxRelay::ClaimSql(int batch_size) {
  // The batch is picked by an ARRAY(...) subquery, which PostgreSQL runs
  // once, before the DELETE: whatever the plan, a batch is at most
  // `batch_size` rows. As `seq IN (SELECT ... LIMIT n FOR UPDATE SKIP
  // LOCKED)`, a plan made while the outbox was empty (a nested loop over the
  // outbox, running the subquery again for each row) took the whole backlog
  // as one batch, in time growing with its square: 50,000 rows took 6
  // minutes (2026-12-03).
  return absl::StrCat(
      "DELETE FROM outbox WHERE seq = ANY (ARRAY(SELECT seq FROM outbox WHERE sent_at IS NULL "
      "ORDER BY seq",
      db::LimitClause(batch_size),
      " FOR UPDATE SKIP LOCKED)) "
      "RETURNING id, subject, type, source, ce_subject, payload, traceparent, "
      "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), seq");
}

absl::Status OutboxRelay::SetUpConnection(db::Conn& conn) {
  // The outbox is a queue: its statistics say "empty" as often as not, while
  // a backlog builds up faster than they follow, and between vacuums it holds
  // thousands of dead rows. A plan made for an empty outbox scans and sorts
  // all of them at every claim (measured: a sixth of the machine under
  // booking load); without sequential scans the one plan left walks the
  // primary key to the live rows, however many PostgreSQL believes there
  // are, so the plan the connection keeps for the claim (a prepared
  // statement) is right for any backlog. With sequential scans priced out,
  // every plan looks dear enough to JIT compile, which would cost more than
  // the scan: no JIT either.
  return conn.ExecScript("SET enable_seqscan = off; SET jit = off");
}

absl::StatusOr<db::Result> OutboxRelay::Claim(db::Conn& conn, int batch_size) {
  if (absl::Status s = conn.ExecScript("BEGIN"); !s.ok()) return s;
  return conn.Exec(ClaimSql(batch_size));
}

absl::StatusOr<int> OutboxRelay::PublishBatch(db::Conn& conn, jsCtx* js) {
  auto rollback = [&](absl::Status s) {
    if (conn.healthy()) (void)conn.ExecScript("ROLLBACK");
    return s;
  };
  // Claim a batch by deleting it: the delete commits only once JetStream has
  // acknowledged every row, so an unpublished row is never lost (a failure or
  // crash rolls it back, and the next batch sends it again).
  absl::StatusOr<db::Result> rows = Claim(conn, options_.batch_size);
  if (!rows.ok()) return rollback(rows.status());
  if (rows->rows() == 0) {
    (void)conn.ExecScript("COMMIT");
    return 0;
  }
  std::vector<int> order(rows->rows());  // publish in commit order (seq)
  for (int r = 0; r < rows->rows(); ++r) order[r] = r;
  std::sort(order.begin(), order.end(),
            [&](int a, int b) { return rows->Int(a, 8) < rows->Int(b, 8); });
  {
    absl::MutexLock lock(&mu_);
    acked_.clear();
  }
  std::unordered_set<std::string> claimed;
  for (int r : order) {
    std::string id = rows->String(r, 0);
    std::string subject = rows->String(r, 1);
    absl::string_view payload = rows->Text(r, 5);
    natsMsg* raw = nullptr;
    natsStatus s = natsMsg_Create(&raw, subject.c_str(), nullptr, payload.data(),
                                  static_cast<int>(payload.size()));
    if (s != NATS_OK) break;
    NatsPtr<natsMsg> msg(raw);
    const std::string headers[][2] = {{"ce-specversion", "1.0"},
                                      {"ce-id", id},
                                      {"ce-source", rows->String(r, 3)},
                                      {"ce-type", rows->String(r, 2)},
                                      {"ce-time", rows->String(r, 7)},
                                      {"ce-subject", rows->String(r, 4)},
                                      {"content-type", "application/json"},
                                      {"Nats-Msg-Id", id},
                                      {"traceparent", rows->String(r, 6)},
                                      // What CheckForRestore compares.
                                      {kOutboxSeqHeader, rows->String(r, 8)}};
    for (const auto& h : headers) {
      if (!h[1].empty()) s = natsMsgHeader_Set(msg.get(), h[0].c_str(), h[1].c_str());
    }
    natsMsg* handoff = msg.release();
    s = js_PublishMsgAsync(js, &handoff, nullptr);
    if (s != NATS_OK) {
      natsMsg_Destroy(handoff);  // still ours when the call failed
      break;
    }
    claimed.insert(std::move(id));
  }
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = absl::ToInt64Milliseconds(options_.ack_timeout);
  (void)js_PublishAsyncComplete(js, &po);  // on timeout, the rows stay pending

  size_t acked = 0;
  std::unordered_set<std::string> acked_ids;
  {
    absl::MutexLock lock(&mu_);
    // A late ack from an earlier batch may land here; count only our own rows.
    for (std::string& id : acked_) {
      if (claimed.count(id) != 0) acked_ids.insert(std::move(id));
    }
    acked = acked_ids.size();
    acked_.clear();
  }
  if (options_.crash_after_publish && acked > 0) {
    log::Warn("test hook: exiting after PubAck, before deleting the rows");
    std::_Exit(86);
  }
  const size_t claimed_rows = static_cast<size_t>(rows->rows());
  if (acked < claimed_rows) {
    // The rows JetStream acknowledged from the batch's start, in commit
    // order, leave the outbox: sent again after a refusal that outlasts the
    // stream's duplicate window (2 minutes by default), they would be stored
    // twice. The rest stay, the acknowledged among them too, so that no
    // event overtakes one before it; the next try sends them again.
    RelayMetrics::Get().failed.Increment(static_cast<double>(claimed_rows - acked));
    std::string sent_seqs;
    int64_t last_sent = 0;
    size_t prefix = 0;
    for (int r : order) {
      if (acked_ids.count(rows->String(r, 0)) == 0) break;
      absl::StrAppend(&sent_seqs, prefix == 0 ? "{" : ",", rows->Int(r, 8));
      last_sent = rows->Int(r, 8);
      ++prefix;
    }
    const absl::Status refused = absl::UnavailableError(absl::StrCat(
        claimed_rows - acked, " of ", claimed_rows, " events not acknowledged by JetStream"));
    if (absl::Status s = rollback(refused); prefix == 0 || !conn.healthy()) return s;
    absl::StatusOr<db::Result> gone =
        conn.Exec("DELETE FROM outbox WHERE seq = ANY($1::bigint[])", {sent_seqs + "}"});
    if (gone.ok()) {
      highest_in_stream_ = std::max(highest_in_stream_, last_sent);
      RelayMetrics::Get().published.Increment(static_cast<double>(gone->affected()));
    }
    return refused;
  }
  if (absl::Status s = conn.ExecScript("COMMIT"); !s.ok()) return s;
  highest_in_stream_ = std::max(highest_in_stream_, rows->Int(order.back(), 8));
  RelayMetrics::Get().published.Increment(static_cast<double>(acked));
  return static_cast<int>(acked);
}

absl::StatusOr<OutboxRelay::Backlog> OutboxRelay::ReadBacklog(db::Conn& conn) {
  // The ends of the waiting rows by the index, then, if they are near enough
  // to each other, the rows between (a row older by created_at than the
  // first by seq is counted in its age: a transaction writes created_at as it
  // begins, its seq as it inserts).
  absl::StatusOr<db::Result> r = conn.Exec(absl::StrCat(
      "WITH b AS (SELECT min(seq) AS lo, max(seq) AS hi FROM outbox WHERE sent_at IS NULL) "
      "SELECT b.lo IS NULL OR b.hi - b.lo < ",
      kExactSpan,
      ", count(o.seq), "
      "COALESCE(EXTRACT(EPOCH FROM now() - min(o.created_at)), 0)::float8 "
      "FROM b LEFT JOIN outbox o ON o.seq BETWEEN b.lo AND b.hi AND o.sent_at IS NULL "
      "AND b.hi - b.lo < ",
      kExactSpan, " GROUP BY b.lo, b.hi"));
  if (!r.ok()) return r.status();
  Backlog out;
  if (r->rows() == 1 && r->String(0, 0) == "t") {
    out.by_index = true;
  } else {
    r = conn.Exec(
        "SELECT true, count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 "
        "FROM outbox WHERE sent_at IS NULL");
    if (!r.ok()) return r.status();
  }
  out.pending = r->Int(0, 1);
  out.oldest_seconds = std::strtod(r->String(0, 2).c_str(), nullptr);
  return out;
}

void OutboxRelay::Run() {
  std::unique_ptr<db::Conn> conn;
  NatsPtr<jsCtx> js;
  uint64_t js_generation = 0;  // of the connection `js` was made from
  bool stream_ready = false;
  absl::Time next_housekeeping = absl::InfinitePast();
  absl::Time next_restore_check = absl::InfinitePast();
  absl::Status last_error = absl::OkStatus();
  absl::Duration retry_wait = absl::ZeroDuration();  // none while passes succeed
  auto report = [&](const absl::Status& s) {
    healthy_.store(false);
    if (log::Text(s) != log::Text(last_error)) {
      log::Warn("outbox relay waiting", {{"error", log::Text(s)}});
      last_error = s;
    }
  };
  while (true) {
    const bool flushing = stopping_.load();
    if (flushing && absl::Now() >= flush_deadline_) break;
    if (conn == nullptr || !conn->healthy()) {
      auto c = db::Conn::Open(options_.database_url, "outbox-relay");
      if (!c.ok()) {
        report(c.status());
        if (flushing) break;
        WaitToRetry(retry_wait);
        continue;
      }
      if (absl::Status s = SetUpConnection(**c); !s.ok()) {
        report(s);
        if (flushing) break;
        WaitToRetry(retry_wait);
        continue;
      }
      conn = *std::move(c);
      // A restore drops every connection: look before publishing on this one.
      next_restore_check = absl::InfinitePast();
    }
    const absl::Time answers_until = absl::Now() + options_.answer_timeout;
    conn->set_answer_deadline(flushing ? std::min(answers_until, flush_deadline_) : answers_until);
    // The lag gauges matter most while nothing can be published (NATS down,
    // a stream refusing) and while a backlog drains, so they are read before
    // publishing is even tried. Counting a large backlog reads it whole
    // (ReadBacklog): the reads are spaced so that they take at most a
    // twentieth of this connection's time.
    if (!flushing && absl::Now() >= next_housekeeping) {
      absl::Time began = absl::Now();
      if (absl::StatusOr<Backlog> b = ReadBacklog(*conn); b.ok()) {
        RelayMetrics::Get().pending.Set(static_cast<double>(b->pending));
        RelayMetrics::Get().oldest_seconds.Set(b->oldest_seconds);
      }
      next_housekeeping = absl::Now() + std::max(absl::Seconds(2), 20 * (absl::Now() - began));
    }
    if (js != nullptr && nats_->generation() != js_generation) {
      js.reset();  // made from a connection the library closed, since replaced
      stream_ready = false;
    }
    if (js == nullptr) {
      jsOptions jo;
      jsOptions_Init(&jo);
      jo.PublishAsync.AckHandler = &OutboxRelay::OnAck;
      jo.PublishAsync.AckHandlerClosure = this;
      jo.PublishAsync.MaxPending = options_.batch_size * 2;
      auto j = nats_->JetStream(&jo, &js_generation);
      if (!j.ok()) {
        report(j.status());
        if (flushing) break;
        WaitToRetry(retry_wait);
        continue;
      }
      js = *std::move(j);
    }
    if (!stream_ready) {
      absl::Status s = nats_->EnsureStream(options_.stream);
      if (!s.ok()) {
        report(s);
        if (flushing) break;
        WaitToRetry(retry_wait);
        continue;
      }
      stream_ready = true;
    }
    if (!flushing && absl::Now() >= next_restore_check) {
      (void)CheckForRestore(*conn, js.get());
      next_restore_check = absl::Now() + options_.restore_check_interval;
    }
    absl::StatusOr<int> n = PublishBatch(*conn, js.get());
    if (!n.ok()) {
      report(n.status());
      stream_ready = false;  // an operator may have deleted it: make it again
      WaitToRetry(retry_wait);  // while flushing, no later than its deadline
      continue;
    }
    retry_wait = absl::ZeroDuration();
    if (*n > 0) last_published_ = absl::Now();
    healthy_.store(true);
    if (!last_error.ok()) {
      log::Info("outbox relay publishing again");
      last_error = absl::OkStatus();
    }
    if (*n >= options_.batch_size) continue;  // more may be waiting
    if (flushing) break;                      // the outbox is empty
    WaitForWork();
  }
}

absl::Status AdvanceOutboxPastStream(db::Pool& pool, const Nats& nats, const std::string& stream,
                                     absl::Duration timeout) {
  absl::Time until = absl::Now() + timeout;
  while (!nats.connected() && absl::Now() < until) absl::SleepFor(absl::Milliseconds(50));
  if (!nats.connected()) {
    return absl::UnavailableError(absl::StrCat(
        "NATS not reachable (NATS_URL): republishing after a restore first reads the last "
        "event of stream ",
        stream, ", to number the snapshots past it"));
  }
  absl::StatusOr<NatsPtr<jsCtx>> js = nats.JetStream();
  if (!js.ok()) return js.status();
  absl::StatusOr<int64_t> last = LastOutboxSeqInStream(js->get(), stream);
  if (!last.ok()) return last.status();
  return db::Transact(pool, [&](db::Conn& c) -> absl::Status {
    // Only forward: setval(h) hands out h + 1 next.
    return c
        .Exec(absl::StrCat(
                  "SELECT setval('outbox_seq_seq', h, true) FROM (SELECT GREATEST($1::bigint, "
                  "(SELECT COALESCE(max(stream_seq), 0) FROM outbox_restores "
                  "WHERE settled_at IS NULL)) AS h) x WHERE h > ",
                  kDatabaseOutboxSeq),
              {*last})
        .status();
  });
}

absl::StatusOr<int64_t> SettleRestores(db::Pool& pool) {
  int64_t settled = 0;
  absl::Status s = db::Transact(pool, [&](db::Conn& c) -> absl::Status {
    auto r = c.Exec("UPDATE outbox_restores SET settled_at = now() WHERE settled_at IS NULL");
    if (!r.ok()) return r.status();
    settled = r->affected();
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return settled;
}

}  // namespace connecting::bus
