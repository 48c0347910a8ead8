#include "services/scheduling/scheduling_rules.h"

#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace connecting::scheduling {

using server::FieldErrors;
using server::Principal;
using server::Role;

absl::TimeZone LocalZone() {
  static const absl::TimeZone* tz = [] {
    auto* z = new absl::TimeZone();
    if (!absl::LoadTimeZone("Europe/London", z)) *z = absl::UTCTimeZone();
    return z;
  }();
  return *tz;
}

std::string Today() { return absl::FormatTime("%Y-%m-%d", absl::Now(), LocalZone()); }

bool IsDate(const std::string& s) {
  absl::Time t;
  std::string err;
  if (s.size() != 10 || !absl::ParseTime("%Y-%m-%d", s, absl::UTCTimeZone(), &t, &err)) {
    return false;
  }
  return absl::FormatTime("%Y-%m-%d", t, absl::UTCTimeZone()) == s;  // rejects 2026-02-30
}

bool IsTimeOfDay(const std::string& s) {
  return s.size() == 5 && absl::ascii_isdigit(s[0]) && absl::ascii_isdigit(s[1]) && s[2] == ':' &&
         absl::ascii_isdigit(s[3]) && absl::ascii_isdigit(s[4]) &&
         (s[0] - '0') * 10 + (s[1] - '0') < 24 && (s[3] - '0') * 10 + (s[4] - '0') < 60;
}

absl::Time LocalInstant(const std::string& date, const std::string& hh_mm) {
  absl::Time t;
  std::string err;
  absl::ParseTime("%Y-%m-%d %H:%M", date + " " + hh_mm, LocalZone(), &t, &err);
  return t;
}

std::string CheckStaffNumber(FieldErrors& e, const std::string& field, const std::string& value,
                             bool required) {
  return server::CheckCode(e, field, value, 4, 12, required);
}

void ValidateParticipant(FieldErrors& e, const std::string& prefix, v1::Participant& p) {
  p.set_staff_number(CheckStaffNumber(e, prefix + ".staff_number", p.staff_number(), true));
  p.set_display_name(
      server::CheckText(e, prefix + ".display_name", p.display_name(), server::TextRule{1, 200}));
  std::string email(absl::StripAsciiWhitespace(p.email()));
  if (!server::IsValidUtf8(email) || !server::IsPlausibleEmail(email)) {
    e.Add(prefix + ".email", "must be an email address (local@domain)");
  }
  p.set_email(email);
  if (p.grade() == v1::GRADE_UNSPECIFIED) {
    e.Add(prefix + ".grade", "is required");
  } else if (!v1::Grade_IsValid(p.grade())) {
    e.Add(prefix + ".grade", absl::StrCat("unknown value ", p.grade()));
  }
  p.set_directorate(
      server::CheckText(e, prefix + ".directorate", p.directorate(), server::TextRule{1, 100}));
}

