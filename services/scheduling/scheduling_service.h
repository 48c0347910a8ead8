// The scheduling gRPC API: SchedulingLogic does the work of each RPC in one
// transaction with its outbox events; SchedulingGrpc adapts it to the
// callback API through the shared RpcRunner. ApplyPartnerEvent keeps the
// partner projection from PARTNERS events (run by an inbox consumer).
#ifndef CONNECTING_SERVICES_SCHEDULING_SCHEDULING_SERVICE_H_
#define CONNECTING_SERVICES_SCHEDULING_SCHEDULING_SERVICE_H_

#include "connecting/scheduling/v1/scheduling.api.h"
#include "libs/bus/consumer.h"
#include "libs/bus/outbox.h"
#include "libs/db/db.h"
#include "libs/db/group_commit.h"
#include "libs/server/page_token.h"
#include "libs/server/rpc.h"

namespace connecting::scheduling {

namespace v1 = ::connecting::scheduling::v1;
using server::Call;

// Applies one PARTNERS event to the projection, inside the inbox transaction.
absl::Status ApplyPartnerEvent(db::Conn& tx, const bus::Delivery& event);

// `scheduling --republish`: every participant, session and booking, as it is
// (with a new version first if `new_versions`, `--after-restore`), added to
// the outbox as a snapshot event (ParticipantSnapshot, …), a page per
// transaction; how many. For a SCHEDULING stream that lost events, a new
// dashboard's compact start, or after a restore; the serving replicas'
// relays publish them.
absl::StatusOr<int64_t> Republish(db::Pool& pool, const bus::Outbox& outbox, bool new_versions);

class SchedulingLogic {
 public:
  // Bookings queue in `booking_lanes` lanes (sessions hashed over them); each
  // lane commits what queued meanwhile as one transaction, so concurrent
  // bookings share BEGIN, COMMIT and round trips whichever sessions they are
  // for. Bookings of one session are always in the same lane; lanes run in
  // parallel. One lane by default: it packs the most bookings into each
  // transaction, and the database spends the least CPU per booking; each
  // replica is a lane of its own at the database (docs/performance.md).
  // `schedule` gives each lane's batch a thread (the RPC executor's), so a
  // booking waiting for its batch holds none.
  // A booking whose seats another transaction holds (a large session being
  // cancelled) waits for them in its batch for at most `booking_lock_wait`,
  // then apart from the lane, with whoever else books those seats meanwhile,
  // while the lane goes on (db::GroupCommitter's lock_wait).
  static constexpr int kDefaultBookingLanes = 1;  // BOOKING_LANES unset
  static constexpr absl::Duration kDefaultBookingLockWait = absl::Milliseconds(100);
  SchedulingLogic(db::Pool& pool, const bus::Outbox& outbox, const server::PageTokens& tokens,
                  db::GroupCommitter::Schedule schedule, int booking_lanes = kDefaultBookingLanes,
                  absl::Duration booking_lock_wait = kDefaultBookingLockWait);

#define CONNECTING_SCHEDULING_METHODS(X)                                             \
  X(RegisterParticipant, RegisterParticipantRequest, Participant)                    \
  X(GetParticipant, GetParticipantRequest, Participant)                              \
  X(ListParticipants, ListParticipantsRequest, ListParticipantsResponse)             \
  X(UpdateParticipant, UpdateParticipantRequest, Participant)                        \
  X(DeactivateParticipant, DeactivateParticipantRequest, Participant)                \
  X(CreateSession, CreateSessionRequest, Session)                                    \
  X(GetSession, GetSessionRequest, Session)                                          \
  X(ListSessions, ListSessionsRequest, ListSessionsResponse)                         \
  X(UpdateSession, UpdateSessionRequest, Session)                                    \
  X(AcceptSession, AcceptSessionRequest, Session)                                    \
  X(CancelSession, CancelSessionRequest, Session)                                    \
  X(CompleteSession, CompleteSessionRequest, Session)                                \
  X(GetBooking, GetBookingRequest, Booking)                                          \
  X(ListBookings, ListBookingsRequest, ListBookingsResponse)                         \
  X(CancelBooking, CancelBookingRequest, Booking)                                    \
  X(RescheduleBooking, RescheduleBookingRequest, Booking)                            \
  X(RecordAttendance, RecordAttendanceRequest, Booking)                              \
  X(ListEnduringContacts, ListEnduringContactsRequest, ListEnduringContactsResponse) \
  X(GetProgrammeFigures, GetProgrammeFiguresRequest, ProgrammeFigures)

#define CONNECTING_DECLARE(Method, Req, Resp) \
  absl::Status Method(const Call& call, const v1::Req& req, v1::Resp* resp);
  CONNECTING_SCHEDULING_METHODS(CONNECTING_DECLARE)
#undef CONNECTING_DECLARE

