#include "services/scheduling/scheduling_service.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <functional>
#include <optional>
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "connecting/events/v1/partners_events.pb.h"
#include "connecting/events/v1/scheduling_events.pb.h"
#include "connecting/partners/v1/partners.pb.h"
#include "libs/bus/republish.h"
#include "libs/common/log.h"
#include "libs/common/metrics.h"
#include "libs/common/not_found.h"
#include "libs/server/errors.h"
#include "libs/server/resource.h"
#include "services/scheduling/scheduling_rules.h"
#include "services/scheduling/store.h"

namespace connecting::scheduling {
namespace {

namespace ev = ::connecting::events::v1;
namespace pv1 = ::connecting::partners::v1;
using server::FieldErrors;
using server::Role;

constexpr int kConfirmed = v1::BOOKING_STATUS_CONFIRMED;
constexpr int kWaitlisted = v1::BOOKING_STATUS_WAITLISTED;
constexpr int kCancelled = v1::BOOKING_STATUS_CANCELLED;
// On a status from Promote: the person first in line whose confirmation on
// another visit that date was still in flight (TransactPromoting).
constexpr char kFirstInLinePayload[] = "connecting.scheduling/first-in-line";
// The sessions where a promotion, in the transaction TransactPromoting runs
// on this thread, passed someone over and left the seat free (Promote).
// db::Transact runs the transaction on the calling thread; outside one this
// is null and nothing is noted.
thread_local std::set<std::string>* left_free_here = nullptr;

db::TxOptions Tx(const Call& call) {
  db::TxOptions o;
  o.deadline = call.deadline;
  return o;
}

// For a partner organisation, contact or offer (`what`, e.g. "contact <id>")
// that no PARTNERS event has told scheduling of; `key` ("contactId") names
// its id in the metadata.
absl::Status NotYetKnown(absl::string_view what, const char* key, const std::string& id) {
  return server::Refusal(
      "PARTNER_NOT_YET_KNOWN",
      absl::StrCat(what, " is not known to scheduling (no partners event for it yet)"),
      {{key, id}});
}

// Why an organisation with this projected status (0: unknown) takes no bookings.
absl::Status PartnerRefusal(const std::string& id, int status) {
  if (status == 0) return NotYetKnown(absl::StrCat("organisation ", id), "organisationId", id);
  const std::string& name =
      pv1::OrganisationStatus_Name(static_cast<pv1::OrganisationStatus>(status));
  return server::Refusal(
      "PARTNER_NOT_ACTIVE",
      absl::StrCat("partner organisation ", id, " is ", name, "; it takes no bookings"),
      {{"organisationId", id}, {"status", name}});
}

// The partner must be known from PARTNERS events and ACTIVE.
absl::StatusOr<store::PartnerOrganisation> ActivePartner(db::Conn& c, const std::string& id) {
  auto p = store::GetPartner(c, id);
  if (!p.ok()) return p.status();
  if (!p->has_value()) return PartnerRefusal(id, 0);
  if ((*p)->status != pv1::ORGANISATION_STATUS_ACTIVE) return PartnerRefusal(id, (*p)->status);
  return **p;
}

// A session's host must be a contact of its organisation, not removed, and
// its offer a PUBLISHED offer of it: both known from PARTNERS events.
absl::Status CheckHost(db::Conn& c, const v1::Session& s) {
  const std::string& org = s.organisation_id();
  if (const std::string& id = s.host_contact_id(); !id.empty()) {
    const std::string who = absl::StrCat("session.host_contact_id: contact ", id);
    auto h = store::GetPartnerContact(c, id);
    if (!h.ok()) return h.status();
    if (!h->has_value()) return NotYetKnown(who, "contactId", id);
    if ((*h)->organisation_id != org) {
      return server::FieldError("session.host_contact_id",
                                absl::StrCat("contact ", id, " is not at organisation ", org));
    }
    if ((*h)->removed) {
      return server::Refusal("HOST_REMOVED",
                             absl::StrCat(who, " has been removed from its organisation"),
                             {{"contactId", id}});
    }
  }
  return absl::OkStatus();
}

absl::Status CheckHostAndOffer(db::Conn& c, const v1::Session& s) {
  if (absl::Status st = CheckHost(c, s); !st.ok()) return st;
  const std::string& org = s.organisation_id();
  if (const std::string& id = s.offer_id(); !id.empty()) {
    const std::string what = absl::StrCat("session.offer_id: offer ", id);
    auto o = store::GetPartnerOffer(c, id);
    if (!o.ok()) return o.status();
    if (!o->has_value()) return NotYetKnown(what, "offerId", id);
    if ((*o)->organisation_id != org) {
      return server::FieldError("session.offer_id",
                                absl::StrCat("offer ", id, " is not at organisation ", org));
    }
    if ((*o)->state != pv1::OFFER_STATE_PUBLISHED) {
      const std::string& state = pv1::OfferState_Name(static_cast<pv1::OfferState>((*o)->state));
      return server::Refusal(
          "OFFER_NOT_PUBLISHED",
          absl::StrCat(what, " is ", state, "; sessions come only from PUBLISHED offers"),
          {{"offerId", id}, {"state", state}});
    }
  }
  return absl::OkStatus();
}

// Every writer that holds more than one site's seats at once takes them in
// this order (session id, then site): group-committed bookings, moves,
// session cancellations and deactivations. Session ids are UUIDs of one
// length, so the text compares as the pair, and as ORDER BY session_id, site.
std::string SiteLockOrder(const std::string& session_id, const std::string& site) {
  return absl::StrCat(session_id, "\x1f", site);
}

// A request_id already used for another request (another session, site or
// person): ALREADY_EXISTS rather than that request's booking, which the caller
// did not ask for. The booking is named only to the same person's request.
absl::Status BookingKeyReused(const v1::Booking& prior, const std::string& participant_id) {
  if (prior.participant_id() != participant_id) return server::RequestIdReused("booking");
  return server::WithReason(absl::AlreadyExistsError(absl::StrCat(
                                "request_id: already used for booking ", prior.id(), " (session ",
                                prior.session_id(), "), another request")),
                            "REQUEST_ID_REUSED", {{"bookingId", prior.id()}});
}

// The status for book_sites' outcome: OK for booked and for prior (a
// retry of the same request), else the refusal naming the rule (or the
// field) that refused it.
absl::Status BookingRefusal(const store::Booked& b, const std::string& session_id,
                            const std::string& participant_id, const std::string& site) {
  const std::string& o = b.outcome;
  const v1::Session& s = b.session;
  if (o == "booked") return absl::OkStatus();
  if (o == "prior") {
    const v1::Booking& prior = b.booking;
    if (prior.session_id() != session_id || prior.participant_id() != participant_id ||
        prior.site() != site) {
      return BookingKeyReused(prior, participant_id);
    }
    return absl::OkStatus();
  }
  if (o == "no_participant") {
    return NotFound("participant", participant_id);
  }
  if (o == "participant_inactive") {
    return server::Refusal(
        "PARTICIPANT_INACTIVE",
        absl::StrCat("participant ", participant_id, " is INACTIVE and cannot book"),
        {{"participantId", participant_id}});
  }
  if (o == "no_session") {
    return NotFound("session", session_id);
  }
  if (o == "not_scheduled") {
    const std::string& status =
        v1::SessionStatus_Name(static_cast<v1::SessionStatus>(b.session_status));
    return server::Refusal("SESSION_NOT_SCHEDULED",
                           absl::StrCat("session ", session_id, " is ", status,
                                        "; only SCHEDULED sessions take bookings"),
                           {{"sessionId", session_id}, {"status", status}});
  }
  if (o == "began") {
    return server::Refusal(
        "SESSION_BEGAN",
        absl::StrCat("session ", session_id, " began at ", s.date(), " ", s.start_time(),
                     "; it takes no more bookings"),
        {{"sessionId", session_id}, {"date", s.date()}, {"startTime", s.start_time()}});
  }
  if (o == "partner_inactive") return PartnerRefusal(s.organisation_id(), b.partner_status);
  if (o == "site_not_allowed") {
    return server::FieldError("site", "only department events have sites; leave it empty");
  }
  if (o == "site_required") {
    return server::FieldError("site", "is required for a department event (one of its sites)");
  }
  if (o == "no_site") {
    return server::FieldError("site", absl::StrCat("session has no site named \"", site, "\""));
  }
  if (o == "live_on_session") {
    return server::WithReason(absl::AlreadyExistsError(absl::StrCat(
                                  "participant ", participant_id, " already holds booking ",
                                  b.detail, " on session ", session_id)),
                              "ALREADY_BOOKED", {{"bookingId", b.detail}});
  }
  if (o == "frontline_on_date") {
    return server::Refusal(
        "FRONTLINE_VISIT_ON_DATE",
        absl::StrCat("participant ", participant_id, " already has confirmed frontline visit ",
                     b.detail, " on ", s.date(),
                     " (a connector holds at most one confirmed frontline visit per date)"),
        {{"bookingId", b.detail}, {"date", s.date()}});
  }
  if (o == "retry") {
    return server::WithReason(
        absl::AbortedError("a conflicting booking changed while this one was made; retry"),
        "CONCURRENT_CHANGE");
  }
  return absl::InternalError(absl::StrCat("book_sites: unknown outcome \"", o, "\""));
}

absl::StatusOr<std::vector<std::string>> Token(const server::PageTokens& tokens,
                                               const std::string& scope, const std::string& token,
                                               size_t parts) {
  if (token.empty()) return std::vector<std::string>();
  auto v = tokens.Decode(scope, token);
  if (!v.ok()) return v.status();
  if (v->size() != parts) return server::FieldError("page_token", "is malformed");
  return v;
}

void CheckDateFilter(FieldErrors& e, const char* field, const std::string& v) {
  if (!v.empty() && !IsDate(v)) e.Add(field, "must be a date written YYYY-MM-DD");
}

// Whether `b` holds its connector's date: a CONFIRMED frontline visit (one
// per date). Ending it may free them for a seat elsewhere that date
// (PromoteWhereFreed); the view waiting_who_could_take_a_seat says the same
// in SQL.
bool HoldsTheDate(const v1::Booking& b, const v1::Session& session) {
  return b.status() == kConfirmed && session.kind() == v1::SESSION_KIND_FRONTLINE_VISIT;
}

// Who the service is when it acts of itself (the seat hand-ons and sweep).
server::Principal SystemPrincipal(const char* subject) {
  server::Principal p;
  p.role = Role::kSystem;
  p.subject = subject;
  return p;
}

// connecting_seats_handed_on_total{by}: seats PromoteWhereFreed handed on.
// Any by "sweep" means a change's own hand-on did not happen (a process
// stopped in between, or the hand-on failed: see the warning it logged).
prometheus::Counter& HandedOn(SchedulingLogic::HandOnBy by) {
  static auto& family = prometheus::BuildCounter()
                            .Name("connecting_seats_handed_on_total")
                            .Help(
                                "Seats left free while someone waiting could take them, handed "
                                "on, by what found them: the change that freed the person "
                                "(change), the next booking there (booking), the seat sweep "
                                "(sweep)")
                            .Register(*metrics::Registry());
  static prometheus::Counter* counters[] = {&family.Add({{"by", "change"}}),
                                            &family.Add({{"by", "booking"}}),
                                            &family.Add({{"by", "sweep"}})};
  return *counters[static_cast<int>(by)];
}

}  // namespace

SchedulingLogic::SchedulingLogic(db::Pool& pool, const bus::Outbox& outbox,
                                 const server::PageTokens& tokens,
                                 db::GroupCommitter::Schedule schedule, int booking_lanes,
                                 absl::Duration booking_lock_wait)
    : pool_(pool),
      outbox_(outbox),
      tokens_(tokens),
      booking_lanes_(booking_lanes > 0 ? booking_lanes : 1),
      schedule_(schedule),
      // A batch takes the people it books before any seats (store.h), books
      // in one statement (store::BookRun), and writes its events in one.
      bookings_(pool, "bookings", std::move(schedule), /*max_batch=*/64, /*max_pending=*/4096,
                store::ShareParticipants, booking_lock_wait, store::BookRun, bus::MergeOutboxRows) {
  HandedOn(HandOnBy::kChange);  // exported from the start, at 0
}

// ------------------------------------------------------------ partner events

namespace {

// Reads a partners event's JSON into `e`; fields only newer producers send are ignored.
absl::Status ParseEvent(const bus::Delivery& event, google::protobuf::Message* e) {
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = true;
  if (!google::protobuf::util::JsonStringToMessage(event.payload, e, opts).ok()) {
    return absl::InvalidArgumentError(absl::StrCat("unreadable ", event.type, " payload"));
  }
  return absl::OkStatus();
}

// Projections order versions by the etag partners gives each resource.
absl::StatusOr<int64_t> VersionOf(const std::string& etag, const char* what) {
  int64_t version = 0;
  if (!absl::SimpleAtoi(etag, &version)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " etag is not a version number"));
  }
  return version;
}

}  // namespace

