// Programme figures over a year of attended visits, reported beside the gRPC
// health check on the same server in the same run.
//   figures_bench --addr HOST:PORT --token JWT --year YYYY [--seconds 3]
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "connecting/scheduling/v1/scheduling.api.h"
#include "tools/bench/load.h"

namespace v1 = connecting::scheduling::v1;
using connecting::bench::Result;
using connecting::bench::Run;

int main(int argc, char** argv) {
  std::map<std::string, std::string> args = connecting::bench::Args(argc, argv);
  const std::string addr = args["--addr"];
  const std::string token = args["--token"];
  const std::string year = args["--year"];
  const double seconds = std::atof(args["--seconds"].c_str());
  if (addr.empty() || token.empty() || year.size() != 4) {
    std::fprintf(stderr, "usage: %s --addr HOST:PORT --token JWT --year YYYY [--seconds N]\n",
                 argv[0]);
    return 2;
  }
  auto channels = connecting::bench::Channels(addr);
  auto health = [&](int t) { return connecting::bench::HealthCall(channels[t % channels.size()]); };
  // GetProgrammeFigures from `from` to `to` (month and day, in `year`).
  auto figures = [&](const char* from, const char* to, v1::FiguresGrouping group_by) {
    return [&, from, to, group_by](int t) -> std::function<bool()> {
      std::shared_ptr<v1::SchedulingService::Stub> stub =
          v1::SchedulingService::NewStub(channels[t % channels.size()]);
      v1::GetProgrammeFiguresRequest req;
      req.set_from_date(year + "-" + from);
      req.set_to_date(year + "-" + to);
      req.set_group_by(group_by);
      return [stub, req, &token] {
        grpc::ClientContext ctx;
        ctx.AddMetadata("authorization", "Bearer " + token);
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
        v1::ProgrammeFigures resp;
        return stub->GetProgrammeFigures(&ctx, req, &resp).ok() &&
               resp.totals().connecting_days() > 0;
      };
    };
  };
  connecting::bench::PrintHeader();
  Result h = Run(1, seconds, health);
  connecting::bench::PrintRow("grpc.health.v1/Check", 1, h, h.qps);
  using Maker = std::function<std::function<bool()>(int)>;
  for (auto& [name, fn] : std::vector<std::pair<const char*, Maker>>{
           {"Figures, year, totals", figures("01-01", "12-31", v1::FIGURES_GROUPING_UNSPECIFIED)},
           {"Figures, year, by month", figures("01-01", "12-31", v1::FIGURES_GROUPING_MONTH)},
           {"Figures, year, by sector", figures("01-01", "12-31", v1::FIGURES_GROUPING_SECTOR)},
           {"Figures, year, by directorate",
            figures("01-01", "12-31", v1::FIGURES_GROUPING_DIRECTORATE)},
           {"Figures, a month, totals",
            figures("03-01", "03-31", v1::FIGURES_GROUPING_UNSPECIFIED)},
       }) {
    connecting::bench::PrintRow(name, 1, Run(1, seconds, fn), h.qps);
  }
  return 0;
}
