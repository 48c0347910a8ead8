// Bad input gets INVALID_ARGUMENT (or the right code) naming the field and the
// rule, and nothing stored changes.
#include <google/protobuf/descriptor.h>
#include <gtest/gtest.h>

#include "libs/db/db.h"
#include "tests/harness.h"

namespace connecting::testing {
namespace {

namespace v1 = ::connecting::partners::v1;

class PartnersValidation : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fx_ = new PartnersFixture();
    v1::CreateOrganisationRequest req;
    *req.mutable_organisation() = SampleOrganisation("Baseline Trust");
    req.mutable_organisation()->set_ods_code("RX1");
    org_ = new v1::Organisation();
    ASSERT_TRUE(fx_->stub->CreateOrganisation(Ctx(fx_->admin).get(), req, org_).ok());
  }
  static void TearDownTestSuite() {
    delete fx_;
    delete org_;
  }
  void SetUp() override { before_ = Snapshot(); }
  // Every test ends by checking that nothing stored changed.
  void TearDown() override { EXPECT_EQ(Snapshot(), before_) << "stored organisations changed"; }
  // What is stored: every organisation, and how many events were published
  // (after waiting for the outbox to drain, so that an event still in flight
  // from an earlier, valid call is not mistaken for a change).
  static std::string Snapshot() {
    auto conn = db::Conn::Open(fx_->db_url, "test");
    for (int i = 0; i < 100 && conn.ok(); ++i) {
      auto r = (*conn)->Exec("SELECT count(*) FROM outbox WHERE sent_at IS NULL");
      if (r.ok() && r->Int(0, 0) == 0) break;
      absl::SleepFor(absl::Milliseconds(50));
    }
    v1::ListOrganisationsRequest req;
    req.set_page_size(500);
    v1::ListOrganisationsResponse resp;
    EXPECT_TRUE(fx_->stub->ListOrganisations(Ctx(fx_->admin).get(), req, &resp).ok());
    return resp.SerializeAsString() + std::to_string(ReadStream(fx_->nats_url, fx_->stream).size());
  }
  grpc::Status Create(const v1::Organisation& o) {
    v1::CreateOrganisationRequest req;
    *req.mutable_organisation() = o;
    v1::Organisation out;
    return fx_->stub->CreateOrganisation(Ctx(fx_->admin).get(), req, &out);
  }
  static void ExpectInvalid(const grpc::Status& s, const std::string& field) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_NE(s.error_message().find(field), std::string::npos)
        << "message does not name " << field << ": " << s.error_message();
  }

  static PartnersFixture* fx_;
  static v1::Organisation* org_;
  std::string before_;
};
PartnersFixture* PartnersValidation::fx_ = nullptr;
v1::Organisation* PartnersValidation::org_ = nullptr;

TEST_F(PartnersValidation, NameMustBePresentShortAndOneLine) {
  ExpectInvalid(Create(SampleOrganisation("")), "organisation.name: is required");
  ExpectInvalid(Create(SampleOrganisation("   ")), "organisation.name: is required");
  ExpectInvalid(Create(SampleOrganisation(std::string(201, 'a'))),
                "organisation.name: must be 1–200 characters, got 201");
  ExpectInvalid(Create(SampleOrganisation("Bad\nName")), "organisation.name");
  ExpectInvalid(Create(SampleOrganisation("Bell\x07Name")), "organisation.name");
  // 200 characters of multi-byte text is fine: the limit counts characters.
  std::string welsh;
  for (int i = 0; i < 200; ++i) welsh += "ŵ";
  v1::CreateOrganisationRequest ok;
  *ok.mutable_organisation() = SampleOrganisation(welsh);
  v1::Organisation out;
  ASSERT_TRUE(fx_->stub->CreateOrganisation(Ctx(fx_->admin).get(), ok, &out).ok());
  before_ = Snapshot();
}

TEST_F(PartnersValidation, MalformedOdsCodesAreRefused) {
  for (const char* bad : {"R!1", "AB", "ABCDEFGHIJK", "RJ 1", "ÖDS"}) {
    v1::Organisation o = SampleOrganisation("ODS Trust");
    o.set_ods_code(bad);
    ExpectInvalid(Create(o), "organisation.ods_code");
  }
}

TEST_F(PartnersValidation, UnknownAndMissingEnumValuesAreRefused) {
  v1::Organisation o = SampleOrganisation("Enum Trust");
  o.set_sector(static_cast<v1::Sector>(99));
  ExpectInvalid(Create(o), "organisation.sector: unknown value 99");
  o = SampleOrganisation("Enum Trust");
  o.set_region(v1::REGION_UNSPECIFIED);
  ExpectInvalid(Create(o), "organisation.region: is required");
  v1::ListOrganisationsRequest list;
  list.set_status(static_cast<v1::OrganisationStatus>(42));
  v1::ListOrganisationsResponse resp;
  ExpectInvalid(fx_->stub->ListOrganisations(Ctx(fx_->admin).get(), list, &resp), "status");
}

