// Scheduling end to end with partners: the partner projection, attendance and
// enduring contacts, session cancellation, programme figures, bad input, roles.
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>
#include <nats/nats.h>

#include <algorithm>
#include <cstdlib>
#include <future>
#include <map>
#include <random>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "connecting/events/v1/scheduling_events.pb.h"
#include "libs/db/db.h"
#include "tests/scheduling_common.h"

namespace connecting::testing {
namespace {

namespace pv1 = ::connecting::partners::v1;
using server::Role;

class Scheduling : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fx_ = new SchedulingFixture();
    org_ = new std::string(fx_->CreatePartner("Scheduling Trust"));
  }
  static void TearDownTestSuite() {
    delete fx_;
    delete org_;
  }
  static int64_t Sql(const std::string& sql) {
    auto conn = db::Conn::Open(fx_->scheduling_db, "test");
    if (!conn.ok()) return -1;
    auto r = (*conn)->Exec(sql);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() && r->rows() > 0 ? r->Int(0, 0) : (r.ok() ? r->affected() : -1);
  }
  // Publishes again, under new message ids, the partners events about
  // `ce_subject` (a redelivery, and older versions arriving late); returns how many.
  static int ReplayPartnerEvents(const std::string& ce_subject) {
    std::vector<StoredEvent> events = ReadStream(fx_->nats_url, "PARTNERS_" + fx_->suffix);
    natsConnection* nc = nullptr;
    if (natsConnection_ConnectTo(&nc, fx_->nats_url.c_str()) != NATS_OK) return -1;
    jsCtx* js = nullptr;
    natsConnection_JetStream(&js, nc, nullptr);
    int replayed = 0;
    for (const auto& e : events) {
      if (e.headers.at("ce-subject") != ce_subject) continue;
      natsMsg* m = nullptr;
      natsMsg_Create(&m, e.subject.c_str(), nullptr, e.data.data(),
                     static_cast<int>(e.data.size()));
      for (const auto& [k, v] : e.headers) natsMsgHeader_Set(m, k.c_str(), v.c_str());
      natsMsgHeader_Set(m, "Nats-Msg-Id", ("replay-" + e.headers.at("ce-id")).c_str());
      jsPubAck* pa = nullptr;
      if (js_PublishMsg(&pa, js, m, nullptr, nullptr) == NATS_OK) ++replayed;
      jsPubAck_Destroy(pa);
      natsMsg_Destroy(m);
    }
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return replayed;
  }

  static SchedulingFixture* fx_;
  static std::string* org_;
};
SchedulingFixture* Scheduling::fx_ = nullptr;
std::string* Scheduling::org_ = nullptr;

// The booking events of `session_id` on the SCHEDULING stream, by booking id,
// once there are `want` of them (or after 10 s, with what there is).
std::map<std::string, events::v1::BookingChanged> BookingEventsOf(SchedulingFixture& fx,
                                                                  const std::string& session_id,
                                                                  size_t want) {
  std::map<std::string, events::v1::BookingChanged> by_booking;
  absl::Time until = absl::Now() + absl::Seconds(10);
  while (by_booking.size() < want && absl::Now() < until) {
    for (const auto& e : ReadStream(fx.nats_url, fx.scheduling_stream)) {
      if (e.headers.count("ce-type") == 0 ||
          e.headers.at("ce-type") != "connecting.events.v1.BookingChanged") {
        continue;  // not a booking change (e.g. booking.rescheduled)
      }
      events::v1::BookingChanged bc;
      EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(e.data, &bc).ok()) << e.data;
      if (bc.session().id() == session_id) by_booking[bc.booking().id()] = bc;
    }
    if (by_booking.size() < want) absl::SleepFor(absl::Milliseconds(100));
  }
  return by_booking;
}

TEST_F(Scheduling, ArchivedPartnerTakesNoBookingsAndRedeliveryChangesNothing) {
  std::string org = fx_->CreatePartner("Soon Archived Trust");
  sv1::Session s = NewSession(*fx_, org, 5, DateIn(5));
  std::string person = Register(*fx_, "ARCH01").id();

  absl::StatusOr<pv1::Organisation> archived = fx_->ArchivePartner(org);
  ASSERT_TRUE(archived.ok()) << archived.status();
  ASSERT_TRUE(fx_->WaitForPartnerStatus(org, pv1::ORGANISATION_STATUS_ARCHIVED, absl::Seconds(5)));
  sv1::Booking b;
  grpc::Status st = Book(*fx_, s.id(), person, &b);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("ARCHIVED"), std::string::npos) << st.error_message();

  // Replay the partners stream's organisation events under new message ids
  // (a redelivery, and older versions arriving late): nothing changes.
  ASSERT_GE(ReplayPartnerEvents(org), 2);
  absl::SleepFor(absl::Seconds(2));
  EXPECT_TRUE(fx_->WaitForPartnerStatus(org, pv1::ORGANISATION_STATUS_ARCHIVED, absl::Seconds(1)));
  EXPECT_EQ(Sql("SELECT count(*) FROM inbox WHERE event_id IN (SELECT event_id FROM inbox) "
                "GROUP BY event_id ORDER BY count(*) DESC LIMIT 1"),
            1);
  EXPECT_EQ(Book(*fx_, s.id(), person, &b).error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  // Reactivated in partners: bookable again.
  pv1::ReactivateOrganisationRequest react;
  react.set_id(org);
  pv1::Organisation reactivated;
  ASSERT_TRUE(
      fx_->partners_stub->ReactivateOrganisation(Ctx(fx_->admin).get(), react, &reactivated).ok());
  ASSERT_TRUE(fx_->WaitForPartnerStatus(org, pv1::ORGANISATION_STATUS_ACTIVE, absl::Seconds(5)));
  EXPECT_TRUE(Book(*fx_, s.id(), person, &b).ok());
}

