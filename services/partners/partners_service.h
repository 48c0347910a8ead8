// The partners gRPC API: PartnersLogic holds what each RPC does (validate,
// authorise, one transaction with its outbox events); PartnersGrpc adapts it
// to the callback API through the shared RpcRunner.
#ifndef CONNECTING_SERVICES_PARTNERS_PARTNERS_SERVICE_H_
#define CONNECTING_SERVICES_PARTNERS_PARTNERS_SERVICE_H_

#include "connecting/partners/v1/partners.api.h"
#include "libs/bus/outbox.h"
#include "libs/db/db.h"
#include "libs/db/notify_cache.h"
#include "libs/server/page_token.h"
#include "libs/server/rpc.h"
#include "libs/server/wire_reply.h"

namespace connecting::partners {

namespace v1 = ::connecting::partners::v1;
using server::Call;

class PartnersLogic {
 public:
  using OrganisationCache = db::NotifyCache<server::WireReply>;
  // List pages by the request's bytes; emptied by any organisation change.
  using PageCache = db::NotifyCache<server::WireReply>;
  // The caches may be null (no caching).
  PartnersLogic(db::Pool& pool, const bus::Outbox& outbox, const server::PageTokens& tokens,
                OrganisationCache* cache = nullptr, PageCache* pages = nullptr)
      : pool_(pool), outbox_(outbox), tokens_(tokens), cache_(cache), pages_(pages) {}

  // ListOrganisations from the cache, without blocking; nullopt on a miss.
  std::optional<absl::Status> ListOrganisationsCached(const Call& call,
                                                      const v1::ListOrganisationsRequest& req,
                                                      v1::ListOrganisationsResponse* resp);

  // GetOrganisation from the cache, without blocking; nullopt on a miss.
  std::optional<absl::Status> GetOrganisationCached(const Call& call,
                                                    const v1::GetOrganisationRequest& req,
                                                    v1::Organisation* resp);

  absl::Status CreateOrganisation(const Call& call, const v1::CreateOrganisationRequest& req,
                                  v1::Organisation* resp);
  absl::Status GetOrganisation(const Call& call, const v1::GetOrganisationRequest& req,
                               v1::Organisation* resp);
  absl::Status ListOrganisations(const Call& call, const v1::ListOrganisationsRequest& req,
                                 v1::ListOrganisationsResponse* resp);
  absl::Status UpdateOrganisation(const Call& call, const v1::UpdateOrganisationRequest& req,
                                  v1::Organisation* resp);
  absl::Status PauseOrganisation(const Call& call, const v1::PauseOrganisationRequest& req,
                                 v1::Organisation* resp);
  absl::Status ArchiveOrganisation(const Call& call, const v1::ArchiveOrganisationRequest& req,
                                   v1::Organisation* resp);
  absl::Status ReactivateOrganisation(const Call& call,
                                      const v1::ReactivateOrganisationRequest& req,
                                      v1::Organisation* resp);

  absl::Status CreateContact(const Call& call, const v1::CreateContactRequest& req,
                             v1::Contact* resp);
  absl::Status GetContact(const Call& call, const v1::GetContactRequest& req, v1::Contact* resp);
  absl::Status ListContacts(const Call& call, const v1::ListContactsRequest& req,
                            v1::ListContactsResponse* resp);
  absl::Status UpdateContact(const Call& call, const v1::UpdateContactRequest& req,
                             v1::Contact* resp);
  absl::Status RemoveContact(const Call& call, const v1::RemoveContactRequest& req,
                             v1::RemoveContactResponse* resp);

  absl::Status CreateOffer(const Call& call, const v1::CreateOfferRequest& req, v1::Offer* resp);
  absl::Status GetOffer(const Call& call, const v1::GetOfferRequest& req, v1::Offer* resp);
  absl::Status ListOffers(const Call& call, const v1::ListOffersRequest& req,
                          v1::ListOffersResponse* resp);
  absl::Status UpdateOffer(const Call& call, const v1::UpdateOfferRequest& req, v1::Offer* resp);
  absl::Status PublishOffer(const Call& call, const v1::PublishOfferRequest& req, v1::Offer* resp);
  absl::Status WithdrawOffer(const Call& call, const v1::WithdrawOfferRequest& req,
                             v1::Offer* resp);

 private:
  absl::Status ChangeStatus(const Call& call, const std::string& id, const std::string& etag,
                            const std::string& reason, int transition, v1::Organisation* resp);
  absl::Status ChangeOfferState(const Call& call, const std::string& id, const std::string& etag,
                                bool publish, v1::Offer* resp);

