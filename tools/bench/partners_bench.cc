// Read benchmark for the partners service, reported beside the gRPC health
// check on the same server in the same run (the ratio is what to compare
// across machines, not the absolute numbers).
//
// Each stream reuses one reply message from call to call, as protobuf
// advises for a client making many calls: a cleared message keeps its
// strings and submessages for the next parse. The client shares the
// server's cores, and a new page of 50 organisations a call would cost it
// some 400 allocations that the health check's reply does not.
//
// The list rows walk the directory page by page. The first walk, one
// stream from the first page to the last, reads every page from the
// database and is reported on its own line; the timed rows then walk again
// and again, mostly from the service's page cache.
//   partners_bench --addr 127.0.0.1:50051 --token T --org <id> [--seconds 3]
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "connecting/partners/v1/partners.api.h"
#include "tools/bench/load.h"

namespace v1 = connecting::partners::v1;

using connecting::bench::Result;
using connecting::bench::Run;

int main(int argc, char** argv) {
  std::map<std::string, std::string> args = connecting::bench::Args(argc, argv);
  const std::string addr = args["--addr"];
  const std::string token = args["--token"];
  const std::string org = args["--org"];
  const double seconds = std::atof(args["--seconds"].c_str());
  if (addr.empty() || token.empty() || org.empty()) {
    std::fprintf(stderr, "usage: %s --addr HOST:PORT --token JWT --org ID [--seconds N]\n",
                 argv[0]);
    return 2;
  }
  auto channels = connecting::bench::Channels(addr);
  auto with_auth = [&](grpc::ClientContext& ctx) {
    ctx.AddMetadata("authorization", "Bearer " + token);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  };
  auto health = [&](int t) { return connecting::bench::HealthCall(channels[t % channels.size()]); };
  auto get = [&](int t) -> std::function<bool()> {
    auto stub = std::shared_ptr<v1::PartnersService::Stub>(
        v1::PartnersService::NewStub(channels[t % channels.size()]));
    auto resp = std::make_shared<v1::Organisation>();
    return [stub, &with_auth, &org, resp] {
      grpc::ClientContext ctx;
      with_auth(ctx);
      v1::GetOrganisationRequest req;
      req.set_id(org);
      return connecting::bench::Ok(stub->GetOrganisation(&ctx, req, resp.get()));
    };
  };
  // One page of a walk through the directory: the token of the next page
  // ("" after the last) in `token`, the page in `resp`.
  auto page = [&](v1::PartnersService::Stub& stub, std::string& token,
                  v1::ListOrganisationsResponse& resp) {
    grpc::ClientContext ctx;
    with_auth(ctx);
    v1::ListOrganisationsRequest req;
    req.set_page_size(50);
    req.set_page_token(token);
    bool ok = connecting::bench::Ok(stub.ListOrganisations(&ctx, req, &resp)) &&
              resp.organisations_size() > 0;
    token = resp.next_page_token();
    return ok;
  };
  auto list = [&](int t) -> std::function<bool()> {
    auto stub = std::shared_ptr<v1::PartnersService::Stub>(
        v1::PartnersService::NewStub(channels[t % channels.size()]));
    auto token = std::make_shared<std::string>();
    auto resp = std::make_shared<v1::ListOrganisationsResponse>();
    return [stub, token, resp, &page] { return page(*stub, *token, *resp); };
  };
  // The first walk, every page read from the database (bounded: a minute).
  auto first_walk = [&] {
    auto stub = v1::PartnersService::NewStub(channels[0]);
    std::string token;
    v1::ListOrganisationsResponse resp;
    std::vector<double> latencies;
    long errors = 0;
    absl::Time start = absl::Now();
    do {
      absl::Time s = absl::Now();
      if (!page(*stub, token, resp)) ++errors;
      latencies.push_back(absl::ToDoubleMilliseconds(absl::Now() - s));
    } while (!token.empty() && errors == 0 && absl::Now() - start < absl::Minutes(1));
    return connecting::bench::Summarise(std::move(latencies), absl::Now() - start, errors);
  };
  connecting::bench::PrintHeader();
  for (int streams : {1, 16}) {
    Result h = Run(streams, seconds, health);
    connecting::bench::PrintRow("grpc.health.v1/Check", streams, h, h.qps);
    if (streams == 1) {  // before the timed list rows, which it leaves the cache full for
      connecting::bench::PrintRow("ListOrganisations(50) 1st walk", 1, first_walk(), h.qps);
    }
    using Maker = std::function<std::function<bool()>(int)>;
    for (auto& [name, fn] : std::vector<std::pair<const char*, Maker>>{
             {"GetOrganisation", get}, {"ListOrganisations(50)", list}}) {
      connecting::bench::PrintRow(name, streams, Run(streams, seconds, fn), h.qps);
    }
  }
  return 0;
}
