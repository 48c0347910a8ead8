// Round trips of every partners RPC against the real binary, PostgreSQL and NATS.
#include <gtest/gtest.h>

#include <future>
#include <set>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "libs/db/db.h"
#include "tests/harness.h"

namespace connecting::testing {
namespace {

namespace v1 = ::connecting::partners::v1;
using server::Role;

class PartnersApi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { fx_ = new PartnersFixture(); }
  static void TearDownTestSuite() {
    delete fx_;
    fx_ = nullptr;
  }
  v1::PartnersService::Stub& stub() { return *fx_->stub; }
  const std::string& admin() { return fx_->admin; }

  v1::Organisation CreateOrg(const std::string& name, v1::Sector sector = v1::SECTOR_ACUTE_TRUST,
                             v1::Region region = v1::REGION_LONDON) {
    v1::CreateOrganisationRequest req;
    *req.mutable_organisation() = SampleOrganisation(name);
    req.mutable_organisation()->set_sector(sector);
    req.mutable_organisation()->set_region(region);
    v1::Organisation out;
    grpc::Status s = stub().CreateOrganisation(Ctx(admin()).get(), req, &out);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return out;
  }
  v1::Contact CreateContact(const std::string& org_id, const std::string& name) {
    v1::CreateContactRequest req;
    req.mutable_contact()->set_organisation_id(org_id);
    req.mutable_contact()->set_display_name(name);
    req.mutable_contact()->set_email(name.substr(0, name.find(' ')) + "@example.nhs.uk");
    req.mutable_contact()->set_job_title("Ward manager");
    v1::Contact out;
    grpc::Status s = stub().CreateContact(Ctx(admin()).get(), req, &out);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return out;
  }
  v1::Offer CreateOffer(const std::string& org_id, const std::string& host,
                        const std::string& title = "A day on the acute medical unit") {
    v1::CreateOfferRequest req;
    v1::Offer* o = req.mutable_offer();
    o->set_organisation_id(org_id);
    o->set_title(title);
    o->set_setting(v1::SETTING_HOSPITAL_WARD);
    o->set_capacity_per_day(2);
    o->add_weekdays(v1::WEEKDAY_TUESDAY);
    o->add_weekdays(v1::WEEKDAY_THURSDAY);
    o->add_requirements("DBS check");
    o->add_requirements("Occupational health clearance");
    o->set_host_contact_id(host);
    v1::Offer out;
    grpc::Status s = stub().CreateOffer(Ctx(admin()).get(), req, &out);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return out;
  }

  // Every page of a list call, as testing::EveryPage.
  template <class Page, class Request, class Each>
  grpc::Status EveryPage(const Request& req,
                         grpc::Status (v1::PartnersService::Stub::*list)(grpc::ClientContext*,
                                                                         const Request&, Page*),
                         Each each) {
    return testing::EveryPage<Page>(
        req,
        [&](const Request& r, Page* page) { return (stub().*list)(Ctx(admin()).get(), r, page); },
        each);
  }

