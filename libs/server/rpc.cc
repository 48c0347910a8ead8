#include "libs/server/rpc.h"

#include <map>
#include <random>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "libs/common/log.h"
#include "libs/common/metrics.h"
#include "libs/common/throttle.h"
#include "libs/db/db.h"
#include "libs/server/errors.h"
#include "libs/server/strict_parse.h"

namespace connecting::server {
namespace {

const char* CodeName(grpc::StatusCode c) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  int i = static_cast<int>(c);
  return (i >= 0 && i <= 16) ? kNames[i] : "UNKNOWN";
}

struct RpcMetrics {
  prometheus::Family<prometheus::Counter>& requests;
  prometheus::Family<prometheus::Histogram>& latency;
  // One series, at 0 from the start: its alert sees the first one.
  prometheus::Counter& database_refusals;

  static RpcMetrics& Get() {
    static RpcMetrics* m = new RpcMetrics{prometheus::BuildCounter()
                                              .Name("connecting_grpc_requests_total")
                                              .Help("RPCs handled, by method, status code "
                                                    "and, for a named cause, its reason")
                                              .Register(*metrics::Registry()),
                                          prometheus::BuildHistogram()
                                              .Name("connecting_grpc_request_duration_seconds")
                                              .Help("RPC latency from receipt to finish, by method")
                                              .Register(*metrics::Registry()),
                                          prometheus::BuildCounter()
                                              .Name("connecting_database_refusals_total")
                                              .Help("Changes a rule of the database's schema "
                                                    "refused after the service's own checks "
                                                    "let them through (a bug: each is logged "
                                                    "at error, with its method, under its "
                                                    "traceparent)")
                                              .Register(*metrics::Registry())
                                              .Add({})};
    return *m;
  }
};

const prometheus::Histogram::BucketBoundaries& Buckets() {
  static auto* b = new prometheus::Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  return *b;
}

bool IsLowerHex(absl::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

absl::string_view Metadata(const grpc::CallbackServerContext* ctx, const char* key) {
  const auto& md = ctx->client_metadata();
  auto it = md.find(key);
  if (it == md.end()) return {};
  return absl::string_view(it->second.data(), it->second.size());
}

}  // namespace

std::string TraceParent(absl::string_view incoming) {
  if (incoming.size() == 55 && incoming.substr(0, 3) == "00-" && incoming[35] == '-' &&
      incoming[52] == '-' && IsLowerHex(incoming.substr(3, 32)) &&
      IsLowerHex(incoming.substr(36, 16)) && IsLowerHex(incoming.substr(53, 2)) &&
      incoming.substr(3, 32) != std::string(32, '0')) {
    return std::string(incoming);
  }
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrFormat("00-%016x%016x-%016x-01", rng(), rng() | 1, rng() | 1);
}

namespace {

// A warn line for calls answered alike: the first at once, then at most one
// every interval of `throttle`, counting the calls in between.
void CallsLogged(log::Throttle& throttle, const char* msg, const absl::Status& status,
                 absl::string_view method, absl::string_view traceparent) {
  if (std::optional<int64_t> held = throttle.Admit()) {
    log::Warn(msg, {{"method", method},
                    {"traceparent", traceparent},
                    {"error", log::Text(status)},
                    {"more_since_the_last_line", absl::StrCat(*held)}});
  }
}

// Calls answered UNAVAILABLE for the database, in the log at warn with what
// the database or libpq said: the first at once, then at most one line every
// 10 s with how many more there were, so that an outage does not write a
// line per call. (The health monitor logs its own view of the database as
// it changes: libs/server/service_main.cc.) A commit whose outcome is
// unknown is logged every time: each concerns one change a client may ask
// about, under its traceparent.
void DatabaseUnavailableLogged(const absl::Status& status, absl::string_view method,
                               absl::string_view traceparent) {
  if (db::CommitOutcomeUnknown(status)) {
    log::Warn("a commit's outcome is unknown: the connection to the database was lost",
              {{"method", method}, {"traceparent", traceparent}, {"error", log::Text(status)}});
    return;
  }
  static log::Throttle* const throttle = new log::Throttle(absl::Seconds(10));
  CallsLogged(*throttle, "calls answered UNAVAILABLE: the database is unavailable", status, method,
              traceparent);
}

// A status holding the database's own words (hosts, users, tables,
// constraints, stored values: db::SaidByDatabase) in plain words for the
// client, with its code. DetailedStatus adds the reason the code implies, as
// for any status without one; a lost commit and a bug name theirs here, for
// their metadata. The words stay in the server's log: "rpc failed" at
// debug; UNAVAILABLE at warn too, throttled (above); and at error, under
// the traceparent the client is given, a rule of the schema that refused
// what the service's own checks let through (a bug, as INTERNAL is). No
// handler names a cause on such a status: each makes its own.
absl::Status InPlainWords(const absl::Status& status, absl::string_view method,
                          absl::string_view traceparent) {
  if (!db::SaidByDatabase(status)) return status;
  const std::string trace(traceparent);
  // A bug: logged, and the client given the traceparent to report it with.
  auto bug = [&](absl::StatusCode code, absl::string_view what) {
    log::Error("the database refused a change the service's own checks let through",
               {{"method", method}, {"traceparent", traceparent}, {"error", log::Text(status)}});
    RpcMetrics::Get().database_refusals.Increment();
    return absl::Status(
        code, absl::StrCat(what, "; the server log has the details under traceparent ", trace));
  };
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
      DatabaseUnavailableLogged(status, method, traceparent);
      if (db::CommitOutcomeUnknown(status)) {
        return WithReason(
            absl::UnavailableError(
                "the connection to the service's database was lost during the commit: the "
                "change may or may not have been made; read it, or ask again with the same "
                "request_id"),
            "DEPENDENCY_UNAVAILABLE", {{"commitOutcome", "UNKNOWN"}});
      }
      return absl::UnavailableError("the service's database is unavailable; retry with backoff");
    case absl::StatusCode::kDeadlineExceeded:
      return absl::DeadlineExceededError(
          "the deadline passed while the database worked on the call");
    case absl::StatusCode::kAborted:
      return absl::AbortedError("a concurrent change got in the way; retry");
    case absl::StatusCode::kAlreadyExists:
      return WithReason(bug(status.code(), "the change conflicts with data already stored"),
                        "RESOURCE_EXISTS", {{"traceparent", trace}});
    case absl::StatusCode::kFailedPrecondition:
      return WithReason(bug(status.code(), "a rule of the stored data refused the change"),
                        "PRECONDITION_FAILED", {{"traceparent", trace}});
    default:  // INTERNAL: ToGrpcStatus logs it and answers in its own words
      return status;
  }
}

}  // namespace

