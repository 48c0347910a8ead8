// Operations: health follows PostgreSQL, SIGTERM drains and exits 0, bad
// configuration stops start-up with a clear message.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <future>
#include <iostream>
#include <map>
#include <set>
#include <thread>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "libs/db/db.h"
#include "libs/server/auth.h"
#include "tests/harness.h"

namespace connecting::testing {
namespace {

namespace v1 = ::connecting::partners::v1;

int Shell(const std::string& script) {
  return std::system(absl::StrCat("bash -c '", script, "'").c_str());
}

// Partners on the database at `db_url`, with a stream of its own on the
// shared NATS.
ServiceProcess::Options PartnersOn(const std::string& db_url,
                                   std::map<std::string, std::string> extra_env = {}) {
  std::string suffix = RandomSuffix();
  return {PARTNERS_BIN,
          db_url,
          RequiredEnv("CONNECTING_TEST_NATS"),
          "PARTNERS_" + suffix,
          "t" + suffix + ".connecting.partners",
          std::move(extra_env)};
}

TEST(PartnersHealth, NotServingWhilePostgresIsDownServingWhenBack) {
  PostgresServer pg;  // of the test's own, so stopping it disturbs no other test
  ServiceProcess svc(PartnersOn(pg.admin_url()));
  svc.Start();
  EXPECT_EQ(svc.Health(), 1);

  pg.Stop();
  EXPECT_TRUE(svc.WaitForHealth(2, absl::Seconds(10)));
  EXPECT_EQ(svc.Health("liveness"), 1) << "liveness must not depend on the database";
  auto stub = v1::PartnersService::NewStub(svc.channel());
  v1::CreateOrganisationRequest req;
  *req.mutable_organisation() = SampleOrganisation("Outage Trust");
  v1::Organisation out;
  const std::string trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  auto outage_call = [&] {
    auto ctx = Ctx(Token(server::Role::kAdmin));
    ctx->AddMetadata("traceparent", trace);
    return stub->CreateOrganisation(ctx.get(), req, &out);
  };
  grpc::Status s = outage_call();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  // In plain words: where the database is, and what libpq said, stay in
  // the server's log.
  EXPECT_EQ(s.error_message(), "the service's database is unavailable; retry with backoff");
  EXPECT_FALSE(absl::StrContains(s.error_message() + s.error_details(), std::to_string(pg.port())));
  EXPECT_EQ(DetailsOf(s).reason, "DEPENDENCY_UNAVAILABLE");
  // The log, at warn, says what the client was not told: the health
  // monitor's view (libpq's words, with the database's port once it
  // refuses connections), and the calls answered UNAVAILABLE: the first
  // at once under its traceparent, the next ones within 10 s counted
  // into one later line rather than a line each.
  for (int i = 0; i < 3; ++i) EXPECT_EQ(outage_call().error_code(), grpc::StatusCode::UNAVAILABLE);
  const std::string port = absl::StrCat("port ", pg.port());
  auto warnings = [&](absl::string_view msg) {
    return LogLinesWith(svc.process()->log_path(),
                        {"\"level\":\"warn\"", absl::StrCat("\"msg\":\"", msg, "\"")});
  };
  EXPECT_TRUE(WaitUntil(
      [&] {
        for (const std::string& line : warnings("health: NOT_SERVING")) {
          if (absl::StrContains(line, "\"postgresql\":\"down\"") && absl::StrContains(line, port) &&
              absl::StrContains(line, "refused")) {
            return true;
          }
        }
        return false;
      },
      absl::Seconds(10)))
      << "no NOT_SERVING line with libpq's words:\n"
      << LogTail(svc.process()->log_path(), 20);
  std::vector<std::string> unavailable =
      warnings("calls answered UNAVAILABLE: the database is unavailable");
  ASSERT_EQ(unavailable.size(), 1u) << LogTail(svc.process()->log_path(), 20);
  EXPECT_TRUE(absl::StrContains(unavailable[0], "\"method\":\"CreateOrganisation\""))
      << unavailable[0];
  EXPECT_TRUE(absl::StrContains(unavailable[0], trace)) << unavailable[0];
  EXPECT_TRUE(absl::StrContains(unavailable[0], "\"more_since_the_last_line\":\"0\""))
      << unavailable[0];
  // What the client did not hear: libpq's own words.
  EXPECT_TRUE(absl::StrContains(unavailable[0], port) ||
              absl::StrContains(unavailable[0], "server closed the connection"))
      << unavailable[0];

  pg.Start();
  EXPECT_TRUE(svc.WaitForHealth(1, absl::Seconds(15)));
  s = stub->CreateOrganisation(Ctx(Token(server::Role::kAdmin)).get(), req, &out);
  EXPECT_TRUE(s.ok()) << s.error_message();
  svc.Kill();
}

// CreateOrganisation of `name` as an admin, with the call's deadline
// `deadline` from now.
grpc::Status CreateWithin(v1::PartnersService::Stub& stub, const std::string& name,
                          absl::Duration deadline) {
  v1::CreateOrganisationRequest req;
  *req.mutable_organisation() = SampleOrganisation(name);
  v1::Organisation out;
  static const std::string admin = Token(server::Role::kAdmin);
  auto ctx = Ctx(admin);
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  return stub.CreateOrganisation(ctx.get(), req, &out);
}

// `n` writes at once, twice, so that the pool has opened `n` connections
// (the first round may reuse some): how many of them failed.
int FailedOfWritesAtOnce(v1::PartnersService::Stub& stub, int n) {
  std::atomic<int> failed{0};
  for (int round = 0; round < 2; ++round) {
    std::vector<std::thread> writers;
    for (int i = 0; i < n; ++i) {
      writers.emplace_back([&, round, i] {
        if (!CreateWithin(stub, absl::StrCat("Before Failover ", round, "-", i), absl::Seconds(10))
                 .ok()) {
          ++failed;
        }
      });
    }
    for (auto& t : writers) t.join();
  }
  return failed.load();
}

TEST(PartnersHealth, NotServingWhilePostgresStopsAnsweringServingWhenItAnswersAgain) {
  // A PostgreSQL that hangs (or whose host vanished) closes nothing: its
  // connections stay open and a query waits for an answer that does not
  // come. Every process of a private PostgreSQL is stopped (SIGSTOP) and the
  // service must say NOT_SERVING all the same, then SERVING once it answers.
  // Whatever the test's outcome, that PostgreSQL is let go on before it is
  // stopped.
  PostgresServer pg;
  ServiceProcess svc(PartnersOn(pg.admin_url()));
  svc.Start();
  ASSERT_EQ(svc.Health(), 1);
  auto stub = v1::PartnersService::NewStub(svc.channel());
  ASSERT_TRUE(CreateWithin(*stub, "Hung Database Trust", absl::Seconds(10)).ok());
  pg.Pause();
  EXPECT_TRUE(svc.WaitForHealth(2, absl::Seconds(15)))
      << "still " << svc.Health() << " with PostgreSQL not answering";
  EXPECT_EQ(svc.Health("liveness"), 1);
  // A write meanwhile: its caller gives up at its deadline, and so must the
  // service, soon after, rather than hold a worker and a connection until
  // PostgreSQL answers (the request is counted once it finishes).
  auto timed_out = [&] {
    for (absl::string_view line : absl::StrSplit(HttpGet(svc.metrics_port(), "/metrics"), '\n')) {
      if (absl::StartsWith(line, "connecting_grpc_requests_total{") &&
          absl::StrContains(line, "CreateOrganisation") &&
          absl::StrContains(line, "DEADLINE_EXCEEDED")) {
        return true;
      }
    }
    return false;
  };
  grpc::Status s = CreateWithin(*stub, "Unanswered Trust", absl::Seconds(1));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
  EXPECT_TRUE(WaitUntil(timed_out, absl::Seconds(10), absl::Milliseconds(100)))
      << "the service still waits on PostgreSQL for a request given up on";
  // The operator reads why in the log, at warn, under the call's method.
  EXPECT_EQ(LogLinesWith(svc.process()->log_path(),
                         {"\"level\":\"warn\"",
                          "\"msg\":\"calls answered DEADLINE_EXCEEDED: the database did not "
                          "answer in time\"",
                          "CreateOrganisation", "\"traceparent\":\"00-"})
                .size(),
            1u)
      << LogTail(svc.process()->log_path(), 20);
  pg.Resume();
  EXPECT_TRUE(svc.WaitForHealth(1, absl::Seconds(20)));
  s = CreateWithin(*stub, "Unanswered Trust", absl::Seconds(10));
  EXPECT_TRUE(s.ok()) << s.error_message();
  svc.Kill();
}

TEST(PartnersHealth, OnceItsDatabaseAnswersAgainNoCallWaitsOnAConnectionThatFellSilent) {
  // A failover that moves the database's address: the connections made
  // before it lead nowhere (the old server vanished without a word), new
  // ones reach the new server. The health check's own connection falls
  // silent too and is replaced; from then on the pool must not hand out a
  // connection made before, or each of its idle ones would cost a caller
  // its whole deadline.
  const std::string db_url = NewDatabase();
  StallingProxy proxy(PortOf(db_url));
  ServiceProcess svc(PartnersOn(WithPort(db_url, proxy.port()), {{"DB_POOL_SIZE", "6"}}));
  svc.Start();
  ASSERT_EQ(svc.Health(), 1);
  auto stub = v1::PartnersService::NewStub(svc.channel());
  // Every connection of the pool opened.
  ASSERT_EQ(FailedOfWritesAtOnce(*stub, 6), 0);
  proxy.Abandon();
  // The health check finds its connection silent (NOT_SERVING), connects
  // anew, and is SERVING again.
  auto health_lines = [&](const char* state) {
    return LogLinesWith(svc.process()->log_path(), {absl::StrCat("\"msg\":\"health: ", state)})
        .size();
  };
  ASSERT_TRUE(WaitUntil([&] { return health_lines("NOT_SERVING") >= 1; }, absl::Seconds(15)))
      << LogTail(svc.process()->log_path(), 20);
  ASSERT_TRUE(WaitUntil([&] { return health_lines("SERVING") >= 2; }, absl::Seconds(15)))
      << LogTail(svc.process()->log_path(), 20);
  // Writes one after another, more of them than the pool holds: none may
  // meet a connection made before the failover.
  for (int i = 0; i < 8; ++i) {
    grpc::Status s = CreateWithin(*stub, absl::StrCat("After Failover ", i), absl::Seconds(3));
    EXPECT_TRUE(s.ok()) << "write " << i << ": " << s.error_code() << " " << s.error_message();
  }
  svc.Kill();
}

TEST(PartnersHealth, AfterAFailoverToAnotherServerCallsWaitingOnTheOldOneRunOnTheNewOne) {
  // A failover to another server behind the same address while calls wait
  // on the old one, which vanished without a word. Once the health check
  // reaches the new server (another postmaster), those calls' connections
  // are ended rather than left to wait out their deadlines, and as none of
  // them had sent its COMMIT, each runs once more on the new server and
  // succeeds; so does the next write.
  const std::string db_url = NewDatabase();
  PostgresServer next;  // the new server, with a database of the same name
  const std::string next_url = WithPort(db_url, next.port());
  {
    auto admin = db::Conn::Open(next.admin_url(), "test");
    ASSERT_TRUE(admin.ok()) << admin.status();
    const std::string name = db_url.substr(db_url.rfind('/') + 1);
    ASSERT_TRUE((*admin)->ExecScript(absl::StrCat("CREATE DATABASE ", name)).ok());
  }
  OneShot migrate = RunOnce(PARTNERS_BIN, {"--migrate"}, {{"DATABASE_URL", next_url}}, "migrate");
  ASSERT_EQ(migrate.code, 0) << migrate.log;
  StallingProxy proxy(PortOf(db_url));
  ServiceProcess svc(PartnersOn(WithPort(db_url, proxy.port()), {{"DB_POOL_SIZE", "6"}}));
  svc.Start();
  ASSERT_EQ(svc.Health(), 1);
  auto stub = v1::PartnersService::NewStub(svc.channel());
  // Three connections open.
  ASSERT_EQ(FailedOfWritesAtOnce(*stub, 3), 0);

  // Three writes wait on the old server, their deadlines 25 s away.
  proxy.Stall();
  struct Outcome {
    grpc::Status status;
    absl::Duration took;
  };
  std::vector<std::future<Outcome>> waiting;
  for (int i = 0; i < 3; ++i) {
    waiting.push_back(std::async(std::launch::async, [&, i] {
      const absl::Time start = absl::Now();
      grpc::Status s = CreateWithin(*stub, absl::StrCat("During Failover ", i), absl::Seconds(25));
      return Outcome{s, absl::Now() - start};
    }));
  }
  absl::SleepFor(absl::Milliseconds(500));
  ASSERT_EQ(LogLinesWith(svc.process()->log_path(), {"\"msg\":\"database server changed"}).size(),
            0u);
  proxy.Retarget(next.port());
  proxy.Abandon();
  proxy.Resume();
  for (auto& w : waiting) {
    Outcome o = w.get();
    EXPECT_TRUE(o.status.ok()) << o.status.error_code() << " " << o.status.error_message() << "\n"
                               << LogTail(svc.process()->log_path(), 20);
    // The health check's 2 s for the silent connection, then a new one.
    EXPECT_LT(o.took, absl::Seconds(12)) << "a call waited for a server that was gone";
  }
  EXPECT_TRUE(WaitUntil(
      [&] {
        return LogLinesWith(svc.process()->log_path(),
                            {"\"level\":\"warn\"", "\"msg\":\"database server changed"})
                   .size() == 1;
      },
      absl::Seconds(5)))
      << LogTail(svc.process()->log_path(), 20);
  grpc::Status after = CreateWithin(*stub, "After Failover", absl::Seconds(5));
  EXPECT_TRUE(after.ok()) << after.error_code() << " " << after.error_message();
  auto on_next = db::Conn::Open(next_url, "test");
  ASSERT_TRUE(on_next.ok()) << on_next.status();
  auto found = (*on_next)->Exec("SELECT name FROM organisations ORDER BY name");
  ASSERT_TRUE(found.ok()) << found.status();
  ASSERT_EQ(found->rows(), 4) << "each write once, on the new server";
  EXPECT_EQ(found->String(0, 0), "After Failover");
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(found->String(i + 1, 0), absl::StrCat("During Failover ", i));
  svc.Kill();
}

TEST(PartnersHealth, ADatabaseTakingNoWritesKeepsReadsSaysSoAndIsWrittenAtOnceWhenItTakesThem) {
  // After a failover the URL can lead to a standby for a while, or an
  // operator sets the database read-only. Reads go on (SERVING), writes
  // answer UNAVAILABLE, and the operator sees it in the log and a metric.
  // Once it takes writes again, the first write succeeds: no connection
  // made meanwhile (read-only for its life) is handed to it.
  PostgresServer pg;
  ServiceProcess svc(PartnersOn(pg.admin_url()));
  svc.Start();
  ASSERT_EQ(svc.Health(), 1);
  auto read_only = [&] { return MetricValue(svc.metrics_port(), "connecting_database_read_only"); };
  EXPECT_EQ(read_only(), 0.0);
  auto admin = db::Conn::Open(pg.admin_url(), "test");
  ASSERT_TRUE(admin.ok()) << admin.status();
  // On: every connection but this one ended, so that all are made anew
  // read-only. Off: those stay read-only for their life, as connections
  // to a standby stay on it once the URL leads to the new primary; only new
  // ones take writes.
  auto set_read_only = [&](bool on) {
    return (*admin)->ExecScript(
        on ? "ALTER DATABASE postgres SET default_transaction_read_only = on;"
             "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
             "datname = 'postgres' AND pid <> pg_backend_pid()"
           : "ALTER DATABASE postgres RESET default_transaction_read_only");
  };
  absl::Cleanup writable = [&] { (void)set_read_only(false); };
  auto stub = v1::PartnersService::NewStub(svc.channel());
  auto create = [&](const std::string& name) {
    return CreateWithin(*stub, name, absl::Seconds(10));
  };
  ASSERT_TRUE(create("Before Trust").ok());

  ASSERT_TRUE(set_read_only(true).ok());
  EXPECT_TRUE(WaitUntil([&] { return read_only() == 1.0; }, absl::Seconds(10)))
      << LogTail(svc.process()->log_path(), 20);
  EXPECT_EQ(svc.Health(), 1) << "reads still work: NOT_SERVING would take every replica out";
  grpc::Status refused = create("Meanwhile Trust");
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.error_message();
  EXPECT_EQ(LogLinesWith(svc.process()->log_path(),
                         {"\"level\":\"warn\"", "\"msg\":\"database takes no writes"})
                .size(),
            1u)
      << LogTail(svc.process()->log_path(), 20);

  // Reads from the database (pages nobody asked for before, so not
  // cached), on connections that stay read-only.
  for (const char* prefix : {"Bef", "Be", "B"}) {
    v1::ListOrganisationsRequest list;
    list.set_name_prefix(prefix);
    v1::ListOrganisationsResponse page;
    grpc::Status s = stub->ListOrganisations(Ctx(Token(server::Role::kViewer)).get(), list, &page);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(page.organisations_size(), 1);
  }

  ASSERT_TRUE(set_read_only(false).ok());
  EXPECT_TRUE(WaitUntil([&] { return read_only() == 0.0; }, absl::Seconds(10)))
      << LogTail(svc.process()->log_path(), 20);
  EXPECT_EQ(LogLinesWith(svc.process()->log_path(),
                         {"\"level\":\"info\"", "\"msg\":\"database takes writes again\""})
                .size(),
            1u);
  grpc::Status after = create("After Trust");
  EXPECT_TRUE(after.ok()) << "the first write after: " << after.error_message();
  svc.Kill();
}

TEST(PartnersHealth, SigtermDrainsAndExitsZero) {
  PartnersFixture fx;
  v1::CreateOrganisationRequest req;
  *req.mutable_organisation() = SampleOrganisation("Drain Trust");
  v1::Organisation out;
  ASSERT_TRUE(fx.stub->CreateOrganisation(Ctx(fx.admin).get(), req, &out).ok());
  // Close our idle connection first: an idle gRPC client notices GOAWAY only
  // on its next poll, and the server would wait for it up to SHUTDOWN_GRACE.
  fx.stub.reset();
  fx.service->DropChannel();
  EXPECT_EQ(fx.service->Terminate(), 0);
  // The event was flushed before exit.
  EXPECT_EQ(ReadStream(fx.nats_url, fx.stream).size(), 1u);
}

TEST(PartnersHealth, SigtermWithADelayServesOnWhileNotServingThenExitsZero) {
  // SHUTDOWN_DELAY: NOT_SERVING at once, calls still answered for the delay
  // (while load balancers take the replica out), then the usual drain.
  PartnersFixture fx(std::map<std::string, std::string>{{"SHUTDOWN_DELAY", "5s"}});
  v1::CreateOrganisationRequest req;
  *req.mutable_organisation() = SampleOrganisation("Lame Duck Trust");
  v1::Organisation org;
  ASSERT_TRUE(fx.stub->CreateOrganisation(Ctx(fx.admin).get(), req, &org).ok());
  const absl::Time sent = absl::Now();
  fx.service->process()->Signal(SIGTERM);
  EXPECT_TRUE(WaitUntil([&] { return fx.service->Health() == 2; }, absl::Seconds(1)))
      << "not NOT_SERVING within a second of SIGTERM";
  v1::GetOrganisationRequest get;
  get.set_id(org.id());
  v1::Organisation got;
  grpc::Status st = fx.stub->GetOrganisation(Ctx(fx.admin).get(), get, &got);
  EXPECT_TRUE(st.ok()) << "a call during the delay: " << st.error_code() << " "
                       << st.error_message();
  EXPECT_EQ(got.name(), "Lame Duck Trust");
  *req.mutable_organisation() = SampleOrganisation("Written During The Delay");
  v1::Organisation written;
  st = fx.stub->CreateOrganisation(Ctx(fx.admin).get(), req, &written);
  EXPECT_TRUE(st.ok()) << "a write during the delay: " << st.error_message();
  EXPECT_LT(absl::Now() - sent, absl::Seconds(4)) << "the checks above took the delay";
  EXPECT_LT(fx.service->process()->Wait(absl::ZeroDuration()), 0) << "exited before its delay";
  fx.stub.reset();
  fx.service->DropChannel();  // an idle client would hold the drain up (above)
  EXPECT_EQ(fx.service->process()->Wait(absl::Seconds(15)), 0);
  EXPECT_GE(absl::Now() - sent, absl::Seconds(5)) << "stopped before SHUTDOWN_DELAY";
  EXPECT_EQ(LogLinesWith(fx.service->process()->log_path(),
                         {"\"msg\":\"serving on while clients move to other replicas\""})
                .size(),
            1u);
  // Both changes made, the second during the delay, were published before exit.
  EXPECT_EQ(ReadStream(fx.nats_url, fx.stream).size(), 2u);
}

TEST(PartnersHealth, ASecondSigtermCutsTheDelayShort) {
  PartnersFixture fx(std::map<std::string, std::string>{{"SHUTDOWN_DELAY", "5m"}});
  fx.stub.reset();
  fx.service->process()->Signal(SIGTERM);
  EXPECT_TRUE(WaitUntil([&] { return fx.service->Health() == 2; }, absl::Seconds(2)));
  fx.service->DropChannel();
  const absl::Time second = absl::Now();
  fx.service->process()->Signal(SIGTERM);
  EXPECT_EQ(fx.service->process()->Wait(absl::Seconds(15)), 0);
  EXPECT_LT(absl::Now() - second, absl::Seconds(10));
  EXPECT_EQ(
      LogLinesWith(fx.service->process()->log_path(), {"\"msg\":\"a second signal: stopping now\""})
          .size(),
      1u);
}

TEST(PartnersHealth, AHealthWatchHearsNotServingAndEndsWhenTheServiceStops) {
  // A client-side health checker keeps Health/Watch open: on SIGTERM it hears
  // NOT_SERVING, its stream ends, and the service still exits 0.
  PartnersFixture fx;
  auto health = grpc::health::v1::Health::NewStub(fx.service->channel());
  grpc::ClientContext ctx;
  grpc::health::v1::HealthCheckRequest req;
  req.set_service("connecting.partners.v1.PartnersService");
  auto watch = health->Watch(&ctx, req);
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(watch->Read(&resp));
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  fx.stub.reset();
  auto exited = std::async(std::launch::async, [&] { return fx.service->Terminate(); });
  ASSERT_TRUE(watch->Read(&resp));
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(watch->Read(&resp));
  EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  health.reset();
  EXPECT_EQ(exited.get(), 0);
}

TEST(PartnersHealth, BadConfigurationExitsTwoNamingEveryVariable) {
  OneShot run = RunOnce(PARTNERS_BIN, {},
                        {{"DATABASE_URL", ""},
                         {"AUTH_JWT_KEY", "short"},
                         {"GRPC_LISTEN", "nowhere"},
                         {"DB_POOL_SIZE", "0"},
                         {"READ_CACHE_MB", "lots"}},  // partners' own, named with the rest
                        "badcfg", absl::Seconds(10));
  EXPECT_EQ(run.code, 2);
  std::string out = ReadFile(run.log);
  for (const char* var :
       {"DATABASE_URL", "AUTH_JWT_KEY", "GRPC_LISTEN", "DB_POOL_SIZE", "READ_CACHE_MB"}) {
    EXPECT_NE(out.find(var), std::string::npos) << var << " not named in:\n" << out;
  }
}

TEST(PartnersHealth, TokenKeysRotateWithoutARestart) {
  // The operator's rotation: the key file (a mounted Secret) gets the new
  // secret beside the old, then loses the old; the running service follows
  // within AUTH_JWT_KEY_FILE_CHECK, and a token of the removed key is refused.
  const std::string next(48, 'n');
  const std::string file =
      absl::StrCat(RequiredEnv("CONNECTING_TEST_TMP"), "/jwt-", RandomSuffix());
  ASSERT_TRUE(ReplaceFile(file, std::string(kJwtKey) + "\n"));
  PartnersFixture fx(std::map<std::string, std::string>{
      {"AUTH_JWT_KEY", ""}, {"AUTH_JWT_KEY_FILE", file}, {"AUTH_JWT_KEY_FILE_CHECK", "200ms"}});
  auto next_token = server::MintToken(next, server::Role::kViewer, "v", {}, absl::Minutes(5));
  ASSERT_TRUE(next_token.ok());
  auto code = [&](const std::string& token) {
    v1::ListOrganisationsRequest req;
    v1::ListOrganisationsResponse resp;
    return fx.stub->ListOrganisations(Ctx(token).get(), req, &resp).error_code();
  };
  auto becomes = [&](const std::string& token, grpc::StatusCode want) {
    absl::Time until = absl::Now() + absl::Seconds(5);
    while (code(token) != want && absl::Now() < until) absl::SleepFor(absl::Milliseconds(50));
    return code(token);
  };
  const std::string current = Token(server::Role::kViewer, "v");
  EXPECT_EQ(code(current), grpc::StatusCode::OK);
  EXPECT_EQ(code(*next_token), grpc::StatusCode::UNAUTHENTICATED);
  ASSERT_TRUE(ReplaceFile(file, std::string(kJwtKey) + "\n" + next + "\n"));
  EXPECT_EQ(becomes(*next_token, grpc::StatusCode::OK), grpc::StatusCode::OK);
  EXPECT_EQ(code(current), grpc::StatusCode::OK);
  ASSERT_TRUE(ReplaceFile(file, next + "\n"));
  EXPECT_EQ(becomes(current, grpc::StatusCode::UNAUTHENTICATED), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(code(*next_token), grpc::StatusCode::OK);

  // One key source at a time, and a key file that cannot be read, are named.
  for (const auto& [env, says] :
       std::vector<std::pair<std::map<std::string, std::string>, std::string>>{
           {{{"AUTH_JWT_KEY", kJwtKey}, {"AUTH_JWT_KEY_FILE", file}},
            "AUTH_JWT_KEY and AUTH_JWT_KEY_FILE: set one, not both"},
           {{{"AUTH_JWT_KEY_FILE", file + ".missing"}}, "AUTH_JWT_KEY_FILE: cannot read"}}) {
    std::map<std::string, std::string> all = env;
    all["DATABASE_URL"] = fx.db_url;
    OneShot run = RunOnce(PARTNERS_BIN, {}, all, "badkey", absl::Seconds(10));
    EXPECT_EQ(run.code, 2);
    EXPECT_NE(ReadFile(run.log).find(says), std::string::npos) << ReadFile(run.log);
  }
}

// In `dir`, NAME.pem and NAME.key: a certificate with the common name `cn`,
// good for 127.0.0.1 and localhost, signed by the CA there; false if openssl
// failed.
bool IssueCertificate(const std::string& dir, const std::string& name, const std::string& cn) {
  return Shell(absl::StrCat(
             "cd ", dir, " && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes",
             " -keyout ", name, ".key -out ", name, ".csr -subj /CN=", cn, " 2>/dev/null",
             " && printf \"subjectAltName=DNS:localhost,DNS:127.0.0.1,IP:127.0.0.1\\n",
             "extendedKeyUsage=serverAuth,clientAuth\\n\" > ", name, ".cnf",
             " && openssl x509 -req -in ", name, ".csr -CA ca.pem -CAkey ca.key -CAcreateserial",
             " -out ", name, ".pem -days 1 -extfile ", name, ".cnf 2>/dev/null")) == 0;
}

// A directory holding a CA of its own (ca.pem) and, signed by it, a server
// and a client certificate (server.pem/.key, client.pem/.key); "" if openssl
// failed.
std::string MakeTestCa() {
  const std::string dir = absl::StrCat(RequiredEnv("CONNECTING_TEST_TMP"), "/tls-", RandomSuffix());
  int rc =
      Shell(absl::StrCat("mkdir -p ", dir, " && cd ", dir,
                         " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                         "-keyout ca.key -out ca.pem -days 1 -subj /CN=test-ca 2>/dev/null"));
  return rc == 0 && IssueCertificate(dir, "server", "server") &&
                 IssueCertificate(dir, "client", "client")
             ? dir
             : "";
}

// Partners on its own database, with NATS at `nats_url` and `env`: it
// serves (which needs NATS connected and its stream made), and the event of
// an organisation it creates leaves the outbox, published.
void ServesAndPublishesThrough(const std::string& nats_url,
                               std::map<std::string, std::string> env) {
  const std::string url = NewDatabase();
  const std::string suffix = RandomSuffix();
  ServiceProcess svc({PARTNERS_BIN, url, nats_url, "PARTNERS_" + suffix,
                      "t" + suffix + ".connecting.partners", std::move(env)});
  svc.Start();
  auto stub = v1::PartnersService::NewStub(svc.channel());
  v1::CreateOrganisationRequest req;
  req.mutable_organisation()->set_name("Well Connected Trust");
  req.mutable_organisation()->set_sector(v1::SECTOR_ACUTE_TRUST);
  req.mutable_organisation()->set_region(v1::REGION_LONDON);
  v1::Organisation created;
  grpc::Status st =
      stub->CreateOrganisation(Ctx(Token(server::Role::kAdmin, "a")).get(), req, &created);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(WaitForOutboxDrained(url)) << "the event was not published";
}

TEST(PartnersHealth, PublishesOverTlsToANatsServerThatVerifiesItsClients) {
  // NATS with TLS that requires a client certificate (mutual TLS), all
  // signed by a CA of the test's own: the service connects with
  // NATS_TLS_CA_FILE, NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE, serves, and
  // its events leave the outbox.
  const std::string dir = MakeTestCa();
  ASSERT_FALSE(dir.empty());
  const int port = FreePort();
  auto nats = StartNats({"-js", "-a", "127.0.0.1", "-p", std::to_string(port), "-sd", dir + "/js",
                         "--tlsverify", "--tlscert", dir + "/server.pem", "--tlskey",
                         dir + "/server.key", "--tlscacert", dir + "/ca.pem"},
                        dir, port);
  ServesAndPublishesThrough(absl::StrCat("tls://127.0.0.1:", port),
                            {{"NATS_TLS_CA_FILE", dir + "/ca.pem"},
                             {"NATS_TLS_CERT_FILE", dir + "/client.pem"},
                             {"NATS_TLS_KEY_FILE", dir + "/client.key"}});

  // A client certificate needs its key; a CA file that is not there is named.
  for (const auto& [more, says] :
       std::vector<std::pair<std::map<std::string, std::string>, std::string>>{
           {{{"NATS_TLS_CERT_FILE", dir + "/client.pem"}},
            "NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE: a client certificate needs its key"},
           {{{"NATS_TLS_CA_FILE", dir + "/missing.pem"}}, "NATS_TLS_CA_FILE: cannot read"}}) {
    std::map<std::string, std::string> env = more;
    env["DATABASE_URL"] = NewDatabase();
    env["AUTH_JWT_KEY"] = kJwtKey;
    OneShot run = RunOnce(PARTNERS_BIN, {}, env, "badtls", absl::Seconds(10));
    EXPECT_EQ(run.code, 2);
    EXPECT_NE(ReadFile(run.log).find(says), std::string::npos) << ReadFile(run.log);
  }
}

TEST(PartnersHealth, ConnectsToANatsServerInOperatorModeWithItsCredentials) {
  // A NATS server that admits only users of its operator's accounts (JWTs
  // made by tools/test/nats-operator.js): the service connects with
  // NATS_CREDS_FILE, makes its stream and publishes.
  const std::string dir =
      absl::StrCat(RequiredEnv("CONNECTING_TEST_TMP"), "/operator-", RandomSuffix());
  const int port = FreePort();
  std::vector<std::string> args = NatsOperator(dir, port);
  ASSERT_FALSE(args.empty());
  // -D: an authentication failure is logged with its reason; -V: each
  // client's CONNECT, with the JWT it presents.
  args.push_back("-DV");
  auto nats = StartNats(args, dir, port);
  ServesAndPublishesThrough(absl::StrCat("nats://127.0.0.1:", port),
                            {{"NATS_CREDS_FILE", dir + "/service.creds"}});
  // A client without them, refused: not the service, and not counted below.
  {
    int fd = DialLoopback(port);
    ASSERT_GE(fd, 0);
    const std::string hello = "CONNECT {\"verbose\":false,\"name\":\"stranger\"}\r\nPING\r\n";
    ASSERT_EQ(write(fd, hello.data(), hello.size()), static_cast<ssize_t>(hello.size()));
    char buf[4096];
    std::string got;
    for (ssize_t n; got.find("-ERR") == std::string::npos && (n = read(fd, buf, sizeof buf)) > 0;) {
      got.append(buf, static_cast<size_t>(n));
    }
    close(fd);
    ASSERT_NE(got.find("Authorization Violation"), std::string::npos) << got;
  }
  // The service's credentials were taken: a connection that presented
  // them, and was not refused, whoever else knocked on this port. (About one
  // run in 500 here, the client library sends its first CONNECT with the
  // JWT but without the signature of the server's nonce, and the server
  // refuses it, "Signature missing"; the library then closes the
  // connection for good, and the service opens a new one a second later:
  // NatsCredentialsRefusedAtFirst… below. Such a refusal is printed, not
  // failed.)
  std::string creds = ReadFile(dir + "/service.creds");
  const size_t jwt_at = creds.find("eyJ");
  ASSERT_NE(jwt_at, std::string::npos) << creds;
  const std::string jwt = creds.substr(jwt_at, creds.find('\n', jwt_at) - jwt_at);
  std::set<std::string> ours;  // "cid:N" of the clients that presented it
  auto cid_of = [](absl::string_view line) {
    size_t at = line.find(" - cid:");
    if (at == absl::string_view::npos) return std::string();
    absl::string_view rest = line.substr(at + 3);
    return std::string(rest.substr(0, rest.find(' ')));
  };
  const std::string log = ReadFile(dir + "/nats.log");
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (absl::StrContains(line, "CONNECT") && absl::StrContains(line, jwt))
      ours.insert(cid_of(line));
  }
  std::set<std::string> refused;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (absl::StrContains(line, "authentication error") && ours.count(cid_of(line)) > 0) {
      refused.insert(cid_of(line));
    }
  }
  EXPECT_LT(refused.size(), ours.size()) << "the server never took the service's credentials:\n"
                                         << log;
  if (!refused.empty()) {
    std::printf("refused first (%zu of %zu connections), then taken:\n%s\n", refused.size(),
                ours.size(), log.c_str());
  }
  EXPECT_TRUE(absl::StrContains(log, "\"stranger\" - authentication error")) << log;
}

TEST(PartnersHealth, NatsCredentialsRefusedAtFirstAreTriedAgainUntilTheServerTakesThem) {
  // The client library gives up for good on a connection whose credentials
  // the server refuses (here, a server of another operator: as if the
  // server had not yet learnt of the service's account). The service opens
  // a new connection, again and again, and once the server at that address
  // takes its credentials it serves and publishes what waited in its
  // outbox, without a restart.
  const std::string tmp = RequiredEnv("CONNECTING_TEST_TMP");
  const std::string suffix = RandomSuffix();
  const std::string other = absl::StrCat(tmp, "/operator-other-", suffix);
  const std::string ours = absl::StrCat(tmp, "/operator-ours-", suffix);
  const int port = FreePort();
  const std::vector<std::string> other_server = NatsOperator(other, port);
  const std::vector<std::string> our_server = NatsOperator(ours, port);
  ASSERT_FALSE(other_server.empty() || our_server.empty());
  auto refusing = StartNats(other_server, other, port);
  const std::string url = NewDatabase();
  ServiceProcess svc({PARTNERS_BIN,
                      url,
                      absl::StrCat("nats://127.0.0.1:", port),
                      "PARTNERS_" + suffix,
                      "t" + suffix + ".connecting.partners",
                      {{"NATS_CREDS_FILE", ours + "/service.creds"}}});
  svc.Launch();
  auto given_up = [&] {
    return LogLinesWith(
        svc.process()->log_path(),
        {"\"level\":\"warn\"", "\"msg\":\"nats connection closed by the client library"});
  };
  auto refusals = [&] {
    return LogLinesWith(other + "/nats.log", {"authentication error"}).size();
  };
  ASSERT_TRUE(WaitUntil([&] { return refusals() >= 3; }, absl::Seconds(15)))
      << "the service did not try again after its connection was refused:\n"
      << LogTail(svc.process()->log_path(), 20);
  EXPECT_FALSE(given_up().empty()) << LogTail(svc.process()->log_path(), 20);
  EXPECT_EQ(svc.Health(), 2) << "SERVING without NATS";
  // Meanwhile a change is stored, its event kept in the outbox.
  auto stub = v1::PartnersService::NewStub(svc.channel());
  v1::CreateOrganisationRequest req;
  *req.mutable_organisation() = SampleOrganisation("Refused at First Trust");
  v1::Organisation created;
  grpc::Status st = stub->CreateOrganisation(Ctx(Token(server::Role::kAdmin)).get(), req, &created);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(WaitForOutboxDrained(url, absl::Seconds(1))) << "published through a refusal?";

  // The server at the address now takes the service's credentials.
  refusing.reset();  // killed and reaped: the port is free
  auto taking = StartNats(our_server, ours, port);
  // Its next try is at most 8 s away (1, 2, 4, 8 s, … up to 30 s).
  EXPECT_TRUE(svc.WaitForHealth(1, absl::Seconds(20)))
      << "not SERVING once the server took its credentials:\n"
      << LogTail(svc.process()->log_path(), 20);
  EXPECT_TRUE(WaitForOutboxDrained(url)) << "the event that waited was not published";
  EXPECT_FALSE(LogLinesWith(svc.process()->log_path(), {"\"msg\":\"nats connected\""}).empty());
  EXPECT_EQ(svc.process()->Wait(absl::ZeroDuration()), -1) << "the service exited";
}

TEST(PartnersHealth, ANatsServerRefusingItsSubjectsIsNamedInTheLogAndLosesNoEvent) {
  // NATS permissions that leave out the service's subjects: the connection
  // is up (SERVING), the stream is made, but the server refuses every
  // publish. Only an asynchronous error from the server says so: the log
  // must name it, and the event must stay in the outbox.
  const std::string dir =
      absl::StrCat(RequiredEnv("CONNECTING_TEST_TMP"), "/nats-perm-", RandomSuffix());
  ASSERT_EQ(Shell(absl::StrCat("mkdir -p ", dir)), 0);
  ASSERT_TRUE(ReplaceFile(dir + "/nats.conf", absl::StrCat(R"(
jetstream { store_dir: ")",
                                                           dir, R"(/js" }
authorization {
  users = [ { user: svc, password: secret,
              permissions: { publish: { deny: ["*.connecting.>"] } } } ]
}
)")));
  const int port = FreePort();
  auto nats = StartNats({"-c", dir + "/nats.conf", "-a", "127.0.0.1", "-p", std::to_string(port)},
                        dir, port);
  const std::string url = NewDatabase();
  const std::string suffix = RandomSuffix();
  const std::string subjects = "t" + suffix + ".connecting.partners";
  ServiceProcess svc({PARTNERS_BIN,
                      url,
                      absl::StrCat("nats://svc:secret@127.0.0.1:", port),
                      "PARTNERS_" + suffix,
                      subjects,
                      {}});
  svc.Start();
  auto stub = v1::PartnersService::NewStub(svc.channel());
  v1::CreateOrganisationRequest req;
  *req.mutable_organisation() = SampleOrganisation("Refused Subjects Trust");
  v1::Organisation out;
  grpc::Status s = stub->CreateOrganisation(Ctx(Token(server::Role::kAdmin)).get(), req, &out);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(WaitUntil(
      [&] {
        return !LogLinesWith(svc.process()->log_path(),
                             {"\"level\":\"warn\"", "\"msg\":\"nats reported an error\"",
                              "Permissions Violation for Publish", subjects})
                    .empty();
      },
      absl::Seconds(10)))
      << "the refusal is not in the log:\n"
      << LogTail(svc.process()->log_path(), 20);
  EXPECT_FALSE(WaitForOutboxDrained(url, absl::Seconds(1))) << "the refused event left the outbox";
}

TEST(PartnersHealth, ServesOverTlsToClientsWithCertificatesAndProbesInPlaintext) {
  // gRPC over mutual TLS: a caller with a certificate from the configured CA
  // is served; one without, or in plaintext, is not. Kubernetes' probes
  // (plaintext only) ask the health-only port, which serves nothing else.
  const std::string dir = MakeTestCa();
  ASSERT_FALSE(dir.empty());
  const int port = FreePort(), health_port = FreePort();
  const std::string suffix = RandomSuffix();
  RemoveStreamAfterSuite("PARTNERS_" + suffix);
  const std::string log = dir + "/partners.log";
  Process svc(PARTNERS_BIN, {},
              {{"DATABASE_URL", NewDatabase()},
               {"NATS_URL", RequiredEnv("CONNECTING_TEST_NATS")},
               {"GRPC_LISTEN", absl::StrCat("127.0.0.1:", port)},
               {"METRICS_LISTEN", absl::StrCat("127.0.0.1:", FreePort())},
               {"GRPC_HEALTH_LISTEN", absl::StrCat("127.0.0.1:", health_port)},
               {"GRPC_TLS_CERT_FILE", dir + "/server.pem"},
               {"GRPC_TLS_KEY_FILE", dir + "/server.key"},
               {"GRPC_TLS_CLIENT_CA_FILE", dir + "/ca.pem"},
               {"GRPC_TLS_CHECK", "1s"},
               {"AUTH_JWT_KEY", kJwtKey},
               {"EVENT_STREAM", "PARTNERS_" + suffix},
               {"EVENT_SUBJECT_PREFIX", "t" + suffix + ".connecting.partners"}},
              log);
  auto health = [&](int at) {
    auto stub = grpc::health::v1::Health::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", at), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    grpc::Status st = stub->Check(&ctx, req, &resp);
    return st.ok() ? static_cast<int>(resp.status()) : -1;
  };
  for (absl::Time until = absl::Now() + absl::Seconds(30);
       health(health_port) != grpc::health::v1::HealthCheckResponse::SERVING &&
       absl::Now() < until;) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_EQ(health(health_port), grpc::health::v1::HealthCheckResponse::SERVING) << ReadFile(log);

  std::string server_name;  // the common name of the certificate the last call met
  auto list = [&](std::shared_ptr<grpc::ChannelCredentials> creds, int at) {
    auto stub =
        v1::PartnersService::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", at), creds));
    v1::ListOrganisationsRequest req;
    v1::ListOrganisationsResponse resp;
    auto ctx = Ctx(Token(server::Role::kViewer, "v"));
    grpc::StatusCode code = stub->ListOrganisations(ctx.get(), req, &resp).error_code();
    auto names = ctx->auth_context()->FindPropertyValues("x509_common_name");
    server_name = names.empty() ? "" : std::string(names[0].data(), names[0].size());
    return code;
  };
  grpc::SslCredentialsOptions with_cert{ReadFile(dir + "/ca.pem"), ReadFile(dir + "/client.key"),
                                        ReadFile(dir + "/client.pem")};
  grpc::SslCredentialsOptions without_cert{ReadFile(dir + "/ca.pem"), "", ""};
  EXPECT_EQ(list(grpc::SslCredentials(with_cert), port), grpc::StatusCode::OK);
  EXPECT_EQ(server_name, "server");
  EXPECT_EQ(list(grpc::SslCredentials(without_cert), port), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(list(grpc::InsecureChannelCredentials(), port), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(list(grpc::InsecureChannelCredentials(), health_port), grpc::StatusCode::UNIMPLEMENTED)
      << "the plaintext port serves more than health";
  EXPECT_EQ(health(port), -1) << "the TLS port answered in plaintext";

  // The certificate is renewed in place (as cert-manager does): new
  // connections meet the new one within GRPC_TLS_CHECK, without a restart.
  ASSERT_TRUE(IssueCertificate(dir, "renewed", "server-renewed"));
  ASSERT_EQ(std::rename((dir + "/renewed.key").c_str(), (dir + "/server.key").c_str()), 0);
  ASSERT_EQ(std::rename((dir + "/renewed.pem").c_str(), (dir + "/server.pem").c_str()), 0);
  for (absl::Time until = absl::Now() + absl::Seconds(10);
       (list(grpc::SslCredentials(with_cert), port) != grpc::StatusCode::OK ||
        server_name != "server-renewed") &&
       absl::Now() < until;) {
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_EQ(server_name, "server-renewed") << "the renewed certificate was not taken up";

  svc.Signal(SIGTERM);
  EXPECT_EQ(svc.Wait(absl::Seconds(30)), 0) << ReadFile(log);

  OneShot run = RunOnce(PARTNERS_BIN, {},
                        {{"DATABASE_URL", NewDatabase()},
                         {"AUTH_JWT_KEY", kJwtKey},
                         {"GRPC_TLS_CERT_FILE", dir + "/server.pem"}},
                        "badgrpctls", absl::Seconds(10));
  EXPECT_EQ(run.code, 2);
  EXPECT_NE(ReadFile(run.log).find("GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE"), std::string::npos)
      << ReadFile(run.log);
}

TEST(PartnersHealth, AReplicaThatDoesNotMigrateWaitsForTheMigrationJob) {
  // As in Kubernetes (MIGRATE_ON_START=false, the Job migrating beside the
  // rollout): neither the init container's --wait-for-migrations nor the
  // replica goes on before the Job has applied every migration; the replica
  // does not listen (so is never ready) meanwhile, then serves.
  std::string url = NewDatabase();
  std::string suffix = RandomSuffix();
  std::string wait_log = absl::StrCat(RequiredEnv("CONNECTING_TEST_TMP"), "/wait-", suffix, ".log");
  Process waiter(PARTNERS_BIN, {"--wait-for-migrations"}, {{"DATABASE_URL", url}}, wait_log);
  ServiceProcess svc({PARTNERS_BIN,
                      url,
                      RequiredEnv("CONNECTING_TEST_NATS"),
                      "PARTNERS_" + suffix,
                      "t" + suffix + ".connecting.partners",
                      {{"MIGRATE_ON_START", "false"}}});
  // The Job runs beside the replica's start (here on another thread, since
  // Start blocks until SERVING; the replica is forked from this one, as a
  // child dies with the thread that forked it).
  std::future<void> job = std::async(std::launch::async, [&] {
    absl::SleepFor(absl::Seconds(3));
    EXPECT_EQ(waiter.Wait(absl::ZeroDuration()), -1) << "it went on before the migrations";
    EXPECT_EQ(svc.Health(), -1) << "the replica listened on an unmigrated database";
    std::string waited = ReadFile(wait_log);
    EXPECT_NE(waited.find("waiting for the migration Job"), std::string::npos) << waited;
    EXPECT_NE(waited.find("partners/0001_"), std::string::npos) << "it names what it waits for";
    auto conn = db::Conn::Open(url, "test");
    ASSERT_TRUE(conn.ok());
    auto tables = (*conn)->Exec("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'");
    ASSERT_TRUE(tables.ok()) << tables.status();
    EXPECT_EQ(tables->Int(0, 0), 0) << "a waiting replica migrated";
    OneShot run = RunOnce(PARTNERS_BIN, {"--migrate"}, {{"DATABASE_URL", url}}, "migrate-job");
    EXPECT_EQ(run.code, 0) << "log: " << run.log;
  });
  svc.Start();  // SERVING within 30 s of the Job, or it fails the test
  job.get();
  EXPECT_EQ(waiter.Wait(absl::Seconds(10)), 0) << "log: " << wait_log;
  EXPECT_EQ(svc.Health(), 1);
  EXPECT_EQ(svc.Terminate(), 0);

  // Asked to stop while it waits, it stops at once.
  Process stuck(PARTNERS_BIN, {},
                {{"DATABASE_URL", NewDatabase()},
                 {"MIGRATE_ON_START", "false"},
                 {"AUTH_JWT_KEY", kJwtKey},
                 {"GRPC_LISTEN", absl::StrCat("127.0.0.1:", FreePort())},
                 {"METRICS_LISTEN", absl::StrCat("127.0.0.1:", FreePort())}},
                absl::StrCat(RequiredEnv("CONNECTING_TEST_TMP"), "/stuck-", suffix, ".log"));
  absl::SleepFor(absl::Seconds(1));
  stuck.Signal(SIGTERM);
  EXPECT_EQ(stuck.Wait(absl::Seconds(5)), 0);
}

TEST(PartnersHealth, MigrateAppliesOnceAndIsIdempotent) {
  std::string url = NewDatabase();
  std::string dir = RequiredEnv("CONNECTING_TEST_TMP");
  // Three at once: the advisory lock makes them take turns.
  std::vector<std::unique_ptr<Process>> procs;
  for (int i = 0; i < 3; ++i) {
    procs.push_back(
        std::make_unique<Process>(PARTNERS_BIN, std::vector<std::string>{"--migrate"},
                                  std::map<std::string, std::string>{{"DATABASE_URL", url}},
                                  absl::StrCat(dir, "/migrate-", RandomSuffix(), ".log")));
  }
  for (auto& p : procs) EXPECT_EQ(p->Wait(absl::Seconds(30)), 0);
  auto conn = db::Conn::Open(url, "test");
  ASSERT_TRUE(conn.ok());
  auto r =
      (*conn)->Exec("SELECT count(*), count(DISTINCT (component, name)) FROM schema_migrations");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->Int(0, 0), r->Int(0, 1));
  EXPECT_GE(r->Int(0, 0), 2);
}

TEST(PartnersHealth, ClientsAreAskedToReconnectAfterTheMaxConnectionAge) {
  // A client's connection is sent away (GOAWAY) after GRPC_MAX_CONNECTION_AGE,
  // so that clients spread over replicas added since; it reconnects by itself
  // and no call fails meanwhile.
  PartnersFixture fx(std::map<std::string, std::string>{{"GRPC_MAX_CONNECTION_AGE", "1s"}});
  auto channel = grpc::CreateChannel(fx.service->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::PartnersService::NewStub(channel);
  ASSERT_TRUE(channel->WaitForConnected(absl::ToChronoTime(absl::Now() + absl::Seconds(5))));
  std::atomic<bool> done{false};
  std::atomic<int> left_ready{0};  // times the connection went away
  std::thread watch([&] {
    grpc_connectivity_state last = channel->GetState(false);
    while (!done.load()) {
      if (channel->WaitForStateChange(last,
                                      absl::ToChronoTime(absl::Now() + absl::Milliseconds(200)))) {
        grpc_connectivity_state now = channel->GetState(false);
        if (last == GRPC_CHANNEL_READY && now != GRPC_CHANNEL_READY) ++left_ready;
        last = now;
      }
    }
  });
  int calls = 0, failed = 0;
  // Calls for 3.5 s, and on (up to 10 s, for a loaded machine) until the
  // connection has been sent away twice.
  const absl::Time start = absl::Now();
  for (; absl::Now() < start + absl::Milliseconds(3500) ||
         (left_ready.load() < 2 && absl::Now() < start + absl::Seconds(10));
       ++calls) {
    v1::ListOrganisationsRequest req;
    v1::ListOrganisationsResponse resp;
    grpc::Status st = stub->ListOrganisations(Ctx(fx.admin).get(), req, &resp);
    if (!st.ok()) {
      ++failed;
      ADD_FAILURE() << "call " << calls << ": " << st.error_message();
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  done = true;
  watch.join();
  EXPECT_EQ(failed, 0);
  EXPECT_GT(calls, 50);
  EXPECT_GE(left_ready.load(), 2) << "a connection 1 s old should have been sent away";
}

TEST(PartnersHealth, BadMaxConnectionAgeIsNamed) {
  OneShot run =
      RunOnce(PARTNERS_BIN, {}, {{"GRPC_MAX_CONNECTION_AGE", "10ms"}}, "badage", absl::Seconds(10));
  EXPECT_EQ(run.code, 2);
  EXPECT_NE(ReadFile(run.log).find("GRPC_MAX_CONNECTION_AGE"), std::string::npos);
}

}  // namespace
}  // namespace connecting::testing
