#include "libs/server/service_main.h"

#include <grpc/support/log.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <prometheus/exposer.h>
#include <pthread.h>
#include <signal.h>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "libs/common/config.h"
#include "libs/common/log.h"
#include "libs/common/metrics.h"
#include "libs/server/health.h"
#include "libs/server/strict_parse.h"

namespace connecting::server {
namespace {

constexpr char kUsage[] =
    "usage: %s [--migrate | --wait-for-migrations | --replay-dead-letters |\n"
    "           --republish [--after-restore]]\n"
    "  Serves the %s gRPC API. Configured by environment variables (see README.md).\n"
    "  --migrate              apply database migrations and exit (needs only DATABASE_URL)\n"
    "  --wait-for-migrations  wait until the database has every migration this release\n"
    "                         knows, then exit 0 (an init container's wait for the\n"
    "                         migration Job; needs only DATABASE_URL)\n"
    "  --replay-dead-letters  run every consumer's dead letters through its handler again\n"
    "                         (once their cause is fixed) and exit: 0 if all applied, 3 if\n"
    "                         some were refused again (kept, with the new error)\n"
    "  --republish            add every resource other services project to the outbox as a\n"
    "                         snapshot event and exit (the serving replicas publish them):\n"
    "                         for a stream that lost events, or a new consumer's start\n"
    "                         (needs DATABASE_URL, and EVENT_SUBJECT_PREFIX if not the default)\n"
    "  --republish --after-restore\n"
    "                         the same, each resource given a new version first: after the\n"
    "                         database was restored to an earlier point, so that consumers\n"
    "                         replace what they hold of the changes the restore undid\n";

// `minimal`: only what --migrate, --wait-for-migrations and --republish need
// (the database, the subjects).
absl::StatusOr<ServiceConfig> LoadConfig(const ServiceDefinition& def, bool minimal) {
  config::EnvReader env;
  ServiceConfig c;
  c.database_url = env.Required("DATABASE_URL", "PostgreSQL URL, e.g. postgresql://user@host/db");
  if (auto level = log::ParseLevel(env.String("LOG_LEVEL", "info")); level.ok()) {
    log::SetLevel(*level);
  } else {
    env.AddError(absl::StrCat("LOG_LEVEL: ", level.status().message()));
  }
  c.event_subject_prefix =
      env.String("EVENT_SUBJECT_PREFIX", absl::StrCat("connecting.", def.name));
  c.event_stream = env.String("EVENT_STREAM", def.stream);
  c.nats_url = env.String("NATS_URL", "nats://127.0.0.1:4222");  // --republish --after-restore too
  c.nats_security.ca_file = env.ReadableFile("NATS_TLS_CA_FILE");
  c.nats_security.cert_file = env.ReadableFile("NATS_TLS_CERT_FILE");
  c.nats_security.key_file = env.ReadableFile("NATS_TLS_KEY_FILE");
  c.nats_security.creds_file = env.ReadableFile("NATS_CREDS_FILE");
  if (c.nats_security.cert_file.empty() != c.nats_security.key_file.empty()) {
    env.AddError("NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE: a client certificate needs its key");
  }
  c.migration_lock_timeout = env.Duration("MIGRATION_LOCK_TIMEOUT", absl::Seconds(1),
                                          absl::ZeroDuration(), absl::Minutes(1));
  c.migration_lock_wait =
      env.Duration("MIGRATION_LOCK_WAIT", absl::Minutes(10), absl::Seconds(1), absl::Hours(24));
  if (minimal) {  // --migrate, --wait-for-migrations, --republish
    if (absl::Status s = env.Finish(); !s.ok()) return s;
    return c;
  }
  c.grpc_listen = env.Listen("GRPC_LISTEN", "0.0.0.0:50051");
  c.grpc_tls_cert_file = env.ReadableFile("GRPC_TLS_CERT_FILE");
  c.grpc_tls_key_file = env.ReadableFile("GRPC_TLS_KEY_FILE");
  c.grpc_tls_client_ca_file = env.ReadableFile("GRPC_TLS_CLIENT_CA_FILE");
  if (c.grpc_tls_cert_file.empty() != c.grpc_tls_key_file.empty()) {
    env.AddError("GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE: a certificate needs its key");
  }
  if (!c.grpc_tls_client_ca_file.empty() && c.grpc_tls_cert_file.empty()) {
    env.AddError("GRPC_TLS_CLIENT_CA_FILE: needs GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE");
  }
  c.grpc_tls_check =
      env.Duration("GRPC_TLS_CHECK", absl::Seconds(60), absl::Seconds(1), absl::Hours(24));
  if (const char* h = std::getenv("GRPC_HEALTH_LISTEN"); h != nullptr && *h != '\0') {
    c.grpc_health_listen = env.Listen("GRPC_HEALTH_LISTEN", "");
  }
  c.metrics_listen = env.Listen("METRICS_LISTEN", "0.0.0.0:9090");
  c.auth.algorithm = absl::AsciiStrToUpper(env.String("AUTH_JWT_ALG", "HS256"));
  c.auth.key = env.String("AUTH_JWT_KEY", "");
  c.auth.key_file = env.String("AUTH_JWT_KEY_FILE", "");
  c.auth.issuer = env.String("AUTH_JWT_ISSUER", "");
  c.auth.audience = env.String("AUTH_JWT_AUDIENCE", "");
  c.auth.key_file_check = env.Duration("AUTH_JWT_KEY_FILE_CHECK", absl::Seconds(10),
                                       absl::Milliseconds(100), absl::Hours(1));
  std::string first_key;  // PAGE_TOKEN_KEY's default with HS256
  if (c.auth.key.empty() == c.auth.key_file.empty()) {
    env.AddError(c.auth.key.empty()
                     ? "AUTH_JWT_KEY or AUTH_JWT_KEY_FILE: required (token signing key)"
                     : "AUTH_JWT_KEY and AUTH_JWT_KEY_FILE: set one, not both");
  } else if (auto a = Authenticator::Create(c.auth); !a.ok()) {
    env.AddError(absl::StrCat(c.auth.key_file.empty() ? "AUTH_JWT_KEY: " : "AUTH_JWT_KEY_FILE: ",
                              a.status().message()));
  } else {
    first_key = a->keys().front();
  }
  c.page_token_key = env.String("PAGE_TOKEN_KEY", c.auth.algorithm == "HS256" ? first_key : "");
  if (c.page_token_key.size() < 16) {
    env.AddError("PAGE_TOKEN_KEY: required (≥ 16 bytes) unless AUTH_JWT_ALG is HS256");
  }
  c.db_pool_size = static_cast<int>(env.Int("DB_POOL_SIZE", 16, 1, 512));
  c.worker_threads = static_cast<int>(env.Int("WORKER_THREADS", c.db_pool_size, 1, 512));
  c.max_queued_requests = static_cast<int>(env.Int("MAX_QUEUED_REQUESTS", 1024, 1, 1 << 20));
  c.max_message_bytes = static_cast<int>(env.Int("MAX_MESSAGE_BYTES", 1 << 20, 1024, 64 << 20));
  c.max_deadline =
      env.Duration("MAX_DEADLINE", absl::Seconds(30), absl::Milliseconds(100), absl::Hours(1));
  c.max_connection_age = env.Duration("GRPC_MAX_CONNECTION_AGE", absl::Minutes(5),
                                      absl::ZeroDuration(), absl::Hours(24));
  if (c.max_connection_age > absl::ZeroDuration() && c.max_connection_age < absl::Seconds(1)) {
    env.AddError("GRPC_MAX_CONNECTION_AGE: must be 0 (never) or at least 1s");
  }
  c.shutdown_grace =
      env.Duration("SHUTDOWN_GRACE", absl::Seconds(20), absl::ZeroDuration(), absl::Minutes(10));
  c.shutdown_delay =
      env.Duration("SHUTDOWN_DELAY", absl::ZeroDuration(), absl::ZeroDuration(), absl::Minutes(5));
  c.migrate_on_start = env.Bool("MIGRATE_ON_START", true);
  c.outbox_relay = env.Bool("OUTBOX_RELAY", true);
  c.outbox_linger = env.Duration("OUTBOX_LINGER", bus::RelayOptions().linger, absl::ZeroDuration(),
                                 absl::Seconds(1));
  c.event_stream_replicas = static_cast<int>(env.Int("EVENT_STREAM_REPLICAS", 1, 1, 5));
  c.event_stream_max_age = env.Duration("EVENT_STREAM_MAX_AGE", def.stream_max_age,
                                        absl::ZeroDuration(), absl::Hours(24 * 365 * 100));
  c.consumer.ack_wait =
      env.Duration("CONSUMER_ACK_WAIT", absl::Seconds(30), absl::Seconds(1), absl::Minutes(10));
  c.consumer.max_deliver = static_cast<int>(env.Int("CONSUMER_MAX_DELIVER", 10, 1, 1000));
  if (const char* crash = std::getenv("CONNECTING_TEST_CRASH_ON_EVENT_WITH"); crash != nullptr) {
    c.consumer.crash_on_payload = crash;
  }
  if (def.read_config) def.read_config(env);
  if (absl::Status s = env.Finish(); !s.ok()) return s;
  return c;
}

absl::Status RunMigrations(const ServiceConfig& cfg, const std::vector<db::MigrationSet>& sets,
                           absl::Duration wait_for_db) {
  absl::Time give_up = absl::Now() + wait_for_db;
  while (true) {
    auto conn = db::Conn::Open(cfg.database_url, "migrations");
    if (conn.ok()) {
      std::vector<std::string> ahead;
      db::MigrateOptions options;
      options.ahead = &ahead;
      // An index build may take minutes: each statement is logged as it starts.
      options.progress = [](const std::string& migration, size_t i, size_t n,
                            absl::string_view line) {
        log::Info(
            "migration statement",
            {{"migration", migration}, {"statement", absl::StrCat(i, " of ", n)}, {"sql", line}});
      };
      options.lock_timeout = cfg.migration_lock_timeout;
      options.lock_wait = cfg.migration_lock_wait;
      options.on_lock_busy = [](const std::string& migration, int attempt, absl::Duration waited,
                                absl::Duration next_in, const std::string& holders) {
        log::Warn("migration waiting for a lock held by another transaction",
                  {{"migration", migration},
                   {"attempt", absl::StrCat(attempt)},
                   {"waited", absl::FormatDuration(waited)},
                   {"next_attempt_in", absl::FormatDuration(next_in)},
                   {"open_transactions", holders.empty() ? "none" : holders}});
      };
      options.on_waiting_for_other = [](absl::Duration waited, const std::string& migrating) {
        log::Info("waiting for another process's migrations to end",
                  {{"waited", absl::FormatDuration(absl::Trunc(waited, absl::Seconds(1)))},
                   {"migrating", migrating.empty() ? "unknown" : migrating}});
      };
      auto applied = db::Migrate(**conn, sets, options);
      if (!applied.ok()) return applied.status();
      for (const std::string& m : *applied) log::Info("migration applied", {{"migration", m}});
      if (!ahead.empty()) {
        log::Warn(
            "the database was migrated by a newer release; this one's repeatable "
            "migrations were left as they are",
            {{"unknown_migrations", absl::StrJoin(ahead, ",")}});
      } else {
        log::Info("database schema is current");
      }
      return absl::OkStatus();
    }
    if (absl::Now() >= give_up) return conn.status();
    log::Warn("waiting for database", {{"error", log::Text(conn.status())}});
    absl::SleepFor(absl::Seconds(1));
  }
}

enum class SchemaWait { kCurrent, kStopped, kFailed };

// Waits until the database has every migration `sets` holds (a newer
// release's database counts), as a replica that does not migrate must
// before it consumes or serves: until then its handlers and consumers would
// meet tables and functions as the previous release left them (errors, and
// events dead-lettered). Logs what it waits for every 30 s. kStopped if
// SIGTERM or SIGINT came first; kFailed for what no waiting cures (a
// versioned migration edited after it was applied).
SchemaWait WaitForSchema(const std::string& url, const std::vector<db::MigrationSet>& sets,
                         const sigset_t& signals) {
  absl::Time next_log = absl::InfinitePast();
  for (;;) {
    absl::Status why;
    auto conn = db::Conn::Open(url, "schema-check");
    if (conn.ok()) {
      absl::StatusOr<std::vector<std::string>> pending = db::Pending(**conn, sets);
      if (pending.ok() && pending->empty()) {
        log::Info("database schema is current");
        return SchemaWait::kCurrent;
      }
      if (absl::IsFailedPrecondition(pending.status())) {
        log::Error("database schema cannot be used", {{"error", log::Text(pending.status())}});
        return SchemaWait::kFailed;
      }
      why = pending.ok() ? absl::FailedPreconditionError(absl::StrJoin(*pending, ","))
                         : pending.status();
    } else {
      why = conn.status();
    }
    if (absl::Now() >= next_log) {
      if (absl::IsFailedPrecondition(why)) {
        log::Warn("waiting for the migration Job (or --migrate) to apply migrations",
                  {{"pending", why.message()}});
      } else {
        log::Warn("waiting for database", {{"error", log::Text(why)}});
      }
      next_log = absl::Now() + absl::Seconds(30);
    }
    timespec pause{2, 0};
    if (sigtimedwait(&signals, nullptr, &pause) > 0) {
      log::Info("stopped while waiting for migrations");
      return SchemaWait::kStopped;
    }
  }
}

// Tracks PostgreSQL and NATS reachability and publishes it through the
// standard health service: SERVING only while both are up. "liveness" stays
// SERVING while the process works, so Kubernetes does not restart a pod
// because its database is down.
class HealthMonitor {
 public:
  // `hs`: the health services to keep up to date (the main server's, and the
  // health-only server's if there is one). They start NOT_SERVING.
  // `pool`: renewed whenever the database starts or stops taking writes, and
  // when it answers again after being down.
  HealthMonitor(db::Pool* pool, const bus::Nats* nats, std::vector<HealthService*> hs)
      : pool_(pool), db_url_(pool->url()), nats_(nats), hs_(std::move(hs)) {
    up_ = &prometheus::BuildGauge()
               .Name("connecting_dependency_up")
               .Help("1 while a dependency is reachable")
               .Register(*metrics::Registry());
    read_only_ = &prometheus::BuildGauge()
                      .Name("connecting_database_read_only")
                      .Help(
                          "1 while the service's database answers but takes no writes (a "
                          "standby, or a database set read-only)")
                      .Register(*metrics::Registry())
                      .Add({});
    thread_ = std::thread([this] { Run(); });
  }
  ~HealthMonitor() { Stop(); }
  void Stop() {
    if (!stop_.HasBeenNotified()) stop_.Notify();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Publish(bool serving) {
    for (auto* h : hs_) h->SetServing(serving);
  }
  // OK, or what libpq or PostgreSQL said: the operator's first clue (a
  // refused connection, a wrong password, too many clients), which no
  // client is told (libs/server/rpc.cc answers in plain words).
  // With whether the database takes writes.
  absl::StatusOr<bool> DatabaseUp() {
    if (conn_ == nullptr || !conn_->healthy()) {
      auto c = db::Conn::Open(db_url_, "health");
      if (!c.ok()) return c.status();
      conn_ = *std::move(c);
      NoteServer();
    }
    // Bounded: a PostgreSQL that stopped answering is down, not SERVING
    // until TCP gives up on it.
    absl::StatusOr<bool> writes = conn_->PingTakesWrites(absl::Seconds(2));
    // A read-only connection stays so (a standby's; a database's setting
    // read at connect): the next look connects anew, and may find the
    // primary, or the setting gone.
    if (writes.ok() && !*writes) conn_.reset();
    return writes;
  }
  // A database that answers but takes no writes stays SERVING: reads work,
  // and NOT_SERVING would take every replica out of its Service. Writes
  // answer UNAVAILABLE meanwhile. The change is logged and counted, and the
  // pool renewed at each change, so that no connection keeps the server or
  // the setting it was made with.
  void FollowReadOnly(bool read_only) {
    if (read_only == read_only_now_) return;
    read_only_now_ = read_only;
    read_only_->Set(read_only ? 1 : 0);
    pool_->Renew();
    if (read_only) {
      log::Warn(
          "database takes no writes (a standby, or a database set read-only): writes answer "
          "UNAVAILABLE, reads go on");
    } else {
      log::Info("database takes writes again");
    }
  }
  // Which server the new health connection reached, known by when its
  // postmaster started (not by its address: one server can be reached at
  // several). Another than the one before means the one before is gone (a
  // failover, a restart), and the pool's connections to it with it.
  void NoteServer() {
    conn_->set_answer_deadline(absl::Now() + absl::Seconds(2));
    const absl::Status learned = conn_->LearnServer();
    conn_->set_answer_deadline(absl::InfiniteFuture());
    if (!learned.ok()) return;  // the ping that follows says why
    if (!server_.empty() && conn_->server() != server_) server_changed_ = true;
    server_ = conn_->server();
  }
  void Run() {
    int last = -1;
    std::string last_why;
    do {
      absl::StatusOr<bool> writes = DatabaseUp();
      const absl::Status db = writes.status();
      bool db_up = db.ok();
      if (db_up) FollowReadOnly(!*writes);
      // Back after being down: the pool's connections were made before,
      // perhaps to a server that went without a word (a failover that
      // moved its address), which a connection sitting idle cannot show.
      // Each would cost a caller its deadline; new ones are made instead.
      if (db_up && server_changed_) {
        // The connections in use wait for answers from a server that is
        // gone, perhaps without a word (its host or address moved): each
        // would hold its caller until the call's deadline. They end now;
        // not those the new server took since it came (half a second of
        // calls, up to this look), whose transactions would otherwise be
        // ended, some at their COMMIT ("outcome unknown").
        server_changed_ = false;
        const int ended = pool_->Renew(/*end_leased=*/true, server_);
        log::Warn(
            "database server changed (a failover or a restart): connections to the one before "
            "closed; calls waiting on them run once more on the new one, or answer UNAVAILABLE "
            "if caught at their COMMIT",
            {{"connections_in_use_ended", absl::StrCat(ended)}});
      } else if (db_up && db_was_down_) {
        pool_->Renew();
      }
      db_was_down_ = !db_up;
      bool nats_up = nats_->connected();
      up_->Add({{"dependency", "postgresql"}}).Set(db_up ? 1 : 0);
      up_->Add({{"dependency", "nats"}}).Set(nats_up ? 1 : 0);
      int now = (db_up ? 1 : 0) | (nats_up ? 2 : 0);
      // Why each is down, logged with every change of state and whenever
      // the reason changes while down (a refused connection, then a wrong
      // password once it listens again), not every half second.
      const std::string db_why = db_up ? "" : log::Text(db);
      const std::string nats_why = nats_up ? "" : nats_->Why();
      const std::string why = absl::StrCat(db_why, "\x1f", nats_why);
      if (now != last || why != last_why) {
        if (now != last) Publish(db_up && nats_up);
        log::Write(now == 3 ? log::Level::kInfo : log::Level::kWarn,
                   now == 3 ? "health: SERVING" : "health: NOT_SERVING",
                   {{"postgresql", db_up ? "up" : "down"},
                    {"postgresql_error", db_why},
                    {"nats", nats_up ? "up" : "down"},
                    {"nats_error", nats_why}});
        last = now;
        last_why = why;
      }
    } while (!stop_.WaitForNotificationWithTimeout(absl::Milliseconds(500)));
  }

  db::Pool* const pool_;
  const std::string db_url_;
  const bus::Nats* const nats_;
  const std::vector<HealthService*> hs_;
  prometheus::Family<prometheus::Gauge>* up_;
  prometheus::Gauge* read_only_;
  bool read_only_now_ = false;
  bool db_was_down_ = false;
  std::string server_;  // NoteServer
  bool server_changed_ = false;
  std::unique_ptr<db::Conn> conn_;
  absl::Notification stop_;
  std::thread thread_;
};

// Plaintext, or TLS from GRPC_TLS_CERT_FILE / GRPC_TLS_KEY_FILE, read again by
// gRPC every GRPC_TLS_CHECK (a renewed certificate needs no restart), requiring
// client certificates signed by GRPC_TLS_CLIENT_CA_FILE when set.
std::shared_ptr<grpc::ServerCredentials> ServerCredentials(const ServiceConfig& cfg) {
  if (cfg.grpc_tls_cert_file.empty()) return grpc::InsecureServerCredentials();
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      cfg.grpc_tls_key_file, cfg.grpc_tls_cert_file, cfg.grpc_tls_client_ca_file,
      static_cast<unsigned>(absl::ToInt64Seconds(cfg.grpc_tls_check)));
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (cfg.grpc_tls_client_ca_file.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

}  // namespace

int ServiceMain(int argc, char** argv, const ServiceDefinition& def) {
  // Termination signals are blocked in every thread (they inherit this mask)
  // and taken synchronously by the main thread below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // Debian's Abseil is built without NDEBUG, so every Mutex acquisition would
  // feed a process-wide lock graph (one global lock, taken on each Lock):
  // a measured cost on every request. Tests keep the detection on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  bool migrate_only = false, wait_only = false, replay = false, republish = false,
       after_restore = false;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--migrate") {
      migrate_only = true;
    } else if (arg == "--wait-for-migrations") {
      wait_only = true;
    } else if (arg == "--replay-dead-letters") {
      replay = true;
    } else if (arg == "--republish") {
      if (!def.republish) {
        std::fprintf(stderr, "%s has no events for other services' projections to republish\n",
                     def.name.c_str());
        return 2;
      }
      republish = true;
    } else if (arg == "--after-restore") {
      after_restore = true;
    } else if (arg == "--help" || arg == "-h") {
      std::printf(kUsage, argv[0], def.name.c_str());
      return 0;
    } else {
      std::fprintf(stderr, "unknown argument %s\n", argv[i]);
      std::fprintf(stderr, kUsage, argv[0], def.name.c_str());
      return 2;
    }
  }
  if (after_restore && !republish) {
    std::fprintf(stderr, "--after-restore goes with --republish\n");
    std::fprintf(stderr, kUsage, argv[0], def.name.c_str());
    return 2;
  }
  log::SetService(def.name);
  // gRPC's own messages (a listener that failed, a keepalive that went
  // unanswered) as JSON lines like every other, instead of its own format
  // on stderr. GRPC_VERBOSITY still chooses which it sends (ERROR by
  // default); they keep their severity.
  gpr_set_log_function([](gpr_log_func_args* args) {
    log::Write(args->severity == GPR_LOG_SEVERITY_ERROR  ? log::Level::kError
               : args->severity == GPR_LOG_SEVERITY_INFO ? log::Level::kInfo
                                                         : log::Level::kDebug,
               args->message != nullptr ? args->message : "",
               {{"source", "grpc"},
                {"at", absl::StrCat(args->file != nullptr ? args->file : "", ":", args->line)}});
  });
  RouteProtobufLogs();
  absl::StatusOr<ServiceConfig> cfg = LoadConfig(def, migrate_only || wait_only || republish);
  if (!cfg.ok()) {
    std::fprintf(stderr, "%s: invalid configuration:\n%s\n", def.name.c_str(),
                 std::string(cfg.status().message()).c_str());
    log::Error("invalid configuration", {{"errors", cfg.status().message()}});
    return 2;
  }
  const std::vector<db::MigrationSet> migrations = {bus::Migrations(), def.migrations()};
  if (migrate_only || (cfg->migrate_on_start && !republish && !wait_only)) {
    absl::Status s =
        RunMigrations(*cfg, migrations, migrate_only ? absl::Minutes(2) : absl::Minutes(1));
    if (!s.ok()) {
      log::Error("migrations failed", {{"error", log::Text(s)}});
      return 1;
    }
    if (migrate_only) return 0;
  } else if (!republish) {  // the migration Job's work
    SchemaWait w = WaitForSchema(cfg->database_url, migrations, signals);
    if (w != SchemaWait::kCurrent) return w == SchemaWait::kFailed || wait_only ? 1 : 0;
    if (wait_only) return 0;
  }

