#include "services/partners/store.h"

#include <google/protobuf/util/time_util.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "libs/bus/republish.h"
#include "libs/db/rows.h"

namespace connecting::partners::store {
namespace {

using google::protobuf::util::TimeUtil;

constexpr char kOrgCols[] =
    "id::text, name, COALESCE(ods_code, ''), sector, region, status, description, "
    "(extract(epoch FROM created_at) * 1000000)::bigint, "
    "(extract(epoch FROM updated_at) * 1000000)::bigint, version";

constexpr char kContactCols[] =
    "id::text, organisation_id::text, display_name, email, phone, job_title, "
    "(extract(epoch FROM created_at) * 1000000)::bigint, "
    "(extract(epoch FROM updated_at) * 1000000)::bigint, version";

constexpr char kOfferCols[] =
    "id::text, organisation_id::text, title, setting, description, capacity_per_day, "
    "array_to_string(weekdays, ','), array_to_string(requirements, E'\\x1f'), "
    "COALESCE(host_contact_id::text, ''), state, "
    "(extract(epoch FROM created_at) * 1000000)::bigint, "
    "(extract(epoch FROM updated_at) * 1000000)::bigint, version";

// Field separator for text[] parameters; control characters never pass validation.
constexpr char kUnitSep[] = "\x1f";

v1::Organisation OrgRow(const db::Result& r, int i) {
  v1::Organisation o;
  o.set_id(r.String(i, 0));
  o.set_name(r.String(i, 1));
  o.set_ods_code(r.String(i, 2));
  o.set_sector(static_cast<v1::Sector>(r.Int(i, 3)));
  o.set_region(static_cast<v1::Region>(r.Int(i, 4)));
  o.set_status(static_cast<v1::OrganisationStatus>(r.Int(i, 5)));
  o.set_description(r.String(i, 6));
  *o.mutable_create_time() = TimeUtil::MicrosecondsToTimestamp(r.Int(i, 7));
  *o.mutable_update_time() = TimeUtil::MicrosecondsToTimestamp(r.Int(i, 8));
  o.set_etag(r.String(i, 9));
  return o;
}

v1::Contact ContactRow(const db::Result& r, int i) {
  v1::Contact c;
  c.set_id(r.String(i, 0));
  c.set_organisation_id(r.String(i, 1));
  c.set_display_name(r.String(i, 2));
  c.set_email(r.String(i, 3));
  c.set_phone(r.String(i, 4));
  c.set_job_title(r.String(i, 5));
  *c.mutable_create_time() = TimeUtil::MicrosecondsToTimestamp(r.Int(i, 6));
  *c.mutable_update_time() = TimeUtil::MicrosecondsToTimestamp(r.Int(i, 7));
  c.set_etag(r.String(i, 8));
  return c;
}

v1::Offer OfferRow(const db::Result& r, int i) {
  v1::Offer o;
  o.set_id(r.String(i, 0));
  o.set_organisation_id(r.String(i, 1));
  o.set_title(r.String(i, 2));
  o.set_setting(static_cast<v1::Setting>(r.Int(i, 3)));
  o.set_description(r.String(i, 4));
  o.set_capacity_per_day(static_cast<int32_t>(r.Int(i, 5)));
  for (absl::string_view d : absl::StrSplit(r.Text(i, 6), ',', absl::SkipEmpty())) {
    int day = 0;
    if (absl::SimpleAtoi(d, &day)) o.add_weekdays(static_cast<v1::Weekday>(day));
  }
  for (absl::string_view q : absl::StrSplit(r.Text(i, 7), kUnitSep, absl::SkipEmpty())) {
    o.add_requirements(std::string(q));
  }
  o.set_host_contact_id(r.String(i, 8));
  o.set_state(static_cast<v1::OfferState>(r.Int(i, 9)));
  *o.mutable_create_time() = TimeUtil::MicrosecondsToTimestamp(r.Int(i, 10));
  *o.mutable_update_time() = TimeUtil::MicrosecondsToTimestamp(r.Int(i, 11));
  o.set_etag(r.String(i, 12));
  return o;
}

std::string Weekdays(const v1::Offer& o) {
  std::vector<int> days(o.weekdays().begin(), o.weekdays().end());
  return absl::StrJoin(days, ",");
}

std::string Requirements(const v1::Offer& o) { return absl::StrJoin(o.requirements(), kUnitSep); }

}  // namespace

using db::All;
using db::MaybeOne;
using db::One;

namespace {

// The row a request_id made, with its request's digest (migration 0006; ""
// for rows made before).
template <class T, class RowFn>
absl::StatusOr<std::optional<T>> ByRequestId(db::Conn& c, const char* cols, const char* table,
                                             RowFn row, const std::string& rid,
                                             std::string* digest) {
  return MaybeOne<T>(c.Exec(absl::StrCat("SELECT ", cols, ", COALESCE(request_digest, '') FROM ",
                                         table, " WHERE request_id = $1"),
                            {rid}),
                     [&](const db::Result& r, int i) {
                       *digest = r.String(i, PQnfields(r.raw_for_status()) - 1);
                       return row(r, i);
                     });
}

}  // namespace

absl::StatusOr<std::optional<v1::Organisation>> OrganisationByRequestId(db::Conn& c,
                                                                        const std::string& rid,
                                                                        std::string* digest) {
  return ByRequestId<v1::Organisation>(c, kOrgCols, "organisations", OrgRow, rid, digest);
}

absl::StatusOr<std::optional<v1::Organisation>> InsertOrganisation(db::Conn& c,
                                                                   const v1::Organisation& o,
                                                                   const std::string& rid,
                                                                   const std::string& digest) {
  return MaybeOne<v1::Organisation>(
      c.Exec(absl::StrCat("INSERT INTO organisations (request_id, name, ods_code, sector, region, "
                          "description, request_digest) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                          "ON CONFLICT (request_id) DO NOTHING RETURNING ",
                          kOrgCols),
             {db::NullIfEmpty(rid), o.name(), db::NullIfEmpty(o.ods_code()),
              static_cast<int32_t>(o.sector()), static_cast<int32_t>(o.region()), o.description(),
              db::NullIfEmpty(digest)}),
      OrgRow);
}

absl::StatusOr<v1::Organisation> GetOrganisation(db::Conn& c, const std::string& id,
                                                 bool for_update) {
  return One<v1::Organisation>(
      c.Exec(absl::StrCat("SELECT ", kOrgCols, " FROM organisations WHERE id = $1::uuid",
                          for_update ? " FOR UPDATE" : ""),
             {id}),
      OrgRow, "organisation", id);
}

absl::StatusOr<v1::Organisation> ShareOrganisation(db::Conn& c, const std::string& id) {
  return One<v1::Organisation>(
      c.Exec(absl::StrCat("SELECT ", kOrgCols, " FROM organisations WHERE id = $1::uuid FOR SHARE"),
             {id}),
      OrgRow, "organisation", id);
}

absl::StatusOr<v1::Organisation> UpdateOrganisation(db::Conn& c, const v1::Organisation& o) {
  return One<v1::Organisation>(
      c.Exec(absl::StrCat("UPDATE organisations SET name = $2, ods_code = $3, sector = $4, "
                          "region = $5, description = $6, version = next_version(version), "
                          "updated_at = now() WHERE id = $1::uuid RETURNING ",
                          kOrgCols),
             {o.id(), o.name(), db::NullIfEmpty(o.ods_code()), static_cast<int32_t>(o.sector()),
              static_cast<int32_t>(o.region()), o.description()}),
      OrgRow, "organisation", o.id());
}

absl::StatusOr<v1::Organisation> SetOrganisationStatus(db::Conn& c, const std::string& id,
                                                       v1::OrganisationStatus status) {
  return One<v1::Organisation>(
      c.Exec(absl::StrCat("UPDATE organisations SET status = $2, version = next_version(version), "
                          "updated_at = now() WHERE id = $1::uuid RETURNING ",
                          kOrgCols),
             {id, static_cast<int32_t>(status)}),
      OrgRow, "organisation", id);
}

absl::StatusOr<std::vector<v1::Organisation>> ListOrganisations(db::Conn& c,
                                                                const OrganisationFilter& f,
                                                                const std::optional<After>& after,
                                                                int limit) {
  // One statement text per combination of filters, so each is prepared once
  // and planned for its own indexes. Enum filters are in the text (validated
  // numbers, a handful of values each), so each value has its own plan: a
  // prepared statement's generic plan assumes every value equally common,
  // and for a rare one (paused, archived) would walk the name index.
  std::vector<db::Param> params;
  std::vector<std::string> where;
  auto add = [&](const std::string& cond, db::Param p) {
    params.push_back(std::move(p));
    where.push_back(absl::StrCat(cond, "$", params.size()));
  };
  if (f.sector != 0) where.push_back(absl::StrCat("sector = ", f.sector));
  if (f.region != 0) where.push_back(absl::StrCat("region = ", f.region));
  if (f.status != 0) where.push_back(absl::StrCat("status = ", f.status));
  if (!f.ods_code.empty()) add("ods_code = ", f.ods_code);
  if (!f.name_prefix.empty()) {
    // name_lower holds lower(name) in the "C" collation: a range of the
    // index the list is read in.
    where.push_back(db::CaselessPrefix("name_lower", f.name_prefix, &params));
  }
  if (after) {
    where.push_back(
        db::CaselessAfter("name_lower", "name", "id", after->sort_text, after->id, &params));
  }
  // By name ignoring case, then name and id: a name prefix is a range of the
  // index each filter walks (partners migration 0004).
  std::string sql =
      absl::StrCat("SELECT ", kOrgCols, " FROM organisations", where.empty() ? "" : " WHERE ",
                   absl::StrJoin(where, " AND "),
                   " ORDER BY organisations.name_lower, organisations.name, organisations.id",
                   db::LimitClause(limit));
  return All<v1::Organisation>(c.Exec(sql, params), OrgRow);
}

absl::StatusOr<std::optional<v1::Contact>> ContactByRequestId(db::Conn& c, const std::string& rid,
                                                              std::string* digest) {
  return ByRequestId<v1::Contact>(c, kContactCols, "contacts", ContactRow, rid, digest);
}

absl::StatusOr<std::optional<v1::Contact>> InsertContact(db::Conn& c, const v1::Contact& ct,
                                                         const std::string& rid,
                                                         const std::string& digest) {
  return MaybeOne<v1::Contact>(
      c.Exec(absl::StrCat("INSERT INTO contacts (request_id, organisation_id, display_name, "
                          "email, phone, job_title, request_digest) "
                          "VALUES ($1, $2::uuid, $3, $4, $5, $6, $7) "
                          "ON CONFLICT (request_id) DO NOTHING RETURNING ",
                          kContactCols),
             {db::NullIfEmpty(rid), ct.organisation_id(), ct.display_name(), ct.email(), ct.phone(),
              ct.job_title(), db::NullIfEmpty(digest)}),
      ContactRow);
}

absl::StatusOr<v1::Contact> GetContact(db::Conn& c, const std::string& id, bool for_update) {
  return One<v1::Contact>(
      c.Exec(absl::StrCat("SELECT ", kContactCols, " FROM contacts WHERE id = $1::uuid",
                          for_update ? " FOR UPDATE" : ""),
             {id}),
      ContactRow, "contact", id);
}

absl::StatusOr<v1::Contact> UpdateContact(db::Conn& c, const v1::Contact& ct) {
  return One<v1::Contact>(
      c.Exec(absl::StrCat("UPDATE contacts SET display_name = $2, email = $3, phone = $4, "
                          "job_title = $5, version = next_version(version), updated_at = now() "
                          "WHERE id = $1::uuid RETURNING ",
                          kContactCols),
             {ct.id(), ct.display_name(), ct.email(), ct.phone(), ct.job_title()}),
      ContactRow, "contact", ct.id());
}

absl::Status DeleteContact(db::Conn& c, const std::string& id) {
  return c.Exec("DELETE FROM contacts WHERE id = $1::uuid", {id}).status();
}

absl::StatusOr<std::vector<std::string>> OffersHostedBy(db::Conn& c,
                                                        const std::string& contact_id) {
  return All<std::string>(
      c.Exec("SELECT id::text FROM offers WHERE host_contact_id = $1::uuid ORDER BY id LIMIT 10",
             {contact_id}),
      [](const db::Result& r, int i) { return r.String(i, 0); });
}

absl::StatusOr<std::vector<v1::Contact>> ListContacts(db::Conn& c, const std::string& org_id,
                                                      const std::optional<After>& after,
                                                      int limit) {
  // By name ignoring case, then name and id (partners migration 0004).
  std::vector<db::Param> params = {org_id};
  std::string where = "organisation_id = $1::uuid";
  if (after) {
    absl::StrAppend(&where, " AND ",
                    db::CaselessAfter("lower(display_name)", "display_name", "id", after->sort_text,
                                      after->id, &params));
  }
  return All<v1::Contact>(
      c.Exec(
          absl::StrCat("SELECT ", kContactCols, " FROM contacts WHERE ", where,
                       " ORDER BY lower(contacts.display_name), contacts.display_name, contacts.id",
                       db::LimitClause(limit)),
          params),
      ContactRow);
}

absl::StatusOr<std::optional<v1::Offer>> OfferByRequestId(db::Conn& c, const std::string& rid,
                                                          std::string* digest) {
  return ByRequestId<v1::Offer>(c, kOfferCols, "offers", OfferRow, rid, digest);
}

absl::StatusOr<std::optional<v1::Offer>> InsertOffer(db::Conn& c, const v1::Offer& o,
                                                     const std::string& rid,
                                                     const std::string& digest) {
  return MaybeOne<v1::Offer>(
      c.Exec(absl::StrCat(
                 "INSERT INTO offers (request_id, organisation_id, title, setting, description, "
                 "capacity_per_day, weekdays, requirements, host_contact_id, request_digest) "
                 "VALUES ($1, $2::uuid, $3, $4, $5, $6, string_to_array($7, ',')::int[], "
                 "string_to_array($8, E'\\x1f'), $9::uuid, $10) "
                 "ON CONFLICT (request_id) DO NOTHING RETURNING ",
                 kOfferCols),
             {db::NullIfEmpty(rid), o.organisation_id(), o.title(),
              static_cast<int32_t>(o.setting()), o.description(), o.capacity_per_day(), Weekdays(o),
              Requirements(o), db::NullIfEmpty(o.host_contact_id()), db::NullIfEmpty(digest)}),
      OfferRow);
}

absl::StatusOr<v1::Offer> GetOffer(db::Conn& c, const std::string& id, bool for_update) {
  return One<v1::Offer>(
      c.Exec(absl::StrCat("SELECT ", kOfferCols, " FROM offers WHERE id = $1::uuid",
                          for_update ? " FOR UPDATE" : ""),
             {id}),
      OfferRow, "offer", id);
}

absl::StatusOr<v1::Offer> UpdateOffer(db::Conn& c, const v1::Offer& o) {
  return One<v1::Offer>(
      c.Exec(absl::StrCat("UPDATE offers SET title = $2, setting = $3, description = $4, "
                          "capacity_per_day = $5, weekdays = string_to_array($6, ',')::int[], "
                          "requirements = string_to_array($7, E'\\x1f'), "
                          "host_contact_id = $8::uuid, version = next_version(version), "
                          "updated_at = now() WHERE id = $1::uuid RETURNING ",
                          kOfferCols),
             {o.id(), o.title(), static_cast<int32_t>(o.setting()), o.description(),
              o.capacity_per_day(), Weekdays(o), Requirements(o),
              db::NullIfEmpty(o.host_contact_id())}),
      OfferRow, "offer", o.id());
}

absl::StatusOr<v1::Offer> SetOfferState(db::Conn& c, const std::string& id, v1::OfferState s) {
  return One<v1::Offer>(
      c.Exec(absl::StrCat("UPDATE offers SET state = $2, version = next_version(version), "
                          "updated_at = now() WHERE id = $1::uuid RETURNING ",
                          kOfferCols),
             {id, static_cast<int32_t>(s)}),
      OfferRow, "offer", id);
}

absl::StatusOr<std::vector<std::string>> PublishedOffers(db::Conn& c, const std::string& org_id) {
  return All<std::string>(
      c.Exec("SELECT id::text FROM offers WHERE organisation_id = $1::uuid AND state = $2 "
             "ORDER BY id FOR UPDATE",
             {org_id, static_cast<int32_t>(v1::OFFER_STATE_PUBLISHED)}),
      [](const db::Result& r, int i) { return r.String(i, 0); });
}

absl::StatusOr<std::vector<v1::Offer>> ListOffers(db::Conn& c, const std::string& org_id, int state,
                                                  const std::optional<After>& after, int limit) {
  std::vector<db::Param> params;
  std::vector<std::string> where;
  if (!org_id.empty()) {
    params.push_back(org_id);
    where.push_back(absl::StrCat("organisation_id = $", params.size(), "::uuid"));
  }
  if (state != 0) where.push_back(absl::StrCat("state = ", state));  // as ListOrganisations
  if (after) {
    where.push_back(
        db::CaselessAfter("lower(title)", "title", "id", after->sort_text, after->id, &params));
  }
  // By title ignoring case, then title and id, as organisations by name.
  std::string sql = absl::StrCat("SELECT ", kOfferCols, " FROM offers",
                                 where.empty() ? "" : " WHERE ", absl::StrJoin(where, " AND "),
                                 " ORDER BY lower(offers.title), offers.title, offers.id",
                                 db::LimitClause(limit));
  return All<v1::Offer>(c.Exec(sql, params), OfferRow);
}

absl::StatusOr<std::vector<v1::Organisation>> OrganisationsAfter(db::Conn& c,
                                                                 const std::string& after,
                                                                 int limit, bool new_version) {
  return db::All<v1::Organisation>(
      bus::RowsAfter(c, kOrgCols, "organisations", "", after, limit, new_version), OrgRow);
}

absl::StatusOr<std::vector<v1::Contact>> ContactsAfter(db::Conn& c, const std::string& after,
                                                       int limit, bool new_version) {
  return db::All<v1::Contact>(
      bus::RowsAfter(c, kContactCols, "contacts", "", after, limit, new_version), ContactRow);
}

absl::StatusOr<std::vector<v1::Offer>> OffersAfter(db::Conn& c, const std::string& after, int limit,
                                                   bool new_version) {
  return db::All<v1::Offer>(bus::RowsAfter(c, kOfferCols, "offers", "", after, limit, new_version),
                            OfferRow);
}

}  // namespace connecting::partners::store
