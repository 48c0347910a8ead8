// The partners domain rules, free of I/O: what a valid organisation, contact
// and offer is, which state changes are allowed, and who may change what.
// Every violation names the request field it concerns.
#ifndef CONNECTING_SERVICES_PARTNERS_PARTNERS_RULES_H_
#define CONNECTING_SERVICES_PARTNERS_PARTNERS_RULES_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "connecting/partners/v1/partners.pb.h"
#include "libs/server/auth.h"
#include "libs/server/validate.h"

namespace connecting::partners {

namespace v1 = ::connecting::partners::v1;

// An ODS code (empty allowed), canonical: trimmed, upper case.
std::string CheckOdsCode(server::FieldErrors& errors, const std::string& field,
                         const std::string& value);
// Normalises (trims, upper-cases the ODS code) and checks the writable fields
// of `org`. `prefix` is the field path of the message, e.g. "organisation".
void ValidateOrganisation(server::FieldErrors& errors, const std::string& prefix,
                          v1::Organisation& org);
void ValidateContact(server::FieldErrors& errors, const std::string& prefix, v1::Contact& c);
void ValidateOffer(server::FieldErrors& errors, const std::string& prefix, v1::Offer& o);

// The update_mask paths each resource accepts.
const std::vector<std::string>& OrganisationMaskPaths();
const std::vector<std::string>& ContactMaskPaths();
const std::vector<std::string>& OfferMaskPaths();

// Reading: every role may read organisations and offers.
// Contacts (personal data): staff, viewers, and a partner for its own organisation.
absl::Status MayReadContacts(const server::Principal& p, const std::string& organisation_id);
// Changing an organisation's own data, contacts and offers.
absl::Status MayChange(const server::Principal& p, const std::string& organisation_id);
// Creating organisations and archiving them: staff only.
absl::Status MayAdminister(const server::Principal& p, const char* action);

enum class OrgTransition { kPause, kArchive, kReactivate };
// FAILED_PRECONDITION when `from` cannot make the transition; PERMISSION_DENIED
// when the caller may not.
absl::Status CheckTransition(const server::Principal& p, const std::string& organisation_id,
                             v1::OrganisationStatus from, OrgTransition t);

}  // namespace connecting::partners

#endif  // CONNECTING_SERVICES_PARTNERS_PARTNERS_RULES_H_
