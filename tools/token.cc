// Prints a signed bearer token for the local stack.
//   connecting-token <role> [org-or-participant-id]   (key from AUTH_JWT_KEY)
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "libs/server/auth.h"

int main(int argc, char** argv) {
  using namespace connecting::server;
  const char* key = std::getenv("AUTH_JWT_KEY");
  if (argc < 2 || key == nullptr) {
    std::fprintf(stderr,
                 "usage: AUTH_JWT_KEY=... %s admin|partner|participant|system|viewer [id]\n"
                 "  partner needs the organisation id, participant its participant id\n",
                 argv[0]);
    return 2;
  }
  auto role = ParseRole(argv[1]);
  if (!role.ok()) {
    std::fprintf(stderr, "%s\n", std::string(role.status().message()).c_str());
    return 2;
  }
  std::map<std::string, std::string> claims;
  if (*role == Role::kPartner || *role == Role::kParticipant) {
    if (argc < 3) {
      std::fprintf(stderr, "%s tokens need an id argument\n", argv[1]);
      return 2;
    }
    claims[*role == Role::kPartner ? "org" : "participant"] = argv[2];
  }
  auto token = MintToken(key, *role, std::string("local-") + argv[1], claims, absl::Hours(12));
  if (!token.ok()) {
    std::fprintf(stderr, "%s\n", token.status().ToString().c_str());
    return 1;
  }
  std::printf("%s\n", token->c_str());
  return 0;
}
