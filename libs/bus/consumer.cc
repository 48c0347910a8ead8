#include "libs/bus/consumer.h"

#include <chrono>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "libs/common/log.h"
#include "libs/common/metrics.h"
#include "libs/common/text.h"

namespace connecting::bus {
namespace {

prometheus::Family<prometheus::Counter>& ProcessedFamily() {
  static auto& f = prometheus::BuildCounter()
                       .Name("connecting_consumer_events_total")
                       .Help(
                           "Events handled by consumers, by result "
                           "(applied, duplicate, retried, dead_lettered, replayed)")
                       .Register(*metrics::Registry());
  return f;
}

prometheus::Family<prometheus::Gauge>& PendingFamily() {
  static auto& f = prometheus::BuildGauge()
                       .Name("connecting_consumer_lag")
                       .Help("Messages in the stream not yet delivered to the consumer")
                       .Register(*metrics::Registry());
  return f;
}

// Records an event as handled by a consumer, with its place in the stream; no
// row is inserted if it already was, or if it lies at or below the mark the
// inbox was pruned to in this stream ($5: the stream's creation time).
constexpr char kInboxInsert[] =
    "INSERT INTO inbox (consumer, event_id, subject, stream_seq) "
    "SELECT $1::text, $2::text, $3::text, $4::bigint WHERE NOT EXISTS (SELECT 1 FROM "
    "inbox_pruned p WHERE p.consumer = $1 AND p.stream_created = $5 AND $4 <= p.through_seq) "
    "ON CONFLICT DO NOTHING";
// A copy of an event already handled: its place counts too (a copy
// republished later sits further on in the stream than the first).
constexpr char kInboxCopy[] =
    "UPDATE inbox SET stream_seq = greatest(stream_seq, $3) WHERE consumer = $1 AND event_id = $2";

// A start of handling an event delivered again; returns the number of
// starts without an answer, this one included.
constexpr char kMarkStarted[] =
    "INSERT INTO consumer_unanswered AS u (consumer, event_id, starts) VALUES ($1, $2, 1) "
    "ON CONFLICT (consumer, event_id) DO UPDATE SET starts = u.starts + 1, last_start = now() "
    "RETURNING starts";
// The event was answered (applied, dead-lettered, or handed back to retry).
constexpr char kClearStarted[] =
    "DELETE FROM consumer_unanswered WHERE consumer = $1 AND event_id = $2";
// Starts that went unanswered before an event is dead-lettered unhandled.
constexpr int64_t kMaxUnanswered = 3;

// An id longer than this is not one (ours are 36); the inbox's index takes
// keys of at most about 2,700 bytes.
constexpr size_t kMaxIdBytes = 512;

// A stable 64-bit hash (FNV-1a), the same in every process and release.
uint64_t StableHash(absl::string_view s) {
  uint64_t h = 14695981039346656037ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

std::string Header(natsMsg* msg, const char* key) {
  const char* v = nullptr;
  if (natsMsgHeader_Get(msg, key, &v) == NATS_OK && v != nullptr) return v;
  return "";
}

}  // namespace

Consumer::Consumer(ConsumerOptions options, db::Pool* pool, const Nats* nats, Handler handler)
    : options_(std::move(options)), pool_(pool), nats_(nats), handler_(std::move(handler)) {}

Consumer::~Consumer() { Stop(); }

void Consumer::Start() {
  thread_ = std::thread([this] { Run(); });
}

void Consumer::Stop() {
  stopping_.store(true);
  if (thread_.joinable()) thread_.join();
}

absl::Status Consumer::Subscribe(jsCtx* js, NatsPtr<natsSubscription>* sub) {
  // The stream belongs to the producing service; wait for it rather than
  // create it with only our filter's subjects.
  jsStreamInfo* si = nullptr;
  jsErrCode serr = static_cast<jsErrCode>(0);
  natsStatus sst = js_GetStreamInfo(&si, js, options_.stream.c_str(), nullptr, &serr);
  NatsPtr<jsStreamInfo> si_owner(si);
  if (sst == NATS_NOT_FOUND) {
    return absl::UnavailableError(
        absl::StrCat("stream ", options_.stream, " does not exist yet (its producer creates it)"));
  }
  if (sst != NATS_OK) return FromNats(sst, absl::StrCat("stream ", options_.stream), serr);
  stream_created_.store(si->Created);
  // Create the durable consumer explicitly so that unsubscribing never deletes it.
  jsConsumerConfig cc;
  jsConsumerConfig_Init(&cc);
  cc.Durable = options_.durable.c_str();
  cc.AckPolicy = js_AckExplicit;
  cc.DeliverPolicy = js_DeliverAll;
  cc.FilterSubject = options_.filter_subject.c_str();
  // The server never gives up on an event (it would drop it without a
  // trace): the consumer dead-letters, after `max_deliver` failures or
  // kMaxUnanswered starts without an answer.
  cc.MaxDeliver = -1;
  cc.AckWait = absl::ToInt64Nanoseconds(options_.ack_wait);
  jsConsumerInfo* ci = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsStatus st = js_GetConsumerInfo(&ci, js, options_.stream.c_str(), options_.durable.c_str(),
                                     nullptr, &jerr);
  if (st == NATS_OK && DatabaseBehind(ci->AckFloor.Stream)) {
    // The server saw events acknowledged that the database no longer has
    // (restored to an earlier point, or replaced): start the durable again
    // from the beginning of the stream. The inbox skips what it still has.
    log::Warn(
        "database behind its durable consumer (restored from a backup?): replaying the "
        "stream from the start",
        {{"consumer", options_.durable},
         {"stream", options_.stream},
         {"ack_floor", absl::StrCat(ci->AckFloor.Stream)}});
    jsConsumerInfo_Destroy(ci);
    ci = nullptr;
    st = js_DeleteConsumer(js, options_.stream.c_str(), options_.durable.c_str(), nullptr, &jerr);
    if (st != NATS_OK && st != NATS_NOT_FOUND) {
      return FromNats(st, absl::StrCat("delete consumer ", options_.durable), jerr);
    }
    st = NATS_NOT_FOUND;
  }
  if (st == NATS_NOT_FOUND) {
    st = js_AddConsumer(&ci, js, options_.stream.c_str(), &cc, nullptr, &jerr);
  } else if (st == NATS_OK && ci->Config != nullptr &&
             (ci->Config->MaxDeliver != cc.MaxDeliver || ci->Config->AckWait != cc.AckWait)) {
    // A durable made by an earlier release (which let the server drop an
    // event after max_deliver + 1 deliveries), or with another ack wait:
    // brought to these settings, keeping the rest of its configuration.
    const int64_t was_max_deliver = ci->Config->MaxDeliver;
    const int64_t was_ack_wait_ms = ci->Config->AckWait / 1000000;
    ci->Config->MaxDeliver = cc.MaxDeliver;
    ci->Config->AckWait = cc.AckWait;
    jsConsumerInfo* updated = nullptr;
    st = js_UpdateConsumer(&updated, js, options_.stream.c_str(), ci->Config, nullptr, &jerr);
    jsConsumerInfo_Destroy(ci);
    ci = updated;
    if (st == NATS_OK) {
      log::Info("durable consumer brought to this release's settings",
                {{"consumer", options_.durable},
                 {"max_deliver", absl::StrCat(was_max_deliver, " -> unlimited")},
                 {"ack_wait_ms", absl::StrCat(was_ack_wait_ms, " -> ",
                                              absl::ToInt64Milliseconds(options_.ack_wait))}});
    }
  }
  NatsPtr<jsConsumerInfo> ci_owner(ci);
  if (st != NATS_OK) return FromNats(st, absl::StrCat("consumer ", options_.durable), jerr);
  for (const std::string& retired : options_.retired_durables) {
    jsErrCode derr = static_cast<jsErrCode>(0);
    natsStatus ds = js_DeleteConsumer(js, options_.stream.c_str(), retired.c_str(), nullptr, &derr);
    if (ds == NATS_OK) {
      log::Info("retired durable consumer deleted",
                {{"stream", options_.stream}, {"consumer", retired}, {"replaced_by", options_.durable}});
    } else if (ds != NATS_NOT_FOUND) {
      log::Warn("could not delete a retired durable consumer",
                {{"consumer", retired}, {"error", log::Text(FromNats(ds, retired, derr))}});
    }
  }

  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = options_.stream.c_str();
  so.Consumer = options_.durable.c_str();
  natsSubscription* raw = nullptr;
  st = js_PullSubscribe(&raw, js, options_.filter_subject.c_str(), options_.durable.c_str(),
                        nullptr, &so, &jerr);
  if (st != NATS_OK) return FromNats(st, absl::StrCat("subscribe ", options_.durable), jerr);
  sub->reset(raw);
  return absl::OkStatus();
}

absl::StatusOr<ReplayReport> Consumer::ReplayDeadLetters(absl::Duration step_limit) {
  std::vector<std::string> ids;
  absl::Status listed =
      db::WithConnection(*pool_, absl::Now() + step_limit, [&](db::Conn& c) {
        auto r = c.Exec(
            "SELECT event_id FROM dead_letters WHERE consumer = $1 ORDER BY failed_at, event_id",
            {options_.durable});
        if (!r.ok()) return r.status();
        for (int i = 0; i < r->rows(); ++i) ids.push_back(r->String(i, 0));
        return absl::OkStatus();
      });
  if (!listed.ok()) return listed;
  ReplayReport report;
  for (const std::string& id : ids) {
    bool gone = false;  // replayed meanwhile by someone else
    absl::Status refused;
    db::TxOptions step;
    step.deadline = absl::Now() + step_limit;
    absl::Status s = db::Transact(*pool_, step, [&](db::Conn& tx) -> absl::Status {
      gone = false;
      refused = absl::OkStatus();
      auto row = tx.Exec(
          "SELECT subject, type, payload, deliveries FROM dead_letters "
          "WHERE consumer = $1 AND event_id = $2 FOR UPDATE SKIP LOCKED",
          {options_.durable, id});
      if (!row.ok()) return row.status();
      if (row->rows() == 0) {
        gone = true;
        return absl::OkStatus();
      }
      Delivery d;
      d.id = id;
      d.subject = row->String(0, 0);
      d.type = row->String(0, 1);
      d.payload = row->String(0, 2);
      d.deliveries = static_cast<uint64_t>(row->Int(0, 3)) + 1;
      refused = handler_(tx, d);
      if (!refused.ok()) return refused;
      return tx
          .Exec("DELETE FROM dead_letters WHERE consumer = $1 AND event_id = $2",
                {options_.durable, id})
          .status();
    });
    if (s.ok()) {
      if (gone) continue;
      ++report.replayed;
      ProcessedFamily().Add({{"consumer", options_.durable}, {"result", "replayed"}}).Increment();
      if (on_commit_) on_commit_();
      log::Info("dead letter replayed", {{"consumer", options_.durable}, {"event_id", id}});
      continue;
    }
    if (refused.ok()) return s;  // the database, not the handler
    // A handler's statement failing with the database gone (down, or not
    // answering) says nothing of the event: keep it as it was, and stop.
    if (!absl::IsInvalidArgument(refused) && !DatabaseReachable()) return refused;
    ++report.failing;
    log::Warn("dead letter refused again",
              {{"consumer", options_.durable}, {"event_id", id}, {"error", log::Text(refused)}});
    step.deadline = absl::Now() + step_limit;
    absl::Status kept = db::Transact(*pool_, step, [&](db::Conn& tx) {
      return tx
          .Exec(
              "UPDATE dead_letters SET error = $3, deliveries = deliveries + 1, "
              "failed_at = now() WHERE consumer = $1 AND event_id = $2",
              {options_.durable, id, log::Text(refused)})
          .status();
    });
    if (!kept.ok()) return kept;
  }
  return report;
}

bool Consumer::DatabaseBehind(uint64_t ack_floor) {
  if (ack_floor == 0) return false;
  bool behind = false;
  absl::Status s = db::WithConnection(*pool_, absl::Now() + absl::Seconds(5), [&](db::Conn& c) {
    auto r = c.Exec(
        // The mark counts as a place recorded: the rows below it may be gone.
        "SELECT greatest((SELECT max(stream_seq) FROM inbox WHERE consumer = $1), "
        "(SELECT through_seq FROM inbox_pruned WHERE consumer = $1 AND stream_created = $2)), "
        "EXISTS (SELECT 1 FROM inbox WHERE consumer = $1) "
        "OR EXISTS (SELECT 1 FROM inbox_pruned WHERE consumer = $1), "
        // A replica of an earlier release recorded no place within the hour:
        // it may be acknowledging events beyond ours (a rolling update).
        "EXISTS (SELECT 1 FROM inbox WHERE consumer = $1 AND stream_seq IS NULL "
        "AND received_at > now() - interval '1 hour')",
        {options_.durable, stream_created_.load()});
    if (!r.ok()) return r.status();
    if (r->String(0, 2) == "t") {
      behind = false;
    } else if (!r->IsNull(0, 0)) {
      behind = static_cast<uint64_t>(r->Int(0, 0)) < ack_floor;
    } else {
      // No place recorded: a database that never handled an event is behind
      // a durable that acknowledged some; one whose rows predate recorded
      // places cannot tell, and is left to go on.
      behind = r->String(0, 1) != "t";
    }
    return absl::OkStatus();
  });
  return s.ok() && behind;
}

void Consumer::PruneInbox(uint64_t ack_floor) {
  const int64_t created = stream_created_.load();
  if (ack_floor == 0 || created == 0) return;
  // Whatever the server saw acknowledged had committed its effect before
  // (the ack follows the commit), and the caller has just checked that the
  // database still has it. A mark of another stream (made anew) is replaced.
  int64_t through = 0;
  absl::Status s = db::Transact(*pool_, [&](db::Conn& tx) -> absl::Status {
    auto mark = tx.Exec(
        "INSERT INTO inbox_pruned AS p (consumer, stream_created, through_seq) "
        "VALUES ($1, $2, $3) ON CONFLICT (consumer) DO UPDATE SET "
        "stream_created = excluded.stream_created, through_seq = CASE "
        "WHEN p.stream_created = excluded.stream_created "
        "THEN greatest(p.through_seq, excluded.through_seq) ELSE excluded.through_seq END "
        "RETURNING through_seq",
        {options_.durable, created, static_cast<int64_t>(ack_floor)});
    if (!mark.ok()) return mark.status();
    through = mark->Int(0, 0);
    // Counts of starts left by an event never delivered again (its stream
    // made anew, or the durable started over).
    return tx
        .Exec(
            "DELETE FROM consumer_unanswered WHERE consumer = $1 "
            "AND last_start < now() - make_interval(secs => $2)",
            {options_.durable, static_cast<int64_t>(absl::ToInt64Seconds(options_.inbox_keep))})
        .status();
  });
  // Then the rows it lets go, a few thousand per transaction and at most
  // kMaxBatches of them per call, so that a large backlog (the first prune
  // after an upgrade) neither holds one long transaction nor keeps events
  // waiting; the rest goes next time.
  constexpr int kBatch = 5000, kMaxBatches = 20;
  int64_t deleted = 0;
  for (int i = 0; s.ok() && i < kMaxBatches && !stopping_.load(); ++i) {
    int64_t n = 0;
    s = db::Transact(*pool_, [&](db::Conn& tx) -> absl::Status {
      // ARRAY(...): the rows are picked once, before the DELETE, which then
      // goes to each by its ctid; as `ctid IN (SELECT ... LIMIT n)` a plan
      // made while the inbox was small could run the subquery again for
      // every row of the inbox (as the outbox's claim did: OutboxRelay).
      auto del = tx.Exec(
          "DELETE FROM inbox WHERE ctid = ANY (ARRAY(SELECT ctid FROM inbox WHERE consumer = $1 "
          "AND stream_seq <= $2 AND received_at < now() - make_interval(secs => $3) "
          "LIMIT " +
              std::to_string(kBatch) + "))",
          {options_.durable, through,
           static_cast<int64_t>(absl::ToInt64Seconds(options_.inbox_keep))});
      if (!del.ok()) return del.status();
      n = del->affected();
      return absl::OkStatus();
    });
    deleted += n;
    if (n < kBatch) break;
  }
  if (!s.ok()) {
    log::Warn("inbox pruning failed; trying again later",
              {{"consumer", options_.durable}, {"error", log::Text(s)}});
  }
  if (deleted > 0) {
    log::Info("inbox pruned", {{"consumer", options_.durable},
                               {"through_seq", absl::StrCat(through)},
                               {"rows_deleted", absl::StrCat(deleted)}});
  }
}

db::TxOptions Consumer::EventTransaction() const {
  db::TxOptions o;
  o.deadline = absl::Now() + options_.ack_wait;
  return o;
}

bool Consumer::DatabaseReachable() {
  // Reachable and taking writes: a standby (a failover) or a database set
  // read-only answers, but refuses every event's inbox row, which must not
  // use up the event's deliveries any more than an outage does.
  bool writable = false;
  (void)db::WithConnection(*pool_, absl::Now() + absl::Seconds(2), [&](db::Conn& c) {
    absl::StatusOr<bool> writes = c.PingTakesWrites(absl::Seconds(2));
    writable = writes.ok() && *writes;
    // The next look opens a fresh connection, which may reach the primary.
    if (writes.ok() && !writable) c.Discard();
    return writes.status();
  });
  return writable;
}

bool Consumer::Pause(absl::Span<natsMsg* const> in_hand, absl::Duration* pause, absl::Time* touch) {
  for (const absl::Time until = absl::Now() + *pause; !stopping_.load();) {
    const absl::Time now = absl::Now();
    if (now >= *touch) {  // keep the server from redelivering them elsewhere
      for (natsMsg* m : in_hand) (void)natsMsg_InProgress(m, nullptr);
      *touch = now + options_.ack_wait / 3;
    }
    if (now >= until) break;
    absl::SleepFor(std::min(absl::Milliseconds(50), until - now));
  }
  *pause = std::min(2 * *pause, absl::Seconds(2));
  return !stopping_.load();
}

bool Consumer::HoldWhileDatabaseDown(absl::Span<natsMsg* const> in_hand) {
  healthy_.store(false);
  log::Warn("database unreachable or taking no writes: holding events until it is back",
            {{"consumer", options_.durable}, {"in_hand", absl::StrCat(in_hand.size())}});
  absl::Time touch = absl::InfinitePast();
  absl::Duration pause = absl::Milliseconds(250);
  while (Pause(in_hand, &pause, &touch)) {
    if (DatabaseReachable()) {
      log::Info("database reachable again", {{"consumer", options_.durable}});
      return true;
    }
  }
  return false;
}

absl::Status Consumer::RunHandler(db::Conn& tx, const Delivery& d) const {
  if (!options_.crash_on_payload.empty() &&
      d.payload.find(options_.crash_on_payload) != std::string::npos) {
    log::Warn("test hook: exiting while handling an event", {{"event_id", d.id}});
    std::_Exit(86);
  }
  return handler_(tx, d);
}

bool Consumer::ApplyTogether(absl::Span<natsMsg* const> fetched) {
  if (fetched.size() < 2) return false;
  std::vector<std::pair<Delivery, db::Param>> events;
  events.reserve(fetched.size());
  std::string malformed;
  for (natsMsg* msg : fetched) {
    db::Param seq = std::nullopt;
    Delivery d = ReadDelivery(msg, &seq, &malformed);
    if (!malformed.empty()) return false;  // Process dead-letters it
    // Delivered again: its handling may have brought the process down, so
    // each is handled on its own, its starts counted.
    if (d.deliveries > 1) return false;
    events.emplace_back(std::move(d), std::move(seq));
  }
  const db::Param created = db::Param(stream_created_.load());
  std::vector<bool> duplicate(events.size());
  absl::Status s = db::Transact(*pool_, EventTransaction(), [&](db::Conn& tx) -> absl::Status {
    // Every inbox row in one round trip, then the handlers of the new ones.
    std::vector<db::Statement> inserts;
    inserts.reserve(events.size());
    for (const auto& [d, seq] : events) {
      inserts.push_back({kInboxInsert, {options_.durable, d.id, d.subject, seq, created}});
    }
    std::vector<absl::StatusOr<db::Result>> inserted = tx.Pipeline(inserts);
    for (size_t i = 0; i < events.size(); ++i) {
      if (!inserted[i].ok()) return inserted[i].status();
      duplicate[i] = inserted[i]->affected() == 0;  // handled before, or twice in this fetch
    }
    for (size_t i = 0; i < events.size(); ++i) {
      const auto& [d, seq] = events[i];
      absl::Status applied = duplicate[i]
                                 ? tx.Exec(kInboxCopy, {options_.durable, d.id, seq}).status()
                                 : RunHandler(tx, d);
      if (!applied.ok()) return applied;
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return false;
  if (on_commit_) on_commit_();
  for (size_t i = 0; i < events.size(); ++i) {
    ProcessedFamily()
        .Add({{"consumer", options_.durable}, {"result", duplicate[i] ? "duplicate" : "applied"}})
        .Increment();
    natsMsg_Ack(fetched[i], nullptr);
  }
  return true;
}

Delivery Consumer::ReadDelivery(natsMsg* msg, db::Param* seq, std::string* malformed) const {
  Delivery d;
  malformed->clear();
  d.subject = text::StorableText(natsMsg_GetSubject(msg));
  bool escaped = false;
  d.id = Header(msg, "ce-id");
  if (d.id.empty()) d.id = Header(msg, "Nats-Msg-Id");
  d.id = text::StorableText(d.id, &escaped);
  if (escaped) *malformed = "the event's id (ce-id) is not UTF-8 text; kept escaped";
  if (d.id.size() > kMaxIdBytes) {
    // Kept short enough for the inbox, and still one key per id.
    size_t cut = 200;
    while (cut > 0 && (static_cast<unsigned char>(d.id[cut]) & 0xc0) == 0x80) --cut;
    *malformed = absl::StrCat("the event's id (ce-id) is ", d.id.size(),
                              " bytes, longer than any id (at most ", kMaxIdBytes,
                              "); kept as its start and a hash");
    d.id = absl::StrCat(d.id.substr(0, cut), "...#", absl::Hex(StableHash(d.id), absl::kZeroPad16));
  }
  d.type = text::StorableText(Header(msg, "ce-type"));
  d.traceparent = Header(msg, "traceparent");
  d.payload.assign(natsMsg_GetData(msg), static_cast<size_t>(natsMsg_GetDataLength(msg)));
  *seq = db::Param(std::nullopt);  // NULL in the inbox if unknown
  jsMsgMetaData* raw_meta = nullptr;
  if (natsMsg_GetMetaData(&raw_meta, msg) == NATS_OK) {
    NatsPtr<jsMsgMetaData> meta(raw_meta);
    d.deliveries = meta->NumDelivered;
    *seq = db::Param(static_cast<int64_t>(meta->Sequence.Stream));
    if (d.id.empty()) d.id = absl::StrCat(options_.stream, ":", meta->Sequence.Stream);
  }
  return d;
}

void Consumer::Process(absl::Span<natsMsg* const> in_hand) {
  natsMsg* msg = in_hand.front();
  db::Param seq = std::nullopt;
  std::string malformed;
  const Delivery d = ReadDelivery(msg, &seq, &malformed);
  const db::Param created = db::Param(stream_created_.load());
  auto count = [&](const char* result) {
    ProcessedFamily().Add({{"consumer", options_.durable}, {"result", result}}).Increment();
  };
  // An event delivered again may be one whose handling brought the process
  // down: each start is counted in a commit of its own before the handler
  // runs, and the count deleted with the event's outcome.
  const bool again = malformed.empty() && d.deliveries > 1;
  bool started = !again;
  int64_t unanswered = 0;  // starts before this one that never answered
  const std::vector<db::Param> key = {options_.durable, d.id};
  // The count deleted: in the transaction of the event's outcome, or on its
  // own (best effort, within `limit`) when the event is handed back.
  auto forget_start = [&](db::Conn& c) {
    return again ? c.Exec(kClearStarted, key).status() : absl::OkStatus();
  };
  auto take_back_start = [&](absl::Duration limit) {
    if (again && started) (void)db::WithConnection(*pool_, absl::Now() + limit, forget_start);
  };
  // A failure while our own database is unreachable says nothing about the
  // event: it is kept in hand, costing none of its deliveries (it is
  // dead-lettered once they are spent), and tried again once the database
  // is back. Stopping meanwhile hands it back for redelivery.
  enum { kReachable, kBack, kStopping };
  auto database = [&]() {
    if (DatabaseReachable()) return kReachable;
    if (HoldWhileDatabaseDown(in_hand)) return kBack;
    natsMsg_Nak(msg, nullptr);
    return kStopping;
  };
  // The database answering that it is in trouble (out of disk, say), or a
  // dead letter that cannot be written: the event is kept in hand too, and
  // tried again after a pause that grows, whatever its deliveries. Told
  // once.
  absl::Duration pause = absl::Milliseconds(250);
  absl::Time touch = absl::InfinitePast();
  bool held = false;
  auto hold = [&](const char* what, const absl::Status& why) {
    if (!held) {
      held = true;
      healthy_.store(false);
      log::Warn(what, {{"consumer", options_.durable},
                       {"event_id", d.id},
                       {"subject", d.subject},
                       {"deliveries", absl::StrCat(d.deliveries)},
                       {"error", log::Text(why)}});
    }
    if (Pause(in_hand, &pause, &touch)) return true;
    // Handed back, which is an answer: its start is taken back if the
    // database lets it, so that stops while the database is in trouble do
    // not count against the event.
    take_back_start(absl::Milliseconds(500));
    natsMsg_Nak(msg, nullptr);  // handed back for redelivery
    return false;
  };

  while (true) {
    bool duplicate = false;
    absl::Status s = absl::OkStatus();
    if (!malformed.empty()) {
      s = absl::InvalidArgumentError(malformed);
    } else if (!started) {
      s = db::Transact(*pool_, EventTransaction(), [&](db::Conn& tx) -> absl::Status {
        auto n = tx.Exec(kMarkStarted, key);
        if (!n.ok()) return n.status();
        unanswered = n->Int(0, 0) - 1;
        return absl::OkStatus();
      });
      started = s.ok();
      if (started && unanswered > 0 && unanswered < kMaxUnanswered) {
        log::Warn(
            "event delivered again after its handling began and never answered (the process "
            "crashed, or was killed, while on it?): trying again",
            {{"consumer", options_.durable},
             {"event_id", d.id},
             {"subject", d.subject},
             {"unanswered_starts", absl::StrCat(unanswered)},
             {"dead_lettered_after", absl::StrCat(kMaxUnanswered)}});
      }
    }
    if (s.ok() && unanswered >= kMaxUnanswered) {
      s = absl::AbortedError(absl::StrCat(
          "handling it began ", unanswered,
          " times and never answered (the process crashed, or was stopped, while on it): "
          "not run again, so that it cannot bring the service down again; replay it once the "
          "cause is found"));
    } else if (s.ok()) {
      s = db::Transact(*pool_, EventTransaction(), [&](db::Conn& tx) -> absl::Status {
        duplicate = false;
        if (absl::Status c = forget_start(tx); !c.ok()) return c;
        auto ins = tx.Exec(kInboxInsert, {options_.durable, d.id, d.subject, seq, created});
        if (!ins.ok()) return ins.status();
        if (ins->affected() == 0) {
          duplicate = true;
          return tx.Exec(kInboxCopy, {options_.durable, d.id, seq}).status();
        }
        return RunHandler(tx, d);
      });
    }
    if (s.ok()) {
      if (on_commit_) on_commit_();
      count(duplicate ? "duplicate" : "applied");
      if (held) {
        log::Info("event applied after being held",
                  {{"consumer", options_.durable}, {"event_id", d.id}});
      }
      natsMsg_Ack(msg, nullptr);
      return;
    }
    const bool unrunnable = absl::IsInvalidArgument(s) || unanswered >= kMaxUnanswered;
    if (!unrunnable) {
      auto db = database();
      if (db == kBack) continue;
      if (db == kStopping) return;
      if (absl::IsUnavailable(s) && db::SaidByDatabase(s)) {
        if (hold("event held: the database answers but is in trouble (not the event's fault); "
                 "trying again",
                 s)) {
          continue;
        }
        return;
      }
    }
    bool give_up = unrunnable || d.deliveries >= static_cast<uint64_t>(options_.max_deliver);
    if (!give_up) {
      count("retried");
      take_back_start(absl::Seconds(2));  // answered: this start does not count against it
      log::Warn("event handling failed, will retry", {{"consumer", options_.durable},
                                                      {"event_id", d.id},
                                                      {"subject", d.subject},
                                                      {"deliveries", absl::StrCat(d.deliveries)},
                                                      {"error", log::Text(s)}});
      int64_t delay_ms = std::min<int64_t>(30000, 250LL << std::min<uint64_t>(d.deliveries, 7));
      natsMsg_NakWithDelay(msg, delay_ms, nullptr);
      return;
    }
    // Kept as text PostgreSQL takes, and said so.
    bool escaped = false;
    const std::string payload = text::StorableText(d.payload, &escaped);
    std::string error = log::Text(s);
    if (escaped) {
      absl::StrAppend(&error,
                      " (the payload is not UTF-8 text: kept with those bytes as \\xNN "
                      "and backslashes doubled)");
    }
    absl::Status dl = db::Transact(*pool_, [&](db::Conn& tx) -> absl::Status {
      if (absl::Status c = forget_start(tx); !c.ok()) return c;
      auto ins = tx.Exec(kInboxInsert, {options_.durable, d.id, d.subject, seq, created});
      if (!ins.ok()) return ins.status();
      return tx
          .Exec(
              "INSERT INTO dead_letters (consumer, event_id, subject, type, payload, error, "
              "deliveries) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
              {options_.durable, d.id, d.subject, d.type, payload, error,
               static_cast<int64_t>(d.deliveries)})
          .status();
    });
    if (!dl.ok()) {
      auto db = database();
      if (db == kBack) continue;  // the event may take effect now; if not, it is dead-lettered then
      if (db == kStopping) return;
      // Held rather than handed back while the consumer runs: it would come
      // straight back, past its deliveries, to fail the same way.
      if (hold("event held: it could not be dead-lettered; trying again", dl)) continue;
      return;
    }
    count("dead_lettered");
    log::Error("event dead-lettered", {{"consumer", options_.durable},
                                       {"event_id", d.id},
                                       {"subject", d.subject},
                                       {"error", error}});
    natsMsg_Term(msg, nullptr);
    return;
  }
}

void Consumer::Run() {
  NatsPtr<jsCtx> js;
  uint64_t js_generation = 0;  // of the connection `js` and `sub` were made from
  NatsPtr<natsSubscription> sub;
  absl::Time next_check = absl::InfinitePast();  // lag, and whether the durable exists
  absl::Time next_prune = absl::Now() + options_.prune_every;
  std::string last_error;
  while (!stopping_.load()) {
    if (js != nullptr && nats_->generation() != js_generation) {
      // Made from a connection the library closed, since replaced.
      if (sub != nullptr) (void)natsSubscription_Unsubscribe(sub.get());
      sub.reset();
      js.reset();
    }
    if (sub == nullptr) {
      absl::Status s;
      if (js == nullptr) {
        auto j = nats_->JetStream(nullptr, &js_generation);
        if (j.ok()) js = *std::move(j);
        s = j.status();
      }
      if (s.ok()) s = Subscribe(js.get(), &sub);
      if (!s.ok()) {
        healthy_.store(false);
        if (std::string text = log::Text(s); text != last_error) {
          log::Warn("consumer waiting", {{"consumer", options_.durable}, {"error", text}});
          last_error = std::move(text);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        continue;
      }
      last_error.clear();
      log::Info("consumer subscribed",
                {{"consumer", options_.durable}, {"subject", options_.filter_subject}});
    }
    natsMsgList list{};
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus st = natsSubscription_Fetch(&list, sub.get(), options_.batch_size,
                                           absl::ToInt64Milliseconds(options_.fetch_wait), &jerr);
    if (st == NATS_OK) {
      healthy_.store(true);
      auto fetched = absl::MakeConstSpan(list.Msgs, list.Msgs + list.Count);
      size_t from = ApplyTogether(fetched) ? fetched.size() : 0;
      for (size_t i = from; i < fetched.size(); ++i) {  // when stopping, held ones are handed back
        Process(fetched.subspan(i));
      }
      natsMsgList_Destroy(&list);
    } else if (st == NATS_TIMEOUT) {
      healthy_.store(nats_->connected());
    } else {
      healthy_.store(false);
      next_check = absl::InfinitePast();  // is the durable still there?
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    if (absl::Now() >= next_check && js != nullptr) {
      next_check = absl::Now() + options_.check_every;
      jsConsumerInfo* ci = nullptr;
      natsStatus cs = js_GetConsumerInfo(&ci, js.get(), options_.stream.c_str(),
                                         options_.durable.c_str(), nullptr, nullptr);
      if (cs == NATS_OK) {
        PendingFamily()
            .Add({{"consumer", options_.durable}})
            .Set(static_cast<double>(ci->NumPending));
        // Read after the ack floor: whatever was acknowledged by then had
        // committed its inbox row before, unless the database lost it.
        const uint64_t ack_floor = ci->AckFloor.Stream;
        bool behind = DatabaseBehind(ack_floor);
        jsConsumerInfo_Destroy(ci);
        if (behind) {  // Subscribe starts the durable again
          healthy_.store(false);
          (void)natsSubscription_Unsubscribe(sub.get());
          sub.reset();
        } else if (absl::Now() >= next_prune) {
          next_prune = absl::Now() + options_.prune_every;
          PruneInbox(ack_floor);
        }
      } else if (cs == NATS_NOT_FOUND) {
        // Deleted on the server (the durable, or its whole stream): a pull
        // on it would wait forever. Subscribe again, which makes it again;
        // its replay from the start applies nothing twice (the inbox).
        log::Warn("durable consumer gone from the server; subscribing again",
                  {{"consumer", options_.durable}, {"stream", options_.stream}});
        healthy_.store(false);
        (void)natsSubscription_Unsubscribe(sub.get());
        sub.reset();
      }
    }
  }
  if (sub != nullptr) (void)natsSubscription_Unsubscribe(sub.get());
}

}  // namespace connecting::bus