absl::Status ApplyPartnerEvent(db::Conn& tx, const bus::Delivery& event) {
  const std::string& t = event.type;
  const absl::string_view kPrefix = "connecting.events.v1.";
  if (!absl::StartsWith(t, kPrefix)) return absl::OkStatus();
  absl::string_view name = absl::string_view(t).substr(kPrefix.size());
  if (absl::StartsWith(name, "Organisation")) {
    // Every organisation event carries `organisation`; read them all through
    // one message type, ignoring the fields only some have.
    ev::OrganisationArchived e;
    if (absl::Status s = ParseEvent(event, &e); !s.ok()) return s;
    const pv1::Organisation& o = e.organisation();
    if (o.id().empty()) return absl::InvalidArgumentError(absl::StrCat(t, " without organisation"));
    auto version = VersionOf(o.etag(), "organisation");
    if (!version.ok()) return version.status();
    return store::UpsertPartner(tx, {o.id(), o.name(), o.status(), o.sector(), o.region()},
                                *version);
  }
  if (name == "ContactRemoved") {
    ev::ContactRemoved e;
    if (absl::Status s = ParseEvent(event, &e); !s.ok()) return s;
    if (e.contact_id().empty()) return absl::InvalidArgumentError("ContactRemoved without contact_id");
    return store::UpsertPartnerContact(tx, {e.contact_id(), e.organisation_id(), "", true}, 0);
  }
  if (name == "ContactCreated" || name == "ContactUpdated" || name == "ContactSnapshot") {
    ev::ContactUpdated e;  // each carries `contact`
    if (absl::Status s = ParseEvent(event, &e); !s.ok()) return s;
    const pv1::Contact& c = e.contact();
    if (c.id().empty()) return absl::InvalidArgumentError(absl::StrCat(t, " without contact"));
    auto version = VersionOf(c.etag(), "contact");
    if (!version.ok()) return version.status();
    return store::UpsertPartnerContact(tx, {c.id(), c.organisation_id(), c.display_name(), false},
                                       *version);
  }
  if (absl::StartsWith(name, "Offer")) {
    ev::OfferUpdated e;  // every offer event carries `offer`
    if (absl::Status s = ParseEvent(event, &e); !s.ok()) return s;
    const pv1::Offer& o = e.offer();
    if (o.id().empty()) return absl::InvalidArgumentError(absl::StrCat(t, " without offer"));
    auto version = VersionOf(o.etag(), "offer");
    if (!version.ok()) return version.status();
    return store::UpsertPartnerOffer(tx, {o.id(), o.organisation_id(), o.title(), o.state()},
                                     *version);
  }
  return absl::OkStatus();  // not needed here
}

// -------------------------------------------------------------- participants

absl::Status SchedulingLogic::RegisterParticipant(const Call& call,
                                                  const v1::RegisterParticipantRequest& req,
                                                  v1::Participant* resp) {
  if (absl::Status s = RequireStaff(call.principal, "register participants"); !s.ok()) return s;
  FieldErrors e;
  v1::Participant p = req.participant();
  if (!req.has_participant())
    e.Add("participant", "is required");
  else
    ValidateParticipant(e, "participant", p);
  server::CheckRequestId(e, "request_id", req.request_id());
  if (!e.empty()) return e.ToStatus();
  return db::Transact(pool_, Tx(call), [&](db::Conn& c) -> absl::Status {
    auto created = server::CreateOnce(
        req.request_id(), "participant",
        [&] { return store::ParticipantByRequestId(c, req.request_id()); },
        [&]() -> absl::StatusOr<std::optional<v1::Participant>> {
          auto ins = store::InsertParticipant(c, p, req.request_id());
          if (!ins.ok() && absl::IsAlreadyExists(ins.status()) &&
              db::ConstraintOf(ins.status()) == "participants_staff_number_key") {
            return server::WithReason(
                absl::AlreadyExistsError(absl::StrCat(
                    "participant.staff_number: ", p.staff_number(), " is already registered")),
                "STAFF_NUMBER_TAKEN", {{"staffNumber", p.staff_number()}});
          }
          return ins;
        },
        [&](const v1::Participant& prior) { return prior.staff_number() == p.staff_number(); },
        resp);
    if (!created.ok() || !*created) return created.status();
    ev::ParticipantRegistered event;
    *event.mutable_participant() = *resp;
    return outbox_.Emit(c, "participant.registered", resp->id(), event, call.traceparent);
  });
}

absl::Status SchedulingLogic::GetParticipant(const Call& call, const v1::GetParticipantRequest& req,
                                             v1::Participant* resp) {
  if (absl::Status s = server::CheckUuid("id", req.id()); !s.ok()) return s;
  if (absl::Status s = MayReadParticipant(call.principal, req.id()); !s.ok()) return s;
  return db::WithConnection(pool_, call.deadline, [&](db::Conn& c) -> absl::Status {
    auto p = store::GetParticipant(c, req.id(), false);
    if (!p.ok()) return p.status();
    *resp = *std::move(p);
    return absl::OkStatus();
  });
}

absl::Status SchedulingLogic::ListParticipants(const Call& call,
                                               const v1::ListParticipantsRequest& req,
                                               v1::ListParticipantsResponse* resp) {
  if (!call.principal.is_staff() && call.principal.role != Role::kViewer) {
    return server::NotPermitted(call.principal, "only staff and viewers may list participants");
  }
  FieldErrors e;
  int limit = server::PageSize(e, req.page_size());
  if (!v1::Grade_IsValid(req.grade())) e.Add("grade", "unknown value");
  if (!v1::ParticipantStatus_IsValid(req.status())) e.Add("status", "unknown value");
  std::string dir = server::CheckText(e, "directorate", req.directorate(), {0, 100});
  std::string staff_number = CheckStaffNumber(e, "staff_number", req.staff_number(), false);
  std::string prefix = server::CheckText(e, "name_prefix", req.name_prefix(), {0, 200});
  if (!e.empty()) return e.ToStatus();
  std::string scope = absl::StrCat("ListParticipants|", req.grade(), "|", req.status(), "|", dir,
                                   "|", staff_number, "|", prefix);
  auto after = Token(tokens_, scope, req.page_token(), 2);
  if (!after.ok()) return after.status();
  return db::WithConnection(pool_, call.deadline, [&](db::Conn& c) -> absl::Status {
    auto rows = store::ListParticipants(c, {req.grade(), req.status(), dir, staff_number, prefix},
                                        *after, limit + 1);
    if (!rows.ok()) return rows.status();
    resp->Clear();
    for (int i = 0; i < static_cast<int>(rows->size()) && i < limit; ++i) {
      *resp->add_participants() = (*rows)[i];
    }
    if (static_cast<int>(rows->size()) > limit) {
      const auto& last = (*rows)[limit - 1];
      resp->set_next_page_token(tokens_.Encode(scope, {last.display_name(), last.id()}));
    }
    return absl::OkStatus();
  });
}

