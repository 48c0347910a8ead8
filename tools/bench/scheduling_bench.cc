// Booking throughput: 16 concurrent clients booking one hot session, and
// spread over many sessions, each booking with a request_id of its own. Participants and sessions
// are created first (not timed). Prints QPS and p50/p99 per scenario, and with --cpu the CPU each
// process spent per booking during it (from /proc: a process and all its children, e.g. the
// postmaster and its backends), beside this client's own, and each service's resident memory after
// the run and its growth during it. With --nats, a third run spreads over the sessions again while
// a dashboard follows the bookings' events (a JetStream ordered consumer, as tools/watch-events
// reads them), and prints how long after each booking's reply its event reached it. With --between,
// a shell command runs before the first run and after each (its clients idle):
// tools/bench/scheduling.sh runs pgbench there, so that each run is compared with the pgbench runs
// just before and after it rather than with one taken a minute later on a host whose speed drifts.
// --clients: how many book at once (16, as the figure is taken; more
// make larger batches: 32 took 6,000 bookings/s where 16 took 4,800 here).
//   scheduling_bench --scheduling HOST:PORT --partners HOST:PORT --token JWT [--seconds N]
//                    [--cpu name=pid,name=pid...] [--nats URL] [--between COMMAND]
//                    [--clients N]
#include <dirent.h>
#include <grpcpp/grpcpp.h>
#include <nats/nats.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "connecting/partners/v1/partners.api.h"
#include "connecting/scheduling/v1/scheduling.api.h"
#include "tools/bench/load.h"

namespace pv1 = connecting::partners::v1;
namespace sv1 = connecting::scheduling::v1;

namespace {

std::string g_token;

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto c = std::make_unique<grpc::ClientContext>();
  c->AddMetadata("authorization", "Bearer " + g_token);
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return c;
}

// utime + stime of `pid` in clock ticks, and its parent's pid (-1: gone).
// With `reaped`, also the time of its children that ended and were waited
// for (cutime + cstime): a backend that exits between two samples (pgbench's,
// run between the booking runs) leaves its time there, not in the sum of the
// live ones.
std::pair<long long, int> Ticks(int pid, bool reaped = false) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  if (!std::getline(f, line)) return {0, -1};
  size_t close = line.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos) return {0, -1};
  std::vector<std::string> v = absl::StrSplit(line.substr(close + 2), ' ');
  // From the state field on: ppid is the 2nd, utime the 12th, stime the
  // 13th, cutime and cstime the 14th and 15th.
  if (v.size() < 15) return {0, -1};
  long long ut = 0, st = 0, cut = 0, cst = 0;
  int ppid = -1;
  (void)absl::SimpleAtoi(v[1], &ppid);
  (void)absl::SimpleAtoi(v[11], &ut);
  (void)absl::SimpleAtoi(v[12], &st);
  if (reaped) {
    (void)absl::SimpleAtoi(v[13], &cut);
    (void)absl::SimpleAtoi(v[14], &cst);
  }
  return {ut + st + cut + cst, ppid};
}

// A version 4 UUID from `rng`, in lower-case 8-4-4-4-12 form.
std::string RandomUuid(std::mt19937& rng) {
  uint32_t w[4];
  for (uint32_t& x : w) x = rng();
  w[1] = (w[1] & 0xffff0fffu) | 0x00004000u;  // version 4
  w[2] = (w[2] & 0x3fffffffu) | 0x80000000u;  // variant 1
  char out[37];
  std::snprintf(out, sizeof out, "%08x-%04x-%04x-%04x-%04x%08x", w[0], w[1] >> 16, w[1] & 0xffffu,
                w[2] >> 16, w[2] & 0xffffu, w[3]);
  return out;
}

// CPU ticks of each named process and its children, and of the machine.
struct CpuSample {
  std::map<std::string, long long> ticks;
  long long machine_busy = 0, machine_all = 0;
};

