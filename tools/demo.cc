// Loads demo data into a running stack through the public API. Every create
// carries a fixed request_id, so running it again changes nothing.
//   PARTNERS_ADDR=127.0.0.1:50051 AUTH_JWT_KEY=... connecting-demo
// With SCHEDULING_ADDR it also registers connectors and books visits; with
// SCHEDULING_DATABASE_URL too, it writes a year of past visits (SeedHistory),
// and a connector arranges a visit with a host met in them (ArrangeVisit).
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "connecting/partners/v1/partners.api.h"
#include "connecting/scheduling/v1/scheduling.api.h"
#include "libs/db/db.h"
#include "libs/server/auth.h"

namespace v1 = connecting::partners::v1;
namespace sv1 = connecting::scheduling::v1;

namespace {

struct DemoOrg {
  const char* name;
  const char* ods;
  v1::Sector sector;
  v1::Region region;
  const char* host;
  const char* email;
  const char* offer;
  v1::Setting setting;
};

const DemoOrg kOrgs[] = {
    {"Riverside University Hospitals NHS Trust", "RRV", v1::SECTOR_ACUTE_TRUST, v1::REGION_LONDON,
     "Amara Okafor", "amara.okafor@riverside.example.nhs.uk", "Acute medical unit shift",
     v1::SETTING_HOSPITAL_WARD},
    {"Northfield Mental Health Partnership", "RNF", v1::SECTOR_MENTAL_HEALTH_TRUST,
     v1::REGION_NORTH_WEST, "Dan Whitaker", "dan.whitaker@northfield.example.nhs.uk",
     "Crisis resolution team visit", v1::SETTING_MENTAL_HEALTH_SERVICE},
    {"Meadow Lane Surgery", "Y01234", v1::SECTOR_GENERAL_PRACTICE, v1::REGION_MIDLANDS,
     "Priya Shah", "priya.shah@meadowlane.example.nhs.uk", "A day in general practice",
     v1::SETTING_GP_SURGERY},
    {"Harbour City Council Adult Social Care", "", v1::SECTOR_LOCAL_AUTHORITY,
     v1::REGION_SOUTH_WEST, "Gareth Evans", "gareth.evans@harbourcity.example.gov.uk",
     "Reablement team home visits", v1::SETTING_HOME_CARE},
    {"Oakwood Care Home", "", v1::SECTOR_SOCIAL_CARE_PROVIDER, v1::REGION_EAST_OF_ENGLAND,
     "Rosa Martins", "rosa.martins@oakwood.example.org", "Care home day shift",
     v1::SETTING_CARE_HOME},
    {"Open Door Community Project", "", v1::SECTOR_VOLUNTARY_COMMUNITY,
     v1::REGION_NORTH_EAST_AND_YORKSHIRE, "Tom Reid", "tom.reid@opendoor.example.org",
     "Drop-in centre for people experiencing homelessness", v1::SETTING_VOLUNTARY_SERVICE},
};

// The date `days` from now in the department's time zone, YYYY-MM-DD.
std::string DaysAhead(int days) {
  absl::TimeZone tz;
  if (!absl::LoadTimeZone("Europe/London", &tz)) tz = absl::UTCTimeZone();
  return absl::FormatTime("%Y-%m-%d", absl::Now() + absl::Hours(24 * days), tz);
}

std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->AddMetadata("authorization", "Bearer " + token);
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return c;
}

bool Check(const grpc::Status& s, const char* what) {
  if (s.ok()) return true;
  std::fprintf(stderr, "%s failed: %d %s\n", what, s.error_code(), s.error_message().c_str());
  return false;
}

