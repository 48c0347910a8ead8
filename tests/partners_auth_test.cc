// Authentication and authorisation: who may read and change what.
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include "absl/strings/escaping.h"
#include "tests/harness.h"

namespace connecting::testing {
namespace {

namespace v1 = ::connecting::partners::v1;
using server::Role;

class PartnersAuth : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fx_ = new PartnersFixture();
    own_ = new v1::Organisation(Make("Own Trust"));
    other_ = new v1::Organisation(Make("Other Trust"));
  }
  static void TearDownTestSuite() {
    delete fx_;
    delete own_;
    delete other_;
  }
  static v1::Organisation Make(const std::string& name) {
    v1::CreateOrganisationRequest req;
    *req.mutable_organisation() = SampleOrganisation(name);
    v1::Organisation out;
    EXPECT_TRUE(fx_->stub->CreateOrganisation(Ctx(fx_->admin).get(), req, &out).ok());
    return out;
  }
  static grpc::Status Get(const std::string& token) {
    v1::GetOrganisationRequest req;
    req.set_id(own_->id());
    v1::Organisation out;
    return fx_->stub->GetOrganisation(Ctx(token).get(), req, &out);
  }
  static grpc::Status Rename(const std::string& token, const v1::Organisation& org) {
    v1::GetOrganisationRequest get;
    get.set_id(org.id());
    v1::Organisation cur;
    EXPECT_TRUE(fx_->stub->GetOrganisation(Ctx(fx_->admin).get(), get, &cur).ok());
    v1::UpdateOrganisationRequest req;
    req.mutable_organisation()->set_id(org.id());
    req.mutable_organisation()->set_etag(cur.etag());
    req.mutable_organisation()->set_description("Edited by " + token.substr(0, 8));
    req.mutable_update_mask()->add_paths("description");
    v1::Organisation out;
    return fx_->stub->UpdateOrganisation(Ctx(token).get(), req, &out);
  }
  static grpc::Status AddContact(const std::string& token, const std::string& org_id) {
    v1::CreateContactRequest req;
    req.mutable_contact()->set_organisation_id(org_id);
    req.mutable_contact()->set_display_name("New Host");
    req.mutable_contact()->set_email("host" + RandomSuffix() + "@example.org");
    v1::Contact out;
    return fx_->stub->CreateContact(Ctx(token).get(), req, &out);
  }

  static PartnersFixture* fx_;
  static v1::Organisation* own_;
  static v1::Organisation* other_;
};
PartnersFixture* PartnersAuth::fx_ = nullptr;
v1::Organisation* PartnersAuth::own_ = nullptr;
v1::Organisation* PartnersAuth::other_ = nullptr;

TEST_F(PartnersAuth, NoTokenIsUnauthenticated) {
  grpc::Status s = Get("");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(s.error_message().find("authorization"), std::string::npos);
}