  if (republish) {
    db::Pool pool(cfg->database_url, 2, def.name);
    bus::Outbox outbox(cfg->event_subject_prefix, absl::StrCat("/connecting/", def.name));
    if (after_restore) {
      // The snapshots are numbered past what the stream holds, so that no
      // relay finds the database behind it once they are published.
      absl::StatusOr<std::unique_ptr<bus::Nats>> nats =
          bus::Nats::Connect(cfg->nats_url, def.name + "-republish", cfg->nats_security);
      absl::Status s = nats.ok() ? bus::AdvanceOutboxPastStream(pool, **nats, cfg->event_stream,
                                                                absl::Seconds(30))
                                 : nats.status();
      if (!s.ok()) {
        log::Error("republishing failed", {{"error", log::Text(s)}});
        return 1;
      }
    }
    absl::StatusOr<int64_t> n = def.republish(pool, outbox, after_restore);
    if (!n.ok()) {
      log::Error("republishing failed", {{"error", log::Text(n.status())}});
      return 1;
    }
    int64_t settled = 0;
    if (after_restore) {
      absl::StatusOr<int64_t> r = bus::SettleRestores(pool);
      if (!r.ok()) {
        log::Error("republished, but the recorded restore is not settled",
                   {{"error", log::Text(r.status())}});
        return 1;
      }
      settled = *r;
    }
    log::Info("republished: snapshot events added to the outbox",
              {{"events", absl::StrCat(*n)},
               {"stream", cfg->event_stream},
               {"new_versions", after_restore ? "yes" : "no"},
               {"restores_settled", absl::StrCat(settled)}});
    return 0;
  }

