#include "services/scheduling/store.h"

#include <google/protobuf/util/time_util.h>

#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "libs/bus/republish.h"
#include "libs/db/rows.h"

namespace connecting::scheduling::store {
namespace {

using google::protobuf::util::TimeUtil;

constexpr char kParticipantCols[] =
    "id::text, staff_number, display_name, email, grade, directorate, status, "
    "(extract(epoch FROM created_at) * 1000000)::bigint, "
    "(extract(epoch FROM updated_at) * 1000000)::bigint, version";

// A session `s` that has not begun (as book_sites has it, in the
// department's time zone). The date bound lets a walk in date order
// (sessions_by_date) start at today, past the history.
constexpr char kNotBegun[] =
    "s.session_date >= (now() AT TIME ZONE 'Europe/London')::date AND "
    "(s.session_date + s.start_time) AT TIME ZONE 'Europe/London' > now()";

// Sites are folded into one text column: name \x1f capacity \x1f confirmed
// \x1f waitlisted, joined by \x1e, in their given order.
constexpr char kSessionCols[] =
    "s.id::text, s.kind, s.title, s.organisation_id::text, COALESCE(s.offer_id::text, ''), "
    "COALESCE(s.host_contact_id::text, ''), to_char(s.session_date, 'YYYY-MM-DD'), "
    "to_char(s.start_time, 'HH24:MI'), to_char(s.end_time, 'HH24:MI'), s.broadcast_link, "
    "COALESCE(s.arranged_by::text, ''), s.status, "
    "(extract(epoch FROM s.created_at) * 1000000)::bigint, "
    "(extract(epoch FROM s.updated_at) * 1000000)::bigint, s.version, "
    "(SELECT string_agg(ss.site || E'\\x1f' || ss.capacity || E'\\x1f' || ss.confirmed || "
    "E'\\x1f' || ss.waitlisted, E'\\x1e' ORDER BY ss.ordinal) "
    "FROM session_sites ss WHERE ss.session_id = s.id)";

constexpr char kBookingCols[] =
    "b.id::text, b.session_id::text, b.participant_id::text, b.site, b.status, "
    "CASE WHEN b.status = 2 THEN (SELECT count(*) FROM bookings w WHERE w.session_id = "
    "b.session_id AND w.site = b.site AND w.status = 2 AND w.seq <= b.seq) ELSE 0 END, "
    "(extract(epoch FROM b.created_at) * 1000000)::bigint, "
    "(extract(epoch FROM b.updated_at) * 1000000)::bigint, b.version, b.seq";

v1::Participant ParticipantRow(const db::Result& r, int i) {
  v1::Participant p;
  p.set_id(r.String(i, 0));
  p.set_staff_number(r.String(i, 1));
  p.set_display_name(r.String(i, 2));
  p.set_email(r.String(i, 3));
  p.set_grade(static_cast<v1::Grade>(r.Int(i, 4)));
  p.set_directorate(r.String(i, 5));
  p.set_status(static_cast<v1::ParticipantStatus>(r.Int(i, 6)));
  *p.mutable_create_time() = TimeUtil::MicrosecondsToTimestamp(r.Int(i, 7));
  *p.mutable_update_time() = TimeUtil::MicrosecondsToTimestamp(r.Int(i, 8));
  p.set_etag(r.String(i, 9));
  return p;
}

// The kSessionCols columns of row i, starting at column `at`.
v1::Session SessionAt(const db::Result& r, int i, int at) {
  v1::Session s;
  s.set_id(r.String(i, at + 0));
  s.set_kind(static_cast<v1::SessionKind>(r.Int(i, at + 1)));
  s.set_title(r.String(i, at + 2));
  s.set_organisation_id(r.String(i, at + 3));
  s.set_offer_id(r.String(i, at + 4));
  s.set_host_contact_id(r.String(i, at + 5));
  s.set_date(r.String(i, at + 6));
  s.set_start_time(r.String(i, at + 7));
  s.set_end_time(r.String(i, at + 8));
  s.set_broadcast_link(r.String(i, at + 9));
  s.set_arranged_by(r.String(i, at + 10));
  s.set_status(static_cast<v1::SessionStatus>(r.Int(i, at + 11)));
  *s.mutable_create_time() = TimeUtil::MicrosecondsToTimestamp(r.Int(i, at + 12));
  *s.mutable_update_time() = TimeUtil::MicrosecondsToTimestamp(r.Int(i, at + 13));
  s.set_etag(r.String(i, at + 14));
  if (!r.IsNull(i, at + 15)) {
    for (absl::string_view site : absl::StrSplit(r.Text(i, at + 15), '\x1e')) {
      std::vector<std::string> f = absl::StrSplit(site, '\x1f');
      if (f.size() != 4) continue;
      v1::Site* out = s.add_sites();
      out->set_name(f[0]);
      int n = 0;
      out->set_capacity(absl::SimpleAtoi(f[1], &n) ? n : 0);
      out->set_confirmed(absl::SimpleAtoi(f[2], &n) ? n : 0);
      out->set_waitlisted(absl::SimpleAtoi(f[3], &n) ? n : 0);
    }
  }
  return s;
}

v1::Session SessionRow(const db::Result& r, int i) { return SessionAt(r, i, 0); }

// The booking in row i's columns from `at` on (kBookingCols, or book_sites').
v1::Booking BookingAt(const db::Result& r, int i, int at) {
  v1::Booking b;
  b.set_id(r.String(i, at));
  b.set_session_id(r.String(i, at + 1));
  b.set_participant_id(r.String(i, at + 2));
  b.set_site(r.String(i, at + 3));
  b.set_status(static_cast<v1::BookingStatus>(r.Int(i, at + 4)));
  b.set_waitlist_position(static_cast<int32_t>(r.Int(i, at + 5)));
  *b.mutable_create_time() = TimeUtil::MicrosecondsToTimestamp(r.Int(i, at + 6));
  *b.mutable_update_time() = TimeUtil::MicrosecondsToTimestamp(r.Int(i, at + 7));
  b.set_etag(r.String(i, at + 8));
  return b;
}

v1::Booking BookingRow(const db::Result& r, int i) { return BookingAt(r, i, 0); }

std::string Text0(const db::Result& r, int i) { return r.String(i, 0); }

absl::Status Affected(absl::StatusOr<db::Result> r, const char* what, const std::string& id) {
  if (!r.ok()) return r.status();
  if (r->affected() == 0) return NotFound(what, id);
  return absl::OkStatus();
}

}  // namespace

using db::All;
using db::MaybeOne;
using db::One;

absl::StatusOr<std::optional<PartnerOrganisation>> GetPartner(db::Conn& c, const std::string& id) {
  return MaybeOne<PartnerOrganisation>(
      c.Exec("SELECT id::text, name, status, sector, region FROM partner_organisations "
             "WHERE id = $1::uuid",
             {id}),
      [](const db::Result& r, int i) {
        return PartnerOrganisation{r.String(i, 0), r.String(i, 1), static_cast<int>(r.Int(i, 2)),
                                   static_cast<int>(r.Int(i, 3)), static_cast<int>(r.Int(i, 4))};
      });
}

absl::Status UpsertPartner(db::Conn& c, const PartnerOrganisation& p, int64_t version) {
  return c
      .Exec(
          "INSERT INTO partner_organisations (id, name, status, sector, region, version) "
          "VALUES ($1::uuid, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET "
          "name = EXCLUDED.name, status = EXCLUDED.status, sector = EXCLUDED.sector, "
          "region = EXCLUDED.region, version = EXCLUDED.version, updated_at = now() "
          "WHERE partner_organisations.version < EXCLUDED.version",
          {p.id, p.name, p.status, p.sector, p.region, version})
      .status();
}

absl::StatusOr<std::optional<PartnerContact>> GetPartnerContact(db::Conn& c,
                                                                const std::string& id) {
  return MaybeOne<PartnerContact>(
      c.Exec("SELECT id::text, organisation_id::text, display_name, removed FROM partner_contacts "
             "WHERE id = $1::uuid",
             {id}),
      [](const db::Result& r, int i) {
        return PartnerContact{r.String(i, 0), r.String(i, 1), r.String(i, 2), r.Bool(i, 3)};
      });
}

absl::Status UpsertPartnerContact(db::Conn& c, const PartnerContact& p, int64_t version) {
  if (p.removed) version = std::numeric_limits<int64_t>::max();
  return c
      .Exec(
          "INSERT INTO partner_contacts (id, organisation_id, display_name, removed, version) "
          "VALUES ($1::uuid, $2::uuid, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET "
          "display_name = CASE WHEN EXCLUDED.removed THEN partner_contacts.display_name "
          "ELSE EXCLUDED.display_name END, removed = EXCLUDED.removed, "
          "version = EXCLUDED.version, updated_at = now() "
          "WHERE partner_contacts.version < EXCLUDED.version",
          {p.id, p.organisation_id, p.name, p.removed, version})
      .status();
}

absl::StatusOr<std::optional<PartnerOffer>> GetPartnerOffer(db::Conn& c, const std::string& id) {
  return MaybeOne<PartnerOffer>(
      c.Exec("SELECT id::text, organisation_id::text, title, state FROM partner_offers "
             "WHERE id = $1::uuid",
             {id}),
      [](const db::Result& r, int i) {
        return PartnerOffer{r.String(i, 0), r.String(i, 1), r.String(i, 2),
                            static_cast<int>(r.Int(i, 3))};
      });
}

absl::Status UpsertPartnerOffer(db::Conn& c, const PartnerOffer& p, int64_t version) {
  return c
      .Exec(
          "INSERT INTO partner_offers (id, organisation_id, title, state, version) "
          "VALUES ($1::uuid, $2::uuid, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET "
          "title = EXCLUDED.title, state = EXCLUDED.state, version = EXCLUDED.version, "
          "updated_at = now() WHERE partner_offers.version < EXCLUDED.version",
          {p.id, p.organisation_id, p.title, p.state, version})
      .status();
}

absl::StatusOr<std::optional<v1::Participant>> ParticipantByRequestId(db::Conn& c,
                                                                      const std::string& rid) {
  return MaybeOne<v1::Participant>(
      c.Exec(absl::StrCat("SELECT ", kParticipantCols, " FROM participants WHERE request_id = $1"),
             {rid}),
      ParticipantRow);
}

absl::StatusOr<std::optional<v1::Participant>> InsertParticipant(db::Conn& c,
                                                                 const v1::Participant& p,
                                                                 const std::string& rid) {
  return MaybeOne<v1::Participant>(
      c.Exec(absl::StrCat("INSERT INTO participants (request_id, staff_number, display_name, "
                          "email, grade, directorate) VALUES ($1, $2, $3, $4, $5, $6) "
                          "ON CONFLICT (request_id) DO NOTHING RETURNING ",
                          kParticipantCols),
             {db::NullIfEmpty(rid), p.staff_number(), p.display_name(), p.email(),
              static_cast<int32_t>(p.grade()), p.directorate()}),
      ParticipantRow);
}

// Participants and sessions are locked FOR NO KEY UPDATE: their ids never
// change and they are never deleted, and the weaker lock does not hold up the
// foreign-key checks of bookings being inserted meanwhile (which, under their
// site's lock, then deadlocked with a cancellation waiting for that site).
// It still excludes book_sites' FOR SHARE read of the participant.
absl::StatusOr<v1::Participant> GetParticipant(db::Conn& c, const std::string& id, bool lock) {
  return One<v1::Participant>(
      c.Exec(absl::StrCat("SELECT ", kParticipantCols, " FROM participants WHERE id = $1::uuid",
                          lock ? " FOR NO KEY UPDATE" : ""),
             {id}),
      ParticipantRow, "participant", id);
}

namespace {
// A uuid[] literal of `ids`. Ids reach here validated as UUIDs, so it needs no
// quoting.
std::string UuidArray(const std::vector<std::string>& ids) {
  return absl::StrCat("{", absl::StrJoin(ids, ","), "}");
}
}  // namespace

db::Statement ShareParticipants(const std::vector<std::string>& ids) {
  // A function, so that its plan is made once per connection
  // (R__lock_participants.sql).
  return {"SELECT lock_participants($1::uuid[])", {UuidArray(ids)}};
}

absl::Status HoldParticipants(db::Conn& c, const std::vector<std::string>& ids) {
  // ORDER BY: the rows are locked in id order (a repeated id matches once).
  return c
      .Exec("SELECT 1 FROM participants WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE",
            {UuidArray(ids)})
      .status();
}

absl::StatusOr<v1::Participant> GetParticipantShared(db::Conn& c, const std::string& id) {
  return One<v1::Participant>(
      c.Exec(absl::StrCat("SELECT ", kParticipantCols,
                          " FROM participants WHERE id = $1::uuid FOR SHARE"),
             {id}),
      ParticipantRow, "participant", id);
}

absl::StatusOr<v1::Participant> UpdateParticipant(db::Conn& c, const v1::Participant& p) {
  return One<v1::Participant>(
      c.Exec(
          absl::StrCat("UPDATE participants SET display_name = $2, email = $3, grade = $4, "
                       "directorate = $5, version = next_version(version), updated_at = now() "
                       "WHERE id = $1::uuid RETURNING ",
                       kParticipantCols),
          {p.id(), p.display_name(), p.email(), static_cast<int32_t>(p.grade()), p.directorate()}),
      ParticipantRow, "participant", p.id());
}

absl::StatusOr<v1::Participant> SetParticipantStatus(db::Conn& c, const std::string& id, int s) {
  return One<v1::Participant>(
      c.Exec(absl::StrCat("UPDATE participants SET status = $2, version = next_version(version), "
                          "updated_at = now() WHERE id = $1::uuid RETURNING ",
                          kParticipantCols),
             {id, s}),
      ParticipantRow, "participant", id);
}

absl::StatusOr<std::vector<v1::Participant>> ListParticipants(db::Conn& c,
                                                              const ParticipantFilter& f,
                                                              const std::vector<std::string>& after,
                                                              int limit) {
  // Enum filters are in the statement text (validated numbers, a handful of
  // values each), so each value has its own plan: a prepared statement's
  // generic plan assumes every value equally common, and for a rare one
  // (senior civil servants, inactive) would walk the name index.
  std::vector<db::Param> params;
  std::vector<std::string> where;
  if (f.grade != 0) where.push_back(absl::StrCat("grade = ", f.grade));
  if (f.status != 0) where.push_back(absl::StrCat("status = ", f.status));
  if (!f.directorate.empty()) {
    params.push_back(f.directorate);
    where.push_back(absl::StrCat("directorate = $", params.size()));
  }
  if (!f.staff_number.empty()) {
    params.push_back(f.staff_number);
    where.push_back(absl::StrCat("staff_number = $", params.size()));
  }
  if (!f.name_prefix.empty()) {
    // A range of the index the list is read in (scheduling migration 0013).
    where.push_back(db::CaselessPrefix("lower(display_name)", f.name_prefix, &params));
  }
  if (after.size() == 2) {
    where.push_back(db::CaselessAfter("lower(display_name)", "display_name", "id", after[0],
                                      after[1], &params));
  }
  return All<v1::Participant>(
      c.Exec(absl::StrCat("SELECT ", kParticipantCols, " FROM participants",
                          where.empty() ? "" : " WHERE ", absl::StrJoin(where, " AND "),
                          " ORDER BY lower(participants.display_name), participants.display_name, "
                          "participants.id",
                          db::LimitClause(limit)),
             params),
      ParticipantRow);
}

absl::StatusOr<std::optional<v1::Session>> SessionByRequestId(db::Conn& c, const std::string& rid) {
  return MaybeOne<v1::Session>(
      c.Exec(absl::StrCat("SELECT ", kSessionCols, " FROM sessions s WHERE s.request_id = $1"),
             {rid}),
      SessionRow);
}

absl::StatusOr<std::optional<std::string>> InsertSession(db::Conn& c, const v1::Session& s,
                                                         const std::string& rid) {
  auto r = c.Exec(
      "INSERT INTO sessions (request_id, kind, title, organisation_id, offer_id, "
      "host_contact_id, session_date, start_time, end_time, broadcast_link, arranged_by, status) "
      "VALUES ($1, $2, $3, $4::uuid, $5::uuid, $6::uuid, $7::date, $8::time, $9::time, $10, "
      "$11::uuid, $12) ON CONFLICT (request_id) DO NOTHING RETURNING id::text",
      {db::NullIfEmpty(rid), static_cast<int32_t>(s.kind()), s.title(), s.organisation_id(),
       db::NullIfEmpty(s.offer_id()), db::NullIfEmpty(s.host_contact_id()), s.date(),
       s.start_time(), s.end_time(), s.broadcast_link(), db::NullIfEmpty(s.arranged_by()),
       static_cast<int32_t>(s.status())});
  if (!r.ok()) return r.status();
  if (r->rows() == 0) return std::optional<std::string>();
  std::string id = r->String(0, 0);
  for (int i = 0; i < s.sites_size(); ++i) {
    auto ins = c.Exec(
        "INSERT INTO session_sites (session_id, site, capacity, ordinal) "
        "VALUES ($1::uuid, $2, $3, $4)",
        {id, s.sites(i).name(), s.sites(i).capacity(), i});
    if (!ins.ok()) return ins.status();
  }
  return std::optional<std::string>(id);
}

absl::StatusOr<v1::Session> GetSession(db::Conn& c, const std::string& id, bool lock) {
  return One<v1::Session>(
      c.Exec(absl::StrCat("SELECT ", kSessionCols, " FROM sessions s WHERE s.id = $1::uuid",
                          lock ? " FOR NO KEY UPDATE OF s" : ""),
             {id}),
      SessionRow, "session", id);
}

absl::Status UpdateSession(db::Conn& c, const v1::Session& s) {
  absl::Status up = Affected(
      c.Exec("UPDATE sessions SET title = $2, session_date = $3::date, start_time = $4::time, "
             "end_time = $5::time, host_contact_id = $6::uuid, broadcast_link = $7, "
             "version = next_version(version), updated_at = now() WHERE id = $1::uuid",
             {s.id(), s.title(), s.date(), s.start_time(), s.end_time(),
              db::NullIfEmpty(s.host_contact_id()), s.broadcast_link()}),
      "session", s.id());
  if (!up.ok()) return up;
  if (auto r = c.Exec("UPDATE bookings SET session_date = $2::date WHERE session_id = $1::uuid "
                      "AND session_date <> $2::date",
                      {s.id(), s.date()});
      !r.ok()) {
    return r.status();
  }
  for (const v1::Site& site : s.sites()) {
    auto r = c.Exec(
        "UPDATE session_sites SET capacity = $3 WHERE session_id = $1::uuid AND site = $2 "
        "AND capacity <> $3",
        {s.id(), site.name(), site.capacity()});
    if (!r.ok()) return r.status();
  }
  return absl::OkStatus();
}

absl::Status SetSessionStatus(db::Conn& c, const std::string& id, int status) {
  return Affected(c.Exec("UPDATE sessions SET status = $2, version = next_version(version), "
                         "updated_at = now() WHERE id = $1::uuid",
                         {id, status}),
                  "session", id);
}

absl::StatusOr<std::vector<v1::Session>> ListSessions(db::Conn& c, const SessionFilter& f,
                                                      const std::vector<std::string>& after,
                                                      int limit) {
  std::vector<db::Param> params;
  std::vector<std::string> where;
  auto add = [&](const std::string& lhs, db::Param p, const char* cast) {
    params.push_back(std::move(p));
    where.push_back(absl::StrCat(lhs, "$", params.size(), cast));
  };
  if (!f.from_date.empty()) add("s.session_date >= ", f.from_date, "::date");
  if (!f.to_date.empty()) add("s.session_date <= ", f.to_date, "::date");
  // Enum filters in the text, as ListParticipants.
  if (f.kind != 0) where.push_back(absl::StrCat("s.kind = ", f.kind));
  if (f.status != 0) where.push_back(absl::StrCat("s.status = ", f.status));
  if (!f.organisation_id.empty()) add("s.organisation_id = ", f.organisation_id, "::uuid");
  if (!f.host_contact_id.empty()) add("s.host_contact_id = ", f.host_contact_id, "::uuid");
  if (f.with_free_seats) {
    // Sessions a booking made now would be confirmed on: scheduled, not
    // begun, a seat free at some site.
    where.push_back(absl::StrCat("s.status = 2 AND ", kNotBegun,
                                 " AND EXISTS (SELECT 1 FROM session_sites ss WHERE "
                                 "ss.session_id = s.id AND ss.confirmed < ss.capacity)"));
  }
  if (after.size() == 3) {
    params.push_back(after[0]);
    params.push_back(after[1]);
    params.push_back(after[2]);
    where.push_back(absl::StrCat("(s.session_date, s.start_time, s.id) > ($", params.size() - 2,
                                 "::date, $", params.size() - 1, "::time, $", params.size(),
                                 "::uuid)"));
  }
  return All<v1::Session>(
      c.Exec(absl::StrCat("SELECT ", kSessionCols, " FROM sessions s",
                          where.empty() ? "" : " WHERE ", absl::StrJoin(where, " AND "),
                          " ORDER BY s.session_date, s.start_time, s.id", db::LimitClause(limit)),
             params),
      SessionRow);
}

absl::StatusOr<std::optional<SiteSeats>> LockSite(db::Conn& c, const std::string& session_id,
                                                  const std::string& site) {
  return MaybeOne<SiteSeats>(
      c.Exec("SELECT capacity, confirmed, waitlisted FROM session_sites WHERE session_id = "
             "$1::uuid AND site = $2 FOR UPDATE",
             {session_id, site}),
      [](const db::Result& r, int i) {
        return SiteSeats{static_cast<int>(r.Int(i, 0)), static_cast<int>(r.Int(i, 1)),
                         static_cast<int>(r.Int(i, 2))};
      });
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> SeatsFreeForWaiting(
    db::Conn& c, const std::string& participant, const std::string& session) {
  // One statement per scope, so that each is planned for its index (the
  // participant's bookings, the session's) rather than for all three.
  std::string whose = "TRUE";
  std::vector<db::Param> params;
  if (!participant.empty()) {
    whose = "w.participant_id = $1::uuid";
    params = {participant};
  } else if (!session.empty()) {
    whose =
        "w.participant_id IN (SELECT b.participant_id FROM bookings b "
        "WHERE b.session_id = $1::uuid)";
    params = {session};
  }
  return All<std::pair<std::string, std::string>>(
      c.Exec(absl::StrCat(
                 "SELECT DISTINCT w.session_id::text, w.site FROM waiting_who_could_take_a_seat w "
                 "JOIN session_sites ss ON ss.session_id = w.session_id AND ss.site = w.site "
                 "JOIN sessions s ON s.id = w.session_id "
                 "WHERE ss.confirmed < ss.capacity AND ss.waitlisted > 0 "
                 // Sessions to come, whatever waitlists past sessions left.
                 "AND s.status = 2 AND ",
                 kNotBegun, " AND ", whose),
             params),
      [](const db::Result& r, int i) { return std::make_pair(r.String(i, 0), r.String(i, 1)); });
}

absl::Status AddSeats(db::Conn& c, const std::string& session_id, const std::string& site,
                      int confirmed, int waitlisted) {
  return c
      .Exec(
          "UPDATE session_sites SET confirmed = confirmed + $3, waitlisted = waitlisted + "
          "$4 WHERE session_id = $1::uuid AND site = $2",
          {session_id, site, confirmed, waitlisted})
      .status();
}

absl::StatusOr<std::vector<std::string>> PendingSessionsArrangedBy(db::Conn& c,
                                                                   const std::string& participant) {
  return All<std::string>(
      c.Exec("SELECT id::text FROM sessions WHERE arranged_by = $1::uuid AND status = $2 "
             "ORDER BY id FOR NO KEY UPDATE",
             {participant, static_cast<int32_t>(v1::SESSION_STATUS_PENDING_HOST)}),
      Text0);
}

absl::Status LockSites(db::Conn& c, const std::string& session_id) {
  return c
      .Exec(
          "SELECT 1 FROM session_sites WHERE session_id = $1::uuid ORDER BY site COLLATE \"C\" "
          "FOR UPDATE",  // the sites' lock order (SiteLockOrder)
          {session_id})
      .status();
}

namespace {
// An array literal of `values` (NULL for nullopt), each quoted: a request_id
// may hold any printable character.
std::string QuotedArray(const std::vector<const std::optional<std::string>*>& values) {
  std::string out = "{";
  for (const std::optional<std::string>* v : values) {
    if (out.size() > 1) out += ',';
    if (!v->has_value()) {
      out += "NULL";
      continue;
    }
    out += '"';
    for (char ch : **v) {
      if (ch == '"' || ch == '\\') out += '\\';
      out += ch;
    }
    out += '"';
  }
  return out + "}";
}

// book_sites for `bookings`, each as BookStatement's `args` (session, site,
// participant, request_id), in order.
db::Statement BookSites(const std::vector<const std::vector<db::Param>*>& bookings) {
  std::vector<const std::optional<std::string>*> sessions, sites, people, request_ids;
  for (const std::vector<db::Param>* b : bookings) {
    sessions.push_back(&(*b)[0].value());
    sites.push_back(&(*b)[1].value());
    people.push_back(&(*b)[2].value());
    request_ids.push_back(&(*b)[3].value());
  }
  // The function returns the session's columns too (R__book_session.sql).
  return {
      "SELECT * FROM book_sites($1::uuid[], $2::text[], $3::uuid[], $4::text[])",
      {QuotedArray(sessions), QuotedArray(sites), QuotedArray(people), QuotedArray(request_ids)}};
}
}  // namespace

db::Statement BookStatement(const std::string& session_id, const std::string& participant_id,
                            const std::string& site, const std::string& request_id,
                            std::vector<db::Param>* args) {
  std::vector<db::Param> booking = {session_id, site, participant_id, db::NullIfEmpty(request_id)};
  db::Statement one = BookSites({&booking});
  if (args != nullptr) *args = std::move(booking);
  return one;
}

db::Statement BookRun(const std::vector<const db::GroupCommitter::Work*>& run) {
  std::vector<const std::vector<db::Param>*> bookings;
  for (const db::GroupCommitter::Work* w : run) bookings.push_back(&w->args);
  return BookSites(bookings);
}

absl::StatusOr<Booked> ReadBooked(const db::Result& r, int row) {
  if (row >= r.rows()) {
    return absl::InternalError(
        absl::StrCat("book_sites returned ", r.rows(), " rows; wanted row ", row));
  }
  constexpr int kSessionAt = 17;  // the session's columns follow the booking's
  Booked out;
  out.outcome = r.String(row, 0);
  out.detail = r.String(row, 1);
  if (!r.IsNull(row, 2)) out.booking = BookingAt(r, row, 2);
  out.seats = {static_cast<int>(r.Int(row, 11)), static_cast<int>(r.Int(row, 12)),
               static_cast<int>(r.Int(row, 13))};
  out.participant_status = static_cast<int>(r.Int(row, 14));
  out.partner_status = static_cast<int>(r.Int(row, 15));
  out.session_status = static_cast<int>(r.Int(row, 16));
  if (!r.IsNull(row, kSessionAt)) {
    out.session = SessionAt(r, row, kSessionAt);
    if (out.outcome == "booked") {
      out.session.set_status(static_cast<v1::SessionStatus>(out.session_status));
      for (v1::Site& st : *out.session.mutable_sites()) {
        if (st.name() != out.booking.site()) continue;
        st.set_confirmed(out.seats.confirmed);
        st.set_waitlisted(out.seats.waitlisted);
      }
    }
  }
  return out;
}

absl::StatusOr<std::optional<std::string>> ConfirmedFrontlineOn(db::Conn& c,
                                                                const std::string& participant_id,
                                                                const std::string& date) {
  return MaybeOne<std::string>(
      c.Exec("SELECT id::text FROM bookings WHERE participant_id = $1::uuid AND session_date = "
             "$2::date AND status = 1 AND kind = 1",
             {participant_id, date}),
      Text0);
}

absl::StatusOr<v1::Booking> GetBooking(db::Conn& c, const std::string& id, bool lock) {
  return One<v1::Booking>(
      c.Exec(absl::StrCat("SELECT ", kBookingCols, " FROM bookings b WHERE b.id = $1::uuid",
                          lock ? " FOR UPDATE OF b" : ""),
             {id}),
      BookingRow, "booking", id);
}

absl::StatusOr<std::optional<v1::Booking>> BookingByRequestId(db::Conn& c,
                                                              const std::string& request_id) {
  return MaybeOne<v1::Booking>(
      c.Exec(absl::StrCat("SELECT ", kBookingCols, " FROM bookings b WHERE b.request_id = $1"),
             {request_id}),
      BookingRow);
}

absl::Status SetBookingStatus(db::Conn& c, const std::string& id, int status) {
  return Affected(c.Exec("UPDATE bookings SET status = $2, version = next_version(version), "
                         "updated_at = now() WHERE id = $1::uuid",
                         {id, status}),
                  "booking", id);
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Waitlist(
    db::Conn& c, const std::string& session_id, const std::string& site) {
  return All<std::pair<std::string, std::string>>(
      c.Exec("SELECT id::text, participant_id::text FROM bookings WHERE session_id = $1::uuid "
             "AND site = $2 AND status = 2 ORDER BY seq FOR UPDATE",
             {session_id, site}),
      [](const db::Result& r, int i) { return std::make_pair(r.String(i, 0), r.String(i, 1)); });
}

absl::StatusOr<std::vector<std::string>> LiveBookings(db::Conn& c, const std::string& session_id,
                                                      bool waitlisted_only) {
  return All<std::string>(
      c.Exec(absl::StrCat("SELECT id::text FROM bookings WHERE session_id = $1::uuid AND status ",
                          waitlisted_only ? "= 2" : "IN (1, 2)", " ORDER BY seq FOR UPDATE"),
             {session_id}),
      Text0);
}

absl::StatusOr<std::vector<std::string>> FutureLiveBookingsOf(db::Conn& c,
                                                              const std::string& participant_id) {
  return All<std::string>(
      c.Exec("SELECT b.id::text FROM bookings b JOIN sessions s ON s.id = b.session_id "
             "WHERE b.participant_id = $1::uuid AND b.status IN (1, 2) AND "
             "(s.session_date + s.start_time) > (now() AT TIME ZONE 'Europe/London') "
             "ORDER BY b.session_id, b.site COLLATE \"C\"",  // the sites' lock order
             {participant_id}),
      Text0);
}

absl::Status ResetSeats(db::Conn& c, const std::string& session_id, bool waitlists_only) {
  return c
      .Exec(absl::StrCat("UPDATE session_sites SET ", waitlists_only ? "" : "confirmed = 0, ",
                         "waitlisted = 0 WHERE session_id = $1::uuid"),
            {session_id})
      .status();
}

absl::StatusOr<std::vector<v1::Booking>> ListBookings(db::Conn& c, const BookingFilter& f,
                                                      int64_t after_seq, int limit,
                                                      std::vector<int64_t>* seqs) {
  std::vector<db::Param> params;
  std::vector<std::string> where;
  std::string from = "bookings b";
  if (!f.session_id.empty()) {
    params.push_back(f.session_id);
    where.push_back(absl::StrCat("b.session_id = $", params.size(), "::uuid"));
  }
  if (!f.participant_id.empty()) {
    params.push_back(f.participant_id);
    where.push_back(absl::StrCat("b.participant_id = $", params.size(), "::uuid"));
  }
  if (!f.partner_organisation_id.empty()) {
    from = "bookings b JOIN sessions s ON s.id = b.session_id";
    params.push_back(f.partner_organisation_id);
    where.push_back(absl::StrCat("s.organisation_id = $", params.size(), "::uuid"));
  }
  if (f.status != 0) {
    params.push_back(f.status);
    where.push_back(absl::StrCat("b.status = $", params.size()));
  }
  params.push_back(after_seq);
  where.push_back(absl::StrCat("b.seq > $", params.size()));
  auto r =
      c.Exec(absl::StrCat("SELECT ", kBookingCols, " FROM ", from, " WHERE ",
                          absl::StrJoin(where, " AND "), " ORDER BY b.seq", db::LimitClause(limit)),
             params);
  if (!r.ok()) return r.status();
  std::vector<v1::Booking> out;
  for (int i = 0; i < r->rows(); ++i) {
    out.push_back(BookingRow(*r, i));
    seqs->push_back(r->Int(i, 9));
  }
  return out;
}

absl::Status DeleteAttendanceFact(db::Conn& c, const std::string& booking_id) {
  // The figures' chain locks first, as R__attendance_chains.sql asks of a
  // delete; its trigger relinks the chains.
  auto r = c.Exec(
      "SELECT lock_attendance_chains(participant_id, organisation_id) FROM attendance_facts "
      "WHERE booking_id = $1::uuid",
      {booking_id});
  if (!r.ok()) return r.status();
  return c.Exec("DELETE FROM attendance_facts WHERE booking_id = $1::uuid", {booking_id}).status();
}

absl::Status InsertAttendanceFact(db::Conn& c, const v1::Booking& b, const v1::Session& s,
                                  const v1::Participant& p, const PartnerOrganisation& org) {
  return c
      .Exec(
          "INSERT INTO attendance_facts (booking_id, session_date, participant_id, "
          "organisation_id, host_contact_id, sector, region, directorate, grade) VALUES "
          "($1::uuid, $2::date, $3::uuid, $4::uuid, $5::uuid, $6, $7, $8, $9) "
          "ON CONFLICT (booking_id) DO NOTHING",
          {b.id(), s.date(), p.id(), s.organisation_id(), db::NullIfEmpty(s.host_contact_id()),
           org.sector, org.region, p.directorate(), static_cast<int32_t>(p.grade())})
      .status();
}

absl::StatusOr<bool> HasMetHost(db::Conn& c, const std::string& participant_id,
                                const std::string& host_contact_id) {
  auto r = c.Exec(
      "SELECT 1 FROM attendance_facts WHERE participant_id = $1::uuid AND "
      "host_contact_id = $2::uuid LIMIT 1",
      {participant_id, host_contact_id});
  if (!r.ok()) return r.status();
  return r->rows() > 0;
}

absl::StatusOr<std::vector<v1::EnduringContact>> EnduringContacts(db::Conn& c,
                                                                  const std::string& participant) {
  return All<v1::EnduringContact>(
      c.Exec("SELECT f.host_contact_id::text, f.organisation_id::text, COALESCE(p.name, ''), "
             "count(*), to_char(max(f.session_date), 'YYYY-MM-DD') FROM attendance_facts f "
             "LEFT JOIN partner_organisations p ON p.id = f.organisation_id "
             "WHERE f.participant_id = $1::uuid AND f.host_contact_id IS NOT NULL "
             "GROUP BY 1, 2, 3 ORDER BY max(f.session_date) DESC, 1 LIMIT 500",
             {participant}),
      [](const db::Result& r, int i) {
        v1::EnduringContact e;
        e.set_host_contact_id(r.String(i, 0));
        e.set_organisation_id(r.String(i, 1));
        e.set_organisation_name(r.String(i, 2));
        e.set_visits(static_cast<int32_t>(r.Int(i, 3)));
        e.set_last_visit_date(r.String(i, 4));
        return e;
      });
}

absl::StatusOr<v1::ProgrammeFigures> Figures(db::Conn& c, const FiguresGrouping* by,
                                             const std::string& from, const std::string& to,
                                             const std::string& organisation_id) {
  // Planned for the dates given: a plan made once for any range reads a
  // year's facts through the date index instead of scanning the table, in
  // twice the time.
  if (absl::Status s = c.ExecScript("SET LOCAL plan_cache_mode = force_custom_plan"); !s.ok()) {
    return s;
  }
  const FiguresGrouping totals_only;
  const FiguresGrouping& g = by ? *by : totals_only;
  auto row_of = [](const db::Result& r, int i, int connectors, int organisations) {
    v1::FiguresRow row;
    row.set_key(r.String(i, 0));
    row.set_connecting_days(r.Int(i, 1));
    row.set_connectors(r.Int(i, connectors));
    row.set_organisations(r.Int(i, organisations));
    return row;
  };
  v1::ProgrammeFigures out;
  v1::FiguresRow* totals = out.mutable_totals();
  if (organisation_id.empty()) {
    // A connector (an organisation) counts once per group through their
    // first visit in it: the one whose previous visit in that group lies
    // before the range, or before the group's period; and once in the totals
    // through their first visit in the range, which lies in one group only,
    // so the totals add up over the groups
    // (migrations/0010_attendance_chains.sql). One pass, no sort; the group
    // is computed once per visit and written as a key once per row.
    const std::string first = g.period ? "greatest($1::date, k)" : "$1::date";
    auto r =
        c.Exec(absl::StrCat("SELECT ", g.key_sql, ", count(*), ",
                            absl::StrFormat("count(*) FILTER (WHERE c IS NULL OR c < %1$s), "
                                            "count(*) FILTER (WHERE o IS NULL OR o < %1$s), ",
                                            first),
                            "count(*) FILTER (WHERE ca IS NULL OR ca < $1::date), "
                            "count(*) FILTER (WHERE oa IS NULL OR oa < $1::date) FROM (SELECT ",
                            g.group_sql, " AS k, c_prev", g.chains, " AS c, o_prev", g.chains,
                            " AS o, c_prev AS ca, o_prev AS oa FROM attendance_facts WHERE "
                            "session_date BETWEEN $1::date AND $2::date) f GROUP BY k ORDER BY k"),
               {from, to});
    if (!r.ok()) return r.status();
    for (int i = 0; i < r->rows(); ++i) {
      totals->set_connecting_days(totals->connecting_days() + r->Int(i, 1));
      totals->set_connectors(totals->connectors() + r->Int(i, 4));
      totals->set_organisations(totals->organisations() + r->Int(i, 5));
      if (by) *out.add_rows() = row_of(*r, i, 2, 3);
    }
    return out;
  }
  // One organisation's visits (its own index): few enough to count directly,
  // the totals by themselves.
  for (const FiguresGrouping* q : {&totals_only, by}) {
    if (!q) continue;
    auto r = c.Exec(absl::StrCat("SELECT ", q->key_sql,
                                 ", count(*), count(DISTINCT participant_id), "
                                 "count(DISTINCT organisation_id) FROM (SELECT ",
                                 q->group_sql,
                                 " AS k, participant_id, organisation_id FROM attendance_facts "
                                 "WHERE session_date BETWEEN $1::date AND $2::date AND "
                                 "organisation_id = $3::uuid) f GROUP BY k ORDER BY k"),
                    {from, to, organisation_id});
    if (!r.ok()) return r.status();
    for (int i = 0; i < r->rows(); ++i) {
      if (q == by) {
        *out.add_rows() = row_of(*r, i, 2, 3);
      } else {
        *totals = row_of(*r, i, 2, 3);
      }
    }
  }
  return out;
}

absl::StatusOr<std::vector<v1::Participant>> ParticipantsAfter(db::Conn& c,
                                                               const std::string& after, int limit,
                                                               bool new_version) {
  return All<v1::Participant>(
      bus::RowsAfter(c, kParticipantCols, "participants", "", after, limit, new_version),
      ParticipantRow);
}

absl::StatusOr<std::vector<v1::Session>> SessionsAfter(db::Conn& c, const std::string& after,
                                                       int limit, bool new_version) {
  return All<v1::Session>(
      bus::RowsAfter(c, kSessionCols, "sessions", "s", after, limit, new_version), SessionRow);
}

absl::StatusOr<std::vector<v1::Booking>> BookingsAfter(db::Conn& c, const std::string& after,
                                                       int limit, bool new_version) {
  return All<v1::Booking>(
      bus::RowsAfter(c, kBookingCols, "bookings", "b", after, limit, new_version), BookingRow);
}

}  // namespace connecting::scheduling::store
