// The bootstrap every service binary runs: configuration from the environment,
// migrations, the database pool, NATS, the outbox relay, consumers, the gRPC
// server (health, reflection, size limits, auth), Prometheus metrics, and a
// graceful SIGTERM drain. A service supplies only its definition:
//
//   int main(int argc, char** argv) {
//     return connecting::server::ServiceMain(argc, argv, partners::Definition());
//   }
//
// Environment (all services):
//   DATABASE_URL          required; libpq URL or key=value string
//   NATS_URL              nats://127.0.0.1:4222
//   GRPC_LISTEN           0.0.0.0:50051
//   METRICS_LISTEN        0.0.0.0:9090 (Prometheus /metrics)
//   AUTH_JWT_ALG          HS256 | RS256 | ES256 (HS256)
//   AUTH_JWT_KEY          HS256 secret (≥ 32 bytes) or PEM public key; or
//   AUTH_JWT_KEY_FILE     a file holding it
//   AUTH_JWT_ISSUER       required `iss`, if set
//   PAGE_TOKEN_KEY        secret for page tokens (defaults to the HS256 key)
//   LOG_LEVEL             debug | info | warn | error (info)
//   DB_POOL_SIZE          16;  WORKER_THREADS = DB_POOL_SIZE
//   MAX_QUEUED_REQUESTS   1024 (beyond: RESOURCE_EXHAUSTED)
//   MAX_MESSAGE_BYTES     1048576
//   MAX_DEADLINE          30s (caps every request's deadline)
//   SHUTDOWN_GRACE        20s
//   MIGRATE_ON_START      true
//   MIGRATION_LOCK_TIMEOUT 1s (longest a migration's attempt holds queries up; 0: no limit)
//   MIGRATION_LOCK_WAIT   10m (a migration kept from its locks this long fails)
//   OUTBOX_RELAY          true
//   OUTBOX_LINGER         25ms (a busy relay waits this long after a commit to batch more events)
//   EVENT_SUBJECT_PREFIX  connecting.<service>
//   EVENT_STREAM          <SERVICE>, e.g. PARTNERS
//   EVENT_STREAM_REPLICAS 1
//   EVENT_STREAM_MAX_AGE  the service's (partners: 0, kept for good; others 8760h)
//   CONSUMER_ACK_WAIT     30s (1s–10m; an event unanswered this long is delivered again)
//   CONSUMER_MAX_DELIVER  10 (1–1000; failed attempts before an event is dead-lettered)
#ifndef CONNECTING_LIBS_SERVER_SERVICE_MAIN_H_
#define CONNECTING_LIBS_SERVER_SERVICE_MAIN_H_

#include <grpcpp/impl/codegen/service_type.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "libs/bus/consumer.h"
#include "libs/bus/nats.h"
#include "libs/bus/outbox.h"
#include "libs/common/config.h"
#include "libs/db/db.h"
#include "libs/db/migrations.h"
#include "libs/server/page_token.h"
#include "libs/server/periodic.h"
#include "libs/server/rpc.h"

namespace connecting::server {

struct ServiceConfig {
  std::string database_url;
  std::string nats_url;
  std::string grpc_tls_cert_file, grpc_tls_key_file, grpc_tls_client_ca_file;
  absl::Duration grpc_tls_check = absl::Seconds(60);  // how often the TLS files are read again
  std::string grpc_health_listen;  // a plaintext port with only the health service ("" none)
  bus::NatsSecurity nats_security;
  std::string grpc_listen;
  std::string metrics_listen;
  AuthOptions auth;
  std::string page_token_key;
  int db_pool_size = 16;
  int worker_threads = 16;
  int max_queued_requests = 1024;
  int max_message_bytes = 1 << 20;
  absl::Duration max_deadline = absl::Seconds(30);
  // A client connection is asked to go (GOAWAY) after this long, so that
  // clients spread over new replicas; 0: never.
  absl::Duration max_connection_age = absl::Minutes(5);
  absl::Duration shutdown_grace = absl::Seconds(20);
  // After SIGTERM: NOT_SERVING at once, but calls still served this long,
  // while load balancers and endpoints take the replica out, before the
  // server stops taking calls (a second signal cuts it short).
  absl::Duration shutdown_delay = absl::ZeroDuration();
  bool migrate_on_start = true;
  absl::Duration migration_lock_timeout = absl::Seconds(1);  // db::MigrateOptions
  absl::Duration migration_lock_wait = absl::Minutes(10);
  bool outbox_relay = true;
  absl::Duration outbox_linger = bus::RelayOptions().linger;
  std::string event_subject_prefix;
  std::string event_stream;
  int event_stream_replicas = 1;
  absl::Duration event_stream_max_age;
  // What every consumer of the service starts from (ack wait, attempts, the
  // crash test hook); the service fills in the stream, durable and subjects.
  bus::ConsumerOptions consumer;
};

// What a service's wiring gets to build its handlers from.
struct ServiceContext {
  const ServiceConfig& config;
  db::Pool& pool;
  const bus::Nats& nats;
  const bus::Outbox& outbox;
  RpcRunner& rpc;
  const PageTokens& page_tokens;
  // Consumers registered here start with the server and stop before it exits.
  std::vector<std::unique_ptr<bus::Consumer>>& consumers;
  // Likewise background tasks (libs/server/periodic.h); the events they emit
  // wake the outbox relay after each run.
  std::vector<PeriodicTask>& periodic;
};

struct ServiceDefinition {
  std::string name;    // "partners": subjects connecting.partners.>, source /connecting/partners
  std::string stream;  // "PARTNERS"
  // How long the stream keeps events when this service creates it
  // (EVENT_STREAM_MAX_AGE overrides); zero keeps them until removed, for a
  // stream that other services rebuild projections from.
  absl::Duration stream_max_age = absl::Hours(24 * 365);
  // Fully-qualified gRPC service names, reported by the health service.
  std::vector<std::string> grpc_services;
  // The service's own migrations (the bus tables are applied first).
  std::function<db::MigrationSet()> migrations;
  // `--republish`: adds to the outbox, as snapshot events, every resource
  // other services keep projections of, and returns how many (for a stream
  // that lost events, or a compact start for a new consumer). With `true`
  // (`--republish --after-restore`), each resource gets a new version first.
  // Empty: the service has nothing to republish.
  std::function<absl::StatusOr<int64_t>(db::Pool&, const bus::Outbox&, bool new_versions)>
      republish;
  // The service's own variables, read together with the common ones before
  // anything starts (not for --migrate, --wait-for-migrations or
  // --republish), so that start-up stops with exit code 2 naming every bad
  // variable of either kind. Keep what it reads for `build`.
  std::function<void(config::EnvReader&)> read_config;
  // Builds the gRPC services; called once, after the pool and NATS exist.
  std::function<std::vector<std::unique_ptr<grpc::Service>>(ServiceContext&)> build;
};

int ServiceMain(int argc, char** argv, const ServiceDefinition& definition);

}  // namespace connecting::server

#endif  // CONNECTING_LIBS_SERVER_SERVICE_MAIN_H_