absl::Status SchedulingLogic::UpdateParticipant(const Call& call,
                                                const v1::UpdateParticipantRequest& req,
                                                v1::Participant* resp) {
  FieldErrors e;
  const v1::Participant& in = req.participant();
  server::CheckUuid(e, "participant.id", in.id(), true);
  if (in.etag().empty()) e.Add("participant.etag", "is required (the etag from your last read)");
  server::ValidateMask(e, req.update_mask(), {"display_name", "email", "grade", "directorate"});
  if (!e.empty()) return e.ToStatus();
  if (absl::Status s = MayActFor(call.principal, in.id()); !s.ok()) return s;
  return db::Transact(pool_, Tx(call), [&](db::Conn& c) -> absl::Status {
    auto cur = store::GetParticipant(c, in.id(), true);
    if (!cur.ok()) return cur.status();
    return server::UpdateByMask(
        "participant", in, req.update_mask(), *std::move(cur),
        server::ValidatedBy(ValidateParticipant, "participant"),
        [&](const v1::Participant& merged) { return store::UpdateParticipant(c, merged); },
        [&](const v1::Participant& updated, const std::vector<std::string>& changed) {
          return outbox_.Emit(
              c, "participant.updated", updated.id(),
              server::UpdatedEvent(&ev::ParticipantUpdated::mutable_participant, updated, changed),
              call.traceparent);
        },
        resp);
  });
}

absl::Status SchedulingLogic::DeactivateParticipant(const Call& call,
                                                    const v1::DeactivateParticipantRequest& req,
                                                    v1::Participant* resp) {
  if (absl::Status s = server::CheckUuid("id", req.id()); !s.ok()) return s;
  if (absl::Status s = RequireStaff(call.principal, "deactivate participants"); !s.ok()) return s;
  // The person leaving is held with anyone first in line, in one id order.
  return TransactPromoting(call, req.id(), [&](db::Conn& c) -> absl::Status {
    auto cur = store::GetParticipant(c, req.id(), true);
    if (!cur.ok()) return cur.status();
    // Already done answers before the etag, which the change itself made
    // stale: a retry of a call whose reply was lost learns it took effect.
    if (cur->status() == v1::PARTICIPANT_STATUS_INACTIVE) {
      return server::Refusal("ALREADY_IN_STATE", "the participant is already INACTIVE",
                             {{"status", v1::ParticipantStatus_Name(cur->status())}});
    }
    if (absl::Status s = server::CheckEtag("participant", req.etag(), cur->etag()); !s.ok()) {
      return s;
    }
    // Someone who leaves the programme frees their seats for the waitlists.
    auto live = store::FutureLiveBookingsOf(c, req.id());
    if (!live.ok()) return live.status();
    for (const std::string& booking_id : *live) {
      // One cancelled or moved meanwhile is no longer live: nothing to free.
      auto cancelled = CancelInTx(c, call, booking_id, true, /*only_if_live=*/true);
      if (!cancelled.ok()) return cancelled.status();
    }
    // Visits they arranged that no host has accepted yet could never be
    // accepted now (the arranger cannot be booked): cancelled, each with
    // its event, so the hosts hear of it.
    auto pending = store::PendingSessionsArrangedBy(c, req.id());
    if (!pending.ok()) return pending.status();
    for (const std::string& session_id : *pending) {
      if (absl::Status st = CancelSessionInTx(c, call, session_id,
                                              "the connector who arranged it left the programme");
          !st.ok()) {
        return st;
      }
    }
    auto up = store::SetParticipantStatus(c, req.id(), v1::PARTICIPANT_STATUS_INACTIVE);
    if (!up.ok()) return up.status();
    *resp = *std::move(up);
    ev::ParticipantDeactivated event;
    *event.mutable_participant() = *resp;
    return outbox_.Emit(c, "participant.deactivated", resp->id(), event, call.traceparent);
  });
}

// ------------------------------------------------------------------ sessions

absl::Status SchedulingLogic::EmitSession(db::Conn& tx, const Call& call, const char* verb,
                                          const std::string& session_id,
                                          const std::string& reason) {
  auto s = store::GetSession(tx, session_id, false);
  if (!s.ok()) return s.status();
  std::string v(verb);
  if (v == "created") {
    ev::SessionCreated e;
    *e.mutable_session() = *s;
    return outbox_.Emit(tx, "session.created", session_id, e, call.traceparent);
  }
  if (v == "accepted") {
    ev::SessionAccepted e;
    *e.mutable_session() = *s;
    return outbox_.Emit(tx, "session.accepted", session_id, e, call.traceparent);
  }
  if (v == "cancelled") {
    ev::SessionCancelled e;
    *e.mutable_session() = *s;
    e.set_reason(reason);
    return outbox_.Emit(tx, "session.cancelled", session_id, e, call.traceparent);
  }
  ev::SessionCompleted e;
  *e.mutable_session() = *s;
  return outbox_.Emit(tx, "session.completed", session_id, e, call.traceparent);
}

absl::Status SchedulingLogic::CreateSession(const Call& call, const v1::CreateSessionRequest& req,
                                            v1::Session* resp) {
  FieldErrors e;
  v1::Session s = req.session();
  if (!req.has_session())
    e.Add("session", "is required");
  else
    ValidateSession(e, "session", s);
  server::CheckRequestId(e, "request_id", req.request_id());
  if (!e.empty()) return e.ToStatus();
  const server::Principal& p = call.principal;
  bool arranged = p.role == Role::kParticipant;
  if (!p.is_staff() && !arranged) {
    return server::NotPermitted(
        p, absl::StrCat("role ", server::RoleName(p.role), " may not create sessions"));
  }
  if (arranged) {
    if (s.kind() != v1::SESSION_KIND_FRONTLINE_VISIT) {
      return server::NotPermitted(p, "a participant may arrange only frontline visits");
    }
    if (s.host_contact_id().empty()) {
      return server::FieldError("session.host_contact_id",
                                "is required when you arrange your own visit (one of your "
                                "enduring contacts)");
    }
    s.set_arranged_by(p.participant_id);
    s.set_status(v1::SESSION_STATUS_PENDING_HOST);
  } else {
    s.set_arranged_by("");
    s.set_status(v1::SESSION_STATUS_SCHEDULED);
  }
  return db::Transact(pool_, Tx(call), [&](db::Conn& c) -> absl::Status {
    auto created = server::CreateOnce(
        req.request_id(), "session", [&] { return store::SessionByRequestId(c, req.request_id()); },
        [&]() -> absl::StatusOr<std::optional<v1::Session>> {
          if (auto org = ActivePartner(c, s.organisation_id()); !org.ok()) return org.status();
          if (absl::Status st = CheckHostAndOffer(c, s); !st.ok()) return st;
          if (arranged) {
            // FOR SHARE: a deactivation in progress is waited for, and then
            // its INACTIVE seen (it cancels the pending visits it can see).
            auto who = store::GetParticipantShared(c, p.participant_id);
            if (!who.ok()) return who.status();
            if (who->status() != v1::PARTICIPANT_STATUS_ACTIVE) {
              return server::Refusal("PARTICIPANT_INACTIVE",
                                     absl::StrCat("participant ", p.participant_id,
                                                  " is INACTIVE and cannot arrange visits"),
                                     {{"participantId", p.participant_id}});
            }
            // A visit on a date they are already out on could never be
            // accepted (one confirmed frontline visit per date).
            auto taken = store::ConfirmedFrontlineOn(c, p.participant_id, s.date());
            if (!taken.ok()) return taken.status();
            if (taken->has_value()) {
              return server::Refusal(
                  "FRONTLINE_VISIT_ON_DATE",
                  absl::StrCat(
                      "session.date: you already have confirmed frontline visit ", **taken, " on ",
                      s.date(),
                      " (a connector holds at most one confirmed frontline visit per date)"),
                  {{"bookingId", **taken}, {"date", s.date()}});
            }
            auto met = store::HasMetHost(c, p.participant_id, s.host_contact_id());
            if (!met.ok()) return met.status();
            if (!*met) {
              return server::Refusal(
                  "NOT_AN_ENDURING_CONTACT",
                  "session.host_contact_id: not one of your enduring contacts (a host you met on "
                  "an attended visit)",
                  {{"contactId", s.host_contact_id()}});
            }
          }
          auto id = store::InsertSession(c, s, req.request_id());
          if (!id.ok()) return id.status();
          if (!id->has_value()) return std::optional<v1::Session>();
          auto session = store::GetSession(c, **id, false);
          if (!session.ok()) return session.status();
          return std::optional<v1::Session>(*std::move(session));
        },
        // The kind, the partner and who arranged it never change; a title or
        // date may have since.
        [&](const v1::Session& prior) {
          return prior.kind() == s.kind() && prior.organisation_id() == s.organisation_id() &&
                 prior.arranged_by() == s.arranged_by();
        },
        resp);
    if (!created.ok() || !*created) return created.status();
    return EmitSession(c, call, "created", resp->id(), "");
  });
}