RpcRunner::RpcRunner(Executor* executor, const Authenticator* auth, absl::Duration max_deadline,
                     std::string error_domain)
    : executor_(executor),
      auth_(auth),
      max_deadline_(max_deadline),
      domain_(std::move(error_domain)) {
  RpcMetrics::Get();
}

grpc::Status ToGrpcStatus(const absl::Status& given, absl::string_view method,
                          absl::string_view traceparent, absl::string_view domain) {
  if (given.ok()) return grpc::Status::OK;
  const absl::Status status = InPlainWords(given, method, traceparent);
  auto code = static_cast<grpc::StatusCode>(status.code());
  if (code == grpc::StatusCode::INTERNAL || code == grpc::StatusCode::UNKNOWN) {
    log::Error("internal error",
               {{"method", method}, {"traceparent", traceparent}, {"error", log::Text(status)}});
    return DetailedStatus(
        WithReason(
            absl::InternalError(absl::StrCat(
                "internal error; the server log has the details under traceparent ", traceparent)),
            "INTERNAL_ERROR", {{"traceparent", std::string(traceparent)}}),
        domain);
  }
  return DetailedStatus(status, domain);
}

RpcRunner::Finish RpcRunner::Finisher(grpc::ServerUnaryReactor* reactor, const char* method) {
  const absl::Time start = absl::Now();
  return [reactor, method, start](const grpc::Status& s) {
    RpcMetrics& m = RpcMetrics::Get();
    // Every error's reason too (bounded: the README's table), so that
    // dashboards tell a paused partner from an expired token.
    std::map<std::string, std::string> labels{{"method", method},
                                              {"code", CodeName(s.error_code())}};
    if (std::string reason = s.ok() ? "" : ReasonIn(s); !reason.empty()) {
      labels.emplace("reason", std::move(reason));
    }
    m.requests.Add(labels).Increment();
    m.latency.Add({{"method", method}}, Buckets())
        .Observe(absl::ToDoubleSeconds(absl::Now() - start));
    reactor->Finish(s);
  };
}

