// Helpers shared by the scheduling tests.
#ifndef CONNECTING_TESTS_SCHEDULING_COMMON_H_
#define CONNECTING_TESTS_SCHEDULING_COMMON_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "libs/db/db.h"
#include "tests/harness.h"

namespace connecting::testing {

namespace sv1 = ::connecting::scheduling::v1;

// A local date `days` from today (Europe/London), "YYYY-MM-DD".
inline std::string DateIn(int days) {
  absl::TimeZone tz;
  if (!absl::LoadTimeZone("Europe/London", &tz)) tz = absl::UTCTimeZone();
  return absl::FormatTime("%Y-%m-%d", absl::Now() + absl::Hours(24 * days), tz);
}

inline sv1::Participant Register(SchedulingFixture& fx, const std::string& staff_number,
                                 const std::string& directorate = "Primary Care",
                                 sv1::Grade grade = sv1::GRADE_POLICY) {
  sv1::RegisterParticipantRequest req;
  sv1::Participant* p = req.mutable_participant();
  p->set_staff_number(staff_number);
  p->set_display_name("Connector " + staff_number);
  p->set_email(staff_number + "@dept.example.gov.uk");
  p->set_grade(grade);
  p->set_directorate(directorate);
  sv1::Participant out;
  grpc::Status s = fx.stub->RegisterParticipant(Ctx(fx.admin).get(), req, &out);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return out;
}

inline sv1::Session NewSession(SchedulingFixture& fx, const std::string& org, int capacity,
                               const std::string& date,
                               sv1::SessionKind kind = sv1::SESSION_KIND_FRONTLINE_VISIT) {
  sv1::CreateSessionRequest req;
  sv1::Session* s = req.mutable_session();
  s->set_kind(kind);
  s->set_title("Visit");
  s->set_organisation_id(org);
  s->set_host_contact_id(fx.hosts[org]);  // made by CreatePartner
  s->set_date(date);
  s->set_start_time("09:00");
  s->set_end_time("17:00");
  s->add_sites()->set_capacity(capacity);
  sv1::Session out;
  grpc::Status st = fx.stub->CreateSession(Ctx(fx.admin).get(), req, &out);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return out;
}

// A department event ("Connecting comes to you") with the given sites and
// their capacities, in that order.
inline sv1::Session NewEventSession(SchedulingFixture& fx, const std::string& org,
                                    const std::string& date,
                                    const std::vector<std::pair<std::string, int>>& sites) {
  sv1::CreateSessionRequest req;
  sv1::Session* s = req.mutable_session();
  s->set_kind(sv1::SESSION_KIND_DEPARTMENT_EVENT);
  s->set_title("Connecting comes to you");
  s->set_organisation_id(org);
  s->set_date(date);
  s->set_start_time("12:00");
  s->set_end_time("13:00");
  s->set_broadcast_link("https://stream.example.gov.uk/connecting/42");
  for (const auto& [name, capacity] : sites) {
    sv1::Site* site = s->add_sites();
    site->set_name(name);
    site->set_capacity(capacity);
  }
  sv1::Session out;
  grpc::Status st = fx.stub->CreateSession(Ctx(fx.admin).get(), req, &out);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return out;
}

inline grpc::Status Book(SchedulingFixture& fx, const std::string& session,
                         const std::string& participant, sv1::Booking* out,
                         const std::string& request_id = "", const std::string& token = "") {
  sv1::BookSessionRequest req;
  req.set_session_id(session);
  req.set_participant_id(participant);
  req.set_request_id(request_id);
  return fx.stub->BookSession(Ctx(token.empty() ? fx.admin : token).get(), req, out);
}

// What a connector arranges after meeting a host: a visit to `org` they
// attended two days ago (with its host, fx.hosts[org]), then a follow-up with
// that host on `date` that they arrange themselves, PENDING_HOST until the
// partner accepts it.
inline sv1::Session ArrangedVisit(SchedulingFixture& fx, const std::string& org,
                                  const std::string& participant, const std::string& date) {
  sv1::Session met = NewSession(fx, org, 1, DateIn(2));
  sv1::Booking b;
  EXPECT_TRUE(Book(fx, met.id(), participant, &b).ok());
  auto conn = db::Conn::Open(fx.scheduling_db, "test");  // the tests' time machine
  EXPECT_TRUE(conn.ok()) << conn.status();
  if (!conn.ok()) return {};
  EXPECT_TRUE((*conn)
                  ->ExecScript(absl::StrCat(
                      "UPDATE sessions SET session_date = current_date - 2 WHERE id = '", met.id(),
                      "'; UPDATE bookings SET session_date = current_date - 2 ", "WHERE id = '",
                      b.id(), "'"))
                  .ok());
  sv1::RecordAttendanceRequest att;
  att.set_id(b.id());
  att.set_attended(true);
  EXPECT_TRUE(fx.stub->RecordAttendance(Ctx(fx.admin).get(), att, &b).ok());
  sv1::CreateSessionRequest req;
  sv1::Session* s = req.mutable_session();
  s->set_kind(sv1::SESSION_KIND_FRONTLINE_VISIT);
  s->set_title("Follow-up visit");
  s->set_organisation_id(org);
  s->set_host_contact_id(fx.hosts[org]);
  s->set_date(date);
  s->set_start_time("10:00");
  s->set_end_time("15:00");
  s->add_sites()->set_capacity(1);
  sv1::Session out;
  grpc::Status st =
      fx.stub->CreateSession(Ctx(Token(server::Role::kParticipant, participant)).get(), req, &out);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(out.status(), sv1::SESSION_STATUS_PENDING_HOST);
  return out;
}

inline std::vector<sv1::Booking> SessionBookings(SchedulingFixture& fx,
                                                 const std::string& session) {
  std::vector<sv1::Booking> out;
  sv1::ListBookingsRequest req;
  req.set_session_id(session);
  req.set_page_size(500);
  do {
    sv1::ListBookingsResponse resp;
    grpc::Status s = fx.stub->ListBookings(Ctx(fx.admin).get(), req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    if (!s.ok()) break;
    for (const auto& b : resp.bookings()) out.push_back(b);
    req.set_page_token(resp.next_page_token());
  } while (!req.page_token().empty());
  return out;
}

}  // namespace connecting::testing

#endif  // CONNECTING_TESTS_SCHEDULING_COMMON_H_