CpuSample SampleCpu(const std::vector<std::pair<std::string, int>>& watched) {
  CpuSample out;
  std::map<int, std::pair<long long, int>> all;  // pid → ticks, ppid
  if (DIR* d = opendir("/proc")) {
    while (dirent* e = readdir(d)) {
      int pid = 0;
      if (absl::SimpleAtoi(e->d_name, &pid)) all[pid] = Ticks(pid);
    }
    closedir(d);
  }
  for (const auto& [name, pid] : watched) {
    long long t = Ticks(pid, /*reaped=*/true).first;
    for (const auto& [p, tp] : all) {
      if (tp.second == pid) t += tp.first;
    }
    out.ticks[name] = t;
  }
  out.ticks["client"] = Ticks(getpid()).first;
  std::ifstream stat("/proc/stat");
  std::string cpu;
  long long v;
  stat >> cpu;
  for (int i = 0; i < 8 && stat >> v; ++i) {
    out.machine_all += v;
    if (i != 3 && i != 4) out.machine_busy += v;  // not idle, not iowait
  }
  return out;
}

// "postgres 540 us, scheduling 230 us, ...": CPU per booking between samples.
std::string CpuPerBooking(const CpuSample& a, const CpuSample& b, size_t bookings) {
  if (bookings == 0) return "";
  const double us_per_tick = 1e6 / static_cast<double>(sysconf(_SC_CLK_TCK));
  std::string out;
  double sum = 0;
  for (const auto& [name, t] : b.ticks) {
    double us = (t - a.ticks.at(name)) * us_per_tick / static_cast<double>(bookings);
    sum += us;
    absl::StrAppend(&out, out.empty() ? "" : ", ", name, " ", static_cast<long>(us));
  }
  double busy = b.machine_all > a.machine_all
                    ? 100.0 * (b.machine_busy - a.machine_busy) / (b.machine_all - a.machine_all)
                    : 0;
  return absl::StrCat("CPU per booking, us: ", out, "; together ", static_cast<long>(sum),
                      " (machine ", static_cast<int>(busy), "% busy)");
}

// Resident and peak resident memory of `pid` in kB (VmRSS, VmHWM; 0: gone).
std::pair<long, long> MemoryKb(int pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/status"));
  long rss = 0, peak = 0;
  for (std::string line; std::getline(f, line);) {
    if (absl::StartsWith(line, "VmRSS:"))
      (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(6, line.size() - 9)), &rss);
    if (absl::StartsWith(line, "VmHWM:"))
      (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(6, line.size() - 9)), &peak);
  }
  return {rss, peak};
}

// "scheduling 41.2 MiB (peak 43.0, +1.3 over the run)": each watched service's
// memory after a run and how it grew during it. PostgreSQL is left out: its
// backends share its buffers, so their resident sizes do not add up.
std::string MemoryAfter(const std::vector<std::pair<std::string, int>>& watched,
                        const std::map<std::string, long>& before_kb) {
  std::string out;
  for (const auto& [name, pid] : watched) {
    if (name == "postgres") continue;
    auto [rss, peak] = MemoryKb(pid);
    if (rss == 0) continue;
    absl::StrAppendFormat(&out, "%s%s %.1f (peak %.1f, %+.1f over the run)",
                          out.empty() ? "" : ", ", name, rss / 1024.0, peak / 1024.0,
                          (rss - before_kb.at(name)) / 1024.0);
  }
  return absl::StrCat("memory, MiB resident: ", out);
}

std::string Date(int days) {
  return absl::FormatTime("%Y-%m-%d", absl::Now() + absl::Hours(24 * days), absl::UTCTimeZone());
}

