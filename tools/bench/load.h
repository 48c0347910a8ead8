// The load loop the read benchmarks share: `streams` threads, each with its
// own call, for a fixed time; throughput and latency percentiles.
#pragma once

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace connecting::bench {

struct Result {
  double qps = 0, p50_ms = 0, p99_ms = 0;
  long errors = 0;
};

// Runs `call` on `streams` threads for `seconds`; each thread owns a stub.
inline Result Run(int streams, double seconds,
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

// The command line's "--name value" pairs, by name ("--seconds" defaults to 3).
inline std::map<std::string, std::string> Args(int argc, char** argv) {
  std::map<std::string, std::string> args = {{"--seconds", "3"}};
  for (int i = 1; i + 1 < argc; i += 2) args[argv[i]] = argv[i + 1];
  return args;
}

// A few channels (HTTP/2 connections) for the streams to share, as a real
// client pool would.
inline std::vector<std::shared_ptr<grpc::Channel>> Channels(const std::string& addr, int n = 4) {
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < n; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.channel_id", i);  // distinct channels, not one shared subchannel
    channels.push_back(grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args));
  }
  return channels;
}

// The gRPC health check on `channel`: the yardstick each RPC is reported
// against, on the same server in the same run.
inline std::function<bool()> HealthCall(const std::shared_ptr<grpc::Channel>& channel) {
  std::shared_ptr<grpc::health::v1::Health::Stub> stub = grpc::health::v1::Health::NewStub(channel);
  return [stub] {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    return stub->Check(&ctx, req, &resp).ok();
  };
}

inline void PrintHeader() {
  std::printf("%-30s %7s %10s %9s %9s %8s %s\n", "rpc", "streams", "qps", "p50 ms", "p99 ms",
              "errors", "vs health");
}

// One line: `r` and its throughput as a share of the health check's ("1/N"
// below a tenth).
inline void PrintRow(const char* name, int streams, const Result& r, double health_qps) {
  std::printf("%-30s %7d %10.0f %9.3f %9.3f %8ld ", name, streams, r.qps, r.p50_ms, r.p99_ms,
              r.errors);
  if (health_qps <= 0 || r.qps <= 0) {
    std::printf("-\n");
  } else if (r.qps >= health_qps / 10) {
    std::printf("%.2f\n", r.qps / health_qps);
  } else {
    std::printf("1/%.0f\n", health_qps / r.qps);
  }
}

}  // namespace connecting::bench
