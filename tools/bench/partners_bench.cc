// Read benchmark for the partners service, reported beside the gRPC health
// check on the same server in the same run (the ratio is what to compare
// across machines, not the absolute numbers).
//   partners_bench --addr 127.0.0.1:50051 --token T --org <id> [--seconds 3]
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
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
  connecting::bench::PrintHeader();
  for (int streams : {1, 16}) {
    Result h = Run(streams, seconds, health);
    connecting::bench::PrintRow("grpc.health.v1/Check", streams, h, h.qps);
    using Maker = std::function<std::function<bool()>(int)>;
    for (auto& [name, fn] : std::vector<std::pair<const char*, Maker>>{
             {"GetOrganisation", get}, {"ListOrganisations(50)", list}}) {
      connecting::bench::PrintRow(name, streams, Run(streams, seconds, fn), h.qps);
    }
  }
  return 0;
}