// A dashboard following the bookings: when each booking's reply came back to
// its caller and when its event (ce-subject: the booking's id) reached the
// follower.
class Follower {
 public:
  // nullptr (and a line on stderr) if NATS or the stream cannot be reached.
  static std::unique_ptr<Follower> Start(const std::string& url) {
    auto f = std::unique_ptr<Follower>(new Follower());
    jsErrCode jerr = static_cast<jsErrCode>(0);
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = "SCHEDULING";
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverNew;
    natsStatus s = natsConnection_ConnectTo(&f->nc_, url.c_str());
    if (s == NATS_OK) s = natsConnection_JetStream(&f->js_, f->nc_, nullptr);
    if (s == NATS_OK) {
      s = js_Subscribe(&f->sub_, f->js_, "connecting.scheduling.booking.>", &Follower::OnEvent,
                       f.get(), nullptr, &so, &jerr);
    }
    if (s != NATS_OK) {
      std::fprintf(stderr, "cannot follow the SCHEDULING stream: %s (%d)\n", natsStatus_GetText(s),
                   static_cast<int>(jerr));
      return nullptr;
    }
    return f;
  }
  ~Follower() {
    // Unsubscribed first, and given time to settle: cnats may crash on a
    // message arriving for a subscription already destroyed.
    if (sub_ != nullptr) {
      (void)natsSubscription_Unsubscribe(sub_);
      absl::SleepFor(absl::Milliseconds(200));
      natsSubscription_Destroy(sub_);
    }
    jsCtx_Destroy(js_);
    natsConnection_Destroy(nc_);
  }
  void Replied(const std::string& booking_id, absl::Time at) {
    std::lock_guard<std::mutex> l(mu_);
    replied_.emplace(booking_id, at);
  }
  // "events reached a follower ... ms after the booking's reply": waits up to
  // `patience` for the events of every booking replied to.
  std::string Summary(absl::Duration patience) {
    const absl::Time until = absl::Now() + patience;
    for (;;) {
      {
        std::lock_guard<std::mutex> l(mu_);
        size_t found = 0;
        for (const auto& [id, at] : replied_) found += seen_.count(id);
        if (found == replied_.size() || absl::Now() >= until) break;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    std::lock_guard<std::mutex> l(mu_);
    std::vector<double> lag;
    for (const auto& [id, at] : replied_) {
      auto it = seen_.find(id);
      if (it != seen_.end()) lag.push_back(absl::ToDoubleMilliseconds(it->second - at));
    }
    std::string out = absl::StrFormat("events at a follower: %zu of %zu bookings within %s",
                                      lag.size(), replied_.size(), absl::FormatDuration(patience));
    if (!lag.empty()) {
      const connecting::bench::Spread spread = connecting::bench::SpreadOf(lag);
      absl::StrAppendFormat(&out,
                            "; after the booking's reply: p50 %.1f ms, p99 %.1f ms, max %.1f ms",
                            spread.p50, spread.p99, spread.max);
    }
    return out;
  }

 private:
  Follower() = default;
  static void OnEvent(natsConnection*, natsSubscription*, natsMsg* m, void* closure) {
    auto* f = static_cast<Follower*>(closure);
    const absl::Time now = absl::Now();
    const char* id = nullptr;
    if (natsMsgHeader_Get(m, "ce-subject", &id) == NATS_OK && id != nullptr) {
      std::lock_guard<std::mutex> l(f->mu_);
      f->seen_.emplace(id, now);
    }
    natsMsg_Destroy(m);
  }

  natsConnection* nc_ = nullptr;
  jsCtx* js_ = nullptr;
  natsSubscription* sub_ = nullptr;
  std::mutex mu_;
  std::unordered_map<std::string, absl::Time> replied_;
  std::unordered_map<std::string, absl::Time> seen_;
};

}  // namespace

int main(int argc, char** argv) {
  std::string sched, partners, nats_url, between;
  double seconds = 3;
  int clients = 16;
  std::vector<std::pair<std::string, int>> watched;  // --cpu
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--scheduling")) sched = argv[i + 1];
    if (!std::strcmp(argv[i], "--partners")) partners = argv[i + 1];
    if (!std::strcmp(argv[i], "--token")) g_token = argv[i + 1];
    if (!std::strcmp(argv[i], "--seconds")) seconds = std::atof(argv[i + 1]);
    if (!std::strcmp(argv[i], "--nats")) nats_url = argv[i + 1];
    if (!std::strcmp(argv[i], "--between")) between = argv[i + 1];
    if (!std::strcmp(argv[i], "--clients") &&
        (!absl::SimpleAtoi(argv[i + 1], &clients) || clients < 1 || clients > 1024)) {
      std::fprintf(stderr, "--clients: a number from 1 to 1024\n");
      return 2;
    }
    if (!std::strcmp(argv[i], "--cpu")) {
      for (absl::string_view item : absl::StrSplit(argv[i + 1], ',', absl::SkipEmpty())) {
        std::pair<std::string, std::string> kv = absl::StrSplit(item, '=');
        int pid = 0;
        if (absl::SimpleAtoi(kv.second, &pid)) watched.emplace_back(kv.first, pid);
      }
    }
  }
  if (sched.empty() || partners.empty() || g_token.empty()) {
    std::fprintf(stderr, "usage: %s --scheduling ADDR --partners ADDR --token JWT\n", argv[0]);
    return 2;
  }
  const int kClients = clients;
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < 4; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.channel_id", i);
    channels.push_back(grpc::CreateCustomChannel(sched, grpc::InsecureChannelCredentials(), args));
  }
  auto pstub = pv1::PartnersService::NewStub(
      grpc::CreateChannel(partners, grpc::InsecureChannelCredentials()));
  pv1::CreateOrganisationRequest co;
  co.mutable_organisation()->set_name("Bench Trust");
  co.mutable_organisation()->set_sector(pv1::SECTOR_ACUTE_TRUST);
  co.mutable_organisation()->set_region(pv1::REGION_LONDON);
  pv1::Organisation org;
  if (!pstub->CreateOrganisation(Ctx().get(), co, &org).ok()) {
    std::fprintf(stderr, "cannot create the organisation\n");
    return 1;
  }
  auto stub0 = sv1::SchedulingService::NewStub(channels[0]);
  auto make_session = [&](int capacity, int day) {
    sv1::CreateSessionRequest req;
    sv1::Session* s = req.mutable_session();
    s->set_kind(sv1::SESSION_KIND_FRONTLINE_VISIT);
    s->set_title("Bench visit");
    s->set_organisation_id(org.id());
    s->set_date(Date(day));
    s->set_start_time("09:00");
    s->set_end_time("17:00");
    s->add_sites()->set_capacity(capacity);
    sv1::Session out;
    for (int attempt = 0; attempt < 200; ++attempt) {
      grpc::Status st = stub0->CreateSession(Ctx().get(), req, &out);
      if (st.ok()) return out.id();
      if (st.error_code() != grpc::StatusCode::FAILED_PRECONDITION) break;
      absl::SleepFor(absl::Milliseconds(50));  // waiting for the partners event
    }
    std::fprintf(stderr, "cannot create a session\n");
    std::exit(1);
  };
  std::string hot = make_session(100, 5);
  std::vector<std::string> many;
  for (int d = 0; d < 200; ++d) many.push_back(make_session(1000, 6 + d));

  // Enough participants for every booking the scenarios can make
  // (a client books at most a few hundred a second, in each of them).
  const int scenarios = nats_url.empty() ? 2 : 3;
  const int per_client = 1000 + static_cast<int>(300 * scenarios * seconds);
  std::vector<std::vector<std::string>> people(kClients);
  {
    // Two letters of this run's own (staff numbers are unique, at most 12
    // characters): a second run against the same stack registers people of
    // its own rather than meeting the first run's numbers.
    const int64_t now = absl::ToUnixSeconds(absl::Now());
    const std::string run_tag = {static_cast<char>('A' + now % 26),
                                 static_cast<char>('A' + now / 26 % 26)};
    std::vector<std::thread> ts;
    for (int t = 0; t < kClients; ++t) {
      ts.emplace_back([&, t] {
        auto stub = sv1::SchedulingService::NewStub(channels[t % channels.size()]);
        for (int i = 0; i < per_client; ++i) {
          sv1::RegisterParticipantRequest req;
          sv1::Participant* p = req.mutable_participant();
          p->set_staff_number(absl::StrCat("B", run_tag, t, "X", i));
          p->set_display_name("Bench connector");
          p->set_email("bench@dept.example.gov.uk");
          p->set_grade(sv1::GRADE_POLICY);
          p->set_directorate("Bench");
          sv1::Participant out;
          if (stub->RegisterParticipant(Ctx().get(), req, &out).ok()) people[t].push_back(out.id());
        }
      });
    }
    for (auto& t : ts) t.join();
  }

  std::printf("%-36s %7s %9s %9s %9s %7s\n", "scenario", "clients", "bookings/s", "p50 ms",
              "p99 ms", "errors");
  // Each client is a chain of calls on gRPC's callback API: 16 bookings in
  // flight at a time from a couple of threads, as pgbench -c 16 -j 2 does,
  // so the client does not eat the cores the server is measured on.
  struct Chain {
    std::unique_ptr<sv1::SchedulingService::Stub> stub;
    std::vector<std::string>* people;
    size_t used = 0;
    std::vector<double> lat;
    std::mt19937 rng;
  };
  std::vector<Chain> chains(kClients);
  for (int t = 0; t < kClients; ++t) {
    chains[t].stub = sv1::SchedulingService::NewStub(channels[t % channels.size()]);
    chains[t].people = &people[t];
    chains[t].rng.seed(std::random_device{}() ^
                       static_cast<unsigned>(t));  // request_ids new each run
  }
  auto run_between = [&] {
    if (between.empty()) return true;
    std::fflush(stdout);
    if (std::system(between.c_str()) == 0) return true;
    std::fprintf(stderr, "--between failed: %s\n", between.c_str());
    return false;
  };
  if (!run_between()) return 1;
  for (int scenario = 0; scenario < scenarios; ++scenario) {
    std::unique_ptr<Follower> follower;
    if (scenario == 2 && !(follower = Follower::Start(nats_url))) break;
    std::atomic<bool> stop{false};
    std::atomic<long> errors{0};
    std::atomic<int> running{kClients};
    std::mutex mu;
    std::condition_variable cv;
    std::function<void(int)> next = [&](int t) {
      Chain& ch = chains[t];
      if (stop.load() || ch.used >= ch.people->size()) {
        if (--running == 0) cv.notify_all();
        return;
      }
      auto ctx = std::shared_ptr<grpc::ClientContext>(Ctx().release());
      auto req = std::make_shared<sv1::BookSessionRequest>();
      auto resp = std::make_shared<sv1::Booking>();
      req->set_session_id(scenario == 0 ? hot : many[ch.rng() % many.size()]);
      req->set_participant_id((*ch.people)[ch.used++]);
      // A request_id each, as a client that retries safely sends (a UUID):
      // the booking also looks for an earlier one and indexes the key.
      req->set_request_id(RandomUuid(ch.rng));
      absl::Time start = absl::Now();
      ch.stub->async()->BookSession(
          ctx.get(), req.get(), resp.get(), [&, t, ctx, req, resp, start](grpc::Status st) {
            const absl::Time now = absl::Now();
            if (!st.ok()) ++errors;
            if (st.ok() && follower != nullptr) follower->Replied(resp->id(), now);
            chains[t].lat.push_back(absl::ToDoubleMilliseconds(now - start));
            next(t);
          });
    };
    for (auto& ch : chains) ch.lat.clear();
    CpuSample cpu_before = SampleCpu(watched);
    std::map<std::string, long> memory_before;
    for (const auto& [name, pid] : watched) memory_before[name] = MemoryKb(pid).first;
    absl::Time start = absl::Now();
    for (int t = 0; t < kClients; ++t) next(t);
    absl::SleepFor(absl::Seconds(seconds));
    stop = true;
    {
      std::unique_lock<std::mutex> l(mu);
      cv.wait_for(l, std::chrono::seconds(30), [&] { return running.load() == 0; });
    }
    const absl::Duration elapsed = absl::Now() - start;
    CpuSample cpu_after = SampleCpu(watched);
    for (auto& ch : chains) {
      if (ch.used >= ch.people->size()) {
        std::fprintf(stderr,
                     "warning: a client ran out of participants; the rate is understated\n");
        break;
      }
    }
    std::vector<double> all;
    for (auto& ch : chains) all.insert(all.end(), ch.lat.begin(), ch.lat.end());
    if (all.empty()) {
      if (!run_between()) return 1;
      continue;
    }
    const size_t bookings = all.size();
    const connecting::bench::Result r =
        connecting::bench::Summarise(std::move(all), elapsed, errors.load());
    const char* names[] = {"BookSession, one hot session", "BookSession, 200 sessions",
                           "BookSession, 200 sessions, followed"};
    std::printf("%-36s %7d %9.0f %9.3f %9.3f %7ld\n", names[scenario], kClients, r.qps, r.p50_ms,
                r.p99_ms, r.errors);
    if (!watched.empty()) {
      std::printf("  %s\n", CpuPerBooking(cpu_before, cpu_after, bookings).c_str());
      std::printf("  %s\n", MemoryAfter(watched, memory_before).c_str());
    }
    if (follower != nullptr) std::printf("  %s\n", follower->Summary(absl::Seconds(5)).c_str());
    std::fflush(stdout);
    if (!run_between()) return 1;
  }
  return 0;
}
