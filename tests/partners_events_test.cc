// Every committed change yields exactly one CloudEvents message on the stream,
// also across crashes of the service and restarts of NATS.
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <future>
#include <regex>
#include <set>

#include "absl/strings/match.h"
#include "connecting/events/v1/partners_events.pb.h"
#include "libs/db/db.h"
#include "tests/harness.h"

namespace connecting::testing {
namespace {

namespace v1 = ::connecting::partners::v1;
namespace ev = ::connecting::events::v1;

v1::Organisation CreateOrg(v1::PartnersService::Stub& stub, const std::string& name,
                           const std::string& traceparent = "") {
  v1::CreateOrganisationRequest req;
  *req.mutable_organisation() = SampleOrganisation(name);
  v1::Organisation out;
  auto ctx = Ctx(Token(server::Role::kAdmin));
  if (!traceparent.empty()) ctx->AddMetadata("traceparent", traceparent);
  grpc::Status s = stub.CreateOrganisation(ctx.get(), req, &out);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return out;
}

int64_t PendingOutboxRows(const std::string& db_url) {
  auto conn = db::Conn::Open(db_url, "test");
  if (!conn.ok()) return -1;
  auto r = (*conn)->Exec("SELECT count(*) FROM outbox WHERE sent_at IS NULL");
  return r.ok() ? r->Int(0, 0) : -1;
}

TEST(PartnersEvents, EachChangeYieldsExactlyOneCloudEvent) {
  PartnersFixture fx;
  auto& stub = *fx.stub;
  std::string admin = fx.admin;
  const std::string trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  v1::Organisation org = CreateOrg(stub, "Events Trust", trace);

  v1::UpdateOrganisationRequest upd;
  upd.mutable_organisation()->set_id(org.id());
  upd.mutable_organisation()->set_etag(org.etag());
  upd.mutable_organisation()->set_region(v1::REGION_NORTH_WEST);
  upd.mutable_update_mask()->add_paths("region");
  ASSERT_TRUE(stub.UpdateOrganisation(Ctx(admin).get(), upd, &org).ok());
  // The same values again: nothing changes, so no event.
  upd.mutable_organisation()->set_etag(org.etag());
  ASSERT_TRUE(stub.UpdateOrganisation(Ctx(admin).get(), upd, &org).ok());

  v1::CreateContactRequest cc;
  cc.mutable_contact()->set_organisation_id(org.id());
  cc.mutable_contact()->set_display_name("Evie Host");
  cc.mutable_contact()->set_email("evie@example.org");
  v1::Contact contact;
  ASSERT_TRUE(stub.CreateContact(Ctx(admin).get(), cc, &contact).ok());
  v1::CreateOfferRequest co;
  co.mutable_offer()->set_organisation_id(org.id());
  co.mutable_offer()->set_title("Community nursing round");
  co.mutable_offer()->set_setting(v1::SETTING_COMMUNITY_SERVICE);
  co.mutable_offer()->set_capacity_per_day(1);
  co.mutable_offer()->add_weekdays(v1::WEEKDAY_WEDNESDAY);
  co.mutable_offer()->set_host_contact_id(contact.id());
  v1::Offer offer;
  ASSERT_TRUE(stub.CreateOffer(Ctx(admin).get(), co, &offer).ok());
  v1::PublishOfferRequest pub;
  pub.set_id(offer.id());
  ASSERT_TRUE(stub.PublishOffer(Ctx(admin).get(), pub, &offer).ok());
  v1::PauseOrganisationRequest pause;
  pause.set_id(org.id());
  ASSERT_TRUE(stub.PauseOrganisation(Ctx(admin).get(), pause, &org).ok());
  v1::ArchiveOrganisationRequest archive;
  archive.set_id(org.id());
  archive.set_reason("Merged into another trust");
  ASSERT_TRUE(stub.ArchiveOrganisation(Ctx(admin).get(), archive, &org).ok());
  // A refused change emits nothing.
  v1::Organisation ignored;
  EXPECT_FALSE(stub.ArchiveOrganisation(Ctx(admin).get(), archive, &ignored).ok());

  const std::vector<std::pair<std::string, std::string>> expected = {
      {"organisation.created", "OrganisationCreated"},
      {"organisation.updated", "OrganisationUpdated"},
      {"contact.created", "ContactCreated"},
      {"offer.created", "OfferCreated"},
      {"offer.published", "OfferPublished"},
      {"organisation.paused", "OrganisationPaused"},
      {"organisation.archived", "OrganisationArchived"},
      {"offer.withdrawn", "OfferWithdrawn"},
  };
  std::vector<StoredEvent> events = WaitForEvents(fx.nats_url, fx.stream, expected.size());
  absl::SleepFor(absl::Seconds(1));  // anything extra would have arrived by now
  events = ReadStream(fx.nats_url, fx.stream);
  ASSERT_EQ(events.size(), expected.size());
  std::set<std::string> ids;
  const std::regex rfc3339(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z)");
  const std::regex tp(R"(00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2})");
  for (size_t i = 0; i < events.size(); ++i) {
    const StoredEvent& e = events[i];
    SCOPED_TRACE(e.subject);
    EXPECT_EQ(e.subject, fx.service->options().subject_prefix + "." + expected[i].first);
    EXPECT_EQ(e.headers.at("ce-specversion"), "1.0");
    EXPECT_EQ(e.headers.at("ce-type"), "connecting.events.v1." + expected[i].second);
    EXPECT_EQ(e.headers.at("ce-source"), "/connecting/partners");
    EXPECT_EQ(e.headers.at("content-type"), "application/json");
    EXPECT_EQ(e.headers.at("Nats-Msg-Id"), e.headers.at("ce-id"));
    EXPECT_TRUE(ids.insert(e.headers.at("ce-id")).second);
    EXPECT_TRUE(std::regex_match(e.headers.at("ce-time"), rfc3339)) << e.headers.at("ce-time");
    EXPECT_TRUE(std::regex_match(e.headers.at("traceparent"), tp));
    EXPECT_FALSE(e.headers.at("ce-subject").empty());
  }
  // The caller's trace continues into the event.
  EXPECT_EQ(events[0].headers.at("traceparent"), trace);
  // Payloads are canonical JSON of the event protos.
  ev::OrganisationCreated created;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(events[0].data, &created).ok());
  EXPECT_EQ(created.organisation().id(), org.id());
  EXPECT_EQ(events[0].headers.at("ce-subject"), org.id());
  ev::OrganisationUpdated updated;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(events[1].data, &updated).ok());
  ASSERT_EQ(updated.changed_fields_size(), 1);
  EXPECT_EQ(updated.changed_fields(0), "region");
  ev::OrganisationArchived archived;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(events[6].data, &archived).ok());
  EXPECT_EQ(archived.reason(), "Merged into another trust");
  EXPECT_EQ(PendingOutboxRows(fx.db_url), 0);
}

