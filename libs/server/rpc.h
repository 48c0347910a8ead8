// RpcRunner: the one path every unary RPC takes.
//
//   grpc::ServerUnaryReactor* GetOrganisation(grpc::CallbackServerContext* ctx,
//                                             const GetOrganisationRequest* req,
//                                             Organisation* resp) override {
//     return rpc_->Run(ctx, req, "GetOrganisation", [=](const Call& call) {
//       return logic_.Get(call, *req, resp);
//     });
//   }
//
// On the gRPC thread it rejects malformed requests (INVALID_ARGUMENT naming the
// field) and unauthenticated calls, then queues the work on the Executor
// (RESOURCE_EXHAUSTED when full). On a worker it checks the deadline, runs the
// work, maps absl::Status to grpc::Status, records metrics and finishes. The
// work may write `resp` only; it is sent only when the status is OK.
#ifndef CONNECTING_LIBS_SERVER_RPC_H_
#define CONNECTING_LIBS_SERVER_RPC_H_

#include <google/protobuf/message.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/server_callback.h>

#include <functional>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "libs/server/auth.h"
#include "libs/server/executor.h"

namespace connecting::server {

// What the work knows about the call.
struct Call {
  const Principal& principal;
  absl::Time deadline;      // the client's deadline, capped by the server default
  std::string traceparent;  // W3C trace context: the caller's, or a new one
  absl::string_view method;
};

// A valid W3C traceparent `incoming` as it is; otherwise (or empty) a new
// trace, as for work no request started.
std::string TraceParent(absl::string_view incoming);

// absl::Status → grpc::Status (same codes), with the error details of
// libs/server/errors.h under `domain`. INTERNAL details are logged, not sent.
grpc::Status ToGrpcStatus(const absl::Status& status, absl::string_view method,
                          absl::string_view traceparent, absl::string_view domain);

class RpcRunner {
 public:
  using Work = std::function<absl::Status(const Call&)>;
  // Runs on the gRPC thread before queueing; must not block. Returning a
  // status finishes the call (e.g. a cache hit); nullopt queues `work`.
  using FastPath = std::function<std::optional<absl::Status>(const Call&)>;

  // `error_domain` names the service in its errors' ErrorInfo
  // ("connecting.<service>").
  // Registers the RPC metrics, so that /metrics has them from the start.
  RpcRunner(Executor* executor, const Authenticator* auth, absl::Duration max_deadline,
            std::string error_domain);

  // Runs on the worker after each call's work, whatever its outcome (the
  // outbox relay's wake-up: whatever the call committed can be published now).
  void SetAfterWork(std::function<void()> f) { after_work_ = std::move(f); }

  grpc::ServerUnaryReactor* Run(grpc::CallbackServerContext* ctx,
                                const google::protobuf::Message* request, const char* method,
                                Work work, FastPath fast = nullptr);

  // For work that queues itself rather than blocking a worker (e.g. a
  // db::GroupCommitter): after the same checks, `start` runs on the gRPC
  // thread and must not block; the call finishes when it calls `done`
  // (exactly once, from any thread). `call` stays valid until then.
  using Done = std::function<void(absl::Status)>;
  using AsyncWork = std::function<void(const Call& call, Done done)>;
  grpc::ServerUnaryReactor* RunAsync(grpc::CallbackServerContext* ctx,
                                     const google::protobuf::Message* request, const char* method,
                                     AsyncWork start);

  Executor* executor() const { return executor_; }

 private:
  // What the checks on the gRPC thread give a call that may proceed.
  struct Admitted {
    Principal principal;
    absl::Time deadline;
    std::string trace;
  };
  using Finish = std::function<void(const grpc::Status&)>;
  // Finishes malformed and unauthenticated calls (nullopt); `finish` records metrics.
  std::optional<Admitted> Admit(grpc::CallbackServerContext* ctx,
                                const google::protobuf::Message* request, const Finish& finish);
  static Finish Finisher(grpc::ServerUnaryReactor* reactor, const char* method);
  // Ends a call whose work ran: logs a failure (debug), wakes after_work_, finishes.
  void WorkDone(const Finish& finish, const char* method, const std::string& trace,
                const absl::Status& s) const;

  Executor* const executor_;
  const Authenticator* const auth_;
  const absl::Duration max_deadline_;
  const std::string domain_;
  std::function<void()> after_work_;
};

}  // namespace connecting::server

#endif  // CONNECTING_LIBS_SERVER_RPC_H_
