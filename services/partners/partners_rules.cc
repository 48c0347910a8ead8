#include "services/partners/partners_rules.h"

#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "libs/server/errors.h"

namespace connecting::partners {

using server::FieldErrors;
using server::Principal;
using server::Role;
using server::TextRule;

std::string CheckOdsCode(FieldErrors& errors, const std::string& field, const std::string& value) {
  return server::CheckCode(errors, field, value, 3, 10, false, "(e.g. RJ1, A81001)");
}

void ValidateOrganisation(FieldErrors& errors, const std::string& prefix, v1::Organisation& org) {
  org.set_name(server::CheckText(errors, prefix + ".name", org.name(), TextRule{1, 200}));
  org.set_ods_code(CheckOdsCode(errors, prefix + ".ods_code", org.ods_code()));
  if (org.sector() == v1::SECTOR_UNSPECIFIED) {
    errors.Add(prefix + ".sector", "is required");
  } else if (!v1::Sector_IsValid(org.sector())) {
    errors.Add(prefix + ".sector", absl::StrCat("unknown value ", org.sector()));
  }
  if (org.region() == v1::REGION_UNSPECIFIED) {
    errors.Add(prefix + ".region", "is required");
  } else if (!v1::Region_IsValid(org.region())) {
    errors.Add(prefix + ".region", absl::StrCat("unknown value ", org.region()));
  }
  org.set_description(server::CheckText(errors, prefix + ".description", org.description(),
                                        TextRule{0, 2000, true}));
}

void ValidateContact(FieldErrors& errors, const std::string& prefix, v1::Contact& c) {
  c.set_display_name(
      server::CheckText(errors, prefix + ".display_name", c.display_name(), TextRule{1, 200}));
  std::string email(absl::StripAsciiWhitespace(c.email()));
  if (email.empty()) {
    errors.Add(prefix + ".email", "is required");
  } else if (!server::IsValidUtf8(email) || !server::IsPlausibleEmail(email)) {
    errors.Add(prefix + ".email",
               "must be an email address (local@domain), at most 254 characters");
  }
  c.set_email(email);
  std::string phone(absl::StripAsciiWhitespace(c.phone()));
  bool phone_ok = phone.size() <= 32;
  for (char ch : phone) {
    phone_ok = phone_ok && (absl::ascii_isdigit(static_cast<unsigned char>(ch)) || ch == ' ' ||
                            ch == '+' || ch == '(' || ch == ')' || ch == '-');
  }
  if (!phone_ok) errors.Add(prefix + ".phone", "must be at most 32 digits, spaces and + ( ) -");
  c.set_phone(phone);
  c.set_job_title(
      server::CheckText(errors, prefix + ".job_title", c.job_title(), TextRule{0, 200}));
}

void ValidateOffer(FieldErrors& errors, const std::string& prefix, v1::Offer& o) {
  o.set_title(server::CheckText(errors, prefix + ".title", o.title(), TextRule{1, 200}));
  if (o.setting() == v1::SETTING_UNSPECIFIED) {
    errors.Add(prefix + ".setting", "is required");
  } else if (!v1::Setting_IsValid(o.setting())) {
    errors.Add(prefix + ".setting", absl::StrCat("unknown value ", o.setting()));
  }
  o.set_description(
      server::CheckText(errors, prefix + ".description", o.description(), TextRule{0, 4000, true}));
  if (o.capacity_per_day() < 1 || o.capacity_per_day() > 100) {
    errors.Add(prefix + ".capacity_per_day",
               absl::StrCat("must be between 1 and 100, got ", o.capacity_per_day()));
  }
  if (o.weekdays_size() == 0) {
    errors.Add(prefix + ".weekdays", "must name at least one day");
  } else {
    std::set<int> seen;
    for (int d : o.weekdays()) {
      if (d == v1::WEEKDAY_UNSPECIFIED || !v1::Weekday_IsValid(d)) {
        errors.Add(prefix + ".weekdays", absl::StrCat("unknown or unspecified day ", d));
        break;
      }
      if (!seen.insert(d).second) {
        errors.Add(prefix + ".weekdays", absl::StrCat("day ", v1::Weekday_Name(d), " repeated"));
        break;
      }
    }
  }
  if (o.requirements_size() > 20) {
    errors.Add(prefix + ".requirements", "must have at most 20 entries");
  } else {
    for (int i = 0; i < o.requirements_size(); ++i) {
      o.set_requirements(i,
                         server::CheckText(errors, absl::StrCat(prefix, ".requirements[", i, "]"),
                                           o.requirements(i), TextRule{1, 200}));
    }
  }
  server::CheckUuid(errors, prefix + ".host_contact_id", o.host_contact_id(), false);
}

const std::vector<std::string>& OrganisationMaskPaths() {
  static const auto* p =
      new std::vector<std::string>{"name", "ods_code", "sector", "region", "description"};
  return *p;
}
const std::vector<std::string>& ContactMaskPaths() {
  static const auto* p =
      new std::vector<std::string>{"display_name", "email", "phone", "job_title"};
  return *p;
}
const std::vector<std::string>& OfferMaskPaths() {
  static const auto* p =
      new std::vector<std::string>{"title",    "setting",      "description",    "capacity_per_day",
                                   "weekdays", "requirements", "host_contact_id"};
  return *p;
}

absl::Status MayReadContacts(const Principal& p, const std::string& organisation_id) {
  if (p.is_staff() || p.role == Role::kViewer) return absl::OkStatus();
  if (p.role == Role::kPartner && p.organisation_id == organisation_id) return absl::OkStatus();
  return server::NotPermitted(
      p,
      absl::StrCat("role ", server::RoleName(p.role), " may not read the contacts of organisation ",
                   organisation_id),
      {{"organisationId", organisation_id}});
}

absl::Status MayChange(const Principal& p, const std::string& organisation_id) {
  if (p.is_staff()) return absl::OkStatus();
  if (p.role == Role::kPartner) {
    if (p.organisation_id == organisation_id) return absl::OkStatus();
    return server::NotPermitted(
        p,
        absl::StrCat("a partner token may change only its own organisation (", p.organisation_id,
                     ")"),
        {{"organisationId", p.organisation_id}});
  }
  return server::NotPermitted(
      p, absl::StrCat("role ", server::RoleName(p.role), " may not change partners data"));
}

absl::Status MayAdminister(const Principal& p, const char* action) {
  if (p.is_staff()) return absl::OkStatus();
  return server::NotPermitted(p, absl::StrCat("only admin and system tokens may ", action,
                                              "; this token's role is ", server::RoleName(p.role)));
}

absl::Status CheckTransition(const Principal& p, const std::string& organisation_id,
                             v1::OrganisationStatus from, OrgTransition t) {
  using v1::ORGANISATION_STATUS_ACTIVE;
  using v1::ORGANISATION_STATUS_ARCHIVED;
  using v1::ORGANISATION_STATUS_PAUSED;
  switch (t) {
    case OrgTransition::kPause:
      if (absl::Status s = MayChange(p, organisation_id); !s.ok()) return s;
      if (from != ORGANISATION_STATUS_ACTIVE) {
        return server::Refusal(
            from == ORGANISATION_STATUS_PAUSED ? "ALREADY_IN_STATE" : "WRONG_STATE",
            absl::StrCat("only an ACTIVE organisation can be paused; it is ",
                         v1::OrganisationStatus_Name(from)),
            {{"status", v1::OrganisationStatus_Name(from)}});
      }
      return absl::OkStatus();
    case OrgTransition::kArchive:
      if (absl::Status s = MayAdminister(p, "archive an organisation"); !s.ok()) return s;
      if (from == ORGANISATION_STATUS_ARCHIVED) {
        return server::Refusal("ALREADY_IN_STATE", "the organisation is already ARCHIVED",
                               {{"status", v1::OrganisationStatus_Name(from)}});
      }
      return absl::OkStatus();
    case OrgTransition::kReactivate:
      if (absl::Status s = MayChange(p, organisation_id); !s.ok()) return s;
      if (from == ORGANISATION_STATUS_ACTIVE) {
        return server::Refusal("ALREADY_IN_STATE", "the organisation is already ACTIVE",
                               {{"status", v1::OrganisationStatus_Name(from)}});
      }
      if (from == ORGANISATION_STATUS_ARCHIVED && !p.is_staff()) {
        return server::NotPermitted(
            p, "only admin and system tokens may reactivate an ARCHIVED organisation");
      }
      return absl::OkStatus();
  }
  return absl::InternalError("unknown transition");
}

}  // namespace connecting::partners