TEST(PartnersEvents, RepublishSnapshotsEveryOrganisationOnceAcrossPages) {
  // More organisations than one republish page (500): `partners --republish`
  // adds exactly one organisation.snapshot per organisation, with its current
  // etag, and exits 0. (The relay is off: the outbox shows what it added.)
  PartnersFixture fx(std::map<std::string, std::string>{{"OUTBOX_RELAY", "false"}});
  auto conn = db::Conn::Open(fx.db_url, "test");
  ASSERT_TRUE(conn.ok());
  ASSERT_TRUE(
      (*conn)
          ->ExecScript("INSERT INTO organisations (name, sector, region, description) "
                       "SELECT 'Republished ' || g, 1, 1, '' FROM generate_series(1, 1234) g;"
                       "UPDATE organisations SET version = version + 41 WHERE name = "
                       "'Republished 777'")
          .ok());
  auto republish = [&](std::vector<std::string> args) {
    std::map<std::string, std::string> env = {
        {"DATABASE_URL", fx.db_url},
        {"EVENT_SUBJECT_PREFIX", fx.service->options().subject_prefix},
        {"LOG_LEVEL", "warn"}};
    if (args.size() > 1) {  // --after-restore reads the stream
      env["NATS_URL"] = fx.service->options().nats_url;
      env["EVENT_STREAM"] = fx.service->options().stream;
    }
    OneShot run = RunOnce(PARTNERS_BIN, std::move(args), env, "republish", absl::Seconds(60));
    EXPECT_EQ(run.code, 0) << "log: " << run.log;
  };
  auto snapshots = [&] {
    auto r = (*conn)->Exec(
        "SELECT count(*), count(DISTINCT ce_subject), "
        "count(*) FILTER (WHERE type <> 'connecting.events.v1.OrganisationSnapshot'), "
        "(SELECT count(*) FROM organisations o WHERE NOT EXISTS (SELECT 1 FROM outbox x "
        "  WHERE x.ce_subject = o.id::text AND x.payload LIKE '%\"etag\":\"' || o.version || "
        "'\"%')) "
        "FROM outbox WHERE subject LIKE '%.organisation.snapshot'");
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::vector<int64_t>{r->Int(0, 0), r->Int(0, 1), r->Int(0, 2), r->Int(0, 3)}
                  : std::vector<int64_t>{};
  };
  auto versions = [&] {
    auto r = (*conn)->Exec("SELECT string_agg(version::text, ',' ORDER BY id) FROM organisations");
    return r.ok() ? r->String(0, 0) : r.status().ToString();
  };
  const std::string before = versions();
  republish({"--republish"});
  // Each organisation once, with its current etag (the last element: none
  // without one), and nothing else.
  EXPECT_EQ(snapshots(), (std::vector<int64_t>{1234, 1234, 0, 0}));
  EXPECT_EQ(versions(), before) << "a plain republish changed versions";

  // --after-restore: every organisation gets a new version, then its
  // snapshot carries it (across the same pages, each once).
  ASSERT_TRUE((*conn)->ExecScript("DELETE FROM outbox").ok());
  republish({"--republish", "--after-restore"});
  EXPECT_EQ(snapshots(), (std::vector<int64_t>{1234, 1234, 0, 0}));
  auto bumped = (*conn)->Exec(
      "SELECT count(*) FROM organisations WHERE version < (extract(epoch FROM now()) * 1000000 - "
      "600000000)::bigint");
  ASSERT_TRUE(bumped.ok()) << bumped.status();
  EXPECT_EQ(bumped->Int(0, 0), 0) << "an organisation kept its old version";
  EXPECT_NE(versions(), before);
}

