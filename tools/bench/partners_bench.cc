// Read benchmark for the partners service, reported beside the gRPC health
// check on the same server in the same run (the ratio is what to compare
// across machines, not the absolute numbers).
//   partners_bench --addr 127.0.0.1:50051 --token T --org <id> [--seconds 3]
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "connecting/partners/v1/partners.api.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace v1 = connecting::partners::v1;

namespace {

struct Result {
  double qps = 0, p50_ms = 0, p99_ms = 0;
  long errors = 0;
};

// Runs `call` on `streams` threads for `seconds`; each thread owns a stub.
Result Run(int streams, double seconds,
           const std::function<std::function<bool()>(int)>& make_call) {
  std::vector<std::vector<double>> lat(streams);
  std::atomic<long> errors{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < streams; ++t) {
    threads.emplace_back([&, t] {
      auto call = make_call(t);
      call();  // warm the connection
      while (!stop.load(std::memory_order_relaxed)) {
        absl::Time s = absl::Now();
        if (!call()) ++errors;
        lat[t].push_back(absl::ToDoubleMilliseconds(absl::Now() - s));
      }
    });
  }
  absl::Time start = absl::Now();
  absl::SleepFor(absl::Seconds(seconds));
  stop = true;
  for (auto& th : threads) th.join();
  double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  Result r;
  r.errors = errors;
  if (all.empty()) return r;
  r.qps = all.size() / elapsed;
  r.p50_ms = all[all.size() / 2];
  r.p99_ms = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string addr, token, org;
  double seconds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--addr")) addr = argv[i + 1];
    if (!std::strcmp(argv[i], "--token")) token = argv[i + 1];
    if (!std::strcmp(argv[i], "--org")) org = argv[i + 1];
    if (!std::strcmp(argv[i], "--seconds")) seconds = std::atof(argv[i + 1]);
  }
  if (addr.empty() || token.empty() || org.empty()) {
    std::fprintf(stderr, "usage: %s --addr HOST:PORT --token JWT --org ID [--seconds N]\n",
                 argv[0]);
    return 2;
  }
  // A few channels (HTTP/2 connections) shared by the streams, as a real client pool would.
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < 4; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.channel_id", i);  // distinct channels, not one shared subchannel
    channels.push_back(grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args));
  }
  auto with_auth = [&](grpc::ClientContext& ctx) {
    ctx.AddMetadata("authorization", "Bearer " + token);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  };
  auto health = [&](int t) -> std::function<bool()> {
    auto stub = std::shared_ptr<grpc::health::v1::Health::Stub>(
        grpc::health::v1::Health::NewStub(channels[t % channels.size()]));
    return [stub] {
      grpc::ClientContext ctx;
      grpc::health::v1::HealthCheckRequest req;
      grpc::health::v1::HealthCheckResponse resp;
      return stub->Check(&ctx, req, &resp).ok();
    };
  };
  auto get = [&](int t) -> std::function<bool()> {
    auto stub = std::shared_ptr<v1::PartnersService::Stub>(
        v1::PartnersService::NewStub(channels[t % channels.size()]));
    return [stub, &with_auth, &org] {
      grpc::ClientContext ctx;
      with_auth(ctx);
      v1::GetOrganisationRequest req;
      req.set_id(org);
      v1::Organisation resp;
      return stub->GetOrganisation(&ctx, req, &resp).ok();
    };
  };
  auto list = [&](int t) -> std::function<bool()> {
    auto stub = std::shared_ptr<v1::PartnersService::Stub>(
        v1::PartnersService::NewStub(channels[t % channels.size()]));
    auto token_state = std::make_shared<std::string>();
    return [stub, &with_auth, token_state] {
      grpc::ClientContext ctx;
      with_auth(ctx);
      v1::ListOrganisationsRequest req;
      req.set_page_size(50);
      req.set_page_token(*token_state);  // walk the 100,000 rows page by page
      v1::ListOrganisationsResponse resp;
      bool ok = stub->ListOrganisations(&ctx, req, &resp).ok() && resp.organisations_size() > 0;
      *token_state = resp.next_page_token();
      return ok;
    };
  };
  std::printf("%-28s %7s %10s %9s %9s %8s %s\n", "rpc", "streams", "qps", "p50 ms", "p99 ms",
              "errors", "vs health");
  for (int streams : {1, 16}) {
    Result h = Run(streams, seconds, health);
    std::printf("%-28s %7d %10.0f %9.3f %9.3f %8ld %s\n", "grpc.health.v1/Check", streams, h.qps,
                h.p50_ms, h.p99_ms, h.errors, "1.00");
    using Maker = std::function<std::function<bool()>(int)>;
    for (auto& [name, fn] : std::vector<std::pair<const char*, Maker>>{
             {"GetOrganisation", get}, {"ListOrganisations(50)", list}}) {
      Result r = Run(streams, seconds, fn);
      std::printf("%-28s %7d %10.0f %9.3f %9.3f %8ld %.2f\n", name, streams, r.qps, r.p50_ms,
                  r.p99_ms, r.errors, h.qps > 0 ? r.qps / h.qps : 0.0);
    }
  }
  return 0;
}
