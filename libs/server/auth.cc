#include "libs/server/auth.h"

#include <jwt.h>

#include <cerrno>
#include <memory>
#include <optional>
#include <unordered_map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace connecting::server {
namespace {

struct JwtFree {
  void operator()(jwt_t* j) const { jwt_free(j); }
};
using JwtPtr = std::unique_ptr<jwt_t, JwtFree>;

// Returns the integer claim, or nullopt when absent or not an integer.
std::optional<long> IntClaim(jwt_t* j, const char* name) {
  errno = 0;
  long v = jwt_get_grant_int(j, name);
  if (errno != 0) return std::nullopt;
  return v;
}

}  // namespace

absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kAdmin:
      return "admin";
    case Role::kPartner:
      return "partner";
    case Role::kParticipant:
      return "participant";
    case Role::kSystem:
      return "system";
    case Role::kViewer:
      return "viewer";
  }
  return "viewer";
}

absl::StatusOr<Role> ParseRole(absl::string_view name) {
  for (Role r : {Role::kAdmin, Role::kPartner, Role::kParticipant, Role::kSystem, Role::kViewer}) {
    if (name == RoleName(r)) return r;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown role \"", name, "\" (admin, partner, participant, system, viewer)"));
}

struct Authenticator::Cache {
  absl::Mutex mu;
  std::unordered_map<std::string, std::pair<Principal, int64_t>> verified ABSL_GUARDED_BY(mu);
};

Authenticator::Authenticator(AuthOptions o, int alg)
    : options_(std::move(o)), alg_(alg), cache_(std::make_shared<Cache>()) {}

absl::StatusOr<Authenticator> Authenticator::Create(AuthOptions options) {
  int alg;
  if (options.algorithm == "HS256") {
    alg = JWT_ALG_HS256;
    if (options.key.size() < 32) {
      return absl::InvalidArgumentError("HS256 key must be at least 32 bytes");
    }
  } else if (options.algorithm == "RS256") {
    alg = JWT_ALG_RS256;
  } else if (options.algorithm == "ES256") {
    alg = JWT_ALG_ES256;
  } else {
    return absl::InvalidArgumentError("algorithm must be HS256, RS256 or ES256");
  }
  if (alg != JWT_ALG_HS256 && !absl::StrContains(options.key, "-----BEGIN PUBLIC KEY-----")) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.algorithm, " key must be a PEM public key"));
  }
  return Authenticator(std::move(options), alg);
}

absl::StatusOr<Principal> Authenticator::Authenticate(absl::string_view authorization) const {
  if (authorization.empty()) {
    return absl::UnauthenticatedError("missing authorization metadata (Bearer token)");
  }
  constexpr absl::string_view kBearer = "Bearer ";
  if (authorization.size() <= kBearer.size() ||
      !absl::StartsWithIgnoreCase(authorization, kBearer)) {
    return absl::UnauthenticatedError("authorization must be \"Bearer <token>\"");
  }
  std::string token(authorization.substr(kBearer.size()));
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  {
    absl::MutexLock lock(&cache_->mu);
    auto it = cache_->verified.find(token);
    if (it != cache_->verified.end()) {
      if (it->second.second + absl::ToInt64Seconds(options_.leeway) >= now) return it->second.first;
      cache_->verified.erase(it);
    }
  }
  int64_t exp = 0;
  absl::StatusOr<Principal> p = Verify(token, &exp);
  if (p.ok()) {
    absl::MutexLock lock(&cache_->mu);
    if (cache_->verified.size() >= 10000) cache_->verified.clear();
    cache_->verified.emplace(std::move(token), std::make_pair(*p, exp));
  }
  return p;
}

absl::StatusOr<Principal> Authenticator::Verify(const std::string& token, int64_t* exp_out) const {
  jwt_t* raw = nullptr;
  if (jwt_decode(&raw, token.c_str(), reinterpret_cast<const unsigned char*>(options_.key.data()),
                 static_cast<int>(options_.key.size())) != 0 ||
      raw == nullptr) {
    return absl::UnauthenticatedError("token is malformed or its signature does not verify");
  }
  JwtPtr jwt(raw);
  if (static_cast<int>(jwt_get_alg(jwt.get())) != alg_) {
    return absl::UnauthenticatedError(
        absl::StrCat("token must be signed with ", options_.algorithm));
  }
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  const int64_t leeway = absl::ToInt64Seconds(options_.leeway);
  std::optional<long> exp = IntClaim(jwt.get(), "exp");
  if (!exp) return absl::UnauthenticatedError("token has no exp claim");
  if (*exp + leeway < now) return absl::UnauthenticatedError("token has expired");
  *exp_out = *exp;
  if (std::optional<long> nbf = IntClaim(jwt.get(), "nbf"); nbf && *nbf - leeway > now) {
    return absl::UnauthenticatedError("token is not valid yet (nbf)");
  }
  if (!options_.issuer.empty()) {
    const char* iss = jwt_get_grant(jwt.get(), "iss");
    if (iss == nullptr || options_.issuer != iss) {
      return absl::UnauthenticatedError("token issuer is not trusted");
    }
  }
  Principal p;
  const char* sub = jwt_get_grant(jwt.get(), "sub");
  if (sub == nullptr || *sub == '\0') return absl::UnauthenticatedError("token has no sub claim");
  p.subject = sub;
  const char* role = jwt_get_grant(jwt.get(), "role");
  if (role == nullptr) return absl::UnauthenticatedError("token has no role claim");
  absl::StatusOr<Role> r = ParseRole(role);
  if (!r.ok())
    return absl::UnauthenticatedError(absl::StrCat("token role: ", r.status().message()));
  p.role = *r;
  if (p.role == Role::kPartner) {
    const char* org = jwt_get_grant(jwt.get(), "org");
    if (org == nullptr || *org == '\0') {
      return absl::UnauthenticatedError("partner token has no org claim");
    }
    p.organisation_id = org;
  }
  if (p.role == Role::kParticipant) {
    const char* part = jwt_get_grant(jwt.get(), "participant");
    p.participant_id = (part != nullptr && *part != '\0') ? part : p.subject;
  }
  return p;
}

absl::StatusOr<std::string> MintToken(absl::string_view secret, Role role,
                                      absl::string_view subject,
                                      const std::map<std::string, std::string>& extra_claims,
                                      absl::Duration lifetime) {
  jwt_t* raw = nullptr;
  if (jwt_new(&raw) != 0) return absl::InternalError("jwt_new failed");
  JwtPtr jwt(raw);
  std::string sub(subject), role_name(RoleName(role));
  int rc =
      jwt_set_alg(jwt.get(), JWT_ALG_HS256, reinterpret_cast<const unsigned char*>(secret.data()),
                  static_cast<int>(secret.size()));
  rc |= jwt_add_grant(jwt.get(), "sub", sub.c_str());
  rc |= jwt_add_grant(jwt.get(), "role", role_name.c_str());
  rc |= jwt_add_grant_int(jwt.get(), "iat", absl::ToUnixSeconds(absl::Now()));
  rc |= jwt_add_grant_int(jwt.get(), "exp", absl::ToUnixSeconds(absl::Now() + lifetime));
  for (const auto& [k, v] : extra_claims) rc |= jwt_add_grant(jwt.get(), k.c_str(), v.c_str());
  if (rc != 0) return absl::InvalidArgumentError("cannot build token");
  char* s = jwt_encode_str(jwt.get());
  if (s == nullptr) return absl::InternalError("jwt_encode_str failed");
  std::string out(s);
  free(s);
  return out;
}

}  // namespace connecting::server