  static PartnersFixture* fx_;
};
PartnersFixture* PartnersApi::fx_ = nullptr;

TEST_F(PartnersApi, CreateThenGetReturnsTheSameOrganisation) {
  v1::CreateOrganisationRequest req;
  *req.mutable_organisation() = SampleOrganisation("  St Thomas' Hospital  ");
  req.mutable_organisation()->set_ods_code("rj1");
  v1::Organisation created;
  ASSERT_TRUE(stub().CreateOrganisation(Ctx(admin()).get(), req, &created).ok());
  EXPECT_EQ(created.name(), "St Thomas' Hospital");  // trimmed
  EXPECT_EQ(created.ods_code(), "RJ1");              // normalised
  EXPECT_EQ(created.status(), v1::ORGANISATION_STATUS_ACTIVE);
  EXPECT_FALSE(created.etag().empty());
  EXPECT_GT(created.create_time().seconds(), 0);

  v1::GetOrganisationRequest get;
  get.set_id(created.id());
  v1::Organisation got;
  ASSERT_TRUE(stub().GetOrganisation(Ctx(admin()).get(), get, &got).ok());
  EXPECT_EQ(got.SerializeAsString(), created.SerializeAsString());
}

TEST_F(PartnersApi, GetUnknownOrganisationIsNotFound) {
  v1::GetOrganisationRequest get;
  get.set_id("00000000-0000-4000-8000-000000000000");
  v1::Organisation got;
  grpc::Status s = stub().GetOrganisation(Ctx(admin()).get(), get, &got);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(s.error_message().find("00000000-0000-4000-8000-000000000000"), std::string::npos);
  ErrorDetails which = DetailsOf(s);  // for programs: the resource not found
  EXPECT_EQ(which.resource_type, "organisation");
  EXPECT_EQ(which.resource_name, "00000000-0000-4000-8000-000000000000");
  // Asked again (a read cache might answer it), the same.
  s = stub().GetOrganisation(Ctx(admin()).get(), get, &got);
  EXPECT_EQ(DetailsOf(s).resource_name, "00000000-0000-4000-8000-000000000000");
}

TEST_F(PartnersApi, RepeatedRequestIdCreatesOnceEvenConcurrently) {
  v1::CreateOrganisationRequest req;
  *req.mutable_organisation() = SampleOrganisation("Idempotent Trust");
  req.set_request_id("5b3f0b0e-2f7c-4c55-9d1e-5b1b1f7a0001");
  std::vector<std::future<v1::Organisation>> calls;
  for (int i = 0; i < 8; ++i) {
    calls.push_back(std::async(std::launch::async, [&] {
      v1::Organisation out;
      grpc::Status s = stub().CreateOrganisation(Ctx(admin()).get(), req, &out);
      EXPECT_TRUE(s.ok()) << s.error_message();
      return out;
    }));
  }
  std::set<std::string> ids;
  for (auto& c : calls) ids.insert(c.get().id());
  EXPECT_EQ(ids.size(), 1u);
  v1::ListOrganisationsRequest list;
  list.set_name_prefix("Idempotent");
  v1::ListOrganisationsResponse resp;
  ASSERT_TRUE(stub().ListOrganisations(Ctx(admin()).get(), list, &resp).ok());
  EXPECT_EQ(resp.organisations_size(), 1);
}

TEST_F(PartnersApi, ARequestIdReusedForADifferentOrganisationIsRefusedWhileItsRetriesAreNot) {
  // A request_id names one request (AIP-155): its retries get the
  // organisation it made, even after that organisation changed; another
  // request under it is refused, not answered with the first organisation.
  v1::CreateOrganisationRequest req;
  *req.mutable_organisation() = SampleOrganisation("Digest Trust");
  req.set_request_id("org-reuse-1");
  v1::Organisation first, again;
  ASSERT_TRUE(stub().CreateOrganisation(Ctx(admin()).get(), req, &first).ok());
  ASSERT_TRUE(stub().CreateOrganisation(Ctx(admin()).get(), req, &again).ok());
  EXPECT_EQ(again.id(), first.id());
  // The same fields as sent again, before normalising (the name's spaces).
  v1::CreateOrganisationRequest padded = req;
  padded.mutable_organisation()->set_name("  Digest Trust ");
  ASSERT_TRUE(stub().CreateOrganisation(Ctx(admin()).get(), padded, &again).ok());
  EXPECT_EQ(again.id(), first.id());

  v1::UpdateOrganisationRequest rename;
  rename.mutable_organisation()->set_id(first.id());
  rename.mutable_organisation()->set_etag(first.etag());
  rename.mutable_organisation()->set_name("Digest Trust, renamed");
  rename.mutable_update_mask()->add_paths("name");
  v1::Organisation renamed;
  ASSERT_TRUE(stub().UpdateOrganisation(Ctx(admin()).get(), rename, &renamed).ok());
  ASSERT_TRUE(stub().CreateOrganisation(Ctx(admin()).get(), req, &again).ok());  // a late retry
  EXPECT_EQ(again.id(), first.id());
  EXPECT_EQ(again.name(), "Digest Trust, renamed");  // as it is now

  for (auto change : std::vector<std::function<void(v1::Organisation&)>>{
           [](v1::Organisation& o) { o.set_name("Another Trust Entirely"); },
           [](v1::Organisation& o) { o.set_region(v1::REGION_SOUTH_WEST); },
           [](v1::Organisation& o) { o.set_description("A different request"); }}) {
    v1::CreateOrganisationRequest other = req;
    change(*other.mutable_organisation());
    grpc::Status s = stub().CreateOrganisation(Ctx(admin()).get(), other, &again);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << s.error_message();
    EXPECT_EQ(DetailsOf(s).reason, "REQUEST_ID_REUSED");
    EXPECT_EQ(s.error_message().find(first.id()), std::string::npos) << s.error_message();
  }
  v1::ListOrganisationsRequest list;
  list.set_name_prefix("Another Trust");
  v1::ListOrganisationsResponse found;
  ASSERT_TRUE(stub().ListOrganisations(Ctx(admin()).get(), list, &found).ok());
  EXPECT_EQ(found.organisations_size(), 0);

  // One made before the digest was kept (or by an earlier release during a
  // rolling update) has nothing to compare: answered with it, as then.
  auto conn = db::Conn::Open(fx_->db_url, "test");
  ASSERT_TRUE(conn.ok());
  ASSERT_TRUE(
      (*conn)
          ->Exec("UPDATE organisations SET request_digest = NULL WHERE id = $1::uuid", {first.id()})
          .ok());
  v1::CreateOrganisationRequest other = req;
  other.mutable_organisation()->set_name("Another Trust Entirely");
  ASSERT_TRUE(stub().CreateOrganisation(Ctx(admin()).get(), other, &again).ok());
  EXPECT_EQ(again.id(), first.id());
}

TEST_F(PartnersApi, ARequestIdReusedForAnotherOrganisationsContactIsRefused) {
  // A request_id names one request: sent again for another organisation's
  // contact (or offer), it is refused, not answered with the first contact
  // (another organisation's people), and nothing is created.
  v1::Organisation a = CreateOrg("Reuse Trust A"), b = CreateOrg("Reuse Trust B");
  v1::CreateContactRequest req;
  req.mutable_contact()->set_organisation_id(a.id());
  req.mutable_contact()->set_display_name("Kim Ward");
  req.mutable_contact()->set_email("kim@example.nhs.uk");
  req.set_request_id("contact-reuse-1");
  v1::Contact first, again;
  ASSERT_TRUE(stub().CreateContact(Ctx(admin()).get(), req, &first).ok());
  ASSERT_TRUE(stub().CreateContact(Ctx(admin()).get(), req, &again).ok());  // a retry
  EXPECT_EQ(again.id(), first.id());
  // The same organisation, another person: another request.
  v1::CreateContactRequest someone_else = req;
  someone_else.mutable_contact()->set_email("lee@example.nhs.uk");
  EXPECT_EQ(stub().CreateContact(Ctx(admin()).get(), someone_else, &again).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);

  req.mutable_contact()->set_organisation_id(b.id());
  grpc::Status s = stub().CreateContact(Ctx(admin()).get(), req, &again);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << s.error_message();
  EXPECT_NE(s.error_message().find("request_id: already used for another request, whose contact"),
            std::string::npos)
      << s.error_message();
  EXPECT_EQ(s.error_message().find(first.id()), std::string::npos) << s.error_message();
  EXPECT_EQ(DetailsOf(s).reason, "REQUEST_ID_REUSED");
  v1::ListContactsRequest list;
  list.set_organisation_id(b.id());
  v1::ListContactsResponse contacts;
  ASSERT_TRUE(stub().ListContacts(Ctx(admin()).get(), list, &contacts).ok());
  EXPECT_EQ(contacts.contacts_size(), 0);

  v1::CreateOfferRequest offer;
  offer.mutable_offer()->set_organisation_id(a.id());
  offer.mutable_offer()->set_title("A day in the emergency department");
  offer.mutable_offer()->set_setting(v1::SETTING_HOSPITAL_WARD);
  offer.mutable_offer()->set_capacity_per_day(1);
  offer.mutable_offer()->add_weekdays(v1::WEEKDAY_MONDAY);
  offer.set_request_id("offer-reuse-1");
  v1::Offer made, other;
  ASSERT_TRUE(stub().CreateOffer(Ctx(admin()).get(), offer, &made).ok());
  ASSERT_TRUE(stub().CreateOffer(Ctx(admin()).get(), offer, &other).ok());  // a retry
  EXPECT_EQ(other.id(), made.id());
  {  // days named in another order: the same request
    v1::CreateOfferRequest days = offer, reordered = offer;
    days.set_request_id("offer-days-1");
    days.mutable_offer()->add_weekdays(v1::WEEKDAY_FRIDAY);
    reordered.set_request_id("offer-days-1");
    reordered.mutable_offer()->clear_weekdays();
    reordered.mutable_offer()->add_weekdays(v1::WEEKDAY_FRIDAY);
    reordered.mutable_offer()->add_weekdays(v1::WEEKDAY_MONDAY);
    v1::Offer first, retried;
    ASSERT_TRUE(stub().CreateOffer(Ctx(admin()).get(), days, &first).ok());
    ASSERT_TRUE(stub().CreateOffer(Ctx(admin()).get(), reordered, &retried).ok());
    EXPECT_EQ(retried.id(), first.id());
  }
  v1::CreateOfferRequest another_day = offer;
  another_day.mutable_offer()->add_weekdays(v1::WEEKDAY_TUESDAY);
  EXPECT_EQ(stub().CreateOffer(Ctx(admin()).get(), another_day, &other).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  offer.mutable_offer()->set_organisation_id(b.id());
  s = stub().CreateOffer(Ctx(admin()).get(), offer, &other);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << s.error_message();
  EXPECT_EQ(DetailsOf(s).reason, "REQUEST_ID_REUSED");
}

TEST_F(PartnersApi, DuplicateOdsCodeIsAlreadyExists) {
  v1::CreateOrganisationRequest req;
  *req.mutable_organisation() = SampleOrganisation("Guy's Hospital");
  req.mutable_organisation()->set_ods_code("RJ2");
  v1::Organisation out;
  ASSERT_TRUE(stub().CreateOrganisation(Ctx(admin()).get(), req, &out).ok());
  req.mutable_organisation()->set_name("Another Hospital");
  grpc::Status s = stub().CreateOrganisation(Ctx(admin()).get(), req, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_NE(s.error_message().find("organisation.ods_code"), std::string::npos);
  ErrorDetails why = DetailsOf(s);  // for programs: the cause by name
  EXPECT_EQ(why.reason, "ODS_CODE_TAKEN");
  EXPECT_EQ(why.domain, "connecting.partners");
  EXPECT_EQ(why.metadata, (std::map<std::string, std::string>{{"odsCode", "RJ2"}}));
}

TEST_F(PartnersApi, AnOrganisationIsFoundByItsOdsCode) {
  // Other department systems know NHS organisations by ODS code.
  v1::CreateOrganisationRequest req;
  *req.mutable_organisation() = SampleOrganisation("Royal Free Hospital");
  req.mutable_organisation()->set_ods_code("RAL01");
  v1::Organisation made;
  ASSERT_TRUE(stub().CreateOrganisation(Ctx(admin()).get(), req, &made).ok());
  v1::ListOrganisationsRequest list;
  list.set_ods_code(" ral01 ");  // as typed: trimmed, any case
  v1::ListOrganisationsResponse page;
  ASSERT_TRUE(stub().ListOrganisations(Ctx(admin()).get(), list, &page).ok());
  ASSERT_EQ(page.organisations_size(), 1);
  EXPECT_EQ(page.organisations(0).id(), made.id());
  EXPECT_TRUE(page.next_page_token().empty());
  list.set_ods_code("RAL99");
  ASSERT_TRUE(stub().ListOrganisations(Ctx(admin()).get(), list, &page).ok());
  EXPECT_EQ(page.organisations_size(), 0) << "nobody has that code";
  list.set_ods_code("R-1");
  grpc::Status s = stub().ListOrganisations(Ctx(admin()).get(), list, &page);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("ods_code: must be 3–10 letters and digits"), std::string::npos)
      << s.error_message();
}

TEST_F(PartnersApi, ListPaginatesOverFilteredRowsWithoutGapsOrRepeats) {
  // 23 matching (North West, GP practice) interleaved with 10 others.
  std::set<std::string> expected;
  for (int i = 0; i < 23; ++i) {
    expected.insert(CreateOrg("Pager Practice " + std::to_string(100 + i),
                              v1::SECTOR_GENERAL_PRACTICE, v1::REGION_NORTH_WEST)
                        .id());
    if (i % 2 == 0 && i < 20) {
      CreateOrg("Pager Practice x" + std::to_string(i), v1::SECTOR_GENERAL_PRACTICE,
                v1::REGION_MIDLANDS);
    }
  }
  v1::ListOrganisationsRequest req;
  req.set_page_size(5);
  req.set_sector(v1::SECTOR_GENERAL_PRACTICE);
  req.set_region(v1::REGION_NORTH_WEST);
  req.set_name_prefix("pager practice");  // case-insensitive
  std::set<std::string> seen;
  std::string last_name;
  int pages = 0;
  do {
    v1::ListOrganisationsResponse resp;
    ASSERT_TRUE(stub().ListOrganisations(Ctx(admin()).get(), req, &resp).ok());
    ++pages;
    EXPECT_LE(resp.organisations_size(), 5);
    for (const auto& o : resp.organisations()) {
      EXPECT_TRUE(seen.insert(o.id()).second) << "repeated " << o.name();
      EXPECT_EQ(o.region(), v1::REGION_NORTH_WEST);
      EXPECT_GE(o.name(), last_name);
      last_name = o.name();
    }
    req.set_page_token(resp.next_page_token());
  } while (!req.page_token().empty() && pages < 20);
  EXPECT_EQ(pages, 5);
  EXPECT_EQ(seen, expected);
}

TEST_F(PartnersApi, ListIsInNameOrderIgnoringCaseAcrossPages) {
  // In byte order capitals come first ("ZQ Birch" before "Zq alder"); a
  // reader expects the alphabet, and a name prefix matches either case.
  for (const char* name : {"zQ dogwood", "Zq Cedar", "ZQ Birch", "zq cedar", "Zq alder"}) {
    CreateOrg(name);
  }
  CreateOrg("Zr after");  // outside the prefix
  v1::ListOrganisationsRequest req;
  req.set_page_size(2);
  req.set_name_prefix("zQ ");
  std::vector<std::string> names;
  grpc::Status s = EveryPage(req, &v1::PartnersService::Stub::ListOrganisations,
                             [&](const v1::ListOrganisationsResponse& page) {
                               for (const auto& o : page.organisations()) names.push_back(o.name());
                             });
  ASSERT_TRUE(s.ok()) << s.error_message();
  // Names equal but for case in byte order ("Zq Cedar" before "zq cedar").
  EXPECT_EQ(names, (std::vector<std::string>{"Zq alder", "ZQ Birch", "Zq Cedar", "zq cedar",
                                             "zQ dogwood"}));
}

TEST_F(PartnersApi, ContactsAndOffersAreInNameOrderIgnoringCaseAcrossPages) {
  v1::Organisation org = CreateOrg("Alphabet Trust");
  std::string host;
  for (const char* name :
       {"echo White", "Delta Green", "bravo Jones", "Alpha Smith", "charlie Brown"}) {
    host = CreateContact(org.id(), name).id();
  }
  for (const char* title : {"ward round", "Outpatients", "a day on AMU", "District nursing"}) {
    CreateOffer(org.id(), host, title);
  }
  using Names = std::vector<std::string>;
  Names contacts;
  v1::ListContactsRequest lc;
  lc.set_organisation_id(org.id());
  lc.set_page_size(2);
  grpc::Status s = EveryPage(lc, &v1::PartnersService::Stub::ListContacts,
                             [&](const v1::ListContactsResponse& page) {
                               for (const auto& c : page.contacts()) {
                                 contacts.push_back(c.display_name());
                               }
                             });
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(contacts,
            (Names{"Alpha Smith", "bravo Jones", "charlie Brown", "Delta Green", "echo White"}));
  for (v1::OfferState state : {v1::OFFER_STATE_UNSPECIFIED, v1::OFFER_STATE_DRAFT}) {
    Names offers;
    v1::ListOffersRequest lo;
    lo.set_organisation_id(org.id());
    lo.set_state(state);
    lo.set_page_size(3);
    s = EveryPage(lo, &v1::PartnersService::Stub::ListOffers,
                  [&](const v1::ListOffersResponse& page) {
                    for (const auto& o : page.offers()) offers.push_back(o.title());
                  });
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(offers, (Names{"a day on AMU", "District nursing", "Outpatients", "ward round"}))
        << "state " << state;
  }
}

TEST_F(PartnersApi, UpdateChangesOnlyMaskedFieldsAndNeedsTheCurrentEtag) {
  v1::Organisation org = CreateOrg("Update Me Trust");
  v1::UpdateOrganisationRequest req;
  req.mutable_organisation()->set_id(org.id());
  req.mutable_organisation()->set_etag(org.etag());
  req.mutable_organisation()->set_name("Updated Trust");
  req.mutable_organisation()->set_region(v1::REGION_SOUTH_WEST);  // not in mask: ignored
  req.mutable_update_mask()->add_paths("name");
  v1::Organisation updated;
  ASSERT_TRUE(stub().UpdateOrganisation(Ctx(admin()).get(), req, &updated).ok());
  EXPECT_EQ(updated.name(), "Updated Trust");
  EXPECT_EQ(updated.region(), v1::REGION_LONDON);
  EXPECT_NE(updated.etag(), org.etag());

  // The same request again carries the old etag now: ABORTED, nothing changes.
  req.mutable_organisation()->set_name("Lost Update");
  grpc::Status s = stub().UpdateOrganisation(Ctx(admin()).get(), req, &updated);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_NE(s.error_message().find("etag"), std::string::npos);
  v1::GetOrganisationRequest get;
  get.set_id(org.id());
  v1::Organisation got;
  ASSERT_TRUE(stub().GetOrganisation(Ctx(admin()).get(), get, &got).ok());
  EXPECT_EQ(got.name(), "Updated Trust");
}

TEST_F(PartnersApi, PauseArchiveReactivateFollowTheLifecycle) {
  v1::Organisation org = CreateOrg("Lifecycle Trust");
  v1::Contact host = CreateContact(org.id(), "Sam Host");
  v1::Offer offer = CreateOffer(org.id(), host.id());
  v1::PublishOfferRequest pub;
  pub.set_id(offer.id());
  pub.set_etag(offer.etag());
  ASSERT_TRUE(stub().PublishOffer(Ctx(admin()).get(), pub, &offer).ok());
  // Sent again, as a client does whose reply was lost, with the etag the
  // publishing itself made stale: it hears that the offer is published.
  v1::Offer unchanged;
  grpc::Status republished = stub().PublishOffer(Ctx(admin()).get(), pub, &unchanged);
  EXPECT_EQ(republished.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(DetailsOf(republished).reason, "ALREADY_IN_STATE") << republished.error_message();

  v1::PauseOrganisationRequest pause;
  pause.set_id(org.id());
  pause.set_reason("Winter pressures");
  pause.set_etag(org.etag());
  v1::Organisation out;
  ASSERT_TRUE(stub().PauseOrganisation(Ctx(admin()).get(), pause, &out).ok());
  EXPECT_EQ(out.status(), v1::ORGANISATION_STATUS_PAUSED);
  // Pausing again (a retry of a pause that took effect, its etag now
  // stale) is refused, and says by name that the organisation is in the
  // state asked for.
  grpc::Status again = stub().PauseOrganisation(Ctx(admin()).get(), pause, &out);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(DetailsOf(again).reason, "ALREADY_IN_STATE") << again.error_message();
  pause.clear_etag();

  v1::ArchiveOrganisationRequest archive;
  archive.set_id(org.id());
  ASSERT_TRUE(stub().ArchiveOrganisation(Ctx(admin()).get(), archive, &out).ok());
  EXPECT_EQ(out.status(), v1::ORGANISATION_STATUS_ARCHIVED);
  // Archiving withdrew the published offer.
  v1::GetOfferRequest get_offer;
  get_offer.set_id(offer.id());
  ASSERT_TRUE(stub().GetOffer(Ctx(admin()).get(), get_offer, &offer).ok());
  EXPECT_EQ(offer.state(), v1::OFFER_STATE_WITHDRAWN);
  // An archived organisation's data is frozen.
  v1::UpdateOrganisationRequest upd;
  upd.mutable_organisation()->set_id(org.id());
  upd.mutable_organisation()->set_etag(out.etag());
  upd.mutable_organisation()->set_name("Renamed");
  upd.mutable_update_mask()->add_paths("name");
  grpc::Status frozen = stub().UpdateOrganisation(Ctx(admin()).get(), upd, &out);
  EXPECT_EQ(frozen.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(DetailsOf(frozen).reason, "ORGANISATION_ARCHIVED") << frozen.error_message();

  v1::ReactivateOrganisationRequest react;
  react.set_id(org.id());
  ASSERT_TRUE(stub().ReactivateOrganisation(Ctx(admin()).get(), react, &out).ok());
  EXPECT_EQ(out.status(), v1::ORGANISATION_STATUS_ACTIVE);
}

TEST_F(PartnersApi, AnOfferPublishedWhileItsPartnerIsArchivedEndsWithdrawn) {
  // Archiving withdraws the published offers; a publish racing it must not
  // leave a PUBLISHED offer at an ARCHIVED partner. A second connection
  // archives as ArchiveOrganisation does (the organisation's row held, its
  // status set, its published offers withdrawn) and the publish arrives
  // before that commits.
  v1::Organisation org = CreateOrg("Racing Archive Trust");
  v1::Contact host = CreateContact(org.id(), "Rae Host");
  v1::Offer offer = CreateOffer(org.id(), host.id());
  auto archiver = db::Conn::Open(fx_->db_url, "test");
  ASSERT_TRUE(archiver.ok());
  ASSERT_TRUE((*archiver)->ExecScript("BEGIN").ok());
  ASSERT_TRUE((*archiver)
                  ->Exec("SELECT 1 FROM organisations WHERE id = $1::uuid FOR UPDATE", {org.id()})
                  .ok());
  ASSERT_TRUE((*archiver)
                  ->Exec("UPDATE organisations SET status = $2, version = version + 1 "
                         "WHERE id = $1::uuid",
                         {org.id(), static_cast<int32_t>(v1::ORGANISATION_STATUS_ARCHIVED)})
                  .ok());
  ASSERT_TRUE((*archiver)
                  ->Exec("UPDATE offers SET state = $2 WHERE organisation_id = $1::uuid "
                         "AND state = $3",
                         {org.id(), static_cast<int32_t>(v1::OFFER_STATE_WITHDRAWN),
                          static_cast<int32_t>(v1::OFFER_STATE_PUBLISHED)})
                  .ok());
  auto publish = std::async(std::launch::async, [&] {
    v1::PublishOfferRequest pub;
    pub.set_id(offer.id());
    v1::Offer out;
    return stub().PublishOffer(Ctx(admin()).get(), pub, &out);
  });
  // Until the publish finishes (wrongly) or waits for the organisation.
  UntilWaitingOrDone(fx_->db_url, publish);
  ASSERT_TRUE((*archiver)->ExecScript("COMMIT").ok());
  grpc::Status st = publish.get();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  v1::GetOfferRequest get;
  get.set_id(offer.id());
  v1::Offer now;
  ASSERT_TRUE(stub().GetOffer(Ctx(admin()).get(), get, &now).ok());
  EXPECT_NE(now.state(), v1::OFFER_STATE_PUBLISHED) << "published at an archived partner";
}

TEST_F(PartnersApi, AContactMadeAHostWhileBeingRemovedStays) {
  // An offer update names the contact as its host (not yet committed) while
  // RemoveContact runs: the removal waits for it, then refuses with the rule,
  // and the contact stays.
  v1::Organisation org = CreateOrg("Racing Host Trust");
  v1::Contact first = CreateContact(org.id(), "First Host");
  v1::Contact second = CreateContact(org.id(), "Second Host");
  v1::Offer offer = CreateOffer(org.id(), first.id());
  auto updater = db::Conn::Open(fx_->db_url, "test");
  ASSERT_TRUE(updater.ok());
  ASSERT_TRUE((*updater)->ExecScript("BEGIN").ok());
  ASSERT_TRUE((*updater)
                  ->Exec("UPDATE offers SET host_contact_id = $2::uuid WHERE id = $1::uuid",
                         {offer.id(), second.id()})
                  .ok());
  auto removal = std::async(std::launch::async, [&] {
    v1::RemoveContactRequest req;
    req.set_id(second.id());
    v1::RemoveContactResponse out;
    return stub().RemoveContact(Ctx(admin()).get(), req, &out);
  });
  UntilWaitingOrDone(fx_->db_url, removal);
  ASSERT_TRUE((*updater)->ExecScript("COMMIT").ok());
  grpc::Status st = removal.get();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_NE(st.error_message().find("hosts offer(s) " + offer.id()), std::string::npos)
      << st.error_message();
  v1::GetContactRequest get;
  get.set_id(second.id());
  v1::Contact still;
  EXPECT_TRUE(stub().GetContact(Ctx(admin()).get(), get, &still).ok());
}

TEST_F(PartnersApi, AnOfferGivenAHostBeingRemovedSaysWhich) {
  // The reverse: RemoveContact has deleted the contact (not yet committed)
  // when an offer update names it as host. The update's check still sees
  // the contact; its row then waits for the removal and is refused by the
  // foreign key, reported as the field and the rule.
  v1::Organisation org = CreateOrg("Racing Removal Trust");
  v1::Contact first = CreateContact(org.id(), "Stays Host");
  v1::Contact leaving = CreateContact(org.id(), "Leaving Host");
  v1::Offer offer = CreateOffer(org.id(), first.id());
  auto remover = db::Conn::Open(fx_->db_url, "test");
  ASSERT_TRUE(remover.ok());
  ASSERT_TRUE((*remover)->ExecScript("BEGIN").ok());
  ASSERT_TRUE((*remover)->Exec("DELETE FROM contacts WHERE id = $1::uuid", {leaving.id()}).ok());
  auto update = std::async(std::launch::async, [&] {
    v1::UpdateOfferRequest req;
    req.mutable_offer()->set_id(offer.id());
    req.mutable_offer()->set_etag(offer.etag());
    req.mutable_offer()->set_host_contact_id(leaving.id());
    req.mutable_update_mask()->add_paths("host_contact_id");
    v1::Offer out;
    return stub().UpdateOffer(Ctx(admin()).get(), req, &out);
  });
  UntilWaitingOrDone(fx_->db_url, update);
  ASSERT_TRUE((*remover)->ExecScript("COMMIT").ok());
  grpc::Status st = update.get();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_TRUE(absl::StartsWith(st.error_message(), "offer.host_contact_id: "))
      << st.error_message();
}

TEST_F(PartnersApi, ContactsRoundTrip) {
  v1::Organisation org = CreateOrg("Contacts Trust");
  std::vector<std::string> ids;
  for (int i = 0; i < 7; ++i) {
    ids.push_back(CreateContact(org.id(), "Host" + std::to_string(i) + " Person").id());
  }
  v1::GetContactRequest get;
  get.set_id(ids[0]);
  v1::Contact c;
  ASSERT_TRUE(stub().GetContact(Ctx(admin()).get(), get, &c).ok());
  EXPECT_EQ(c.display_name(), "Host0 Person");
  EXPECT_EQ(c.organisation_id(), org.id());

  v1::ListContactsRequest list;
  list.set_organisation_id(org.id());
  list.set_page_size(3);
  std::set<std::string> seen;
  ASSERT_TRUE(EveryPage(list, &v1::PartnersService::Stub::ListContacts,
                        [&](const v1::ListContactsResponse& page) {
                          for (const auto& x : page.contacts()) seen.insert(x.id());
                        })
                  .ok());
  EXPECT_EQ(seen, std::set<std::string>(ids.begin(), ids.end()));

  v1::UpdateContactRequest upd;
  upd.mutable_contact()->set_id(c.id());
  upd.mutable_contact()->set_etag(c.etag());
  upd.mutable_contact()->set_phone("+44 20 7188 7188");
  upd.mutable_update_mask()->add_paths("phone");
  ASSERT_TRUE(stub().UpdateContact(Ctx(admin()).get(), upd, &c).ok());
  EXPECT_EQ(c.phone(), "+44 20 7188 7188");

  // Same email twice in one organisation is refused.
  v1::CreateContactRequest dup;
  dup.mutable_contact()->set_organisation_id(org.id());
  dup.mutable_contact()->set_display_name("Someone Else");
  dup.mutable_contact()->set_email("HOST0@example.nhs.uk");
  EXPECT_EQ(stub().CreateContact(Ctx(admin()).get(), dup, &c).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);

  v1::RemoveContactRequest rm;
  rm.set_id(ids[1]);
  v1::RemoveContactResponse rm_resp;
  ASSERT_TRUE(stub().RemoveContact(Ctx(admin()).get(), rm, &rm_resp).ok());
  get.set_id(ids[1]);
  EXPECT_EQ(stub().GetContact(Ctx(admin()).get(), get, &c).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(PartnersApi, ContactHostingAnOfferCannotBeRemoved) {
  v1::Organisation org = CreateOrg("Hosting Trust");
  v1::Contact host = CreateContact(org.id(), "Alex Host");
  v1::Offer offer = CreateOffer(org.id(), host.id());
  v1::RemoveContactRequest rm;
  rm.set_id(host.id());
  v1::RemoveContactResponse resp;
  grpc::Status s = stub().RemoveContact(Ctx(admin()).get(), rm, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find(offer.id()), std::string::npos);
}

TEST_F(PartnersApi, OffersRoundTrip) {
  v1::Organisation org = CreateOrg("Offers Trust");
  v1::Contact host = CreateContact(org.id(), "Jo Host");
  v1::Offer offer = CreateOffer(org.id(), host.id());
  EXPECT_EQ(offer.state(), v1::OFFER_STATE_DRAFT);
  EXPECT_EQ(offer.weekdays_size(), 2);
  ASSERT_EQ(offer.requirements_size(), 2);
  EXPECT_EQ(offer.requirements(1), "Occupational health clearance");

  v1::UpdateOfferRequest upd;
  upd.mutable_offer()->set_id(offer.id());
  upd.mutable_offer()->set_etag(offer.etag());
  upd.mutable_offer()->set_capacity_per_day(4);
  upd.mutable_offer()->add_weekdays(v1::WEEKDAY_MONDAY);
  upd.mutable_update_mask()->add_paths("capacity_per_day");
  upd.mutable_update_mask()->add_paths("weekdays");
  ASSERT_TRUE(stub().UpdateOffer(Ctx(admin()).get(), upd, &offer).ok());
  EXPECT_EQ(offer.capacity_per_day(), 4);
  ASSERT_EQ(offer.weekdays_size(), 1);
  EXPECT_EQ(offer.weekdays(0), v1::WEEKDAY_MONDAY);
  EXPECT_EQ(offer.requirements_size(), 2);

  v1::PublishOfferRequest pub;
  pub.set_id(offer.id());
  ASSERT_TRUE(stub().PublishOffer(Ctx(admin()).get(), pub, &offer).ok());
  EXPECT_EQ(offer.state(), v1::OFFER_STATE_PUBLISHED);

  v1::ListOffersRequest list;
  list.set_organisation_id(org.id());
  list.set_state(v1::OFFER_STATE_PUBLISHED);
  v1::ListOffersResponse resp;
  ASSERT_TRUE(stub().ListOffers(Ctx(admin()).get(), list, &resp).ok());
  ASSERT_EQ(resp.offers_size(), 1);
  EXPECT_EQ(resp.offers(0).id(), offer.id());

  v1::WithdrawOfferRequest wd;
  wd.set_id(offer.id());
  ASSERT_TRUE(stub().WithdrawOffer(Ctx(admin()).get(), wd, &offer).ok());
  EXPECT_EQ(offer.state(), v1::OFFER_STATE_WITHDRAWN);
  EXPECT_EQ(stub().WithdrawOffer(Ctx(admin()).get(), wd, &offer).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(PartnersApi, OfferWithoutHostCannotBePublished) {
  v1::Organisation org = CreateOrg("No Host Trust");
  v1::Offer offer = CreateOffer(org.id(), "");
  v1::PublishOfferRequest pub;
  pub.set_id(offer.id());
  grpc::Status s = stub().PublishOffer(Ctx(admin()).get(), pub, &offer);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("host_contact_id"), std::string::npos);
}

TEST_F(PartnersApi, OfferHostMustBelongToTheSameOrganisation) {
  v1::Organisation a = CreateOrg("Host A Trust");
  v1::Organisation b = CreateOrg("Host B Trust");
  v1::Contact host_b = CreateContact(b.id(), "Bea Host");
  v1::CreateOfferRequest req;
  v1::Offer* o = req.mutable_offer();
  o->set_organisation_id(a.id());
  o->set_title("Shadowing");
  o->set_setting(v1::SETTING_GP_SURGERY);
  o->set_capacity_per_day(1);
  o->add_weekdays(v1::WEEKDAY_FRIDAY);
  o->set_host_contact_id(host_b.id());
  v1::Offer out;
  grpc::Status s = stub().CreateOffer(Ctx(admin()).get(), req, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("offer.host_contact_id"), std::string::npos);
}

}  // namespace
}  // namespace connecting::testing

namespace connecting::testing {
namespace {

// GetOrganisation is served from a per-replica cache; a change made through
// another replica must show within a notification's delivery time.
TEST(PartnersCache, ReplicasSeeEachOthersChanges) {
  PartnersFixture fx;
  ServiceProcess other(fx.service->options());
  other.Start();
  auto b = v1::PartnersService::NewStub(other.channel());
  v1::CreateOrganisationRequest create;
  *create.mutable_organisation() = SampleOrganisation("Cached Trust");
  v1::Organisation org;
  ASSERT_TRUE(fx.stub->CreateOrganisation(Ctx(fx.admin).get(), create, &org).ok());
  v1::GetOrganisationRequest get;
  get.set_id(org.id());
  v1::Organisation seen;
  for (int i = 0; i < 3; ++i) {  // warm replica B's cache
    ASSERT_TRUE(b->GetOrganisation(Ctx(fx.admin).get(), get, &seen).ok());
  }
  for (int round = 0; round < 5; ++round) {
    v1::UpdateOrganisationRequest upd;
    upd.mutable_organisation()->set_id(org.id());
    upd.mutable_organisation()->set_etag(org.etag());
    upd.mutable_organisation()->set_description("Revision " + std::to_string(round));
    upd.mutable_update_mask()->add_paths("description");
    ASSERT_TRUE(fx.stub->UpdateOrganisation(Ctx(fx.admin).get(), upd, &org).ok());
    // The writer's own replica reads its write at once.
    ASSERT_TRUE(fx.stub->GetOrganisation(Ctx(fx.admin).get(), get, &seen).ok());
    EXPECT_EQ(seen.etag(), org.etag());
    // The other replica catches up within a short bound.
    absl::Time until = absl::Now() + absl::Seconds(2);
    do {
      ASSERT_TRUE(b->GetOrganisation(Ctx(fx.admin).get(), get, &seen).ok());
    } while (seen.etag() != org.etag() && absl::Now() < until);
    EXPECT_EQ(seen.description(), "Revision " + std::to_string(round));
  }
  // List pages are cached too: a new organisation created through replica A
  // appears in replica B's (cached) page within a short bound, and at once in A's.
  v1::ListOrganisationsRequest list;
  list.set_name_prefix("Cached");
  v1::ListOrganisationsResponse page;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(b->ListOrganisations(Ctx(fx.admin).get(), list, &page).ok());
    ASSERT_TRUE(fx.stub->ListOrganisations(Ctx(fx.admin).get(), list, &page).ok());
  }
  EXPECT_EQ(page.organisations_size(), 1);
  *create.mutable_organisation() = SampleOrganisation("Cached Trust Two");
  v1::Organisation second;
  ASSERT_TRUE(fx.stub->CreateOrganisation(Ctx(fx.admin).get(), create, &second).ok());
  ASSERT_TRUE(fx.stub->ListOrganisations(Ctx(fx.admin).get(), list, &page).ok());
  EXPECT_EQ(page.organisations_size(), 2) << "the writer's replica lists its write at once";
  absl::Time until = absl::Now() + absl::Seconds(2);
  do {
    ASSERT_TRUE(b->ListOrganisations(Ctx(fx.admin).get(), list, &page).ok());
  } while (page.organisations_size() != 2 && absl::Now() < until);
  EXPECT_EQ(page.organisations_size(), 2);
  // And the reads above were answered from the caches, not only read through.
  for (const char* cache : {"organisations", "organisation_pages"}) {
    EXPECT_GT(
        MetricValue(other.metrics_port(), absl::StrCat("connecting_cache_lookups_total{cache=\"",
                                                       cache, "\",result=\"hit\"}"))
            .value_or(0),
        0)
        << cache;
  }
}

TEST(PartnersCache, CachedRepliesAreByteForByteTheRepliesReadFromTheDatabase) {
  PartnersFixture fx;
  auto hits = [&](const char* cache) {
    return MetricValue(
               fx.service->metrics_port(),
               absl::StrCat("connecting_cache_lookups_total{cache=\"", cache, "\",result=\"hit\"}"))
        .value_or(0);
  };
  std::vector<v1::Organisation> orgs;
  for (const char* name : {"Wire Trust A", "Wire Trust B", "Wire Trust C", "Wire Trust D"}) {
    v1::CreateOrganisationRequest create;
    *create.mutable_organisation() = SampleOrganisation(name);
    create.mutable_organisation()->set_description("Wards, clinics and a ninety-bed unit");
    orgs.emplace_back();
    ASSERT_TRUE(fx.stub->CreateOrganisation(Ctx(fx.admin).get(), create, &orgs.back()).ok());
  }
  // Each reply is read twice: the first from the database, the second from
  // the cache. On a busy machine the creates' own notifications may still be
  // on their way and drop what a first read stored; then the pair is read
  // again under another key (a prefix that selects the same organisations,
  // another organisation), which no read has stored yet, a bounded number
  // of times.
  const char* prefixes[] = {"Wire", "Wire T", "Wire Tr", "Wire Tru"};
  bool page_hit = false;
  for (const char* prefix : prefixes) {
    v1::ListOrganisationsRequest list;
    list.set_name_prefix(prefix);
    list.set_page_size(2);
    v1::ListOrganisationsResponse read, cached;
    const double before = hits("organisation_pages");
    ASSERT_TRUE(fx.stub->ListOrganisations(Ctx(fx.admin).get(), list, &read).ok());
    ASSERT_EQ(hits("organisation_pages"), before) << "a page no one read came from the cache";
    ASSERT_TRUE(fx.stub->ListOrganisations(Ctx(fx.admin).get(), list, &cached).ok());
    ASSERT_EQ(read.organisations_size(), 2);
    EXPECT_FALSE(read.next_page_token().empty());
    EXPECT_EQ(cached.SerializeAsString(), read.SerializeAsString());
    EXPECT_EQ(cached.organisations(1).description(), "Wards, clinics and a ninety-bed unit");
    if ((page_hit = hits("organisation_pages") == before + 1)) break;
  }
  EXPECT_TRUE(page_hit) << "no page came from the cache";
  bool org_hit = false;
  for (auto org = orgs.rbegin(); org != orgs.rend() && !org_hit; ++org) {
    v1::GetOrganisationRequest get;
    get.set_id(org->id());
    v1::Organisation got, got_cached;
    const double before = hits("organisations");
    ASSERT_TRUE(fx.stub->GetOrganisation(Ctx(fx.admin).get(), get, &got).ok());
    ASSERT_EQ(hits("organisations"), before) << "an organisation no one read came from the cache";
    ASSERT_TRUE(fx.stub->GetOrganisation(Ctx(fx.admin).get(), get, &got_cached).ok());
    EXPECT_EQ(got_cached.SerializeAsString(), got.SerializeAsString());
    EXPECT_EQ(got_cached.name(), org->name());
    EXPECT_TRUE(got_cached.has_create_time());
    org_hit = hits("organisations") == before + 1;
  }
  EXPECT_TRUE(org_hit) << "no organisation came from the cache";
}

TEST(PartnersCache, WithoutCachesEveryReadComesFromTheDatabase) {
  // READ_CACHE_MB=0: no caches at all (nor their listening connection), and
  // reads, writes and listings behave the same.
  PartnersFixture fx(std::map<std::string, std::string>{{"READ_CACHE_MB", "0"}});
  v1::CreateOrganisationRequest create;
  *create.mutable_organisation() = SampleOrganisation("Uncached Trust");
  v1::Organisation org;
  ASSERT_TRUE(fx.stub->CreateOrganisation(Ctx(fx.admin).get(), create, &org).ok());
  v1::UpdateOrganisationRequest upd;
  upd.mutable_organisation()->set_id(org.id());
  upd.mutable_organisation()->set_etag(org.etag());
  upd.mutable_organisation()->set_description("Revised");
  upd.mutable_update_mask()->add_paths("description");
  ASSERT_TRUE(fx.stub->UpdateOrganisation(Ctx(fx.admin).get(), upd, &org).ok());
  v1::GetOrganisationRequest get;
  get.set_id(org.id());
  v1::Organisation seen;
  ASSERT_TRUE(fx.stub->GetOrganisation(Ctx(fx.admin).get(), get, &seen).ok());
  EXPECT_EQ(seen.description(), "Revised");
  EXPECT_EQ(seen.etag(), org.etag());
  v1::ListOrganisationsRequest list;
  list.set_name_prefix("Uncached");
  v1::ListOrganisationsResponse page;
  ASSERT_TRUE(fx.stub->ListOrganisations(Ctx(fx.admin).get(), list, &page).ok());
  ASSERT_EQ(page.organisations_size(), 1);
  EXPECT_EQ(page.organisations(0).description(), "Revised");
  EXPECT_EQ(HttpGet(fx.service->metrics_port(), "/metrics").find("connecting_cache_"),
            std::string::npos);
}

}  // namespace
}  // namespace connecting::testing
