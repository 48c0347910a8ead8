#include "libs/server/auth.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <cerrno>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <unordered_map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "libs/common/log.h"
#include "libs/common/metrics.h"
#include "libs/server/errors.h"

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

constexpr size_t kMaxKeys = 16;

// 1 while the key file's content is one the authenticator refused (it goes
// on with the keys it had): a rotation that is not taking effect.
prometheus::Gauge& KeyFileRejected() {
  static prometheus::Gauge& g =
      prometheus::BuildGauge()
          .Name("connecting_auth_key_file_rejected")
          .Help("1 while AUTH_JWT_KEY_FILE holds no valid key set (the keys read before stay)")
          .Register(*metrics::Registry())
          .Add({});
  return g;
}

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return buf.str();
}

// True if `pem` is a public key of the type `algorithm` verifies with.
bool IsPublicKeyFor(absl::string_view algorithm, const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (bio == nullptr) return false;
  EVP_PKEY* key = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (key == nullptr) return false;
  int type = EVP_PKEY_get_base_id(key);
  EVP_PKEY_free(key);
  return algorithm == "RS256" ? type == EVP_PKEY_RSA : type == EVP_PKEY_EC;
}

// True if the claim `aud` (a string, or an array of them) names `audience`.
bool AudienceNames(jwt_t* j, const std::string& audience) {
  const char* one = jwt_get_grant(j, "aud");
  if (one != nullptr) return audience == one;
  char* json = jwt_get_grants_json(j, "aud");
  if (json == nullptr) return false;
  google::protobuf::Value v;
  bool parsed = google::protobuf::util::JsonStringToMessage(json, &v).ok();
  free(json);
  if (!parsed || !v.has_list_value()) return false;
  for (const google::protobuf::Value& e : v.list_value().values()) {
    if (e.has_string_value() && e.string_value() == audience) return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseKeys(absl::string_view algorithm,
                                                   absl::string_view text, bool from_file) {
  std::vector<std::string> keys;
  if (algorithm == "HS256") {
    if (!from_file) {
      keys.emplace_back(text);
      if (text.size() < 32) {
        return absl::InvalidArgumentError("HS256 key must be at least 32 bytes");
      }
    } else {
      int line_no = 0;
      for (absl::string_view line : absl::StrSplit(text, '\n')) {
        ++line_no;
        line = absl::StripAsciiWhitespace(line);
        if (line.empty()) continue;
        if (line.size() < 32) {
          return absl::InvalidArgumentError(
              absl::StrCat("the HS256 secret on line ", line_no, " is shorter than 32 bytes"));
        }
        keys.emplace_back(line);
      }
    }
  } else {
    constexpr absl::string_view kBegin = "-----BEGIN PUBLIC KEY-----";
    constexpr absl::string_view kEnd = "-----END PUBLIC KEY-----";
    for (size_t at = text.find(kBegin); at != absl::string_view::npos; at = text.find(kBegin, at)) {
      size_t end = text.find(kEnd, at);
      if (end == absl::string_view::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("PEM public key ", keys.size() + 1, " has no END line"));
      }
      end += kEnd.size();
      keys.push_back(absl::StrCat(text.substr(at, end - at), "\n"));
      if (!IsPublicKeyFor(algorithm, keys.back())) {
        return absl::InvalidArgumentError(
            absl::StrCat("PEM public key ", keys.size(), " is not a valid ",
                         algorithm == "RS256" ? "RSA" : "EC", " public key (", algorithm, ")"));
      }
      at = end;
    }
    if (keys.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(algorithm, " key must be a PEM public key"));
    }
  }
  if (keys.empty()) return absl::InvalidArgumentError("the key file holds no secret");
  if (keys.size() > kMaxKeys) {
    return absl::InvalidArgumentError(
        absl::StrCat("at most ", kMaxKeys, " keys (", keys.size(), " given)"));
  }
  return keys;
}

absl::Status NotPermitted(const Principal& p, absl::string_view message,
                          std::vector<std::pair<std::string, std::string>> scope) {
  scope.emplace_back("role", std::string(RoleName(p.role)));
  return WithReason(absl::PermissionDeniedError(message), "NOT_PERMITTED", scope);
}

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
  std::shared_ptr<const std::vector<std::string>> keys ABSL_GUARDED_BY(mu);
  std::string file_text ABSL_GUARDED_BY(mu);  // the key file as last read
  absl::Time next_check ABSL_GUARDED_BY(mu);
};

Authenticator::Authenticator(AuthOptions o, int alg, std::vector<std::string> keys,
                             std::string file_text)
    : options_(std::move(o)), alg_(alg), cache_(std::make_shared<Cache>()) {
  absl::MutexLock lock(&cache_->mu);
  cache_->keys = std::make_shared<const std::vector<std::string>>(std::move(keys));
  cache_->file_text = std::move(file_text);
  cache_->next_check = absl::Now() + options_.key_file_check;
  KeyFileRejected().Set(0);
}

