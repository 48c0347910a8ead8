// All SQL of the scheduling service, one function per statement, run on the
// caller's connection inside its transaction.
#ifndef CONNECTING_SERVICES_SCHEDULING_STORE_H_
#define CONNECTING_SERVICES_SCHEDULING_STORE_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "connecting/scheduling/v1/scheduling.pb.h"
#include "libs/db/db.h"
#include "libs/db/group_commit.h"

namespace connecting::scheduling::store {

namespace v1 = ::connecting::scheduling::v1;

struct PartnerOrganisation {
  std::string id, name;
  int status = 0, sector = 0, region = 0;
};

// Partner projection.
absl::StatusOr<std::optional<PartnerOrganisation>> GetPartner(db::Conn& c, const std::string& id);
// Applies a newer version of an organisation (older or equal versions are ignored).
absl::Status UpsertPartner(db::Conn& c, const PartnerOrganisation& p, int64_t version);

// Contacts and offers of partner organisations, projected the same way.
struct PartnerContact {
  std::string id, organisation_id, name;
  bool removed = false;
};
struct PartnerOffer {
  std::string id, organisation_id, title;
  int state = 0;  // partners.v1.OfferState
};
absl::StatusOr<std::optional<PartnerContact>> GetPartnerContact(db::Conn& c,
                                                                const std::string& id);
// A newer version of a contact; `removed` makes it a tombstone no later event undoes.
absl::Status UpsertPartnerContact(db::Conn& c, const PartnerContact& p, int64_t version);
absl::StatusOr<std::optional<PartnerOffer>> GetPartnerOffer(db::Conn& c, const std::string& id);
absl::Status UpsertPartnerOffer(db::Conn& c, const PartnerOffer& p, int64_t version);

// Participants.
absl::StatusOr<std::optional<v1::Participant>> ParticipantByRequestId(db::Conn& c,
                                                                      const std::string& rid);
absl::StatusOr<std::optional<v1::Participant>> InsertParticipant(db::Conn& c,
                                                                 const v1::Participant& p,
                                                                 const std::string& rid);
absl::StatusOr<v1::Participant> GetParticipant(db::Conn& c, const std::string& id, bool lock);
// Lock order: a writer that locks participants and sites takes the
// participants first (in id order), as a deactivation does (the leaver, then
// the seats of their bookings), before any site's seats; book_sites reads
// its participant FOR SHARE, so a batch or a move takes that share first.
// ShareParticipants: the statement locking those rows FOR SHARE (ids sorted).
db::Statement ShareParticipants(const std::vector<std::string>& ids);
// Locks these participants FOR NO KEY UPDATE, in id order: waits for any
// booking of theirs in flight (which holds them FOR SHARE) to end.
absl::Status HoldParticipants(db::Conn& c, const std::vector<std::string>& ids);
// The participant, read FOR SHARE (NOT_FOUND naming it if there is none).
absl::StatusOr<v1::Participant> GetParticipantShared(db::Conn& c, const std::string& id);
absl::StatusOr<v1::Participant> UpdateParticipant(db::Conn& c, const v1::Participant& p);
absl::StatusOr<v1::Participant> SetParticipantStatus(db::Conn& c, const std::string& id, int s);
struct ParticipantFilter {
  int grade = 0, status = 0;
  std::string directorate;
  std::string staff_number;
  std::string name_prefix;  // matched ignoring the case of ASCII letters
};
absl::StatusOr<std::vector<v1::Participant>> ListParticipants(db::Conn& c,
                                                              const ParticipantFilter& f,
                                                              const std::vector<std::string>& after,
                                                              int limit);

// Sessions.
absl::StatusOr<std::optional<v1::Session>> SessionByRequestId(db::Conn& c, const std::string& rid);
// Inserts the session and its sites; nullopt when request_id already exists.
absl::StatusOr<std::optional<std::string>> InsertSession(db::Conn& c, const v1::Session& s,
                                                         const std::string& rid);
absl::StatusOr<v1::Session> GetSession(db::Conn& c, const std::string& id, bool lock);
// Writes the session's title, date, times, host, broadcast link and its
// sites' capacities (bookings' copies of the date follow).
absl::Status UpdateSession(db::Conn& c, const v1::Session& s);
absl::Status SetSessionStatus(db::Conn& c, const std::string& id, int status);
struct SessionFilter {
  std::string from_date, to_date, organisation_id;
  int kind = 0, status = 0;
  std::string host_contact_id;
  bool with_free_seats = false;
};
absl::StatusOr<std::vector<v1::Session>> ListSessions(db::Conn& c, const SessionFilter& f,
                                                      const std::vector<std::string>& after,
                                                      int limit);

// Bookings.
struct SiteSeats {
  int capacity = 0, confirmed = 0, waitlisted = 0;
};
// Locks the site row (serialising all seat changes for it).
absl::StatusOr<std::optional<SiteSeats>> LockSite(db::Conn& c, const std::string& session_id,
                                                  const std::string& site);
// The sites where a seat is free while someone waits there who could take
// it (waiting_who_could_take_a_seat, migration 0012), as (session id,
// site), among the waitlisted bookings of `participant` and of everyone
// booked on `session` (either may be empty; both empty: everyone's);
// sessions SCHEDULED, not begun.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> SeatsFreeForWaiting(
    db::Conn& c, const std::string& participant, const std::string& session);
// Adjusts the site's confirmed and waitlisted counters.
absl::Status AddSeats(db::Conn& c, const std::string& session_id, const std::string& site,
                      int confirmed, int waitlisted);
// Locks every site of the session: CancelSession holds them so that no
// booking lands while it cancels the live ones.
absl::Status LockSites(db::Conn& c, const std::string& session_id);
// The PENDING_HOST sessions the participant arranged, locked, in id order.
absl::StatusOr<std::vector<std::string>> PendingSessionsArrangedBy(db::Conn& c,
                                                                   const std::string& participant);

