// The outbox relay and inbox consumers in-process, against real PostgreSQL and
// NATS: each event takes effect exactly once, whatever is redelivered.
#include <gtest/gtest.h>
#include <nats/nats.h>

#include <atomic>
#include <functional>
#include <future>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "connecting/events/v1/partners_events.pb.h"
#include "libs/bus/consumer.h"
#include "libs/bus/nats.h"
#include "libs/bus/outbox.h"
#include "libs/db/migrations.h"
#include "tests/harness.h"

namespace connecting {
namespace {

TEST(Nats, UrlsAreLoggedWithoutTheirSecrets) {
  EXPECT_EQ(bus::WithoutSecrets("nats://svc:s3cret@nats-0.nats:4222"),
            "nats://svc:REDACTED@nats-0.nats:4222");
  EXPECT_EQ(bus::WithoutSecrets("tls://t0ken@nats:4222,nats://a:b@other:4222,nats://plain:4222"),
            "tls://REDACTED@nats:4222,nats://a:REDACTED@other:4222,nats://plain:4222");
  EXPECT_EQ(bus::WithoutSecrets("127.0.0.1:4222"), "127.0.0.1:4222");
  EXPECT_EQ(bus::WithoutSecrets("u:p@127.0.0.1:4222"), "u:REDACTED@127.0.0.1:4222");
  EXPECT_EQ(bus::WithoutSecrets(""), "");
}

class Bus : public ::testing::Test {
 protected:
  void SetUp() override {
    url_ = testing::NewDatabase();
    nats_url_ = testing::RequiredEnv("CONNECTING_TEST_NATS");
    suffix_ = testing::RandomSuffix();
    stream_ = "BUS_" + suffix_;
    testing::RemoveStreamAfterSuite(stream_);
    prefix_ = "t" + suffix_ + ".connecting.demo";
    auto conn = db::Conn::Open(url_, "t");
    ASSERT_TRUE(conn.ok());
    ASSERT_TRUE(db::Migrate(**conn, {bus::Migrations(),
                                     {"demo",
                                      {{"0001",
                                        "CREATE TABLE effects (event_id text, "
                                        "subject text)"}}}})
                    .ok());
    pool_ = std::make_unique<db::Pool>(url_, 4, "bus-test");
    auto n = bus::Nats::Connect(nats_url_, "bus-test");
    ASSERT_TRUE(n.ok());
    nats_ = *std::move(n);
    for (int i = 0; i < 100 && !nats_->connected(); ++i) absl::SleepFor(absl::Milliseconds(20));
    ASSERT_TRUE(nats_->EnsureStream({.name = stream_, .subjects = {prefix_ + ".>"}}).ok());
  }
  void Emit(int n) {
    bus::Outbox outbox(prefix_, "/connecting/demo");
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE(db::Transact(*pool_, [&](db::Conn& c) {
                    events::v1::ContactRemoved e;
                    e.set_contact_id(absl::StrCat("c", i));
                    return outbox.Emit(c, "contact.removed", e.contact_id(), e, "");
                  }).ok());
    }
  }
  // The stream holding at most `max_msgs` (-1: no limit) and refusing new
  // ones once full (an operator's limit), dropping copies of an event sent
  // again within `duplicate_window`: made anew, or, with `update`, the
  // stream as it is given these limits.
  void LimitStream(int64_t max_msgs, absl::Duration duplicate_window = absl::Minutes(2),
                   bool update = false) {
    if (!update) DeleteStream(/*anew=*/false);
    auto js = nats_->JetStream();
    ASSERT_TRUE(js.ok());
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = stream_.c_str();
    const std::string subjects = prefix_ + ".>";
    const char* list[] = {subjects.c_str()};
    cfg.Subjects = list;
    cfg.SubjectsLen = 1;
    cfg.MaxMsgs = max_msgs;
    cfg.Discard = js_DiscardNew;
    cfg.Duplicates = absl::ToInt64Nanoseconds(duplicate_window);
    ASSERT_EQ(update ? js_UpdateStream(nullptr, js->get(), &cfg, nullptr, nullptr)
                     : js_AddStream(nullptr, js->get(), &cfg, nullptr, nullptr),
              NATS_OK);
  }
  void HeldThrough(const std::function<void()>& begin, const std::function<void()>& end);
  // A full disk, as far as the inbox and dead letters can tell: every
  // insert into them fails with SQLSTATE 53100 while `full`.
  void DiskFull(bool full) {
    auto script = [&](const std::string& sql) {
      return db::WithConnection(*pool_, absl::Now() + absl::Seconds(10),
                                [&](db::Conn& c) { return c.ExecScript(sql); });
    };
    ASSERT_TRUE(script("CREATE TABLE IF NOT EXISTS disk_full (since timestamptz);"
                       "CREATE OR REPLACE FUNCTION no_space() RETURNS trigger LANGUAGE plpgsql "
                       "AS $$ BEGIN IF EXISTS (SELECT 1 FROM disk_full) THEN RAISE EXCEPTION "
                       "'could not extend file: No space left on device' USING ERRCODE = "
                       "'disk_full'; END IF; RETURN NEW; END $$;"
                       "CREATE OR REPLACE TRIGGER no_space BEFORE INSERT ON inbox FOR EACH ROW "
                       "EXECUTE FUNCTION no_space();"
                       "CREATE OR REPLACE TRIGGER no_space BEFORE INSERT ON dead_letters "
                       "FOR EACH ROW EXECUTE FUNCTION no_space();")
                    .ok());
    ASSERT_TRUE(
        script(full ? "INSERT INTO disk_full VALUES (now())" : "DELETE FROM disk_full").ok());
  }
  std::unique_ptr<bus::OutboxRelay> Relay(absl::Duration poll_interval = absl::Milliseconds(250),
                                          absl::Duration linger = bus::RelayOptions().linger) {
    bus::RelayOptions ro;
    ro.poll_interval = poll_interval;
    ro.linger = linger;
    ro.database_url = url_;
    ro.stream = {.name = stream_, .subjects = {prefix_ + ".>"}};
    auto r = std::make_unique<bus::OutboxRelay>(ro, nats_.get());
    r->Start();
    return r;
  }
  // The handler's effect: one row per application of an event.
  static absl::Status RecordEffect(db::Conn& tx, const bus::Delivery& d) {
    return tx.Exec("INSERT INTO effects VALUES ($1, $2)", {d.id, d.subject}).status();
  }
  // RecordEffect, noting each event's delivery count as the handler saw it.
  bus::Handler RecordingDeliveries() {
    return [this](db::Conn& tx, const bus::Delivery& d) {
      {
        std::lock_guard<std::mutex> l(deliveries_mu_);
        deliveries_.push_back(d.deliveries);
      }
      return RecordEffect(tx, d);
    };
  }
  std::vector<uint64_t> Deliveries() {
    std::lock_guard<std::mutex> l(deliveries_mu_);
    return deliveries_;
  }
  int64_t Count(const std::string& sql) {
    int64_t n = -1;
    (void)db::WithConnection(*pool_, absl::InfiniteFuture(), [&](db::Conn& c) {
      auto r = c.Exec(sql);
      if (r.ok()) n = r->Int(0, 0);
      return r.status();
    });
    return n;
  }
  bool WaitFor(const std::string& sql, int64_t want, absl::Duration timeout = absl::Seconds(20)) {
    absl::Time until = absl::Now() + timeout;
    while (absl::Now() < until) {
      if (Count(sql) == want) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }
  bus::ConsumerOptions Opts() {
    bus::ConsumerOptions o;
    o.stream = stream_;
    o.durable = "demo-" + suffix_;
    o.filter_subject = prefix_ + ".>";
    o.fetch_wait = absl::Milliseconds(200);
    o.max_deliver = 3;
    return o;
  }
  // An operator deletes the durable, or the stream (and, with `anew`, makes
  // it again, empty, numbering its events from 1).
  void DeleteDurable(const std::string& durable) {
    auto js = nats_->JetStream();
    ASSERT_TRUE(js.ok());
    ASSERT_EQ(js_DeleteConsumer(js->get(), stream_.c_str(), durable.c_str(), nullptr, nullptr),
              NATS_OK);
  }
  void DeleteStream(bool anew) {
    auto js = nats_->JetStream();
    ASSERT_TRUE(js.ok());
    ASSERT_EQ(js_DeleteStream(js->get(), stream_.c_str(), nullptr, nullptr), NATS_OK);
    if (anew) {
      ASSERT_TRUE(nats_->EnsureStream({.name = stream_, .subjects = {prefix_ + ".>"}}).ok());
    }
  }
  // Publishes a message directly, bypassing the outbox (a duplicate copy with
  // its own Nats-Msg-Id, as a misbehaving producer might).
  void PublishRaw(const std::string& ce_id, const std::string& msg_id, const std::string& data) {
    auto js = nats_->JetStream();
    ASSERT_TRUE(js.ok());
    natsMsg* m = nullptr;
    natsMsg_Create(&m, (prefix_ + ".contact.removed").c_str(), nullptr, data.data(),
                   static_cast<int>(data.size()));
    natsMsgHeader_Set(m, "ce-id", ce_id.c_str());
    natsMsgHeader_Set(m, "Nats-Msg-Id", msg_id.c_str());
    jsPubAck* pa = nullptr;
    ASSERT_EQ(js_PublishMsg(&pa, js->get(), m, nullptr, nullptr), NATS_OK);
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
  }

  std::string url_, nats_url_, suffix_, stream_, prefix_;
  std::unique_ptr<db::Pool> pool_;
  std::unique_ptr<bus::Nats> nats_;
  std::mutex deliveries_mu_;
  std::vector<uint64_t> deliveries_;
};

TEST_F(Bus, RelayPublishesEveryOutboxRowOnce) {
  Emit(300);  // more than one relay batch
  auto relay = Relay();
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM outbox WHERE sent_at IS NULL", 0));
  relay->Stop(absl::Now());
  auto stored = testing::ReadStream(nats_url_, stream_);
  EXPECT_EQ(stored.size(), 300u);
}

// The outbox is empty most of the time, and its statistics say so; a
// backlog builds up faster than they follow (NATS away for a while, a burst
// of bookings). A claim planned for the empty outbox and kept (a prepared
// statement: `seq IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`) ran as a
// nested loop over the outbox that ran the subquery again for each row: it
// claimed the whole backlog as one batch, in time growing with its square
// (50,000 rows: 6 minutes). With autovacuum off on this outbox, its
// statistics stay those of the empty table throughout.
TEST_F(Bus, AClaimOverABacklogBuiltSinceItsLastPlanTakesOneBatchByTheIndex) {
  auto conn = db::Conn::Open(url_, "claim-plans");
  ASSERT_TRUE(conn.ok()) << conn.status();
  db::Conn& c = **conn;
  ASSERT_TRUE(bus::OutboxRelay::SetUpConnection(c).ok());
  for (const char* sql : {"ALTER TABLE outbox SET (autovacuum_enabled = false)",
                          "DELETE FROM outbox", "VACUUM ANALYZE outbox"}) {
    absl::Status s = c.ExecScript(sql);
    ASSERT_TRUE(s.ok()) << sql << ": " << s;
  }
  constexpr int kBatch = 4;
  for (int i = 0; i < 6; ++i) {  // planned for the empty outbox, and kept
    auto rows = bus::OutboxRelay::Claim(c, kBatch);
    ASSERT_TRUE(rows.ok()) << rows.status();
    EXPECT_EQ(rows->rows(), 0);
    ASSERT_TRUE(c.ExecScript("ROLLBACK").ok());
  }
  ASSERT_TRUE(c.ExecScript("INSERT INTO outbox (subject, type, source, payload) "
                           "SELECT 'backlog', 'demo', '/demo', repeat('x', 500) "
                           "FROM generate_series(1, 3000)")
                  .ok());
  auto first = c.Exec("SELECT min(seq) FROM outbox");
  ASSERT_TRUE(first.ok()) << first.status();
  const int64_t oldest = first->Int(0, 0);

  auto rows = bus::OutboxRelay::Claim(c, kBatch);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->rows(), kBatch) << "a batch is the batch size, not the backlog";
  std::set<int64_t> seqs;
  for (int r = 0; r < rows->rows(); ++r) seqs.insert(rows->Int(r, 8));
  EXPECT_EQ(seqs, (std::set<int64_t>{oldest, oldest + 1, oldest + 2, oldest + 3}));
  // The plan the connection keeps for the claim goes down the index on seq:
  // not a scan and sort of every row at each batch.
  auto name = c.Exec("SELECT name FROM pg_prepared_statements WHERE statement = $1",
                     {bus::OutboxRelay::ClaimSql(kBatch)});
  ASSERT_TRUE(name.ok()) << name.status();
  ASSERT_EQ(name->rows(), 1) << "the claim is a prepared statement";
  auto plan = c.Exec(absl::StrCat("EXPLAIN EXECUTE ", name->String(0, 0)));
  ASSERT_TRUE(plan.ok()) << plan.status();
  std::string text;
  for (int r = 0; r < plan->rows(); ++r) absl::StrAppend(&text, plan->String(r, 0), "\n");
  EXPECT_TRUE(absl::StrContains(text, "Index Scan using outbox_pkey")) << text;
  EXPECT_FALSE(absl::StrContains(text, "Seq Scan")) << text;
  ASSERT_TRUE(c.ExecScript("ROLLBACK").ok());
  EXPECT_EQ(Count("SELECT count(*) FROM outbox"), 3000);
}

// The relay reads its lag gauges every couple of seconds. Under load the
// outbox is mostly dead space (rows written and deleted faster than vacuum
// clears them: 75 MB holding no live row, on 2026-12-05), and a count that
// scanned the table read it all each time. The reading goes by the index on
// seq, counts what waits exactly, gaps and all, and ages the oldest by when
// it was written, not by its place in the sequence.
TEST_F(Bus, TheBacklogGaugesReadOnlyTheWaitingRowsHoweverMuchDeadSpaceTheOutboxHolds) {
  auto conn = db::Conn::Open(url_, "backlog-gauges");
  ASSERT_TRUE(conn.ok()) << conn.status();
  db::Conn& c = **conn;
  auto run = [&](const std::string& sql) {
    absl::Status s = c.ExecScript(sql);
    ASSERT_TRUE(s.ok()) << sql << ": " << s;
  };
  run("ALTER TABLE outbox SET (autovacuum_enabled = false)");
  run("DELETE FROM outbox");
  run("INSERT INTO outbox (subject, type, source, payload) "
      "SELECT 'gone', 'demo', '/demo', repeat('x', 500) FROM generate_series(1, 20000)");
  run("DELETE FROM outbox");  // dead space, left there
  run("INSERT INTO outbox (subject, type, source, payload) "
      "SELECT 'waiting', 'demo', '/demo', 'x' FROM generate_series(1, 10)");
  auto ends = c.Exec("SELECT min(seq), max(seq) FROM outbox");
  ASSERT_TRUE(ends.ok()) << ends.status();
  const int64_t lo = ends->Int(0, 0), hi = ends->Int(0, 1);
  ASSERT_EQ(hi - lo, 9);
  // Three published from the middle; the last one written by a transaction
  // that began an hour ago.
  run(absl::StrCat("DELETE FROM outbox WHERE seq BETWEEN ", lo + 3, " AND ", lo + 5));
  run(absl::StrCat("UPDATE outbox SET created_at = now() - interval '1 hour' WHERE seq = ", hi));

  // The reading's scans of the table whole: this backend's count of them
  // not yet reported, before and after.
  auto scans = [&] {
    auto r = c.Exec("SELECT pg_stat_get_xact_numscans('outbox'::regclass)");
    return r.ok() ? r->Int(0, 0) : -1;
  };
  auto read = [&](bus::OutboxRelay::Backlog* out, int64_t* seq_scans) {
    run("BEGIN");
    const int64_t before = scans();
    absl::StatusOr<bus::OutboxRelay::Backlog> b = bus::OutboxRelay::ReadBacklog(c);
    ASSERT_TRUE(b.ok()) << b.status();
    *out = *b;
    *seq_scans = scans() - before;
    run("ROLLBACK");
  };
  bus::OutboxRelay::Backlog b;
  int64_t seq_scans = -1;
  read(&b, &seq_scans);
  EXPECT_EQ(b.pending, 7);
  EXPECT_GE(b.oldest_seconds, 3590);
  EXPECT_LT(b.oldest_seconds, 3700);
  EXPECT_TRUE(b.by_index);
  EXPECT_EQ(seq_scans, 0) << "the reading scanned the outbox whole";

  // Waiting rows far apart in the sequence (after a restore moved it on):
  // still exact, by reading the table whole.
  run(absl::StrCat("SELECT setval('outbox_seq_seq', ", hi + bus::OutboxRelay::kExactSpan, ")"));
  run("INSERT INTO outbox (subject, type, source, payload) VALUES ('far', 'demo', '/demo', 'x')");
  read(&b, &seq_scans);
  EXPECT_EQ(b.pending, 8);
  EXPECT_GE(b.oldest_seconds, 3590);
  EXPECT_FALSE(b.by_index);

  run("DELETE FROM outbox");
  read(&b, &seq_scans);
  EXPECT_EQ(b.pending, 0);
  EXPECT_EQ(b.oldest_seconds, 0);
  EXPECT_TRUE(b.by_index);
  EXPECT_EQ(seq_scans, 0);
}

// As a service does: each commit wakes the relay. Wakes that come while
// one is pending write nothing, so none may be lost in between: with the
// poll an hour away, only the wakes get the events out.
TEST_F(Bus, EveryCommitsEventGoesOutOnItsWakeNotAtTheNextPoll) {
  auto relay = Relay(absl::Hours(1));
  // Its first pass done: now it waits for wakes.
  ASSERT_TRUE(testing::WaitUntil([&] { return relay->healthy(); }, absl::Seconds(20)));
  bus::Outbox outbox(prefix_, "/connecting/demo");
  std::vector<std::thread> writers;
  for (int w = 0; w < 4; ++w) {
    writers.emplace_back([&, w] {
      std::mt19937 rng(w);
      for (int i = 0; i < 60; ++i) {
        ASSERT_TRUE(db::Transact(*pool_, [&](db::Conn& c) {
                      events::v1::ContactRemoved e;
                      e.set_contact_id(absl::StrCat("w", w, "-", i));
                      return outbox.Emit(c, "contact.removed", e.contact_id(), e, "");
                    }).ok());
        relay->Wake();
        // Commits land before, during and after the relay's linger and
        // its batches.
        absl::SleepFor(absl::Microseconds(rng() % 8000));
      }
    });
  }
  for (auto& t : writers) t.join();
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM outbox WHERE sent_at IS NULL", 0));
  relay->Stop(absl::Now());
  EXPECT_EQ(testing::ReadStream(nats_url_, stream_).size(), 240u);
}

// A batch of bookings writes its events in as few statements as it can
// (MergeOutboxRows, a GroupCommitter's Merge): each event is still one row,
// one message, in the order written, and what is not an outbox row stays
// where it was among them.
TEST_F(Bus, EventsMergedIntoOneInsertGoOutEachOnceInTheirOrder) {
  bus::Outbox outbox(prefix_, "/connecting/demo");
  std::vector<db::Statement> statements;
  std::vector<std::string> ids;
  auto event = [&](const std::string& id) {
    events::v1::ContactRemoved e;
    e.set_contact_id(id);
    auto st = outbox.Prepare("contact.removed", id, e, "");
    ASSERT_TRUE(st.ok()) << st.status();
    statements.push_back(*std::move(st));
    ids.push_back(id);
  };
  event("alone");
  statements.push_back({"INSERT INTO effects (event_id, subject) VALUES ($1, 'between')", {"x"}});
  for (int i = 0; i < 3; ++i) event(absl::StrCat("three-", i));
  statements.push_back({"INSERT INTO effects (event_id, subject) VALUES ($1, 'between')", {"y"}});
  for (int i = 0; i < 67; ++i) event(absl::StrCat("many-", i));  // past 64 rows a statement
  const db::Statement single = statements[0];

  bus::MergeOutboxRows(&statements);
  // alone, between, three, between, 64 of the many, the last 3.
  ASSERT_EQ(statements.size(), 6u);
  EXPECT_EQ(statements[0].sql, single.sql) << "a row alone stays as Prepare made it";
  EXPECT_EQ(statements[2].params.size(), 3u * 6);
  EXPECT_EQ(statements[4].params.size(), 64u * 6);
  EXPECT_EQ(statements[5].params.size(), 3u * 6);
  ASSERT_TRUE(db::Transact(*pool_, [&](db::Conn& c) {
                for (const db::Statement& st : statements) {
                  if (auto r = c.Exec(st.sql, st.params); !r.ok()) return r.status();
                }
                return absl::OkStatus();
              }).ok());
  auto effects = [&] {
    std::string out;
    (void)db::WithConnection(*pool_, absl::Now() + absl::Seconds(10), [&](db::Conn& c) {
      auto r = c.Exec("SELECT string_agg(event_id, ',' ORDER BY event_id) FROM effects", {});
      if (r.ok()) out = r->String(0, 0);
      return r.status();
    });
    return out;
  };
  EXPECT_EQ(effects(), "x,y") << "the statements between the rows ran";

  auto relay = Relay();
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM outbox WHERE sent_at IS NULL", 0));
  relay->Stop(absl::Now());
  auto stored = testing::ReadStream(nats_url_, stream_);
  ASSERT_EQ(stored.size(), ids.size());
  std::set<std::string> event_ids;
  for (size_t i = 0; i < stored.size(); ++i) {
    EXPECT_EQ(stored[i].subject, prefix_ + ".contact.removed");
    EXPECT_EQ(stored[i].headers["ce-subject"], ids[i]) << "message " << i << " out of order";
    EXPECT_EQ(stored[i].data, absl::StrCat("{\"contactId\":\"", ids[i], "\"}"));
    event_ids.insert(stored[i].headers["ce-id"]);
  }
  EXPECT_EQ(event_ids.size(), ids.size()) << "each row its own event id";
}

// The linger is for a busy relay: an event after a quiet spell goes out at
// once, and one that follows a publish within the linger waits for company.
// (A linger of 3 s, so that the two cannot be mistaken for each other.)
TEST_F(Bus, AQuietRelayPublishesAtOnceAndABusyOneWaitsForCompany) {
  auto relay = Relay(absl::Hours(1), absl::Seconds(3));
  ASSERT_TRUE(testing::WaitUntil([&] { return relay->healthy(); }, absl::Seconds(20)));
  // Its first pass found nothing: quiet.
  Emit(1);
  relay->Wake();
  EXPECT_TRUE(
      WaitFor("SELECT count(*) FROM outbox WHERE sent_at IS NULL", 0, absl::Milliseconds(1500)))
      << "a lone event waited for company on a quiet relay";
  // Published just now: busy. The next event waits out the linger, and what
  // commits meanwhile goes with it.
  const absl::Time woken = absl::Now();
  Emit(1);
  relay->Wake();
  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(Count("SELECT count(*) FROM outbox WHERE sent_at IS NULL"), 1)
      << "a busy relay published without lingering";
  Emit(2);
  relay->Wake();
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM outbox WHERE sent_at IS NULL", 0));
  EXPECT_GE(absl::Now() - woken, absl::Seconds(2));
  relay->Stop(absl::Now());
  EXPECT_EQ(testing::ReadStream(nats_url_, stream_).size(), 4u);
}

TEST_F(Bus, ARelayWhoseDatabaseFallsSilentConnectsAgainAndPublishesEachEventOnce) {
  // The relay's database stops answering without closing the connection
  // (hung, or the network to it gone): the relay must not wait on it for
  // ever, reporting healthy. It gives up after answer_timeout, says it is
  // unhealthy, and once the database answers again publishes what waited,
  // each event once.
  testing::StallingProxy proxy(testing::PortOf(url_));
  bus::RelayOptions ro;
  ro.database_url = testing::WithPort(url_, proxy.port());
  ro.stream = {.name = stream_, .subjects = {prefix_ + ".>"}};
  ro.answer_timeout = absl::Seconds(1);
  bus::OutboxRelay relay(ro, nats_.get());
  relay.Start();
  Emit(3);
  relay.Wake();
  ASSERT_TRUE(WaitFor("SELECT count(*) FROM outbox WHERE sent_at IS NULL", 0));
  auto healthy_becomes = [&relay](bool want) {
    return testing::WaitUntil([&] { return relay.healthy() == want; }, absl::Seconds(15));
  };
  ASSERT_TRUE(healthy_becomes(true));

  proxy.Stall();
  Emit(4);  // straight to the database, not through the stalled relay's path
  relay.Wake();
  EXPECT_TRUE(healthy_becomes(false)) << "the relay still says healthy, waiting on nothing";
  EXPECT_EQ(Count("SELECT count(*) FROM outbox WHERE sent_at IS NULL"), 4);
  proxy.Resume();
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM outbox WHERE sent_at IS NULL", 0));
  EXPECT_TRUE(healthy_becomes(true));
  relay.Stop(absl::Now());
  auto stored = testing::ReadStream(nats_url_, stream_);
  std::set<std::string> ids;
  for (const auto& e : stored)
    ids.insert(e.headers.count("Nats-Msg-Id") ? e.headers.at("Nats-Msg-Id") : "");
  EXPECT_EQ(stored.size(), 7u);
  EXPECT_EQ(ids.size(), 7u);
}

// connecting_outbox_database_behind_stream as /metrics reports it.
double BehindStream() {
  return testing::InProcessMetric("connecting_outbox_database_behind_stream").value_or(-1);
}

// Waits up to 10 s for the gauge to read `want`; returns what it reads last.
double BehindStreamBecomes(double want) {
  absl::Time until = absl::Now() + absl::Seconds(10);
  while (BehindStream() != want && absl::Now() < until) absl::SleepFor(absl::Milliseconds(50));
  return BehindStream();
}

// The header each relayed event carries: its outbox row number.
std::vector<int64_t> OutboxSeqs(const std::vector<testing::StoredEvent>& events) {
  std::vector<int64_t> out;
  for (const auto& e : events) {
    auto h = e.headers.find("connecting-outbox-seq");
    int64_t n = -1;
    if (h != e.headers.end()) (void)absl::SimpleAtoi(h->second, &n);
    out.push_back(n);
  }
  return out;
}

TEST_F(Bus, RelaySaysSoWhenItsDatabaseIsBehindItsStream) {
  // Events published, then the database goes back in time (its outbox
  // sequence as a restored copy's would be): a relay starting on it reports
  // it before publishing anything; one on a database that did not go back
  // reports nothing. The report stays until the restore is settled, even
  // once newer events (numbered from the restored sequence) end the stream.
  Emit(3);
  auto relay = Relay();
  ASSERT_TRUE(WaitFor("SELECT count(*) FROM outbox", 0));
  relay->Stop(absl::Now());
  EXPECT_EQ(OutboxSeqs(testing::ReadStream(nats_url_, stream_)), (std::vector<int64_t>{1, 2, 3}))
      << "the relay numbers its events";
  relay = Relay();  // a restart: nothing went back
  absl::SleepFor(absl::Milliseconds(500));
  relay->Stop(absl::Now());
  EXPECT_EQ(BehindStream(), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM outbox_restores"), 0);

  ASSERT_EQ(Count("SELECT setval('outbox_seq_seq', 1)"), 1);
  relay = Relay();
  EXPECT_EQ(BehindStreamBecomes(1), 1) << "the relay did not see its database went back";
  EXPECT_EQ(Count("SELECT count(*) FROM outbox_restores WHERE settled_at IS NULL AND "
                  "database_seq = 1 AND stream_seq = 3"),
            1);
  Emit(1);  // and it goes on publishing
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM outbox", 0));
  relay->Stop(absl::Now());
  EXPECT_EQ(OutboxSeqs(testing::ReadStream(nats_url_, stream_)),
            (std::vector<int64_t>{1, 2, 3, 2}));

  // Another replica starting now finds the stream ending in event 2, which
  // its database has: only the recorded restore can tell it (with it
  // settled, it reports nothing).
  ASSERT_EQ(Count("WITH u AS (UPDATE outbox_restores SET settled_at = now() RETURNING 1) "
                  "SELECT count(*) FROM u"),
            1);
  relay = Relay();
  EXPECT_EQ(BehindStreamBecomes(0), 0);
  relay->Stop(absl::Now());
  ASSERT_EQ(Count("WITH u AS (UPDATE outbox_restores SET settled_at = NULL RETURNING 1) "
                  "SELECT count(*) FROM u"),
            1);
  relay = Relay();
  EXPECT_EQ(BehindStreamBecomes(1), 1) << "the recorded restore was forgotten";
  relay->Stop(absl::Now());

  // --republish --after-restore: the sequence goes past the stream's (what
  // the restore recorded), then the restore is settled.
  ASSERT_TRUE(bus::AdvanceOutboxPastStream(*pool_, *nats_, stream_, absl::Seconds(10)).ok());
  EXPECT_EQ(Count("SELECT last_value FROM outbox_seq_seq"), 3);
  auto settled = bus::SettleRestores(*pool_);
  ASSERT_TRUE(settled.ok());
  EXPECT_EQ(*settled, 1);
  Emit(1);
  relay = Relay();
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM outbox", 0));
  EXPECT_EQ(BehindStreamBecomes(0), 0) << "a settled restore still reported";
  relay->Stop(absl::Now());
  EXPECT_EQ(OutboxSeqs(testing::ReadStream(nats_url_, stream_)),
            (std::vector<int64_t>{1, 2, 3, 2, 4}));
  EXPECT_EQ(Count("SELECT count(*) FROM outbox_restores WHERE settled_at IS NULL"), 0);
}

TEST_F(Bus, RelayFindsARestoreUnderItAsItConnectsAgain) {
  // The database goes back in time under a running relay (a restore drops
  // every connection). The relay looks again as it reconnects, before
  // publishing, and compares with what it published itself: the stream's
  // last event may already be one numbered from the restored sequence (by
  // another replica), and would tell nothing.
  Emit(3);
  auto relay = Relay();
  ASSERT_TRUE(WaitFor("SELECT count(*) FROM outbox", 0));
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(BehindStream(), 0);
  ASSERT_EQ(Count("SELECT setval('outbox_seq_seq', 1)"), 1);
  // Another replica's event, numbered from the restored sequence, ends the stream.
  {
    auto js = nats_->JetStream();
    ASSERT_TRUE(js.ok());
    natsMsg* m = nullptr;
    ASSERT_EQ(natsMsg_Create(&m, (prefix_ + ".contact.removed").c_str(), nullptr, "{}", 2),
              NATS_OK);
    natsMsgHeader_Set(m, "Nats-Msg-Id", "other-replica");
    natsMsgHeader_Set(m, "connecting-outbox-seq", "1");
    jsPubAck* pa = nullptr;
    ASSERT_EQ(js_PublishMsg(&pa, js->get(), m, nullptr, nullptr), NATS_OK);
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
  }
  // A replica that had published less recorded the restore first.
  ASSERT_EQ(Count("WITH i AS (INSERT INTO outbox_restores (database_seq, stream_seq) "
                  "VALUES (1, 2) RETURNING 1) SELECT count(*) FROM i"),
            1);
  ASSERT_EQ(Count("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                  "WHERE application_name = 'outbox-relay' AND datname = current_database()"),
            1);
  Emit(1);
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM outbox", 0));
  EXPECT_EQ(BehindStreamBecomes(1), 1) << "the relay did not see its database went back under it";
  // The record now holds the highest this relay published, which
  // --after-restore numbers the events past.
  for (absl::Time until = absl::Now() + absl::Seconds(10);
       Count("SELECT max(stream_seq) FROM outbox_restores") != 3 && absl::Now() < until;) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(Count("SELECT count(*) FROM outbox_restores WHERE settled_at IS NULL AND "
                  "stream_seq = 3"),
            1);
  EXPECT_EQ(Count("SELECT count(*) FROM outbox_restores"), 1);
  relay->Stop(absl::Now());
}

TEST_F(Bus, RelayMakesItsStreamAgainIfItIsDeleted) {
  // An operator deletes the stream under a running service: its events wait
  // in the outbox, the relay creates the stream again and publishes them,
  // as a restart would have, instead of failing until one.
  Emit(5);
  auto relay = Relay();
  ASSERT_TRUE(WaitFor("SELECT count(*) FROM outbox", 0));
  DeleteStream(/*anew=*/false);
  Emit(3);
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM outbox", 0));
  relay->Stop(absl::Now());
  EXPECT_EQ(testing::ReadStream(nats_url_, stream_).size(), 3u);
}

// connecting_outbox_publish_failures_total as /metrics reports it.
double PublishFailures() {
  return testing::InProcessMetric("connecting_outbox_publish_failures_total").value_or(-1);
}

TEST_F(Bus, AStreamThatRefusesEventsIsNamedInTheLogOnceAndTheEventsWait) {
  // An operator's limit (here 2 messages, refusing new ones once full)
  // makes JetStream refuse every event after it, again at every try. The
  // relay says so at warn, once in 10 s however many are refused (the next
  // line counts them), and keeps the refused events in the outbox (the 2 the
  // stream took leave it).
  LimitStream(2);
  Emit(20);
  ::testing::internal::CaptureStdout();
  auto relay = Relay();
  absl::SleepFor(absl::Seconds(3));  // a dozen tries, each refused again
  relay->Stop(absl::Now());
  const std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(Count("SELECT count(*) FROM outbox"), 18) << "a refused event left the outbox";
  EXPECT_EQ(testing::ReadStream(nats_url_, stream_).size(), 2u);
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    if (absl::StrContains(line, "\"msg\":\"outbox publish rejected\"")) lines.emplace_back(line);
  }
  ASSERT_EQ(lines.size(), 1u) << out;
  EXPECT_TRUE(absl::StrContains(lines[0], "\"level\":\"warn\"")) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[0], "maximum messages exceeded")) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[0], prefix_ + ".contact.removed")) << lines[0];
}