absl::Status SchedulingLogic::GetSession(const Call& call, const v1::GetSessionRequest& req,
                                         v1::Session* resp) {
  if (absl::Status s = server::CheckUuid("id", req.id()); !s.ok()) return s;
  return db::WithConnection(pool_, call.deadline, [&](db::Conn& c) -> absl::Status {
    auto s = store::GetSession(c, req.id(), false);
    if (!s.ok()) return s.status();
    if (call.principal.role == Role::kPartner &&
        s->organisation_id() != call.principal.organisation_id) {
      return server::NotPermitted(call.principal,
                                  "a partner sees only sessions at its organisation");
    }
    *resp = *std::move(s);
    return absl::OkStatus();
  });
}

absl::Status SchedulingLogic::ListSessions(const Call& call, const v1::ListSessionsRequest& req,
                                           v1::ListSessionsResponse* resp) {
  FieldErrors e;
  int limit = server::PageSize(e, req.page_size());
  CheckDateFilter(e, "from_date", req.from_date());
  CheckDateFilter(e, "to_date", req.to_date());
  if (!v1::SessionKind_IsValid(req.kind())) e.Add("kind", "unknown value");
  if (!v1::SessionStatus_IsValid(req.status())) {
    e.Add("status", "unknown value");
  } else if (req.with_free_seats() && req.status() != v1::SESSION_STATUS_UNSPECIFIED &&
             req.status() != v1::SESSION_STATUS_SCHEDULED) {
    e.Add("status",
          "must be unset or SESSION_STATUS_SCHEDULED with with_free_seats (only a scheduled "
          "session can be booked)");
  }
  server::CheckUuid(e, "organisation_id", req.organisation_id(), false);
  server::CheckUuid(e, "host_contact_id", req.host_contact_id(), false);
  if (!e.empty()) return e.ToStatus();
  store::SessionFilter f{req.from_date(), req.to_date(),         req.organisation_id(), req.kind(),
                         req.status(),    req.host_contact_id(), req.with_free_seats()};
  if (call.principal.role == Role::kPartner) {
    if (!f.organisation_id.empty() && f.organisation_id != call.principal.organisation_id) {
      return server::NotPermitted(call.principal,
                                  "a partner sees only sessions at its organisation");
    }
    f.organisation_id = call.principal.organisation_id;
  }
  std::string scope =
      absl::StrCat("ListSessions|", f.from_date, "|", f.to_date, "|", f.kind, "|", f.status, "|",
                   f.organisation_id, "|", f.host_contact_id, "|", f.with_free_seats);
  auto after = Token(tokens_, scope, req.page_token(), 3);
  if (!after.ok()) return after.status();
  return db::WithConnection(pool_, call.deadline, [&](db::Conn& c) -> absl::Status {
    auto rows = store::ListSessions(c, f, *after, limit + 1);
    if (!rows.ok()) return rows.status();
    resp->Clear();
    for (int i = 0; i < static_cast<int>(rows->size()) && i < limit; ++i) {
      *resp->add_sessions() = (*rows)[i];
    }
    if (static_cast<int>(rows->size()) > limit) {
      const auto& last = (*rows)[limit - 1];
      resp->set_next_page_token(tokens_.Encode(scope, {last.date(), last.start_time(), last.id()}));
    }
    return absl::OkStatus();
  });
}

absl::Status SchedulingLogic::UpdateSession(const Call& call, const v1::UpdateSessionRequest& req,
                                            v1::Session* resp) {
  FieldErrors e;
  const v1::Session& in = req.session();
  server::CheckUuid(e, "session.id", in.id(), true);
  if (in.etag().empty()) e.Add("session.etag", "is required (the etag from your last read)");
  server::ValidateMask(
      e, req.update_mask(),
      {"title", "date", "start_time", "end_time", "host_contact_id", "broadcast_link", "sites"});
  if (!e.empty()) return e.ToStatus();
  return TransactPromoting(call, "", [&](db::Conn& c) -> absl::Status {
    // The session row, then its sites (as CancelSession): bookings in
    // flight finish first, so the seats counted below are all there are.
    auto cur = store::GetSession(c, in.id(), true);
    if (!cur.ok()) return cur.status();
    if (absl::Status st = MayManageSession(call.principal, *cur); !st.ok()) return st;
    if (in.etag() != cur->etag()) return server::StaleEtag("session", cur->etag());
    if (cur->status() != v1::SESSION_STATUS_SCHEDULED &&
        cur->status() != v1::SESSION_STATUS_PENDING_HOST) {
      return server::Refusal(
          "WRONG_STATE",
          absl::StrCat("only a SCHEDULED or PENDING_HOST session can be changed; it is ",
                       v1::SessionStatus_Name(cur->status())),
          {{"status", v1::SessionStatus_Name(cur->status())}});
    }
    if (absl::Now() >= LocalInstant(cur->date(), cur->start_time())) {
      return server::Refusal(
          "SESSION_BEGAN",
          absl::StrCat("the session began at ", cur->date(), " ", cur->start_time(),
                       "; it can no longer be changed"),
          {{"sessionId", cur->id()}, {"date", cur->date()}, {"startTime", cur->start_time()}});
    }
    if (absl::Status st = store::LockSites(c, in.id()); !st.ok()) return st;
    auto seats = store::GetSession(c, in.id(), false);  // the counters, now settled
    if (!seats.ok()) return seats.status();
    const v1::Session before = *std::move(seats);

    v1::Session merged = before;
    server::ApplyMask(in, req.update_mask(), &merged);
    FieldErrors errs;
    ValidateSession(errs, "session", merged);
    // Only capacities change: the same sites, in their order (so unless
    // "sites" is masked).
    bool same_sites = merged.sites_size() == before.sites_size();
    for (int i = 0; same_sites && i < merged.sites_size(); ++i) {
      same_sites = merged.sites(i).name() == before.sites(i).name();
    }
    if (!same_sites) {
      std::vector<std::string> names;
      for (const v1::Site& site : before.sites()) {
        names.push_back(absl::StrCat("\"", site.name(), "\""));
      }
      errs.Add("session.sites",
               absl::StrCat("must list the session's sites, in order (", absl::StrJoin(names, ", "),
                            "), each with its capacity; sites are not added or removed"));
    }
    if (errs.empty() && absl::Now() >= LocalInstant(merged.date(), merged.start_time())) {
      errs.Add("session.start_time", "must be later than now");
    }
    if (!errs.empty()) return errs.ToStatus();
    // The counters are the service's, not the caller's.
    for (int i = 0; i < merged.sites_size(); ++i) {
      merged.mutable_sites(i)->set_confirmed(before.sites(i).confirmed());
      merged.mutable_sites(i)->set_waitlisted(before.sites(i).waitlisted());
    }
    v1::Session unchanged = before;
    std::vector<std::string> changed = server::ApplyMask(merged, req.update_mask(), &unchanged);
    if (changed.empty()) {
      *resp = before;
      return absl::OkStatus();
    }
    auto did_change = [&changed](const char* path) {
      return std::find(changed.begin(), changed.end(), path) != changed.end();
    };
    for (int i = 0; i < merged.sites_size(); ++i) {
      const v1::Site& site = merged.sites(i);
      if (site.capacity() < site.confirmed()) {
        return server::Refusal(
            "CAPACITY_BELOW_CONFIRMED",
            absl::StrCat("session.sites[", i, "].capacity: ", site.confirmed(),
                         " bookings are confirmed there already; cancel or move some first"),
            {{"site", site.name()}, {"confirmed", absl::StrCat(site.confirmed())}});
      }
    }
    if (did_change("date")) {
      int live = 0;
      for (const v1::Site& site : before.sites()) live += site.confirmed() + site.waitlisted();
      if (live > 0) {
        return server::Refusal(
            "SESSION_HAS_BOOKINGS",
            absl::StrCat(
                "session.date: the session has ", live,
                " live bookings; move them (RescheduleBooking) or cancel the session and create "
                "another"),
            {{"liveBookings", absl::StrCat(live)}});
      }
    }
    if (did_change("host_contact_id")) {  // its offer was checked when it was created
      if (absl::Status st = CheckHost(c, merged); !st.ok()) return st;
    }
    if (absl::Status st = store::UpdateSession(c, merged); !st.ok()) return st;
    // Seats added go to whoever waits, first come first served.
    for (int i = 0; i < merged.sites_size(); ++i) {
      if (before.sites(i).waitlisted() == 0) continue;
      if (absl::Status st = FillSeats(c, call, merged, merged.sites(i).name(),
                                      merged.sites(i).capacity() - before.sites(i).confirmed());
          !st.ok()) {
        return st;
      }
    }
    auto after = store::GetSession(c, in.id(), false);
    if (!after.ok()) return after.status();
    *resp = *std::move(after);
    return outbox_.Emit(c, "session.updated", resp->id(),
                        server::UpdatedEvent(&ev::SessionUpdated::mutable_session, *resp, changed),
                        call.traceparent);
  });
}