  db::Pool& pool_;
  const bus::Outbox& outbox_;
  const server::PageTokens& tokens_;
  OrganisationCache* const cache_;
  PageCache* const pages_;
};

// `partners --republish`: every organisation, contact and offer, as it is,
// added to the outbox as a snapshot event (OrganisationSnapshot, …), a page
// per transaction; how many. For a PARTNERS stream that lost events, or a
// compact start for a new consumer; the serving replicas' relays publish them.
// `new_versions` (`--after-restore`): each resource gets its next version
// first, so that consumers replace what they hold of changes a database
// restore undid (those carry versions above the restored rows').
absl::StatusOr<int64_t> Republish(db::Pool& pool, const bus::Outbox& outbox, bool new_versions);

class PartnersGrpc final : public v1::PartnersService::CallbackService {
 public:
  PartnersGrpc(PartnersLogic* logic, server::RpcRunner* rpc) : logic_(logic), rpc_(rpc) {}

#define CONNECTING_PARTNERS_RPC(Method, Req, Resp)                                       \
  grpc::ServerUnaryReactor* Method(grpc::CallbackServerContext* ctx, const v1::Req* req, \
                                   v1::Resp* resp) override {                            \
    return rpc_->Run(ctx, req, #Method, [this, req, resp](const Call& call) {            \
      return logic_->Method(call, *req, resp);                                           \
    });                                                                                  \
  }
  CONNECTING_PARTNERS_RPC(CreateOrganisation, CreateOrganisationRequest, Organisation)
  grpc::ServerUnaryReactor* GetOrganisation(grpc::CallbackServerContext* ctx,
                                            const v1::GetOrganisationRequest* req,
                                            v1::Organisation* resp) override {
    return rpc_->Run(
        ctx, req, "GetOrganisation",
        [this, req, resp](const Call& call) { return logic_->GetOrganisation(call, *req, resp); },
        [this, req, resp](const Call& call) {
          return logic_->GetOrganisationCached(call, *req, resp);
        });
  }
  grpc::ServerUnaryReactor* ListOrganisations(grpc::CallbackServerContext* ctx,
                                              const v1::ListOrganisationsRequest* req,
                                              v1::ListOrganisationsResponse* resp) override {
    return rpc_->Run(
        ctx, req, "ListOrganisations",
        [this, req, resp](const Call& call) { return logic_->ListOrganisations(call, *req, resp); },
        [this, req, resp](const Call& call) {
          return logic_->ListOrganisationsCached(call, *req, resp);
        });
  }
  CONNECTING_PARTNERS_RPC(UpdateOrganisation, UpdateOrganisationRequest, Organisation)
  CONNECTING_PARTNERS_RPC(PauseOrganisation, PauseOrganisationRequest, Organisation)
  CONNECTING_PARTNERS_RPC(ArchiveOrganisation, ArchiveOrganisationRequest, Organisation)
  CONNECTING_PARTNERS_RPC(ReactivateOrganisation, ReactivateOrganisationRequest, Organisation)
  CONNECTING_PARTNERS_RPC(CreateContact, CreateContactRequest, Contact)
  CONNECTING_PARTNERS_RPC(GetContact, GetContactRequest, Contact)
  CONNECTING_PARTNERS_RPC(ListContacts, ListContactsRequest, ListContactsResponse)
  CONNECTING_PARTNERS_RPC(UpdateContact, UpdateContactRequest, Contact)
  CONNECTING_PARTNERS_RPC(RemoveContact, RemoveContactRequest, RemoveContactResponse)
  CONNECTING_PARTNERS_RPC(CreateOffer, CreateOfferRequest, Offer)
  CONNECTING_PARTNERS_RPC(GetOffer, GetOfferRequest, Offer)
  CONNECTING_PARTNERS_RPC(ListOffers, ListOffersRequest, ListOffersResponse)
  CONNECTING_PARTNERS_RPC(UpdateOffer, UpdateOfferRequest, Offer)
  CONNECTING_PARTNERS_RPC(PublishOffer, PublishOfferRequest, Offer)
  CONNECTING_PARTNERS_RPC(WithdrawOffer, WithdrawOfferRequest, Offer)
#undef CONNECTING_PARTNERS_RPC

 private:
  PartnersLogic* const logic_;
  server::RpcRunner* const rpc_;
};

}  // namespace connecting::partners

#endif  // CONNECTING_SERVICES_PARTNERS_PARTNERS_SERVICE_H_