TEST_F(Bus, ARefusedBatchIsTriedAgainLessAndLessOftenNotAtEveryCommit) {
  // Under load every commit wakes the relay. While JetStream refuses the
  // batch, a try at each wake would claim and send it again hundreds of
  // times a second; the relay waits instead, longer after each refusal (250
  // ms, 500 ms, 1 s, then every 2 s), and publishes everything soon after
  // the stream takes events again. The events the stream took before the
  // refusals left the outbox: the refusal outlasts the stream's duplicate
  // window (1 s here, 2 minutes by default), so sent again they would be
  // stored twice.
  LimitStream(2, absl::Seconds(1));
  Emit(20);
  const double failures_before = PublishFailures();
  auto relay = Relay();
  const absl::Time end = absl::Now() + absl::Seconds(3);
  while (absl::Now() < end) {  // a busy service's commits
    relay->Wake();
    absl::SleepFor(absl::Milliseconds(2));
  }
  // Tries in 3 s: at 0, 0.25, 0.75, 1.75 and 3.75 s. A try each wake would be
  // a hundred or more; one every poll interval, a dozen.
  const double tries = (PublishFailures() - failures_before) / 18;
  EXPECT_GE(tries, 2) << "the relay stopped trying";
  EXPECT_LE(tries, 5) << "the relay tried a refused batch again at every wake";
  EXPECT_EQ(Count("SELECT count(*) FROM outbox"), 18)
      << "a refused event left the outbox, or one the stream took stayed";
  // The operator raises the limit: the events go out at the next try (2 s at most).
  LimitStream(-1, absl::Seconds(1), /*update=*/true);
  const absl::Time raised = absl::Now();
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM outbox", 0));
  EXPECT_LT(absl::Now() - raised, absl::Seconds(5)) << "the events waited past the longest retry";
  relay->Stop(absl::Now());
  const std::vector<testing::StoredEvent> stored = testing::ReadStream(nats_url_, stream_);
  EXPECT_EQ(stored.size(), 20u) << "an event is in the stream twice, or missing";
  EXPECT_EQ(OutboxSeqs(stored), [] {
    std::vector<int64_t> seqs(20);
    for (int i = 0; i < 20; ++i) seqs[i] = i + 1;
    return seqs;
  }()) << "the events are not in the order they were committed";
}