absl::Status SchedulingLogic::AcceptSession(const Call& call, const v1::AcceptSessionRequest& req,
                                            v1::Session* resp) {
  if (absl::Status s = server::CheckUuid("id", req.id()); !s.ok()) return s;
  return db::Transact(pool_, Tx(call), [&](db::Conn& c) -> absl::Status {
    // The arranger before the session row, as a deactivation locks them
    // (the leaver, then the pending visits it cancels); who arranged a
    // session never changes, so the unlocked read names them.
    auto peek = store::GetSession(c, req.id(), false);
    if (!peek.ok()) return peek.status();
    if (!peek->arranged_by().empty()) {
      if (absl::Status st = store::GetParticipantShared(c, peek->arranged_by()).status();
          !st.ok()) {
        return st;
      }
    }
    auto s = store::GetSession(c, req.id(), true);
    if (!s.ok()) return s.status();
    if (absl::Status st = MayManageSession(call.principal, *s); !st.ok()) return st;
    if (s->status() != v1::SESSION_STATUS_PENDING_HOST) {
      return server::Refusal(
          s->status() == v1::SESSION_STATUS_SCHEDULED ? "ALREADY_IN_STATE" : "WRONG_STATE",
          absl::StrCat("only a PENDING_HOST session can be accepted; it is ",
                       v1::SessionStatus_Name(s->status())),
          {{"status", v1::SessionStatus_Name(s->status())}});
    }
    if (absl::Status st = store::SetSessionStatus(c, req.id(), v1::SESSION_STATUS_SCHEDULED);
        !st.ok()) {
      return st;
    }
    // The connector who arranged it is booked on it.
    if (!s->arranged_by().empty()) {
      auto b = BookInTx(c, call, s->id(), s->arranged_by(), "", "", true);
      if (!b.ok()) return b.status();
    }
    auto after = store::GetSession(c, req.id(), false);
    if (!after.ok()) return after.status();
    *resp = *std::move(after);
    return EmitSession(c, call, "accepted", req.id(), "");
  });
}

absl::Status SchedulingLogic::CancelSession(const Call& call, const v1::CancelSessionRequest& req,
                                            v1::Session* resp) {
  FieldErrors e;
  server::CheckUuid(e, "id", req.id(), true);
  std::string reason = server::CheckText(e, "reason", req.reason(), {0, 500, true});
  if (!e.empty()) return e.ToStatus();
  absl::Status st = db::Transact(pool_, Tx(call), [&](db::Conn& c) -> absl::Status {
    auto s = store::GetSession(c, req.id(), true);
    if (!s.ok()) return s.status();
    // The connector who arranged a visit may withdraw it until the host
    // accepts; after that others may have booked it too, and they cancel
    // their own booking instead.
    const server::Principal& p = call.principal;
    const bool arranger = p.role == Role::kParticipant && !s->arranged_by().empty() &&
                          p.participant_id == s->arranged_by();
    if (!arranger) {
      if (absl::Status st = MayManageSession(p, *s); !st.ok()) return st;
    }
    if (s->status() == v1::SESSION_STATUS_CANCELLED ||
        s->status() == v1::SESSION_STATUS_COMPLETED) {
      return server::Refusal(
          s->status() == v1::SESSION_STATUS_CANCELLED ? "ALREADY_IN_STATE" : "WRONG_STATE",
          absl::StrCat("the session is already ", v1::SessionStatus_Name(s->status())),
          {{"status", v1::SessionStatus_Name(s->status())}});
    }
    if (arranger && s->status() != v1::SESSION_STATUS_PENDING_HOST) {
      return server::Refusal(
          "HOST_ACCEPTED",
          absl::StrCat("the host accepted this visit (it is ", v1::SessionStatus_Name(s->status()),
                       "); cancel your booking on it, or ask the programme team or the partner"),
          {{"status", v1::SessionStatus_Name(s->status())}});
    }
    if (absl::Status st = CancelSessionInTx(c, call, req.id(), reason); !st.ok()) return st;
    auto after = store::GetSession(c, req.id(), false);
    if (!after.ok()) return after.status();
    *resp = *std::move(after);
    return absl::OkStatus();
  });
  // This visit may have kept those booked on it from seats elsewhere that date.
  if (st.ok()) PromoteWhereFreed(call, HandOnBy::kChange, "", req.id());
  return st;
}

absl::Status SchedulingLogic::CancelSessionInTx(db::Conn& c, const Call& call,
                                                const std::string& session_id,
                                                const std::string& reason) {
  if (absl::Status st = store::SetSessionStatus(c, session_id, v1::SESSION_STATUS_CANCELLED);
      !st.ok()) {
    return st;
  }
  std::string why = reason.empty() ? "session cancelled" : "session cancelled: " + reason;
  if (absl::Status st = EndBookings(c, call, session_id, /*waitlisted_only=*/false, why);
      !st.ok()) {
    return st;
  }
  return EmitSession(c, call, "cancelled", session_id, reason);
}

absl::Status SchedulingLogic::EndBookings(db::Conn& c, const Call& call,
                                          const std::string& session_id, bool waitlisted_only,
                                          const std::string& why) {
  // Bookings take a site's lock, then read the session: holding every site
  // before reading the live bookings, this waits for bookings in flight (and
  // ends them too) rather than deadlocking with them on the session row
  // (their foreign key check) and the seat counters.
  if (absl::Status st = store::LockSites(c, session_id); !st.ok()) return st;
  auto live = store::LiveBookings(c, session_id, waitlisted_only);
  if (!live.ok()) return live.status();
  for (const std::string& id : *live) {
    if (absl::Status st = store::SetBookingStatus(c, id, kCancelled); !st.ok()) return st;
    if (absl::Status st = EmitBooking(c, call, "cancelled", id, why); !st.ok()) return st;
  }
  if (live->empty()) return absl::OkStatus();
  return store::ResetSeats(c, session_id, waitlisted_only);
}

absl::Status SchedulingLogic::CompleteSession(const Call& call,
                                              const v1::CompleteSessionRequest& req,
                                              v1::Session* resp) {
  if (absl::Status s = server::CheckUuid("id", req.id()); !s.ok()) return s;
  return db::Transact(pool_, Tx(call), [&](db::Conn& c) -> absl::Status {
    auto s = store::GetSession(c, req.id(), true);
    if (!s.ok()) return s.status();
    if (absl::Status st = MayManageSession(call.principal, *s); !st.ok()) return st;
    if (s->status() != v1::SESSION_STATUS_SCHEDULED) {
      return server::Refusal(
          s->status() == v1::SESSION_STATUS_COMPLETED ? "ALREADY_IN_STATE" : "WRONG_STATE",
          absl::StrCat("only a SCHEDULED session can be completed; it is ",
                       v1::SessionStatus_Name(s->status())),
          {{"status", v1::SessionStatus_Name(s->status())}});
    }
    if (absl::Now() < LocalInstant(s->date(), s->end_time())) {
      return server::Refusal(
          "SESSION_NOT_ENDED",
          absl::StrCat("the session has not ended yet (", s->date(), " ", s->end_time(), ")"),
          {{"sessionId", s->id()}, {"date", s->date()}, {"endTime", s->end_time()}});
    }
    if (absl::Status st = store::SetSessionStatus(c, req.id(), v1::SESSION_STATUS_COMPLETED);
        !st.ok()) {
      return st;
    }
    // Whoever still waits did not get a seat: told so, one event each.
    if (absl::Status st = EndBookings(c, call, req.id(), /*waitlisted_only=*/true,
                                      "the session took place; no seat became free");
        !st.ok()) {
      return st;
    }
    auto after = store::GetSession(c, req.id(), false);
    if (!after.ok()) return after.status();
    *resp = *std::move(after);
    return EmitSession(c, call, "completed", req.id(), "");
  });
}

// ------------------------------------------------------------------ bookings

absl::Status SchedulingLogic::EmitBooking(db::Conn& tx, const Call& call, const char* verb,
                                          const std::string& booking_id,
                                          const std::string& reason) {
  auto b = store::GetBooking(tx, booking_id, false);
  if (!b.ok()) return b.status();
  auto s = store::GetSession(tx, b->session_id(), false);
  if (!s.ok()) return s.status();
  ev::BookingChanged e;
  *e.mutable_booking() = *b;
  *e.mutable_session() = *s;
  e.set_reason(reason);
  return outbox_.Emit(tx, absl::StrCat("booking.", verb), booking_id, e, call.traceparent);
}

absl::StatusOr<std::vector<db::Statement>> SchedulingLogic::Booked(
    const Call& call, const db::Result& rows, int row, const std::string& session_id,
    const std::string& participant_id, const std::string& site, bool emit, v1::Booking* booking,
    bool* seat_owed) {
  auto b = store::ReadBooked(rows, row);
  if (!b.ok()) return b.status();
  if (absl::Status s = BookingRefusal(*b, session_id, participant_id, site); !s.ok()) return s;
  *booking = b->booking;
  if (b->outcome != "booked") return std::vector<db::Statement>();
  if (seat_owed != nullptr) {
    *seat_owed = b->booking.status() == kWaitlisted && b->seats.confirmed < b->seats.capacity;
  }
  if (!emit) return std::vector<db::Statement>();
  ev::BookingChanged e;
  *e.mutable_booking() = b->booking;
  *e.mutable_session() = b->session;
  bool confirmed = b->booking.status() == kConfirmed;
  auto event = outbox_.Prepare(confirmed ? "booking.confirmed" : "booking.waitlisted",
                               b->booking.id(), e, call.traceparent);
  if (!event.ok()) return event.status();
  return std::vector<db::Statement>{*std::move(event)};
}

absl::StatusOr<v1::Booking> SchedulingLogic::BookInTx(db::Conn& c, const Call& call,
                                                      const std::string& session_id,
                                                      const std::string& participant_id,
                                                      const std::string& site,
                                                      const std::string& request_id, bool emit) {
  db::Statement book = store::BookStatement(session_id, participant_id, site, request_id);
  auto rows = c.Exec(book.sql, book.params);
  if (!rows.ok()) return rows.status();
  v1::Booking booking;
  auto events = Booked(call, *rows, 0, session_id, participant_id, site, emit, &booking);
  if (!events.ok()) return events.status();
  for (const db::Statement& st : *events) {
    if (auto r = c.Exec(st.sql, st.params); !r.ok()) return r.status();
  }
  return booking;
}