TEST(PartnersEvents, KilledAfterCommitBeforePublishTheEventStillArrivesOnce) {
  // With the relay off, the change commits but is not published; then SIGKILL.
  PartnersFixture fx(std::map<std::string, std::string>{{"OUTBOX_RELAY", "false"}});
  v1::Organisation org = CreateOrg(*fx.stub, "Crash Before Publish Trust");
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(ReadStream(fx.nats_url, fx.stream).size(), 0u);
  EXPECT_EQ(PendingOutboxRows(fx.db_url), 1);
  fx.service->Kill();

  ServiceProcess::Options o = fx.service->options();
  o.extra_env.clear();
  ServiceProcess restarted(o);
  restarted.Start();
  std::vector<StoredEvent> events = WaitForEvents(fx.nats_url, fx.stream, 1);
  absl::SleepFor(absl::Seconds(1));
  events = ReadStream(fx.nats_url, fx.stream);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].headers.at("ce-subject"), org.id());
  EXPECT_EQ(PendingOutboxRows(fx.db_url), 0);
}

TEST(PartnersEvents, CrashAfterPubAckBeforeMarkingSentDoesNotDuplicate) {
  PartnersFixture fx(
      std::map<std::string, std::string>{{"CONNECTING_TEST_CRASH_AFTER_PUBLISH", "1"}});
  v1::CreateOrganisationRequest req;
  *req.mutable_organisation() = SampleOrganisation("Crash After Publish Trust");
  v1::Organisation org;
  grpc::Status created =
      fx.stub->CreateOrganisation(Ctx(Token(server::Role::kAdmin)).get(), req, &org);
  // The relay publishes, gets the PubAck, and the process dies before marking.
  EXPECT_EQ(fx.service->process()->Wait(absl::Seconds(15)), 86);
  if (!created.ok()) {
    // It may die before its reply leaves (the relay woke at the commit):
    // the organisation was committed all the same.
    auto conn = db::Conn::Open(fx.db_url, "test");
    ASSERT_TRUE(conn.ok()) << conn.status();
    auto id = (*conn)->Exec("SELECT id::text FROM organisations WHERE name = $1",
                            {req.organisation().name()});
    ASSERT_TRUE(id.ok()) << id.status();
    ASSERT_EQ(id->rows(), 1) << "not created: " << created.error_message();
    org.set_id(id->String(0, 0));
  }
  EXPECT_EQ(ReadStream(fx.nats_url, fx.stream).size(), 1u);
  EXPECT_EQ(PendingOutboxRows(fx.db_url), 1);

  ServiceProcess::Options o = fx.service->options();
  o.extra_env.clear();
  ServiceProcess restarted(o);
  restarted.Start();
  // The row is re-sent with the same Nats-Msg-Id: JetStream drops the copy.
  for (int i = 0; i < 100 && PendingOutboxRows(fx.db_url) != 0; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(PendingOutboxRows(fx.db_url), 0);
  std::vector<StoredEvent> events = ReadStream(fx.nats_url, fx.stream);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].headers.at("ce-subject"), org.id());
}

