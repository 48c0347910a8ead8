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

// Whether a call succeeded; the first few failures of the process are
// printed to stderr with their status, so that an errors column has a cause.
inline bool Ok(const grpc::Status& status) {
  if (status.ok()) return true;
  static std::atomic<int> printed{0};
  if (printed.fetch_add(1) < 5) {
    std::fprintf(stderr, "call failed: code %d: %s\n", static_cast<int>(status.error_code()),
                 status.error_message().c_str());
  }
  return false;
}

// The median, the 99th percentile and the largest of `values` (sorted here).
struct Spread {
  double p50 = 0, p99 = 0, max = 0;
};
inline Spread SpreadOf(std::vector<double>& values) {
  std::sort(values.begin(), values.end());
  Spread s;
  if (values.empty()) return s;
  const size_t n = values.size();
  s.p50 = values[n / 2];
  s.p99 = values[std::min(n - 1, n * 99 / 100)];
  s.max = values.back();
  return s;
}

// Throughput and latency percentiles of calls that took `latencies_ms` in
// all over `elapsed`, `errors` of them failing.
inline Result Summarise(std::vector<double> latencies_ms, absl::Duration elapsed, long errors) {
  Result r;
  r.errors = errors;
  if (latencies_ms.empty()) return r;
  r.qps = latencies_ms.size() / absl::ToDoubleSeconds(elapsed);
  const Spread s = SpreadOf(latencies_ms);
  r.p50_ms = s.p50;
  r.p99_ms = s.p99;
  return r;
}

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
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  return Summarise(std::move(all), absl::Now() - start, errors);
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
  auto resp = std::make_shared<grpc::health::v1::HealthCheckResponse>();  // reused, as every row's
  return [stub, resp] {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    return Ok(stub->Check(&ctx, req, resp.get()));
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
