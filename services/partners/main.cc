// The partners service binary: configuration from the environment, then the
// shared bootstrap (see libs/server/service_main.h). Beyond the common
// configuration it reads how much memory its read caches may hold:
//   READ_CACHE_MB   64 (0–65536; organisations and list pages, half each)
#include "libs/server/service_main.h"
#include "services/partners/partners_service.h"

namespace connecting::partners {
std::vector<db::Migration> SqlMigrations();  // generated from migrations/
}

int main(int argc, char** argv) {
  using namespace connecting;
  server::ServiceDefinition def;
  def.name = "partners";
  def.stream = "PARTNERS";
  // Kept for good: scheduling (and every later service) rebuilds its
  // organisation, contact and offer projection by replaying it from the
  // start. A few thousand small events a year.
  def.stream_max_age = absl::ZeroDuration();
  def.grpc_services = {partners::v1::PartnersService::service_full_name()};
  def.migrations = [] { return db::MigrationSet{"partners", partners::SqlMigrations()}; };
  def.republish = &partners::Republish;
  // Owned here for the life of the process; the gRPC service keeps pointers.
  static std::unique_ptr<partners::PartnersLogic::OrganisationCache> cache;
  static std::unique_ptr<partners::PartnersLogic::PageCache> pages;
  static std::unique_ptr<partners::PartnersLogic> logic;
  static size_t cache_bytes = 0;
  def.read_config = [](config::EnvReader& env) {
    cache_bytes = static_cast<size_t>(env.Int("READ_CACHE_MB", 64, 0, 65536)) * 1024 * 1024;
  };
  def.build = [](server::ServiceContext& ctx) {
    // Organisations are read far more than written (every booking checks its
    // partner); see libs/db/notify_cache.h for how the cache stays coherent.
    // READ_CACHE_MB bounds both, half each; 0: no caches, every read from
    // the database.
    if (cache_bytes > 0) {
      cache = std::make_unique<partners::PartnersLogic::OrganisationCache>(
          "organisations", ctx.config.database_url, "partners_organisation_changed",
          cache_bytes / 2);
      cache->Start();
      pages = std::make_unique<partners::PartnersLogic::PageCache>(
          "organisation_pages", ctx.config.database_url, "partners_organisation_changed",
          cache_bytes / 2, /*any_change_clears=*/true);
      pages->Start();
    }
    logic = std::make_unique<partners::PartnersLogic>(ctx.pool, ctx.outbox, ctx.page_tokens,
                                                      cache.get(), pages.get());
    std::vector<std::unique_ptr<grpc::Service>> services;
    services.push_back(std::make_unique<partners::PartnersGrpc>(logic.get(), &ctx.rpc));
    return services;
  };
  return server::ServiceMain(argc, argv, def);
}