absl::StatusOr<Authenticator> Authenticator::Create(AuthOptions options) {
  int alg;
  if (options.algorithm == "HS256") {
    alg = JWT_ALG_HS256;
  } else if (options.algorithm == "RS256") {
    alg = JWT_ALG_RS256;
  } else if (options.algorithm == "ES256") {
    alg = JWT_ALG_ES256;
  } else {
    return absl::InvalidArgumentError("algorithm must be HS256, RS256 or ES256");
  }
  std::string text = options.key, file_text;
  if (!options.key_file.empty()) {
    std::optional<std::string> read = ReadFile(options.key_file);
    if (!read) return absl::InvalidArgumentError(absl::StrCat("cannot read ", options.key_file));
    text = file_text = *std::move(read);
  }
  absl::StatusOr<std::vector<std::string>> keys =
      ParseKeys(options.algorithm, text, !options.key_file.empty());
  if (!keys.ok()) return keys.status();
  return Authenticator(std::move(options), alg, *std::move(keys), std::move(file_text));
}

std::vector<std::string> Authenticator::keys() const {
  absl::MutexLock lock(&cache_->mu);
  return *cache_->keys;
}

std::shared_ptr<const std::vector<std::string>> Authenticator::KeysLocked(absl::Time now) const {
  Cache& c = *cache_;
  if (options_.key_file.empty() || now < c.next_check) return c.keys;
  c.next_check = now + options_.key_file_check;
  std::optional<std::string> text = ReadFile(options_.key_file);
  if (!text || *text == c.file_text) return c.keys;  // unreadable for a moment: as it was
  c.file_text = *text;
  absl::StatusOr<std::vector<std::string>> keys = ParseKeys(options_.algorithm, *text, true);
  if (!keys.ok()) {
    log::Error("token key file changed but is not valid: the keys read before stay in use",
               {{"file", options_.key_file}, {"error", keys.status().message()}});
    KeyFileRejected().Set(1);
    return c.keys;
  }
  KeyFileRejected().Set(0);
  log::Info("token keys read again",
            {{"file", options_.key_file}, {"keys", absl::StrCat(keys->size())}});
  c.keys = std::make_shared<const std::vector<std::string>>(*std::move(keys));
  c.verified.clear();  // a token of a key removed is refused from now on
  return c.keys;
}

absl::StatusOr<Principal> Authenticator::Authenticate(absl::string_view authorization) const {
  if (authorization.empty()) {
    return WithReason(absl::UnauthenticatedError("missing authorization metadata (Bearer token)"),
                      "TOKEN_MISSING");
  }
  constexpr absl::string_view kBearer = "Bearer ";
  if (authorization.size() <= kBearer.size() ||
      !absl::StartsWithIgnoreCase(authorization, kBearer)) {
    return WithReason(absl::UnauthenticatedError("authorization must be \"Bearer <token>\""),
                      "TOKEN_MISSING");
  }
  std::string token(authorization.substr(kBearer.size()));
  const absl::Time now_time = absl::Now();
  const int64_t now = absl::ToUnixSeconds(now_time);
  std::shared_ptr<const std::vector<std::string>> keys;
  {
    absl::MutexLock lock(&cache_->mu);
    keys = KeysLocked(now_time);
    auto it = cache_->verified.find(token);
    if (it != cache_->verified.end()) {
      if (it->second.second + absl::ToInt64Seconds(options_.leeway) >= now) return it->second.first;
      cache_->verified.erase(it);
    }
  }
  int64_t exp = 0;
  absl::StatusOr<Principal> p = Verify(token, *keys, &exp);
  if (!p.ok() && ReasonOf(p.status()).empty()) return WithReason(p.status(), "TOKEN_INVALID");
  if (p.ok()) {
    absl::MutexLock lock(&cache_->mu);
    if (cache_->keys == keys) {  // not if the keys changed meanwhile
      if (cache_->verified.size() >= 10000) cache_->verified.clear();
      cache_->verified.emplace(std::move(token), std::make_pair(*p, exp));
    }
  }
  return p;
}

absl::StatusOr<Principal> Authenticator::Verify(const std::string& token,
                                                const std::vector<std::string>& keys,
                                                int64_t* exp_out) const {
  JwtPtr jwt;
  for (const std::string& key : keys) {  // during a rotation, the old key and the new
    jwt_t* raw = nullptr;
    if (jwt_decode(&raw, token.c_str(), reinterpret_cast<const unsigned char*>(key.data()),
                   static_cast<int>(key.size())) == 0 &&
        raw != nullptr) {
      jwt.reset(raw);
      break;
    }
    if (raw != nullptr) jwt_free(raw);
  }
  if (jwt == nullptr) {
    return absl::UnauthenticatedError("token is malformed or its signature does not verify");
  }
  if (static_cast<int>(jwt_get_alg(jwt.get())) != alg_) {
    return absl::UnauthenticatedError(
        absl::StrCat("token must be signed with ", options_.algorithm));
  }
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  const int64_t leeway = absl::ToInt64Seconds(options_.leeway);
  std::optional<long> exp = IntClaim(jwt.get(), "exp");
  if (!exp) return absl::UnauthenticatedError("token has no exp claim");
  if (*exp + leeway < now) {
    return WithReason(absl::UnauthenticatedError("token has expired"), "TOKEN_EXPIRED");
  }
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
  if (!options_.audience.empty() && !AudienceNames(jwt.get(), options_.audience)) {
    return absl::UnauthenticatedError(
        absl::StrCat("token audience (aud) does not name \"", options_.audience, "\""));
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