TEST_F(Bus, ConsumerMakesItsDurableAgainIfItIsDeleted) {
  // An operator removes the durable consumer (or the whole stream) under a
  // running service: it subscribes again, and the new durable's replay from
  // the start applies nothing twice (the inbox).
  auto handler = &Bus::RecordEffect;
  bus::ConsumerOptions o = Opts();
  bus::Consumer c(o, pool_.get(), nats_.get(), handler);
  c.Start();
  PublishRaw("before", "before", "{}");
  ASSERT_TRUE(WaitFor("SELECT count(*) FROM effects", 1));
  DeleteDurable(o.durable);
  PublishRaw("after-consumer-deleted", "after-consumer-deleted", "{}");
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM effects", 2));
  DeleteStream(/*anew=*/true);
  PublishRaw("after-stream-deleted", "after-stream-deleted", "{}");
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM effects", 3));
  c.Stop();
  EXPECT_EQ(Count("SELECT count(DISTINCT event_id) FROM effects"), 3);
}

TEST_F(Bus, ConnectionClosedForRefusedCredentialsIsReplacedAndRelayAndConsumerCarryOn) {
  // A NATS server in operator mode takes the credentials; restarted with an
  // operator that does not know them (as if the account were revoked while
  // it was down), it refuses them, and the client library closes the
  // connection for good. The connection is replaced, again and again; once
  // the server takes the credentials back, the relay and the consumer,
  // whose JetStream context and subscription belonged to the closed
  // connection, make them again on the new one: every event emitted before,
  // during and after is applied once.
  const std::string tmp = testing::RequiredEnv("CONNECTING_TEST_TMP");
  const std::string ours = absl::StrCat(tmp, "/bus-ours-", suffix_);
  const std::string other = absl::StrCat(tmp, "/bus-other-", suffix_);
  const int port = testing::FreePort();
  const std::vector<std::string> our_server = testing::NatsOperator(ours, port);
  const std::vector<std::string> other_server = testing::NatsOperator(other, port);
  ASSERT_FALSE(our_server.empty() || other_server.empty());
  auto server = testing::StartNats(our_server, ours, port);
  bus::NatsSecurity creds;
  creds.creds_file = ours + "/service.creds";
  auto n = bus::Nats::Connect(absl::StrCat("nats://127.0.0.1:", port), "bus-test", creds);
  ASSERT_TRUE(n.ok()) << n.status();
  nats_ = *std::move(n);
  auto relay = Relay();
  bus::Consumer c(Opts(), pool_.get(), nats_.get(), &Bus::RecordEffect);
  c.Start();
  Emit(5);
  ASSERT_TRUE(WaitFor("SELECT count(*) FROM effects", 5));
  EXPECT_EQ(nats_->generation(), 0u);

  server.reset();  // killed: the library reconnects, and is refused
  server = testing::StartNats(other_server, other, port);
  ASSERT_TRUE(testing::WaitUntil([&] { return nats_->generation() >= 2; }, absl::Seconds(20)))
      << "the closed connection was not replaced (twice)";
  Emit(5);  // kept in the outbox meanwhile
  EXPECT_FALSE(WaitFor("SELECT count(*) FROM outbox", 0, absl::Milliseconds(500)));

  server.reset();
  server = testing::StartNats(our_server, ours, port);  // its JetStream store as it was
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM outbox", 0, absl::Seconds(30)))
      << "the relay did not publish on the new connection";
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM effects", 10, absl::Seconds(30)))
      << "the consumer did not fetch on the new connection";
  Emit(5);
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM effects", 15));
  EXPECT_TRUE(nats_->connected());
  c.Stop();
  relay->Stop(absl::Now());
  EXPECT_EQ(Count("SELECT count(DISTINCT event_id) FROM effects"), 15);
  EXPECT_EQ(Count("SELECT count(*) FROM effects"), 15) << "an event applied twice";
}