// A year of visits made before the system, so that the programme figures and
// each connector's enduring contacts have something to show: attended
// frontline visits at the demo organisations with their hosts, one to three
// connectors each. Written straight into scheduling's database, as an import
// of the programme's earlier records would be: no API books the past, and no
// events go out for them. Fixed ids: running it again changes nothing.
int SeedHistory(const std::string& db_url, const std::vector<std::string>& orgs,
                const std::vector<std::string>& hosts, const std::vector<std::string>& people) {
  connecting::db::Pool pool(db_url, 1, "connecting-demo");
  int added = 0;
  constexpr int kVisits = 40;
  for (int v = 0; v < kVisits; ++v) {
    const size_t o = v % orgs.size();
    const std::string session = absl::StrCat("demo-history-", v);
    const int attendees = 1 + v % 3;
    bool made = false;
    absl::Status st = connecting::db::Transact(pool, [&](connecting::db::Conn& c) -> absl::Status {
      // 10 to 361 days ago, every 9 days; status COMPLETED.
      auto r = c.Exec(
          "INSERT INTO sessions (id, kind, title, organisation_id, host_contact_id, session_date, "
          "start_time, end_time, status) VALUES (md5($1)::uuid, 1, $2, $3::uuid, $4::uuid, "
          "current_date - $5::int, '09:30', '16:30', 4) "
          "ON CONFLICT (id) DO NOTHING RETURNING id::text",
          {session, kOrgs[o].offer, orgs[o], hosts[o], 10 + 9 * v});
      if (!r.ok()) return r.status();
      made = r->rows() == 1;
      if (!made) return absl::OkStatus();  // loaded before
      const std::string id = r->String(0, 0);
      auto sites = c.Exec(
          "INSERT INTO session_sites (session_id, site, capacity, confirmed, ordinal) "
          "VALUES ($1::uuid, '', 4, $2, 0)",
          {id, attendees});
      if (!sites.ok()) return sites.status();
      for (int k = 0; k < attendees; ++k) {
        // ATTENDED; its attendance fact as RecordAttendance writes it.
        auto b = c.Exec(
            "WITH b AS (INSERT INTO bookings (id, session_id, site, participant_id, status, "
            "session_date, kind) SELECT md5($1)::uuid, s.id, '', $3::uuid, 4, s.session_date, 1 "
            "FROM sessions s WHERE s.id = $2::uuid RETURNING id, session_date) "
            "INSERT INTO attendance_facts (booking_id, session_date, participant_id, "
            "organisation_id, host_contact_id, sector, region, directorate, grade) "
            "SELECT b.id, b.session_date, p.id, o.id, $5::uuid, o.sector, o.region, "
            "p.directorate, p.grade FROM b, participants p, partner_organisations o "
            "WHERE p.id = $3::uuid AND o.id = $4::uuid",
            {absl::StrCat(session, "-", k), id, people[(v + 2 * k) % people.size()], orgs[o],
             hosts[o]});
        if (!b.ok()) return b.status();
      }
      return absl::OkStatus();
    });
    if (!st.ok()) {
      std::fprintf(stderr, "history: %s\n", st.ToString().c_str());
      return 1;
    }
    if (made) ++added;
  }
  std::printf("  history: %d past visits (%d new), figures and enduring contacts from them\n",
              kVisits, added);
  return 0;
}

