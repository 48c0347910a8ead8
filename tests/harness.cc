#include "tests/harness.h"

#include <fcntl.h>
#include <grp.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "libs/common/metrics.h"
#include "libs/db/db.h"

extern char** environ;

namespace connecting::testing {

std::string RequiredEnv(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') {
    std::fprintf(stderr,
                 "%s is not set: run the tests with `make test` (tools/test/run.sh), which "
                 "starts PostgreSQL and NATS for them\n",
                 name);
    std::abort();
  }
  return v;
}

uint32_t TestSeed(uint32_t fallback) {
  uint32_t seed = fallback;
  if (const char* v = std::getenv("CONNECTING_TEST_SEED"); v != nullptr && *v != '\0') {
    if (!absl::SimpleAtoi(v, &seed)) {
      std::fprintf(stderr, "CONNECTING_TEST_SEED=%s is not a number\n", v);
      std::abort();
    }
  }
  std::printf("seed %u (CONNECTING_TEST_SEED)\n", seed);
  return seed;
}

std::string RandomSuffix() {
  static std::mt19937_64 rng(std::random_device{}() ^ static_cast<uint64_t>(getpid()) << 32);
  static const char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string s;
  for (int i = 0; i < 10; ++i) s.push_back(kChars[rng() % 36]);
  return s;
}