TEST_F(PartnersAuth, BadTokensAreUnauthenticated) {
  EXPECT_EQ(Get("not.a.jwt").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // Expired an hour ago (beyond the 30 s leeway).
  EXPECT_EQ(Get(Token(Role::kAdmin, "old", "", -absl::Hours(1))).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // Signed with another key.
  auto forged = server::MintToken("another-key-another-key-another-key!!", Role::kAdmin, "x", {},
                                  absl::Hours(1));
  ASSERT_TRUE(forged.ok());
  EXPECT_EQ(Get(*forged).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // alg=none with an admin claim.
  std::string header = absl::WebSafeBase64Escape(R"({"alg":"none","typ":"JWT"})");
  std::string body = absl::WebSafeBase64Escape(R"({"sub":"x","role":"admin","exp":9999999999})");
  EXPECT_EQ(Get(header + "." + body + ".").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // A partner token without its organisation claim.
  EXPECT_EQ(Get(Token(Role::kPartner, "p")).error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(PartnersAuth, EveryRoleCanRead) {
  for (Role r : {Role::kAdmin, Role::kSystem, Role::kViewer, Role::kParticipant}) {
    EXPECT_TRUE(Get(Token(r)).ok()) << server::RoleName(r);
  }
  EXPECT_TRUE(Get(Token(Role::kPartner, "host", other_->id())).ok());
}

TEST_F(PartnersAuth, PartnerChangesOnlyItsOwnOrganisation) {
  std::string partner = Token(Role::kPartner, "host@own", own_->id());
  EXPECT_TRUE(Rename(partner, *own_).ok());
  EXPECT_TRUE(AddContact(partner, own_->id()).ok());
  grpc::Status s = Rename(partner, *other_);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(AddContact(partner, other_->id()).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // Partners may not create organisations nor archive their own.
  v1::CreateOrganisationRequest create;
  *create.mutable_organisation() = SampleOrganisation("Sneaky");
  v1::Organisation out;
  EXPECT_EQ(fx_->stub->CreateOrganisation(Ctx(partner).get(), create, &out).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  v1::ArchiveOrganisationRequest archive;
  archive.set_id(own_->id());
  EXPECT_EQ(fx_->stub->ArchiveOrganisation(Ctx(partner).get(), archive, &out).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(PartnersAuth, PartnerSeesOnlyItsOwnContacts) {
  ASSERT_TRUE(AddContact(fx_->admin, other_->id()).ok());
  v1::ListContactsRequest req;
  req.set_organisation_id(other_->id());
  v1::ListContactsResponse resp;
  EXPECT_EQ(fx_->stub->ListContacts(Ctx(Token(Role::kPartner, "h", own_->id())).get(), req, &resp)
                .error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(fx_->stub->ListContacts(Ctx(Token(Role::kParticipant)).get(), req, &resp).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(fx_->stub->ListContacts(Ctx(Token(Role::kViewer)).get(), req, &resp).ok());
}

TEST_F(PartnersAuth, ViewerAndParticipantCannotWrite) {
  for (Role r : {Role::kViewer, Role::kParticipant}) {
    grpc::Status s = Rename(Token(r), *own_);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << server::RoleName(r);
    EXPECT_EQ(AddContact(Token(r), own_->id()).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
}

TEST_F(PartnersAuth, SystemMayDoWhatAdminMay) {
  EXPECT_TRUE(Rename(Token(Role::kSystem, "crm-sync"), *other_).ok());
}

TEST_F(PartnersAuth, HealthNeedsNoToken) {
  EXPECT_EQ(fx_->service->Health(), 1);
  EXPECT_EQ(fx_->service->Health("connecting.partners.v1.PartnersService"), 1);
  EXPECT_EQ(fx_->service->Health("liveness"), 1);
}

// Server reflection answers without a token (what grpcurl uses).
class ReflectionReader : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  explicit ReflectionReader(grpc::GenericStub* stub) {
    // ServerReflectionRequest{list_services: "*"} (field 7).
    static const char kReq[] = "\x3a\x01*";
    grpc::Slice slice(kReq, 3);
    request_ = grpc::ByteBuffer(&slice, 1);
    stub->PrepareBidiStreamingCall(&ctx_,
                                   "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                   grpc::StubOptions(), this);
    StartWrite(&request_);
    StartRead(&response_);
    StartCall();
  }
  void OnWriteDone(bool) override { StartWritesDone(); }
  void OnReadDone(bool ok) override {
    if (ok) {
      std::vector<grpc::Slice> slices;
      (void)response_.Dump(&slices);
      for (auto& s : slices)
        text_ += std::string(reinterpret_cast<const char*>(s.begin()), s.size());
    }
  }
  void OnDone(const grpc::Status& s) override {
    std::lock_guard<std::mutex> l(mu_);
    status_ = s;
    done_ = true;
    cv_.notify_one();
  }
  std::string Await() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return done_; });
    return text_;
  }

 private:
  grpc::ClientContext ctx_;
  grpc::ByteBuffer request_, response_;
  std::string text_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  grpc::Status status_;
};

TEST_F(PartnersAuth, ReflectionNeedsNoToken) {
  grpc::GenericStub stub(fx_->service->channel());
  ReflectionReader reader(&stub);
  std::string listed = reader.Await();
  EXPECT_NE(listed.find("connecting.partners.v1.PartnersService"), std::string::npos);
  EXPECT_NE(listed.find("grpc.health.v1.Health"), std::string::npos);
}

}  // namespace
}  // namespace connecting::testing