TEST_F(Bus, ConsumerPrunesItsInboxAndReplaysStillApplyNothingTwice) {
  // Once acknowledged, events need no inbox row: the mark (the durable's ack
  // floor, recorded) stands for them. A replay from the start applies none
  // of them again; a stream made anew, whose numbers start from 1 again, has
  // all its events applied; and a database restored to a point before the
  // last prune replays what it lost.
  auto handler = &Bus::RecordEffect;
  bus::ConsumerOptions o = Opts();
  o.check_every = absl::Milliseconds(200);
  o.prune_every = absl::Milliseconds(100);
  o.inbox_keep = absl::ZeroDuration();
  bus::Consumer c(o, pool_.get(), nats_.get(), handler);
  c.Start();
  for (int i = 1; i <= 5; ++i) PublishRaw(absl::StrCat("e", i), absl::StrCat("e", i), "{}");
  ASSERT_TRUE(WaitFor("SELECT count(*) FROM effects", 5));
  const std::string mark =
      "SELECT coalesce((SELECT through_seq FROM inbox_pruned WHERE consumer = '" + o.durable +
      "'), 0)";
  ASSERT_TRUE(WaitFor(mark, 5)) << "the mark is " << Count(mark);
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM inbox", 0)) << "rows below the mark stay";
  // A backlog (the first prune after an upgrade) goes too, a batch at a time.
  ASSERT_TRUE(db::Transact(*pool_, [&](db::Conn& tx) {
                return tx
                    .Exec(
                        "INSERT INTO inbox (consumer, event_id, subject, stream_seq, "
                        "received_at) SELECT $1, 'old-' || g, 'old', 1 + g % 5, "
                        "now() - interval '1 day' FROM generate_series(1, 12000) g",
                        {o.durable})
                    .status();
              }).ok());
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM inbox", 0)) << "a backlog below the mark stays";

  // The durable deleted: made again, it replays 1–5 from the start.
  DeleteDurable(o.durable);
  PublishRaw("e6", "e6", "{}");
  ASSERT_TRUE(WaitFor("SELECT count(*) FROM effects WHERE event_id = 'e6'", 1));
  absl::SleepFor(absl::Seconds(1));  // anything replayed twice would be in by now
  EXPECT_EQ(Count("SELECT count(*) FROM effects"), 6);

  // Restored to a point where only e1 and e2 had applied (and been pruned):
  // the database is behind the durable, which replays; e3–e6 apply again.
  ASSERT_TRUE(WaitFor(mark, 6));
  ASSERT_TRUE(db::Transact(*pool_, [&](db::Conn& tx) {
                return tx.ExecScript(
                    "DELETE FROM effects WHERE event_id NOT IN ('e1', 'e2');"
                    "DELETE FROM inbox;"
                    "UPDATE inbox_pruned SET through_seq = 2;");
              }).ok());
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM effects", 6, absl::Seconds(15)));
  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(Count("SELECT count(*) FROM effects"), 6);
  EXPECT_EQ(Count("SELECT count(DISTINCT event_id) FROM effects"), 6);

  // The stream made anew: its events are numbered from 1, below the mark of
  // the old one, and every one applies.
  DeleteStream(/*anew=*/true);
  PublishRaw("new-1", "new-1", "{}");
  PublishRaw("new-2", "new-2", "{}");
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM effects WHERE event_id LIKE 'new-%'", 2));
  c.Stop();
  EXPECT_EQ(Count("SELECT count(*) FROM effects"), 8);
  EXPECT_EQ(Count("SELECT count(DISTINCT event_id) FROM effects"), 8);
}