std::optional<RpcRunner::Admitted> RpcRunner::Admit(grpc::CallbackServerContext* ctx,
                                                    const google::protobuf::Message* request,
                                                    const Finish& finish) {
  if (std::optional<MalformedRequest> bad = MalformedReason(*request)) {
    finish(DetailedStatus(bad->field.empty() ? absl::InvalidArgumentError(bad->rule)
                                             : FieldError(bad->field, bad->rule),
                          domain_));
    return std::nullopt;
  }
  absl::StatusOr<Principal> principal = auth_->Authenticate(Metadata(ctx, "authorization"));
  if (!principal.ok()) {
    finish(DetailedStatus(principal.status(), domain_));
    return std::nullopt;
  }
  absl::Time deadline = std::min(absl::FromChrono(ctx->deadline()), absl::Now() + max_deadline_);
  return Admitted{*std::move(principal), deadline, TraceParent(Metadata(ctx, "traceparent"))};
}

grpc::ServerUnaryReactor* RpcRunner::Run(grpc::CallbackServerContext* ctx,
                                         const google::protobuf::Message* request,
                                         const char* method, Work work, FastPath fast) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  Finish finish = Finisher(reactor, method);
  std::optional<Admitted> a = Admit(ctx, request, finish);
  if (!a) return reactor;
  if (fast != nullptr) {
    Call call{a->principal, a->deadline, a->trace, method};
    if (std::optional<absl::Status> done = fast(call)) {
      finish(ToGrpcStatus(*done, method, a->trace, domain_));
      return reactor;
    }
  }
  bool queued = executor_->TrySubmit(
      [this, ctx, method, finish, work = std::move(work), a = *std::move(a)]() mutable {
        if (ctx->IsCancelled()) {
          finish(DetailedStatus(absl::CancelledError("cancelled by the client"), domain_));
          return;
        }
        if (absl::Now() >= a.deadline) {
          finish(DetailedStatus(
              absl::DeadlineExceededError("deadline passed while the request waited in the queue"),
              domain_));
          return;
        }
        Call call{a.principal, a.deadline, a.trace, method};
        WorkDone(finish, method, a.trace, work(call));
      });
  if (!queued) {
    // Named SERVER_AT_CAPACITY, as every capacity refusal (WithDefaultReason).
    finish(ToGrpcStatus(absl::ResourceExhaustedError("server is at capacity; retry with backoff"),
                        method, "", domain_));
  }
  return reactor;
}

void RpcRunner::WorkDone(const Finish& finish, const char* method, const std::string& trace,
                         const absl::Status& s) const {
  if (absl::IsDeadlineExceeded(s)) {
    // The call's deadline passed while the database worked on it (a lock
    // held elsewhere, a database that stopped answering, a deadline too
    // short for the call): at warn, as UNAVAILABLE is, the first at once and
    // then one line every 10 s with a count.
    static log::Throttle* const throttle = new log::Throttle(absl::Seconds(10));
    CallsLogged(*throttle, "calls answered DEADLINE_EXCEEDED: the database did not answer in time",
                s, method, trace);
  } else if (!s.ok()) {
    log::Debug("rpc failed", {{"method", method}, {"traceparent", trace}, {"error", log::Text(s)}});
  }
  if (after_work_) after_work_();
  finish(ToGrpcStatus(s, method, trace, domain_));
}

grpc::ServerUnaryReactor* RpcRunner::RunAsync(grpc::CallbackServerContext* ctx,
                                              const google::protobuf::Message* request,
                                              const char* method, AsyncWork start) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  Finish finish = Finisher(reactor, method);
  std::optional<Admitted> a = Admit(ctx, request, finish);
  if (!a) return reactor;
  // The call's state lives until `done`.
  struct State {
    State(Admitted a, const char* method)
        : admitted(std::move(a)),
          call{admitted.principal, admitted.deadline, admitted.trace, method} {}
    Admitted admitted;
    Call call;
  };
  auto* state = new State(*std::move(a), method);
  start(state->call, [this, state, method, finish](absl::Status s) {
    WorkDone(finish, method, state->call.traceparent, s);
    delete state;
  });
  return reactor;
}

}  // namespace connecting::server