  absl::StatusOr<Authenticator> auth = Authenticator::Create(cfg->auth);
  absl::StatusOr<std::unique_ptr<bus::Nats>> nats =
      bus::Nats::Connect(cfg->nats_url, def.name, cfg->nats_security);
  if (!auth.ok() || !nats.ok()) {
    log::Error("start-up failed",
               {{"error", log::Text(!auth.ok() ? auth.status() : nats.status())}});
    return 1;
  }
  db::Pool pool(cfg->database_url, cfg->db_pool_size, def.name);
  bus::Outbox outbox(cfg->event_subject_prefix, absl::StrCat("/connecting/", def.name));
  Executor executor(cfg->worker_threads, cfg->max_queued_requests);
  RpcRunner rpc(&executor, &*auth, cfg->max_deadline, absl::StrCat("connecting.", def.name));
  PageTokens page_tokens(cfg->page_token_key);
  std::vector<std::unique_ptr<bus::Consumer>> consumers;
  std::vector<PeriodicTask> periodic;
  ServiceContext ctx{*cfg, pool, **nats, outbox, rpc, page_tokens, consumers, periodic};
  std::vector<std::unique_ptr<grpc::Service>> services = def.build(ctx);
  if (replay) {
    // Events the handlers emit go to the outbox; the serving replicas'
    // relays publish them.
    int failing = 0;
    for (auto& c : consumers) {
      absl::StatusOr<bus::ReplayReport> r = c->ReplayDeadLetters(cfg->max_deadline);
      if (!r.ok()) {
        log::Error("replaying dead letters failed", {{"error", log::Text(r.status())}});
        return 1;
      }
      std::printf("%s: %d dead letters replayed, %d refused again\n", c->durable().c_str(),
                  r->replayed, r->failing);
      failing += r->failing;
    }
    if (consumers.empty()) std::printf("%s has no consumers\n", def.name.c_str());
    return failing == 0 ? 0 : 3;
  }