TEST_F(PartnersValidation, AllViolationsAreReportedTogether) {
  v1::Organisation o;
  o.set_ods_code("?");
  grpc::Status s = Create(o);
  ExpectInvalid(s, "organisation.name");
  ExpectInvalid(s, "organisation.ods_code");
  ExpectInvalid(s, "organisation.sector");
  ExpectInvalid(s, "organisation.region");
}

TEST_F(PartnersValidation, PageSizeOutOfRange) {
  for (int size : {-1, 501, 1 << 30}) {
    v1::ListOrganisationsRequest list;
    list.set_page_size(size);
    v1::ListOrganisationsResponse resp;
    ExpectInvalid(fx_->stub->ListOrganisations(Ctx(fx_->admin).get(), list, &resp), "page_size");
  }
}

TEST_F(PartnersValidation, ForgedTamperedOrReusedPageTokensAreRefused) {
  for (int i = 0; i < 3; ++i) {
    v1::CreateOrganisationRequest req;
    *req.mutable_organisation() = SampleOrganisation("Token Trust " + std::to_string(i));
    v1::Organisation out;
    ASSERT_TRUE(fx_->stub->CreateOrganisation(Ctx(fx_->admin).get(), req, &out).ok());
  }
  before_ = Snapshot();
  v1::ListOrganisationsRequest list;
  list.set_page_size(1);
  v1::ListOrganisationsResponse resp;
  ASSERT_TRUE(fx_->stub->ListOrganisations(Ctx(fx_->admin).get(), list, &resp).ok());
  std::string token = resp.next_page_token();
  ASSERT_FALSE(token.empty());

  for (std::string bad :
       {std::string("garbage"), std::string("eyJpZCI6IjEifQ.AAAA"), std::string(5000, 'A')}) {
    list.set_page_token(bad);
    ExpectInvalid(fx_->stub->ListOrganisations(Ctx(fx_->admin).get(), list, &resp), "page_token");
  }
  std::string tampered = token;
  tampered[2] = tampered[2] == 'A' ? 'B' : 'A';
  list.set_page_token(tampered);
  ExpectInvalid(fx_->stub->ListOrganisations(Ctx(fx_->admin).get(), list, &resp), "page_token");
  // A genuine token replayed with other filters would skip rows: refused.
  list.set_page_token(token);
  list.set_sector(v1::SECTOR_ACUTE_TRUST);
  ExpectInvalid(fx_->stub->ListOrganisations(Ctx(fx_->admin).get(), list, &resp), "page_token");
  list.set_sector(v1::SECTOR_UNSPECIFIED);
  EXPECT_TRUE(fx_->stub->ListOrganisations(Ctx(fx_->admin).get(), list, &resp).ok());
}