void ValidateSession(FieldErrors& e, const std::string& prefix, v1::Session& s) {
  if (s.kind() == v1::SESSION_KIND_UNSPECIFIED) {
    e.Add(prefix + ".kind", "is required");
  } else if (!v1::SessionKind_IsValid(s.kind())) {
    e.Add(prefix + ".kind", absl::StrCat("unknown value ", s.kind()));
  }
  s.set_title(server::CheckText(e, prefix + ".title", s.title(), server::TextRule{1, 200}));
  server::CheckUuid(e, prefix + ".organisation_id", s.organisation_id(), true);
  server::CheckUuid(e, prefix + ".offer_id", s.offer_id(), false);
  server::CheckUuid(e, prefix + ".host_contact_id", s.host_contact_id(), false);
  if (!IsDate(s.date())) {
    e.Add(prefix + ".date", "must be a date written YYYY-MM-DD");
  } else if (s.date() < Today()) {
    e.Add(prefix + ".date", absl::StrCat("must be today (", Today(), ") or later"));
  }
  bool times = true;
  if (!IsTimeOfDay(s.start_time())) {
    e.Add(prefix + ".start_time", "must be a time written HH:MM");
    times = false;
  }
  if (!IsTimeOfDay(s.end_time())) {
    e.Add(prefix + ".end_time", "must be a time written HH:MM");
    times = false;
  }
  if (times && s.end_time() <= s.start_time()) {
    e.Add(prefix + ".end_time", "must be after start_time");
  }
  bool event = s.kind() == v1::SESSION_KIND_DEPARTMENT_EVENT;
  if (event) {
    if (s.sites_size() < 1 || s.sites_size() > 20) {
      e.Add(prefix + ".sites", "a department event needs 1–20 sites");
    }
  } else if (s.sites_size() != 1) {
    e.Add(prefix + ".sites", "this kind of session has exactly one site (with its capacity)");
  }
  std::set<std::string> names;
  for (int i = 0; i < s.sites_size(); ++i) {
    v1::Site* site = s.mutable_sites(i);
    std::string f = absl::StrCat(prefix, ".sites[", i, "]");
    site->set_name(
        server::CheckText(e, f + ".name", site->name(), server::TextRule{event ? 1u : 0u, 100}));
    if (!event && !site->name().empty()) e.Add(f + ".name", "must be empty except for events");
    if (!names.insert(site->name()).second) e.Add(f + ".name", "repeats another site");
    if (site->capacity() < 1 || site->capacity() > 1000) {
      e.Add(f + ".capacity", absl::StrCat("must be between 1 and 1000, got ", site->capacity()));
    }
    site->set_confirmed(0);
    site->set_waitlisted(0);
  }
  if (!s.broadcast_link().empty()) {
    if (!event) {
      e.Add(prefix + ".broadcast_link", "only department events have a broadcast link");
    } else if (!absl::StartsWith(s.broadcast_link(), "https://") ||
               s.broadcast_link().size() > 500 || !server::IsValidUtf8(s.broadcast_link()) ||
               s.broadcast_link().find_first_of(" \t\n") != std::string::npos) {
      e.Add(prefix + ".broadcast_link", "must be an https:// link of at most 500 characters");
    }
  }
}

absl::Status RequireStaff(const Principal& p, const char* action) {
  if (p.is_staff()) return absl::OkStatus();
  return server::NotPermitted(p, absl::StrCat("only admin and system tokens may ", action,
                                              "; this token's role is ", server::RoleName(p.role)));
}

absl::Status MayReadParticipant(const Principal& p, const std::string& participant_id) {
  if (p.is_staff() || p.role == Role::kViewer) return absl::OkStatus();
  if (p.role == Role::kParticipant && p.participant_id == participant_id) return absl::OkStatus();
  return server::NotPermitted(
      p,
      absl::StrCat("role ", server::RoleName(p.role), " may not see participant ", participant_id),
      {{"participantId", participant_id}});
}

absl::Status MayActFor(const Principal& p, const std::string& participant_id) {
  if (p.is_staff()) return absl::OkStatus();
  if (p.role == Role::kParticipant && p.participant_id == participant_id) return absl::OkStatus();
  return server::NotPermitted(p,
                              absl::StrCat("role ", server::RoleName(p.role),
                                           " may not act for participant ", participant_id),
                              {{"participantId", participant_id}});
}

absl::Status MayManageSession(const Principal& p, const v1::Session& s) {
  if (p.is_staff()) return absl::OkStatus();
  if (p.role == Role::kPartner && p.organisation_id == s.organisation_id()) {
    return absl::OkStatus();
  }
  return server::NotPermitted(p,
                              absl::StrCat("only staff or the partner organisation ",
                                           s.organisation_id(), " may manage session ", s.id()),
                              {{"organisationId", s.organisation_id()}, {"sessionId", s.id()}});
}

}  // namespace connecting::scheduling