  bus::StreamSpec stream{.name = cfg->event_stream,
                         .subjects = {absl::StrCat(cfg->event_subject_prefix, ".>")},
                         .replicas = cfg->event_stream_replicas,
                         .max_age = cfg->event_stream_max_age};
  std::unique_ptr<bus::OutboxRelay> relay;
  if (cfg->outbox_relay) {
    bus::RelayOptions ro;
    ro.database_url = cfg->database_url;
    ro.stream = stream;
    ro.linger = cfg->outbox_linger;
    const char* crash = std::getenv("CONNECTING_TEST_CRASH_AFTER_PUBLISH");
    ro.crash_after_publish = crash != nullptr && absl::string_view(crash) == "1";
    relay = std::make_unique<bus::OutboxRelay>(ro, nats->get());
    relay->Start();
    bus::OutboxRelay* r = relay.get();
    rpc.SetAfterWork([r] {
      if (bus::Outbox::TakeEmitted()) r->Wake();
    });
  } else {
    log::Warn("outbox relay disabled (OUTBOX_RELAY=false): events stay in the outbox");
  }
  for (auto& c : consumers) {
    if (relay != nullptr) {
      c->SetOnCommit([r = relay.get()] {
        if (bus::Outbox::TakeEmitted()) r->Wake();
      });
    }
    c->Start();
  }
  std::vector<std::unique_ptr<PeriodicRunner>> tasks;
  for (PeriodicTask& t : periodic) {
    t.run = [run = std::move(t.run), r = relay.get()] {
      run();
      if (bus::Outbox::TakeEmitted() && r != nullptr) r->Wake();
    };
    tasks.push_back(std::make_unique<PeriodicRunner>(std::move(t)));
    tasks.back()->Start();
  }