absl::StatusOr<bool> SchedulingLogic::Promote(db::Conn& c, const Call& call,
                                              const v1::Session& session, const std::string& site) {
  if (session.status() != v1::SESSION_STATUS_SCHEDULED) return false;
  auto waiting = store::Waitlist(c, session.id(), site);
  if (!waiting.ok()) return waiting.status();
  const bool frontline = session.kind() == v1::SESSION_KIND_FRONTLINE_VISIT;
  bool passed_over = false;
  for (const auto& [booking_id, participant_id] : *waiting) {
    if (frontline) {
      auto other = store::ConfirmedFrontlineOn(c, participant_id, session.date());
      if (!other.ok()) return other.status();
      if (other->has_value()) {  // would break the one-visit-per-date rule
        passed_over = true;
        continue;
      }
      // A visit that date being confirmed elsewhere right now is not visible
      // yet: the unique index waits for it and, if it commits, refuses this
      // one. That person is skipped like the others, and the cancellation
      // or move that freed the seat still succeeds. The wait is brief: the
      // confirming transaction may itself be queued for this site's seats,
      // which we hold (a deadlock PostgreSQL would take a second to break).
      // Past it, the whole transaction starts again with its locks let go,
      // so that the other one can finish, and this time takes that person's
      // row before any seat, which waits for their booking in flight to end
      // (TransactPromoting); then it is known whether they were confirmed
      // elsewhere, and nobody is passed over on a guess.
      if (absl::Status s = c.ExecScript("SAVEPOINT promote; SET LOCAL lock_timeout = '200ms'");
          !s.ok()) {
        return s;
      }
      absl::Status s = store::SetBookingStatus(c, booking_id, kConfirmed);
      if (!s.ok() && db::IsLockNotAvailable(s)) {
        // The caller may be anyone booked on the session: the message names
        // nobody else.
        absl::Status retry = db::RetryTransaction(
            absl::StrCat("the person first in line for the seat freed on session ", session.id(),
                         " is being confirmed on another visit that date; try again"));
        retry.SetPayload(kFirstInLinePayload, absl::Cord(participant_id));
        return retry;
      }
      if (!s.ok() && db::ConstraintOf(s) == "bookings_one_frontline_per_date") {
        // Undoes the lock_timeout too.
        if (absl::Status r = c.ExecScript("ROLLBACK TO SAVEPOINT promote"); !r.ok()) return r;
        passed_over = true;
        continue;
      }
      if (!s.ok()) return s;
      if (absl::Status r =
              c.ExecScript("RELEASE SAVEPOINT promote; SET LOCAL lock_timeout TO DEFAULT");
          !r.ok()) {
        return r;
      }
    } else if (absl::Status s = store::SetBookingStatus(c, booking_id, kConfirmed); !s.ok()) {
      return s;
    }
    if (absl::Status s = store::AddSeats(c, session.id(), site, 1, -1); !s.ok()) return s;
    if (absl::Status s = EmitBooking(c, call, "promoted", booking_id, ""); !s.ok()) return s;
    return true;
  }
  if (passed_over && left_free_here != nullptr) left_free_here->insert(session.id());
  return false;
}

absl::Status SchedulingLogic::TransactPromoting(const Call& call, const std::string& holds,
                                                absl::FunctionRef<absl::Status(db::Conn&)> fn,
                                                bool hand_on_left_free) {
  // Whose confirmations elsewhere a promotion met in flight, over attempts.
  std::vector<std::string> first_in_line;
  std::set<std::string> left_free;
  std::set<std::string>* const outer = left_free_here;
  left_free_here = &left_free;
  absl::Status st = db::Transact(pool_, Tx(call), [&](db::Conn& c) -> absl::Status {
    left_free.clear();  // what an attempt rolled back noted went with it
    if (!first_in_line.empty()) {
      // Waits, within the call's deadline, for every booking of theirs in
      // flight to end (they hold these rows FOR SHARE), and keeps new ones
      // out until this commits. Taken before any seat, as bookings do, and
      // with `holds` in the same id order.
      std::vector<std::string> ids = first_in_line;
      if (!holds.empty()) ids.push_back(holds);
      if (absl::Status s = store::HoldParticipants(c, ids); !s.ok()) return s;
    }
    absl::Status s = fn(c);
    if (auto who = s.GetPayload(kFirstInLinePayload); who.has_value()) {
      first_in_line.push_back(std::string(*who));
    }
    return s;
  });
  left_free_here = outer;
  // A seat left free for someone passed over, who held a visit that date:
  // a change ending that visit at the same moment hands the seat on after
  // it commits (PromoteWhereFreed), but if it looked before this committed,
  // it saw no seat free. Looking again now, after this commit, closes the
  // gap: whichever of the two commits last sees what the other did.
  if (st.ok() && hand_on_left_free) {
    for (const std::string& session : left_free) {
      PromoteWhereFreed(call, HandOnBy::kChange, "", session);
    }
  }
  return st;
}

absl::Status SchedulingLogic::FillSeats(db::Conn& c, const Call& call, const v1::Session& session,
                                        const std::string& site, int free, int* filled) {
  for (; free > 0; --free) {
    auto promoted = Promote(c, call, session, site);
    if (!promoted.ok()) return promoted.status();
    if (!*promoted) break;
    if (filled != nullptr) ++*filled;
  }
  return absl::OkStatus();
}

void SchedulingLogic::PromoteWhereFreed(const Call& call, HandOnBy by,
                                        const std::string& participant,
                                        const std::string& session) {
  std::vector<std::pair<std::string, std::string>> sites;
  absl::Status st = db::WithConnection(pool_, call.deadline, [&](db::Conn& c) -> absl::Status {
    auto found = store::SeatsFreeForWaiting(c, participant, session);
    if (!found.ok()) return found.status();
    sites = *std::move(found);
    return absl::OkStatus();
  });
  for (const auto& [session_id, site] : sites) {
    if (!st.ok()) break;
    int filled = 0;
    // A seat this leaves free was free before it (committed): a change that
    // ends the visit of someone it passes over sees it after committing, so
    // it need not look again (TransactPromoting), nor start looking anew.
    st = TransactPromoting(
        call, "",
        [&](db::Conn& c) -> absl::Status {
          filled = 0;
          auto seats = store::LockSite(c, session_id, site);
          if (!seats.ok()) return seats.status();
          if (!seats->has_value()) return absl::OkStatus();
          auto s = store::GetSession(c, session_id, false);
          if (!s.ok()) return s.status();
          if (absl::Now() >= LocalInstant(s->date(), s->start_time())) return absl::OkStatus();
          return FillSeats(c, call, *s, site, (*seats)->capacity - (*seats)->confirmed, &filled);
        },
        /*hand_on_left_free=*/false);
    if (st.ok() && filled > 0) HandedOn(by).Increment(filled);
  }
  if (!st.ok()) {
    log::Warn(
        "a seat freed for someone waiting was not handed on yet; the seat sweep "
        "(SEAT_SWEEP_INTERVAL) hands it on",
        {{"participant", participant}, {"session", session}, {"error", log::Text(st)}});
  }
}

void SchedulingLogic::HandOnSoon(const std::string& session, const std::string& traceparent) {
  bool queued = schedule_([this, session, traceparent] {
    static const server::Principal hand_on = SystemPrincipal("seat-hand-on");
    const Call call{hand_on, absl::Now() + absl::Seconds(30), traceparent, "HandOnSeat"};
    // Whoever waits on the session (not only the newcomer, who may since
    // have been confirmed elsewhere that date).
    PromoteWhereFreed(call, HandOnBy::kBooking, "", session);
  });
  if (!queued) {
    log::Warn(
        "a seat owed to someone waiting was not handed on yet (the executor is full or "
        "shutting down); the seat sweep (SEAT_SWEEP_INTERVAL) hands it on",
        {{"session", session}});
  }
}

void SchedulingLogic::SweepFreeSeats() {
  static const server::Principal sweeper = SystemPrincipal("seat-sweep");
  const Call call{sweeper, absl::Now() + absl::Seconds(30), server::TraceParent(""),
                  "SweepFreeSeats"};
  PromoteWhereFreed(call, HandOnBy::kSweep, "", "");
}

absl::StatusOr<v1::Booking> SchedulingLogic::CancelInTx(db::Conn& c, const Call& call,
                                                        const std::string& booking_id, bool emit,
                                                        bool only_if_live,
                                                        bool* ended_frontline_visit) {
  if (ended_frontline_visit != nullptr) *ended_frontline_visit = false;
  auto peek = store::GetBooking(c, booking_id, false);
  if (!peek.ok()) return peek.status();
  if (absl::Status s = MayActFor(call.principal, peek->participant_id()); !s.ok()) return s;
  // Lock order everywhere: site, then booking.
  auto seats = store::LockSite(c, peek->session_id(), peek->site());
  if (!seats.ok()) return seats.status();
  auto b = store::GetBooking(c, booking_id, true);
  if (!b.ok()) return b.status();
  if (b->status() != kConfirmed && b->status() != kWaitlisted) {
    if (only_if_live) return b;
    // Cancelling a cancelled booking asks for the state it is in (a retry);
    // moving one (emit false: RescheduleBooking) does not.
    return server::Refusal(
        emit && b->status() == v1::BOOKING_STATUS_CANCELLED ? "ALREADY_IN_STATE" : "WRONG_STATE",
        absl::StrCat("only a CONFIRMED or WAITLISTED booking can be cancelled; it is ",
                     v1::BookingStatus_Name(b->status())),
        {{"status", v1::BookingStatus_Name(b->status())}});
  }
  auto session = store::GetSession(c, b->session_id(), false);
  if (!session.ok()) return session.status();
  // Once the session began a seat can no longer be handed on (a promotion
  // would invite someone to a visit under way): who did not come is a no-show.
  if (absl::Now() >= LocalInstant(session->date(), session->start_time())) {
    if (only_if_live) return b;
    return server::Refusal(
        "SESSION_BEGAN",
        absl::StrCat(
            "session ", session->id(), " began at ", session->date(), " ", session->start_time(),
            "; its bookings are no longer cancelled or moved (record attendance: NO_SHOW)"),
        {{"sessionId", session->id()},
         {"date", session->date()},
         {"startTime", session->start_time()}});
  }
  if (absl::Status s = store::SetBookingStatus(c, booking_id, kCancelled); !s.ok()) return s;
  if (ended_frontline_visit != nullptr) {
    *ended_frontline_visit = HoldsTheDate(*b, *session);
  }
  if (emit) {
    if (absl::Status s = EmitBooking(c, call, "cancelled", booking_id, ""); !s.ok()) return s;
  }
  if (b->status() == kWaitlisted) {
    if (absl::Status s = store::AddSeats(c, b->session_id(), b->site(), 0, -1); !s.ok()) return s;
  }
  if (b->status() == kConfirmed) {
    if (absl::Status s = store::AddSeats(c, b->session_id(), b->site(), -1, 0); !s.ok()) return s;
    if (auto promoted = Promote(c, call, *session, b->site()); !promoted.ok()) {
      return promoted.status();
    }
  }
  return store::GetBooking(c, booking_id, false);
}

