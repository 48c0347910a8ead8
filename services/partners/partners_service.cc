#include "services/partners/partners_service.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "connecting/events/v1/partners_events.pb.h"
#include "libs/bus/republish.h"
#include "libs/server/errors.h"
#include "libs/server/resource.h"
#include "libs/server/validate.h"
#include "services/partners/partners_rules.h"
#include "services/partners/store.h"

namespace connecting::partners {
namespace {

namespace ev = ::connecting::events::v1;
using server::ApplyMask;
using server::CheckEtag;
using server::FieldErrors;

db::TxOptions Tx(const Call& call) {
  db::TxOptions o;
  o.deadline = call.deadline;
  return o;
}

absl::Status OdsConflict(const absl::Status& s, const std::string& ods) {
  if (absl::IsAlreadyExists(s) && db::ConstraintOf(s) == "organisations_ods_code_key") {
    return server::WithReason(
        absl::AlreadyExistsError(absl::StrCat("organisation.ods_code: ", ods,
                                              " is already used by another organisation")),
        "ODS_CODE_TAKEN", {{"odsCode", ods}});
  }
  return s;
}

absl::Status EmailConflict(const absl::Status& s, const std::string& email) {
  if (absl::IsAlreadyExists(s) && db::ConstraintOf(s) == "contacts_email_key") {
    return server::WithReason(
        absl::AlreadyExistsError(
            absl::StrCat("contact.email: ", email, " is already a contact of this organisation")),
        "CONTACT_EMAIL_TAKEN", {{"email", email}});
  }
  return s;
}

absl::Status NotArchived(const v1::Organisation& org) {
  if (org.status() == v1::ORGANISATION_STATUS_ARCHIVED) {
    return server::Refusal("ORGANISATION_ARCHIVED",
                           absl::StrCat("organisation ", org.id(),
                                        " is ARCHIVED; reactivate it before changing its data"),
                           {{"organisationId", org.id()}});
  }
  return absl::OkStatus();
}

// The host contact checked a moment ago was removed before the offer's row
// landed (its foreign key says so): the field and the rule, not the database's words.
absl::Status HostRemoved(const absl::Status& s, const std::string& contact_id) {
  if (db::ConstraintOf(s) == "offers_host_contact_id_fkey") {
    return server::Refusal(
        "HOST_REMOVED",
        absl::StrCat("offer.host_contact_id: contact ", contact_id, " was removed meanwhile"),
        {{"contactId", contact_id}});
  }
  return s;
}

// The organisation of offer `offer_id`, held FOR SHARE so that it is not
// archived (which withdraws its published offers) while the offer changes.
// Taken before the offer's own row lock, in ArchiveOrganisation's order.
absl::StatusOr<v1::Organisation> OfferOrganisation(db::Conn& c, const std::string& offer_id) {
  auto peek = store::GetOffer(c, offer_id, false);
  if (!peek.ok()) return peek.status();
  return store::ShareOrganisation(c, peek->organisation_id());
}

// Checks a host contact id names a contact of `org_id`.
absl::Status CheckHost(db::Conn& c, const std::string& field, const std::string& contact_id,
                       const std::string& org_id) {
  if (contact_id.empty()) return absl::OkStatus();
  absl::StatusOr<v1::Contact> host = store::GetContact(c, contact_id, false);
  if ((!host.ok() && absl::IsNotFound(host.status())) ||
      (host.ok() && host->organisation_id() != org_id)) {
    return server::FieldError(
        field, absl::StrCat(contact_id, " is not a contact of organisation ", org_id));
  }
  return host.status();
}

template <class Resp, class Item>
absl::Status Page(const server::PageTokens& tokens, const std::string& scope,
                  std::vector<Item> rows, int limit, Resp* resp,
                  google::protobuf::RepeatedPtrField<Item>* out,
                  std::string (*sort_key)(const Item&)) {
  bool more = static_cast<int>(rows.size()) > limit;
  if (more) rows.resize(limit);
  for (Item& r : rows) *out->Add() = std::move(r);
  if (more) {
    const Item& last = (*out)[out->size() - 1];
    resp->set_next_page_token(tokens.Encode(scope, {sort_key(last), last.id()}));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<store::After>> DecodeToken(const server::PageTokens& tokens,
                                                        const std::string& scope,
                                                        const std::string& token) {
  if (token.empty()) return std::optional<store::After>();
  absl::StatusOr<std::vector<std::string>> parts = tokens.Decode(scope, token);
  if (!parts.ok()) return parts.status();
  if (parts->size() != 2 || !server::IsUuid((*parts)[1])) {
    return server::FieldError("page_token", "is malformed");
  }
  return std::optional<store::After>(store::After{(*parts)[0], (*parts)[1]});
}

std::string OrgName(const v1::Organisation& o) { return o.name(); }
std::string ContactName(const v1::Contact& c) { return c.display_name(); }
std::string OfferTitle(const v1::Offer& o) { return o.title(); }

// What a create request for a contact or an offer asks for
// (server::RequestDigest): its organisation and every field it sets.
std::string DigestWithOrganisation(const google::protobuf::Message& m,
                                   std::vector<std::string> paths) {
  paths.push_back("organisation_id");
  return server::RequestDigest(m, paths);
}
std::string ContactDigest(const v1::Contact& c) {
  return DigestWithOrganisation(c, ContactMaskPaths());
}
// Its weekdays are a set: a retry naming them in another order is the same
// request.
std::string OfferDigest(const v1::Offer& o) {
  v1::Offer sorted = o;
  std::sort(sorted.mutable_weekdays()->begin(), sorted.mutable_weekdays()->end());
  return DigestWithOrganisation(sorted, OfferMaskPaths());
}

}  // namespace

// ---------------------------------------------------------------- organisations

absl::Status PartnersLogic::CreateOrganisation(const Call& call,
                                               const v1::CreateOrganisationRequest& req,
                                               v1::Organisation* resp) {
  if (absl::Status s = MayAdminister(call.principal, "create organisations"); !s.ok()) return s;
  FieldErrors errors;
  if (!req.has_organisation()) errors.Add("organisation", "is required");
  v1::Organisation org = req.organisation();
  if (req.has_organisation()) ValidateOrganisation(errors, "organisation", org);
  server::CheckRequestId(errors, "request_id", req.request_id());
  if (!errors.empty()) return errors.ToStatus();

  // A new organisation changes list pages: this replica forgets them at once
  // (the trigger's NOTIFY tells the others).
  struct ForgetPages {
    PageCache* pages;
    ~ForgetPages() {
      if (pages != nullptr) pages->Invalidate("");
    }
  } forget{pages_};
  // What this request asks for, against what the request that made an
  // earlier organisation under this request_id asked for (every field of an
  // organisation may change since, so not against the organisation).
  const std::string digest =
      req.request_id().empty() ? "" : server::RequestDigest(org, OrganisationMaskPaths());
  return db::Transact(pool_, Tx(call), [&](db::Conn& c) -> absl::Status {
    std::string prior_digest;
    auto created = server::CreateOnce(
        req.request_id(), "organisation",
        [&] { return store::OrganisationByRequestId(c, req.request_id(), &prior_digest); },
        [&]() -> absl::StatusOr<std::optional<v1::Organisation>> {
          auto inserted = store::InsertOrganisation(c, org, req.request_id(), digest);
          if (!inserted.ok()) return OdsConflict(inserted.status(), org.ods_code());
          return inserted;
        },
        [&](const v1::Organisation&) { return server::SameRequest(prior_digest, digest); }, resp);
    if (!created.ok() || !*created) return created.status();
    ev::OrganisationCreated event;
    *event.mutable_organisation() = *resp;
    return outbox_.Emit(c, "organisation.created", resp->id(), event, call.traceparent);
  });
}

std::optional<absl::Status> PartnersLogic::GetOrganisationCached(
    const Call&, const v1::GetOrganisationRequest& req, v1::Organisation* resp) {
  if (cache_ == nullptr) return std::nullopt;
  std::optional<server::WireReply> hit = cache_->Get(req.id());
  if (!hit) return std::nullopt;
  hit->CopyTo(resp);
  return absl::OkStatus();
}

absl::Status PartnersLogic::GetOrganisation(const Call& call, const v1::GetOrganisationRequest& req,
                                            v1::Organisation* resp) {
  if (absl::Status s = server::CheckUuid("id", req.id()); !s.ok()) return s;
  uint64_t generation = cache_ != nullptr ? cache_->Generation() : 0;
  return db::WithConnection(pool_, call.deadline, [&](db::Conn& c) -> absl::Status {
    auto org = store::GetOrganisation(c, req.id(), false);
    if (!org.ok()) return org.status();
    *resp = *std::move(org);
    if (cache_ != nullptr) cache_->Put(resp->id(), server::WireReply(*resp), generation);
    return absl::OkStatus();
  });
}

std::optional<absl::Status> PartnersLogic::ListOrganisationsCached(
    const Call&, const v1::ListOrganisationsRequest& req, v1::ListOrganisationsResponse* resp) {
  // Keyed by the request's exact bytes: only a request already answered (and
  // so already validated) can hit. Every role sees the same directory.
  if (pages_ == nullptr) return std::nullopt;
  std::optional<server::WireReply> hit = pages_->Get(req.SerializeAsString());
  if (!hit) return std::nullopt;
  hit->CopyTo(resp);
  return absl::OkStatus();
}

absl::Status PartnersLogic::ListOrganisations(const Call& call,
                                              const v1::ListOrganisationsRequest& req,
                                              v1::ListOrganisationsResponse* resp) {
  FieldErrors errors;
  int limit = server::PageSize(errors, req.page_size());
  if (!v1::Sector_IsValid(req.sector())) errors.Add("sector", "unknown value");
  if (!v1::Region_IsValid(req.region())) errors.Add("region", "unknown value");
  if (!v1::OrganisationStatus_IsValid(req.status())) errors.Add("status", "unknown value");
  std::string prefix =
      server::CheckText(errors, "name_prefix", req.name_prefix(), server::TextRule{0, 200});
  std::string ods = CheckOdsCode(errors, "ods_code", req.ods_code());
  if (!errors.empty()) return errors.ToStatus();
  std::string scope = absl::StrCat("ListOrganisations|", req.sector(), "|", req.region(), "|",
                                   req.status(), "|", prefix, "|", ods);
  auto after = DecodeToken(tokens_, scope, req.page_token());
  if (!after.ok()) return after.status();
  store::OrganisationFilter f{req.sector(), req.region(), req.status(), prefix, ods};
  uint64_t generation = pages_ != nullptr ? pages_->Generation() : 0;
  return db::WithConnection(pool_, call.deadline, [&](db::Conn& c) -> absl::Status {
    auto rows = store::ListOrganisations(c, f, *after, limit + 1);
    if (!rows.ok()) return rows.status();
    resp->Clear();
    absl::Status s = Page(tokens_, scope, *std::move(rows), limit, resp,
                          resp->mutable_organisations(), &OrgName);
    if (s.ok() && pages_ != nullptr) {
      pages_->Put(req.SerializeAsString(), server::WireReply(*resp), generation);
    }
    return s;
  });
}

absl::Status PartnersLogic::UpdateOrganisation(const Call& call,
                                               const v1::UpdateOrganisationRequest& req,
                                               v1::Organisation* resp) {
  FieldErrors errors;
  if (!req.has_organisation()) {
    errors.Add("organisation", "is required");
  } else {
    server::CheckUuid(errors, "organisation.id", req.organisation().id(), true);
    if (req.organisation().etag().empty()) {
      errors.Add("organisation.etag", "is required (the etag from your last read)");
    }
  }
  server::ValidateMask(errors, req.update_mask(), OrganisationMaskPaths());
  if (!errors.empty()) return errors.ToStatus();
  const v1::Organisation& in = req.organisation();
  // Whatever the outcome, this replica's cache forgets the row (the trigger's
  // NOTIFY tells the other replicas).
  struct Forget {
    OrganisationCache* cache;
    PageCache* pages;
    const std::string& id;
    ~Forget() {
      if (cache != nullptr) cache->Invalidate(id);
      if (pages != nullptr) pages->Invalidate(id);
    }
  } forget{cache_, pages_, in.id()};

  return db::Transact(pool_, Tx(call), [&](db::Conn& c) -> absl::Status {
    auto cur = store::GetOrganisation(c, in.id(), true);
    if (!cur.ok()) return cur.status();
    if (absl::Status s = MayChange(call.principal, in.id()); !s.ok()) return s;
    if (absl::Status s = NotArchived(*cur); !s.ok()) return s;
    return server::UpdateByMask(
        "organisation", in, req.update_mask(), *std::move(cur),
        server::ValidatedBy(ValidateOrganisation, "organisation"),
        [&](const v1::Organisation& merged) -> absl::StatusOr<v1::Organisation> {
          auto updated = store::UpdateOrganisation(c, merged);
          if (!updated.ok()) return OdsConflict(updated.status(), merged.ods_code());
          return updated;
        },
        [&](const v1::Organisation& updated, const std::vector<std::string>& changed) {
          return outbox_.Emit(c, "organisation.updated", updated.id(),
                              server::UpdatedEvent(&ev::OrganisationUpdated::mutable_organisation,
                                                   updated, changed),
                              call.traceparent);
        },
        resp);
  });
}

absl::Status PartnersLogic::ChangeStatus(const Call& call, const std::string& id,
                                         const std::string& etag, const std::string& reason_in,
                                         int transition, v1::Organisation* resp) {
  FieldErrors errors;
  server::CheckUuid(errors, "id", id, true);
  std::string reason =
      server::CheckText(errors, "reason", reason_in, server::TextRule{0, 500, true});
  if (!errors.empty()) return errors.ToStatus();
  auto t = static_cast<OrgTransition>(transition);
  struct Forget {
    OrganisationCache* cache;
    PageCache* pages;
    const std::string& id;
    ~Forget() {
      if (cache != nullptr) cache->Invalidate(id);
      if (pages != nullptr) pages->Invalidate(id);
    }
  } forget{cache_, pages_, id};
  return db::Transact(pool_, Tx(call), [&](db::Conn& c) -> absl::Status {
    auto cur = store::GetOrganisation(c, id, true);
    if (!cur.ok()) return cur.status();
    if (absl::Status s = CheckTransition(call.principal, id, cur->status(), t); !s.ok()) return s;
    if (absl::Status s = CheckEtag("organisation", etag, cur->etag()); !s.ok()) return s;
    v1::OrganisationStatus to = t == OrgTransition::kPause     ? v1::ORGANISATION_STATUS_PAUSED
                                : t == OrgTransition::kArchive ? v1::ORGANISATION_STATUS_ARCHIVED
                                                               : v1::ORGANISATION_STATUS_ACTIVE;
    auto updated = store::SetOrganisationStatus(c, id, to);
    if (!updated.ok()) return updated.status();
    *resp = *std::move(updated);
    absl::Status s;
    if (t == OrgTransition::kPause) {
      ev::OrganisationPaused e;
      *e.mutable_organisation() = *resp;
      e.set_reason(reason);
      s = outbox_.Emit(c, "organisation.paused", id, e, call.traceparent);
    } else if (t == OrgTransition::kArchive) {
      ev::OrganisationArchived e;
      *e.mutable_organisation() = *resp;
      e.set_reason(reason);
      s = outbox_.Emit(c, "organisation.archived", id, e, call.traceparent);
      // An archived partner hosts nothing: its published offers are withdrawn.
      auto offers = store::PublishedOffers(c, id);
      if (!offers.ok()) return offers.status();
      for (const std::string& offer_id : *offers) {
        if (!s.ok()) break;
        auto w = store::SetOfferState(c, offer_id, v1::OFFER_STATE_WITHDRAWN);
        if (!w.ok()) return w.status();
        ev::OfferWithdrawn we;
        *we.mutable_offer() = *w;
        s = outbox_.Emit(c, "offer.withdrawn", offer_id, we, call.traceparent);
      }
    } else {
      ev::OrganisationReactivated e;
      *e.mutable_organisation() = *resp;
      s = outbox_.Emit(c, "organisation.reactivated", id, e, call.traceparent);
    }
    return s;
  });
}

absl::Status PartnersLogic::PauseOrganisation(const Call& call,
                                              const v1::PauseOrganisationRequest& req,
                                              v1::Organisation* resp) {
  return ChangeStatus(call, req.id(), req.etag(), req.reason(),
                      static_cast<int>(OrgTransition::kPause), resp);
}

absl::Status PartnersLogic::ArchiveOrganisation(const Call& call,
                                                const v1::ArchiveOrganisationRequest& req,
                                                v1::Organisation* resp) {
  return ChangeStatus(call, req.id(), req.etag(), req.reason(),
                      static_cast<int>(OrgTransition::kArchive), resp);
}

absl::Status PartnersLogic::ReactivateOrganisation(const Call& call,
                                                   const v1::ReactivateOrganisationRequest& req,
                                                   v1::Organisation* resp) {
  return ChangeStatus(call, req.id(), req.etag(), "", static_cast<int>(OrgTransition::kReactivate),
                      resp);
}

// --------------------------------------------------------------------- contacts

absl::Status PartnersLogic::CreateContact(const Call& call, const v1::CreateContactRequest& req,
                                          v1::Contact* resp) {
  FieldErrors errors;
  v1::Contact ct = req.contact();
  if (!req.has_contact()) {
    errors.Add("contact", "is required");
  } else {
    server::CheckUuid(errors, "contact.organisation_id", ct.organisation_id(), true);
    ValidateContact(errors, "contact", ct);
  }
  server::CheckRequestId(errors, "request_id", req.request_id());
  if (!errors.empty()) return errors.ToStatus();
  if (absl::Status s = MayChange(call.principal, ct.organisation_id()); !s.ok()) return s;

  const std::string digest = req.request_id().empty() ? "" : ContactDigest(ct);
  return db::Transact(pool_, Tx(call), [&](db::Conn& c) -> absl::Status {
    std::string prior_digest;
    auto created = server::CreateOnce(
        req.request_id(), "contact",
        [&] { return store::ContactByRequestId(c, req.request_id(), &prior_digest); },
        [&]() -> absl::StatusOr<std::optional<v1::Contact>> {
          auto org = store::GetOrganisation(c, ct.organisation_id(), true);
          if (!org.ok()) return org.status();
          if (absl::Status s = NotArchived(*org); !s.ok()) return s;
          auto inserted = store::InsertContact(c, ct, req.request_id(), digest);
          if (!inserted.ok()) return EmailConflict(inserted.status(), ct.email());
          return inserted;
        },
        [&](const v1::Contact& prior) {
          return prior.organisation_id() == ct.organisation_id() &&
                 server::SameRequest(prior_digest, digest);
        },
        resp);
    if (!created.ok() || !*created) return created.status();
    ev::ContactCreated event;
    *event.mutable_contact() = *resp;
    return outbox_.Emit(c, "contact.created", resp->id(), event, call.traceparent);
  });
}

absl::Status PartnersLogic::GetContact(const Call& call, const v1::GetContactRequest& req,
                                       v1::Contact* resp) {
  if (absl::Status s = server::CheckUuid("id", req.id()); !s.ok()) return s;
  return db::WithConnection(pool_, call.deadline, [&](db::Conn& c) -> absl::Status {
    auto ct = store::GetContact(c, req.id(), false);
    if (!ct.ok()) return ct.status();
    if (absl::Status s = MayReadContacts(call.principal, ct->organisation_id()); !s.ok()) {
      return s;
    }
    *resp = *std::move(ct);
    return absl::OkStatus();
  });
}

absl::Status PartnersLogic::ListContacts(const Call& call, const v1::ListContactsRequest& req,
                                         v1::ListContactsResponse* resp) {
  FieldErrors errors;
  server::CheckUuid(errors, "organisation_id", req.organisation_id(), true);
  int limit = server::PageSize(errors, req.page_size());
  if (!errors.empty()) return errors.ToStatus();
  if (absl::Status s = MayReadContacts(call.principal, req.organisation_id()); !s.ok()) return s;
  std::string scope = absl::StrCat("ListContacts|", req.organisation_id());
  auto after = DecodeToken(tokens_, scope, req.page_token());
  if (!after.ok()) return after.status();
  return db::WithConnection(pool_, call.deadline, [&](db::Conn& c) -> absl::Status {
    auto rows = store::ListContacts(c, req.organisation_id(), *after, limit + 1);
    if (!rows.ok()) return rows.status();
    resp->Clear();
    return Page(tokens_, scope, *std::move(rows), limit, resp, resp->mutable_contacts(),
                &ContactName);
  });
}

absl::Status PartnersLogic::UpdateContact(const Call& call, const v1::UpdateContactRequest& req,
                                          v1::Contact* resp) {
  FieldErrors errors;
  if (!req.has_contact()) {
    errors.Add("contact", "is required");
  } else {
    server::CheckUuid(errors, "contact.id", req.contact().id(), true);
    if (req.contact().etag().empty()) {
      errors.Add("contact.etag", "is required (the etag from your last read)");
    }
  }
  server::ValidateMask(errors, req.update_mask(), ContactMaskPaths());
  if (!errors.empty()) return errors.ToStatus();
  const v1::Contact& in = req.contact();
  return db::Transact(pool_, Tx(call), [&](db::Conn& c) -> absl::Status {
    auto cur = store::GetContact(c, in.id(), true);
    if (!cur.ok()) return cur.status();
    if (absl::Status s = MayChange(call.principal, cur->organisation_id()); !s.ok()) return s;
    return server::UpdateByMask(
        "contact", in, req.update_mask(), *std::move(cur),
        server::ValidatedBy(ValidateContact, "contact"),
        [&](const v1::Contact& merged) -> absl::StatusOr<v1::Contact> {
          auto updated = store::UpdateContact(c, merged);
          if (!updated.ok()) return EmailConflict(updated.status(), merged.email());
          return updated;
        },
        [&](const v1::Contact& updated, const std::vector<std::string>& changed) {
          return outbox_.Emit(
              c, "contact.updated", updated.id(),
              server::UpdatedEvent(&ev::ContactUpdated::mutable_contact, updated, changed),
              call.traceparent);
        },
        resp);
  });
}

absl::Status PartnersLogic::RemoveContact(const Call& call, const v1::RemoveContactRequest& req,
                                          v1::RemoveContactResponse*) {
  if (absl::Status s = server::CheckUuid("id", req.id()); !s.ok()) return s;
  return db::Transact(pool_, Tx(call), [&](db::Conn& c) -> absl::Status {
    auto cur = store::GetContact(c, req.id(), true);
    if (!cur.ok()) return cur.status();
    if (absl::Status s = MayChange(call.principal, cur->organisation_id()); !s.ok()) return s;
    if (absl::Status s = CheckEtag("contact", req.etag(), cur->etag()); !s.ok()) return s;
    auto hosted = store::OffersHostedBy(c, req.id());
    if (!hosted.ok()) return hosted.status();
    if (!hosted->empty()) {
      return server::Refusal(
          "CONTACT_HOSTS_OFFERS",
          absl::StrCat("contact ", req.id(), " hosts offer(s) ", absl::StrJoin(*hosted, ", "),
                       "; give those offers another host_contact_id first"),
          {{"offerIds", absl::StrJoin(*hosted, ",")}});
    }
    if (absl::Status s = store::DeleteContact(c, req.id()); !s.ok()) return s;
    ev::ContactRemoved event;
    event.set_contact_id(req.id());
    event.set_organisation_id(cur->organisation_id());
    return outbox_.Emit(c, "contact.removed", req.id(), event, call.traceparent);
  });
}

// ----------------------------------------------------------------------- offers

absl::Status PartnersLogic::CreateOffer(const Call& call, const v1::CreateOfferRequest& req,
                                        v1::Offer* resp) {
  FieldErrors errors;
  v1::Offer offer = req.offer();
  if (!req.has_offer()) {
    errors.Add("offer", "is required");
  } else {
    server::CheckUuid(errors, "offer.organisation_id", offer.organisation_id(), true);
    ValidateOffer(errors, "offer", offer);
  }
  server::CheckRequestId(errors, "request_id", req.request_id());
  if (!errors.empty()) return errors.ToStatus();
  if (absl::Status s = MayChange(call.principal, offer.organisation_id()); !s.ok()) return s;
  const std::string digest = req.request_id().empty() ? "" : OfferDigest(offer);
  return db::Transact(pool_, Tx(call), [&](db::Conn& c) -> absl::Status {
    std::string prior_digest;
    auto created = server::CreateOnce(
        req.request_id(), "offer",
        [&] { return store::OfferByRequestId(c, req.request_id(), &prior_digest); },
        [&]() -> absl::StatusOr<std::optional<v1::Offer>> {
          auto org = store::GetOrganisation(c, offer.organisation_id(), true);
          if (!org.ok()) return org.status();
          if (absl::Status s = NotArchived(*org); !s.ok()) return s;
          if (absl::Status s = CheckHost(c, "offer.host_contact_id", offer.host_contact_id(),
                                         offer.organisation_id());
              !s.ok()) {
            return s;
          }
          auto inserted = store::InsertOffer(c, offer, req.request_id(), digest);
          if (!inserted.ok()) return HostRemoved(inserted.status(), offer.host_contact_id());
          return inserted;
        },
        [&](const v1::Offer& prior) {
          return prior.organisation_id() == offer.organisation_id() &&
                 server::SameRequest(prior_digest, digest);
        },
        resp);
    if (!created.ok() || !*created) return created.status();
    ev::OfferCreated event;
    *event.mutable_offer() = *resp;
    return outbox_.Emit(c, "offer.created", resp->id(), event, call.traceparent);
  });
}

absl::Status PartnersLogic::GetOffer(const Call& call, const v1::GetOfferRequest& req,
                                     v1::Offer* resp) {
  if (absl::Status s = server::CheckUuid("id", req.id()); !s.ok()) return s;
  return db::WithConnection(pool_, call.deadline, [&](db::Conn& c) -> absl::Status {
    auto o = store::GetOffer(c, req.id(), false);
    if (!o.ok()) return o.status();
    *resp = *std::move(o);
    return absl::OkStatus();
  });
}

absl::Status PartnersLogic::ListOffers(const Call& call, const v1::ListOffersRequest& req,
                                       v1::ListOffersResponse* resp) {
  FieldErrors errors;
  server::CheckUuid(errors, "organisation_id", req.organisation_id(), false);
  if (!v1::OfferState_IsValid(req.state())) errors.Add("state", "unknown value");
  int limit = server::PageSize(errors, req.page_size());
  if (!errors.empty()) return errors.ToStatus();
  std::string scope = absl::StrCat("ListOffers|", req.organisation_id(), "|", req.state());
  auto after = DecodeToken(tokens_, scope, req.page_token());
  if (!after.ok()) return after.status();
  return db::WithConnection(pool_, call.deadline, [&](db::Conn& c) -> absl::Status {
    auto rows = store::ListOffers(c, req.organisation_id(), req.state(), *after, limit + 1);
    if (!rows.ok()) return rows.status();
    resp->Clear();
    return Page(tokens_, scope, *std::move(rows), limit, resp, resp->mutable_offers(), &OfferTitle);
  });
}

absl::Status PartnersLogic::UpdateOffer(const Call& call, const v1::UpdateOfferRequest& req,
                                        v1::Offer* resp) {
  FieldErrors errors;
  if (!req.has_offer()) {
    errors.Add("offer", "is required");
  } else {
    server::CheckUuid(errors, "offer.id", req.offer().id(), true);
    if (req.offer().etag().empty()) {
      errors.Add("offer.etag", "is required (the etag from your last read)");
    }
  }
  server::ValidateMask(errors, req.update_mask(), OfferMaskPaths());
  if (!errors.empty()) return errors.ToStatus();
  const v1::Offer& in = req.offer();
  return db::Transact(pool_, Tx(call), [&](db::Conn& c) -> absl::Status {
    auto org = OfferOrganisation(c, in.id());
    if (!org.ok()) return org.status();
    auto cur = store::GetOffer(c, in.id(), true);
    if (!cur.ok()) return cur.status();
    if (absl::Status s = MayChange(call.principal, cur->organisation_id()); !s.ok()) return s;
    if (absl::Status s = server::CheckEtag("offer", in.etag(), cur->etag()); !s.ok()) return s;
    if (absl::Status s = NotArchived(*org); !s.ok()) return s;
    return server::UpdateByMask(
        "offer", in, req.update_mask(), *std::move(cur),
        [&](v1::Offer& merged) -> absl::Status {
          FieldErrors errs;
          ValidateOffer(errs, "offer", merged);
          if (!errs.empty()) return errs.ToStatus();
          if (merged.state() == v1::OFFER_STATE_PUBLISHED && merged.host_contact_id().empty()) {
            return server::Refusal(
                "HOST_REQUIRED",
                "offer.host_contact_id: a published offer must keep a host contact");
          }
          return CheckHost(c, "offer.host_contact_id", merged.host_contact_id(),
                           merged.organisation_id());
        },
        [&](const v1::Offer& merged) -> absl::StatusOr<v1::Offer> {
          auto updated = store::UpdateOffer(c, merged);
          if (!updated.ok()) return HostRemoved(updated.status(), merged.host_contact_id());
          return updated;
        },
        [&](const v1::Offer& updated, const std::vector<std::string>& changed) {
          return outbox_.Emit(
              c, "offer.updated", updated.id(),
              server::UpdatedEvent(&ev::OfferUpdated::mutable_offer, updated, changed),
              call.traceparent);
        },
        resp);
  });
}

absl::Status PartnersLogic::ChangeOfferState(const Call& call, const std::string& id,
                                             const std::string& etag, bool publish,
                                             v1::Offer* resp) {
  if (absl::Status s = server::CheckUuid("id", id); !s.ok()) return s;
  return db::Transact(pool_, Tx(call), [&](db::Conn& c) -> absl::Status {
    auto org = OfferOrganisation(c, id);
    if (!org.ok()) return org.status();
    auto cur = store::GetOffer(c, id, true);
    if (!cur.ok()) return cur.status();
    if (absl::Status s = MayChange(call.principal, cur->organisation_id()); !s.ok()) return s;
    // The state answers before the etag (as for organisations), so that a
    // retry of a call that took effect, whose etag that change made stale,
    // hears ALREADY_IN_STATE.
    if (publish) {
      if (cur->state() == v1::OFFER_STATE_PUBLISHED) {
        return server::Refusal("ALREADY_IN_STATE", "the offer is already PUBLISHED",
                               {{"state", v1::OfferState_Name(cur->state())}});
      }
      if (cur->host_contact_id().empty()) {
        return server::Refusal("HOST_REQUIRED",
                               "offer.host_contact_id: set a host contact before publishing");
      }
      if (org->status() != v1::ORGANISATION_STATUS_ACTIVE) {
        return server::Refusal(
            "ORGANISATION_NOT_ACTIVE",
            absl::StrCat("organisation ", org->id(), " is ",
                         v1::OrganisationStatus_Name(org->status()),
                         "; only an ACTIVE organisation's offers can be published"),
            {{"organisationId", org->id()},
             {"status", v1::OrganisationStatus_Name(org->status())}});
      }
    } else if (cur->state() != v1::OFFER_STATE_PUBLISHED) {
      return server::Refusal(
          cur->state() == v1::OFFER_STATE_WITHDRAWN ? "ALREADY_IN_STATE" : "WRONG_STATE",
          absl::StrCat("only a PUBLISHED offer can be withdrawn; it is ",
                       v1::OfferState_Name(cur->state())),
          {{"state", v1::OfferState_Name(cur->state())}});
    }
    if (absl::Status s = CheckEtag("offer", etag, cur->etag()); !s.ok()) return s;
    auto updated = store::SetOfferState(
        c, id, publish ? v1::OFFER_STATE_PUBLISHED : v1::OFFER_STATE_WITHDRAWN);
    if (!updated.ok()) return updated.status();
    *resp = *std::move(updated);
    if (publish) {
      ev::OfferPublished e;
      *e.mutable_offer() = *resp;
      return outbox_.Emit(c, "offer.published", id, e, call.traceparent);
    }
    ev::OfferWithdrawn e;
    *e.mutable_offer() = *resp;
    return outbox_.Emit(c, "offer.withdrawn", id, e, call.traceparent);
  });
}

absl::Status PartnersLogic::PublishOffer(const Call& call, const v1::PublishOfferRequest& req,
                                         v1::Offer* resp) {
  return ChangeOfferState(call, req.id(), req.etag(), true, resp);
}

absl::Status PartnersLogic::WithdrawOffer(const Call& call, const v1::WithdrawOfferRequest& req,
                                          v1::Offer* resp) {
  return ChangeOfferState(call, req.id(), req.etag(), false, resp);
}

// ---------------------------------------------------------------- republish

absl::StatusOr<int64_t> Republish(db::Pool& pool, const bus::Outbox& outbox, bool new_versions) {
  int64_t count = 0;
  // Organisations first, so that a consumer meets each before its contacts
  // and offers (as it did the first time).
  if (absl::Status s =
          bus::RepublishKind(pool, outbox, "organisation.snapshot", &store::OrganisationsAfter,
                             &ev::OrganisationSnapshot::mutable_organisation, new_versions, &count);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          bus::RepublishKind(pool, outbox, "contact.snapshot", &store::ContactsAfter,
                             &ev::ContactSnapshot::mutable_contact, new_versions, &count);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = bus::RepublishKind(pool, outbox, "offer.snapshot", &store::OffersAfter,
                                          &ev::OfferSnapshot::mutable_offer, new_versions, &count);
      !s.ok()) {
    return s;
  }
  return count;
}

}  // namespace connecting::partners