  // Checks the request on the calling (gRPC) thread and queues the booking in
  // its lane without blocking; `done` runs once the lane's transaction has
  // committed or failed (or at once with the refusal). `call`, `req` and
  // `resp` must stay valid until then.
  void BookSession(const Call& call, const v1::BookSessionRequest& req, v1::Booking* resp,
                   server::RpcRunner::Done done);

  // The background repair (SEAT_SWEEP_INTERVAL): every seat free while
  // someone waits who could take it goes to whoever waits there first. The
  // changes that free someone hand their seats on as they commit
  // (PromoteWhereFreed); this catches a process that stopped in between.
  void SweepFreeSeats();

  // What found a seat to hand on (PromoteWhereFreed; the label of
  // connecting_seats_handed_on_total).
  enum class HandOnBy { kChange, kBooking, kSweep };

 private:
  // Reads row `row` of book_sites' rows (store::BookStatement, BookRun): the
  // refusal as a status, or the booking into `booking` and, when `emit` and
  // it is new, the outbox row for booking.confirmed/waitlisted to write in
  // the same transaction. `seat_owed`, when given, is set when the new
  // booking waits beside a free seat: book_sites put it behind someone in
  // line owed that seat, to hand on once this commits (HandOnSoon).
  absl::StatusOr<std::vector<db::Statement>> Booked(const Call& call, const db::Result& rows,
                                                    int row, const std::string& session_id,
                                                    const std::string& participant_id,
                                                    const std::string& site, bool emit,
                                                    v1::Booking* booking,
                                                    bool* seat_owed = nullptr);
  // Books inside `tx`; emits booking.confirmed/waitlisted when `emit`.
  absl::StatusOr<v1::Booking> BookInTx(db::Conn& tx, const Call& call,
                                       const std::string& session_id,
                                       const std::string& participant_id, const std::string& site,
                                       const std::string& request_id, bool emit);
  // Cancels inside `tx` and promotes the next eligible waitlisted booking. A
  // booking no longer CONFIRMED or WAITLISTED is FAILED_PRECONDITION, or with
  // `only_if_live` returned as it is. `ended_frontline_visit`, when given,
  // says whether it cancelled a confirmed frontline visit (which may have
  // kept its connector from a seat elsewhere that date: PromoteWhereFreed).
  absl::StatusOr<v1::Booking> CancelInTx(db::Conn& tx, const Call& call,
                                         const std::string& booking_id, bool emit,
                                         bool only_if_live = false,
                                         bool* ended_frontline_visit = nullptr);
  // A transaction of `fn`, which may promote (Promote). When a promotion
  // meets the person first in line being confirmed on another visit that
  // date, `fn` runs again holding that person's row from the start, so it
  // waits for that confirmation to end (within the call's deadline) instead
  // of giving up again after Promote's brief wait. `holds`, when not empty,
  // is a participant `fn` locks itself: held with them, in one id order.
  // Once it has committed, a seat a promotion left free, passing over
  // someone who held a visit that date, is handed on if they (or whoever
  // waits) can take it now (PromoteWhereFreed); `hand_on_left_free` false
  // for a hand-on itself.
  absl::Status TransactPromoting(const Call& call, const std::string& holds,
                                 absl::FunctionRef<absl::Status(db::Conn&)> fn,
                                 bool hand_on_left_free = true);
  // Confirms the first eligible waitlisted booking of the site, if any;
  // whether it did. ABORTED, to retry through TransactPromoting, when the
  // person first in line is being confirmed elsewhere that date. A seat it
  // leaves free passing someone over is noted for TransactPromoting.
  absl::StatusOr<bool> Promote(db::Conn& tx, const Call& call, const v1::Session& session,
                               const std::string& site);
  // Promotes into up to `free` seats of the site, first eligible first,
  // until nobody eligible waits; counts them into `filled` when given.
  absl::Status FillSeats(db::Conn& c, const Call& call, const v1::Session& session,
                         const std::string& site, int free, int* filled = nullptr);
  // After a change that ended someone's confirmed frontline visit has
  // committed: a seat Promote passed them over for meanwhile (they held that
  // visit) is free, and goes now to whoever waits there first, one site per
  // transaction. For `participant`, or everyone booked on `session`. A
  // failure is logged: the change itself stands.
  void PromoteWhereFreed(const Call& call, HandOnBy by, const std::string& participant,
                         const std::string& session);
  // PromoteWhereFreed for `session` on the executor, after a booking there
  // committed waiting beside a free seat (Booked's `seat_owed`); with the
  // executor full or shutting down, the seat sweep hands the seat on instead.
  void HandOnSoon(const std::string& session, const std::string& traceparent);
  // Cancels the session and its live bookings inside `tx` (the caller holds
  // the session row): session.cancelled with `reason`, a booking.cancelled
  // each.
  absl::Status CancelSessionInTx(db::Conn& tx, const Call& call, const std::string& session_id,
                                 const std::string& reason);
  // Cancels the session's live bookings (only the waitlisted ones with
  // `waitlisted_only`), a booking.cancelled each with `why`, under all its
  // sites' locks, and zeroes the counters they held.
  absl::Status EndBookings(db::Conn& tx, const Call& call, const std::string& session_id,
                           bool waitlisted_only, const std::string& why);
  absl::Status EmitBooking(db::Conn& tx, const Call& call, const char* verb,
                           const std::string& booking_id, const std::string& reason);
  absl::Status EmitSession(db::Conn& tx, const Call& call, const char* verb,
                           const std::string& session_id, const std::string& reason);