TEST_F(Bus, ConsumerReplaysWhatARestoredDatabaseLost) {
  // The service's database goes back to an earlier point under a running
  // consumer (a restore): the durable on the server has acknowledged events
  // the database no longer has. The consumer notices within seconds and
  // replays the stream; what the database still has applies nothing twice.
  auto handler = &Bus::RecordEffect;
  bus::Consumer c(Opts(), pool_.get(), nats_.get(), handler);
  c.Start();
  for (const char* id : {"first", "second", "third"}) PublishRaw(id, id, "{}");
  ASSERT_TRUE(WaitFor("SELECT count(*) FROM effects", 3));
  ASSERT_EQ(Count("SELECT count(*) FROM inbox WHERE stream_seq IS NOT NULL"), 3);
  ASSERT_TRUE(db::Transact(*pool_, [](db::Conn& tx) {
                return tx.ExecScript(
                    "DELETE FROM effects WHERE event_id <> 'first';"
                    "DELETE FROM inbox WHERE event_id <> 'first'");
              }).ok());
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM effects", 3, absl::Seconds(15)));
  PublishRaw("fourth", "fourth", "{}");
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM effects", 4));
  c.Stop();
  EXPECT_EQ(Count("SELECT count(DISTINCT event_id) FROM effects"), 4);
}