  // Our own health service, not gRPC's built-in one (which answers SERVING
  // before anything is checked): NOT_SERVING until the monitor below finds
  // PostgreSQL and NATS up. Declared before the servers, so it outlives them.
  HealthService health_service(def.grpc_services);
  std::unique_ptr<HealthService> health_only_service;
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(cfg->grpc_listen, ServerCredentials(*cfg), &port);
  builder.SetMaxReceiveMessageSize(cfg->max_message_bytes);
  builder.SetMaxSendMessageSize(cfg->max_message_bytes * 4);
  // Connections are long-lived (HTTP/2): a client stays on the replica it
  // first reached, however many are added. Asking each to reconnect after
  // GRPC_MAX_CONNECTION_AGE (with its calls in flight given up to
  // MAX_DEADLINE to finish) spreads clients over the replicas there are now.
  if (cfg->max_connection_age > absl::ZeroDuration()) {
    builder.AddChannelArgument(
        GRPC_ARG_MAX_CONNECTION_AGE_MS,
        static_cast<int>(absl::ToInt64Milliseconds(cfg->max_connection_age)));
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                               static_cast<int>(absl::ToInt64Milliseconds(cfg->max_deadline)));
  }
  // Clients may keep idle connections alive with pings (every 10 s at most)
  // without being sent away for pinging too often.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  for (auto& s : services) builder.RegisterService(s.get());
  builder.RegisterService(&health_service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    log::Error("cannot listen for gRPC", {{"listen", cfg->grpc_listen}});
    return 1;
  }
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    exposer = std::make_unique<prometheus::Exposer>(cfg->metrics_listen);
    exposer->RegisterCollectable(metrics::Registry());
  } catch (const std::exception& e) {
    log::Error("cannot listen for metrics", {{"listen", cfg->metrics_listen}, {"error", e.what()}});
    server->Shutdown(std::chrono::system_clock::now());
    return 1;
  }
  // With TLS, Kubernetes' gRPC probes (plaintext only) ask a server of their
  // own that has nothing but the health service.
  std::unique_ptr<grpc::Server> health_server;
  if (!cfg->grpc_health_listen.empty()) {
    grpc::ServerBuilder hb;
    int health_port = 0;
    hb.AddListeningPort(cfg->grpc_health_listen, grpc::InsecureServerCredentials(), &health_port);
    health_only_service = std::make_unique<HealthService>(def.grpc_services);
    hb.RegisterService(health_only_service.get());
    health_server = hb.BuildAndStart();
    if (health_server == nullptr || health_port == 0) {
      log::Error("cannot listen for health checks", {{"listen", cfg->grpc_health_listen}});
      server->Shutdown(std::chrono::system_clock::now());
      return 1;
    }
  }
  std::vector<HealthService*> health_services = {&health_service};
  if (health_only_service != nullptr) health_services.push_back(health_only_service.get());
  HealthMonitor health(&pool, nats->get(), health_services);
  log::Info("serving", {{"grpc", cfg->grpc_listen},
                        {"metrics", cfg->metrics_listen},
                        {"stream", cfg->event_stream},
                        {"subjects", stream.subjects[0]}});

  int sig = 0;
  sigwait(&signals, &sig);
  auto name = [](int signal) { return signal == SIGTERM ? "SIGTERM" : "SIGINT"; };
  log::Info("shutting down", {{"signal", name(sig)}});
  health.Stop();
  for (auto* h : health_services) h->Shutdown();  // everything NOT_SERVING from here
  if (cfg->shutdown_delay > absl::ZeroDuration()) {
    // Still serving: a call that arrives once the server has stopped taking
    // calls, before its client has heard so (GOAWAY), is ended CANCELLED by
    // gRPC without having run (grpc/grpc#41785). Meanwhile the replica's
    // endpoint goes, and clients that balance calls (a mesh, round_robin
    // over health checks) send their calls elsewhere.
    log::Info("serving on while clients move to other replicas",
              {{"shutdown_delay", absl::FormatDuration(cfg->shutdown_delay)}});
    const absl::Time until = absl::Now() + cfg->shutdown_delay;
    for (absl::Duration left = cfg->shutdown_delay; left > absl::ZeroDuration();
         left = until - absl::Now()) {
      timespec wait = absl::ToTimespec(left);
      siginfo_t second;
      if (sigtimedwait(&signals, &second, &wait) > 0) {
        log::Info("a second signal: stopping now", {{"signal", name(second.si_signo)}});
        break;
      }
      if (errno != EINTR) break;  // EAGAIN: the delay is over
    }
  }
  // Stop accepting, let in-flight RPCs finish until the grace deadline, then cancel them.
  server->Shutdown(absl::ToChronoTime(absl::Now() + cfg->shutdown_grace));
  log::Debug("shutdown: gRPC server stopped");
  executor.Shutdown();
  server->Wait();
  log::Debug("shutdown: executor drained");
  for (auto& t : tasks) t->Stop();
  for (auto& c : consumers) c->Stop();
  if (relay != nullptr) relay->Stop(absl::Now() + absl::Seconds(5));  // flush the outbox
  (*nats)->Close(absl::Seconds(2));
  if (health_server != nullptr) health_server->Shutdown(std::chrono::system_clock::now());
  log::Info("stopped");
  return 0;
}

}  // namespace connecting::server
