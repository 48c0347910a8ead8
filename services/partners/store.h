// All SQL of the partners service, one function per statement. Functions run
// on the caller's connection (inside its transaction) and return protos.
// NOT_FOUND names the resource; constraint violations come back as
// ALREADY_EXISTS / FAILED_PRECONDITION with db::ConstraintOf() set.
#ifndef CONNECTING_SERVICES_PARTNERS_STORE_H_
#define CONNECTING_SERVICES_PARTNERS_STORE_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "connecting/partners/v1/partners.pb.h"
#include "libs/db/db.h"

namespace connecting::partners::store {

namespace v1 = ::connecting::partners::v1;

// Sort key of the last row of a page, for keyset pagination.
struct After {
  std::string sort_text;  // name / display_name / title
  std::string id;
};

struct OrganisationFilter {
  int sector = 0;
  int region = 0;
  int status = 0;
  std::string name_prefix;
  std::string ods_code;
};

// The resource a request_id made, and in `digest` what its request asked
// for (server::RequestDigest; empty for rows made before migration 0006).
absl::StatusOr<std::optional<v1::Organisation>> OrganisationByRequestId(db::Conn& c,
                                                                        const std::string& rid,
                                                                        std::string* digest);
// nullopt when a row with the same request_id already exists (a concurrent retry).
absl::StatusOr<std::optional<v1::Organisation>> InsertOrganisation(db::Conn& c,
                                                                   const v1::Organisation& o,
                                                                   const std::string& rid,
                                                                   const std::string& digest);
absl::StatusOr<v1::Organisation> GetOrganisation(db::Conn& c, const std::string& id,
                                                 bool for_update);
// The organisation, read FOR SHARE: its status holds until the transaction
// ends, and one being archived (held FOR UPDATE) is waited for and read as
// committed. Take it before the rows of the organisation it guards.
absl::StatusOr<v1::Organisation> ShareOrganisation(db::Conn& c, const std::string& id);
absl::StatusOr<v1::Organisation> UpdateOrganisation(db::Conn& c, const v1::Organisation& o);
absl::StatusOr<v1::Organisation> SetOrganisationStatus(db::Conn& c, const std::string& id,
                                                       v1::OrganisationStatus status);
absl::StatusOr<std::vector<v1::Organisation>> ListOrganisations(db::Conn& c,
                                                                const OrganisationFilter& f,
                                                                const std::optional<After>& after,
                                                                int limit);

absl::StatusOr<std::optional<v1::Contact>> ContactByRequestId(db::Conn& c, const std::string& rid,
                                                              std::string* digest);
absl::StatusOr<std::optional<v1::Contact>> InsertContact(db::Conn& c, const v1::Contact& ct,
                                                         const std::string& rid,
                                                         const std::string& digest);
absl::StatusOr<v1::Contact> GetContact(db::Conn& c, const std::string& id, bool for_update);
absl::StatusOr<v1::Contact> UpdateContact(db::Conn& c, const v1::Contact& ct);
absl::Status DeleteContact(db::Conn& c, const std::string& id);
// Offers (any state) hosted by the contact.
absl::StatusOr<std::vector<std::string>> OffersHostedBy(db::Conn& c, const std::string& contact_id);
absl::StatusOr<std::vector<v1::Contact>> ListContacts(db::Conn& c, const std::string& org_id,
                                                      const std::optional<After>& after, int limit);

absl::StatusOr<std::optional<v1::Offer>> OfferByRequestId(db::Conn& c, const std::string& rid,
                                                          std::string* digest);
absl::StatusOr<std::optional<v1::Offer>> InsertOffer(db::Conn& c, const v1::Offer& o,
                                                     const std::string& rid,
                                                     const std::string& digest);
absl::StatusOr<v1::Offer> GetOffer(db::Conn& c, const std::string& id, bool for_update);
absl::StatusOr<v1::Offer> UpdateOffer(db::Conn& c, const v1::Offer& o);
absl::StatusOr<v1::Offer> SetOfferState(db::Conn& c, const std::string& id, v1::OfferState s);
// Published offers of an organisation, locked for update.
absl::StatusOr<std::vector<std::string>> PublishedOffers(db::Conn& c, const std::string& org_id);
absl::StatusOr<std::vector<v1::Offer>> ListOffers(db::Conn& c, const std::string& org_id, int state,
                                                  const std::optional<After>& after, int limit);

// Every row of a kind, `limit` at a time after the id `after` ("" for the
// first page; the page is the next rows in id order, returned in any order):
// what `--republish` walks. `new_version`: each row of the page gets its next
// version (its etag changes; nothing else does), as `--republish
// --after-restore` needs.
absl::StatusOr<std::vector<v1::Organisation>> OrganisationsAfter(db::Conn& c,
                                                                 const std::string& after,
                                                                 int limit, bool new_version);
absl::StatusOr<std::vector<v1::Contact>> ContactsAfter(db::Conn& c, const std::string& after,
                                                       int limit, bool new_version);
absl::StatusOr<std::vector<v1::Offer>> OffersAfter(db::Conn& c, const std::string& after, int limit,
                                                   bool new_version);

}  // namespace connecting::partners::store

#endif  // CONNECTING_SERVICES_PARTNERS_STORE_H_