TEST_F(PartnersValidation, StaleEtagIsAbortedAndChangesNothing) {
  v1::UpdateOrganisationRequest req;
  req.mutable_organisation()->set_id(org_->id());
  req.mutable_organisation()->set_etag("999");
  req.mutable_organisation()->set_name("Overwritten");
  req.mutable_update_mask()->add_paths("name");
  v1::Organisation out;
  grpc::Status s = fx_->stub->UpdateOrganisation(Ctx(fx_->admin).get(), req, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_NE(s.error_message().find("etag"), std::string::npos);
}

TEST_F(PartnersValidation, UpdateMaskMustNameUpdatableFields) {
  v1::UpdateOrganisationRequest req;
  req.mutable_organisation()->set_id(org_->id());
  req.mutable_organisation()->set_etag(org_->etag());
  v1::Organisation out;
  ExpectInvalid(fx_->stub->UpdateOrganisation(Ctx(fx_->admin).get(), req, &out),
                "update_mask: is required");
  req.mutable_update_mask()->add_paths("status");
  ExpectInvalid(fx_->stub->UpdateOrganisation(Ctx(fx_->admin).get(), req, &out),
                "update_mask: \"status\" is not an updatable field");
  // A masked field that fails validation names the field.
  req.mutable_update_mask()->Clear();
  req.mutable_update_mask()->add_paths("name");
  ExpectInvalid(fx_->stub->UpdateOrganisation(Ctx(fx_->admin).get(), req, &out),
                "organisation.name: is required");
}

TEST_F(PartnersValidation, IdsMustBeUuids) {
  v1::GetOrganisationRequest get;
  get.set_id("not-a-uuid'; DROP TABLE organisations; --");
  v1::Organisation out;
  ExpectInvalid(fx_->stub->GetOrganisation(Ctx(fx_->admin).get(), get, &out), "id: must be a UUID");
  v1::ListContactsRequest lc;
  v1::ListContactsResponse lcr;
  ExpectInvalid(fx_->stub->ListContacts(Ctx(fx_->admin).get(), lc, &lcr),
                "organisation_id: is required");
}

TEST_F(PartnersValidation, OfferRulesNameTheirFields) {
  v1::CreateOfferRequest req;
  v1::Offer* o = req.mutable_offer();
  o->set_organisation_id(org_->id());
  o->set_title("Offer");
  o->set_setting(static_cast<v1::Setting>(77));
  o->set_capacity_per_day(0);
  o->add_weekdays(v1::WEEKDAY_MONDAY);
  o->add_weekdays(v1::WEEKDAY_MONDAY);
  o->add_requirements("");
  v1::Offer out;
  grpc::Status s = fx_->stub->CreateOffer(Ctx(fx_->admin).get(), req, &out);
  ExpectInvalid(s, "offer.setting: unknown value 77");
  ExpectInvalid(s, "offer.capacity_per_day: must be between 1 and 100, got 0");
  ExpectInvalid(s, "offer.weekdays: day WEEKDAY_MONDAY repeated");
  ExpectInvalid(s, "offer.requirements[0]");
  o->set_capacity_per_day(1000000);
  ExpectInvalid(fx_->stub->CreateOffer(Ctx(fx_->admin).get(), req, &out), "offer.capacity_per_day");
}

TEST_F(PartnersValidation, ContactEmailAndPhoneAreChecked) {
  v1::CreateContactRequest req;
  req.mutable_contact()->set_organisation_id(org_->id());
  req.mutable_contact()->set_display_name("Pat");
  req.mutable_contact()->set_email("not an email");
  req.mutable_contact()->set_phone("call me maybe");
  v1::Contact out;
  grpc::Status s = fx_->stub->CreateContact(Ctx(fx_->admin).get(), req, &out);
  ExpectInvalid(s, "contact.email");
  ExpectInvalid(s, "contact.phone");
}

TEST_F(PartnersValidation, OversizedMessageIsResourceExhausted) {
  v1::Organisation o = SampleOrganisation("Huge");
  o.set_description(std::string(2 << 20, 'x'));
  grpc::Status s = Create(o);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
}

// Appends a length-delimited field to raw protobuf wire bytes.
void AppendField(std::string& out, int number, const std::string& bytes) {
  auto varint = [&](uint64_t v) {
    while (v >= 0x80) {
      out.push_back(static_cast<char>(v | 0x80));
      v >>= 7;
    }
    out.push_back(static_cast<char>(v));
  };
  varint((static_cast<uint64_t>(number) << 3) | 2);
  varint(bytes.size());
  out += bytes;
}

// Wire bytes of `type` with invalid UTF-8 in its first string field (looking
// into message fields), and that field's path from the request in `field`
// ("organisation.name"; a repeated one's first element: "weekdays[0]"); ""
// if it has none.
std::string InvalidUtf8Request(const google::protobuf::Descriptor* type, std::string* field) {
  using FD = google::protobuf::FieldDescriptor;
  auto name_of = [](const FD* f) { return f->name() + (f->is_repeated() ? "[0]" : ""); };
  for (int i = 0; i < type->field_count(); ++i) {
    const FD* f = type->field(i);
    if (f->type() == FD::TYPE_STRING) {
      std::string out;
      AppendField(out, f->number(), "bad \xff\xfe text");
      *field = name_of(f);
      return out;
    }
  }
  for (int i = 0; i < type->field_count(); ++i) {
    const FD* f = type->field(i);
    if (f->type() == FD::TYPE_MESSAGE) {
      std::string inner_field;
      std::string inner = InvalidUtf8Request(f->message_type(), &inner_field);
      if (!inner.empty()) {
        std::string out;
        AppendField(out, f->number(), inner);
        *field = name_of(f) + "." + inner_field;
        return out;
      }
    }
  }
  return "";
}

TEST_F(PartnersValidation, InvalidUtf8InAnyRequestIsInvalidArgumentNamingTheField) {
  const auto* service =
      v1::Organisation::descriptor()->file()->FindServiceByName("PartnersService");
  ASSERT_NE(service, nullptr);
  for (int m = 0; m < service->method_count(); ++m) {
    const auto* method = service->method(m);
    std::string field;
    std::string bytes = InvalidUtf8Request(method->input_type(), &field);
    ASSERT_FALSE(bytes.empty()) << method->name();
    grpc::Status s =
        RawCall(fx_->service->channel(), "/" + service->full_name() + "/" + method->name(), bytes,
                Token(server::Role::kAdmin));
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << method->name() << ": " << s.error_message();
    EXPECT_EQ(s.error_message(), field + ": must be valid UTF-8 text") << method->name();
    // The same path in the details, for programs.
    ErrorDetails d = DetailsOf(s);
    ASSERT_EQ(d.fields.size(), 1u) << method->name() << ": " << s.error_message();
    EXPECT_EQ(d.fields[0].first, field) << method->name();
  }
}

TEST_F(PartnersValidation, GarbageBytesAreInvalidArgument) {
  grpc::Status s =
      RawCall(fx_->service->channel(), "/connecting.partners.v1.PartnersService/CreateOrganisation",
              std::string("\x0a\xff\xff\xff\xff\x0f", 6), Token(server::Role::kAdmin));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
}

}  // namespace
}  // namespace connecting::testing