// Connectors, sessions at the demo partners (once scheduling has heard of
// them from the partners stream) and a few bookings.
int SeedScheduling(const char* addr, const std::string& token, const std::vector<std::string>& orgs,
                   const std::vector<std::string>& hosts, std::vector<std::string>* people_out) {
  auto stub = sv1::SchedulingService::NewStub(
      grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  const char* people[][3] = {{"Asha Patel", "Primary Care and Prevention", "SCS"},
                             {"Ben Carter", "Social Care", "POLICY"},
                             {"Chloe Nguyen", "Mental Health", "ANALYST"},
                             {"David Okoye", "NHS Operations", "POLICY"},
                             {"Ellen Hughes", "Public Health", "OTHER"}};
  std::vector<std::string> participant_ids;
  int n = 0;
  for (const auto& p : people) {
    ++n;
    sv1::RegisterParticipantRequest req;
    req.set_request_id("demo-participant-" + std::to_string(n));
    sv1::Participant* x = req.mutable_participant();
    x->set_staff_number("DEMO" + std::to_string(1000 + n));
    x->set_display_name(p[0]);
    x->set_email("demo" + std::to_string(n) + "@dept.example.gov.uk");
    x->set_directorate(p[1]);
    x->set_grade(std::string(p[2]) == "SCS"       ? sv1::GRADE_SENIOR_CIVIL_SERVANT
                 : std::string(p[2]) == "POLICY"  ? sv1::GRADE_POLICY
                 : std::string(p[2]) == "ANALYST" ? sv1::GRADE_ANALYST
                                                  : sv1::GRADE_OTHER);
    sv1::Participant out;
    if (!Check(stub->RegisterParticipant(Ctx(token).get(), req, &out), "RegisterParticipant")) {
      return 1;
    }
    participant_ids.push_back(out.id());
  }
  for (size_t i = 0; i < orgs.size(); ++i) {
    sv1::CreateSessionRequest req;
    req.set_request_id("demo-session-" + std::to_string(i + 1));
    sv1::Session* s = req.mutable_session();
    s->set_kind(sv1::SESSION_KIND_FRONTLINE_VISIT);
    s->set_title(kOrgs[i].offer);
    s->set_organisation_id(orgs[i]);
    s->set_host_contact_id(hosts[i]);
    s->set_date(DaysAhead(7 + 2 * static_cast<int>(i)));
    s->set_start_time("09:30");
    s->set_end_time("16:30");
    // Three bookings each: every other session full with someone waiting,
    // the rest with seats free (ListSessions with_free_seats finds them).
    s->add_sites()->set_capacity(i % 2 == 0 ? 2 : 4);
    sv1::Session out;
    grpc::Status st;
    // Scheduling learns of the partners from their events; give it a moment.
    for (int attempt = 0; attempt < 60; ++attempt) {
      st = stub->CreateSession(Ctx(token).get(), req, &out);
      if (st.error_code() != grpc::StatusCode::FAILED_PRECONDITION) break;
      absl::SleepFor(absl::Milliseconds(250));
    }
    if (!Check(st, "CreateSession")) return 1;
    for (size_t k = 0; k < 3; ++k) {
      sv1::BookSessionRequest b;
      b.set_request_id("demo-booking-" + std::to_string(i) + "-" + std::to_string(k));
      b.set_session_id(out.id());
      b.set_participant_id(participant_ids[(i + k) % participant_ids.size()]);
      sv1::Booking booked;
      grpc::Status bs = stub->BookSession(Ctx(token).get(), b, &booked);
      if (!bs.ok() && bs.error_code() != grpc::StatusCode::FAILED_PRECONDITION) {
        Check(bs, "BookSession");
        return 1;
      }
    }
    std::printf("  session %-37s %s %s\n", s->title().c_str(), s->date().c_str(), out.id().c_str());
  }
  *people_out = participant_ids;
  return 0;
}

// A connector arranges a follow-up visit with a host met in the history (an
// enduring contact), as a connector's own app would, with their token: it
// waits for the partner's host to accept it (PENDING_HOST), which a partner
// token finds with ListSessions by status.
int ArrangeVisit(const std::string& addr, const std::string& key, const std::string& connector,
                 const std::string& org, const std::string& host) {
  auto token = connecting::server::MintToken(key, connecting::server::Role::kParticipant, connector,
                                             {}, absl::Minutes(10));
  if (!token.ok()) return 1;
  auto stub = sv1::SchedulingService::NewStub(
      grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  sv1::CreateSessionRequest req;
  req.set_request_id("demo-arranged-1");
  sv1::Session* s = req.mutable_session();
  s->set_kind(sv1::SESSION_KIND_FRONTLINE_VISIT);
  s->set_title("Follow-up visit");
  s->set_organisation_id(org);
  s->set_host_contact_id(host);
  s->set_date(DaysAhead(30));
  s->set_start_time("10:00");
  s->set_end_time("15:00");
  s->add_sites()->set_capacity(1);
  sv1::Session out;
  if (!Check(stub->CreateSession(Ctx(*token).get(), req, &out), "CreateSession (arranged)")) {
    return 1;
  }
  std::printf("  arranged visit %s %s %s (%s)\n", out.title().c_str(), out.date().c_str(),
              out.id().c_str(), sv1::SessionStatus_Name(out.status()).c_str());
  return 0;
}

}  // namespace

int main() {
  const char* addr = std::getenv("PARTNERS_ADDR");
  const char* key = std::getenv("AUTH_JWT_KEY");
  if (addr == nullptr || key == nullptr) {
    std::fprintf(stderr, "set PARTNERS_ADDR and AUTH_JWT_KEY\n");
    return 2;
  }
  auto token = connecting::server::MintToken(key, connecting::server::Role::kAdmin, "demo-loader",
                                             {}, absl::Minutes(10));
  if (!token.ok()) return 1;
  auto stub =
      v1::PartnersService::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  int i = 0;
  std::vector<std::string> org_ids, host_ids;
  for (const DemoOrg& d : kOrgs) {
    ++i;
    v1::CreateOrganisationRequest co;
    co.set_request_id("demo-organisation-" + std::to_string(i));
    co.mutable_organisation()->set_name(d.name);
    co.mutable_organisation()->set_ods_code(d.ods);
    co.mutable_organisation()->set_sector(d.sector);
    co.mutable_organisation()->set_region(d.region);
    v1::Organisation org;
    if (!Check(stub->CreateOrganisation(Ctx(*token).get(), co, &org), "CreateOrganisation")) {
      return 1;
    }
    v1::CreateContactRequest cc;
    cc.set_request_id("demo-contact-" + std::to_string(i));
    cc.mutable_contact()->set_organisation_id(org.id());
    cc.mutable_contact()->set_display_name(d.host);
    cc.mutable_contact()->set_email(d.email);
    cc.mutable_contact()->set_job_title("Connecting host");
    v1::Contact host;
    if (!Check(stub->CreateContact(Ctx(*token).get(), cc, &host), "CreateContact")) return 1;
    v1::CreateOfferRequest of;
    of.set_request_id("demo-offer-" + std::to_string(i));
    v1::Offer* o = of.mutable_offer();
    o->set_organisation_id(org.id());
    o->set_title(d.offer);
    o->set_setting(d.setting);
    o->set_description("Shadow frontline staff and talk with people who use the service.");
    o->set_capacity_per_day(2);
    o->add_weekdays(v1::WEEKDAY_TUESDAY);
    o->add_weekdays(v1::WEEKDAY_THURSDAY);
    o->add_requirements("Photo ID on arrival");
    o->set_host_contact_id(host.id());
    v1::Offer offer;
    if (!Check(stub->CreateOffer(Ctx(*token).get(), of, &offer), "CreateOffer")) return 1;
    if (offer.state() != v1::OFFER_STATE_PUBLISHED) {
      v1::PublishOfferRequest pub;
      pub.set_id(offer.id());
      if (!Check(stub->PublishOffer(Ctx(*token).get(), pub, &offer), "PublishOffer")) return 1;
    }
    std::printf("  %-45s %s\n", org.name().c_str(), org.id().c_str());
    org_ids.push_back(org.id());
    host_ids.push_back(host.id());
  }
  const char* sched_addr = std::getenv("SCHEDULING_ADDR");
  if (sched_addr == nullptr) return 0;
  std::vector<std::string> people;
  if (int rc = SeedScheduling(sched_addr, *token, org_ids, host_ids, &people); rc != 0) return rc;
  const char* history_db = std::getenv("SCHEDULING_DATABASE_URL");
  if (history_db == nullptr) return 0;
  if (int rc = SeedHistory(history_db, org_ids, host_ids, people); rc != 0) return rc;
  return ArrangeVisit(sched_addr, key, people[0], org_ids[0], host_ids[0]);
}
