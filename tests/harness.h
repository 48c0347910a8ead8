// Test harness: real PostgreSQL (shared, one database per test), real
// nats-server (shared, or a private one for restart tests), and the real
// service binaries as child processes, talked to over gRPC on loopback.
//
// tools/test/run.sh (what `make test` runs) starts the shared servers and sets
// CONNECTING_TEST_PG and CONNECTING_TEST_NATS.
#ifndef CONNECTING_TESTS_HARNESS_H_
#define CONNECTING_TESTS_HARNESS_H_

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <atomic>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "connecting/partners/v1/partners.api.h"
#include "connecting/scheduling/v1/scheduling.api.h"
#include "libs/server/auth.h"

namespace connecting::testing {

inline constexpr char kJwtKey[] = "test-signing-key-0123456789abcdef-0123456789";

// The value of a variable set by tools/test/run.sh; aborts the test run if unset.
std::string RequiredEnv(const char* name);
std::string RandomSuffix();
// A loopback port free to bind and claimed for the whole test run: no other
// test process of the run is handed it (tests/harness.cc).
int FreePort();
// A TCP connection to 127.0.0.1:port (its descriptor, to close), or -1.
int DialLoopback(int port);
bool PortOpen(int port);
// A fresh, empty database on the shared server (or on the one whose
// administrative URL is `admin_url`, e.g. a PostgresServer's); returns its URL.
std::string NewDatabase(const std::string& admin_url = "");
// What a test makes on the shared servers goes when its test suite ends
// (after TearDownTestSuite), so that a long run (tools/test/seeds.sh: two
// databases, some 24 MB, a seed) does not fill the disk. NewDatabase's
// databases and the streams of ServiceProcess on the shared NATS are
// removed so; a test that makes a stream there itself names it here.
void RemoveStreamAfterSuite(const std::string& stream);
// The port of a postgresql://user@host:port/db URL (0 if it has none), and
// the URL with another port (e.g. a StallingProxy's).
int PortOf(const std::string& url);
std::string WithPort(const std::string& url, int port);
// Polls `done` every `every` until it holds or `timeout` passes; whether it
// held at the end.
bool WaitUntil(const std::function<bool()>& done, absl::Duration timeout,
               absl::Duration every = absl::Milliseconds(20));
// The whole of a file ("" if it cannot be read), e.g. a process's log.
std::string ReadFile(const std::string& path);
// The last `lines` lines of the file at `path` (a process's log), for a
// failure message: the test's directory, logs included, goes when it ends.
std::string LogTail(const std::string& path, size_t lines);
// The lines of the file at `path` (a process's log) holding every one of
// `parts`, e.g. {"\"level\":\"warn\"", "\"msg\":\"health: NOT_SERVING\""}.
std::vector<std::string> LogLinesWith(const std::string& path,
                                      const std::vector<std::string>& parts);
// Writes `text` beside `path`, then renames it over `path` in one step, as a
// Kubernetes Secret volume swaps a file; false if either fails.
bool ReplaceFile(const std::string& path, const std::string& text);

// A child process with its own environment; killed (SIGKILL) on destruction.
class Process {
 public:
  // `user`: run as that user (the test runs as root; e.g. "postgres"); "":
  // as the test's own.
  Process(std::string path, std::vector<std::string> args, std::map<std::string, std::string> env,
          std::string log_path, const std::string& user = "");
  ~Process();
  pid_t pid() const { return pid_; }
  void Signal(int sig);
  // Exit code (or 128+signal) once it exits, -1 if still running at the timeout.
  int Wait(absl::Duration timeout);
  const std::string& log_path() const { return log_path_; }

 private:
  pid_t pid_ = -1;
  int status_ = -1;
  std::string log_path_;
};

// A binary run once to the end, as an operator runs a one-shot command
// (`partners --republish`, `scheduling --replay-dead-letters`): `env` on top
// of the test's own, its output in a fresh file under CONNECTING_TEST_TMP
// named after `name`. `code` is its exit status, -1 if still running after
// `timeout` (then killed).
struct OneShot {
  int code;
  std::string log;
};
OneShot RunOnce(const std::string& binary, const std::vector<std::string>& args,
                std::map<std::string, std::string> env, const std::string& name,
                absl::Duration timeout = absl::Seconds(30));

// nats-server with `args` (its address and `port` among them), logging to
// DIR/nats.log, once it listens on `port`.
std::unique_ptr<Process> StartNats(std::vector<std::string> args, const std::string& dir, int port);
// A NATS operator of the test's own (tools/test/nats-operator.js): writes
// DIR/nats.conf, a server in operator mode with JetStream storing in DIR/js,
// and DIR/service.creds, the credentials of a user of its account. Returns
// the arguments for StartNats that run that server on 127.0.0.1:`port`;
// empty (with a failure added) if they could not be made.
std::vector<std::string> NatsOperator(const std::string& dir, int port);

// A private nats-server with JetStream; Stop/Start keep its port and storage.
class NatsServer {
 public:
  NatsServer();
  ~NatsServer();
  void Start();
  void Stop();
  // SIGKILL: what it stored stays, as after a crash; Start brings it back.
  void Kill();
  std::string url() const;