void SchedulingLogic::BookSession(const Call& call, const v1::BookSessionRequest& req,
                                  v1::Booking* resp, server::RpcRunner::Done done) {
  FieldErrors e;
  server::CheckUuid(e, "session_id", req.session_id(), true);
  server::CheckUuid(e, "participant_id", req.participant_id(), true);
  server::CheckText(e, "site", req.site(), {0, 100});
  server::CheckRequestId(e, "request_id", req.request_id());
  if (!e.empty()) return done(e.ToStatus());
  if (absl::Status s = MayActFor(call.principal, req.participant_id()); !s.ok()) return done(s);
  // One round trip for the booking (pipelined with BEGIN and with the other
  // bookings queued meanwhile in its lane), one for its event and COMMIT.
  db::GroupCommitter::Work work;
  work.lock_order = SiteLockOrder(req.session_id(), req.site());
  work.lock_first = req.participant_id();  // before any seats (store::ShareParticipants)
  // Combined with the other bookings of its batch into one call
  // (store::BookRun).
  work.first = store::BookStatement(req.session_id(), req.participant_id(), req.site(),
                                    req.request_id(), &work.args);
  // Set before COMMIT, read after it.
  auto seat_owed = std::make_shared<bool>(false);
  work.then = [this, &call, &req, resp, seat_owed](const db::Result& rows, int row) {
    return Booked(call, rows, row, req.session_id(), req.participant_id(), req.site(), true, resp,
                  seat_owed.get());
  };
  std::string lane = absl::StrCat(
      "lane-", std::hash<std::string>()(req.session_id()) % static_cast<size_t>(booking_lanes_));
  bookings_.Submit(lane, call.deadline, std::move(work),
                   [this, seat_owed, session = req.session_id(), traceparent = call.traceparent,
                    done = std::move(done)](absl::Status s) {
                     done(s);  // `call`, `req` and `resp` may be gone after it
                     if (s.ok() && *seat_owed) HandOnSoon(session, traceparent);
                   });
}

absl::Status SchedulingLogic::GetBooking(const Call& call, const v1::GetBookingRequest& req,
                                         v1::Booking* resp) {
  if (absl::Status s = server::CheckUuid("id", req.id()); !s.ok()) return s;
  return db::WithConnection(pool_, call.deadline, [&](db::Conn& c) -> absl::Status {
    auto b = store::GetBooking(c, req.id(), false);
    if (!b.ok()) return b.status();
    const server::Principal& p = call.principal;
    if (p.role == Role::kPartner) {
      auto s = store::GetSession(c, b->session_id(), false);
      if (!s.ok()) return s.status();
      if (s->organisation_id() != p.organisation_id) {
        return server::NotPermitted(p, "a partner sees only bookings at its organisation");
      }
    } else if (absl::Status st = MayReadParticipant(p, b->participant_id()); !st.ok()) {
      return st;
    }
    *resp = *std::move(b);
    return absl::OkStatus();
  });
}

absl::Status SchedulingLogic::ListBookings(const Call& call, const v1::ListBookingsRequest& req,
                                           v1::ListBookingsResponse* resp) {
  FieldErrors e;
  if (req.session_id().empty() == req.participant_id().empty()) {
    e.Add("session_id", "give exactly one of session_id and participant_id");
  }
  server::CheckUuid(e, "session_id", req.session_id(), false);
  server::CheckUuid(e, "participant_id", req.participant_id(), false);
  if (!v1::BookingStatus_IsValid(req.status())) e.Add("status", "unknown value");
  int limit = server::PageSize(e, req.page_size());
  if (!e.empty()) return e.ToStatus();
  const server::Principal& p = call.principal;
  store::BookingFilter f{req.session_id(), req.participant_id(), "", req.status()};
  if (p.role == Role::kParticipant) {
    if (req.participant_id() != p.participant_id) {
      return server::NotPermitted(p, "a participant sees only its own bookings");
    }
  } else if (p.role == Role::kPartner) {
    f.partner_organisation_id = p.organisation_id;  // only bookings at its sessions
  }
  std::string scope = absl::StrCat("ListBookings|", f.session_id, "|", f.participant_id, "|",
                                   f.status, "|", f.partner_organisation_id);
  auto after = Token(tokens_, scope, req.page_token(), 1);
  if (!after.ok()) return after.status();
  int64_t after_seq = 0;
  if (!after->empty() && !absl::SimpleAtoi((*after)[0], &after_seq)) {
    return server::FieldError("page_token", "is malformed");
  }
  return db::WithConnection(pool_, call.deadline, [&](db::Conn& c) -> absl::Status {
    std::vector<int64_t> seqs;
    auto rows = store::ListBookings(c, f, after_seq, limit + 1, &seqs);
    if (!rows.ok()) return rows.status();
    resp->Clear();
    for (int i = 0; i < static_cast<int>(rows->size()) && i < limit; ++i) {
      *resp->add_bookings() = (*rows)[i];
    }
    if (static_cast<int>(rows->size()) > limit) {
      resp->set_next_page_token(tokens_.Encode(scope, {absl::StrCat(seqs[limit - 1])}));
    }
    return absl::OkStatus();
  });
}

absl::Status SchedulingLogic::CancelBooking(const Call& call, const v1::CancelBookingRequest& req,
                                            v1::Booking* resp) {
  if (absl::Status s = server::CheckUuid("id", req.id()); !s.ok()) return s;
  bool ended_visit = false;
  absl::Status st = TransactPromoting(call, "", [&](db::Conn& c) -> absl::Status {
    auto b = CancelInTx(c, call, req.id(), true, /*only_if_live=*/false, &ended_visit);
    if (!b.ok()) return b.status();
    *resp = *std::move(b);
    return absl::OkStatus();
  });
  // Their visit that date, ended, may have kept them from a seat elsewhere.
  if (st.ok() && ended_visit)
    PromoteWhereFreed(call, HandOnBy::kChange, resp->participant_id(), "");
  return st;
}

absl::Status SchedulingLogic::RescheduleBooking(const Call& call,
                                                const v1::RescheduleBookingRequest& req,
                                                v1::Booking* resp) {
  FieldErrors e;
  server::CheckUuid(e, "id", req.id(), true);
  server::CheckUuid(e, "session_id", req.session_id(), true);
  server::CheckText(e, "site", req.site(), {0, 100});
  server::CheckRequestId(e, "request_id", req.request_id());
  if (!e.empty()) return e.ToStatus();
  absl::Status st = TransactPromoting(call, "", [&](db::Conn& c) -> absl::Status {
    auto old = store::GetBooking(c, req.id(), false);
    if (!old.ok()) return old.status();
    if (absl::Status s = MayActFor(call.principal, old->participant_id()); !s.ok()) return s;
    if (old->session_id() == req.session_id()) {
      return server::FieldError("session_id", "the booking is already on this session");
    }
    // The person, then both sites' seats: a deactivation holds the leaver
    // and then wants their seats, so a move must not hold seats while it
    // waits for the leaver (book_sites reads them FOR SHARE).
    if (absl::Status st = store::GetParticipantShared(c, old->participant_id()).status();
        !st.ok()) {
      return st;
    }
    // Both sites' seats, in one order for every move: two connectors
    // swapping between the same sessions would otherwise each hold one site
    // and wait for the other until PostgreSQL broke the deadlock (a second's
    // stall and a retry every time, measured).
    std::pair<std::string, std::string> sites[] = {{old->session_id(), old->site()},
                                                   {req.session_id(), req.site()}};
    if (SiteLockOrder(sites[1].first, sites[1].second) <
        SiteLockOrder(sites[0].first, sites[0].second)) {
      std::swap(sites[0], sites[1]);
    }
    for (const auto& [session_id, site] : sites) {
      if (auto l = store::LockSite(c, session_id, site); !l.ok()) return l.status();
    }
    // A retry of this move, once it landed (a concurrent one has waited for
    // the same sites), gets the booking it made.
    if (!req.request_id().empty()) {
      auto prior = store::BookingByRequestId(c, req.request_id());
      if (!prior.ok()) return prior.status();
      if (prior->has_value()) {
        if ((*prior)->participant_id() != old->participant_id() ||
            (*prior)->session_id() != req.session_id() || (*prior)->site() != req.site()) {
          return BookingKeyReused(**prior, old->participant_id());
        }
        *resp = **std::move(prior);
        return absl::OkStatus();
      }
    }
    // Cancel first: a move within one date must not trip the one-visit rule.
    auto from = CancelInTx(c, call, req.id(), false);
    if (!from.ok()) return from.status();
    auto to = BookInTx(c, call, req.session_id(), old->participant_id(), req.site(),
                       req.request_id(), false);
    if (!to.ok()) return to.status();
    ev::BookingRescheduled event;
    *event.mutable_from_booking() = *from;
    *event.mutable_to_booking() = *to;
    *resp = *std::move(to);
    return outbox_.Emit(c, "booking.rescheduled", resp->id(), event, call.traceparent);
  });
  // The visit they left may have kept them from a seat elsewhere that date.
  if (st.ok()) PromoteWhereFreed(call, HandOnBy::kChange, resp->participant_id(), "");
  return st;
}