TEST(PartnersEvents, NatsRestartedMidWayEventsArriveOnceAfterwards) {
  NatsServer nats;
  std::string suffix = RandomSuffix();
  ServiceProcess svc({PARTNERS_BIN,
                      NewDatabase(),
                      nats.url(),
                      "PARTNERS_" + suffix,
                      "t" + suffix + ".connecting.partners",
                      {}});
  svc.Start();
  auto stub = v1::PartnersService::NewStub(svc.channel());
  CreateOrg(*stub, "Before Restart Trust");
  ASSERT_EQ(WaitForEvents(nats.url(), "PARTNERS_" + suffix, 1).size(), 1u);

  nats.Stop();
  EXPECT_TRUE(svc.WaitForHealth(2, absl::Seconds(10))) << "health should be NOT_SERVING";
  // The log says which dependency is down, how the client library sees it,
  // and what ended the connection, though the library forgets it between
  // its reconnection attempts.
  EXPECT_TRUE(WaitUntil(
      [&] {
        return !LogLinesWith(svc.process()->log_path(),
                             {"\"msg\":\"health: NOT_SERVING\"", "\"postgresql\":\"up\"",
                              "\"nats\":\"down\"", "\"nats_error\":\"reconnecting since "})
                    .empty();
      },
      absl::Seconds(5)))
      << LogTail(svc.process()->log_path(), 20);
  // Writes still commit while NATS is down; their events wait in the outbox.
  v1::Organisation during = CreateOrg(*stub, "During Outage Trust");
  v1::Organisation during2 = CreateOrg(*stub, "During Outage Trust 2");
  // The outbox lag alert relies on these two while the relay cannot publish.
  auto metric = [&](const char* name) {
    return MetricValue(svc.metrics_port(), name).value_or(-1);
  };
  for (int i = 0; i < 60 && metric("connecting_outbox_lag_seconds") < 2; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_GE(metric("connecting_outbox_lag_seconds"), 2) << "outbox lag frozen during the outage";
  EXPECT_EQ(metric("connecting_outbox_pending"), 2);
  nats.Start();
  EXPECT_TRUE(svc.WaitForHealth(1, absl::Seconds(15))) << "health should be SERVING again";
  std::vector<StoredEvent> events = WaitForEvents(nats.url(), "PARTNERS_" + suffix, 3);
  absl::SleepFor(absl::Seconds(2));
  events = ReadStream(nats.url(), "PARTNERS_" + suffix);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[1].headers.at("ce-subject"), during.id());
  EXPECT_EQ(events[2].headers.at("ce-subject"), during2.id());
  for (int i = 0; i < 60 && metric("connecting_outbox_pending") != 0; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(metric("connecting_outbox_pending"), 0);
  EXPECT_EQ(metric("connecting_outbox_lag_seconds"), 0);
}

TEST(PartnersEvents, TwoReplicasPublishEachEventOnce) {
  PartnersFixture fx;
  ServiceProcess second(fx.service->options());
  second.Start();
  auto stub2 = v1::PartnersService::NewStub(second.channel());
  std::vector<std::future<void>> calls;
  for (int i = 0; i < 40; ++i) {
    auto* stub = i % 2 == 0 ? fx.stub.get() : stub2.get();
    calls.push_back(std::async(
        std::launch::async, [stub, i] { CreateOrg(*stub, "Replica Trust " + std::to_string(i)); }));
  }
  for (auto& c : calls) c.get();
  std::vector<StoredEvent> events = WaitForEvents(fx.nats_url, fx.stream, 40);
  absl::SleepFor(absl::Seconds(1));
  events = ReadStream(fx.nats_url, fx.stream);
  EXPECT_EQ(events.size(), 40u);
  std::set<std::string> subjects;
  for (const auto& e : events) subjects.insert(e.headers.at("ce-subject"));
  EXPECT_EQ(subjects.size(), 40u);
}

}  // namespace
}  // namespace connecting::testing