 private:
  int port_;
  std::string dir_;
  std::unique_ptr<Process> proc_;
};

// A private PostgreSQL server, for a test that crashes, stops or pauses it:
// initialised in a fresh directory under CONNECTING_TEST_TMP and started on
// a loopback port of its own, as the `postgres` user when the test runs as
// root (initdb refuses root). Every commit is written to the operating
// system before it is answered (synchronous_commit on, unlike the shared
// server's), so a crashed server loses nothing it answered; fsync is off, as
// the crash is a process's, not the machine's.
class PostgresServer {
 public:
  PostgresServer();
  ~PostgresServer();  // stopped at once, its directory removed
  // Starts it and waits until it takes connections (after Crash, once it has
  // recovered from its WAL).
  void Start();
  // An immediate shutdown (SIGQUIT to the postmaster): every backend ends at
  // once, mid-transaction or mid-commit, nothing is checkpointed, and the
  // next Start recovers from the WAL, as after a crash.
  void Crash();
  // A clean stop (SIGINT, PostgreSQL's fast shutdown: open transactions
  // rolled back, every client's connection ended, a checkpoint written).
  void Stop();
  // Every process of the server stopped (SIGSTOP to the postmaster and its
  // children): connections stay open and nothing answers, as a server that
  // hangs or whose host vanished; Resume lets them carry on.
  void Pause();
  void Resume();
  int port() const { return port_; }
  // postgresql://postgres@127.0.0.1:PORT/postgres
  std::string admin_url() const;

 private:
  void Shutdown(int sig, const char* how);
  void SignalAll(int sig);

  int port_;
  std::string dir_;
  std::string user_;  // "postgres" when the test runs as root
  std::unique_ptr<Process> proc_;
  bool paused_ = false;
};

// A TCP relay on 127.0.0.1 to a server on 127.0.0.1:`target_port`, which a
// test can stall: while stalled it forwards nothing either way and closes
// nothing, as a network that drops every packet (or a server's host that
// vanished) looks to a client. New connections are accepted all the same.
class StallingProxy {
 public:
  explicit StallingProxy(int target_port);
  ~StallingProxy();
  int port() const { return port_; }
  void Stall();
  void Resume();
  // The connections open now are never relayed again, nor closed, until
  // the proxy goes; those made later are relayed as usual: a failover that
  // moved the server's address, where the old peer vanished without a
  // word. Returns once the relay has let them go.
  void Abandon();
  // Connections made from now on go to the server on `target_port`: with
  // Abandon, a failover to another server behind a stable address.
  void Retarget(int target_port) { target_port_ = target_port; }

 private:
  void Run();
  void Wake();
  std::atomic<int> abandon_asked_{0};
  std::atomic<int> abandon_done_{0};
  std::atomic<int> target_port_;
  int port_ = 0;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};  // a pipe that interrupts the relay's poll
  std::atomic<bool> stalled_{false};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// One running service binary.
class ServiceProcess {
 public:
  struct Options {
    std::string binary;  // e.g. PARTNERS_BIN
    std::string database_url;
    std::string nats_url;
    std::string stream;          // unique per test on the shared NATS
    std::string subject_prefix;  // likewise
    std::map<std::string, std::string> extra_env;
  };
  explicit ServiceProcess(Options o);
  // SIGKILL; with CONNECTING_TEST_STOP_WITH_SIGTERM set (make sanitize), a
  // service still running gets SIGTERM instead, and the test fails unless it
  // exits 0 (so that the sanitizers' exit checks, leaks included, run for
  // every service).
  ~ServiceProcess();
  // Starts the binary and waits until its health check answers SERVING.
  void Start(absl::Duration timeout = absl::Seconds(30));
  // Starts the binary without waiting for it (for one that may exit at once).
  void Launch();
  // Health status of the whole server ("" service): SERVING=1, NOT_SERVING=2, -1 unreachable.
  int Health(const std::string& service = "");
  bool WaitForHealth(int status, absl::Duration timeout);
  void DropChannel() { channel_.reset(); }
  void Kill();                                                // SIGKILL and reap
  int Terminate(absl::Duration timeout = absl::Seconds(30));  // SIGTERM; exit code
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  int metrics_port() const { return metrics_port_; }
  const Options& options() const { return options_; }
  Process* process() { return proc_.get(); }