absl::Status SchedulingLogic::RecordAttendance(const Call& call,
                                               const v1::RecordAttendanceRequest& req,
                                               v1::Booking* resp) {
  if (absl::Status s = server::CheckUuid("id", req.id()); !s.ok()) return s;
  bool ended_visit = false;
  absl::Status done = db::Transact(pool_, Tx(call), [&](db::Conn& c) -> absl::Status {
    auto b = store::GetBooking(c, req.id(), true);
    if (!b.ok()) return b.status();
    auto s = store::GetSession(c, b->session_id(), false);
    if (!s.ok()) return s.status();
    if (absl::Status st = MayManageSession(call.principal, *s); !st.ok()) return st;
    const int status = req.attended() ? v1::BOOKING_STATUS_ATTENDED : v1::BOOKING_STATUS_NO_SHOW;
    ended_visit = false;
    // A retry (the same record again) changes nothing and says so with the
    // booking; the other record corrects it (figures and enduring contacts
    // follow, and its event tells consumers which it was).
    if (b->status() == status) {
      *resp = *std::move(b);
      return absl::OkStatus();
    }
    const bool correction =
        b->status() == v1::BOOKING_STATUS_ATTENDED || b->status() == v1::BOOKING_STATUS_NO_SHOW;
    if (b->status() != kConfirmed && !correction) {
      return server::Refusal(
          "WRONG_STATE",
          absl::StrCat(
              "attendance is recorded for CONFIRMED bookings (and corrected on ATTENDED or NO_SHOW "
              "ones); this one is ",
              v1::BookingStatus_Name(b->status())),
          {{"status", v1::BookingStatus_Name(b->status())}});
    }
    if (s->status() == v1::SESSION_STATUS_CANCELLED) {
      return server::Refusal("WRONG_STATE", "the session was cancelled",
                             {{"status", v1::SessionStatus_Name(s->status())}});
    }
    if (absl::Now() < LocalInstant(s->date(), s->start_time())) {
      return server::Refusal(
          "SESSION_NOT_BEGUN",
          absl::StrCat("the session has not begun (", s->date(), " ", s->start_time(), ")"),
          {{"sessionId", s->id()}, {"date", s->date()}, {"startTime", s->start_time()}});
    }
    if (absl::Status st = store::SetBookingStatus(c, req.id(), status); !st.ok()) return st;
    ended_visit = HoldsTheDate(*b, *s);
    auto after = store::GetBooking(c, req.id(), false);
    if (!after.ok()) return after.status();
    std::string reason;
    if (correction) {
      reason = absl::StrCat("corrected from ", v1::BookingStatus_Name(b->status()));
      if (!req.attended()) {
        if (absl::Status st = store::DeleteAttendanceFact(c, req.id()); !st.ok()) return st;
      }
    }
    if (req.attended() && s->kind() == v1::SESSION_KIND_FRONTLINE_VISIT) {
      auto p = store::GetParticipant(c, b->participant_id(), false);
      if (!p.ok()) return p.status();
      auto org = store::GetPartner(c, s->organisation_id());
      if (!org.ok()) return org.status();
      store::PartnerOrganisation known =
          org->has_value() ? **org : store::PartnerOrganisation{s->organisation_id(), "", 0, 0, 0};
      if (absl::Status st = store::InsertAttendanceFact(c, *after, *s, *p, known); !st.ok()) {
        return st;
      }
    }
    *resp = *std::move(after);
    return EmitBooking(c, call, req.attended() ? "attended" : "no_show", req.id(), reason);
  });
  // A confirmed visit, now attended or missed, no longer holds its date (the
  // rule is one CONFIRMED frontline visit per date): a seat they were passed
  // over for that date, still to begin, is theirs now.
  if (done.ok() && ended_visit)
    PromoteWhereFreed(call, HandOnBy::kChange, resp->participant_id(), "");
  return done;
}

absl::Status SchedulingLogic::ListEnduringContacts(const Call& call,
                                                   const v1::ListEnduringContactsRequest& req,
                                                   v1::ListEnduringContactsResponse* resp) {
  if (absl::Status s = server::CheckUuid("participant_id", req.participant_id()); !s.ok()) {
    return s;
  }
  if (absl::Status s = MayReadParticipant(call.principal, req.participant_id()); !s.ok()) return s;
  return db::WithConnection(pool_, call.deadline, [&](db::Conn& c) -> absl::Status {
    auto rows = store::EnduringContacts(c, req.participant_id());
    if (!rows.ok()) return rows.status();
    resp->Clear();
    for (auto& r : *rows) *resp->add_contacts() = std::move(r);
    return absl::OkStatus();
  });
}

absl::Status SchedulingLogic::GetProgrammeFigures(const Call& call,
                                                  const v1::GetProgrammeFiguresRequest& req,
                                                  v1::ProgrammeFigures* resp) {
  FieldErrors e;
  if (!IsDate(req.from_date())) e.Add("from_date", "is required, written YYYY-MM-DD");
  if (!IsDate(req.to_date())) e.Add("to_date", "is required, written YYYY-MM-DD");
  if (e.empty()) {
    if (req.to_date() < req.from_date()) {
      e.Add("to_date", "must not be before from_date");
    } else if (LocalInstant(req.to_date(), "00:00") - LocalInstant(req.from_date(), "00:00") >
               absl::Hours(24 * 3661)) {
      e.Add("to_date", "must be within 10 years of from_date");
    }
  }
  if (!v1::FiguresGrouping_IsValid(req.group_by())) e.Add("group_by", "unknown value");
  if (!e.empty()) return e.ToStatus();
  const server::Principal& p = call.principal;
  std::string org;
  if (p.role == Role::kPartner) {
    org = p.organisation_id;  // a partner sees only its own results
  } else if (!p.is_staff() && p.role != Role::kViewer) {
    return server::NotPermitted(p, "participants may not read programme figures");
  }
  std::optional<store::FiguresGrouping> by;
  switch (req.group_by()) {
    case v1::FIGURES_GROUPING_SECTOR:
      by = store::FiguresGrouping{"sector", "k::text", "_sector"};
      break;
    case v1::FIGURES_GROUPING_REGION:
      by = store::FiguresGrouping{"region", "k::text", "_region"};
      break;
    case v1::FIGURES_GROUPING_DIRECTORATE:
      by = store::FiguresGrouping{"directorate", "k", "_directorate"};
      break;
    case v1::FIGURES_GROUPING_GRADE:
      by = store::FiguresGrouping{"grade", "k::text", "_grade"};
      break;
    case v1::FIGURES_GROUPING_MONTH:
      by = store::FiguresGrouping{"date_trunc('month', session_date::timestamp)::date",
                                  "to_char(k, 'YYYY-MM')", "", true};
      break;
    case v1::FIGURES_GROUPING_QUARTER:
      by = store::FiguresGrouping{"date_trunc('quarter', session_date::timestamp)::date",
                                  "to_char(k, 'YYYY-\"Q\"Q')", "", true};
      break;
    default:
      break;
  }
  return db::Transact(
      pool_, db::TxOptions{db::Isolation::kRepeatableRead, true, 3, call.deadline},
      [&](db::Conn& c) -> absl::Status {
        auto figures = store::Figures(c, by ? &*by : nullptr, req.from_date(), req.to_date(), org);
        if (!figures.ok()) return figures.status();
        for (auto& r : *figures->mutable_rows()) {
          int n = 0;
          if (req.group_by() == v1::FIGURES_GROUPING_SECTOR && absl::SimpleAtoi(r.key(), &n)) {
            r.set_key(pv1::Sector_Name(static_cast<pv1::Sector>(n)));
          } else if (req.group_by() == v1::FIGURES_GROUPING_REGION &&
                     absl::SimpleAtoi(r.key(), &n)) {
            r.set_key(pv1::Region_Name(static_cast<pv1::Region>(n)));
          } else if (req.group_by() == v1::FIGURES_GROUPING_GRADE &&
                     absl::SimpleAtoi(r.key(), &n)) {
            r.set_key(v1::Grade_Name(static_cast<v1::Grade>(n)));
          }
        }
        *resp = *std::move(figures);
        return absl::OkStatus();
      });
}

// ---------------------------------------------------------------- republish

absl::StatusOr<int64_t> Republish(db::Pool& pool, const bus::Outbox& outbox, bool new_versions) {
  int64_t count = 0;
  // People and sessions first, so that a consumer meets them before the
  // bookings that name them (as it did the first time).
  if (absl::Status s =
          bus::RepublishKind(pool, outbox, "participant.snapshot", &store::ParticipantsAfter,
                             &ev::ParticipantSnapshot::mutable_participant, new_versions, &count);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          bus::RepublishKind(pool, outbox, "session.snapshot", &store::SessionsAfter,
                             &ev::SessionSnapshot::mutable_session, new_versions, &count);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          bus::RepublishKind(pool, outbox, "booking.snapshot", &store::BookingsAfter,
                             &ev::BookingSnapshot::mutable_booking, new_versions, &count);
      !s.ok()) {
    return s;
  }
  return count;
}

}  // namespace connecting::scheduling