TEST_F(Scheduling, PartnerEventsAreKeptForGoodForProjectionsToReplay) {
  // A scheduling deployed years after partners still learns every
  // organisation, contact and offer by replaying PARTNERS from the start, so
  // partners creates its stream without an age limit; scheduling's own
  // events are kept for a year.
  fx_->CreatePartner("Long Memory Trust");
  std::optional<absl::Duration> partners = StreamMaxAge(fx_->nats_url, "PARTNERS_" + fx_->suffix);
  ASSERT_TRUE(partners.has_value());
  EXPECT_EQ(*partners, absl::ZeroDuration());
  std::optional<absl::Duration> scheduling;
  for (int i = 0; i < 100 && !scheduling; ++i) {
    scheduling = StreamMaxAge(fx_->nats_url, fx_->scheduling_stream);
    if (!scheduling) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(scheduling.has_value());
  EXPECT_EQ(*scheduling, absl::Hours(24 * 365));
}

TEST(SchedulingOutage, DatabaseOutageLosesNoPartnerEventAndTheServiceComesBack) {
  // Scheduling's own database goes away while partners archives an
  // organisation: scheduling answers UNAVAILABLE and reports NOT_SERVING
  // meanwhile, and once the database is back it serves again, applies the
  // archive it held (no dead letter) and books as before.
  SchedulingFixture fx;
  std::string doomed = fx.CreatePartner("Archived During Outage Trust");
  std::string steady = fx.CreatePartner("Steady Trust");
  sv1::Session at_doomed = NewSession(fx, doomed, 5, DateIn(5));
  sv1::Session at_steady = NewSession(fx, steady, 5, DateIn(5));
  std::string first = Register(fx, "OUTG01").id();
  std::string second = Register(fx, "OUTG02").id();

  DatabaseOutage outage(fx.scheduling_db);
  EXPECT_TRUE(fx.scheduling->WaitForHealth(2, absl::Seconds(10))) << "should be NOT_SERVING";
  sv1::Booking b;
  grpc::Status down = Book(fx, at_steady.id(), first, &b);
  EXPECT_EQ(down.error_code(), grpc::StatusCode::UNAVAILABLE);
  // What PostgreSQL said (the database's name among it) stays in the log.
  EXPECT_EQ(down.error_message(), "the service's database is unavailable; retry with backoff");
  EXPECT_EQ(DetailsOf(down).reason, "DEPENDENCY_UNAVAILABLE");
  absl::StatusOr<pv1::Organisation> archived = fx.ArchivePartner(doomed);
  ASSERT_TRUE(archived.ok()) << archived.status();
  absl::SleepFor(absl::Seconds(3));  // the archive event is delivered and held
  outage.End();

  EXPECT_TRUE(fx.scheduling->WaitForHealth(1, absl::Seconds(15))) << "should be SERVING again";
  EXPECT_TRUE(fx.WaitForPartnerStatus(doomed, pv1::ORGANISATION_STATUS_ARCHIVED));
  EXPECT_EQ(Book(fx, at_doomed.id(), first, &b).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  grpc::Status st = Book(fx, at_steady.id(), first, &b);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(b.status(), sv1::BOOKING_STATUS_CONFIRMED);
  EXPECT_TRUE(Book(fx, at_steady.id(), second, &b).ok());
  auto conn = db::Conn::Open(fx.scheduling_db, "test");
  ASSERT_TRUE(conn.ok());
  auto r = (*conn)->Exec(
      "SELECT (SELECT count(*) FROM dead_letters), "
      "(SELECT confirmed FROM session_sites WHERE session_id = $1::uuid), "
      "(SELECT count(*) FROM bookings WHERE session_id = $1::uuid AND status = 1)",
      {at_steady.id()});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->Int(0, 0), 0) << "an event was dead-lettered by the outage";
  EXPECT_EQ(r->Int(0, 1), 2);
  EXPECT_EQ(r->Int(0, 2), 2);
  EXPECT_TRUE(WaitForOutboxDrained(fx.scheduling_db));
  // Held, not retried: the outage spent none of the event's deliveries.
  std::string metrics = HttpGet(fx.scheduling->metrics_port(), "/metrics");
  EXPECT_NE(metrics.find("result=\"applied\""), std::string::npos) << metrics;
  EXPECT_EQ(metrics.find("result=\"retried\""), std::string::npos) << metrics;
}

TEST(SchedulingOutage, SigtermWhileTheDatabaseIsDownStillExitsPromptly) {
  // An operator rolling pods during a database outage: the consumer holding
  // events, the relay unable to flush and the pool unable to connect must not
  // keep the process from exiting 0 within its grace period.
  SchedulingFixture fx;
  fx.CreatePartner("Rolled Trust");
  DatabaseOutage outage(fx.scheduling_db);
  EXPECT_TRUE(fx.scheduling->WaitForHealth(2, absl::Seconds(10)));
  absl::Time asked = absl::Now();
  EXPECT_EQ(fx.scheduling->Terminate(absl::Seconds(40)), 0);
  EXPECT_LT(absl::Now() - asked, absl::Seconds(20));
}

TEST(SchedulingOutage, AnEventThatBringsTheServiceDownIsDeadLetteredAfterThreeStartsNotForever) {
  // A partner event whose handling crashes the process (the test hook exits
  // with 86 when the handler meets "Crashing Trust"), as a bug, or a kill
  // each time, would. Restarted after each crash, as Kubernetes does, the
  // service must not crash for ever, nor let JetStream drop the event
  // without a trace once its deliveries run out: after three starts of its
  // handling that never answered, the event goes to the dead letters, and
  // the events behind it apply, once each.
  SchedulingFixture fx({{"CONNECTING_TEST_CRASH_ON_EVENT_WITH", "Crashing Trust"},
                        {"CONSUMER_ACK_WAIT", "2s"},
                        {"CONSUMER_MAX_DELIVER", "2"}});
  std::string before = fx.CreatePartner("Before The Crash Trust");
  auto create = [&](const std::string& name) {
    pv1::CreateOrganisationRequest req;
    *req.mutable_organisation() = SampleOrganisation(name);
    pv1::Organisation org;
    grpc::Status st = fx.partners_stub->CreateOrganisation(Ctx(fx.admin).get(), req, &org);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return org.id();
  };
  std::string crashing = create("Crashing Trust");
  std::string after = create("After The Crash Trust");

  auto sql = [&](const std::string& q) -> int64_t {
    auto conn = db::Conn::Open(fx.scheduling_db, "test");
    if (!conn.ok()) return -1;
    auto r = (*conn)->Exec(q);
    return r.ok() ? r->Int(0, 0) : -1;
  };
  const std::string dead_letter =
      "SELECT count(*) FROM dead_letters WHERE payload LIKE '%Crashing Trust%' AND error LIKE "
      "'ABORTED: handling it began 3 times and never answered%'";
  int crashes = 0, warned = 0;
  const absl::Time until = absl::Now() + absl::Seconds(120);
  while (absl::Now() < until && crashes < 20 && sql(dead_letter) != 1) {
    const int code = fx.scheduling->process()->Wait(absl::Milliseconds(200));
    if (code < 0) continue;
    EXPECT_EQ(code, 86) << "the service exited, not by the test hook";
    ++crashes;
    warned += static_cast<int>(LogLinesWith(fx.scheduling->process()->log_path(),
                                            {"\"level\":\"warn\"", "\"unanswered_starts\""})
                                   .size());
    ServiceProcess::Options o = fx.scheduling->options();
    fx.scheduling = std::make_unique<ServiceProcess>(o);
    fx.scheduling->Launch();
  }
  ASSERT_EQ(sql(dead_letter), 1) << "the crashing event never reached the dead letters (" << crashes
                                 << " crashes)";
  // A first delivery, then three starts counted, each ending in a crash.
  EXPECT_EQ(crashes, 4);
  // The second and third counted starts each found one before unanswered,
  // and said so, naming the event, before trying again.
  EXPECT_EQ(warned, 2);
  fx.stub = sv1::SchedulingService::NewStub(fx.scheduling->channel());
  EXPECT_TRUE(fx.scheduling->WaitForHealth(1, absl::Seconds(15)));
  EXPECT_TRUE(fx.WaitForPartnerStatus(after, pv1::ORGANISATION_STATUS_ACTIVE, absl::Seconds(15)))
      << "the event behind the crashing one never applied";
  absl::SleepFor(absl::Seconds(3));  // more than the ack wait: nothing comes back
  EXPECT_LT(fx.scheduling->process()->Wait(absl::ZeroDuration()), 0) << "it crashed again";
  EXPECT_EQ(sql("SELECT count(*) FROM partner_organisations WHERE id = '" + crashing + "'"), 0);
  EXPECT_EQ(sql("SELECT count(*) FROM partner_organisations"), 2);
  EXPECT_EQ(sql("SELECT count(*) FROM dead_letters"), 1);
  EXPECT_EQ(sql("SELECT count(*) FROM consumer_unanswered"), 0) << "a count of starts was left";
  EXPECT_EQ(sql("SELECT count(*) FROM inbox WHERE event_id IN "
                "(SELECT event_id FROM dead_letters)"),
            1);
  EXPECT_EQ(sql("SELECT count(*) FROM partner_organisations WHERE id = '" + before + "'"), 1);
}

TEST(SchedulingOutage, NatsRestartLosesNoEventEitherWay) {
  // NATS goes away while partners archives an organisation and scheduling
  // takes a booking: both commit (NOT_SERVING meanwhile), and once NATS is
  // back scheduling's consumer picks up where it was (the archive applies)
  // and its relay publishes the booking's event.
  NatsServer nats;
  SchedulingFixture fx({}, nats.url());
  std::string doomed = fx.CreatePartner("Archived While NATS Down Trust");
  std::string steady = fx.CreatePartner("Steady Trust");
  sv1::Session at_doomed = NewSession(fx, doomed, 5, DateIn(5));
  sv1::Session at_steady = NewSession(fx, steady, 5, DateIn(5));
  std::string person = Register(fx, "NATS01").id();

  nats.Stop();
  EXPECT_TRUE(fx.scheduling->WaitForHealth(2, absl::Seconds(10))) << "should be NOT_SERVING";
  sv1::Booking during;
  grpc::Status st = Book(fx, at_steady.id(), person, &during);
  ASSERT_TRUE(st.ok()) << st.error_message();
  absl::StatusOr<pv1::Organisation> archived = fx.ArchivePartner(doomed);
  ASSERT_TRUE(archived.ok()) << archived.status();
  absl::SleepFor(absl::Seconds(1));
  nats.Start();

  EXPECT_TRUE(fx.scheduling->WaitForHealth(1, absl::Seconds(15))) << "should be SERVING again";
  EXPECT_TRUE(
      fx.WaitForPartnerStatus(doomed, pv1::ORGANISATION_STATUS_ARCHIVED, absl::Seconds(20)));
  sv1::Booking b;
  EXPECT_EQ(Book(fx, at_doomed.id(), person, &b).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(WaitForOutboxDrained(fx.scheduling_db, absl::Seconds(20)));
  EXPECT_EQ(BookingEventsOf(fx, at_steady.id(), 1).count(during.id()), 1u);
}

TEST(SchedulingRestore, ChangesAfterPartnersIsRestoredToAnEarlierPointStillReachScheduling) {
  // Partners' database is restored from a backup taken before changes its
  // consumers already applied (the organisation paused, then active again).
  // The next change, an archive, must still reach scheduling's projection,
  // which keeps an organisation's newest version: the restored row's version
  // must not count from where the backup left it, below what was published.
  SchedulingFixture fx;
  std::string org = fx.CreatePartner("Restored From Backup Trust");
  sv1::Session s = NewSession(fx, org, 5, DateIn(5));
  std::string person = Register(fx, "RESTORE01").id();

  // The backup, taken with partners stopped and its events all published.
  ASSERT_TRUE(WaitForOutboxDrained(fx.partners_db));
  absl::Status backup = BackUpDatabase(*fx.partners, fx.partners_db);
  ASSERT_TRUE(backup.ok()) << backup;

  ASSERT_TRUE(fx.PausePartner(org).ok());
  ASSERT_TRUE(fx.WaitForPartnerStatus(org, pv1::ORGANISATION_STATUS_PAUSED));
  pv1::Organisation o;
  pv1::ReactivateOrganisationRequest react;
  react.set_id(org);
  ASSERT_TRUE(fx.partners_stub->ReactivateOrganisation(Ctx(fx.admin).get(), react, &o).ok());
  ASSERT_TRUE(fx.WaitForPartnerStatus(org, pv1::ORGANISATION_STATUS_ACTIVE));

  // The restore: partners' database as the backup has it.
  absl::Status restored = RestoreDatabase(*fx.partners, fx.partners_db);
  ASSERT_TRUE(restored.ok()) << restored;

  absl::StatusOr<pv1::Organisation> archived = fx.ArchivePartner(org);
  ASSERT_TRUE(archived.ok()) << archived.status();
  EXPECT_GT(std::stoll(archived->etag()), std::stoll(o.etag()))
      << "the restored organisation's next version repeats one already published";
  EXPECT_TRUE(fx.WaitForPartnerStatus(org, pv1::ORGANISATION_STATUS_ARCHIVED));
  sv1::Booking b;
  EXPECT_EQ(Book(fx, s.id(), person, &b).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

TEST(SchedulingRestore, RepublishAfterRestoreUndoesDownstreamWhatTheRestoreUndid) {
  // Partners' database is restored from a backup taken before an archive.
  // Scheduling applied the archive, and a snapshot of the restored row (an
  // older version) would be skipped as stale: `--republish --after-restore`
  // gives every resource a new version, and the partner is bookable again.
  SchedulingFixture fx;
  std::string org = fx.CreatePartner("Archived Then Restored Trust");
  sv1::Session s = NewSession(fx, org, 5, DateIn(6));
  std::string person = Register(fx, "UNDONE01").id();
  ASSERT_TRUE(WaitForOutboxDrained(fx.partners_db));
  absl::Status backup = BackUpDatabase(*fx.partners, fx.partners_db);
  ASSERT_TRUE(backup.ok()) << backup;
  absl::StatusOr<pv1::Organisation> archived = fx.ArchivePartner(org);
  ASSERT_TRUE(archived.ok()) << archived.status();
  ASSERT_TRUE(fx.WaitForPartnerStatus(org, pv1::ORGANISATION_STATUS_ARCHIVED));
  ASSERT_TRUE(WaitForOutboxDrained(fx.partners_db));
  absl::Status restored = RestoreDatabase(*fx.partners, fx.partners_db);
  ASSERT_TRUE(restored.ok()) << restored;
  // Partners, started on the restored database, says so (its relay checks
  // as it starts, beside the server).
  auto said_behind = [&] {
    return ReadFile(fx.partners->process()->log_path()).find("database behind its stream") !=
           std::string::npos;
  };
  for (absl::Time until = absl::Now() + absl::Seconds(10); !said_behind() && absl::Now() < until;) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(said_behind()) << fx.partners->process()->log_path();
  // ... and records it, so that it is reported until settled.
  auto open_restores = [&] {
    auto c = db::Conn::Open(fx.partners_db, "test");
    if (!c.ok()) return int64_t{-1};
    auto r = (*c)->Exec("SELECT count(*) FROM outbox_restores WHERE settled_at IS NULL");
    return r.ok() ? r->Int(0, 0) : int64_t{-1};
  };
  EXPECT_EQ(open_restores(), 1) << "the restore is not recorded";

  auto conn = db::Conn::Open(fx.scheduling_db, "test");
  ASSERT_TRUE(conn.ok());
  auto inbox_rows = [&] {
    auto r = (*conn)->Exec("SELECT count(*) FROM inbox");
    return r.ok() ? r->Int(0, 0) : -1;
  };
  auto wait_for_inbox = [&](int64_t n) {
    absl::Time until = absl::Now() + absl::Seconds(15);
    while (inbox_rows() < n && absl::Now() < until) absl::SleepFor(absl::Milliseconds(50));
    return inbox_rows() >= n;
  };
  // A plain republish: the organisation and its host, both taken in, and
  // the restored (older) organisation skipped as stale.
  int64_t seen = inbox_rows();
  OneShot plain = fx.RepublishPartners();
  ASSERT_EQ(plain.code, 0) << "log: " << plain.log;
  ASSERT_TRUE(wait_for_inbox(seen + 2));
  EXPECT_TRUE(fx.WaitForPartnerStatus(org, pv1::ORGANISATION_STATUS_ARCHIVED, absl::Seconds(1)))
      << "the limitation this test is about is gone: revisit the README and docs/operations.md";

  OneShot after = fx.RepublishPartners(/*after_restore=*/true);
  ASSERT_EQ(after.code, 0) << "log: " << after.log;
  EXPECT_NE(ReadFile(after.log).find("\"restores_settled\":\"1\""), std::string::npos)
      << ReadFile(after.log);
  EXPECT_EQ(open_restores(), 0) << "--after-restore left the restore open";
  EXPECT_TRUE(fx.WaitForPartnerStatus(org, pv1::ORGANISATION_STATUS_ACTIVE, absl::Seconds(15)))
      << "scheduling kept the archive the restore undid";
  pv1::GetOrganisationRequest get;
  get.set_id(org);
  pv1::Organisation now;
  ASSERT_TRUE(fx.partners_stub->GetOrganisation(Ctx(fx.admin).get(), get, &now).ok());
  EXPECT_EQ(now.status(), pv1::ORGANISATION_STATUS_ACTIVE);
  EXPECT_GT(std::stoll(now.etag()), std::stoll(archived->etag()))
      << "the new version must pass the one the restore undid";
  sv1::Booking b;
  grpc::Status st = Book(fx, s.id(), person, &b);
  EXPECT_TRUE(st.ok()) << st.error_message();
}

TEST(SchedulingRestore, SchedulingRestoredToAnEarlierPointCatchesUpWithPartners) {
  // Scheduling's database is restored from a backup taken before it applied
  // an archive, which NATS had already seen acknowledged. Its consumer must
  // notice the database is behind and apply the archive again.
  SchedulingFixture fx;
  std::string org = fx.CreatePartner("Archived After The Backup Trust");
  sv1::Session s = NewSession(fx, org, 5, DateIn(5));
  std::string person = Register(fx, "RESTORE02").id();

  absl::Status backup = BackUpDatabase(*fx.scheduling, fx.scheduling_db);
  ASSERT_TRUE(backup.ok()) << backup;

  absl::StatusOr<pv1::Organisation> archived = fx.ArchivePartner(org);
  ASSERT_TRUE(archived.ok()) << archived.status();
  ASSERT_TRUE(fx.WaitForPartnerStatus(org, pv1::ORGANISATION_STATUS_ARCHIVED));

  absl::Status restored = RestoreDatabase(*fx.scheduling, fx.scheduling_db);
  ASSERT_TRUE(restored.ok()) << restored;

  EXPECT_TRUE(fx.WaitForPartnerStatus(org, pv1::ORGANISATION_STATUS_ARCHIVED))
      << "the restored projection never learnt of the archive";
  sv1::Booking b;
  grpc::Status st = Book(fx, s.id(), person, &b);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
}

TEST(SchedulingRestore, PartnersRepublishRebuildsAStreamThatLostItsEvents) {
  // PARTNERS loses every event (its storage gone, its durables with it) and
  // scheduling's projection starts afresh: `partners --republish` puts a
  // snapshot of every organisation and contact back on the stream, and the
  // projection rebuilds from it, paused organisation included.
  SchedulingFixture fx;
  std::string org = fx.CreatePartner("Republished Trust");
  std::string host = fx.hosts[org];
  absl::StatusOr<pv1::Organisation> paused = fx.PausePartner(org);
  ASSERT_TRUE(paused.ok()) << paused.status();
  ASSERT_TRUE(fx.WaitForPartnerStatus(org, pv1::ORGANISATION_STATUS_PAUSED));
  ASSERT_TRUE(WaitForOutboxDrained(fx.partners_db));

  const std::string stream = "PARTNERS_" + fx.suffix;
  ASSERT_TRUE(ChangeStream(fx.nats_url, stream, StreamChange::kDelete).ok());
  ASSERT_TRUE(fx.ForgetPartners().ok());

  OneShot republish = fx.RepublishPartners();
  ASSERT_EQ(republish.code, 0) << "log: " << republish.log;

  // The serving partners publishes the snapshots: one per resource, as it is.
  std::map<std::string, StoredEvent> by_resource;
  for (const StoredEvent& e : WaitForEvents(fx.nats_url, stream, 2)) {
    by_resource[e.headers.at("ce-subject")] = e;
  }
  ASSERT_EQ(by_resource.count(org), 1u);
  EXPECT_TRUE(absl::EndsWith(by_resource[org].subject, ".organisation.snapshot"));
  EXPECT_EQ(by_resource[org].headers.at("ce-type"), "connecting.events.v1.OrganisationSnapshot");
  EXPECT_NE(by_resource[org].data.find(absl::StrCat("\"etag\":\"", paused->etag(), "\"")),
            std::string::npos)
      << by_resource[org].data;
  ASSERT_EQ(by_resource.count(host), 1u);
  EXPECT_TRUE(absl::EndsWith(by_resource[host].subject, ".contact.snapshot"));

  // Scheduling's consumer makes its durable again and rebuilds from them.
  EXPECT_TRUE(fx.WaitForPartnerStatus(org, pv1::ORGANISATION_STATUS_PAUSED, absl::Seconds(15)));
  EXPECT_TRUE(fx.WaitForProjection("SELECT removed::text FROM partner_contacts WHERE id = $1::uuid",
                                   host, "false", absl::Seconds(15)));
}

TEST(SchedulingRestore, PurgedPartnersStreamIsRepublishedForNewConsumersAndOldOnesKeepTheirs) {
  // An operator purges PARTNERS to save space, then runs `partners
  // --republish` (docs/operations.md, "Backups and restores"). A consumer that had read
  // the history keeps its projection exactly as it was; one starting afresh
  // (here scheduling's projection emptied, so it replays the stream) builds
  // it whole from the snapshots alone: archived organisation included.
  SchedulingFixture fx;
  std::string open_org = fx.CreatePartner("Still Open Trust");
  std::string closed_org = fx.CreatePartner("Closed Since Trust");
  absl::StatusOr<pv1::Organisation> archived = fx.ArchivePartner(closed_org);
  ASSERT_TRUE(archived.ok()) << archived.status();
  ASSERT_TRUE(fx.WaitForPartnerStatus(closed_org, pv1::ORGANISATION_STATUS_ARCHIVED));
  ASSERT_TRUE(WaitForOutboxDrained(fx.partners_db));

  auto conn = db::Conn::Open(fx.scheduling_db, "test");
  ASSERT_TRUE(conn.ok());
  auto projection = [&] {
    auto r = (*conn)->Exec(
        "SELECT string_agg(id || ' ' || status || ' ' || version, ', ' ORDER BY id) "
        "FROM partner_organisations");
    return r.ok() ? r->String(0, 0) : r.status().ToString();
  };
  auto inbox_rows = [&] {
    auto r = (*conn)->Exec("SELECT count(*) FROM inbox");
    return r.ok() ? r->Int(0, 0) : -1;
  };
  const std::string before = projection();
  const int64_t inbox_before = inbox_rows();

  const std::string stream = "PARTNERS_" + fx.suffix;
  ASSERT_TRUE(ChangeStream(fx.nats_url, stream, StreamChange::kPurge).ok());
  ASSERT_TRUE(ReadStream(fx.nats_url, stream).empty()) << "the purge left events";

  OneShot republish = fx.RepublishPartners();
  ASSERT_EQ(republish.code, 0) << "log: " << republish.log;
  // Two organisations and their two hosts, each once, and nothing else.
  std::vector<StoredEvent> snapshots = WaitForEvents(fx.nats_url, stream, 4);
  ASSERT_EQ(snapshots.size(), 4u);
  std::set<std::string> resources;
  for (const StoredEvent& e : snapshots) {
    EXPECT_TRUE(absl::EndsWith(e.subject, ".snapshot")) << e.subject;
    resources.insert(e.headers.at("ce-subject"));
  }
  EXPECT_EQ(resources, (std::set<std::string>{open_org, closed_org, fx.hosts[open_org],
                                              fx.hosts[closed_org]}));

  // The consumer that had the history takes the four in and changes nothing.
  absl::Time until = absl::Now() + absl::Seconds(15);
  while (inbox_rows() < inbox_before + 4 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(inbox_rows(), inbox_before + 4) << "the snapshots never reached scheduling";
  EXPECT_EQ(projection(), before);

  // A consumer starting afresh has only the snapshots to go on.
  ASSERT_TRUE(fx.ForgetPartners().ok());
  EXPECT_TRUE(
      fx.WaitForPartnerStatus(open_org, pv1::ORGANISATION_STATUS_ACTIVE, absl::Seconds(15)));
  EXPECT_TRUE(
      fx.WaitForPartnerStatus(closed_org, pv1::ORGANISATION_STATUS_ARCHIVED, absl::Seconds(15)));
  EXPECT_TRUE(fx.WaitForProjection("SELECT removed::text FROM partner_contacts WHERE id = $1::uuid",
                                   fx.hosts[open_org], "false", absl::Seconds(15)));
  EXPECT_EQ(projection(), before) << "rebuilt from snapshots, versions included";
  sv1::Session visit = NewSession(fx, open_org, 2, DateIn(9));
  sv1::Booking b;
  grpc::Status st = Book(fx, visit.id(), Register(fx, "PURGE01").id(), &b);
  EXPECT_TRUE(st.ok()) << st.error_message();
}

TEST(SchedulingRestore, SchedulingRepublishGivesDashboardsEverythingAgain) {
  // SCHEDULING purged (or lost): `scheduling --republish` puts a snapshot of
  // every participant, session and booking on it, as they are; with
  // --after-restore each first gets a new version, so a dashboard replaces
  // what it holds.
  SchedulingFixture fx;
  std::string org = fx.CreatePartner("Dashboard Trust");
  sv1::Session s = NewSession(fx, org, 1, DateIn(8));
  sv1::Booking seat, queued;
  ASSERT_TRUE(Book(fx, s.id(), Register(fx, "SNAP01").id(), &seat).ok());
  ASSERT_TRUE(Book(fx, s.id(), Register(fx, "SNAP02").id(), &queued).ok());
  ASSERT_EQ(queued.status(), sv1::BOOKING_STATUS_WAITLISTED);
  ASSERT_TRUE(WaitForOutboxDrained(fx.scheduling_db));
  ASSERT_TRUE(ChangeStream(fx.nats_url, fx.scheduling_stream, StreamChange::kPurge).ok());

  auto republish = [&](std::vector<std::string> args) {
    std::map<std::string, std::string> env = {
        {"DATABASE_URL", fx.scheduling_db},
        {"EVENT_SUBJECT_PREFIX", "t" + fx.suffix + ".connecting.scheduling"},
        {"LOG_LEVEL", "info"}};
    if (args.size() > 1) {  // --after-restore reads the stream
      env["NATS_URL"] = fx.scheduling->options().nats_url;
      env["EVENT_STREAM"] = fx.scheduling_stream;
    }
    OneShot run = RunOnce(SCHEDULING_BIN, std::move(args), env, "republish");
    EXPECT_EQ(run.code, 0) << "log: " << run.log;
  };
  // The "etag" of an event's resource, "" if it has none.
  auto etag_of = [](const std::string& data) -> std::string {
    size_t at = data.find("\"etag\":\"");
    return at == std::string::npos ? "" : data.substr(at + 8, data.find('"', at + 8) - (at + 8));
  };
  // By resource: its snapshot's subject's last two parts and its etag.
  auto snapshots = [&](size_t expected) {
    std::map<std::string, std::pair<std::string, std::string>> out;
    for (const StoredEvent& e : WaitForEvents(fx.nats_url, fx.scheduling_stream, expected)) {
      std::vector<std::string> parts = absl::StrSplit(e.subject, '.');
      out[e.headers.at("ce-subject")] = {parts[parts.size() - 2] + "." + parts.back(),
                                         etag_of(e.data)};
    }
    return out;
  };
  republish({"--republish"});
  auto first = snapshots(5);
  ASSERT_EQ(first.size(), 5u) << "two people, one session, two bookings, each once";
  EXPECT_EQ(first[s.id()].first, "session.snapshot");
  EXPECT_EQ(first[seat.participant_id()].first, "participant.snapshot");
  EXPECT_EQ(first[queued.id()], std::make_pair(std::string("booking.snapshot"), queued.etag()));
  std::vector<StoredEvent> stored = ReadStream(fx.nats_url, fx.scheduling_stream);
  ASSERT_EQ(stored.size(), 5u) << "more than one snapshot of something";
  for (const StoredEvent& e : stored) {
    if (e.headers.at("ce-subject") != queued.id()) continue;
    EXPECT_NE(e.data.find("\"waitlistPosition\":1"), std::string::npos) << e.data;
    EXPECT_EQ(e.headers.at("ce-type"), "connecting.events.v1.BookingSnapshot");
  }

  republish({"--republish", "--after-restore"});
  std::vector<StoredEvent> all = WaitForEvents(fx.nats_url, fx.scheduling_stream, 10);
  ASSERT_EQ(all.size(), 10u);
  std::map<std::string, std::string> newer;
  for (size_t i = 5; i < all.size(); ++i) {
    std::string etag = etag_of(all[i].data);
    ASSERT_FALSE(etag.empty()) << all[i].data;
    newer[all[i].headers.at("ce-subject")] = etag;
  }
  ASSERT_EQ(newer.size(), 5u);
  for (const auto& [id, was] : first) {
    EXPECT_GT(std::stoll(newer[id]), std::stoll(was.second)) << id << " kept its version";
  }
  sv1::GetBookingRequest get;
  get.set_id(queued.id());
  sv1::Booking now;
  ASSERT_TRUE(fx.stub->GetBooking(Ctx(fx.admin).get(), get, &now).ok());
  EXPECT_EQ(now.etag(), newer[queued.id()]) << "the snapshot carries the booking's version";
  EXPECT_EQ(now.status(), sv1::BOOKING_STATUS_WAITLISTED) << "nothing but the version changed";
}

TEST_F(Scheduling, ReplayingDeadLettersAppliesThemThroughTheRealHandler) {
  // An organisation's event that scheduling once gave up on (simulated: its
  // projection row removed, the event put in dead_letters) is applied by
  // `scheduling --replay-dead-letters`, which then exits 0.
  std::string org = fx_->CreatePartner("Replayed Trust");
  std::string subject, type, payload;
  for (const StoredEvent& e : ReadStream(fx_->nats_url, "PARTNERS_" + fx_->suffix)) {
    if (absl::EndsWith(e.subject, ".organisation.created") && e.headers.count("ce-subject") &&
        e.headers.at("ce-subject") == org) {
      subject = e.subject;
      type = e.headers.at("ce-type");
      payload = e.data;
    }
  }
  ASSERT_FALSE(payload.empty()) << "no organisation.created event for " << org;
  auto conn = db::Conn::Open(fx_->scheduling_db, "test");
  ASSERT_TRUE(conn.ok()) << conn.status();
  ASSERT_TRUE((*conn)->Exec("DELETE FROM partner_organisations WHERE id = $1::uuid", {org}).ok());
  ASSERT_TRUE((*conn)
                  ->Exec("INSERT INTO dead_letters (consumer, event_id, subject, type, payload, "
                         "error, deliveries) VALUES ('scheduling-partners-2', $1, $2, $3, $4, "
                         "'UNAVAILABLE: simulated', 10)",
                         {"dead-" + org, subject, type, payload})
                  .ok());

  OneShot replay =
      RunOnce(SCHEDULING_BIN, {"--replay-dead-letters"},
              {{"DATABASE_URL", fx_->scheduling_db},
               {"NATS_URL", fx_->nats_url},
               {"AUTH_JWT_KEY", kJwtKey},
               {"EVENT_STREAM", fx_->scheduling_stream},
               {"EVENT_SUBJECT_PREFIX", "t" + fx_->suffix + ".connecting.scheduling"},
               {"PARTNERS_EVENTS_STREAM", "PARTNERS_" + fx_->suffix},
               {"PARTNERS_EVENTS_SUBJECT", "t" + fx_->suffix + ".connecting.partners.>"},
               {"LOG_LEVEL", "warn"}},
              "replay");
  EXPECT_EQ(replay.code, 0) << "log: " << replay.log;
  const std::string out = ReadFile(replay.log);
  EXPECT_NE(out.find("scheduling-partners-2: 1 dead letters replayed, 0 refused again"),
            std::string::npos)
      << out;
  EXPECT_EQ(Sql("SELECT count(*) FROM dead_letters"), 0);
  EXPECT_TRUE(fx_->WaitForPartnerStatus(org, pv1::ORGANISATION_STATUS_ACTIVE, absl::Seconds(1)));
}

TEST(SchedulingMigrations, AMigrationBehindALongReportLetsTheTableBeUsedAndFailsNamingIt) {
  // A release that changes the figures' triggers (R__attendance_chains: its
  // DROP TRIGGER locks attendance_facts outright) meets a report reading
  // that table in a transaction left open. Everything else reading the
  // table goes on meanwhile; the Job fails after MIGRATION_LOCK_WAIT naming
  // the report, changing nothing, and succeeds once the report is over.
  const std::string url = NewDatabase();
  OneShot first = RunOnce(SCHEDULING_BIN, {"--migrate"}, {{"DATABASE_URL", url}}, "migrate");
  ASSERT_EQ(first.code, 0) << "log: " << first.log;
  auto conn = db::Conn::Open(url, "test");
  ASSERT_TRUE(conn.ok()) << conn.status();
  // As if the release edited the file: its text differs from what was applied.
  ASSERT_TRUE((*conn)
                  ->ExecScript("UPDATE schema_migrations SET checksum = 'older' "
                               "WHERE component = 'scheduling' AND name = 'R__attendance_chains'")
                  .ok());
  auto report = db::Conn::Open(url, "nightly-report");
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_TRUE((*report)->ExecScript("BEGIN; SELECT count(*) FROM attendance_facts").ok());

  Process job(
      SCHEDULING_BIN, {"--migrate"}, {{"DATABASE_URL", url}, {"MIGRATION_LOCK_WAIT", "4s"}},
      absl::StrCat(RequiredEnv("CONNECTING_TEST_TMP"), "/migrate-", RandomSuffix(), ".log"));
  ASSERT_TRUE(WaitUntil(
      [&] {
        return absl::StrContains(ReadFile(job.log_path()),
                                 "migration waiting for a lock held by another transaction");
      },
      absl::Seconds(20)))
      << ReadFile(job.log_path());
  // The figures read the table while the Job tries (were it waiting behind
  // the report, this read would wait behind it in turn).
  ASSERT_TRUE((*conn)->ExecScript("SET statement_timeout = '3s'").ok());
  for (int i = 0; i < 10; ++i) {
    absl::Status read = (*conn)->Exec("SELECT count(*) FROM attendance_facts").status();
    ASSERT_TRUE(read.ok()) << "a read waited behind the migration: " << read;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(job.Wait(absl::Seconds(30)), 1);
  const std::string log = ReadFile(job.log_path());
  EXPECT_TRUE(absl::StrContains(log,
                                "scheduling/R__attendance_chains failed: could not take the "
                                "locks it needs within 4s"))
      << log;
  EXPECT_TRUE(absl::StrContains(log, "(nightly-report, idle in transaction")) << log;
  auto checksum =
      (*conn)->Exec("SELECT checksum FROM schema_migrations WHERE name = 'R__attendance_chains'");
  ASSERT_TRUE(checksum.ok()) << checksum.status();
  EXPECT_EQ(checksum->String(0, 0), "older") << "recorded as applied";

  ASSERT_TRUE((*report)->ExecScript("COMMIT").ok());
  OneShot again = RunOnce(SCHEDULING_BIN, {"--migrate"}, {{"DATABASE_URL", url}}, "migrate");
  EXPECT_EQ(again.code, 0) << ReadFile(again.log);
  EXPECT_TRUE(absl::StrContains(ReadFile(again.log), "scheduling/R__attendance_chains"));
}

TEST_F(Scheduling, ASessionsHostAndOfferAreThoseOfItsOrganisation) {
  std::string org = fx_->CreatePartner("Hosting Trust");
  std::string other = fx_->CreatePartner("Neighbouring Trust");
  auto create = [&](const std::string& host, const std::string& offer) {
    sv1::CreateSessionRequest req;
    sv1::Session* s = req.mutable_session();
    s->set_kind(sv1::SESSION_KIND_FRONTLINE_VISIT);
    s->set_title("Visit");
    s->set_organisation_id(org);
    s->set_host_contact_id(host);
    s->set_offer_id(offer);
    s->set_date(DateIn(9));
    s->set_start_time("09:00");
    s->set_end_time("17:00");
    s->add_sites()->set_capacity(2);
    sv1::Session out;
    return fx_->stub->CreateSession(Ctx(fx_->admin).get(), req, &out);
  };
  auto expect = [](const grpc::Status& st, grpc::StatusCode code, const std::string& field,
                   const std::string& says) {
    EXPECT_EQ(st.error_code(), code) << st.error_message();
    EXPECT_EQ(st.error_message().rfind(field + ": ", 0), 0u) << st.error_message();
    EXPECT_NE(st.error_message().find(says), std::string::npos) << st.error_message();
  };
  int64_t sessions = Sql("SELECT count(*) FROM sessions");

  // Hosts: unknown, at another organisation, removed in partners.
  expect(create("99999999-2222-4333-8444-555555555555", ""),
         grpc::StatusCode::FAILED_PRECONDITION, "session.host_contact_id", "not known");
  expect(create(fx_->hosts[other], ""), grpc::StatusCode::INVALID_ARGUMENT,
         "session.host_contact_id", "not at organisation " + org);
  std::string leaving = fx_->CreateHost(org, "Leaving Host");
  pv1::RemoveContactRequest remove;
  remove.set_id(leaving);
  pv1::RemoveContactResponse removed;
  ASSERT_TRUE(fx_->partners_stub->RemoveContact(Ctx(fx_->admin).get(), remove, &removed).ok());
  const std::string removed_sql = "SELECT removed::text FROM partner_contacts WHERE id = $1::uuid";
  ASSERT_TRUE(fx_->WaitForProjection(removed_sql, leaving, "true"));
  expect(create(leaving, ""), grpc::StatusCode::FAILED_PRECONDITION, "session.host_contact_id",
         "removed");
  // Its creation delivered again after the removal does not bring it back.
  ASSERT_GE(ReplayPartnerEvents(leaving), 2);
  absl::SleepFor(absl::Seconds(1));
  EXPECT_TRUE(fx_->WaitForProjection(removed_sql, leaving, "true", absl::Seconds(1)));

  // Offers: a draft is refused, the published offer is taken; another's is not.
  pv1::CreateOfferRequest co;
  pv1::Offer* o = co.mutable_offer();
  o->set_organisation_id(org);
  o->set_title("A day with the district nurses");
  o->set_setting(pv1::SETTING_COMMUNITY_SERVICE);
  o->set_capacity_per_day(2);
  o->add_weekdays(pv1::WEEKDAY_TUESDAY);
  o->set_host_contact_id(fx_->hosts[org]);
  pv1::Offer offer;
  ASSERT_TRUE(fx_->partners_stub->CreateOffer(Ctx(fx_->admin).get(), co, &offer).ok());
  const std::string state_sql = "SELECT state::text FROM partner_offers WHERE id = $1::uuid";
  ASSERT_TRUE(fx_->WaitForProjection(state_sql, offer.id(), "1"));
  expect(create(fx_->hosts[org], offer.id()), grpc::StatusCode::FAILED_PRECONDITION,
         "session.offer_id", "DRAFT");
  EXPECT_EQ(Sql("SELECT count(*) FROM sessions"), sessions) << "nothing stored by a refusal";
  pv1::PublishOfferRequest publish;
  publish.set_id(offer.id());
  ASSERT_TRUE(fx_->partners_stub->PublishOffer(Ctx(fx_->admin).get(), publish, &offer).ok());
  ASSERT_TRUE(fx_->WaitForProjection(state_sql, offer.id(), "2"));
  EXPECT_TRUE(create(fx_->hosts[org], offer.id()).ok());
  o->set_organisation_id(other);
  o->set_host_contact_id(fx_->hosts[other]);
  pv1::Offer elsewhere;
  ASSERT_TRUE(fx_->partners_stub->CreateOffer(Ctx(fx_->admin).get(), co, &elsewhere).ok());
  ASSERT_TRUE(fx_->WaitForProjection(state_sql, elsewhere.id(), "1"));
  expect(create(fx_->hosts[org], elsewhere.id()), grpc::StatusCode::INVALID_ARGUMENT,
         "session.offer_id", "not at organisation " + org);
  expect(create("", "99999999-2222-4333-8444-555555555555"),
         grpc::StatusCode::FAILED_PRECONDITION, "session.offer_id", "not known");
  EXPECT_EQ(Sql("SELECT count(*) FROM sessions"), sessions + 1);
}

TEST_F(Scheduling, UnknownPartnerCannotHostASession) {
  sv1::CreateSessionRequest req;
  sv1::Session* s = req.mutable_session();
  s->set_kind(sv1::SESSION_KIND_FRONTLINE_VISIT);
  s->set_title("Nowhere");
  s->set_organisation_id("00000000-0000-4000-8000-00000000dead");
  s->set_date(DateIn(3));
  s->set_start_time("10:00");
  s->set_end_time("12:00");
  s->add_sites()->set_capacity(2);
  sv1::Session out;
  grpc::Status st = fx_->stub->CreateSession(Ctx(fx_->admin).get(), req, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("not known"), std::string::npos);
}

TEST_F(Scheduling, AttendanceBuildsEnduringContactsAndLetsConnectorsArrangeVisits) {
  sv1::Participant p = Register(*fx_, "ATT001");
  sv1::Session s = NewSession(*fx_, *org_, 2, DateIn(1));
  sv1::Booking b;
  ASSERT_TRUE(Book(*fx_, s.id(), p.id(), &b).ok());
  sv1::RecordAttendanceRequest att;
  att.set_id(b.id());
  att.set_attended(true);
  sv1::Booking out;
  grpc::Status early = fx_->stub->RecordAttendance(Ctx(fx_->admin).get(), att, &out);
  EXPECT_EQ(early.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << "before the session began";
  // Let the visit happen: move it to yesterday (the test's time machine).
  Sql("UPDATE sessions SET session_date = current_date - 1 WHERE id = '" + s.id() + "'");
  Sql("UPDATE bookings SET session_date = current_date - 1 WHERE id = '" + b.id() + "'");
  // The host partner records it.
  std::string host = Token(Role::kPartner, "host", *org_);
  ASSERT_TRUE(fx_->stub->RecordAttendance(Ctx(host).get(), att, &out).ok());
  EXPECT_EQ(out.status(), sv1::BOOKING_STATUS_ATTENDED);

  sv1::ListEnduringContactsRequest lc;
  lc.set_participant_id(p.id());
  sv1::ListEnduringContactsResponse contacts;
  std::string self = Token(Role::kParticipant, p.id());
  ASSERT_TRUE(fx_->stub->ListEnduringContacts(Ctx(self).get(), lc, &contacts).ok());
  ASSERT_EQ(contacts.contacts_size(), 1);
  EXPECT_EQ(contacts.contacts(0).host_contact_id(), s.host_contact_id());
  EXPECT_EQ(contacts.contacts(0).organisation_name(), "Scheduling Trust");

  // The connector arranges the next visit with that host: pending until accepted.
  sv1::CreateSessionRequest arrange;
  sv1::Session* next = arrange.mutable_session();
  next->set_kind(sv1::SESSION_KIND_FRONTLINE_VISIT);
  next->set_title("Follow-up visit");
  next->set_organisation_id(*org_);
  next->set_host_contact_id(s.host_contact_id());
  next->set_date(DateIn(14));
  next->set_start_time("10:00");
  next->set_end_time("15:00");
  next->add_sites()->set_capacity(1);
  sv1::Session pending;
  ASSERT_TRUE(fx_->stub->CreateSession(Ctx(self).get(), arrange, &pending).ok());
  EXPECT_EQ(pending.status(), sv1::SESSION_STATUS_PENDING_HOST);
  EXPECT_EQ(pending.arranged_by(), p.id());
  sv1::Booking none;
  EXPECT_EQ(Book(*fx_, pending.id(), p.id(), &none, "", self).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  sv1::AcceptSessionRequest accept;
  accept.set_id(pending.id());
  sv1::Session accepted;
  EXPECT_EQ(fx_->stub
                ->AcceptSession(
                    Ctx(Token(Role::kPartner, "x", "00000000-0000-4000-8000-000000000001")).get(),
                    accept, &accepted)
                .error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  ASSERT_TRUE(fx_->stub->AcceptSession(Ctx(host).get(), accept, &accepted).ok());
  EXPECT_EQ(accepted.status(), sv1::SESSION_STATUS_SCHEDULED);
  EXPECT_EQ(accepted.sites(0).confirmed(), 1) << "the arranging connector is booked";

  // With a host never met: refused (on a date they are free).
  next->set_host_contact_id(fx_->CreateHost(*org_, "Never Met"));
  next->set_date(DateIn(15));
  grpc::Status never = fx_->stub->CreateSession(Ctx(self).get(), arrange, &pending);
  EXPECT_EQ(never.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(never.error_message().find("not one of your enduring contacts"), std::string::npos)
      << never.error_message();
}

TEST_F(Scheduling, AttendanceIsCorrectedAndARetryChangesNothing) {
  // A host records a visit wrongly, then corrects it; a retry of a record
  // that landed (its answer lost) must not fail nor send a second event. The
  // figures and the enduring contacts follow every correction.
  sv1::Participant p = Register(*fx_, "ATT002");
  sv1::Session s = NewSession(*fx_, *org_, 2, DateIn(3));
  sv1::Booking b;
  ASSERT_TRUE(Book(*fx_, s.id(), p.id(), &b).ok());
  Sql("UPDATE sessions SET session_date = current_date - 2 WHERE id = '" + s.id() + "'");
  Sql("UPDATE bookings SET session_date = current_date - 2 WHERE id = '" + b.id() + "'");
  std::string date;  // the visit's, as stored
  {
    auto conn = db::Conn::Open(fx_->scheduling_db, "test");
    ASSERT_TRUE(conn.ok());
    auto r = (*conn)->Exec(
        "SELECT to_char(session_date, 'YYYY-MM-DD') FROM sessions WHERE id = $1::uuid", {s.id()});
    ASSERT_TRUE(r.ok());
    date = r->String(0, 0);
  }
  auto days = [&]() -> int64_t {
    sv1::GetProgrammeFiguresRequest req;
    req.set_from_date(date);
    req.set_to_date(date);
    sv1::ProgrammeFigures figs;
    grpc::Status st = fx_->stub->GetProgrammeFigures(Ctx(fx_->admin).get(), req, &figs);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return figs.totals().connecting_days();
  };
  auto contacts = [&]() {
    sv1::ListEnduringContactsRequest req;
    req.set_participant_id(p.id());
    sv1::ListEnduringContactsResponse out;
    EXPECT_TRUE(fx_->stub->ListEnduringContacts(Ctx(fx_->admin).get(), req, &out).ok());
    return out.contacts_size();
  };
  std::string host = Token(Role::kPartner, "host", *org_);
  auto record = [&](bool attended, sv1::Booking* out) {
    sv1::RecordAttendanceRequest req;
    req.set_id(b.id());
    req.set_attended(attended);
    return fx_->stub->RecordAttendance(Ctx(host).get(), req, out);
  };
  const int64_t before = days();

  sv1::Booking first, again, corrected, back;
  ASSERT_TRUE(record(true, &first).ok());
  EXPECT_EQ(first.status(), sv1::BOOKING_STATUS_ATTENDED);
  EXPECT_EQ(days(), before + 1);
  EXPECT_EQ(contacts(), 1);
  grpc::Status st = record(true, &again);
  ASSERT_TRUE(st.ok()) << "a retry of a record that landed: " << st.error_message();
  EXPECT_EQ(again.etag(), first.etag()) << "the retry changed the booking";
  EXPECT_EQ(days(), before + 1);

  ASSERT_TRUE(record(false, &corrected).ok());
  EXPECT_EQ(corrected.status(), sv1::BOOKING_STATUS_NO_SHOW);
  EXPECT_NE(corrected.etag(), first.etag());
  EXPECT_EQ(days(), before) << "a no-show is no connecting day";
  EXPECT_EQ(contacts(), 0) << "the host was never met after all";
  ASSERT_TRUE(record(true, &back).ok());
  EXPECT_EQ(back.status(), sv1::BOOKING_STATUS_ATTENDED);
  EXPECT_EQ(days(), before + 1);
  EXPECT_EQ(contacts(), 1);

  // One event per change, none for the retry; the corrections say so.
  ASSERT_TRUE(WaitForOutboxDrained(fx_->scheduling_db));
  std::vector<std::pair<std::string, std::string>> seen;  // (verb, reason)
  for (const auto& e : ReadStream(fx_->nats_url, fx_->scheduling_stream)) {
    if (e.headers.at("ce-subject") != b.id()) continue;
    events::v1::BookingChanged bc;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(e.data, &bc).ok()) << e.data;
    seen.emplace_back(e.subject.substr(e.subject.rfind('.') + 1), bc.reason());
  }
  std::vector<std::pair<std::string, std::string>> want = {
      {"confirmed", ""},
      {"attended", ""},
      {"no_show", "corrected from BOOKING_STATUS_ATTENDED"},
      {"attended", "corrected from BOOKING_STATUS_NO_SHOW"}};
  EXPECT_EQ(seen, want);

  // Neither record applies to a booking that was never confirmed.
  sv1::CancelBookingRequest cancel;
  sv1::Booking other;
  ASSERT_TRUE(Book(*fx_, NewSession(*fx_, *org_, 2, DateIn(4)).id(), p.id(), &other).ok());
  cancel.set_id(other.id());
  ASSERT_TRUE(fx_->stub->CancelBooking(Ctx(fx_->admin).get(), cancel, &other).ok());
  sv1::RecordAttendanceRequest req;
  req.set_id(other.id());
  req.set_attended(false);
  st = fx_->stub->RecordAttendance(Ctx(fx_->admin).get(), req, &other);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("CANCELLED"), std::string::npos) << st.error_message();
}

TEST_F(Scheduling, ALeaversPendingVisitsAreCancelledAndTheyArrangeNoMore) {
  // A connector arranges a visit and leaves before the host accepts: the
  // host could never accept it (the arranger cannot be booked), so the
  // deactivation cancels it and the host hears of it. A leaver's token
  // that is still valid arranges nothing more.
  std::string leaver = Register(*fx_, "ARR001").id();
  sv1::Session pending = ArrangedVisit(*fx_, *org_, leaver, DateIn(20));
  sv1::DeactivateParticipantRequest deactivate;
  deactivate.set_id(leaver);
  sv1::Participant gone;
  ASSERT_TRUE(fx_->stub->DeactivateParticipant(Ctx(fx_->admin).get(), deactivate, &gone).ok());

  sv1::GetSessionRequest get;
  get.set_id(pending.id());
  sv1::Session now;
  ASSERT_TRUE(fx_->stub->GetSession(Ctx(fx_->admin).get(), get, &now).ok());
  EXPECT_EQ(now.status(), sv1::SESSION_STATUS_CANCELLED);
  ASSERT_TRUE(WaitForOutboxDrained(fx_->scheduling_db));
  int cancelled = 0;
  for (const auto& e : ReadStream(fx_->nats_url, fx_->scheduling_stream)) {
    if (e.headers.at("ce-subject") != pending.id() ||
        e.subject.find(".session.cancelled") == std::string::npos) {
      continue;
    }
    events::v1::SessionCancelled sc;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(e.data, &sc).ok()) << e.data;
    EXPECT_EQ(sc.reason(), "the connector who arranged it left the programme");
    EXPECT_EQ(sc.session().status(), sv1::SESSION_STATUS_CANCELLED);
    ++cancelled;
  }
  EXPECT_EQ(cancelled, 1);

  std::string host = Token(Role::kPartner, "host", *org_);
  sv1::AcceptSessionRequest accept;
  accept.set_id(pending.id());
  sv1::Session out;
  grpc::Status st = fx_->stub->AcceptSession(Ctx(host).get(), accept, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("CANCELLED"), std::string::npos) << st.error_message();

  sv1::CreateSessionRequest again;
  *again.mutable_session() = pending;
  again.mutable_session()->clear_id();
  again.mutable_session()->set_date(DateIn(21));
  st = fx_->stub->CreateSession(Ctx(Token(Role::kParticipant, leaver)).get(), again, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("INACTIVE"), std::string::npos) << st.error_message();
  // Nor can a token for someone who was never registered.
  std::string stranger = "00000000-0000-4000-8000-00000000abcd";
  st = fx_->stub->CreateSession(Ctx(Token(Role::kParticipant, stranger)).get(), again, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  EXPECT_NE(st.error_message().find(stranger), std::string::npos) << st.error_message();
}

TEST_F(Scheduling, ArrangingAVisitOnADateAlreadyTakenIsRefused) {
  // A connector already out on a frontline visit that day could never have
  // a visit they arrange for it accepted: refused at once, naming the rule.
  std::string who = Register(*fx_, "ARR002").id();
  sv1::Session first = ArrangedVisit(*fx_, *org_, who, DateIn(30));
  sv1::Session booked = NewSession(*fx_, *org_, 3, DateIn(31));
  sv1::Booking b;
  ASSERT_TRUE(Book(*fx_, booked.id(), who, &b).ok());
  sv1::CreateSessionRequest req;
  *req.mutable_session() = first;
  req.mutable_session()->clear_id();
  req.mutable_session()->set_date(DateIn(31));
  sv1::Session out;
  grpc::Status st = fx_->stub->CreateSession(Ctx(Token(Role::kParticipant, who)).get(), req, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("session.date"), std::string::npos) << st.error_message();
  EXPECT_NE(st.error_message().find(b.id()), std::string::npos) << st.error_message();
  req.mutable_session()->set_date(DateIn(32));
  st = fx_->stub->CreateSession(Ctx(Token(Role::kParticipant, who)).get(), req, &out);
  EXPECT_TRUE(st.ok()) << "another date is free: " << st.error_message();
}

TEST_F(Scheduling, ABookingIsNotCancelledNorMovedOnceItsSessionBegan) {
  // A seat freed once the visit is under way could only be handed to
  // someone waiting for a visit they can no longer join: the booking stays,
  // to be recorded as attended or a no-show, and nobody is promoted.
  sv1::Session s = NewSession(*fx_, *org_, 1, DateIn(6));
  sv1::Session later = NewSession(*fx_, *org_, 5, DateIn(7));
  sv1::Booking held, waiting;
  ASSERT_TRUE(Book(*fx_, s.id(), Register(*fx_, "BEGAN1").id(), &held).ok());
  ASSERT_TRUE(Book(*fx_, s.id(), Register(*fx_, "BEGAN2").id(), &waiting).ok());
  ASSERT_EQ(waiting.status(), sv1::BOOKING_STATUS_WAITLISTED);
  Sql("UPDATE sessions SET session_date = current_date - 1 WHERE id = '" + s.id() + "'");
  Sql("UPDATE bookings SET session_date = current_date - 1 WHERE session_id = '" + s.id() + "'");

  sv1::CancelBookingRequest cancel;
  cancel.set_id(held.id());
  sv1::Booking out;
  grpc::Status st = fx_->stub->CancelBooking(Ctx(fx_->admin).get(), cancel, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("began"), std::string::npos) << st.error_message();
  sv1::RescheduleBookingRequest move;
  move.set_id(held.id());
  move.set_session_id(later.id());
  st = fx_->stub->RescheduleBooking(Ctx(fx_->admin).get(), move, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("began"), std::string::npos) << st.error_message();
  for (const sv1::Booking& b : SessionBookings(*fx_, s.id())) {
    EXPECT_EQ(b.status(),
              b.id() == held.id() ? sv1::BOOKING_STATUS_CONFIRMED : sv1::BOOKING_STATUS_WAITLISTED)
        << "nothing changed";
  }
  EXPECT_EQ(Sql("SELECT count(*) FROM bookings WHERE session_id = '" + later.id() + "'"), 0);
}

TEST_F(Scheduling, UpdatingASessionKeepsItsBookingsRulesAndFillsNewSeatsInOrder) {
  // The host can take a third visitor: the first person waiting is
  // confirmed, the next still waits. Fewer seats than are confirmed, a new
  // date under live bookings, other sites or a stale etag are refused, and
  // nothing changes.
  sv1::Session s = NewSession(*fx_, *org_, 2, DateIn(40));
  std::vector<sv1::Booking> b(4);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(Book(*fx_, s.id(), Register(*fx_, absl::StrCat("UPD00", i)).id(), &b[i]).ok());
  }
  ASSERT_EQ(b[2].status(), sv1::BOOKING_STATUS_WAITLISTED);
  auto update = [&](const sv1::Session& from, const std::vector<std::string>& paths,
                    const std::function<void(sv1::Session*)>& change, sv1::Session* out,
                    const std::string& token = "") {
    sv1::UpdateSessionRequest req;
    *req.mutable_session() = from;
    change(req.mutable_session());
    for (const auto& p : paths) req.mutable_update_mask()->add_paths(p);
    return fx_->stub->UpdateSession(Ctx(token.empty() ? fx_->admin : token).get(), req, out);
  };
  sv1::Session bigger;
  grpc::Status st = update(
      s, {"title", "sites"},
      [](sv1::Session* x) {
        x->set_title("Ward visit, three places");
        x->mutable_sites(0)->set_capacity(3);
        x->mutable_sites(0)->set_confirmed(99);  // output only: ignored
      },
      &bigger);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(bigger.title(), "Ward visit, three places");
  EXPECT_EQ(bigger.sites(0).capacity(), 3);
  EXPECT_EQ(bigger.sites(0).confirmed(), 3);
  EXPECT_EQ(bigger.sites(0).waitlisted(), 1);
  EXPECT_NE(bigger.etag(), s.etag());
  std::map<std::string, sv1::BookingStatus> now;
  for (const sv1::Booking& x : SessionBookings(*fx_, s.id())) now[x.id()] = x.status();
  EXPECT_EQ(now[b[2].id()], sv1::BOOKING_STATUS_CONFIRMED) << "the first waiting";
  EXPECT_EQ(now[b[3].id()], sv1::BOOKING_STATUS_WAITLISTED) << "the next still waits";

  sv1::Session out;
  auto expect = [&](grpc::Status got, grpc::StatusCode code, const std::string& names) {
    EXPECT_EQ(got.error_code(), code) << got.error_message();
    EXPECT_NE(got.error_message().find(names), std::string::npos) << got.error_message();
  };
  expect(update(
             s, {"title"}, [](sv1::Session* x) { x->set_title("Stale"); }, &out),
         grpc::StatusCode::ABORTED, "etag");
  expect(
      update(
          bigger, {"sites"}, [](sv1::Session* x) { x->mutable_sites(0)->set_capacity(2); }, &out),
      grpc::StatusCode::FAILED_PRECONDITION, "session.sites[0].capacity");
  expect(update(
             bigger, {"date"}, [](sv1::Session* x) { x->set_date(DateIn(41)); }, &out),
         grpc::StatusCode::FAILED_PRECONDITION, "session.date");
  expect(update(
             bigger, {"sites"}, [](sv1::Session* x) { x->mutable_sites(0)->set_name("Annexe"); },
             &out),
         grpc::StatusCode::INVALID_ARGUMENT, "session.sites");
  expect(update(
             bigger, {"end_time"}, [](sv1::Session* x) { x->set_end_time("08:00"); }, &out),
         grpc::StatusCode::INVALID_ARGUMENT, "session.end_time");
  expect(update(
             bigger, {"status"}, [](sv1::Session*) {}, &out),
         grpc::StatusCode::INVALID_ARGUMENT, "update_mask");
  expect(update(
             bigger, {"title"}, [](sv1::Session* x) { x->set_title("Not yours"); }, &out,
             Token(Role::kPartner, "x", "00000000-0000-4000-8000-000000000001")),
         grpc::StatusCode::PERMISSION_DENIED, "partner organisation");
  sv1::GetSessionRequest get;
  get.set_id(s.id());
  ASSERT_TRUE(fx_->stub->GetSession(Ctx(fx_->admin).get(), get, &out).ok());
  EXPECT_EQ(out.etag(), bigger.etag()) << "a refused change changed the session";

  // The partner itself may change its session; the same values again change nothing.
  std::string host = Token(Role::kPartner, "host", *org_);
  sv1::Session later;
  ASSERT_TRUE(update(
                  bigger, {"start_time", "end_time"},
                  [](sv1::Session* x) {
                    x->set_start_time("10:00");
                    x->set_end_time("16:00");
                  },
                  &later, host)
                  .ok());
  EXPECT_EQ(later.start_time(), "10:00");
  sv1::Session same;
  ASSERT_TRUE(update(
                  later, {"start_time"}, [](sv1::Session*) {}, &same)
                  .ok());
  EXPECT_EQ(same.etag(), later.etag());

  // With no bookings, the day itself can move.
  sv1::Session empty = NewSession(*fx_, *org_, 2, DateIn(42));
  sv1::Session moved;
  ASSERT_TRUE(update(
                  empty, {"date"}, [](sv1::Session* x) { x->set_date(DateIn(43)); }, &moved)
                  .ok());
  EXPECT_EQ(moved.date(), DateIn(43));

  // Events: session.updated naming what changed, and the promotion.
  ASSERT_TRUE(WaitForOutboxDrained(fx_->scheduling_db));
  std::vector<std::vector<std::string>> updates;
  bool promoted = false;
  for (const auto& e : ReadStream(fx_->nats_url, fx_->scheduling_stream)) {
    if (absl::EndsWith(e.subject, ".session.updated") && e.headers.at("ce-subject") == s.id()) {
      events::v1::SessionUpdated su;
      ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(e.data, &su).ok()) << e.data;
      updates.emplace_back(su.changed_fields().begin(), su.changed_fields().end());
    }
    promoted |=
        absl::EndsWith(e.subject, ".booking.promoted") && e.headers.at("ce-subject") == b[2].id();
  }
  std::vector<std::vector<std::string>> want = {{"title", "sites"}, {"start_time", "end_time"}};
  EXPECT_EQ(updates, want);
  EXPECT_TRUE(promoted);
}

TEST_F(Scheduling, CompletingASessionTellsThoseStillWaitingTheyGotNoSeat) {
  // Once the visit has taken place the programme team completes it: the
  // confirmed keep their bookings (for attendance), whoever still waits is
  // told, one booking.cancelled each, and the counters say so.
  sv1::Session s = NewSession(*fx_, *org_, 1, DateIn(8));
  std::vector<sv1::Booking> b(3);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(Book(*fx_, s.id(), Register(*fx_, absl::StrCat("DONE0", i)).id(), &b[i]).ok());
  }
  sv1::CompleteSessionRequest complete;
  complete.set_id(s.id());
  sv1::Session out;
  grpc::Status st = fx_->stub->CompleteSession(Ctx(fx_->admin).get(), complete, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << "not ended yet";
  Sql("UPDATE sessions SET session_date = current_date - 1 WHERE id = '" + s.id() + "'");
  Sql("UPDATE bookings SET session_date = current_date - 1 WHERE session_id = '" + s.id() + "'");
  st = fx_->stub->CompleteSession(Ctx(fx_->admin).get(), complete, &out);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(out.status(), sv1::SESSION_STATUS_COMPLETED);
  EXPECT_EQ(out.sites(0).confirmed(), 1);
  EXPECT_EQ(out.sites(0).waitlisted(), 0);
  for (const sv1::Booking& x : SessionBookings(*fx_, s.id())) {
    EXPECT_EQ(x.status(),
              x.id() == b[0].id() ? sv1::BOOKING_STATUS_CONFIRMED : sv1::BOOKING_STATUS_CANCELLED);
  }
  ASSERT_TRUE(WaitForOutboxDrained(fx_->scheduling_db));
  auto events = BookingEventsOf(*fx_, s.id(), 3);  // each booking's latest
  for (int i = 1; i < 3; ++i) {
    EXPECT_EQ(events[b[i].id()].booking().status(), sv1::BOOKING_STATUS_CANCELLED);
    EXPECT_EQ(events[b[i].id()].reason(), "the session took place; no seat became free");
  }
  EXPECT_EQ(fx_->stub->CompleteSession(Ctx(fx_->admin).get(), complete, &out).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION)
      << "completed twice";
}

TEST_F(Scheduling, AConnectorWithdrawsAVisitTheyArrangedUntilTheHostAccepts) {
  std::string who = Register(*fx_, "ARR003").id();
  std::string other = Register(*fx_, "ARR004").id();
  sv1::Session pending = ArrangedVisit(*fx_, *org_, who, DateIn(33));
  sv1::CancelSessionRequest req;
  req.set_id(pending.id());
  req.set_reason("clashes with a select committee");
  sv1::Session out;
  grpc::Status st =
      fx_->stub->CancelSession(Ctx(Token(Role::kParticipant, other)).get(), req, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  st = fx_->stub->CancelSession(Ctx(Token(Role::kParticipant, who)).get(), req, &out);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(out.status(), sv1::SESSION_STATUS_CANCELLED);
  // A session the programme team made is theirs to cancel, not a connector's.
  sv1::Session team = NewSession(*fx_, *org_, 2, DateIn(34));
  req.set_id(team.id());
  st = fx_->stub->CancelSession(Ctx(Token(Role::kParticipant, who)).get(), req, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  // Once the host accepted, others may have booked: the arranger cancels
  // their own booking instead.
  sv1::Session accepted = ArrangedVisit(*fx_, *org_, other, DateIn(35));
  sv1::AcceptSessionRequest accept;
  accept.set_id(accepted.id());
  ASSERT_TRUE(fx_->stub->AcceptSession(Ctx(fx_->admin).get(), accept, &out).ok());
  req.set_id(accepted.id());
  st = fx_->stub->CancelSession(Ctx(Token(Role::kParticipant, other)).get(), req, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_NE(st.error_message().find("cancel your booking"), std::string::npos)
      << st.error_message();
}

TEST_F(Scheduling, AParticipantIsFoundByStaffNumber) {
  // An HR system knows staff by number: it finds the connector to deactivate.
  sv1::Participant p = Register(*fx_, "HR0042");
  sv1::ListParticipantsRequest list;
  list.set_staff_number("hr0042");
  sv1::ListParticipantsResponse page;
  ASSERT_TRUE(fx_->stub->ListParticipants(Ctx(fx_->admin).get(), list, &page).ok());
  ASSERT_EQ(page.participants_size(), 1);
  EXPECT_EQ(page.participants(0).id(), p.id());
  list.set_staff_number("HR0043");
  ASSERT_TRUE(fx_->stub->ListParticipants(Ctx(fx_->admin).get(), list, &page).ok());
  EXPECT_EQ(page.participants_size(), 0);
  list.set_staff_number("HR 42!");
  grpc::Status st = fx_->stub->ListParticipants(Ctx(fx_->admin).get(), list, &page);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("staff_number: must be 4–12 letters and digits"),
            std::string::npos)
      << st.error_message();
}

TEST_F(Scheduling, AParticipantIsFoundByNameIgnoringCaseInNameOrder) {
  // The programme team looks a connector up by the start of their name; the
  // list reads as the alphabet does, whatever the capitals.
  const std::vector<std::pair<std::string, std::string>> people = {
      {"NM0005", "zqx dogwood"}, {"NM0003", "Zqx Cedar"}, {"NM0002", "ZQX Birch"},
      {"NM0004", "zqx cedar"},   {"NM0001", "Zqx alder"}, {"NM0006", "Zqy after"}};
  for (const auto& [number, name] : people) {
    sv1::RegisterParticipantRequest req;
    sv1::Participant* p = req.mutable_participant();
    p->set_staff_number(number);
    p->set_display_name(name);
    p->set_email(number + "@dept.example.gov.uk");
    p->set_grade(sv1::GRADE_ANALYST);
    p->set_directorate("Names");
    sv1::Participant out;
    grpc::Status s = fx_->stub->RegisterParticipant(Ctx(fx_->admin).get(), req, &out);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  sv1::ListParticipantsRequest list;
  list.set_name_prefix("zQX ");
  list.set_page_size(2);
  std::vector<std::string> names;
  grpc::Status walked = testing::EveryPage<sv1::ListParticipantsResponse>(
      list,
      [&](const sv1::ListParticipantsRequest& r, sv1::ListParticipantsResponse* page) {
        return fx_->stub->ListParticipants(Ctx(fx_->admin).get(), r, page);
      },
      [&](const sv1::ListParticipantsResponse& page) {
        for (const auto& p : page.participants()) names.push_back(p.display_name());
      });
  ASSERT_TRUE(walked.ok()) << walked.error_message();
  EXPECT_EQ(names, (std::vector<std::string>{"Zqx alder", "ZQX Birch", "Zqx Cedar", "zqx cedar",
                                             "zqx dogwood"}));
  // The token belongs to its filters; a prefix too long is named.
  list.set_name_prefix(std::string(201, 'z'));
  list.clear_page_token();
  sv1::ListParticipantsResponse page;
  grpc::Status st = fx_->stub->ListParticipants(Ctx(fx_->admin).get(), list, &page);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("name_prefix"), std::string::npos) << st.error_message();
}

TEST_F(Scheduling, AConnectorUpdatesTheirDetailsByMaskAndEtag) {
  // A connector moves directorate: they change it themselves, with the etag of
  // their last read; a stale etag, a repeat or someone else changes nothing.
  sv1::Participant p = Register(*fx_, "UP0001", "Primary Care", sv1::GRADE_ANALYST);
  const std::string mine = Token(Role::kParticipant, p.id());
  sv1::UpdateParticipantRequest req;
  req.mutable_participant()->set_id(p.id());
  req.mutable_participant()->set_etag(p.etag());
  req.mutable_participant()->set_directorate("Social Care");
  req.mutable_participant()->set_display_name("Not In The Mask");
  req.mutable_update_mask()->add_paths("directorate");
  sv1::Participant moved;
  grpc::Status st = fx_->stub->UpdateParticipant(Ctx(mine).get(), req, &moved);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(moved.directorate(), "Social Care");
  EXPECT_EQ(moved.display_name(), p.display_name());
  EXPECT_EQ(moved.grade(), sv1::GRADE_ANALYST);
  EXPECT_NE(moved.etag(), p.etag());

  // The same change again, with the new etag: nothing to write, same etag.
  req.mutable_participant()->set_etag(moved.etag());
  sv1::Participant again;
  ASSERT_TRUE(fx_->stub->UpdateParticipant(Ctx(mine).get(), req, &again).ok());
  EXPECT_EQ(again.etag(), moved.etag());

  // The etag read before the move is stale.
  req.mutable_participant()->set_etag(p.etag());
  req.mutable_participant()->set_directorate("Finance");
  sv1::Participant out;
  st = fx_->stub->UpdateParticipant(Ctx(mine).get(), req, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_TRUE(absl::StrContains(st.error_message(), "etag: the participant changed"))
      << st.error_message();
  EXPECT_TRUE(absl::StrContains(st.error_message(), moved.etag())) << st.error_message();

  // Another connector may not change them.
  req.mutable_participant()->set_etag(moved.etag());
  sv1::Participant other = Register(*fx_, "UP0002");
  st = fx_->stub->UpdateParticipant(Ctx(Token(Role::kParticipant, other.id())).get(), req, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();

  sv1::GetParticipantRequest get;
  get.set_id(p.id());
  sv1::Participant now;
  ASSERT_TRUE(fx_->stub->GetParticipant(Ctx(fx_->admin).get(), get, &now).ok());
  EXPECT_EQ(now.directorate(), "Social Care");
  EXPECT_EQ(now.etag(), moved.etag());

  // One event, for the one change, naming the field that changed. The
  // refused calls committed nothing; waiting for a later event of ours (the
  // second registration) shows the stream has everything before it.
  std::vector<events::v1::ParticipantUpdated> updates;
  bool other_seen = false;
  absl::Time until = absl::Now() + absl::Seconds(10);
  while (!other_seen && absl::Now() < until) {
    updates.clear();
    for (const auto& e : ReadStream(fx_->nats_url, fx_->scheduling_stream)) {
      if (e.headers.count("ce-subject") == 0) continue;
      if (e.headers.at("ce-subject") == other.id()) other_seen = true;
      if (e.subject.find(".participant.updated") == std::string::npos) continue;
      events::v1::ParticipantUpdated u;
      ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(e.data, &u).ok()) << e.data;
      if (u.participant().id() == p.id()) updates.push_back(u);
    }
    if (!other_seen) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(other_seen);
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_EQ(std::vector<std::string>(updates[0].changed_fields().begin(),
                                     updates[0].changed_fields().end()),
            std::vector<std::string>{"directorate"});
  EXPECT_EQ(updates[0].participant().etag(), moved.etag());
}

TEST_F(Scheduling, SessionsAreListedByHostAndByFreeSeats) {
  // A host leaves the partner: their visits are found to give them a new
  // host. A connector looks for visits they would get a seat on: not a full
  // one, nor one cancelled (its seats all free) or already begun.
  std::string host = fx_->CreateHost(*org_, "Leaving Host");
  std::vector<sv1::Session> hosted;
  for (int i = 0; i < 4; ++i) {
    sv1::Session s = NewSession(*fx_, *org_, 1, DateIn(120 + i));
    sv1::UpdateSessionRequest req;
    *req.mutable_session() = s;
    req.mutable_session()->set_host_contact_id(host);
    req.mutable_update_mask()->add_paths("host_contact_id");
    sv1::Session out;
    grpc::Status st = fx_->stub->UpdateSession(Ctx(fx_->admin).get(), req, &out);
    ASSERT_TRUE(st.ok()) << st.error_message();
    hosted.push_back(out);
  }
  sv1::Booking b;
  ASSERT_TRUE(Book(*fx_, hosted[0].id(), Register(*fx_, "FREE01").id(), &b).ok());  // now full
  sv1::CancelSessionRequest cancel;
  cancel.set_id(hosted[2].id());
  cancel.set_reason("host left");
  sv1::Session cancelled;
  ASSERT_TRUE(fx_->stub->CancelSession(Ctx(fx_->admin).get(), cancel, &cancelled).ok());
  // Began at midnight today (sessions cannot be made in the past through the API).
  ASSERT_EQ(Sql("UPDATE sessions SET session_date = (now() AT TIME ZONE 'Europe/London')::date, "
                "start_time = '00:00', end_time = '23:59' WHERE id = '" +
                hosted[3].id() + "'"),
            1);
  auto list = [&](bool free_only, int status = 0) {
    sv1::ListSessionsRequest req;
    req.set_host_contact_id(host);
    req.set_with_free_seats(free_only);
    req.set_status(static_cast<sv1::SessionStatus>(status));
    sv1::ListSessionsResponse out;
    grpc::Status st = fx_->stub->ListSessions(Ctx(fx_->admin).get(), req, &out);
    EXPECT_TRUE(st.ok()) << st.error_message();
    std::set<std::string> ids;
    for (const auto& s : out.sessions()) ids.insert(s.id());
    return ids;
  };
  EXPECT_EQ(list(false), (std::set<std::string>{hosted[0].id(), hosted[1].id(), hosted[2].id(),
                                                hosted[3].id()}));
  EXPECT_EQ(list(true), (std::set<std::string>{hosted[1].id()}))
      << "the full, the cancelled and the begun ones are left out";
  EXPECT_EQ(list(true, sv1::SESSION_STATUS_SCHEDULED), (std::set<std::string>{hosted[1].id()}));
  sv1::ListSessionsRequest cancelled_free;
  cancelled_free.set_with_free_seats(true);
  cancelled_free.set_status(sv1::SESSION_STATUS_CANCELLED);
  sv1::ListSessionsResponse none;
  grpc::Status refused = fx_->stub->ListSessions(Ctx(fx_->admin).get(), cancelled_free, &none);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.error_message().find("status"), std::string::npos) << refused.error_message();
  EXPECT_NE(refused.error_message().find("with_free_seats"), std::string::npos)
      << refused.error_message();
  sv1::ListSessionsRequest bad;
  bad.set_host_contact_id("someone");
  sv1::ListSessionsResponse out;
  grpc::Status st = fx_->stub->ListSessions(Ctx(fx_->admin).get(), bad, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("host_contact_id"), std::string::npos) << st.error_message();
}

TEST_F(Scheduling, ARetriedMoveReturnsTheBookingItMade) {
  // The answer to a move is lost and the client retries with the same
  // request_id: it gets the booking the move made (not an error about the
  // old booking, now cancelled), and the move happened once.
  std::string who = Register(*fx_, "RETRY01").id();
  sv1::Session from = NewSession(*fx_, *org_, 3, DateIn(130));
  sv1::Session to = NewSession(*fx_, *org_, 3, DateIn(131));
  sv1::Booking b;
  ASSERT_TRUE(Book(*fx_, from.id(), who, &b).ok());
  sv1::RescheduleBookingRequest req;
  req.set_id(b.id());
  req.set_session_id(to.id());
  req.set_request_id("move-7f3a");
  sv1::Booking first, again;
  ASSERT_TRUE(fx_->stub->RescheduleBooking(Ctx(fx_->admin).get(), req, &first).ok());
  grpc::Status st = fx_->stub->RescheduleBooking(Ctx(fx_->admin).get(), req, &again);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(again.id(), first.id());
  EXPECT_EQ(again.session_id(), to.id());
  EXPECT_EQ(SessionBookings(*fx_, to.id()).size(), 1u);
  ASSERT_TRUE(WaitForOutboxDrained(fx_->scheduling_db));
  int moves = 0;
  for (const auto& e : ReadStream(fx_->nats_url, fx_->scheduling_stream)) {
    moves += absl::EndsWith(e.subject, ".booking.rescheduled") &&
             e.headers.at("ce-subject") == first.id();
  }
  EXPECT_EQ(moves, 1);
  // Two copies of one move at once: one moves, both get its booking.
  sv1::Booking second;
  ASSERT_TRUE(Book(*fx_, from.id(), Register(*fx_, "RETRY03").id(), &second).ok());
  sv1::RescheduleBookingRequest twice = req;
  twice.set_id(second.id());
  twice.set_request_id("move-9c1e");
  sv1::Booking got[2];
  std::future<grpc::Status> calls[2];
  for (int i = 0; i < 2; ++i) {
    calls[i] = std::async(std::launch::async, [&, i] {
      return fx_->stub->RescheduleBooking(Ctx(fx_->admin).get(), twice, &got[i]);
    });
  }
  for (int i = 0; i < 2; ++i) {
    grpc::Status s = calls[i].get();
    EXPECT_TRUE(s.ok()) << s.error_code() << " " << s.error_message();
  }
  EXPECT_EQ(got[0].id(), got[1].id());
  EXPECT_EQ(SessionBookings(*fx_, to.id()).size(), 2u);
  // The same key for another move is refused, naming it.
  sv1::Booking other;
  ASSERT_TRUE(Book(*fx_, from.id(), Register(*fx_, "RETRY02").id(), &other).ok());
  req.set_id(other.id());
  st = fx_->stub->RescheduleBooking(Ctx(fx_->admin).get(), req, &again);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS) << st.error_message();
  EXPECT_NE(st.error_message().find("request_id"), std::string::npos) << st.error_message();
}

TEST_F(Scheduling, ARetriedBookingAnswersWithItsPlaceNow) {
  // A waitlisted booking's answer is lost and the client retries with the
  // same request_id: it gets that booking with its place in the queue as it
  // is now, not a second booking; once promoted, a retry says confirmed.
  sv1::Session s = NewSession(*fx_, *org_, 1, DateIn(132));
  sv1::Booking seat, queued, behind;
  ASSERT_TRUE(Book(*fx_, s.id(), Register(*fx_, "PLACE01").id(), &seat).ok());
  std::string who = Register(*fx_, "PLACE02").id();
  ASSERT_TRUE(Book(*fx_, s.id(), who, &queued, "book-place-2").ok());
  ASSERT_TRUE(Book(*fx_, s.id(), Register(*fx_, "PLACE03").id(), &behind).ok());
  EXPECT_EQ(queued.status(), sv1::BOOKING_STATUS_WAITLISTED);
  EXPECT_EQ(queued.waitlist_position(), 1);
  EXPECT_EQ(behind.waitlist_position(), 2);

  sv1::Booking again;
  ASSERT_TRUE(Book(*fx_, s.id(), who, &again, "book-place-2").ok());
  EXPECT_EQ(again.id(), queued.id());
  EXPECT_EQ(again.status(), sv1::BOOKING_STATUS_WAITLISTED);
  EXPECT_EQ(again.waitlist_position(), 1);
  sv1::CancelBookingRequest cancel;
  cancel.set_id(seat.id());
  sv1::Booking cancelled;
  ASSERT_TRUE(fx_->stub->CancelBooking(Ctx(fx_->admin).get(), cancel, &cancelled).ok());
  ASSERT_TRUE(Book(*fx_, s.id(), who, &again, "book-place-2").ok());
  EXPECT_EQ(again.id(), queued.id());
  EXPECT_EQ(again.status(), sv1::BOOKING_STATUS_CONFIRMED);
  EXPECT_EQ(again.waitlist_position(), 0);
  EXPECT_EQ(SessionBookings(*fx_, s.id()).size(), 3u);
}

TEST_F(Scheduling, ARequestIdUsedForAnotherBookingIsRefusedNotAnsweredWithIt) {
  // A client that reuses a request_id for another booking (another session,
  // another site, another person) is told so: it does not get the first
  // booking back as if it were the one asked for, and nothing is booked.
  sv1::Session s = NewSession(*fx_, *org_, 2, DateIn(133));
  sv1::Session other = NewSession(*fx_, *org_, 2, DateIn(134));
  std::string who = Register(*fx_, "REUSE01").id();
  sv1::Booking first, again;
  ASSERT_TRUE(Book(*fx_, s.id(), who, &first, "book-reuse-1").ok());

  grpc::Status st = Book(*fx_, other.id(), who, &again, "book-reuse-1");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS) << st.error_message();
  EXPECT_NE(st.error_message().find("request_id"), std::string::npos) << st.error_message();
  ErrorDetails d = DetailsOf(st);
  EXPECT_EQ(d.reason, "REQUEST_ID_REUSED");
  EXPECT_EQ(d.metadata["bookingId"], first.id());
  EXPECT_TRUE(SessionBookings(*fx_, other.id()).empty());

  // Another person's request with that key learns nothing of the booking.
  std::string someone = Register(*fx_, "REUSE02").id();
  st = Book(*fx_, s.id(), someone, &again, "book-reuse-1");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS) << st.error_message();
  d = DetailsOf(st);
  EXPECT_EQ(d.reason, "REQUEST_ID_REUSED");
  EXPECT_EQ(d.metadata.count("bookingId"), 0u);
  EXPECT_EQ(st.error_message().find(first.id()), std::string::npos) << st.error_message();
  EXPECT_EQ(SessionBookings(*fx_, s.id()).size(), 1u);

  // The same request again is still a retry: the same booking.
  ASSERT_TRUE(Book(*fx_, s.id(), who, &again, "book-reuse-1").ok());
  EXPECT_EQ(again.id(), first.id());

  // A department event: the same key for another of its sites is refused.
  sv1::Session event = NewEventSession(*fx_, *org_, DateIn(135), {{"Leeds", 5}, {"London", 5}});
  sv1::BookSessionRequest req;
  req.set_session_id(event.id());
  req.set_participant_id(who);
  req.set_site("Leeds");
  req.set_request_id("book-reuse-2");
  ASSERT_TRUE(fx_->stub->BookSession(Ctx(fx_->admin).get(), req, &first).ok());
  req.set_site("London");
  st = fx_->stub->BookSession(Ctx(fx_->admin).get(), req, &again);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS) << st.error_message();
  EXPECT_EQ(DetailsOf(st).reason, "REQUEST_ID_REUSED");
}

TEST_F(Scheduling, ARequestIdThatMadeAnotherParticipantOrSessionIsRefused) {
  // What a request could not have made (another staff number; a session of
  // another kind) is not handed back for a reused key; a retry still is.
  sv1::RegisterParticipantRequest reg;
  reg.mutable_participant()->set_staff_number("KEYED01");
  reg.mutable_participant()->set_display_name("Keyed One");
  reg.mutable_participant()->set_email("keyed01@dept.example.gov.uk");
  reg.mutable_participant()->set_grade(sv1::GRADE_ANALYST);
  reg.mutable_participant()->set_directorate("Data");
  reg.set_request_id("register-keyed-1");
  sv1::Participant first, again;
  ASSERT_TRUE(fx_->stub->RegisterParticipant(Ctx(fx_->admin).get(), reg, &first).ok());
  ASSERT_TRUE(fx_->stub->RegisterParticipant(Ctx(fx_->admin).get(), reg, &again).ok());
  EXPECT_EQ(again.id(), first.id());
  reg.mutable_participant()->set_staff_number("KEYED02");
  grpc::Status st = fx_->stub->RegisterParticipant(Ctx(fx_->admin).get(), reg, &again);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS) << st.error_message();
  EXPECT_EQ(DetailsOf(st).reason, "REQUEST_ID_REUSED");
  sv1::ListParticipantsRequest list;
  list.set_staff_number("KEYED02");
  sv1::ListParticipantsResponse none;
  ASSERT_TRUE(fx_->stub->ListParticipants(Ctx(fx_->admin).get(), list, &none).ok());
  EXPECT_EQ(none.participants_size(), 0);

  sv1::CreateSessionRequest create;
  sv1::Session* s = create.mutable_session();
  s->set_kind(sv1::SESSION_KIND_FRONTLINE_VISIT);
  s->set_title("Visit");
  s->set_organisation_id(*org_);
  s->set_host_contact_id(fx_->hosts[*org_]);
  s->set_date(DateIn(136));
  s->set_start_time("09:00");
  s->set_end_time("17:00");
  s->add_sites()->set_capacity(2);
  create.set_request_id("create-keyed-1");
  sv1::Session made, other;
  ASSERT_TRUE(fx_->stub->CreateSession(Ctx(fx_->admin).get(), create, &made).ok());
  s->set_kind(sv1::SESSION_KIND_PARTNER_VISIT);
  st = fx_->stub->CreateSession(Ctx(fx_->admin).get(), create, &other);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS) << st.error_message();
  EXPECT_EQ(DetailsOf(st).reason, "REQUEST_ID_REUSED");
}

TEST_F(Scheduling, CancellingASessionCancelsEveryBookingWithAnEventEach) {
  sv1::Session s = NewSession(*fx_, *org_, 2, DateIn(9));
  std::set<std::string> booked;
  for (int i = 0; i < 4; ++i) {
    sv1::Booking b;
    ASSERT_TRUE(Book(*fx_, s.id(), Register(*fx_, "CS000" + std::to_string(i)).id(), &b).ok());
    booked.insert(b.id());
  }
  sv1::CancelSessionRequest req;
  req.set_id(s.id());
  req.set_reason("Host unwell");
  sv1::Session out;
  ASSERT_TRUE(fx_->stub->CancelSession(Ctx(fx_->admin).get(), req, &out).ok());
  EXPECT_EQ(out.status(), sv1::SESSION_STATUS_CANCELLED);
  for (const auto& b : SessionBookings(*fx_, s.id())) {
    EXPECT_EQ(b.status(), sv1::BOOKING_STATUS_CANCELLED);
  }
  std::set<std::string> cancelled_events;
  absl::Time until = absl::Now() + absl::Seconds(10);
  while (cancelled_events.size() < booked.size() && absl::Now() < until) {
    cancelled_events.clear();
    for (const auto& e : ReadStream(fx_->nats_url, fx_->scheduling_stream)) {
      if (e.subject.find(".booking.cancelled") == std::string::npos) continue;
      events::v1::BookingChanged bc;
      ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(e.data, &bc).ok());
      if (bc.session().id() == s.id()) {
        EXPECT_TRUE(cancelled_events.insert(bc.booking().id()).second) << "twice";
        EXPECT_EQ(bc.reason(), "session cancelled: Host unwell");
      }
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(cancelled_events, booked);
}

TEST_F(Scheduling, ProgrammeFiguresOverAGeneratedYearMatchACountMadeDirectly) {
  // A year of attended visits: 40 connectors, 12 organisations, random dates,
  // recorded in no order. From July a third of the connectors have moved
  // directorate and grade, and a quarter of the organisations sector and
  // region: a fact keeps what held on its date, so a group counts a connector
  // (an organisation) by the visits made while in it.
  std::mt19937 rng(2026);
  struct Fact {
    std::string date, participant, org, directorate;
    int sector, region, grade;
  };
  std::vector<Fact> facts;
  const char* dirs[] = {"Primary Care", "Social Care", "Mental Health", "Public Health"};
  for (int i = 0; i < 1500; ++i) {
    int day = rng() % 365;
    absl::CivilDay d = absl::CivilDay(2025, 1, 1) + day;
    int person = rng() % 40, org = rng() % 12;
    const bool later = d >= absl::CivilDay(2025, 7, 1);
    const int role = person + (later && person % 3 == 0 ? 1 : 0);
    const int kind = org + (later && org % 4 == 0 ? 1 : 0);
    facts.push_back({absl::FormatCivilTime(d),
                     absl::StrCat("00000000-0000-4000-8000-0000000000", 10 + person),
                     absl::StrCat("00000000-0000-4000-9000-0000000000", 10 + org), dirs[role % 4],
                     1 + kind % 5, 1 + kind % 7, 1 + role % 4});
  }
  auto conn = db::Conn::Open(fx_->scheduling_db, "test");
  ASSERT_TRUE(conn.ok());
  // The first 300 as if recorded before their chains existed (triggers off),
  // then linked as the migration that added the chains does.
  ASSERT_TRUE((*conn)->ExecScript("SET session_replication_role = replica").ok());
  for (size_t i = 0; i < facts.size(); ++i) {
    const Fact& f = facts[i];
    if (i == 300) {
      ASSERT_TRUE((*conn)->ExecScript("SET session_replication_role = DEFAULT").ok());
      auto linked = (*conn)->Exec("SELECT rebuild_attendance_chains()");
      ASSERT_TRUE(linked.ok()) << linked.status();
      EXPECT_GT(linked->Int(0, 0), 250) << "facts given their places in the chains";
    }
    // Facts reference bookings; give each its own minimal session and booking rows.
    auto r = (*conn)->Exec(
        "WITH p AS (INSERT INTO participants (id, staff_number, display_name, email, grade, "
        "directorate) VALUES ($3::uuid, 'F' || substr(md5($3::uuid::text), 1, 10), 'x', 'x@x.org', "
        "$9, $8) "
        "ON CONFLICT (id) DO UPDATE SET grade = EXCLUDED.grade RETURNING id), "
        "s AS (INSERT INTO sessions (kind, title, organisation_id, session_date, start_time, "
        "end_time, status) VALUES (1, $1::text, $4::uuid, $2::date, '09:00', '17:00', 4) RETURNING "
        "id), "
        "b AS (INSERT INTO bookings (session_id, site, participant_id, status, session_date, kind) "
        "SELECT s.id, $7::text, p.id, 4, $2::date, 1 FROM s, p RETURNING id) "
        "INSERT INTO attendance_facts (booking_id, session_date, participant_id, organisation_id, "
        "sector, region, directorate, grade) SELECT b.id, $2::date, $3::uuid, $4::uuid, $5, $6, "
        "$8, "
        "$9 FROM b",
        {std::to_string(i), f.date, f.participant, f.org, f.sector, f.region, "", f.directorate,
         f.grade});
    ASSERT_TRUE(r.ok()) << r.status();
  }
  // Expected, counted here from the generated data.
  auto expect = [&](const std::string& from, const std::string& to, auto key_of) {
    std::map<std::string, std::tuple<int64_t, std::set<std::string>, std::set<std::string>>> m;
    for (const Fact& f : facts) {
      if (f.date < from || f.date > to) continue;
      auto& [days, people, orgs] = m[key_of(f)];
      ++days;
      people.insert(f.participant);
      orgs.insert(f.org);
    }
    return m;
  };
  auto check = [&](sv1::FiguresGrouping g, const std::string& from, const std::string& to,
                   auto key_of) {
    sv1::GetProgrammeFiguresRequest req;
    req.set_from_date(from);
    req.set_to_date(to);
    req.set_group_by(g);
    sv1::ProgrammeFigures figs;
    grpc::Status st = fx_->stub->GetProgrammeFigures(Ctx(Token(Role::kViewer)).get(), req, &figs);
    ASSERT_TRUE(st.ok()) << st.error_message();
    auto total = expect(from, to, [](const Fact&) { return std::string(); });
    EXPECT_EQ(figs.totals().connecting_days(), std::get<0>(total[""]));
    EXPECT_EQ(figs.totals().connectors(), static_cast<int64_t>(std::get<1>(total[""]).size()));
    EXPECT_EQ(figs.totals().organisations(), static_cast<int64_t>(std::get<2>(total[""]).size()));
    auto groups = expect(from, to, key_of);
    ASSERT_EQ(figs.rows_size(), static_cast<int>(groups.size())) << sv1::FiguresGrouping_Name(g);
    // In the group's order: enum order, else the key's (dates, names).
    std::vector<std::pair<int, std::string>> order;
    for (const auto& row : figs.rows()) {
      pv1::Sector sector;
      pv1::Region region;
      sv1::Grade grade;
      int n = pv1::Sector_Parse(row.key(), &sector)   ? sector
              : pv1::Region_Parse(row.key(), &region) ? region
              : sv1::Grade_Parse(row.key(), &grade)   ? grade
                                                      : 0;
      order.emplace_back(n, row.key());
    }
    EXPECT_TRUE(std::is_sorted(order.begin(), order.end())) << sv1::FiguresGrouping_Name(g);
    for (const auto& row : figs.rows()) {
      auto it = groups.find(row.key());
      ASSERT_NE(it, groups.end()) << row.key();
      EXPECT_EQ(row.connecting_days(), std::get<0>(it->second)) << row.key();
      EXPECT_EQ(row.connectors(), static_cast<int64_t>(std::get<1>(it->second).size()))
          << row.key();
      EXPECT_EQ(row.organisations(), static_cast<int64_t>(std::get<2>(it->second).size()))
          << row.key();
    }
  };
  check(sv1::FIGURES_GROUPING_MONTH, "2025-01-01", "2025-12-31",
        [](const Fact& f) { return f.date.substr(0, 7); });
  check(sv1::FIGURES_GROUPING_QUARTER, "2025-01-01", "2025-12-31", [](const Fact& f) {
    int m = std::stoi(f.date.substr(5, 2));
    return f.date.substr(0, 4) + "-Q" + std::to_string((m - 1) / 3 + 1);
  });
  check(sv1::FIGURES_GROUPING_DIRECTORATE, "2025-03-15", "2025-09-30",
        [](const Fact& f) { return f.directorate; });
  check(sv1::FIGURES_GROUPING_SECTOR, "2025-01-01", "2025-06-30",
        [](const Fact& f) { return pv1::Sector_Name(static_cast<pv1::Sector>(f.sector)); });
  check(sv1::FIGURES_GROUPING_REGION, "2025-02-01", "2025-12-31",
        [](const Fact& f) { return pv1::Region_Name(static_cast<pv1::Region>(f.region)); });
  check(sv1::FIGURES_GROUPING_GRADE, "2025-01-01", "2025-12-31",
        [](const Fact& f) { return sv1::Grade_Name(static_cast<sv1::Grade>(f.grade)); });
  auto check_all = [&] {
    const char* ranges[][2] = {
        {"2025-01-01", "2025-12-31"}, {"2025-02-14", "2025-08-09"}, {"2025-06-30", "2025-07-01"}};
    for (const auto& [from, to] : ranges) {
      SCOPED_TRACE(absl::StrCat(from, " to ", to));
      check(sv1::FIGURES_GROUPING_MONTH, from, to,
            [](const Fact& f) { return f.date.substr(0, 7); });
      check(sv1::FIGURES_GROUPING_QUARTER, from, to, [](const Fact& f) {
        int m = std::stoi(f.date.substr(5, 2));
        return f.date.substr(0, 4) + "-Q" + std::to_string((m - 1) / 3 + 1);
      });
      check(sv1::FIGURES_GROUPING_DIRECTORATE, from, to,
            [](const Fact& f) { return f.directorate; });
      check(sv1::FIGURES_GROUPING_SECTOR, from, to,
            [](const Fact& f) { return pv1::Sector_Name(static_cast<pv1::Sector>(f.sector)); });
      check(sv1::FIGURES_GROUPING_REGION, from, to,
            [](const Fact& f) { return pv1::Region_Name(static_cast<pv1::Region>(f.region)); });
      check(sv1::FIGURES_GROUPING_GRADE, from, to,
            [](const Fact& f) { return sv1::Grade_Name(static_cast<sv1::Grade>(f.grade)); });
    }
  };
  check_all();
  // Corrections take a sixth of the visits back out, in no order.
  std::shuffle(facts.begin(), facts.end(), rng);
  auto booking_of = [&](const Fact& f) {
    auto r = (*conn)->Exec(
        "SELECT booking_id::text FROM attendance_facts WHERE participant_id = $1::uuid AND "
        "organisation_id = $2::uuid AND session_date = $3::date LIMIT 1",
        {f.participant, f.org, f.date});
    EXPECT_TRUE(r.ok() && r->rows() == 1);
    return r.ok() && r->rows() == 1 ? r->String(0, 0) : std::string();
  };
  for (int i = 0; i < 250; ++i) {
    std::string id = booking_of(facts.back());
    ASSERT_TRUE(
        (*conn)->Exec("DELETE FROM attendance_facts WHERE booking_id = $1::uuid", {id}).ok());
    facts.pop_back();
  }
  check_all();
  // A partner sees its own visits' figures only.
  {
    const std::string org = facts.front().org;
    sv1::GetProgrammeFiguresRequest req;
    req.set_from_date("2025-03-01");
    req.set_to_date("2025-10-31");
    req.set_group_by(sv1::FIGURES_GROUPING_DIRECTORATE);
    sv1::ProgrammeFigures figs;
    grpc::Status st =
        fx_->stub->GetProgrammeFigures(Ctx(Token(Role::kPartner, "host", org)).get(), req, &figs);
    ASSERT_TRUE(st.ok()) << st.error_message();
    std::map<std::string, std::pair<int64_t, std::set<std::string>>> want;
    for (const Fact& f : facts) {
      if (f.org != org || f.date < req.from_date() || f.date > req.to_date()) continue;
      ++want[f.directorate].first;
      want[f.directorate].second.insert(f.participant);
    }
    ASSERT_EQ(figs.rows_size(), static_cast<int>(want.size()));
    for (const auto& row : figs.rows()) {
      EXPECT_EQ(row.connecting_days(), want[row.key()].first) << row.key();
      EXPECT_EQ(row.connectors(), static_cast<int64_t>(want[row.key()].second.size())) << row.key();
      EXPECT_EQ(row.organisations(), 1) << row.key();
    }
  }
  // A fact is not moved in place (it would leave its chains behind).
  auto moved =
      (*conn)->Exec("UPDATE attendance_facts SET sector = sector + 1 WHERE booking_id = $1::uuid",
                    {booking_of(facts.front())});
  EXPECT_FALSE(moved.ok());
  EXPECT_TRUE(absl::StrContains(moved.status().message(), "Delete the fact and insert it again"))
      << moved.status();
  // The chains the figures read are those the facts give, link by link.
  ASSERT_TRUE((*conn)->ExecScript("BEGIN").ok());
  auto relinked = (*conn)->Exec("SELECT rebuild_attendance_chains()");
  ASSERT_TRUE(relinked.ok()) << relinked.status();
  EXPECT_EQ(relinked->Int(0, 0), 0) << "facts whose chains were not kept right";
  ASSERT_TRUE((*conn)->ExecScript("ROLLBACK").ok());
  // The figures come from the date index, not a scan of every booking.
  auto plan = (*conn)->Exec(
      "EXPLAIN SELECT count(*) FROM attendance_facts WHERE session_date BETWEEN '2025-03-01' AND "
      "'2025-03-31'");
  ASSERT_TRUE(plan.ok());
  (void)(*conn)->ExecScript("ANALYZE attendance_facts");
  plan = (*conn)->Exec(
      "EXPLAIN SELECT count(*) FROM attendance_facts WHERE session_date BETWEEN '2025-03-01' AND "
      "'2025-03-03'");
  ASSERT_TRUE(plan.ok());
  std::string text;
  for (int i = 0; i < plan->rows(); ++i) text += plan->String(i, 0) + "\n";
  EXPECT_NE(text.find("attendance_facts_by_date"), std::string::npos) << text;
}

TEST_F(Scheduling, BadInputNamesTheFieldAndChangesNothing) {
  int64_t sessions_before = Sql("SELECT count(*) FROM sessions");
  auto create = [&](auto mutate) {
    sv1::CreateSessionRequest req;
    sv1::Session* s = req.mutable_session();
    s->set_kind(sv1::SESSION_KIND_FRONTLINE_VISIT);
    s->set_title("Bad");
    s->set_organisation_id(*org_);
    s->set_date(DateIn(3));
    s->set_start_time("10:00");
    s->set_end_time("12:00");
    s->add_sites()->set_capacity(2);
    mutate(s);
    sv1::Session out;
    return fx_->stub->CreateSession(Ctx(fx_->admin).get(), req, &out);
  };
  auto expect_invalid = [](const grpc::Status& st, const std::string& field) {
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_NE(st.error_message().find(field), std::string::npos) << st.error_message();
  };
  expect_invalid(create([](sv1::Session* s) { s->set_date(DateIn(-1)); }),
                 "session.date: must be today");
  expect_invalid(create([](sv1::Session* s) { s->set_date("2026-02-30"); }), "session.date");
  expect_invalid(create([](sv1::Session* s) { s->set_end_time("09:00"); }),
                 "session.end_time: must be after start_time");
  expect_invalid(create([](sv1::Session* s) { s->set_start_time("25:00"); }), "session.start_time");
  expect_invalid(create([](sv1::Session* s) { s->mutable_sites(0)->set_capacity(0); }),
                 "session.sites[0].capacity");
  expect_invalid(create([](sv1::Session* s) { s->mutable_sites(0)->set_capacity(1000000); }),
                 "session.sites[0].capacity");
  expect_invalid(create([](sv1::Session* s) { s->set_kind(static_cast<sv1::SessionKind>(9)); }),
                 "session.kind");
  expect_invalid(create([](sv1::Session* s) { s->set_broadcast_link("http://x"); }),
                 "session.broadcast_link");
  expect_invalid(create([](sv1::Session* s) {
                   s->set_kind(sv1::SESSION_KIND_DEPARTMENT_EVENT);
                   s->mutable_sites(0)->set_name("Leeds");
                   s->add_sites()->set_name("Leeds");
                   s->mutable_sites(1)->set_capacity(3);
                 }),
                 "repeats another site");
  EXPECT_EQ(Sql("SELECT count(*) FROM sessions"), sessions_before);

  sv1::Booking b;
  const std::string bad001 = Register(*fx_, "BAD001").id();
  grpc::Status st = Book(*fx_, "00000000-0000-4000-8000-000000000000", bad001, &b);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  // Which of the two ids was unknown, for programs (google.rpc.ResourceInfo).
  EXPECT_EQ(DetailsOf(st).resource_type, "session") << st.error_message();
  EXPECT_EQ(DetailsOf(st).resource_name, "00000000-0000-4000-8000-000000000000");
  st = Book(*fx_, NewSession(*fx_, *org_, 2, DateIn(20)).id(),
            "00000000-0000-4000-8000-000000000001", &b);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(DetailsOf(st).resource_type, "participant") << st.error_message();
  EXPECT_EQ(DetailsOf(st).resource_name, "00000000-0000-4000-8000-000000000001");
  expect_invalid(Book(*fx_, "not-a-uuid", "also-not", &b), "session_id");

  sv1::ListSessionsRequest list;
  list.set_page_token("forged.token");
  sv1::ListSessionsResponse resp;
  expect_invalid(fx_->stub->ListSessions(Ctx(fx_->admin).get(), list, &resp), "page_token");
  list.set_page_token("");
  list.set_page_size(100000);
  expect_invalid(fx_->stub->ListSessions(Ctx(fx_->admin).get(), list, &resp), "page_size");

  sv1::GetProgrammeFiguresRequest figs;
  figs.set_from_date("2026-05-01");
  figs.set_to_date("2026-04-01");
  sv1::ProgrammeFigures out;
  expect_invalid(fx_->stub->GetProgrammeFigures(Ctx(fx_->admin).get(), figs, &out), "to_date");

  sv1::RegisterParticipantRequest reg;
  reg.mutable_participant()->set_staff_number("x");
  reg.mutable_participant()->set_grade(static_cast<sv1::Grade>(12));
  sv1::Participant p;
  st = fx_->stub->RegisterParticipant(Ctx(fx_->admin).get(), reg, &p);
  expect_invalid(st, "participant.staff_number");
  expect_invalid(st, "participant.grade");
  expect_invalid(st, "participant.email");
  Register(*fx_, "DUP001");
  reg.mutable_participant()->set_staff_number("dup001");
  reg.mutable_participant()->set_display_name("Dup");
  reg.mutable_participant()->set_email("dup@x.org");
  reg.mutable_participant()->set_grade(sv1::GRADE_ANALYST);
  reg.mutable_participant()->set_directorate("Analysis");
  EXPECT_EQ(fx_->stub->RegisterParticipant(Ctx(fx_->admin).get(), reg, &p).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
}

TEST_F(Scheduling, ErrorsNameTheirCauseForProgramsAsWellAsPeople) {
  // Besides its message, an error carries google.rpc details a client can
  // act on without reading English: the fields of a bad request, each with
  // its rule (BadRequest), and the cause of a refusal under a stable name
  // (ErrorInfo, domain connecting.scheduling).
  sv1::CreateSessionRequest bad;
  sv1::Session* s = bad.mutable_session();
  s->set_kind(sv1::SESSION_KIND_FRONTLINE_VISIT);
  s->set_title("Bad");
  s->set_organisation_id(*org_);
  s->set_date(DateIn(3));
  s->set_start_time("10:00");
  s->set_end_time("09:00");
  s->add_sites()->set_capacity(0);
  sv1::Session out;
  grpc::Status st = fx_->stub->CreateSession(Ctx(fx_->admin).get(), bad, &out);
  ASSERT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  ErrorDetails d = DetailsOf(st);
  ASSERT_TRUE(d.present) << "no google.rpc.Status in the trailer";
  EXPECT_EQ(d.code, static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  std::map<std::string, std::string> fields(d.fields.begin(), d.fields.end());
  EXPECT_EQ(fields.size(), 2u) << st.error_message();
  EXPECT_EQ(fields["session.end_time"], "must be after start_time") << st.error_message();
  EXPECT_NE(fields["session.sites[0].capacity"], "") << st.error_message();

  // A refusal by the rules: the partner paused.
  std::string org = fx_->CreatePartner("Paused For Now Trust");
  sv1::Session session = NewSession(*fx_, org, 2, DateIn(6));
  std::string person = Register(*fx_, "WHY001").id();
  sv1::Booking b;
  ASSERT_TRUE(Book(*fx_, session.id(), person, &b).ok());
  // A booking in the way is named by its id (ErrorInfo metadata), as is the
  // confirmed frontline visit that holds the date.
  using Metadata = std::map<std::string, std::string>;
  sv1::Booking in_the_way;
  st = Book(*fx_, session.id(), person, &in_the_way);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS) << st.error_message();
  EXPECT_EQ(DetailsOf(st).reason, "ALREADY_BOOKED");
  EXPECT_EQ(DetailsOf(st).metadata, (Metadata{{"bookingId", b.id()}}));
  st = Book(*fx_, NewSession(*fx_, *org_, 2, DateIn(6)).id(), person, &in_the_way);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_EQ(DetailsOf(st).reason, "FRONTLINE_VISIT_ON_DATE");
  EXPECT_EQ(DetailsOf(st).metadata, (Metadata{{"bookingId", b.id()}, {"date", DateIn(6)}}));
  ASSERT_TRUE(fx_->PausePartner(org).ok());
  ASSERT_TRUE(fx_->WaitForPartnerStatus(org, pv1::ORGANISATION_STATUS_PAUSED));
  sv1::Booking refused;
  st = Book(*fx_, session.id(), Register(*fx_, "WHY002").id(), &refused);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  d = DetailsOf(st);
  EXPECT_EQ(d.reason, "PARTNER_NOT_ACTIVE") << st.error_message();
  EXPECT_EQ(d.domain, "connecting.scheduling");
  EXPECT_TRUE(d.fields.empty());
  // The ids and states the message names, without reading the message.
  EXPECT_EQ(d.metadata,
            (Metadata{{"organisationId", org}, {"status", "ORGANISATION_STATUS_PAUSED"}}));

  // Operators see it counted by its reason (a call is counted as it ends).
  auto counted = [&] {
    for (absl::string_view line :
         absl::StrSplit(HttpGet(fx_->scheduling->metrics_port(), "/metrics"), '\n')) {
      if (absl::StartsWith(line, "connecting_grpc_requests_total{") &&
          absl::StrContains(line, "method=\"BookSession\"") &&
          absl::StrContains(line, "code=\"FAILED_PRECONDITION\"") &&
          absl::StrContains(line, "reason=\"PARTNER_NOT_ACTIVE\"")) {
        return true;
      }
    }
    return false;
  };
  EXPECT_TRUE(WaitUntil(counted, absl::Seconds(5), absl::Milliseconds(50)));

  // A retried cancellation that took effect the first time is told so
  // (ALREADY_IN_STATE), unlike moving a cancelled booking (WRONG_STATE).
  sv1::CancelBookingRequest cancel;
  cancel.set_id(b.id());
  ASSERT_TRUE(fx_->stub->CancelBooking(Ctx(fx_->admin).get(), cancel, &b).ok());
  st = fx_->stub->CancelBooking(Ctx(fx_->admin).get(), cancel, &b);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(DetailsOf(st).reason, "ALREADY_IN_STATE") << st.error_message();
  EXPECT_EQ(DetailsOf(st).metadata, (Metadata{{"status", "BOOKING_STATUS_CANCELLED"}}));
  sv1::RescheduleBookingRequest move;
  move.set_id(b.id());
  move.set_session_id(NewSession(*fx_, *org_, 2, DateIn(7)).id());
  st = fx_->stub->RescheduleBooking(Ctx(fx_->admin).get(), move, &b);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(DetailsOf(st).reason, "WRONG_STATE") << st.error_message();

  // A stale etag, and tokens missing or expired.
  sv1::UpdateSessionRequest update;
  *update.mutable_session() = NewSession(*fx_, *org_, 2, DateIn(8));
  const std::string current_etag = update.session().etag();
  update.mutable_session()->set_title("Renamed");
  update.mutable_session()->set_etag("\"stale\"");
  update.mutable_update_mask()->add_paths("title");
  st = fx_->stub->UpdateSession(Ctx(fx_->admin).get(), update, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ABORTED) << st.error_message();
  EXPECT_EQ(DetailsOf(st).reason, "ETAG_MISMATCH");
  EXPECT_EQ(DetailsOf(st).metadata, (Metadata{{"etag", current_etag}}));
  // Too early: the session and when it ends, for a program to wait for.
  sv1::CompleteSessionRequest complete;
  complete.set_id(update.session().id());
  st = fx_->stub->CompleteSession(Ctx(fx_->admin).get(), complete, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_EQ(DetailsOf(st).reason, "SESSION_NOT_ENDED");
  EXPECT_EQ(DetailsOf(st).metadata, (Metadata{{"sessionId", update.session().id()},
                                              {"date", DateIn(8)},
                                              {"endTime", update.session().end_time()}}));
  sv1::GetSessionRequest get;
  get.set_id(session.id());
  grpc::ClientContext bare;
  st = fx_->stub->GetSession(&bare, get, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(DetailsOf(st).reason, "TOKEN_MISSING");
  st = fx_->stub->GetSession(
      Ctx(Token(server::Role::kAdmin, "programme-team", "", absl::Hours(-1))).get(), get, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(DetailsOf(st).reason, "TOKEN_EXPIRED");

  // Bytes that do not parse (invalid UTF-8 in the second site's name) name
  // the field by its path from the request, like every other bad field.
  sv1::CreateSessionRequest event;
  sv1::Session* e = event.mutable_session();
  e->set_kind(sv1::SESSION_KIND_DEPARTMENT_EVENT);
  e->set_title("Connecting comes to you");
  e->set_organisation_id(*org_);
  e->set_date(DateIn(9));
  e->set_start_time("12:00");
  e->set_end_time("13:00");
  e->add_sites()->set_name("Leeds");
  e->add_sites()->set_name("ZZZZ");
  std::string raw = event.SerializeAsString();
  raw.replace(raw.find("ZZZZ"), 4, "\xff\xfe\xff\xfe");
  st = RawCall(fx_->scheduling->channel(),
               "/connecting.scheduling.v1.SchedulingService/CreateSession", raw, fx_->admin);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "session.sites[1].name: must be valid UTF-8 text");
  d = DetailsOf(st);
  ASSERT_EQ(d.fields.size(), 1u) << st.error_message();
  EXPECT_EQ(d.fields[0].first, "session.sites[1].name");

  // The violations come from the rule that was broken, not from reading the
  // message back: a site name quoting what looks like another field's rule
  // is still one violation, of `site`.
  e->mutable_sites(1)->set_name("York");
  for (sv1::Site& site : *e->mutable_sites()) site.set_capacity(5);
  e->set_broadcast_link("https://example.org/live");
  sv1::Session created;
  st = fx_->stub->CreateSession(Ctx(fx_->admin).get(), event, &created);
  ASSERT_TRUE(st.ok()) << st.error_message();
  sv1::BookSessionRequest odd;
  odd.set_session_id(created.id());
  odd.set_participant_id(person);
  odd.set_site("Leeds; session_id: unknown");
  st = fx_->stub->BookSession(Ctx(fx_->admin).get(), odd, &b);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "site: session has no site named \"Leeds; session_id: unknown\"");
  d = DetailsOf(st);
  EXPECT_EQ(d.fields, (std::vector<std::pair<std::string, std::string>>{
                          {"site", "session has no site named \"Leeds; session_id: unknown\""}}))
      << st.error_message();
}

TEST_F(Scheduling, RolesSeeAndDoOnlyWhatTheyMay) {
  std::string other_org = fx_->CreatePartner("Other Scheduling Trust");
  sv1::Participant me = Register(*fx_, "ROLE01");
  sv1::Participant you = Register(*fx_, "ROLE02");
  sv1::Session mine = NewSession(*fx_, *org_, 5, DateIn(40));
  sv1::Session theirs = NewSession(*fx_, other_org, 5, DateIn(41));
  std::string self = Token(Role::kParticipant, me.id());
  sv1::Booking b;
  EXPECT_TRUE(Book(*fx_, mine.id(), me.id(), &b, "", self).ok());
  grpc::Status denied = Book(*fx_, mine.id(), you.id(), &b, "", self);
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // For programs: the reason, the token's role and whom it may not act for.
  EXPECT_EQ(DetailsOf(denied).reason, "NOT_PERMITTED");
  EXPECT_EQ(DetailsOf(denied).metadata, (std::map<std::string, std::string>{
                                            {"role", "participant"}, {"participantId", you.id()}}))
      << denied.error_message();
  ASSERT_TRUE(Book(*fx_, theirs.id(), you.id(), &b).ok());

  sv1::ListBookingsRequest lb;
  lb.set_participant_id(you.id());
  sv1::ListBookingsResponse lbr;
  EXPECT_EQ(fx_->stub->ListBookings(Ctx(self).get(), lb, &lbr).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  lb.set_participant_id(me.id());
  ASSERT_TRUE(fx_->stub->ListBookings(Ctx(self).get(), lb, &lbr).ok());
  EXPECT_EQ(lbr.bookings_size(), 1);
  sv1::GetBookingRequest gb;
  gb.set_id(b.id());  // you's booking
  sv1::Booking seen;
  EXPECT_EQ(fx_->stub->GetBooking(Ctx(self).get(), gb, &seen).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  // A partner sees the sessions at its organisation only.
  std::string partner = Token(Role::kPartner, "host", *org_);
  sv1::ListSessionsRequest ls;
  ls.set_page_size(500);
  sv1::ListSessionsResponse lsr;
  ASSERT_TRUE(fx_->stub->ListSessions(Ctx(partner).get(), ls, &lsr).ok());
  EXPECT_GT(lsr.sessions_size(), 0);
  for (const auto& s : lsr.sessions()) EXPECT_EQ(s.organisation_id(), *org_);
  sv1::GetSessionRequest gs;
  gs.set_id(theirs.id());
  sv1::Session out;
  EXPECT_EQ(fx_->stub->GetSession(Ctx(partner).get(), gs, &out).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  // Viewers read but do not write.
  std::string viewer = Token(Role::kViewer);
  EXPECT_TRUE(fx_->stub->GetSession(Ctx(viewer).get(), gs, &out).ok());
  EXPECT_EQ(Book(*fx_, mine.id(), you.id(), &b, "", viewer).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  sv1::CancelSessionRequest cs;
  cs.set_id(mine.id());
  EXPECT_EQ(fx_->stub->CancelSession(Ctx(viewer).get(), cs, &out).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(fx_->stub->CancelSession(Ctx(self).get(), cs, &out).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(Scheduling, DeactivatingAParticipantFreesTheirSeats) {
  sv1::Session s = NewSession(*fx_, *org_, 1, DateIn(60));
  sv1::Participant leaver = Register(*fx_, "LEAVE1");
  std::string next = Register(*fx_, "LEAVE2").id();
  sv1::Booking a, b;
  ASSERT_TRUE(Book(*fx_, s.id(), leaver.id(), &a).ok());
  ASSERT_TRUE(Book(*fx_, s.id(), next, &b).ok());
  EXPECT_EQ(b.status(), sv1::BOOKING_STATUS_WAITLISTED);
  sv1::DeactivateParticipantRequest req;
  req.set_id(leaver.id());
  req.set_etag(leaver.etag());
  sv1::Participant out;
  ASSERT_TRUE(fx_->stub->DeactivateParticipant(Ctx(fx_->admin).get(), req, &out).ok());
  EXPECT_EQ(out.status(), sv1::PARTICIPANT_STATUS_INACTIVE);
  // Sent again with the etag the deactivation made stale (its reply lost):
  // it hears that it took effect.
  sv1::Participant unchanged;
  grpc::Status retried = fx_->stub->DeactivateParticipant(Ctx(fx_->admin).get(), req, &unchanged);
  EXPECT_EQ(retried.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(DetailsOf(retried).reason, "ALREADY_IN_STATE") << retried.error_message();
  for (const auto& x : SessionBookings(*fx_, s.id())) {
    if (x.id() == a.id()) {
      EXPECT_EQ(x.status(), sv1::BOOKING_STATUS_CANCELLED);
    }
    if (x.id() == b.id()) {
      EXPECT_EQ(x.status(), sv1::BOOKING_STATUS_CONFIRMED);
    }
  }
  sv1::Booking again;
  EXPECT_EQ(Book(*fx_, s.id(), leaver.id(), &again).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(Scheduling, DepartmentEventsHaveCapacityPerSite) {
  sv1::Session ev = NewEventSession(*fx_, *org_, DateIn(12), {{"Leeds", 1}, {"London", 2}});
  ASSERT_FALSE(ev.id().empty());
  auto book = [&](const std::string& who, const std::string& site) {
    sv1::BookSessionRequest b;
    b.set_session_id(ev.id());
    b.set_participant_id(who);
    b.set_site(site);
    sv1::Booking out;
    grpc::Status st = fx_->stub->BookSession(Ctx(fx_->admin).get(), b, &out);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return out;
  };
  sv1::Booking first = book(Register(*fx_, "EV0001").id(), "Leeds");
  sv1::Booking second = book(Register(*fx_, "EV0002").id(), "Leeds");
  sv1::Booking third = book(Register(*fx_, "EV0003").id(), "London");
  EXPECT_EQ(first.status(), sv1::BOOKING_STATUS_CONFIRMED);
  EXPECT_EQ(second.status(), sv1::BOOKING_STATUS_WAITLISTED);
  EXPECT_EQ(third.status(), sv1::BOOKING_STATUS_CONFIRMED);

  // Each booking's event carries the session as it stood just after that
  // booking: every field as stored, and each site's seats at that moment.
  sv1::GetSessionRequest get;
  get.set_id(ev.id());
  sv1::Session now;
  ASSERT_TRUE(fx_->stub->GetSession(Ctx(fx_->admin).get(), get, &now).ok());
  auto by_booking = BookingEventsOf(*fx_, ev.id(), 3);
  ASSERT_EQ(by_booking.size(), 3u);
  auto seats = [](const sv1::Session& s) {
    std::vector<std::string> out;
    for (const auto& site : s.sites()) {
      out.push_back(absl::StrCat(site.name(), " ", site.capacity(), "/", site.confirmed(), "/",
                                 site.waitlisted()));
    }
    return out;
  };
  using Seats = std::vector<std::string>;
  EXPECT_EQ(seats(by_booking[first.id()].session()), (Seats{"Leeds 1/1/0", "London 2/0/0"}));
  EXPECT_EQ(seats(by_booking[second.id()].session()), (Seats{"Leeds 1/1/1", "London 2/0/0"}));
  sv1::Session last = by_booking[third.id()].session();
  EXPECT_EQ(seats(last), (Seats{"Leeds 1/1/1", "London 2/1/0"}));
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(last, now))
      << last.DebugString() << "\nvs GetSession\n"
      << now.DebugString();
  EXPECT_EQ(by_booking[second.id()].booking().waitlist_position(), 1);
  sv1::BookSessionRequest bad;
  bad.set_session_id(ev.id());
  bad.set_participant_id(Register(*fx_, "EV0004").id());
  bad.set_site("Manchester");
  sv1::Booking out;
  grpc::Status st = fx_->stub->BookSession(Ctx(fx_->admin).get(), bad, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("site"), std::string::npos);
}

TEST_F(Scheduling, ABatchOfBookingsInOneCallGetsWhatEachWouldHaveGotOneByOne) {
  // A batch's bookings go to book_sites in one call (the group committer's
  // Combine, store::BookRun), in lock order: runs of one site's bookings,
  // each run under one take of its site's lock. The same requests sent to
  // one set of sessions in one call and to its twin set one at a time get
  // the same outcomes, places in line and seats, rules across runs
  // included (a person's frontline visit that date, a request_id used in
  // an earlier run); the counters end alike and match the bookings.
  auto conn = db::Conn::Open(fx_->scheduling_db, "test");
  ASSERT_TRUE(conn.ok());
  struct Twin {
    std::map<char, std::string> sessions;  // A, C: one date; B another; E an event
    std::vector<std::string> people;
  };
  std::vector<Twin> twins;
  for (int t = 0; t < 2; ++t) {
    std::string date = DateIn(60 + 2 * t), other = DateIn(61 + 2 * t);
    Twin tw;
    tw.sessions['A'] = NewSession(*fx_, *org_, 2, date).id();
    tw.sessions['C'] = NewSession(*fx_, *org_, 5, date).id();
    tw.sessions['B'] = NewSession(*fx_, *org_, 1, other).id();
    tw.sessions['E'] = NewEventSession(*fx_, *org_, other, {{"North", 1}, {"South", 2}}).id();
    tw.sessions['X'] = "00000000-0000-4000-8000-00000000beef";  // no such session
    for (int i = 0; i < 8; ++i) tw.people.push_back(Register(*fx_, absl::StrCat("RUN", t, i)).id());
    // Person 3 holds a confirmed frontline visit on A's date; person 4 left.
    sv1::Booking elsewhere;
    ASSERT_TRUE(Book(*fx_, NewSession(*fx_, *org_, 5, date).id(), tw.people[3], &elsewhere).ok());
    sv1::DeactivateParticipantRequest leave;
    leave.set_id(tw.people[4]);
    sv1::Participant left;
    ASSERT_TRUE(fx_->stub->DeactivateParticipant(Ctx(fx_->admin).get(), leave, &left).ok());
    twins.push_back(tw);
  }
  struct Request {
    char session;
    std::string site;
    int person;  // -1: nobody registered
    std::string key;
    std::string want;
  };
  const std::vector<Request> requests = {
      {'A', "", 0, "a", "booked"},
      {'A', "", 1, "b", "booked"},
      {'A', "", 0, "c", "live_on_session"},
      {'A', "", 2, "b", "prior"},
      {'A', "", 3, "", "frontline_on_date"},
      {'A', "", 4, "e", "participant_inactive"},
      {'A', "", -1, "", "no_participant"},
      {'A', "", 2, "f", "booked"},            // waits: A has two seats
      {'C', "", 0, "", "frontline_on_date"},  // confirmed at A, in an earlier run
      {'C', "", 2, "g", "booked"},            // only waiting at A
      {'C', "", 5, "f", "prior"},             // the key booked at A
      {'B', "", 5, "", "booked"},
      {'B', "", 6, "", "booked"},  // waits
      {'B', "North", 7, "", "site_not_allowed"},
      {'E', "North", 5, "", "booked"},
      {'E', "North", 6, "", "booked"},  // waits
      {'E', "South", 7, "", "booked"},
      {'E', "", 0, "", "site_required"},
      {'X', "", 1, "", "no_session"},
      {'A', "", 7, "h", "booked"},  // A again, apart from its run: waits second
  };
  const std::string cols =
      "o_outcome, coalesce(o_booking_status, 0), coalesce(o_waitlist_position, -1), "
      "o_detail IS NULL, coalesce(o_confirmed, -1), coalesce(o_waitlisted, -1), "
      "coalesce(replace(replace(os_sites, E'\\x1f', '/'), E'\\x1e', ';'), '-')";
  auto person = [](const Twin& tw, int i) {
    return i < 0 ? std::string("00000000-0000-4000-8000-00000000d00d") : tw.people[i];
  };
  auto key = [](int t, const std::string& k) { return k.empty() ? k : absl::StrCat("run", t, k); };
  auto quoted = [](const std::string& v) { return absl::StrCat("\"", v, "\""); };
  // Twin 0: one call.
  std::vector<std::string> sessions, sites, people, keys;
  for (const Request& r : requests) {
    sessions.push_back(twins[0].sessions[r.session]);
    sites.push_back(quoted(r.site));
    people.push_back(person(twins[0], r.person));
    keys.push_back(r.key.empty() ? "NULL" : quoted(key(0, r.key)));
  }
  auto array = [](const std::vector<std::string>& v) {
    return absl::StrCat("{", absl::StrJoin(v, ","), "}");
  };
  const std::string call = " FROM book_sites($1::uuid[], $2::text[], $3::uuid[], $4::text[])";
  auto batch = (*conn)->Exec(absl::StrCat("SELECT ", cols, call),
                             {array(sessions), array(sites), array(people), array(keys)});
  ASSERT_TRUE(batch.ok()) << batch.status();
  ASSERT_EQ(batch->rows(), static_cast<int>(requests.size()));
  // Twin 1: one at a time, each in a statement of its own.
  for (size_t i = 0; i < requests.size(); ++i) {
    const Request& r = requests[i];
    auto one =
        (*conn)->Exec(absl::StrCat("SELECT ", cols,
                                   " FROM book_sites(ARRAY[$1::uuid], ARRAY[$2], ARRAY[$3::uuid], "
                                   "ARRAY[$4::text])"),
                      {twins[1].sessions[r.session], r.site, person(twins[1], r.person),
                       db::NullIfEmpty(key(1, r.key))});
    ASSERT_TRUE(one.ok()) << one.status();
    ASSERT_EQ(one->rows(), 1);
    EXPECT_EQ(batch->String(i, 0), r.want) << "request " << i;
    EXPECT_EQ(one->String(0, 0), r.want) << "request " << i << " alone";
    for (int c = 1; c <= 3; ++c) {
      EXPECT_EQ(batch->String(i, c), one->String(0, c)) << i << "," << c;
    }
    if (r.want != "prior") {  // a retry alone is answered before the site's lock
      for (int c = 4; c <= 6; ++c) {
        EXPECT_EQ(batch->String(i, c), one->String(0, c)) << i << "," << c;
      }
    }
  }
  // Persons 0 and 1 confirmed at A, then 2 and 7 wait there in that order;
  // the retry of 2's key is told 2's place.
  EXPECT_EQ(batch->Int(7, 1), 2);
  EXPECT_EQ(batch->Int(7, 2), 1);
  EXPECT_EQ(batch->Int(19, 2), 2);
  EXPECT_EQ(batch->Int(9, 1), 1) << "confirmed at C, as only waiting at A";
  EXPECT_EQ(batch->Int(12, 2), 1);
  EXPECT_EQ(batch->Int(15, 2), 1);
  EXPECT_EQ(batch->String(16, 6), "North/1/1/1;South/2/0/0")
      << "the event's sites before South's booking, North's run written";
  EXPECT_EQ(batch->String(19, 6), "/2/2/1") << "A's sites before its last booking";
  for (const Twin& tw : twins) {
    std::vector<std::string> ids;
    for (const auto& [name, id] : tw.sessions) ids.push_back(id);
    auto seats = (*conn)->Exec(
        "SELECT ss.site, ss.confirmed, ss.waitlisted, "
        "(SELECT count(*) FROM bookings b WHERE b.session_id = ss.session_id "
        " AND b.site = ss.site AND b.status = 1), "
        "(SELECT count(*) FROM bookings b WHERE b.session_id = ss.session_id "
        " AND b.site = ss.site AND b.status = 2) "
        "FROM session_sites ss WHERE ss.session_id = ANY($1::uuid[]) "
        "ORDER BY ss.session_id = $2::uuid DESC, ss.session_id = $3::uuid DESC, "
        "ss.session_id = $4::uuid DESC, ss.ordinal",
        {array(ids), tw.sessions.at('A'), tw.sessions.at('B'), tw.sessions.at('C')});
    ASSERT_TRUE(seats.ok()) << seats.status();
    // A, B, C, then the event's North and South.
    const std::vector<std::vector<int>> want = {{2, 2}, {1, 1}, {1, 0}, {1, 1}, {1, 0}};
    ASSERT_EQ(seats->rows(), 5);
    for (int i = 0; i < 5; ++i) {
      EXPECT_EQ(seats->Int(i, 1), want[i][0]) << i << " confirmed";
      EXPECT_EQ(seats->Int(i, 2), want[i][1]) << i << " waitlisted";
      EXPECT_EQ(seats->Int(i, 3), seats->Int(i, 1)) << i << " confirmed rows";
      EXPECT_EQ(seats->Int(i, 4), seats->Int(i, 2)) << i << " waitlisted rows";
    }
  }
  // A call whose every request already booked takes no lock and changes nothing.
  auto again = (*conn)->Exec(
      absl::StrCat("SELECT o_outcome, o_booking_participant, os_id IS NULL", call),
      {array({twins[0].sessions['A'], twins[0].sessions['A']}), "{\"\",\"\"}",
       array({twins[0].people[1], twins[0].people[0]}), array({key(0, "b"), key(0, "a")})});
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->rows(), 2);
  EXPECT_EQ(again->String(0, 0), "prior");
  EXPECT_EQ(again->String(0, 1), twins[0].people[1]);
  EXPECT_EQ(again->String(1, 1), twins[0].people[0]);
  EXPECT_EQ(again->String(1, 2), "t");
  // Arrays of different lengths are an error, not a guess.
  auto uneven = (*conn)->Exec(
      absl::StrCat("SELECT o_outcome", call),
      {array({twins[0].sessions['B']}), "{\"\",\"\"}", array({twins[0].people[7]}), "{NULL}"});
  EXPECT_FALSE(uneven.ok());
}

TEST_F(Scheduling, ACommonBatchBookedInOneStatementGetsWhatEachWouldHaveGotOneByOne) {
  // A common batch (new requests, distinct people, sessions that are not
  // events, no site named, no free seat beside people waiting) is booked in
  // one statement (book_sites' set-based path, R__book_session.sql) rather
  // than one by one. The same requests sent in one call to one set of
  // sessions, and to its twin set in one call that books them one by one
  // (book_sites' loop, as connecting.book_one_by_one asks), get the same
  // outcomes, places in line, seats and sites; the counters end alike and
  // match the bookings.
  auto conn = db::Conn::Open(fx_->scheduling_db, "test");
  ASSERT_TRUE(conn.ok());
  struct Twin {
    std::map<char, std::string> sessions;
    std::vector<std::string> people;
  };
  std::vector<Twin> twins;
  for (int t = 0; t < 2; ++t) {
    std::string date = DateIn(70 + 2 * t), other = DateIn(71 + 2 * t);
    Twin tw;
    // A: two seats; C: five, the same date; B: one seat, another date;
    // F: one seat, taken, one waiting; D: cancelled.
    tw.sessions['A'] = NewSession(*fx_, *org_, 2, date).id();
    tw.sessions['C'] = NewSession(*fx_, *org_, 5, date).id();
    tw.sessions['B'] = NewSession(*fx_, *org_, 1, other).id();
    tw.sessions['F'] = NewSession(*fx_, *org_, 1, other).id();
    tw.sessions['D'] = NewSession(*fx_, *org_, 3, other).id();
    for (int i = 0; i < 12; ++i) {
      tw.people.push_back(Register(*fx_, absl::StrCat("SET", t, i)).id());
    }
    sv1::Booking b;
    // Person 3 holds a confirmed visit on A's date; person 4 left; person 7
    // is booked on C already; F's seat is 10's, 11 waits for it.
    ASSERT_TRUE(Book(*fx_, NewSession(*fx_, *org_, 5, date).id(), tw.people[3], &b).ok());
    ASSERT_TRUE(Book(*fx_, tw.sessions['C'], tw.people[7], &b).ok());
    ASSERT_TRUE(Book(*fx_, tw.sessions['F'], tw.people[10], &b).ok());
    ASSERT_TRUE(Book(*fx_, tw.sessions['F'], tw.people[11], &b).ok());
    sv1::DeactivateParticipantRequest leave;
    leave.set_id(tw.people[4]);
    sv1::Participant left;
    ASSERT_TRUE(fx_->stub->DeactivateParticipant(Ctx(fx_->admin).get(), leave, &left).ok());
    sv1::CancelSessionRequest cancel;
    cancel.set_id(tw.sessions['D']);
    cancel.set_reason("the host is away");
    sv1::Session cancelled;
    ASSERT_TRUE(fx_->stub->CancelSession(Ctx(fx_->admin).get(), cancel, &cancelled).ok());
    twins.push_back(tw);
  }
  struct Request {
    char session;
    int person;  // -1: nobody registered; -2: a person of their own
    std::string key;
    std::string want;
  };
  const std::vector<Request> requests = {
      {'A', 0, "a", "booked"},
      {'A', 1, "b", "booked"},
      {'A', 3, "", "frontline_on_date"},
      {'A', 4, "c", "participant_inactive"},
      {'A', -1, "", "no_participant"},
      {'A', 2, "d", "booked"},  // waits: A has two seats
      {'B', 5, "", "booked"},
      {'B', 6, "e", "booked"},  // waits
      {'C', 7, "", "live_on_session"},
      {'C', 8, "f", "booked"},
      {'D', 9, "", "not_scheduled"},
      {'F', -2, "g", "booked"},  // waits behind 11
  };
  const std::string cols =
      "o_outcome, coalesce(o_booking_status, 0), coalesce(o_waitlist_position, -1), "
      "o_detail IS NULL, coalesce(o_confirmed, -1), coalesce(o_waitlisted, -1), "
      "coalesce(replace(replace(os_sites, E'\\x1f', '/'), E'\\x1e', ';'), '-'), "
      "coalesce(o_capacity, -1), o_participant_status, o_partner_status, o_session_status, "
      "os_title, os_date, os_start, os_end, os_status";
  std::vector<std::string> extra;  // person -2 of each twin
  for (int t = 0; t < 2; ++t) extra.push_back(Register(*fx_, absl::StrCat("SETX", t)).id());
  auto person = [&](int t, int i) {
    if (i == -1) return std::string("00000000-0000-4000-8000-00000000d00d");
    if (i == -2) return extra[t];
    return twins[t].people[i];
  };
  auto key = [](int t, const std::string& k) { return k.empty() ? k : absl::StrCat("set", t, k); };
  auto quoted = [](const std::string& v) { return absl::StrCat("\"", v, "\""); };
  auto array = [](const std::vector<std::string>& v) {
    return absl::StrCat("{", absl::StrJoin(v, ","), "}");
  };
  const std::string call = absl::StrCat(
      "SELECT ", cols, " FROM book_sites($1::uuid[], $2::text[], $3::uuid[], $4::text[])");
  std::vector<db::Result> results;
  for (int t = 0; t < 2; ++t) {
    std::vector<std::string> sessions, sites, people, keys;
    for (const Request& r : requests) {
      sessions.push_back(twins[t].sessions[r.session]);
      sites.push_back(quoted(""));
      people.push_back(person(t, r.person));
      keys.push_back(r.key.empty() ? "NULL" : quoted(key(t, r.key)));
    }
    ASSERT_TRUE((*conn)
                    ->ExecScript(t == 0 ? "RESET connecting.book_one_by_one"
                                        : "SET connecting.book_one_by_one = on")
                    .ok());
    auto got = (*conn)->Exec(call, {array(sessions), array(sites), array(people), array(keys)});
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->rows(), static_cast<int>(requests.size()));
    results.push_back(*std::move(got));
  }
  ASSERT_TRUE((*conn)->ExecScript("RESET connecting.book_one_by_one").ok());
  const db::Result& batch = results[0];
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(batch.String(i, 0), requests[i].want) << "request " << i;
    EXPECT_EQ(results[1].String(i, 0), requests[i].want) << "request " << i << " one by one";
    for (int c = 1; c <= 15; ++c) {  // every column of `cols` after the outcome
      if (c == 12) continue;         // os_date: the twins' dates differ
      EXPECT_EQ(batch.String(i, c), results[1].String(i, c)) << i << "," << c;
    }
  }
  // 0 and 1 confirmed at A and 2 waits first; 6 first behind B's seat; the
  // twelfth second behind F's; the sites as they stood before each booking.
  EXPECT_EQ(batch.String(5, 1), "2");
  EXPECT_EQ(batch.String(5, 2), "1");
  EXPECT_EQ(batch.String(5, 6), "/2/2/0") << "A before its third booking";
  EXPECT_EQ(batch.String(7, 2), "1");
  EXPECT_EQ(batch.String(11, 2), "2");
  EXPECT_EQ(batch.String(11, 6), "/1/1/1");
  EXPECT_EQ(batch.String(2, 6), "/2/2/0") << "a refusal sees the run's seats so far";
  for (const Twin& tw : twins) {
    for (const auto& [name, id] : tw.sessions) {
      auto seats = (*conn)->Exec(
          "SELECT ss.confirmed, ss.waitlisted, "
          "(SELECT count(*) FROM bookings b WHERE b.session_id = ss.session_id AND b.status = 1), "
          "(SELECT count(*) FROM bookings b WHERE b.session_id = ss.session_id AND b.status = 2) "
          "FROM session_sites ss WHERE ss.session_id = $1::uuid",
          {id});
      ASSERT_TRUE(seats.ok()) << seats.status();
      EXPECT_EQ(seats->Int(0, 0), seats->Int(0, 2)) << name << " confirmed rows";
      EXPECT_EQ(seats->Int(0, 1), seats->Int(0, 3)) << name << " waitlisted rows";
    }
  }
}

TEST_F(Scheduling, ABookingEventCarriesTheSessionJustAfterIt) {
  sv1::Session s = NewSession(*fx_, *org_, 2, DateIn(15));
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    sv1::Booking b;
    ASSERT_TRUE(Book(*fx_, s.id(), Register(*fx_, "SE000" + std::to_string(i)).id(), &b).ok());
    ids.push_back(b.id());
  }
  auto by_booking = BookingEventsOf(*fx_, s.id(), 3);
  ASSERT_EQ(by_booking.size(), 3u);
  int want_confirmed[] = {1, 2, 2}, want_waitlisted[] = {0, 0, 1};
  for (int i = 0; i < 3; ++i) {
    const sv1::Session& got = by_booking[ids[i]].session();
    ASSERT_EQ(got.sites_size(), 1);
    EXPECT_EQ(got.sites(0).name(), "");
    EXPECT_EQ(got.sites(0).capacity(), 2);
    EXPECT_EQ(got.sites(0).confirmed(), want_confirmed[i]) << i;
    EXPECT_EQ(got.sites(0).waitlisted(), want_waitlisted[i]) << i;
    sv1::Session rest = got, created = s;
    rest.clear_sites();
    created.clear_sites();
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(rest, created))
        << rest.DebugString() << "\nvs as created\n"
        << created.DebugString();
  }
}

TEST_F(Scheduling, RescheduleMovesTheBookingAndFreesTheSeat) {
  std::string date = DateIn(50);
  sv1::Session from = NewSession(*fx_, *org_, 1, date);
  sv1::Session to = NewSession(*fx_, *org_, 1, date);  // same date: allowed when moving
  std::string mover = Register(*fx_, "MOVE01").id();
  std::string waiting = Register(*fx_, "MOVE02").id();
  sv1::Booking m, w;
  ASSERT_TRUE(Book(*fx_, from.id(), mover, &m).ok());
  ASSERT_TRUE(Book(*fx_, from.id(), waiting, &w).ok());
  EXPECT_EQ(w.status(), sv1::BOOKING_STATUS_WAITLISTED);
  sv1::RescheduleBookingRequest req;
  req.set_id(m.id());
  req.set_session_id(to.id());
  sv1::Booking moved;
  ASSERT_TRUE(fx_->stub->RescheduleBooking(Ctx(fx_->admin).get(), req, &moved).ok());
  EXPECT_EQ(moved.session_id(), to.id());
  EXPECT_EQ(moved.status(), sv1::BOOKING_STATUS_CONFIRMED);
  for (const auto& b : SessionBookings(*fx_, from.id())) {
    if (b.id() == w.id()) {
      EXPECT_EQ(b.status(), sv1::BOOKING_STATUS_CONFIRMED) << "promoted";
    }
    if (b.id() == m.id()) {
      EXPECT_EQ(b.status(), sv1::BOOKING_STATUS_CANCELLED);
    }
  }
}

// Migration 0021: a booking's id is a UUID of version 7, its first 48 bits
// the millisecond it was made, so that new bookings' index entries share the
// index's last pages instead of landing anywhere in it.
TEST_F(Scheduling, BookingIdsAreOrderedByTheTimeTheyWereMade) {
  sv1::Session session = NewSession(*fx_, *org_, 5, DateIn(51));
  std::vector<sv1::Booking> made(3);
  for (size_t i = 0; i < made.size(); ++i) {
    if (i > 0) absl::SleepFor(absl::Milliseconds(3));  // each in a later millisecond
    std::string who = Register(*fx_, absl::StrCat("ORDER0", i)).id();
    ASSERT_TRUE(Book(*fx_, session.id(), who, &made[i]).ok());
  }
  for (size_t i = 0; i < made.size(); ++i) {
    const std::string& id = made[i].id();
    ASSERT_EQ(id.size(), 36u) << id;
    EXPECT_EQ(id[14], '7') << "version 7: " << id;
    EXPECT_NE(std::string("89ab").find(id[19]), std::string::npos) << "RFC 9562 variant: " << id;
    // The id's time is when the booking was made (its create_time, to the
    // millisecond; both are read from the database server's clock).
    int64_t id_ms = std::stoll(absl::StrCat(id.substr(0, 8), id.substr(9, 4)), nullptr, 16);
    int64_t created_ms =
        made[i].create_time().seconds() * 1000 + made[i].create_time().nanos() / 1000000;
    EXPECT_LE(std::abs(id_ms - created_ms), 1000) << id;
    if (i > 0) {
      EXPECT_LT(made[i - 1].id(), id) << "made after it";
    }
  }
}

TEST(SchedulingConfiguration, ItsOwnBadVariablesAreNamedWithTheCommonOnes) {
  // Start-up stops before connecting anywhere, exit code 2, naming every bad
  // variable: scheduling's own (lanes, sweep, partner events) with the rest.
  OneShot run =
      RunOnce(SCHEDULING_BIN, {},
              {{"DATABASE_URL", ""}, {"BOOKING_LANES", "0"}, {"SEAT_SWEEP_INTERVAL", "forever"}},
              "badcfg", absl::Seconds(10));
  EXPECT_EQ(run.code, 2);
  std::string out = ReadFile(run.log);
  for (const char* var : {"DATABASE_URL", "BOOKING_LANES", "SEAT_SWEEP_INTERVAL"}) {
    EXPECT_NE(out.find(var), std::string::npos) << var << " not named in:\n" << out;
  }
}

TEST(SchedulingLog, EveryLineTheServiceWritesIsAJsonObject) {
  // A log collector parses each line: nothing may reach stdout or stderr in
  // another format. With everything on (LOG_LEVEL=debug, gRPC's own debug
  // messages), a start that migrates (PostgreSQL's NOTICEs: DROP TRIGGER
  // IF EXISTS ... skipping, which libpq used to write raw to stderr), the
  // partner projection consuming, calls and a drain write only JSON
  // objects, and gRPC's and PostgreSQL's messages are among them.
  SchedulingFixture fx(
      std::map<std::string, std::string>{{"LOG_LEVEL", "debug"}, {"GRPC_VERBOSITY", "DEBUG"}});
  const std::string org = fx.CreatePartner("Well Logged Trust");
  ASSERT_FALSE(org.empty());
  const std::string log = fx.scheduling->process()->log_path();
  fx.stub.reset();
  fx.scheduling->DropChannel();
  EXPECT_EQ(fx.scheduling->Terminate(), 0);
  int lines = 0, from_grpc = 0, from_postgres = 0;
  for (absl::string_view line : absl::StrSplit(ReadFile(log), '\n', absl::SkipEmpty())) {
    ++lines;
    google::protobuf::Struct object;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(std::string(line), &object).ok())
        << "not a JSON object: " << line;
    const auto& f = object.fields();
    ASSERT_TRUE(f.count("ts") && f.count("level") && f.count("msg")) << line;
    EXPECT_EQ(f.at("service").string_value(), "scheduling") << line;
    if (f.count("source") && f.at("source").string_value() == "grpc") ++from_grpc;
    if (f.at("msg").string_value() == "the database says" && f.count("severity") &&
        f.at("severity").string_value() == "NOTICE") {
      ++from_postgres;
    }
  }
  EXPECT_GT(lines, 20);
  EXPECT_GT(from_grpc, 0) << "gRPC wrote nothing at debug?";
  EXPECT_GT(from_postgres, 0) << "the migrations' NOTICEs are missing";
}

}  // namespace
}  // namespace connecting::testing