 private:
  Options options_;
  int grpc_port_;
  int metrics_port_;
  std::unique_ptr<Process> proc_;
  std::string log_;  // the running process's output
  std::shared_ptr<grpc::Channel> channel_;
};

// A seeded test's seed: CONNECTING_TEST_SEED when set (to explore other
// seeds: `CONNECTING_TEST_SEED=7 tools/test/run.sh -R rpc_fuzz`), else
// `fallback`, which CI runs. Printed, so that a failure can be replayed.
uint32_t TestSeed(uint32_t fallback);

// A token for `role` signed with kJwtKey.
std::string Token(server::Role role, const std::string& subject = "tester",
                  const std::string& org = "", absl::Duration lifetime = absl::Hours(1));
// A ClientContext carrying the token and a 10 s deadline.
std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token);

// What an error's google.rpc.Status details say (libs/server/errors.h), as
// a client reads them from grpc::Status::error_details().
struct ErrorDetails {
  bool present = false;                                     // the trailer was there and parsed
  int code = -1;                                            // google.rpc.Status.code
  std::string reason, domain;                               // google.rpc.ErrorInfo, if any
  int error_infos = 0;                                      // how many ErrorInfo (AIP-193: one)
  std::map<std::string, std::string> metadata;              // its metadata
  std::string resource_type, resource_name;                 // google.rpc.ResourceInfo
  std::vector<std::pair<std::string, std::string>> fields;  // google.rpc.BadRequest
};
ErrorDetails DetailsOf(const grpc::Status& status);

// Calls `method` ("/package.Service/Method") with `request` as its raw wire
// bytes and the token, waiting for the answer (10 s deadline); the reply's
// bytes go to `response` if given.
grpc::Status RawCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                     const std::string& request, const std::string& token,
                     std::string* response = nullptr);

// One message as stored in a JetStream stream.
struct StoredEvent {
  uint64_t seq;
  std::string subject;
  std::string data;
  std::map<std::string, std::string> headers;
};
// Polls until the service database's outbox is empty (every event published).
bool WaitForOutboxDrained(const std::string& db_url, absl::Duration timeout = absl::Seconds(15));

// An outage of a service's own database while it lives: the database at
// `db_url` refuses new connections and those open are dropped; End() or the
// destructor (whatever failed meanwhile) lets connections in again.
class DatabaseOutage {
 public:
  explicit DatabaseOutage(std::string db_url);
  ~DatabaseOutage() { End(); }
  void End();

 private:
  std::string db_url_;
  bool ended_ = false;
};

// A backup and restore of `service`'s database at `db_url`, as an operator
// takes them: the service stopped (it must exit 0), BackUpDatabase copies the
// database (to <name>_backup on the same server) or RestoreDatabase puts that
// copy back in its place, and the service starts again (its clients'
// channels reconnect).
absl::Status BackUpDatabase(ServiceProcess& service, const std::string& db_url);
absl::Status RestoreDatabase(ServiceProcess& service, const std::string& db_url);

// Drops every connection to the database at `db_url` but the tests' own
// (application_name "test"), as a failover would; how many it dropped.
int64_t DropConnections(const std::string& db_url);

// Race tests: a second connection holds a row while the service's call
// arrives, and lets go once the call waits for it.
// Walks a list through its pages: sends `request` with `call(request,
// &page)`, then again with each page's next_page_token until a page has
// none, handing each page to `each(page)`. A failed call's status, or
// OUT_OF_RANGE after `max_pages` pages (a token that never runs out).
template <class Page, class Request, class Call, class Each>
grpc::Status EveryPage(Request request, Call call, Each each, int max_pages = 100) {
  for (int pages = 0; pages < max_pages; ++pages) {
    Page page;
    grpc::Status s = call(request, &page);
    if (!s.ok()) return s;
    each(page);
    if (page.next_page_token().empty()) return grpc::Status::OK;
    request.set_page_token(page.next_page_token());
  }
  return grpc::Status(grpc::StatusCode::OUT_OF_RANGE, "the pages never ran out");
}

// Whether some backend of the database at `db_url` waits for a lock now.
bool WaitsForALock(const std::string& db_url);
// Until `n` backends of that database wait for a lock at once (at most 5 s);
// whether they do.
bool UntilLockWaiters(const std::string& db_url, int64_t n);
// Until `finished()` (which may wait a little) or some backend of that
// database waits for a lock; at most 150 rounds.
void UntilWaitingOrDone(const std::string& db_url, const std::function<bool()>& finished);
// The same for a call running in `call`, checked every 20 ms (at most 3 s).
template <class T>
void UntilWaitingOrDone(const std::string& db_url, std::future<T>& call) {
  UntilWaitingOrDone(db_url, [&call] {
    return call.wait_for(std::chrono::milliseconds(20)) == std::future_status::ready;
  });
}
// Deadlocks PostgreSQL has broken in the database at `db_url` so far (its
// backends report them within a second); -1 if it cannot be read.
int64_t DeadlocksIn(const std::string& db_url);