// A booking in one statement (the book_sites function, migrations/R__book_session.sql):
// checks every rule under the site lock and writes the booking and the seat
// counters, or nothing. Its one row is read by ReadBooked. `args`: the same
// booking as BookRun takes it.
db::Statement BookStatement(const std::string& session_id, const std::string& participant_id,
                            const std::string& site, const std::string& request_id,
                            std::vector<db::Param>* args = nullptr);
// Bookings, in order, in one statement (a db::GroupCommitter::Combine: a
// batch's bookings, in its lock order): each rule checked for each as if it
// came alone, and the bookings of one site next to each other take its lock
// and write its counters once. `run`: the bookings' `args` from
// BookStatement. A row per booking, in order, each read by ReadBooked.
db::Statement BookRun(const std::vector<const db::GroupCommitter::Work*>& run);
struct Booked {
  // "booked", "prior" (request_id already booked) or a refusal; see the migration.
  std::string outcome;
  std::string detail;   // the booking in the way, for live_on_session / frontline_on_date
  v1::Booking booking;  // booked or prior
  SiteSeats seats;      // the site after the booking
  int participant_status = 0, partner_status = 0, session_status = 0;
  // The session as book_sites read it, under the site's lock; the booked
  // site's counters are those after the booking. Empty when outcome is
  // no_session, and for a prior booking found before taking the lock.
  v1::Session session;
};
absl::StatusOr<Booked> ReadBooked(const db::Result& r, int row = 0);
// A confirmed frontline booking of the participant on `date`, if any.
absl::StatusOr<std::optional<std::string>> ConfirmedFrontlineOn(db::Conn& c,
                                                                const std::string& participant_id,
                                                                const std::string& date);
absl::StatusOr<v1::Booking> GetBooking(db::Conn& c, const std::string& id, bool lock);
// The booking made with `request_id`, if any.
absl::StatusOr<std::optional<v1::Booking>> BookingByRequestId(db::Conn& c,
                                                              const std::string& request_id);
absl::Status SetBookingStatus(db::Conn& c, const std::string& id, int status);
// Waitlisted (booking id, participant id) of a site in arrival order, locked.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Waitlist(
    db::Conn& c, const std::string& session_id, const std::string& site);
// The session's CONFIRMED and WAITLISTED bookings (only the WAITLISTED with
// `waitlisted_only`), locked, in arrival order.
absl::StatusOr<std::vector<std::string>> LiveBookings(db::Conn& c, const std::string& session_id,
                                                      bool waitlisted_only = false);
// Live (confirmed or waitlisted) booking ids of a participant on sessions not yet begun.
absl::StatusOr<std::vector<std::string>> FutureLiveBookingsOf(db::Conn& c,
                                                              const std::string& participant_id);
// Sets the session's counters to none confirmed (unless `waitlists_only`)
// and none waiting.
absl::Status ResetSeats(db::Conn& c, const std::string& session_id, bool waitlists_only = false);
struct BookingFilter {
  std::string session_id, participant_id, partner_organisation_id;
  int status = 0;
};
// Every row of a kind, `limit` at a time after the id `after` (""
// first), in any order, given new versions if `new_version`: what
// `--republish` walks (bus::RowsAfter).
absl::StatusOr<std::vector<v1::Participant>> ParticipantsAfter(db::Conn& c,
                                                               const std::string& after, int limit,
                                                               bool new_version);
absl::StatusOr<std::vector<v1::Session>> SessionsAfter(db::Conn& c, const std::string& after,
                                                       int limit, bool new_version);
absl::StatusOr<std::vector<v1::Booking>> BookingsAfter(db::Conn& c, const std::string& after,
                                                       int limit, bool new_version);

absl::StatusOr<std::vector<v1::Booking>> ListBookings(db::Conn& c, const BookingFilter& f,
                                                      int64_t after_seq, int limit,
                                                      std::vector<int64_t>* seqs);

// Attendance facts, enduring contacts and figures.
// Removes the booking's fact (an attendance corrected to NO_SHOW).
absl::Status DeleteAttendanceFact(db::Conn& c, const std::string& booking_id);
absl::Status InsertAttendanceFact(db::Conn& c, const v1::Booking& b, const v1::Session& s,
                                  const v1::Participant& p, const PartnerOrganisation& org);
absl::StatusOr<bool> HasMetHost(db::Conn& c, const std::string& participant_id,
                                const std::string& host_contact_id);
absl::StatusOr<std::vector<v1::EnduringContact>> EnduringContacts(db::Conn& c,
                                                                  const std::string& participant);
// How figures are grouped: `group_sql`, a fixed expression over
// attendance_facts (the default, one group: the totals), and `key_sql`, the
// row's key written from it (as `k`); `chains`, the suffix of the
// c_prev/o_prev columns that link a connector's and an organisation's
// visits within one group ("", "_sector", "_region", "_directorate",
// "_grade"); `period`: the group is the first day of a month or quarter,
// and the visits before it lie outside it.
struct FiguresGrouping {
  std::string group_sql = "''::text";
  std::string key_sql = "k";
  std::string chains;
  bool period = false;
};
// The figures over [from, to]: the totals, and with `by` its rows in group
// order; with `organisation_id`, that organisation's visits only.
absl::StatusOr<v1::ProgrammeFigures> Figures(db::Conn& c, const FiguresGrouping* by,
                                             const std::string& from, const std::string& to,
                                             const std::string& organisation_id);

}  // namespace connecting::scheduling::store

#endif  // CONNECTING_SERVICES_SCHEDULING_STORE_H_
