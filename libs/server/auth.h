// Bearer-token authentication and the caller's identity.
//
// Every RPC except health and reflection carries `authorization: Bearer <JWT>`.
// The token must be signed with the configured algorithm and one of the keys
// (HS256 with a shared secret, or RS256/ES256 with a public key), carry `exp`
// in the future, `sub`, and `role`; a partner token also carries `org` (its
// organisation id) and a participant token `participant` (its participant id,
// default `sub`). With an issuer or audience configured, `iss` must be it and
// `aud` (a string or an array) must name it.
//
// Keys rotate without a restart: given a key file, the authenticator reads it
// again when it changes (checked every `key_file_check`). During a rotation the
// file holds both keys (PEM public keys one after another; HS256 secrets one
// per line); once the old one is removed, tokens it signed are refused, those
// already verified included.
#ifndef CONNECTING_LIBS_SERVER_AUTH_H_
#define CONNECTING_LIBS_SERVER_AUTH_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

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

// PERMISSION_DENIED for `p`, reason NOT_PERMITTED, with the token's `role`
// and the ids the message names (`scope`, e.g. {{"organisationId", id}}) as
// the ErrorInfo's metadata (libs/server/errors.h).
absl::Status NotPermitted(const Principal& p, absl::string_view message,
                          std::vector<std::pair<std::string, std::string>> scope = {});

struct AuthOptions {
  std::string algorithm = "HS256";  // HS256, RS256 or ES256
  std::string key;                  // HS256 secret, or PEM public key(s)
  std::string issuer;               // checked when not empty
  absl::Duration leeway = absl::Seconds(30);
  // Read instead of `key`, and again when it changes: PEM public keys, or
  // HS256 secrets one per line (whitespace around each line is not part of it).
  std::string key_file;
  std::string audience;  // checked when not empty
  absl::Duration key_file_check = absl::Seconds(10);
};

// The verification keys `text` holds for `algorithm` (from a key file when
// `from_file`): INVALID_ARGUMENT naming what is wrong.
absl::StatusOr<std::vector<std::string>> ParseKeys(absl::string_view algorithm,
                                                   absl::string_view text, bool from_file);

class Authenticator {
 public:
  // INVALID_ARGUMENT when the options cannot work (short secret, unknown
  // algorithm, unreadable key file).
  static absl::StatusOr<Authenticator> Create(AuthOptions options);
  // `authorization` is the metadata value ("Bearer <token>"). UNAUTHENTICATED
  // with the reason when it is missing, malformed, expired or badly signed.
  absl::StatusOr<Principal> Authenticate(absl::string_view authorization) const;
  // The keys tokens are verified with now.
  std::vector<std::string> keys() const;

 private:
  struct Cache;
  Authenticator(AuthOptions o, int alg, std::vector<std::string> keys, std::string file_text);
  absl::StatusOr<Principal> Verify(const std::string& token, const std::vector<std::string>& keys,
                                   int64_t* exp) const;
  // The keys now, after reading the key file again if it is time to; cache_->mu held.
  std::shared_ptr<const std::vector<std::string>> KeysLocked(absl::Time now) const;
  AuthOptions options_;
  int alg_;
  // Verified tokens until their expiry: clients send the same token on every
  // call, and verifying a signature costs more than the rest of a cached read.
  // Also the keys, and when the key file was last read.
  std::shared_ptr<Cache> cache_;
};

// Signs a token (HS256) — for tests, tools and `make up`; services never mint.
absl::StatusOr<std::string> MintToken(absl::string_view secret, Role role,
                                      absl::string_view subject,
                                      const std::map<std::string, std::string>& extra_claims,
                                      absl::Duration lifetime);

}  // namespace connecting::server

#endif  // CONNECTING_LIBS_SERVER_AUTH_H_