TEST_F(Bus, AReplicaOfAnEarlierReleaseIsNotTakenForARestore) {
  // During a rolling update a replica of the release before the inbox kept
  // stream places still consumes: it records events without their place and
  // acknowledges them, so the ack floor passes what the database records.
  // That must not restart the durable (it would replay the stream again and
  // again while the old replica runs).
  auto handler = &Bus::RecordEffect;
  bus::ConsumerOptions o = Opts();
  {
    bus::Consumer c(o, pool_.get(), nats_.get(), handler);
    c.Start();
    PublishRaw("first", "first", "{}");
    ASSERT_TRUE(WaitFor("SELECT count(*) FROM effects", 1));
    c.Stop();
  }
  PublishRaw("second", "second", "{}");
  {  // the earlier release's replica
    auto js = nats_->JetStream();
    ASSERT_TRUE(js.ok());
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = stream_.c_str();
    so.Consumer = o.durable.c_str();
    natsSubscription* sub = nullptr;
    ASSERT_EQ(js_PullSubscribe(&sub, js->get(), o.filter_subject.c_str(), o.durable.c_str(),
                               nullptr, &so, nullptr),
              NATS_OK);
    natsMsgList list{};
    ASSERT_EQ(natsSubscription_Fetch(&list, sub, 1, 5000, nullptr), NATS_OK);
    ASSERT_EQ(list.Count, 1);
    ASSERT_TRUE(db::Transact(*pool_, [&](db::Conn& tx) {
                  return tx.ExecScript(absl::StrCat(
                      "INSERT INTO inbox (consumer, event_id, subject) VALUES ('", o.durable,
                      "', 'second', 'old'); INSERT INTO effects VALUES ('second', 'old')"));
                }).ok());
    ASSERT_EQ(natsMsg_AckSync(list.Msgs[0], nullptr, nullptr), NATS_OK);
    natsMsgList_Destroy(&list);
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
  }
  bus::Consumer c(o, pool_.get(), nats_.get(), handler);
  c.Start();
  for (int i = 0; i < 100 && !c.healthy(); ++i) absl::SleepFor(absl::Milliseconds(50));
  ASSERT_TRUE(c.healthy());
  absl::SleepFor(absl::Seconds(1));
  c.Stop();
  // A replay would have met "second" again and recorded its place.
  EXPECT_EQ(Count("SELECT count(*) FROM inbox WHERE event_id = 'second' AND stream_seq IS NULL"),
            1);
  EXPECT_EQ(Count("SELECT count(*) FROM effects"), 2);
}

TEST_F(Bus, ConsumerAppliesEachEventOnceAcrossRetriesDuplicatesAndReplicas) {
  Emit(50);
  auto relay = Relay();
  std::atomic<int> failures_left{5};
  auto handler = [&](db::Conn& tx, const bus::Delivery& d) -> absl::Status {
    if (failures_left.fetch_sub(1) > 0) return absl::UnavailableError("transient");
    return RecordEffect(tx, d);
  };
  // Two replicas share the durable consumer.
  bus::Consumer a(Opts(), pool_.get(), nats_.get(), handler);
  bus::Consumer b(Opts(), pool_.get(), nats_.get(), handler);
  a.Start();
  b.Start();
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM effects", 50));
  // A second copy of an applied event (same ce-id) changes nothing.
  std::string some_id = testing::ReadStream(nats_url_, stream_)[0].headers.at("ce-id");
  PublishRaw(some_id, "other-msg-id", "{}");
  EXPECT_TRUE(
      WaitFor(absl::StrCat("SELECT count(*) FROM inbox WHERE event_id = '", some_id, "'"), 1));
  absl::SleepFor(absl::Milliseconds(800));
  EXPECT_EQ(Count("SELECT count(*) FROM effects"), 50);
  EXPECT_EQ(Count("SELECT count(DISTINCT event_id) FROM effects"), 50);
  a.Stop();
  b.Stop();
  relay->Stop(absl::Now());
}

TEST_F(Bus, AFetchAppliesInOneTransactionAndAFailureHoldsBackNoOther) {
  // A backlog (a new consumer replaying a stream) applies a fetch of events
  // per transaction, not one each: one commit's flush for up to 64.
  ASSERT_TRUE(db::WithConnection(*pool_, absl::InfiniteFuture(), [](db::Conn& c) {
                return c.ExecScript("CREATE TABLE applied_in (event_id text, txid bigint)");
              }).ok());
  auto handler = [](db::Conn& tx, const bus::Delivery& d) -> absl::Status {
    if (d.payload == "poison") {
      // With a payload, as the services' statuses carry their error details.
      absl::Status refused = absl::InvalidArgumentError("cannot parse");
      refused.SetPayload("type.googleapis.com/google.rpc.ErrorInfo", absl::Cord("\n\x02\x01X"));
      return refused;
    }
    return tx.Exec("INSERT INTO applied_in VALUES ($1, txid_current())", {d.id}).status();
  };
  Emit(256);
  auto relay = Relay();
  ASSERT_EQ(testing::WaitForEvents(nats_url_, stream_, 256).size(), 256u);
  bus::Consumer c(Opts(), pool_.get(), nats_.get(), handler);
  c.Start();
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM applied_in", 256));
  EXPECT_LE(Count("SELECT count(DISTINCT txid) FROM applied_in"), 16)
      << "one transaction per fetch";

  // One event of a fetch fails: the others apply once each, in spite of it,
  // and it alone is dead-lettered.
  c.Stop();
  PublishRaw("before-1", "before-1", "{}");
  PublishRaw("poisoned", "poisoned", "poison");
  PublishRaw("after-1", "after-1", "{}");
  PublishRaw("after-2", "after-2", "{}");
  bus::Consumer again(Opts(), pool_.get(), nats_.get(), handler);
  again.Start();
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM applied_in", 259));
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM dead_letters WHERE event_id = 'poisoned'", 1));
  // Its error as people read it, without the payload's bytes.
  EXPECT_EQ(Count("SELECT count(*) FROM dead_letters WHERE event_id = 'poisoned' "
                  "AND error = 'INVALID_ARGUMENT: cannot parse'"),
            1);
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(Count("SELECT count(*) FROM applied_in"), 259);
  EXPECT_EQ(Count("SELECT count(DISTINCT event_id) FROM applied_in"), 259);
  EXPECT_EQ(Count("SELECT count(*) FROM applied_in WHERE event_id = 'poisoned'"), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM inbox"), 260);
  again.Stop();
  relay->Stop(absl::Now());
}

TEST_F(Bus, UnreadableEventsAreDeadLetteredNotRetriedForever) {
  auto handler = [&](db::Conn& tx, const bus::Delivery& d) -> absl::Status {
    if (d.payload == "poison") return absl::InvalidArgumentError("cannot parse");
    if (d.payload == "flaky") return absl::UnavailableError("always down");
    return RecordEffect(tx, d);
  };
  bus::Consumer c(Opts(), pool_.get(), nats_.get(), handler);
  c.Start();
  PublishRaw("poison-1", "poison-1", "poison");
  PublishRaw("flaky-1", "flaky-1", "flaky");
  PublishRaw("good-1", "good-1", "{}");
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM effects", 1));
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM dead_letters", 2, absl::Seconds(30)));
  c.Stop();
}

TEST_F(Bus, DeadLettersReplayOnceTheirCauseIsFixed) {
  // A handler that cannot yet read these events dead-letters them; replayed
  // while it still cannot, they stay (error and deliveries updated); replayed
  // after the fix, each applies once and leaves dead_letters, and neither a
  // second replay nor the consumer applies it again.
  std::atomic<bool> fixed{false};
  auto handler = [&](db::Conn& tx, const bus::Delivery& d) -> absl::Status {
    if (!fixed.load()) return absl::InvalidArgumentError("unknown field \"grade\"");
    return RecordEffect(tx, d);
  };
  bus::Consumer c(Opts(), pool_.get(), nats_.get(), handler);
  c.Start();
  for (int i = 0; i < 3; ++i) {
    std::string id = absl::StrCat("new-", i);
    PublishRaw(id, id, absl::StrCat("{\"grade\": ", i, "}"));
  }
  ASSERT_TRUE(WaitFor("SELECT count(*) FROM dead_letters", 3));
  c.Stop();

  absl::StatusOr<bus::ReplayReport> r = c.ReplayDeadLetters();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->replayed, 0);
  EXPECT_EQ(r->failing, 3);
  EXPECT_EQ(Count("SELECT count(*) FROM dead_letters WHERE deliveries = 2 "
                  "AND error LIKE '%unknown field%'"),
            3);
  EXPECT_EQ(Count("SELECT count(*) FROM effects"), 0);

  fixed = true;
  r = c.ReplayDeadLetters();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->replayed, 3);
  EXPECT_EQ(r->failing, 0);
  EXPECT_EQ(Count("SELECT count(*) FROM dead_letters"), 0);
  EXPECT_EQ(Count("SELECT count(DISTINCT event_id) FROM effects WHERE event_id LIKE 'new-%'"), 3);
  EXPECT_EQ(Count("SELECT count(*) FROM inbox WHERE event_id LIKE 'new-%'"), 3);

  r = c.ReplayDeadLetters();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->replayed, 0);
  bus::Consumer again(Opts(), pool_.get(), nats_.get(), handler);
  again.Start();
  PublishRaw("new-0", "new-0-copy", "{\"grade\": 0}");  // a late copy of one of them
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM inbox WHERE event_id = 'new-0'", 1));
  absl::SleepFor(absl::Milliseconds(500));
  again.Stop();
  EXPECT_EQ(Count("SELECT count(*) FROM effects"), 3);
}

