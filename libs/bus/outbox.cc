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

namespace connecting::bus {
namespace {

// Each event's outbox row number, for DatabaseBehindStream.
constexpr char kOutboxSeqHeader[] = "connecting-outbox-seq";

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
                             "1 if the stream holds events from outbox rows the database no "
                             "longer reaches (restored to an earlier point?), found at start")
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
      "INSERT INTO outbox (subject, type, source, ce_subject, payload, traceparent) "
      "VALUES ($1, $2, $3, $4, $5, $6)",
      {absl::StrCat(prefix_, ".", subject_suffix), event.GetDescriptor()->full_name(), source_,
       ce_subject, *std::move(json), traceparent}};
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
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof one);
}

void OutboxRelay::OnAck(jsCtx*, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae, void* closure) {
  auto* self = static_cast<OutboxRelay*>(closure);
  const char* id = nullptr;
  if (pa != nullptr && pae == nullptr && natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK &&
      id != nullptr) {
    absl::MutexLock lock(&self->mu_);
    self->acked_.emplace_back(id);
  } else if (pae != nullptr) {
    log::Warn("outbox publish rejected", {{"error", pae->ErrText ? pae->ErrText : ""}});
  }
  natsMsg_Destroy(msg);
}

void OutboxRelay::WaitForWork() {
  pollfd fd = {wake_fd_, POLLIN, 0};
  int woken = poll(&fd, 1, static_cast<int>(absl::ToInt64Milliseconds(options_.poll_interval)));
  if (woken > 0 && !stopping_.load() && options_.linger > absl::ZeroDuration()) {
    // Let the commits that follow this one join its batch: one relay
    // transaction and one round of PubAcks for many events.
    absl::SleepFor(options_.linger);
  }
  uint64_t drained;
  (void)!read(wake_fd_, &drained, sizeof drained);
}

bool OutboxRelay::DatabaseBehindStream(db::Conn& conn, jsCtx* js) {
  const char* stream = options_.stream.name.c_str();
  jsStreamInfo* si = nullptr;
  if (js_GetStreamInfo(&si, js, stream, nullptr, nullptr) != NATS_OK) return false;
  uint64_t last = si->State.LastSeq;
  jsStreamInfo_Destroy(si);
  if (last == 0) return false;
  natsMsg* raw = nullptr;
  if (js_GetMsg(&raw, js, stream, last, nullptr, nullptr) != NATS_OK) return false;
  NatsPtr<natsMsg> msg(raw);
  const char* header = nullptr;
  int64_t published = 0;
  if (natsMsgHeader_Get(msg.get(), kOutboxSeqHeader, &header) != NATS_OK ||
      !absl::SimpleAtoi(header, &published)) {
    return false;  // published by a release before the header, or not by a relay
  }
  absl::StatusOr<db::Result> r =
      conn.Exec("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM outbox_seq_seq");
  if (!r.ok() || r->rows() != 1) return false;
  if (r->Int(0, 0) >= published) {
    RelayMetrics::Get().behind_stream.Set(0);
    return false;
  }
  log::Error(
      "database behind its stream (restored to an earlier point, or replaced?): consumers hold "
      "events of changes it no longer has; once it is the database to keep, run this service "
      "with --republish --after-restore",
      {{"stream", options_.stream.name},
       {"published_outbox_seq", absl::StrCat(published)},
       {"database_outbox_seq", r->String(0, 0)}});
  RelayMetrics::Get().behind_stream.Set(1);
  return true;
}

