#include "libs/server/health.h"

#include <utility>

namespace connecting::server {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

namespace {
constexpr char kLiveness[] = "liveness";
}  // namespace

// One Watch call. It sends the status it was created with, then each change,
// one write at a time: a change arriving while a write is in flight replaces
// any not yet sent, so a slow client hears the latest status, not a backlog.
class HealthService::Watcher final : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  Watcher(HealthService* owner, std::string name) : owner_(owner), name_(std::move(name)) {}

  const std::string& name() const { return name_; }

  // `last`: end the call once `status` is sent.
  void Send(ServingStatus status, bool last) {
    absl::MutexLock l(&mu_);
    want_ = status;
    ending_ = ending_ || last;
    Next();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock l(&mu_);
    writing_ = false;
    if (!ok) {
      End(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      return;
    }
    Next();
  }

  void OnCancel() override {
    absl::MutexLock l(&mu_);
    End(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    owner_->Remove(this);
    delete this;
  }

 private:
  void Next() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finished_) return;
    if (want_ != sent_) {  // want_ is never UNKNOWN: the first status always goes
      resp_.set_status(want_);
      sent_ = want_;
      writing_ = true;
      StartWrite(&resp_);
      return;
    }
    if (ending_) End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
  }

  void End(grpc::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(std::move(status));
  }

  HealthService* const owner_;
  const std::string name_;
  absl::Mutex mu_;
  HealthCheckResponse resp_ ABSL_GUARDED_BY(mu_);
  ServingStatus want_ ABSL_GUARDED_BY(mu_) = HealthCheckResponse::UNKNOWN;
  ServingStatus sent_ ABSL_GUARDED_BY(mu_) = HealthCheckResponse::UNKNOWN;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool ending_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

HealthService::HealthService(const std::vector<std::string>& names) {
  absl::MutexLock l(&mu_);
  status_[""] = HealthCheckResponse::NOT_SERVING;
  for (const std::string& n : names) status_[n] = HealthCheckResponse::NOT_SERVING;
  status_[kLiveness] = HealthCheckResponse::SERVING;
}

HealthService::~HealthService() {
  Shutdown();
  absl::MutexLock l(&mu_);
  while (!watchers_.empty()) watchers_gone_.Wait(&mu_);
}

void HealthService::SetServing(bool serving) {
  absl::MutexLock l(&mu_);
  if (shut_down_) return;
  for (auto& [name, status] : status_) {
    if (name != kLiveness) {
      status = serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
    }
  }
  for (Watcher* w : watchers_) {
    auto it = status_.find(w->name());
    if (it != status_.end()) w->Send(it->second, false);
  }
}

void HealthService::Shutdown() {
  absl::MutexLock l(&mu_);
  if (shut_down_) return;
  shut_down_ = true;
  for (auto& [name, status] : status_) status = HealthCheckResponse::NOT_SERVING;
  for (Watcher* w : watchers_) {
    w->Send(status_.count(w->name()) > 0 ? HealthCheckResponse::NOT_SERVING
                                         : HealthCheckResponse::SERVICE_UNKNOWN,
            true);
  }
}

grpc::ServerUnaryReactor* HealthService::Check(grpc::CallbackServerContext* ctx,
                                               const HealthCheckRequest* req,
                                               HealthCheckResponse* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  ServingStatus status = HealthCheckResponse::UNKNOWN;
  {
    absl::MutexLock l(&mu_);
    auto it = status_.find(req->service());
    if (it != status_.end()) status = it->second;
  }
  if (status == HealthCheckResponse::UNKNOWN) {
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND,
                                 "service: no such service name; ask \"\" for the whole "
                                 "server, \"liveness\", or a fully qualified service name"));
  } else {
    resp->set_status(status);
    reactor->Finish(grpc::Status::OK);
  }
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(
    grpc::CallbackServerContext* /*ctx*/, const HealthCheckRequest* req) {
  auto* w = new Watcher(this, req->service());
  absl::MutexLock l(&mu_);
  watchers_.insert(w);
  auto it = status_.find(req->service());
  // An unknown name stays open and says so (the protocol's SERVICE_UNKNOWN).
  w->Send(it != status_.end() ? it->second : HealthCheckResponse::SERVICE_UNKNOWN, shut_down_);
  return w;
}

int HealthService::watchers() const {
  absl::MutexLock l(&mu_);
  return static_cast<int>(watchers_.size());
}

void HealthService::Remove(Watcher* w) {
  absl::MutexLock l(&mu_);
  watchers_.erase(w);
  if (watchers_.empty()) watchers_gone_.SignalAll();
}

}  // namespace connecting::server
