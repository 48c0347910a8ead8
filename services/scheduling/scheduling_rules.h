// Scheduling rules without I/O: what a valid participant and session are,
// local dates and times in England, and who may do what.
#ifndef CONNECTING_SERVICES_SCHEDULING_SCHEDULING_RULES_H_
#define CONNECTING_SERVICES_SCHEDULING_SCHEDULING_RULES_H_

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "connecting/scheduling/v1/scheduling.pb.h"
#include "libs/server/auth.h"
#include "libs/server/validate.h"

namespace connecting::scheduling {

namespace v1 = ::connecting::scheduling::v1;

// The department's time zone (Europe/London; UTC if tzdata is missing).
absl::TimeZone LocalZone();
// Today's local date, "YYYY-MM-DD".
std::string Today();
// True for a real calendar date written "YYYY-MM-DD".
bool IsDate(const std::string& s);
// True for "HH:MM", 00:00–23:59.
bool IsTimeOfDay(const std::string& s);
// The instant of a local date and time.
absl::Time LocalInstant(const std::string& date, const std::string& hh_mm);

// A staff number, canonical: trimmed, upper case.
std::string CheckStaffNumber(server::FieldErrors& e, const std::string& field,
                             const std::string& value, bool required);
void ValidateParticipant(server::FieldErrors& e, const std::string& prefix, v1::Participant& p);
// Checks a new session (dates not in the past, sites by kind, link).
void ValidateSession(server::FieldErrors& e, const std::string& prefix, v1::Session& s);

// Staff (admin, system) only.
absl::Status RequireStaff(const server::Principal& p, const char* action);
// Reading a participant's data: staff, viewer, or that participant.
absl::Status MayReadParticipant(const server::Principal& p, const std::string& participant_id);
// Acting for a participant (booking, cancelling): staff or that participant.
absl::Status MayActFor(const server::Principal& p, const std::string& participant_id);
// Managing a session (accept, attendance): staff or a partner of its organisation.
absl::Status MayManageSession(const server::Principal& p, const v1::Session& s);

}  // namespace connecting::scheduling

#endif  // CONNECTING_SERVICES_SCHEDULING_SCHEDULING_RULES_H_