TEST_F(Bus, AReplayWhoseDatabaseStopsAnsweringEndsWithinItsStepLimitKeepingItsDeadLetters) {
  // `--replay-dead-letters` against a database that stops answering half way
  // (hung, or its host gone, closing nothing) ends with an error a few
  // seconds after its step limit instead of waiting for ever. The dead letter
  // it was on is kept as it was, not counted as refused again; once the
  // database answers, a new replay applies the rest, each once.
  std::atomic<bool> fixed{false};
  std::atomic<int> calls{0};
  testing::StallingProxy proxy(testing::PortOf(url_));
  auto handler = [&](db::Conn& tx, const bus::Delivery& d) -> absl::Status {
    if (!fixed.load()) return absl::InvalidArgumentError("unknown field \"grade\"");
    if (calls++ == 1) proxy.Stall();  // the second one meets a silent database
    return RecordEffect(tx, d);
  };
  {
    bus::Consumer c(Opts(), pool_.get(), nats_.get(), handler);
    c.Start();
    for (int i = 0; i < 3; ++i) {
      std::string id = absl::StrCat("late-", i);
      PublishRaw(id, id, "{}");
    }
    ASSERT_TRUE(WaitFor("SELECT count(*) FROM dead_letters WHERE deliveries = 1", 3));
    c.Stop();
  }
  fixed = true;
  auto through =
      std::make_unique<db::Pool>(testing::WithPort(url_, proxy.port()), 2, "bus-test-replay");
  bus::Consumer replayer(Opts(), through.get(), nats_.get(), handler);
  const absl::Time start = absl::Now();
  auto replay =
      std::async(std::launch::async, [&] { return replayer.ReplayDeadLetters(absl::Seconds(1)); });
  // Declared after the future, so it runs first: a replay still waiting
  // is let go, and the future's destructor does not hang the test.
  absl::Cleanup let_go = [&proxy] { proxy.Resume(); };
  ASSERT_EQ(replay.wait_for(std::chrono::seconds(20)), std::future_status::ready)
      << "the replay still waits on a database that stopped answering";
  absl::StatusOr<bus::ReplayReport> r = replay.get();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(r.status()) || absl::IsUnavailable(r.status()))
      << r.status();

  proxy.Resume();
  through.reset();  // its connections closed, so PostgreSQL rolls the stalled one back
  ASSERT_TRUE(WaitFor(
      "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bus-test-replay'", 0));
  EXPECT_EQ(Count("SELECT count(*) FROM effects"), 1);
  EXPECT_EQ(Count("SELECT count(*) FROM dead_letters WHERE deliveries = 1 "
                  "AND error LIKE '%unknown field%'"),
            2)
      << "the dead letter in hand was changed";
  r = bus::Consumer(Opts(), pool_.get(), nats_.get(), handler).ReplayDeadLetters();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->replayed, 2);
  EXPECT_EQ(r->failing, 0);
  EXPECT_EQ(Count("SELECT count(*) FROM dead_letters"), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM effects"), 3);
  EXPECT_EQ(Count("SELECT count(DISTINCT event_id) FROM effects"), 3);
}

// Runs a consumer (3 deliveries at most, acks awaited 2 s) through the
// database's trouble: begun once a first event applied, ended 10 s after
// three more were published, longer than their three deliveries' backoff
// and the ack wait. That is not the events' fault: none may be
// dead-lettered, nor dropped by the server once its deliveries run out, nor
// spend a delivery; each applies once afterwards.
void Bus::HeldThrough(const std::function<void()>& begin, const std::function<void()>& end) {
  auto handler = RecordingDeliveries();
  bus::ConsumerOptions o = Opts();
  o.ack_wait = absl::Seconds(2);
  bus::Consumer c(o, pool_.get(), nats_.get(), handler);
  c.Start();
  PublishRaw("warm-up", "warm-up", "{}");
  ASSERT_TRUE(WaitFor("SELECT count(*) FROM effects", 1));
  begin();
  for (int i = 0; i < 3; ++i) {
    std::string id = absl::StrCat("in-trouble-", i);
    PublishRaw(id, id, "{}");
  }
  absl::SleepFor(absl::Seconds(10));
  end();
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM effects WHERE event_id LIKE 'in-trouble-%'", 3));
  absl::SleepFor(absl::Milliseconds(500));
  c.Stop();
  EXPECT_EQ(Count("SELECT count(*) FROM effects"), 4);
  EXPECT_EQ(Count("SELECT count(*) FROM dead_letters"), 0);
  EXPECT_EQ(Deliveries(), std::vector<uint64_t>(4, 1)) << "the trouble used up deliveries";
}

TEST_F(Bus, DatabaseOutageHoldsEventsWithoutUsingUpTheirDeliveries) {
  // While the service's database is unreachable no event can take effect.
  std::unique_ptr<testing::DatabaseOutage> outage;
  HeldThrough([&] { outage = std::make_unique<testing::DatabaseOutage>(url_); },
              [&] { outage.reset(); });
}

