// The scheduling service binary. Beyond the common configuration (see
// libs/server/service_main.h) it reads where partner events come from:
//   PARTNERS_EVENTS_STREAM   PARTNERS
//   PARTNERS_EVENTS_SUBJECT  connecting.partners.>  (organisations, contacts, offers)
// and how bookings share transactions:
//   BOOKING_LANES            1 (1–64; see SchedulingLogic)
//   BOOKING_LOCK_WAIT        100ms (1ms–1h): how long a booking waits for its
//                            seats' lock in its lane's batch before it waits
//                            apart (a long cancellation holds them), so that
//                            the lane's other bookings go on
// and how often it looks for seats left free while someone could take them:
//   SEAT_SWEEP_INTERVAL      1m (1s–24h; see SchedulingLogic::SweepFreeSeats)
#include "libs/server/service_main.h"
#include "services/scheduling/scheduling_service.h"

namespace connecting::scheduling {
std::vector<db::Migration> SqlMigrations();  // generated from migrations/
}

int main(int argc, char** argv) {
  using namespace connecting;
  server::ServiceDefinition def;
  def.name = "scheduling";
  def.stream = "SCHEDULING";
  def.grpc_services = {scheduling::v1::SchedulingService::service_full_name()};
  def.migrations = [] { return db::MigrationSet{"scheduling", scheduling::SqlMigrations()}; };
  def.republish = &scheduling::Republish;
  static std::unique_ptr<scheduling::SchedulingLogic> logic;
  static std::string partners_stream, partners_subject;
  static int lanes = scheduling::SchedulingLogic::kDefaultBookingLanes;
  static absl::Duration sweep, lock_wait;
  def.read_config = [](config::EnvReader& env) {
    partners_stream = env.String("PARTNERS_EVENTS_STREAM", "PARTNERS");
    partners_subject = env.String("PARTNERS_EVENTS_SUBJECT", "connecting.partners.>");
    lanes = static_cast<int>(
        env.Int("BOOKING_LANES", scheduling::SchedulingLogic::kDefaultBookingLanes, 1, 64));
    sweep =
        env.Duration("SEAT_SWEEP_INTERVAL", absl::Minutes(1), absl::Seconds(1), absl::Hours(24));
    lock_wait =
        env.Duration("BOOKING_LOCK_WAIT", scheduling::SchedulingLogic::kDefaultBookingLockWait,
                     absl::Milliseconds(1), absl::Hours(1));
  };
  def.build = [](server::ServiceContext& ctx) {
    // Since contacts and offers are projected too: a new durable, so that it
    // replays the stream from the start, replacing the organisations-only one.
    bus::ConsumerOptions partners = ctx.config.consumer;
    partners.stream = partners_stream;
    partners.filter_subject = partners_subject;
    partners.durable = "scheduling-partners-2";
    partners.retired_durables = {"scheduling-partners"};
    ctx.consumers.push_back(std::make_unique<bus::Consumer>(partners, &ctx.pool, &ctx.nats,
                                                            &scheduling::ApplyPartnerEvent));
    server::Executor* executor = ctx.rpc.executor();
    logic = std::make_unique<scheduling::SchedulingLogic>(
        ctx.pool, ctx.outbox, ctx.page_tokens,
        [executor](std::function<void()> task) { return executor->TrySubmit(std::move(task)); },
        lanes, lock_wait);
    ctx.periodic.push_back({"seat sweep", sweep, [] { logic->SweepFreeSeats(); }});
    std::vector<std::unique_ptr<grpc::Service>> services;
    services.push_back(std::make_unique<scheduling::SchedulingGrpc>(logic.get(), &ctx.rpc));
    return services;
  };
  return server::ServiceMain(argc, argv, def);
}
