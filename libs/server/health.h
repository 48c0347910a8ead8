// The standard gRPC health service (grpc.health.v1.Health: Check and Watch),
// in place of gRPC's built-in one. The built-in one answers SERVING for the
// whole server ("") from the moment it listens, before anything has checked
// PostgreSQL or NATS: a readiness probe, or a test waiting for SERVING, could
// see SERVING, then NOT_SERVING once the first check ran. Here every name
// starts NOT_SERVING, except "liveness" (the process works), and only
// SetServing() changes that.
#ifndef CONNECTING_LIBS_SERVER_HEALTH_H_
#define CONNECTING_LIBS_SERVER_HEALTH_H_

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace connecting::server {

class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

  // `names`: the names a client may ask about besides "" (the whole server)
  // and "liveness"; each starts NOT_SERVING.
  explicit HealthService(const std::vector<std::string>& names);
  // Must outlive every server it is registered with (their calls end first).
  ~HealthService() override;
  HealthService(const HealthService&) = delete;
  HealthService& operator=(const HealthService&) = delete;

  // Every name but "liveness" becomes SERVING or NOT_SERVING; each Watch
  // hears the change. Ignored after Shutdown().
  void SetServing(bool serving);
  // Everything NOT_SERVING for good; each Watch is sent that and ended
  // (UNAVAILABLE), so a server's shutdown does not wait for its watchers.
  void Shutdown();

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* ctx,
                                  const grpc::health::v1::HealthCheckRequest* req,
                                  grpc::health::v1::HealthCheckResponse* resp) override;
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req) override;

  // Open Watch calls (for tests).
  int watchers() const;

 private:
  class Watcher;
  void Remove(Watcher* w);

  mutable absl::Mutex mu_;
  std::map<std::string, ServingStatus> status_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  std::set<Watcher*> watchers_ ABSL_GUARDED_BY(mu_);
  absl::CondVar watchers_gone_;
};

}  // namespace connecting::server

#endif  // CONNECTING_LIBS_SERVER_HEALTH_H_