TEST_F(Bus, ADatabaseTakingNoWritesHoldsEventsWithoutUsingUpTheirDeliveries) {
  // After a failover the consumer's connections can land on a standby,
  // which answers but refuses every write. Here the database is set
  // read-only and its connections ended.
  auto admin = db::Conn::Open(url_, "admin");  // opened while writes are taken
  ASSERT_TRUE(admin.ok());
  auto read_only = [&](bool on) {
    return (*admin)->ExecScript(absl::StrCat(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I ",
        on ? "SET default_transaction_read_only = on" : "RESET default_transaction_read_only",
        "', current_database()); END $$"));
  };
  absl::Cleanup writable = [&] { (void)read_only(false); };
  HeldThrough(
      [&] {
        ASSERT_TRUE(read_only(true).ok());
        ASSERT_TRUE((*admin)
                        ->ExecScript("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                                     "datname = current_database() AND pid <> pg_backend_pid()")
                        .ok());
      },
      [&] { ASSERT_TRUE(read_only(false).ok()); });
}

TEST_F(Bus, ADatabaseOutOfDiskHoldsEventsWithoutUsingUpTheirDeliveries) {
  // A full disk: the database answers, and says it takes writes, yet every
  // insert fails (SQLSTATE 53100, as when PostgreSQL cannot extend a file).
  // Not the events' fault: they must outlast it, as they do an outage.
  HeldThrough([&] { DiskFull(true); }, [&] { DiskFull(false); });
}

TEST_F(Bus, StopsWhileTheDatabaseIsInTroubleDoNotCountAgainstAnEvent) {
  // A start of handling an event delivered again is counted, so that an
  // event which crashes the service is dead-lettered after three. A
  // consumer stopped while it holds such an event (a rolling restart while
  // the disk is full) hands it back, which is an answer: five such stops
  // must not get a good event dead-lettered.
  bus::ConsumerOptions o = Opts();
  auto js = nats_->JetStream();
  ASSERT_TRUE(js.ok());
  auto delivered = [&] {
    jsConsumerInfo* ci = nullptr;
    if (js_GetConsumerInfo(&ci, js->get(), stream_.c_str(), o.durable.c_str(), nullptr, nullptr) !=
        NATS_OK) {
      return int64_t{-1};
    }
    const auto n = static_cast<int64_t>(ci->Delivered.Consumer);
    jsConsumerInfo_Destroy(ci);
    return n;
  };
  DiskFull(true);
  PublishRaw("held-and-stopped", "held-and-stopped", "{}");
  for (int i = 0; i < 5; ++i) {
    bus::Consumer c(o, pool_.get(), nats_.get(), &Bus::RecordEffect);
    c.Start();
    ASSERT_TRUE(testing::WaitUntil([&] { return delivered() == i + 1; }, absl::Seconds(10)))
        << "delivery " << i + 1 << " never came";
    // Held: the consumer says it is not healthy once it holds the event.
    ASSERT_TRUE(testing::WaitUntil([&] { return !c.healthy(); }, absl::Seconds(10)));
    c.Stop();
  }
  DiskFull(false);
  bus::Consumer c(o, pool_.get(), nats_.get(), &Bus::RecordEffect);
  c.Start();
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM effects WHERE event_id = 'held-and-stopped'", 1));
  c.Stop();
  EXPECT_EQ(Count("SELECT count(*) FROM dead_letters"), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM consumer_unanswered"), 0);
}

TEST_F(Bus, AnEventThatIsNotTextIsDeadLetteredNotDropped) {
  // An event whose bytes PostgreSQL cannot keep as text: an id, or a
  // payload, that is not UTF-8 (a foreign or broken producer). It fails, and
  // once its deliveries are spent it must still reach the dead letters
  // rather than be dropped by the server, and hold nothing up behind it.
  auto handler = [](db::Conn& tx, const bus::Delivery& d) -> absl::Status {
    absl::Status s = RecordEffect(tx, d);
    if (!s.ok()) return s;
    return tx.Exec("SELECT $1::text", {d.payload}).status();  // fails on bytes not UTF-8
  };
  bus::Consumer c(Opts(), pool_.get(), nats_.get(), handler);
  c.Start();
  PublishRaw("id-\xff\xfe", "not-utf8-id", "{}");
  PublishRaw("payload-not-utf8", "payload-not-utf8", "{\"name\": \"\xc3\x28\"}");
  const std::string long_id(3000, 'x');  // beyond what the inbox's index takes
  PublishRaw(long_id, "long-id", "{}");
  PublishRaw("after", "after", "{}");
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM dead_letters", 3, absl::Seconds(30)))
      << "an event was dropped without a trace";
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM effects WHERE event_id = 'after'", 1));
  c.Stop();
  EXPECT_EQ(Count("SELECT count(*) FROM effects"), 1);
  // Each kept for operators, the bytes that are not text shown escaped.
  EXPECT_EQ(Count("SELECT count(*) FROM dead_letters WHERE event_id = 'id-\\xff\\xfe'"), 1);
  EXPECT_EQ(Count("SELECT count(*) FROM dead_letters WHERE event_id = 'payload-not-utf8' "
                  "AND payload = '{\"name\": \"\\xc3(\"}'"),
            1);
  EXPECT_EQ(
      Count("SELECT count(*) FROM dead_letters WHERE event_id ~ '^x{200}[.]{3}#[0-9a-f]{16}$' "
            "AND error LIKE '%3000 bytes%'"),
      1);
}

TEST_F(Bus, AConsumerWhoseDatabaseFallsSilentHoldsItsEventsAndAppliesEachOnce) {
  // The database stops answering (hung, or the network to it gone) just as
  // an event's transaction commits: the consumer must not wait on it for
  // ever, reporting healthy, but give up by the ack wait, hold its events
  // while the database is unreachable, and then apply each event once.
  testing::StallingProxy proxy(testing::PortOf(url_));
  db::Pool stalling(testing::WithPort(url_, proxy.port()), 4, "bus-test-stalling");
  std::atomic<bool> stalled{false};
  auto handler = [&](db::Conn& tx, const bus::Delivery& d) -> absl::Status {
    absl::Status s = RecordEffect(tx, d);
    if (d.id == "commit-unanswered" && !stalled.exchange(true)) proxy.Stall();
    return s;
  };
  bus::ConsumerOptions o = Opts();
  o.ack_wait = absl::Seconds(2);
  bus::Consumer c(o, &stalling, nats_.get(), handler);
  c.Start();
  PublishRaw("warm-up", "warm-up", "{}");
  ASSERT_TRUE(WaitFor("SELECT count(*) FROM effects", 1));
  ASSERT_TRUE(c.healthy());
  PublishRaw("commit-unanswered", "commit-unanswered", "{}");
  const absl::Time until = absl::Now() + absl::Seconds(15);  // for both
  ASSERT_TRUE(testing::WaitUntil([&] { return stalled.load(); }, until - absl::Now()));
  EXPECT_TRUE(testing::WaitUntil([&] { return !c.healthy(); }, until - absl::Now()))
      << "the consumer still says healthy, waiting on nothing";
  PublishRaw("meanwhile", "meanwhile", "{}");
  absl::SleepFor(absl::Seconds(1));
  proxy.Resume();
  EXPECT_TRUE(WaitFor("SELECT count(DISTINCT event_id) FROM effects", 3));
  absl::SleepFor(absl::Milliseconds(500));
  c.Stop();
  EXPECT_EQ(Count("SELECT count(*) FROM effects"), 3) << "an event applied twice";
  EXPECT_EQ(Count("SELECT count(*) FROM dead_letters"), 0);
}

TEST_F(Bus, StoppingDuringADatabaseOutageHandsTheEventsBack) {
  auto handler = &Bus::RecordEffect;
  auto c = std::make_unique<bus::Consumer>(Opts(), pool_.get(), nats_.get(), handler);
  c->Start();
  auto outage = std::make_unique<testing::DatabaseOutage>(url_);
  PublishRaw("held-1", "held-1", "{}");
  PublishRaw("held-2", "held-2", "{}");
  absl::SleepFor(absl::Seconds(2));  // fetched and held
  absl::Time asked = absl::Now();
  c->Stop();
  EXPECT_LT(absl::Now() - asked, absl::Seconds(3)) << "Stop waited for the database";
  c.reset();
  outage.reset();
  bus::Consumer next(Opts(), pool_.get(), nats_.get(), handler);
  next.Start();
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM effects", 2));
  next.Stop();
  EXPECT_EQ(Count("SELECT count(*) FROM dead_letters"), 0);
}

TEST_F(Bus, AnEventHandedBackMoreOftenThanItsDeliveriesAllowIsNeverDropped) {
  // A consumer stopped while it holds an event hands it back, and each hand-
  // back is a delivery. JetStream used to drop an event after max_deliver + 1
  // of them, without a trace: a rolling restart during a long database
  // outage could do that. It no longer gives up on an event, and a durable
  // made by that earlier release is brought to this one's settings.
  bus::ConsumerOptions o = Opts();
  o.ack_wait = absl::Seconds(5);
  auto js = nats_->JetStream();
  ASSERT_TRUE(js.ok());
  auto info = [&](int64_t* delivered, int64_t* max_deliver, int64_t* ack_wait) {
    jsConsumerInfo* ci = nullptr;
    ASSERT_EQ(
        js_GetConsumerInfo(&ci, js->get(), stream_.c_str(), o.durable.c_str(), nullptr, nullptr),
        NATS_OK);
    *delivered = static_cast<int64_t>(ci->Delivered.Consumer);
    *max_deliver = ci->Config->MaxDeliver;
    *ack_wait = ci->Config->AckWait;
    jsConsumerInfo_Destroy(ci);
  };
  {  // as the earlier release made it
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = o.durable.c_str();
    cc.AckPolicy = js_AckExplicit;
    cc.DeliverPolicy = js_DeliverAll;
    cc.FilterSubject = o.filter_subject.c_str();
    cc.MaxDeliver = o.max_deliver + 1;
    cc.AckWait = absl::ToInt64Nanoseconds(absl::Seconds(30));
    ASSERT_EQ(js_AddConsumer(nullptr, js->get(), stream_.c_str(), &cc, nullptr, nullptr), NATS_OK);
  }
  auto handler = RecordingDeliveries();
  auto outage = std::make_unique<testing::DatabaseOutage>(url_);
  PublishRaw("handed-back", "handed-back", "{}");
  constexpr int kHandBacks = 6;  // beyond max_deliver + 1 = 4
  int64_t delivered = 0, max_deliver = 0, ack_wait = 0;
  for (int i = 0; i < kHandBacks; ++i) {
    bus::Consumer c(o, pool_.get(), nats_.get(), handler);
    c.Start();
    ASSERT_TRUE(testing::WaitUntil(
        [&] {
          int64_t m = 0, a = 0;
          info(&delivered, &m, &a);
          return delivered == i + 1;
        },
        absl::Seconds(10)))
        << "delivery " << i + 1 << " never came";
    c.Stop();  // holding it: handed back
  }
  info(&delivered, &max_deliver, &ack_wait);
  EXPECT_EQ(max_deliver, -1);
  EXPECT_EQ(ack_wait, absl::ToInt64Nanoseconds(o.ack_wait));
  outage.reset();
  bus::Consumer c(o, pool_.get(), nats_.get(), handler);
  c.Start();
  EXPECT_TRUE(WaitFor("SELECT count(*) FROM effects WHERE event_id = 'handed-back'", 1))
      << "the event was dropped";
  c.Stop();
  EXPECT_EQ(Count("SELECT count(*) FROM dead_letters"), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM consumer_unanswered"), 0);
  EXPECT_EQ(Deliveries(), std::vector<uint64_t>{kHandBacks + 1})
      << "the handler ran on a delivery made while the database was down";
}

// What a suite made on the shared servers is gone once it ends
// (tests/harness.h), so that a sweep over thousands of seeds does not fill
// the disk. Two suites, run in this order: the first makes a database and a
// stream, the second looks for them.
std::string* made_database = new std::string;
std::string* made_stream = new std::string;

TEST(HarnessMakes, ADatabaseAndAStream) {
  const std::string url = testing::NewDatabase();
  *made_database = url.substr(url.rfind('/') + 1);
  *made_stream = "LEFTOVER_" + testing::RandomSuffix();
  testing::RemoveStreamAfterSuite(*made_stream);
  auto n = bus::Nats::Connect(testing::RequiredEnv("CONNECTING_TEST_NATS"), "harness-test");
  ASSERT_TRUE(n.ok()) << n.status();
  for (int i = 0; i < 100 && !(*n)->connected(); ++i) absl::SleepFor(absl::Milliseconds(20));
  ASSERT_TRUE((*n)->EnsureStream({.name = *made_stream, .subjects = {*made_stream + ".>"}}).ok());
  EXPECT_TRUE(testing::StreamMaxAge(testing::RequiredEnv("CONNECTING_TEST_NATS"), *made_stream))
      << "the stream was not made";
}

TEST(HarnessRemoved, WhatTheSuiteBeforeMadeOnceItEnded) {
  if (made_database->empty()) GTEST_SKIP() << "HarnessMakes did not run before (a filter)";
  auto admin = db::Conn::Open(testing::RequiredEnv("CONNECTING_TEST_PG"), "harness-test");
  ASSERT_TRUE(admin.ok()) << admin.status();
  auto r = (*admin)->Exec("SELECT count(*) FROM pg_database WHERE datname = $1", {*made_database});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->Int(0, 0), 0) << "database " << *made_database << " is still there";
  EXPECT_FALSE(testing::StreamMaxAge(testing::RequiredEnv("CONNECTING_TEST_NATS"), *made_stream))
      << "stream " << *made_stream << " is still there";
}

}  // namespace
}  // namespace connecting