// The body of http://127.0.0.1:<port><path> (HTTP/1.0), "" if it cannot be had.
std::string HttpGet(int port, const std::string& path);
// The value of `series` (a metric name with its labels as exported, e.g.
// `connecting_outbox_pending`) on the /metrics endpoint at `port`; nullopt if
// it is not exported.
std::optional<double> MetricValue(int port, const std::string& series);
// The value of the unlabelled counter or gauge `family` in this process's own
// registry (what its /metrics would report); nullopt if not registered yet.
std::optional<double> InProcessMetric(const std::string& family);

// How long `stream` keeps events (zero: for good); nullopt if it does not exist.
std::optional<absl::Duration> StreamMaxAge(const std::string& nats_url, const std::string& stream);
// What an operator does to a stream with the nats CLI: `nats stream rm`
// (its durables go with it) or `nats stream purge` (its sequence goes on).
enum class StreamChange { kDelete, kPurge };
absl::Status ChangeStream(const std::string& nats_url, const std::string& stream,
                          StreamChange change);
// All messages stored in `stream` (empty if it does not exist).
std::vector<StoredEvent> ReadStream(const std::string& nats_url, const std::string& stream);
// Polls until `stream` holds at least `count` messages or the timeout passes.
std::vector<StoredEvent> WaitForEvents(const std::string& nats_url, const std::string& stream,
                                       size_t count, absl::Duration timeout = absl::Seconds(15));

// A partners service on the shared servers with its own database and stream.
struct PartnersFixture {
  explicit PartnersFixture(std::map<std::string, std::string> extra_env = {});
  std::string db_url;
  std::string nats_url;
  std::string stream;
  std::unique_ptr<ServiceProcess> service;
  std::unique_ptr<connecting::partners::v1::PartnersService::Stub> stub;
  std::string admin = Token(server::Role::kAdmin, "programme-team");
};

// Partners and scheduling wired together on the shared servers: scheduling
// consumes the partners stream of this fixture.
struct SchedulingFixture {
  // On the shared NATS, or the one at `own_nats_url`; on the shared
  // PostgreSQL, or `own_pg`.
  explicit SchedulingFixture(std::map<std::string, std::string> extra_env = {},
                             const std::string& own_nats_url = "",
                             const PostgresServer* own_pg = nullptr);
  // Creates an ACTIVE organisation in partners and waits until scheduling's
  // projection has it.
  std::string CreatePartner(const std::string& name);
  // Waits until the projection holds `status` for the organisation.
  bool WaitForPartnerStatus(const std::string& org_id, int status,
                            absl::Duration timeout = absl::Seconds(10));
  // Creates a contact at the organisation in partners and waits until
  // scheduling's projection has it; returns its id. CreatePartner makes one
  // for each organisation: hosts[org_id].
  std::string CreateHost(const std::string& org_id, const std::string& name);
  std::map<std::string, std::string> hosts;
  // The programme team archives or pauses the organisation in partners;
  // returns it as partners answered (scheduling hears of it by the event).
  absl::StatusOr<connecting::partners::v1::Organisation> ArchivePartner(const std::string& org_id);
  absl::StatusOr<connecting::partners::v1::Organisation> PausePartner(const std::string& org_id);
  // `partners --republish [--after-restore]` against this fixture's partners
  // database, given only what the README says it needs; returns its exit
  // status and log.
  OneShot RepublishPartners(bool after_restore = false);
  // Empties scheduling's partner projection (organisations, contacts, offers)
  // and its inbox: a consumer starting afresh, which replays PARTNERS from
  // the start within about 5 s (the consumer's check of its database).
  absl::Status ForgetPartners();
  // Waits until `sql` (one parameter, `id`) returns a row whose first column is `want`.
  bool WaitForProjection(const std::string& sql, const std::string& id, const std::string& want,
                         absl::Duration timeout = absl::Seconds(10));
  std::string nats_url;
  std::string suffix;
  std::string partners_db, scheduling_db;
  std::string scheduling_stream;
  std::unique_ptr<ServiceProcess> partners;
  std::unique_ptr<ServiceProcess> scheduling;
  std::unique_ptr<connecting::partners::v1::PartnersService::Stub> partners_stub;
  std::unique_ptr<connecting::scheduling::v1::SchedulingService::Stub> stub;
  std::string admin = Token(server::Role::kAdmin, "programme-team");
};

// A valid organisation for CreateOrganisation.
connecting::partners::v1::Organisation SampleOrganisation(const std::string& name);

}  // namespace connecting::testing

#endif  // CONNECTING_TESTS_HARNESS_H_