namespace {

sockaddr_in Loopback(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  return addr;
}

// Claims PORT for this test run: a file PORT under $CONNECTING_TEST_TMP/ports,
// created only if absent, and never removed while the run lasts. Every test
// process of the run (and tools/dev/lib.sh's free_port) claims its ports
// there, so no two of them pick the same port between choosing it and binding
// it, nor one process twice. Without CONNECTING_TEST_TMP, every port counts as
// claimed-for-us. A run claims a few ports per test; a sweep of a thousand
// seeds (tools/test/seeds.sh), a few thousand of the 22,000 or so below the
// ephemeral range.
bool ClaimPort(int port) {
  const char* tmp = std::getenv("CONNECTING_TEST_TMP");
  if (tmp == nullptr || *tmp == '\0') return true;
  const std::string dir = absl::StrCat(tmp, "/ports");
  mkdir(dir.c_str(), 0755);  // EEXIST is the usual answer
  int fd =
      open(absl::StrCat(dir, "/", port).c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  close(fd);
  return true;
}

}  // namespace

int DialLoopback(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr = Loopback(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool PortOpen(int port) {
  int fd = DialLoopback(port);
  if (fd >= 0) close(fd);
  return fd >= 0;
}

// A loopback port free to bind, below the kernel's ephemeral range: a port
// the kernel handed out could be taken by an outgoing connection before the
// server under test binds it. Claimed for this run (ClaimPort) before it is
// returned.
int FreePort() {
  int low = 32768, high = 60999;
  if (FILE* f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
    if (fscanf(f, "%d %d", &low, &high) != 2 || low <= 11000) low = 32768;
    fclose(f);
  }
  static std::mt19937 rng(std::random_device{}());
  for (int attempt = 0; attempt < 1000; ++attempt) {
    int port = 10000 + static_cast<int>(rng() % static_cast<unsigned>(low - 10000));
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr = Loopback(port);
    bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    close(fd);
    if (ok && ClaimPort(port)) return port;
  }
  std::fprintf(stderr, "no free loopback port below %d\n", low);
  std::abort();
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string LogTail(const std::string& path, size_t lines) {
  const std::string text = ReadFile(path);
  size_t start = text.size();
  for (size_t n = 0; start > 0 && n <= lines;) {
    if (text[--start] == '\n') ++n;
  }
  return absl::StrCat(start > 0 ? "…\n" : "", text.substr(start == 0 ? 0 : start + 1));
}

std::vector<std::string> LogLinesWith(const std::string& path,
                                      const std::vector<std::string>& parts) {
  std::vector<std::string> found;
  for (absl::string_view line : absl::StrSplit(ReadFile(path), '\n', absl::SkipEmpty())) {
    if (std::all_of(parts.begin(), parts.end(),
                    [&](const std::string& p) { return absl::StrContains(line, p); })) {
      found.emplace_back(line);
    }
  }
  return found;
}

bool ReplaceFile(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".new";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.good()) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

namespace {
// The databases and streams this test binary made on the shared servers and
// has not removed yet.
struct Leftovers {
  std::mutex mu;
  std::vector<std::string> databases;
  std::vector<std::string> streams;
};
Leftovers& Made() {
  static auto* made = new Leftovers;
  return *made;
}

void RemoveLeftovers() {
  std::vector<std::string> databases, streams;
  {
    std::lock_guard<std::mutex> l(Made().mu);
    databases.swap(Made().databases);
    streams.swap(Made().streams);
  }
  // A warning, not a failure: the tests are over, and what is left goes
  // with the run's servers.
  auto warn = [](const std::string& what, const absl::Status& s) {
    std::cerr << "test harness: could not remove " << what << ": " << s << std::endl;
  };
  if (!databases.empty()) {
    auto conn = db::Conn::Open(RequiredEnv("CONNECTING_TEST_PG"), "test-harness");
    for (const auto& name : databases) {
      // FORCE: a service the test killed may have left a connection behind.
      absl::Status s =
          conn.ok()
              ? (*conn)->ExecScript(absl::StrCat("DROP DATABASE IF EXISTS ", name, " WITH (FORCE)"))
              : conn.status();
      if (!s.ok()) warn("database " + name, s);
    }
  }
  for (const auto& stream : streams) {
    absl::Status s =
        ChangeStream(RequiredEnv("CONNECTING_TEST_NATS"), stream, StreamChange::kDelete);
    // Not found: never made (a test that failed early), or removed by the test.
    if (!s.ok() && !absl::IsNotFound(s)) warn("stream " + stream, s);
  }
}

class RemoveLeftoversAtSuiteEnd : public ::testing::EmptyTestEventListener {
  void OnTestSuiteEnd(const ::testing::TestSuite&) override { RemoveLeftovers(); }
};

// Every test binary links this file; gtest_main runs the suites after.
const bool kRemovesLeftovers = [] {
  ::testing::UnitTest::GetInstance()->listeners().Append(new RemoveLeftoversAtSuiteEnd);
  return true;
}();

// The URL of database `name` on the server of the postgresql:// URL `url`.
std::string WithDatabase(const std::string& url, const std::string& name) {
  return url.substr(0, url.rfind('/') + 1) + name;
}
}  // namespace

void RemoveStreamAfterSuite(const std::string& stream) {
  std::lock_guard<std::mutex> l(Made().mu);
  Made().streams.push_back(stream);
}

std::string NewDatabase(const std::string& admin_url) {
  const bool shared = admin_url.empty();
  std::string admin = shared ? RequiredEnv("CONNECTING_TEST_PG") : admin_url;
  std::string name = "t_" + RandomSuffix();
  auto conn = db::Conn::Open(admin, "test-harness");
  if (!conn.ok()) {
    ADD_FAILURE() << conn.status();
    return "";
  }
  absl::Status s = (*conn)->ExecScript("CREATE DATABASE " + name);
  EXPECT_TRUE(s.ok()) << s;
  if (s.ok() && shared) {  // a private server's go with it
    std::lock_guard<std::mutex> l(Made().mu);
    Made().databases.push_back(name);
  }
  return WithDatabase(admin, name);
}

namespace {
// Where the port of a postgresql://user@host:port/db URL is: [begin, end).
std::pair<size_t, size_t> PortSpan(const std::string& url) {
  const size_t at = url.find('@');
  const size_t slash = url.find('/', at == std::string::npos ? url.find("//") + 2 : at);
  const size_t colon = url.rfind(':', slash);
  if (colon == std::string::npos || (at != std::string::npos && colon < at)) return {0, 0};
  return {colon + 1, slash == std::string::npos ? url.size() : slash};
}
}  // namespace

bool WaitUntil(const std::function<bool()>& done, absl::Duration timeout, absl::Duration every) {
  const absl::Time until = absl::Now() + timeout;
  while (!done() && absl::Now() < until) absl::SleepFor(every);
  return done();
}

int PortOf(const std::string& url) {
  auto [begin, end] = PortSpan(url);
  int port = 0;
  return begin < end && absl::SimpleAtoi(url.substr(begin, end - begin), &port) ? port : 0;
}

std::string WithPort(const std::string& url, int port) {
  auto [begin, end] = PortSpan(url);
  if (begin >= end) return url;
  return absl::StrCat(url.substr(0, begin), port, url.substr(end));
}

Process::Process(std::string path, std::vector<std::string> args,
                 std::map<std::string, std::string> env, std::string log_path,
                 const std::string& user)
    : log_path_(std::move(log_path)) {
  // Looked up before fork: a child of a threaded process may only make
  // async-signal-safe calls.
  uid_t uid = 0;
  gid_t gid = 0;
  if (!user.empty()) {
    const passwd* pw = getpwnam(user.c_str());
    if (pw == nullptr) {
      ADD_FAILURE() << "no user " << user << " to run " << path << " as";
      return;
    }
    uid = pw->pw_uid;
    gid = pw->pw_gid;
  }
  std::map<std::string, std::string> merged;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv(*e);
    size_t eq = kv.find('=');
    if (eq != std::string::npos) merged[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (auto& [k, v] : env) merged[k] = v;
  std::vector<std::string> env_strings;
  for (auto& [k, v] : merged) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp, argv;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  argv.push_back(path.data());
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_ = fork();
  if (pid_ == 0) {
    if (!user.empty() && (setgroups(0, nullptr) != 0 || setgid(gid) != 0 || setuid(uid) != 0)) {
      _exit(126);
    }
    // Die with the test process, even if it is killed before its destructors
    // run (set after the user changed, which clears it).
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    // The harness blocks no signals, but make sure the child starts clean.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execve(path.c_str(), argv.data(), envp.data());
    _exit(127);
  }
}

Process::~Process() {
  if (Wait(absl::ZeroDuration()) < 0) {
    Signal(SIGKILL);
    Wait(absl::Seconds(10));
  }
}

void Process::Signal(int sig) {
  if (pid_ > 0 && status_ < 0) kill(pid_, sig);
}

int Process::Wait(absl::Duration timeout) {
  if (status_ >= 0) return status_;
  absl::Time until = absl::Now() + timeout;
  while (true) {
    int st = 0;
    pid_t r = waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      return status_;
    }
    if (absl::Now() >= until) return -1;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

OneShot RunOnce(const std::string& binary, const std::vector<std::string>& args,
                std::map<std::string, std::string> env, const std::string& name,
                absl::Duration timeout) {
  std::string log =
      absl::StrCat(RequiredEnv("CONNECTING_TEST_TMP"), "/", name, "-", RandomSuffix(), ".log");
  Process p(binary, args, std::move(env), log);
  return {p.Wait(timeout), log};  // the destructor kills it if still running
}

StallingProxy::StallingProxy(int target_port) : target_port_(target_port) {
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr = Loopback(0);
  socklen_t len = sizeof addr;
  if (listen_fd_ < 0 || bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      listen(listen_fd_, 64) != 0 ||
      getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
      pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
    std::perror("StallingProxy");
    std::abort();
  }
  port_ = ntohs(addr.sin_port);
  thread_ = std::thread([this] { Run(); });
}

StallingProxy::~StallingProxy() {
  stop_ = true;
  Wake();
  thread_.join();
  close(listen_fd_);
  close(wake_[0]);
  close(wake_[1]);
}

void StallingProxy::Wake() { (void)!write(wake_[1], "x", 1); }

void StallingProxy::Stall() {
  stalled_ = true;
  Wake();
}

void StallingProxy::Resume() {
  stalled_ = false;
  Wake();
}

void StallingProxy::Abandon() {
  const int asked = ++abandon_asked_;
  Wake();
  while (abandon_done_.load() < asked) absl::SleepFor(absl::Milliseconds(1));
}

void StallingProxy::Run() {
  // Each pair relays client <-> server; a side that ends closes both.
  struct Pair {
    int client;
    int server;
  };
  std::vector<Pair> pairs;
  std::vector<Pair> abandoned;  // open, never polled (Abandon)
  auto close_pair = [](const Pair& p) {
    close(p.client);
    close(p.server);
  };
  while (!stop_) {
    if (const int asked = abandon_asked_.load(); asked != abandon_done_.load()) {
      abandoned.insert(abandoned.end(), pairs.begin(), pairs.end());
      pairs.clear();
      abandon_done_ = asked;
    }
    std::vector<pollfd> fds{{wake_[0], POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    const bool relaying = !stalled_;
    if (relaying) {
      for (const Pair& p : pairs) {
        fds.push_back({p.client, POLLIN, 0});
        fds.push_back({p.server, POLLIN, 0});
      }
    }
    const size_t polled = fds.size() / 2 - 1;  // the pairs in `fds`, first in `pairs`
    if (poll(fds.data(), fds.size(), 1000) <= 0) continue;
    if (fds[0].revents != 0) {
      char drain[64];
      while (read(wake_[0], drain, sizeof drain) > 0) {
      }
    }
    if (fds[1].revents != 0) {
      int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      int server = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in to = Loopback(target_port_.load());
      if (client >= 0 && server >= 0 &&
          connect(server, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0) {
        pairs.push_back({client, server});
      } else {
        if (client >= 0) close(client);
        if (server >= 0) close(server);
      }
    }
    std::vector<Pair> kept;
    for (size_t i = 0; i < pairs.size(); ++i) {
      if (i >= polled) {  // accepted just now, or not polled while stalled
        kept.push_back(pairs[i]);
        continue;
      }
      bool open = true;
      for (int side = 0; side < 2 && open; ++side) {
        if (fds[2 + 2 * i + side].revents == 0) continue;
        const int from = side == 0 ? pairs[i].client : pairs[i].server;
        const int to = side == 0 ? pairs[i].server : pairs[i].client;
        char buf[65536];
        const ssize_t n = read(from, buf, sizeof buf);
        open = n > 0;
        for (ssize_t sent = 0; open && sent < n;) {
          const ssize_t w = send(to, buf + sent, static_cast<size_t>(n - sent), MSG_NOSIGNAL);
          open = w > 0;
          sent += std::max<ssize_t>(w, 0);
        }
      }
      if (open) {
        kept.push_back(pairs[i]);
      } else {
        close_pair(pairs[i]);
      }
    }
    pairs = std::move(kept);
  }
  for (const Pair& p : pairs) close_pair(p);
  for (const Pair& p : abandoned) close_pair(p);
}

PostgresServer::PostgresServer() : port_(FreePort()) {
  dir_ = absl::StrCat(RequiredEnv("CONNECTING_TEST_TMP"), "/pg-", RandomSuffix());
  mkdir(dir_.c_str(), 0755);
  if (getuid() == 0) {
    user_ = "postgres";
    const passwd* pw = getpwnam(user_.c_str());
    if (pw == nullptr || chown(dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      ADD_FAILURE() << "cannot give " << dir_ << " to the postgres user";
      return;
    }
  }
  Process initdb(RequiredEnv("CONNECTING_TEST_PG_BINDIR") + "/initdb",
                 {"-D", dir_ + "/data", "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-locale", "--no-sync"},
                 {}, dir_ + "/initdb.log", user_);
  const int code = initdb.Wait(absl::Seconds(120));
  if (code != 0) {
    ADD_FAILURE() << "initdb exited " << code << ": " << LogTail(dir_ + "/initdb.log", 20);
    return;
  }
  Start();
}

PostgresServer::~PostgresServer() {
  Crash();  // nothing to keep (a postmaster that outlives it is killed with its Process)
  std::error_code ignored;  // the run's directory goes at its end anyway
  std::filesystem::remove_all(dir_, ignored);
}

void PostgresServer::Start() {
  proc_ = std::make_unique<Process>(
      RequiredEnv("CONNECTING_TEST_PG_BINDIR") + "/postgres",
      std::vector<std::string>{"-D", dir_ + "/data", "-p", std::to_string(port_), "-k", dir_, "-c",
                               "listen_addresses=127.0.0.1", "-c", "max_connections=100", "-c",
                               "fsync=off", "-c", "synchronous_commit=on"},
      std::map<std::string, std::string>{}, dir_ + "/postgres.log", user_);
  const bool up = WaitUntil(
      [&] {
        return proc_->Wait(absl::ZeroDuration()) < 0 && db::Conn::Open(admin_url(), "test").ok();
      },
      absl::Seconds(60), absl::Milliseconds(50));
  if (!up) ADD_FAILURE() << "PostgreSQL did not start: " << LogTail(dir_ + "/postgres.log", 20);
}

void PostgresServer::Crash() { Shutdown(SIGQUIT, "SIGQUIT"); }

void PostgresServer::Stop() { Shutdown(SIGINT, "a fast shutdown"); }

void PostgresServer::Shutdown(int sig, const char* how) {
  if (proc_ == nullptr) return;
  Resume();  // a stopped process would hold the signal until continued
  proc_->Signal(sig);
  EXPECT_GE(proc_->Wait(absl::Seconds(20)), 0) << "PostgreSQL still running after " << how;
  proc_.reset();
}

void PostgresServer::Pause() {
  ASSERT_NE(proc_, nullptr) << "PostgreSQL is not running";
  SignalAll(SIGSTOP);
  paused_ = true;
}

void PostgresServer::Resume() {
  if (!paused_) return;
  SignalAll(SIGCONT);
  paused_ = false;
}

void PostgresServer::SignalAll(int sig) {
  // The postmaster first, so that (stopped) it starts no backend while its
  // children are looked for; then the backends, the checkpointer, the WAL
  // writer and the rest, each with the postmaster as its parent.
  proc_->Signal(sig);
  const std::string parent = std::to_string(proc_->pid());
  std::vector<pid_t> pids;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || !absl::ascii_isdigit(name[0])) continue;
    for (absl::string_view line :
         absl::StrSplit(ReadFile(entry.path().string() + "/status"), '\n')) {
      if (absl::ConsumePrefix(&line, "PPid:") && absl::StripAsciiWhitespace(line) == parent) {
        pids.push_back(std::stoi(name));
      }
    }
  }
  for (pid_t pid : pids) kill(pid, sig);
}

std::string PostgresServer::admin_url() const {
  return absl::StrCat("postgresql://postgres@127.0.0.1:", port_, "/postgres");
}

NatsServer::NatsServer() : port_(FreePort()) {
  dir_ = absl::StrCat(RequiredEnv("CONNECTING_TEST_TMP"), "/nats-", RandomSuffix());
  mkdir(dir_.c_str(), 0755);
  Start();
}

NatsServer::~NatsServer() { Stop(); }

std::unique_ptr<Process> StartNats(std::vector<std::string> args, const std::string& dir,
                                   int port) {
  args.insert(args.begin(), "nats-server");
  auto nats = std::make_unique<Process>("/usr/bin/env", args, std::map<std::string, std::string>{},
                                        dir + "/nats.log");
  for (int i = 0; i < 400 && !PortOpen(port); ++i) absl::SleepFor(absl::Milliseconds(25));
  EXPECT_TRUE(PortOpen(port)) << "nats-server did not start on port " << port << ":\n"
                              << ReadFile(dir + "/nats.log");
  return nats;
}

std::vector<std::string> NatsOperator(const std::string& dir, int port) {
  // The keys and JWTs take a while to make (seconds on a loaded machine);
  // the port given here on the command line wins over the file's.
  const std::string make = absl::StrCat("mkdir -p '", dir, "' && node '", SOURCE_DIR,
                                        "/tools/test/nats-operator.js' '", dir, "' 4222");
  if (std::system(make.c_str()) != 0) {
    ADD_FAILURE() << "could not make a NATS operator in " << dir;
    return {};
  }
  return {"-c", dir + "/nats.conf", "-a", "127.0.0.1", "-p", std::to_string(port)};
}

void NatsServer::Start() {
  proc_ = StartNats({"-js", "-a", "127.0.0.1", "-p", std::to_string(port_), "-sd", dir_ + "/js"},
                    dir_, port_);
}

void NatsServer::Stop() {
  if (proc_ == nullptr) return;
  proc_->Signal(SIGTERM);
  if (proc_->Wait(absl::Seconds(10)) < 0) proc_->Signal(SIGKILL);
  proc_.reset();
}

void NatsServer::Kill() {
  if (proc_ == nullptr) return;
  proc_->Signal(SIGKILL);
  proc_->Wait(absl::Seconds(10));
  proc_.reset();
}

std::string NatsServer::url() const { return absl::StrCat("nats://127.0.0.1:", port_); }

ServiceProcess::ServiceProcess(Options o)
    : options_(std::move(o)), grpc_port_(FreePort()), metrics_port_(FreePort()) {
  const char* shared_nats = std::getenv("CONNECTING_TEST_NATS");
  if (!options_.stream.empty() && shared_nats != nullptr && options_.nats_url == shared_nats) {
    RemoveStreamAfterSuite(options_.stream);
  }
  // Short reconnect backoff: tests connect before the server listens and
  // across restarts, and gRPC's default backoff would add seconds each time.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 250);
  channel_ = grpc::CreateCustomChannel(address(), grpc::InsecureChannelCredentials(), args);
}

ServiceProcess::~ServiceProcess() {
  // The log goes with the test's directory: when the test failed, its end is
  // what CI keeps of what the service saw.
  if (!log_.empty() && ::testing::Test::HasFailure()) {
    std::cerr << "the test failed; " << options_.binary << "'s log " << log_ << " ends:\n"
              << LogTail(log_, 30) << std::endl;
  }
  // One that already exited (a crash the test caused) is the test's business.
  if (proc_ == nullptr || std::getenv("CONNECTING_TEST_STOP_WITH_SIGTERM") == nullptr ||
      proc_->Wait(absl::ZeroDuration()) >= 0) {
    Kill();
    return;
  }
  if (int code = Terminate(); code != 0) {
    ADD_FAILURE() << options_.binary << " exited " << code << " on SIGTERM; log " << log_
                  << ", its end:\n"
                  << LogTail(log_, 40);
  }
}

void ServiceProcess::Start(absl::Duration timeout) {
  Launch();
  // Wait for the port before the first RPC: a failed first connection puts the
  // channel into reconnect backoff.
  absl::Time until = absl::Now() + timeout;
  while (absl::Now() < until && !PortOpen(grpc_port_) && proc_->Wait(absl::ZeroDuration()) < 0) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (!WaitForHealth(1, until - absl::Now())) {
    // The log goes with the test's directory: its end is the cause.
    const int exited = proc_->Wait(absl::ZeroDuration());
    ADD_FAILURE() << "service did not become SERVING within " << timeout
                  << (exited >= 0 ? absl::StrCat(" (it exited ", exited, ")") : "") << "; log "
                  << log_ << ", its end:\n"
                  << LogTail(log_, 40);
  }
}

void ServiceProcess::Launch() {
  std::map<std::string, std::string> env = {
      {"DATABASE_URL", options_.database_url},
      {"NATS_URL", options_.nats_url},
      {"GRPC_LISTEN", address()},
      {"METRICS_LISTEN", absl::StrCat("127.0.0.1:", metrics_port_)},
      {"AUTH_JWT_KEY", kJwtKey},
      {"EVENT_STREAM", options_.stream},
      {"EVENT_SUBJECT_PREFIX", options_.subject_prefix},
      {"DB_POOL_SIZE", "8"},
      {"LOG_LEVEL", "debug"},
      {"SHUTDOWN_GRACE", "5s"},
  };
  for (auto& [k, v] : options_.extra_env) env[k] = v;
  std::string log = absl::StrCat(RequiredEnv("CONNECTING_TEST_TMP"), "/", options_.stream, "-",
                                 RandomSuffix(), ".log");
  log_ = log;
  proc_ = std::make_unique<Process>(options_.binary, std::vector<std::string>{}, env, log);
}

int ServiceProcess::Health(const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status s = stub->Check(&ctx, req, &resp);
  return s.ok() ? static_cast<int>(resp.status()) : -1;
}

bool ServiceProcess::WaitForHealth(int status, absl::Duration timeout) {
  absl::Time until = absl::Now() + timeout;
  while (absl::Now() < until) {
    if (Health() == status) return true;
    if (proc_ != nullptr && proc_->Wait(absl::ZeroDuration()) >= 0) return false;  // exited
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

void ServiceProcess::Kill() {
  if (proc_ == nullptr) return;
  proc_->Signal(SIGKILL);
  proc_->Wait(absl::Seconds(10));
  proc_.reset();
}

int ServiceProcess::Terminate(absl::Duration timeout) {
  if (proc_ == nullptr) return -1;
  proc_->Signal(SIGTERM);
  int code = proc_->Wait(timeout);
  proc_.reset();
  return code;
}

std::string Token(server::Role role, const std::string& subject, const std::string& org,
                  absl::Duration lifetime) {
  std::map<std::string, std::string> claims;
  if (!org.empty()) claims["org"] = org;
  auto t = server::MintToken(kJwtKey, role, subject, claims, lifetime);
  return t.ok() ? *t : "";
}

std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return ctx;
}

grpc::Status RawCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                     const std::string& request, const std::string& token, std::string* response) {
  grpc::GenericStub stub(channel);
  grpc::Slice slice(request);
  grpc::ByteBuffer req(&slice, 1), resp;
  auto ctx = Ctx(token);
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status result;
  stub.UnaryCall(ctx.get(), method, grpc::StubOptions(), &req, &resp, [&](grpc::Status s) {
    std::lock_guard<std::mutex> l(mu);
    result = std::move(s);
    done = true;
    cv.notify_one();
  });
  std::unique_lock<std::mutex> l(mu);
  cv.wait(l, [&] { return done; });
  if (response != nullptr && result.ok()) {
    std::vector<grpc::Slice> slices;
    response->clear();
    if (resp.Dump(&slices).ok()) {
      for (const grpc::Slice& s : slices) {
        response->append(reinterpret_cast<const char*>(s.begin()), s.size());
      }
    }
  }
  return result;
}

bool WaitForOutboxDrained(const std::string& db_url, absl::Duration timeout) {
  auto conn = db::Conn::Open(db_url, "test");
  if (!conn.ok()) return false;
  absl::Time until = absl::Now() + timeout;
  do {
    auto r = (*conn)->Exec("SELECT count(*) FROM outbox");
    if (r.ok() && r->Int(0, 0) == 0) return true;
    absl::SleepFor(absl::Milliseconds(50));
  } while (absl::Now() < until);
  return false;
}

namespace {
// The name of the database at `db_url`, as pg_stat_activity and ALTER DATABASE know it.
std::string DatabaseName(const std::string& db_url) { return db_url.substr(db_url.rfind('/') + 1); }

// A connection to the maintenance database of the server holding the
// database at `db_url` (the shared one, or a test's own PostgresServer), for
// looking at and acting on that database from outside.
std::unique_ptr<db::Conn> Admin(const std::string& db_url) {
  auto admin = db::Conn::Open(WithDatabase(db_url, "postgres"), "test-harness");
  EXPECT_TRUE(admin.ok()) << admin.status();
  return admin.ok() ? *std::move(admin) : nullptr;
}

// One number about the database at `db_url` (its name is `$1`); -1 if unreadable.
int64_t AdminCount(db::Conn* admin, const std::string& sql, const std::string& db_url) {
  if (admin == nullptr) return -1;
  auto r = admin->Exec(sql, {DatabaseName(db_url)});
  return r.ok() && r->rows() == 1 ? r->Int(0, 0) : -1;
}

constexpr char kLockWaiters[] =
    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'";

void AllowConnections(const std::string& db_url, bool allow) {
  std::unique_ptr<db::Conn> admin = Admin(db_url);
  ASSERT_NE(admin, nullptr);
  absl::Status s = admin->ExecScript(absl::StrCat("ALTER DATABASE ", DatabaseName(db_url),
                                                  " ALLOW_CONNECTIONS ", allow ? "true" : "false"));
  ASSERT_TRUE(s.ok()) << s;
  if (!allow) {
    EXPECT_GE(DropConnections(db_url), 0);
  }
}
}  // namespace

namespace {
// Runs `change` on the server of `db_url` while `service` is stopped.
absl::Status WhileStopped(ServiceProcess& service, const std::string& db_url,
                          const std::function<absl::Status(db::Conn& admin)>& change) {
  if (int code = service.Terminate(); code != 0) {
    return absl::InternalError(absl::StrCat("the service exited ", code, " on SIGTERM"));
  }
  std::unique_ptr<db::Conn> admin = Admin(db_url);
  absl::Status s = admin == nullptr ? absl::UnavailableError("no connection to the test server")
                                    : change(*admin);
  service.Start();
  return s;
}
}  // namespace

absl::Status BackUpDatabase(ServiceProcess& service, const std::string& db_url) {
  std::string name = DatabaseName(db_url);
  return WhileStopped(service, db_url, [&](db::Conn& admin) {
    return admin.ExecScript(absl::StrCat("CREATE DATABASE ", name, "_backup TEMPLATE ", name));
  });
}

absl::Status RestoreDatabase(ServiceProcess& service, const std::string& db_url) {
  std::string name = DatabaseName(db_url);
  return WhileStopped(service, db_url, [&](db::Conn& admin) {
    // One statement at a time: none of them runs inside a transaction block.
    for (const std::string& sql :
         {absl::StrCat("DROP DATABASE ", name, " WITH (FORCE)"),
          absl::StrCat("CREATE DATABASE ", name, " TEMPLATE ", name, "_backup"),
          absl::StrCat("DROP DATABASE ", name, "_backup")}) {
      if (absl::Status s = admin.ExecScript(sql); !s.ok()) return s;
    }
    return absl::OkStatus();
  });
}

int64_t DropConnections(const std::string& db_url) {
  std::unique_ptr<db::Conn> admin = Admin(db_url);
  return AdminCount(admin.get(),
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = $1 AND application_name <> 'test'",
                    db_url);
}

bool WaitsForALock(const std::string& db_url) {
  std::unique_ptr<db::Conn> admin = Admin(db_url);
  return AdminCount(admin.get(), kLockWaiters, db_url) > 0;
}

bool UntilLockWaiters(const std::string& db_url, int64_t n) {
  std::unique_ptr<db::Conn> admin = Admin(db_url);
  for (int i = 0; i < 250; ++i) {
    if (AdminCount(admin.get(), kLockWaiters, db_url) >= n) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

void UntilWaitingOrDone(const std::string& db_url, const std::function<bool()>& finished) {
  std::unique_ptr<db::Conn> admin = Admin(db_url);
  for (int i = 0; i < 150 && !finished(); ++i) {
    if (AdminCount(admin.get(), kLockWaiters, db_url) > 0) return;
  }
}

int64_t DeadlocksIn(const std::string& db_url) {
  std::unique_ptr<db::Conn> admin = Admin(db_url);
  return AdminCount(admin.get(), "SELECT deadlocks FROM pg_stat_database WHERE datname = $1",
                    db_url);
}

DatabaseOutage::DatabaseOutage(std::string db_url) : db_url_(std::move(db_url)) {
  AllowConnections(db_url_, false);
}

void DatabaseOutage::End() {
  if (ended_) return;
  ended_ = true;
  AllowConnections(db_url_, true);
}

std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
      char buf[65536];
      ssize_t n;
      while ((n = recv(fd, buf, sizeof buf, 0)) > 0) out.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  size_t body = out.find("\r\n\r\n");
  return body == std::string::npos ? "" : out.substr(body + 4);
}

std::optional<double> InProcessMetric(const std::string& family) {
  for (const auto& f : metrics::Registry()->Collect()) {
    if (f.name != family || f.metric.empty()) continue;
    return f.type == prometheus::MetricType::Counter ? f.metric[0].counter.value
                                                     : f.metric[0].gauge.value;
  }
  return std::nullopt;
}

std::optional<double> MetricValue(int port, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(HttpGet(port, "/metrics"), '\n')) {
    if (!absl::ConsumePrefix(&line, series) || !absl::ConsumePrefix(&line, " ")) continue;
    double v = 0;
    if (absl::SimpleAtod(line, &v)) return v;
  }
  return std::nullopt;
}

namespace {
// Runs `fn` with a JetStream context and `stream`'s info, if it exists.
void WithStream(const std::string& nats_url, const std::string& stream,
                const std::function<void(jsCtx*, jsStreamInfo*)>& fn) {
  natsConnection* nc = nullptr;
  if (natsConnection_ConnectTo(&nc, nats_url.c_str()) != NATS_OK) return;
  jsCtx* js = nullptr;
  natsConnection_JetStream(&js, nc, nullptr);
  jsStreamInfo* si = nullptr;
  if (js_GetStreamInfo(&si, js, stream.c_str(), nullptr, nullptr) == NATS_OK) {
    fn(js, si);
    jsStreamInfo_Destroy(si);
  }
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
}
}  // namespace

absl::Status ChangeStream(const std::string& nats_url, const std::string& stream,
                          StreamChange change) {
  absl::Status out = absl::NotFoundError(absl::StrCat("no stream ", stream, " at ", nats_url));
  WithStream(nats_url, stream, [&](jsCtx* js, jsStreamInfo*) {
    jsErrCode err = static_cast<jsErrCode>(0);
    natsStatus st = change == StreamChange::kDelete
                        ? js_DeleteStream(js, stream.c_str(), nullptr, &err)
                        : js_PurgeStream(js, stream.c_str(), nullptr, &err);
    out = st == NATS_OK ? absl::OkStatus()
                        : absl::InternalError(absl::StrCat(natsStatus_GetText(st), " (", err,
                                                           ") changing stream ", stream));
  });
  return out;
}

std::optional<absl::Duration> StreamMaxAge(const std::string& nats_url, const std::string& stream) {
  std::optional<absl::Duration> out;
  WithStream(nats_url, stream,
             [&](jsCtx*, jsStreamInfo* si) { out = absl::Nanoseconds(si->Config->MaxAge); });
  return out;
}

std::vector<StoredEvent> ReadStream(const std::string& nats_url, const std::string& stream) {
  std::vector<StoredEvent> out;
  WithStream(nats_url, stream, [&](jsCtx* js, jsStreamInfo* si) {
    for (uint64_t seq = si->State.FirstSeq; seq <= si->State.LastSeq && seq > 0; ++seq) {
      natsMsg* m = nullptr;
      if (js_GetMsg(&m, js, stream.c_str(), seq, nullptr, nullptr) != NATS_OK) continue;
      StoredEvent e;
      e.seq = seq;
      e.subject = natsMsg_GetSubject(m);
      e.data.assign(natsMsg_GetData(m), natsMsg_GetDataLength(m));
      const char** keys = nullptr;
      int n = 0;
      if (natsMsgHeader_Keys(m, &keys, &n) == NATS_OK) {
        for (int i = 0; i < n; ++i) {
          const char* v = nullptr;
          if (natsMsgHeader_Get(m, keys[i], &v) == NATS_OK && v) e.headers[keys[i]] = v;
        }
        free(keys);
      }
      out.push_back(std::move(e));
      natsMsg_Destroy(m);
    }
  });
  return out;
}

std::vector<StoredEvent> WaitForEvents(const std::string& nats_url, const std::string& stream,
                                       size_t count, absl::Duration timeout) {
  absl::Time until = absl::Now() + timeout;
  std::vector<StoredEvent> got;
  do {
    got = ReadStream(nats_url, stream);
    if (got.size() >= count) return got;
    absl::SleepFor(absl::Milliseconds(100));
  } while (absl::Now() < until);
  return got;
}

PartnersFixture::PartnersFixture(std::map<std::string, std::string> extra_env) {
  db_url = NewDatabase();
  nats_url = RequiredEnv("CONNECTING_TEST_NATS");
  std::string suffix = RandomSuffix();
  stream = "PARTNERS_" + suffix;
  service = std::make_unique<ServiceProcess>(
      ServiceProcess::Options{PARTNERS_BIN, db_url, nats_url, stream,
                              "t" + suffix + ".connecting.partners", std::move(extra_env)});
  service->Start();
  stub = connecting::partners::v1::PartnersService::NewStub(service->channel());
}

SchedulingFixture::SchedulingFixture(std::map<std::string, std::string> extra_env,
                                     const std::string& own_nats_url,
                                     const PostgresServer* own_pg) {
  nats_url = own_nats_url.empty() ? RequiredEnv("CONNECTING_TEST_NATS") : own_nats_url;
  suffix = RandomSuffix();
  const std::string pg = own_pg != nullptr ? own_pg->admin_url() : "";
  partners_db = NewDatabase(pg);
  scheduling_db = NewDatabase(pg);
  std::string partners_prefix = "t" + suffix + ".connecting.partners";
  partners = std::make_unique<ServiceProcess>(ServiceProcess::Options{
      PARTNERS_BIN, partners_db, nats_url, "PARTNERS_" + suffix, partners_prefix, {}});
  partners->Start();
  extra_env["PARTNERS_EVENTS_STREAM"] = "PARTNERS_" + suffix;
  extra_env["PARTNERS_EVENTS_SUBJECT"] = partners_prefix + ".>";
  scheduling_stream = "SCHEDULING_" + suffix;
  scheduling = std::make_unique<ServiceProcess>(
      ServiceProcess::Options{SCHEDULING_BIN, scheduling_db, nats_url, scheduling_stream,
                              "t" + suffix + ".connecting.scheduling", extra_env});
  scheduling->Start();
  partners_stub = connecting::partners::v1::PartnersService::NewStub(partners->channel());
  stub = connecting::scheduling::v1::SchedulingService::NewStub(scheduling->channel());
}

std::string SchedulingFixture::CreatePartner(const std::string& name) {
  connecting::partners::v1::CreateOrganisationRequest req;
  *req.mutable_organisation() = SampleOrganisation(name);
  connecting::partners::v1::Organisation org;
  grpc::Status s = partners_stub->CreateOrganisation(Ctx(admin).get(), req, &org);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(WaitForPartnerStatus(org.id(), 1)) << "scheduling never heard of " << org.id();
  hosts[org.id()] = CreateHost(org.id(), "Host of " + name);
  return org.id();
}

std::string SchedulingFixture::CreateHost(const std::string& org_id, const std::string& name) {
  connecting::partners::v1::CreateContactRequest req;
  req.mutable_contact()->set_organisation_id(org_id);
  req.mutable_contact()->set_display_name(name);
  static std::atomic<int> made{0};  // one email per contact within an organisation
  req.mutable_contact()->set_email(absl::StrCat("host", ++made, "@example.nhs.uk"));
  req.mutable_contact()->set_job_title("Ward manager");
  connecting::partners::v1::Contact out;
  grpc::Status s = partners_stub->CreateContact(Ctx(admin).get(), req, &out);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(WaitForProjection("SELECT organisation_id::text FROM partner_contacts "
                                "WHERE id = $1::uuid",
                                out.id(), org_id))
      << "scheduling never heard of contact " << out.id();
  return out.id();
}

bool SchedulingFixture::WaitForPartnerStatus(const std::string& org_id, int status,
                                             absl::Duration timeout) {
  return WaitForProjection("SELECT status FROM partner_organisations WHERE id = $1::uuid", org_id,
                           absl::StrCat(status), timeout);
}

namespace {
namespace pv1 = connecting::partners::v1;
absl::StatusOr<pv1::Organisation> Answered(const grpc::Status& st, pv1::Organisation o) {
  if (st.ok()) return o;
  return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
}
}  // namespace

absl::StatusOr<connecting::partners::v1::Organisation> SchedulingFixture::ArchivePartner(
    const std::string& org_id) {
  connecting::partners::v1::ArchiveOrganisationRequest req;
  req.set_id(org_id);
  connecting::partners::v1::Organisation out;
  grpc::Status st = partners_stub->ArchiveOrganisation(Ctx(admin).get(), req, &out);
  return Answered(st, std::move(out));
}

absl::StatusOr<connecting::partners::v1::Organisation> SchedulingFixture::PausePartner(
    const std::string& org_id) {
  connecting::partners::v1::PauseOrganisationRequest req;
  req.set_id(org_id);
  connecting::partners::v1::Organisation out;
  grpc::Status st = partners_stub->PauseOrganisation(Ctx(admin).get(), req, &out);
  return Answered(st, std::move(out));
}

OneShot SchedulingFixture::RepublishPartners(bool after_restore) {
  std::vector<std::string> args = {"--republish"};
  std::map<std::string, std::string> env = {
      {"DATABASE_URL", partners_db},
      {"EVENT_SUBJECT_PREFIX", "t" + suffix + ".connecting.partners"},
      {"LOG_LEVEL", "info"}};
  if (after_restore) {
    args.push_back("--after-restore");
    env["NATS_URL"] = partners->options().nats_url;
    env["EVENT_STREAM"] = partners->options().stream;
  }
  return RunOnce(PARTNERS_BIN, args, env, "republish");
}

absl::Status SchedulingFixture::ForgetPartners() {
  auto conn = db::Conn::Open(scheduling_db, "test");
  if (!conn.ok()) return conn.status();
  return (*conn)->ExecScript(
      "DELETE FROM partner_offers; DELETE FROM partner_contacts; "
      "DELETE FROM partner_organisations; DELETE FROM inbox");
}

bool SchedulingFixture::WaitForProjection(const std::string& sql, const std::string& id,
                                          const std::string& want, absl::Duration timeout) {
  auto conn = db::Conn::Open(scheduling_db, "test");
  if (!conn.ok()) return false;
  absl::Time until = absl::Now() + timeout;
  while (absl::Now() < until) {
    auto r = (*conn)->Exec(sql, {id});
    if (r.ok() && r->rows() == 1 && r->String(0, 0) == want) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

connecting::partners::v1::Organisation SampleOrganisation(const std::string& name) {
  connecting::partners::v1::Organisation o;
  o.set_name(name);
  o.set_sector(connecting::partners::v1::SECTOR_ACUTE_TRUST);
  o.set_region(connecting::partners::v1::REGION_LONDON);
  o.set_description("A teaching hospital.");
  return o;
}

}  // namespace connecting::testing

namespace connecting::testing {

ErrorDetails DetailsOf(const grpc::Status& status) {
  ErrorDetails out;
  google::rpc::Status st;
  if (status.error_details().empty() || !st.ParseFromString(status.error_details())) return out;
  out.present = true;
  out.code = st.code();
  for (const google::protobuf::Any& any : st.details()) {
    google::rpc::ErrorInfo info;
    google::rpc::BadRequest bad;
    google::rpc::ResourceInfo resource;
    if (any.UnpackTo(&info)) {
      ++out.error_infos;
      out.reason = info.reason();
      out.domain = info.domain();
      out.metadata.insert(info.metadata().begin(), info.metadata().end());
    } else if (any.UnpackTo(&bad)) {
      for (const auto& v : bad.field_violations())
        out.fields.emplace_back(v.field(), v.description());
    } else if (any.UnpackTo(&resource)) {
      out.resource_type = resource.resource_type();
      out.resource_name = resource.resource_name();
    }
  }
  return out;
}

}  // namespace connecting::testing