absl::StatusOr<int> OutboxRelay::PublishBatch(db::Conn& conn, jsCtx* js) {
  if (absl::Status s = conn.ExecScript("BEGIN"); !s.ok()) return s;
  auto rollback = [&](absl::Status s) {
    if (conn.healthy()) (void)conn.ExecScript("ROLLBACK");
    return s;
  };
  // Claim a batch by deleting it: the delete commits only once JetStream has
  // acknowledged every row, so an unpublished row is never lost (a failure or
  // crash rolls it back, and the next batch sends it again).
  absl::StatusOr<db::Result> rows = conn.Exec(
      "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE sent_at IS NULL "
      "ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED) "
      "RETURNING id, subject, type, source, ce_subject, payload, traceparent, "
      "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), seq",
      {static_cast<int32_t>(options_.batch_size)});
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
                                      // What DatabaseBehindStream compares.
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
  {
    absl::MutexLock lock(&mu_);
    // A late ack from an earlier batch may land here; count only our own rows.
    for (const std::string& id : acked_) acked += claimed.count(id);
    acked_.clear();
  }
  if (options_.crash_after_publish && acked > 0) {
    log::Warn("test hook: exiting after PubAck, before deleting the rows");
    std::_Exit(86);
  }
  const size_t claimed_rows = static_cast<size_t>(rows->rows());
  if (acked < claimed_rows) {
    // Keep them all: the next batch sends them again and JetStream drops the
    // copies of those it already has (Nats-Msg-Id within its duplicate window).
    RelayMetrics::Get().failed.Increment(static_cast<double>(claimed_rows - acked));
    return rollback(absl::UnavailableError(absl::StrCat(claimed_rows - acked, " of ", claimed_rows,
                                                        " events not acknowledged by JetStream")));
  }
  if (absl::Status s = conn.ExecScript("COMMIT"); !s.ok()) return s;
  RelayMetrics::Get().published.Increment(static_cast<double>(acked));
  return static_cast<int>(acked);
}

void OutboxRelay::Run() {
  std::unique_ptr<db::Conn> conn;
  NatsPtr<jsCtx> js;
  bool stream_ready = false, checked_stream = false;
  absl::Time next_housekeeping = absl::InfinitePast();
  absl::Status last_error = absl::OkStatus();
  auto report = [&](const absl::Status& s) {
    healthy_.store(false);
    if (s.ToString() != last_error.ToString()) {
      log::Warn("outbox relay waiting", {{"error", s.ToString()}});
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
        WaitForWork();
        continue;
      }
      // The outbox is a queue: its statistics say "empty" as often as not,
      // while between vacuums it holds thousands of dead rows. A sequential
      // scan then reads them all on every claim (measured: a sixth of the
      // machine under booking load); the primary key walks to the live ones.
      // With sequential scans priced out, every plan looks dear enough to JIT
      // compile, which would cost more than the scan: no JIT either.
      if (absl::Status s = (*c)->ExecScript("SET enable_seqscan = off; SET jit = off");
          !s.ok()) {
        report(s);
        WaitForWork();
        continue;
      }
      conn = *std::move(c);
    }
    // The lag gauges matter most while nothing can be published (NATS down,
    // a stream refusing) and while a backlog drains, so they are read before
    // publishing is even tried. Counting a backlog scans it: the reads are
    // spaced so that they take at most a twentieth of this connection's time.
    if (!flushing && absl::Now() >= next_housekeeping) {
      absl::Time began = absl::Now();
      auto g = conn->Exec(
          "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 "
          "FROM outbox WHERE sent_at IS NULL");
      if (g.ok()) {
        RelayMetrics::Get().pending.Set(static_cast<double>(g->Int(0, 0)));
        RelayMetrics::Get().oldest_seconds.Set(std::strtod(g->String(0, 1).c_str(), nullptr));
      }
      next_housekeeping = absl::Now() + std::max(absl::Seconds(2), 20 * (absl::Now() - began));
    }
    if (js == nullptr) {
      jsOptions jo;
      jsOptions_Init(&jo);
      jo.PublishAsync.AckHandler = &OutboxRelay::OnAck;
      jo.PublishAsync.AckHandlerClosure = this;
      jo.PublishAsync.MaxPending = options_.batch_size * 2;
      auto j = nats_->JetStream(&jo);
      if (!j.ok()) {
        report(j.status());
        if (flushing) break;
        WaitForWork();
        continue;
      }
      js = *std::move(j);
    }
    if (!stream_ready) {
      absl::Status s = nats_->EnsureStream(options_.stream);
      if (!s.ok()) {
        report(s);
        if (flushing) break;
        WaitForWork();
        continue;
      }
      stream_ready = true;
      if (!checked_stream) {  // before this relay publishes anything
        checked_stream = true;
        (void)DatabaseBehindStream(*conn, js.get());
      }
    }
    absl::StatusOr<int> n = PublishBatch(*conn, js.get());
    if (!n.ok()) {
      report(n.status());
      stream_ready = false;  // an operator may have deleted it: make it again
      if (!flushing) WaitForWork();
      continue;
    }
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

}  // namespace connecting::bus