  db::Pool& pool_;
  const bus::Outbox& outbox_;
  const server::PageTokens& tokens_;
  const int booking_lanes_;
  const db::GroupCommitter::Schedule schedule_;  // background work (HandOnSoon)
  // Bookings of one lane share transactions (see the constructor).
  db::GroupCommitter bookings_;
};

class SchedulingGrpc final : public v1::SchedulingService::CallbackService {
 public:
  SchedulingGrpc(SchedulingLogic* logic, server::RpcRunner* rpc) : logic_(logic), rpc_(rpc) {}

#define CONNECTING_ADAPT(Method, Req, Resp)                                              \
  grpc::ServerUnaryReactor* Method(grpc::CallbackServerContext* ctx, const v1::Req* req, \
                                   v1::Resp* resp) override {                            \
    return rpc_->Run(ctx, req, #Method, [this, req, resp](const Call& call) {            \
      return logic_->Method(call, *req, resp);                                           \
    });                                                                                  \
  }
  CONNECTING_SCHEDULING_METHODS(CONNECTING_ADAPT)
#undef CONNECTING_ADAPT

  grpc::ServerUnaryReactor* BookSession(grpc::CallbackServerContext* ctx,
                                        const v1::BookSessionRequest* req,
                                        v1::Booking* resp) override {
    return rpc_->RunAsync(ctx, req, "BookSession",
                          [this, req, resp](const Call& call, server::RpcRunner::Done done) {
                            logic_->BookSession(call, *req, resp, std::move(done));
                          });
  }

 private:
  SchedulingLogic* const logic_;
  server::RpcRunner* const rpc_;
};

}  // namespace connecting::scheduling

#endif  // CONNECTING_SERVICES_SCHEDULING_SCHEDULING_SERVICE_H_
