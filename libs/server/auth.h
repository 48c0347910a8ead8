// Bearer-token authentication and the caller's identity.
//
// Every RPC except health and reflection carries `authorization: Bearer <JWT>`.
// The token must be signed with the configured algorithm and key (HS256 with a
// shared secret, or RS256/ES256 with a public key), carry `exp` in the future,
// `sub`, and `role`; a partner token also carries `org` (its organisation id)
// and a participant token `participant` (its participant id, default `sub`).
#ifndef CONNECTING_LIBS_SERVER_AUTH_H_
#define CONNECTING_LIBS_SERVER_AUTH_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace connecting::server {

enum class Role { kAdmin, kPartner, kParticipant, kSystem, kViewer };

absl::string_view RoleName(Role role);
absl::StatusOr<Role> ParseRole(absl::string_view name);

struct Principal {
  Role role = Role::kViewer;
  std::string subject;
  std::string organisation_id;  // partner only
  std::string participant_id;   // participant only

  // Programme team and integrating systems: may do everything.
  bool is_staff() const { return role == Role::kAdmin || role == Role::kSystem; }
};

struct AuthOptions {
  std::string algorithm = "HS256";  // HS256, RS256 or ES256
  std::string key;                  // HS256 secret, or PEM public key
  std::string issuer;               // checked when not empty
  absl::Duration leeway = absl::Seconds(30);
};

class Authenticator {
 public:
  // INVALID_ARGUMENT when the options cannot work (short secret, unknown algorithm).
  static absl::StatusOr<Authenticator> Create(AuthOptions options);
  // `authorization` is the metadata value ("Bearer <token>"). UNAUTHENTICATED
  // with the reason when it is missing, malformed, expired or badly signed.
  absl::StatusOr<Principal> Authenticate(absl::string_view authorization) const;

 private:
  struct Cache;
  Authenticator(AuthOptions o, int alg);
  absl::StatusOr<Principal> Verify(const std::string& token, int64_t* exp) const;
  AuthOptions options_;
  int alg_;
  // Verified tokens until their expiry: clients send the same token on every
  // call, and verifying a signature costs more than the rest of a cached read.
  std::shared_ptr<Cache> cache_;
};

// Signs a token (HS256) — for tests, tools and `make up`; services never mint.
absl::StatusOr<std::string> MintToken(absl::string_view secret, Role role,
                                      absl::string_view subject,
                                      const std::map<std::string, std::string>& extra_claims,
                                      absl::Duration lifetime);

}  // namespace connecting::server

#endif  // CONNECTING_LIBS_SERVER_AUTH_H_
