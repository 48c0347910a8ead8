// Unit and integration tests of libs/: validation, page tokens, auth,
// executor, the database layer and migrations (real PostgreSQL).
#include <google/protobuf/wrappers.pb.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/server_builder.h>
#include <gtest/gtest.h>
#include <jwt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/socket.h>

#include <atomic>
#include <functional>
#include <future>
#include <optional>
#include <set>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "libs/common/metrics.h"
#include "libs/common/not_found.h"
#include "libs/common/text.h"
#include "libs/common/throttle.h"
#include "libs/db/db.h"
#include "libs/db/group_commit.h"
#include "libs/db/migrations.h"
#include "libs/db/notify_cache.h"
#include "libs/server/auth.h"
#include "libs/server/errors.h"
#include "libs/server/executor.h"
#include "libs/server/health.h"
#include "libs/server/page_token.h"
#include "libs/server/periodic.h"
#include "libs/server/rpc.h"
#include "libs/server/validate.h"
#include "libs/server/wire_reply.h"
#include "tests/harness.h"

namespace connecting {
namespace {

using server::FieldErrors;

TEST(Validate, Utf8) {
  EXPECT_TRUE(server::IsValidUtf8("plain"));
  EXPECT_TRUE(server::IsValidUtf8("Ysbyty Gwynedd ŵ 😀"));
  EXPECT_FALSE(server::IsValidUtf8("\xff"));
  EXPECT_FALSE(server::IsValidUtf8("\xc0\xaf"));      // overlong '/'
  EXPECT_FALSE(server::IsValidUtf8("\xed\xa0\x80"));  // surrogate
  EXPECT_FALSE(server::IsValidUtf8("abc\xe2\x82"));   // truncated
  EXPECT_EQ(server::Utf8Length("ŵŵ😀"), 3u);
}

TEST(Text, StorableTextLeavesTextAloneAndEscapesWhatIsNot) {
  bool escaped = true;
  EXPECT_EQ(text::StorableText("{\"a\": \"Ysbyty ŵ \\n\"}", &escaped), "{\"a\": \"Ysbyty ŵ \\n\"}");
  EXPECT_FALSE(escaped);
  // Bytes outside a character, and NUL, become \xNN; backslashes double,
  // so that no two inputs give the same text.
  EXPECT_EQ(text::StorableText("a\xffŵ\xc3\x28", &escaped), "a\\xffŵ\\xc3(");
  EXPECT_TRUE(escaped);
  EXPECT_EQ(text::StorableText(std::string("a\0b", 3), &escaped), "a\\x00b");
  EXPECT_TRUE(escaped);
  EXPECT_NE(text::StorableText("\\xff\xfe"), text::StorableText("\xff\xfe"));
  EXPECT_EQ(text::StorableText("\\\xfe"), "\\\\\\xfe");
  EXPECT_TRUE(text::IsValidUtf8(text::StorableText("\xed\xa0\x80 \xf4\x90\x80\x80")));
}

TEST(Validate, TextRulesTrimAndNameTheField) {
  FieldErrors e;
  EXPECT_EQ(server::CheckText(e, "x.name", "  hi  ", {1, 5}), "hi");
  EXPECT_TRUE(e.empty());
  server::CheckText(e, "x.name", "toolong", {1, 5});
  server::CheckText(e, "x.note", "line\nbreak", {0, 50});
  server::CheckText(e, "x.body", "line\nbreak", {0, 50, true});
  absl::Status s = e.ToStatus();
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_NE(s.message().find("x.name: must be 1–5 characters, got 7"), absl::string_view::npos);
  EXPECT_NE(s.message().find("x.note"), absl::string_view::npos);
  EXPECT_EQ(s.message().find("x.body"), absl::string_view::npos);
}

TEST(ErrorDetails, TheViolationsTravelWithTheStatusNotInItsText) {
  using Pairs = std::vector<std::pair<std::string, std::string>>;
  auto pairs = [](const absl::Status& s) {
    Pairs out;
    for (const auto& v : server::FieldViolationsOf(s)) out.emplace_back(v.field, v.rule);
    return out;
  };
  FieldErrors e;
  e.Add("session.sites[0].capacity", "must be 1–10000");
  e.Add("session.end_time", "must be after start_time");
  absl::Status s = e.ToStatus();
  EXPECT_EQ(s.message(),
            "session.sites[0].capacity: must be 1–10000; session.end_time: must be after "
            "start_time");
  EXPECT_EQ(pairs(s), (Pairs{{"session.sites[0].capacity", "must be 1–10000"},
                             {"session.end_time", "must be after start_time"}}));
  // A rule that quotes the caller's text is one violation, whatever the text
  // holds: a message read back would have found a field "b" here.
  s = server::FieldError("site", "session has no site named \"a; b: c\"");
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_EQ(s.message(), "site: session has no site named \"a; b: c\"");
  EXPECT_EQ(pairs(s), (Pairs{{"site", "session has no site named \"a; b: c\""}}));
  grpc::Status sent = server::DetailedStatus(s, "connecting.scheduling");
  EXPECT_EQ(testing::DetailsOf(sent).fields, pairs(s));
  // A status made otherwise carries none, and sends none, however its text
  // reads: only the reason its code implies.
  EXPECT_TRUE(pairs(absl::InvalidArgumentError("id: must be a UUID")).empty());
  testing::ErrorDetails plain = testing::DetailsOf(server::DetailedStatus(
      absl::InvalidArgumentError("id: must be a UUID"), "connecting.partners"));
  EXPECT_TRUE(plain.fields.empty());
  EXPECT_EQ(plain.reason, "REQUEST_MALFORMED");
  EXPECT_TRUE(server::FieldErrorsStatus({}).ok());

  // The details a client reads: ErrorInfo when a reason was given, and
  // BadRequest for INVALID_ARGUMENT.
  absl::Status began = server::Refusal("SESSION_BEGAN", "session x began",
                                       {{"sessionId", "x"}, {"date", "2026-12-01"}});
  EXPECT_EQ(server::ReasonOf(began), "SESSION_BEGAN");
  EXPECT_EQ(server::MetadataOf(began),
            (server::ErrorMetadata{{"date", "2026-12-01"}, {"sessionId", "x"}}));
  grpc::Status g = server::DetailedStatus(began, "connecting.scheduling");
  EXPECT_EQ(g.error_message(), "session x began");
  testing::ErrorDetails d = testing::DetailsOf(g);
  EXPECT_EQ(d.reason, "SESSION_BEGAN");
  EXPECT_EQ(d.domain, "connecting.scheduling");
  EXPECT_EQ(d.metadata,
            (std::map<std::string, std::string>{{"sessionId", "x"}, {"date", "2026-12-01"}}));
  EXPECT_TRUE(d.fields.empty());
  // An OK status stays OK, with nothing attached.
  EXPECT_TRUE(server::WithReason(absl::OkStatus(), "X_Y").ok());
  EXPECT_EQ(server::ReasonOf(absl::OkStatus()), "");
  g = server::DetailedStatus(server::CheckUuid("id", "x"), "connecting.partners");
  d = testing::DetailsOf(g);
  EXPECT_EQ(d.reason, "FIELD_INVALID");
  EXPECT_EQ(d.fields, (Pairs{{"id", "must be a UUID in lower-case 8-4-4-4-12 form"}}));
  // Every error has exactly one ErrorInfo (AIP-193): one whose code refused
  // without naming a cause gets the reason its code implies, with what it
  // knows as metadata.
  using Metadata = std::map<std::string, std::string>;
  d = testing::DetailsOf(server::DetailedStatus(NotFound("session", "s1"), "connecting.partners"));
  EXPECT_EQ(d.reason, "RESOURCE_NOT_FOUND");
  EXPECT_EQ(d.metadata, (Metadata{{"resourceType", "session"}, {"resourceName", "s1"}}));
  EXPECT_EQ(d.resource_type, "session");
  EXPECT_EQ(d.resource_name, "s1");
  for (auto [status, reason] : std::vector<std::pair<absl::Status, std::string>>{
           {absl::NotFoundError("gone"), "RESOURCE_NOT_FOUND"},
           {absl::PermissionDeniedError("no"), "NOT_PERMITTED"},
           {absl::UnavailableError("database unavailable"), "DEPENDENCY_UNAVAILABLE"},
           {absl::AbortedError("retry"), "CONCURRENT_CHANGE"},
           {absl::ResourceExhaustedError("full"), "SERVER_AT_CAPACITY"},
           {absl::InternalError("bug"), "INTERNAL_ERROR"},
           {absl::UnknownError("?"), "INTERNAL_ERROR"}}) {
    grpc::Status sent = server::DetailedStatus(status, "connecting.partners");
    EXPECT_EQ(static_cast<int>(sent.error_code()), static_cast<int>(status.code()));
    EXPECT_EQ(sent.error_message(), status.message());
    d = testing::DetailsOf(sent);
    EXPECT_EQ(d.reason, reason) << status;
    EXPECT_EQ(d.domain, "connecting.partners") << status;
  }
  EXPECT_TRUE(server::DetailedStatus(absl::OkStatus(), "connecting.partners").ok());
}

TEST(Validate, UuidsAndPageSizes) {
  EXPECT_TRUE(server::IsUuid("123e4567-e89b-42d3-a456-426614174000"));
  EXPECT_FALSE(server::IsUuid("123E4567-E89B-42D3-A456-426614174000"));
  EXPECT_FALSE(server::IsUuid("123e4567e89b42d3a456426614174000"));
  FieldErrors e;
  EXPECT_EQ(server::PageSize(e, 0), 50);
  EXPECT_EQ(server::PageSize(e, 500), 500);
  EXPECT_TRUE(e.empty());
  server::PageSize(e, 501);
  EXPECT_FALSE(e.empty());
  EXPECT_TRUE(server::IsPlausibleEmail("a.b@nhs.net"));
  EXPECT_FALSE(server::IsPlausibleEmail("a b@nhs.net"));
  EXPECT_FALSE(server::IsPlausibleEmail("ab@nhs"));
}

TEST(PageTokens, RoundTripAndRefuseTamperingOrOtherScopes) {
  server::PageTokens tokens("a-secret-of-sixteen-or-more");
  std::string t = tokens.Encode("List|a", {"Name with | and \x01", "id-1"});
  auto back = tokens.Decode("List|a", t);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)[0], "Name with | and \x01");
  EXPECT_EQ((*back)[1], "id-1");
  EXPECT_TRUE(absl::IsInvalidArgument(tokens.Decode("List|b", t).status()));
  std::string bad = t;
  bad[0] = bad[0] == 'a' ? 'b' : 'a';
  EXPECT_TRUE(absl::IsInvalidArgument(tokens.Decode("List|a", bad).status()));
  server::PageTokens other("another-secret-of-sixteen!!");
  EXPECT_TRUE(absl::IsInvalidArgument(other.Decode("List|a", t).status()));
}

// Authenticator options: the algorithm and key, and what `more` sets.
server::AuthOptions AuthWith(const std::string& algorithm, const std::string& key,
                             const std::function<void(server::AuthOptions&)>& more = nullptr) {
  server::AuthOptions o;
  o.algorithm = algorithm;
  o.key = key;
  if (more) more(o);
  return o;
}

TEST(Auth, VerifiesSignatureExpiryAndClaims) {
  auto auth = server::Authenticator::Create(AuthWith("HS256", testing::kJwtKey));
  ASSERT_TRUE(auth.ok());
  auto p = auth->Authenticate("Bearer " + testing::Token(server::Role::kPartner, "h", "org-1"));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->role, server::Role::kPartner);
  EXPECT_EQ(p->organisation_id, "org-1");
  EXPECT_TRUE(absl::IsUnauthenticated(auth->Authenticate("").status()));
  EXPECT_TRUE(absl::IsUnauthenticated(auth->Authenticate("Basic abc").status()));
  EXPECT_TRUE(absl::IsUnauthenticated(
      auth->Authenticate("Bearer " +
                         testing::Token(server::Role::kAdmin, "x", "", -absl::Minutes(5)))
          .status()));
  EXPECT_FALSE(server::Authenticator::Create(AuthWith("HS256", "short")).ok());
  EXPECT_FALSE(server::Authenticator::Create(AuthWith("none", testing::kJwtKey)).ok());
}

// A token signed with `key` (HS256 secret, or a PEM private key for `alg`),
// with the claims given as JSON.
std::string Signed(jwt_alg_t alg, const std::string& key, const std::string& claims_json) {
  jwt_t* j = nullptr;
  if (jwt_new(&j) != 0) return "";
  std::string claims = claims_json;
  jwt_add_grants_json(j, claims.c_str());
  jwt_add_grant_int(j, "exp", absl::ToUnixSeconds(absl::Now() + absl::Minutes(5)));
  jwt_set_alg(j, alg, reinterpret_cast<const unsigned char*>(key.data()),
              static_cast<int>(key.size()));
  char* s = jwt_encode_str(j);
  jwt_free(j);
  std::string out = s != nullptr ? s : "";
  free(s);
  return out;
}

// A new key pair ("EC" P-256 or "RSA" 2048) as PEM: private, public.
std::pair<std::string, std::string> NewKeyPair(const char* type) {
  EVP_PKEY* key = std::string(type) == "EC" ? EVP_EC_gen("P-256") : EVP_RSA_gen(2048);
  auto pem = [&](bool priv) {
    BIO* bio = BIO_new(BIO_s_mem());
    if (priv) {
      PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
    } else {
      PEM_write_bio_PUBKEY(bio, key);
    }
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    std::string out(data, static_cast<size_t>(n));
    BIO_free(bio);
    return out;
  };
  std::pair<std::string, std::string> out = {pem(true), pem(false)};
  EVP_PKEY_free(key);
  return out;
}

// connecting_auth_key_file_rejected as /metrics reports it.
double KeyFileRejected() {
  return testing::InProcessMetric("connecting_auth_key_file_rejected").value_or(-1);
}

TEST(Auth, KeyFileRotatesWithoutARestart) {
  // The signing secret rotates: both are in the file for a while, then the
  // old one goes, and its tokens are refused, those verified before too.
  const std::string a(40, 'a'), b(40, 'b');
  const std::string file =
      testing::RequiredEnv("CONNECTING_TEST_TMP") + "/keys-" + testing::RandomSuffix();
  ASSERT_TRUE(testing::ReplaceFile(file, a + "\n"));
  auto auth = server::Authenticator::Create(AuthWith("HS256", "", [&](server::AuthOptions& o) {
    o.key_file = file;
    o.key_file_check = absl::Milliseconds(50);
  }));
  ASSERT_TRUE(auth.ok()) << auth.status();
  const std::string claims = R"({"sub": "u", "role": "viewer"})";
  const std::string by_a = "Bearer " + Signed(JWT_ALG_HS256, a, claims);
  const std::string by_b = "Bearer " + Signed(JWT_ALG_HS256, b, claims);
  auto settle = [] { absl::SleepFor(absl::Milliseconds(120)); };
  EXPECT_TRUE(auth->Authenticate(by_a).ok()) << "the line's newline is not part of the secret";
  EXPECT_TRUE(absl::IsUnauthenticated(auth->Authenticate(by_b).status()));

  ASSERT_TRUE(testing::ReplaceFile(file, "  " + a + "  \n\n" + b + "\r\n"));
  settle();
  EXPECT_TRUE(auth->Authenticate(by_b).ok());
  EXPECT_TRUE(auth->Authenticate(by_a).ok());
  EXPECT_EQ(auth->keys().size(), 2u);

  EXPECT_EQ(KeyFileRejected(), 0);
  // A bad edit: the keys in use stay, and it is said.
  ASSERT_TRUE(testing::ReplaceFile(file, "tooshort\n"));
  settle();
  EXPECT_TRUE(auth->Authenticate(by_b).ok());
  EXPECT_EQ(auth->keys().size(), 2u);
  EXPECT_EQ(KeyFileRejected(), 1);

  ASSERT_TRUE(testing::ReplaceFile(file, b + "\n"));
  settle();
  EXPECT_TRUE(auth->Authenticate(by_b).ok());
  EXPECT_EQ(KeyFileRejected(), 0);
  auto old = auth->Authenticate(by_a);
  EXPECT_TRUE(absl::IsUnauthenticated(old.status())) << "a removed key's token still verified";

  std::remove(file.c_str());  // gone for a moment (a volume being updated): as it was
  settle();
  EXPECT_TRUE(auth->Authenticate(by_b).ok());

  auto bad = server::Authenticator::Create(
      AuthWith("HS256", "", [&](server::AuthOptions& o) { o.key_file = file; }));
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status()));
  EXPECT_NE(bad.status().message().find(file), std::string::npos) << bad.status();
}

TEST(Auth, SeveralPublicKeysEachOfItsAlgorithm) {
  // An identity provider's key rollover: two ES256 keys in one PEM file.
  auto [old_private, old_public] = NewKeyPair("EC");
  auto [new_private, new_public] = NewKeyPair("EC");
  auto [rsa_private, rsa_public] = NewKeyPair("RSA");
  auto auth = server::Authenticator::Create(AuthWith("ES256", old_public + new_public));
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_EQ(auth->keys().size(), 2u);
  const std::string claims = R"({"sub": "u", "role": "admin"})";
  EXPECT_TRUE(auth->Authenticate("Bearer " + Signed(JWT_ALG_ES256, old_private, claims)).ok());
  EXPECT_TRUE(auth->Authenticate("Bearer " + Signed(JWT_ALG_ES256, new_private, claims)).ok());
  auto other = NewKeyPair("EC");
  EXPECT_TRUE(absl::IsUnauthenticated(
      auth->Authenticate("Bearer " + Signed(JWT_ALG_ES256, other.first, claims)).status()));
  // An HS256 token "signed" with a public key as its secret: refused.
  EXPECT_TRUE(absl::IsUnauthenticated(
      auth->Authenticate("Bearer " + Signed(JWT_ALG_HS256, new_public, claims)).status()));
  // An RSA key where EC keys are expected, or a damaged one, is named.
  auto mixed = server::Authenticator::Create(AuthWith("ES256", old_public + rsa_public));
  ASSERT_FALSE(mixed.ok());
  EXPECT_NE(mixed.status().message().find("PEM public key 2"), std::string::npos) << mixed.status();
  std::string damaged = old_public;
  damaged[40] = damaged[40] == 'A' ? 'B' : 'A';
  damaged[41] = '*';
  EXPECT_FALSE(server::Authenticator::Create(AuthWith("ES256", damaged)).ok());
  auto rsa = server::Authenticator::Create(AuthWith("RS256", rsa_public));
  ASSERT_TRUE(rsa.ok()) << rsa.status();
  EXPECT_TRUE(rsa->Authenticate("Bearer " + Signed(JWT_ALG_RS256, rsa_private, claims)).ok());
}

TEST(Auth, AudienceMustNameTheService) {
  auto auth = server::Authenticator::Create(
      AuthWith("HS256", testing::kJwtKey,
               [&](server::AuthOptions& o) { o.audience = "connecting-scheduling"; }));
  ASSERT_TRUE(auth.ok());
  auto with = [&](const std::string& aud) {
    std::string claims = R"({"sub": "u", "role": "viewer")";
    if (!aud.empty()) claims += R"(, "aud": )" + aud;
    return auth->Authenticate("Bearer " + Signed(JWT_ALG_HS256, testing::kJwtKey, claims + "}"));
  };
  EXPECT_TRUE(with(R"("connecting-scheduling")").ok());
  EXPECT_TRUE(with(R"(["connecting-partners", "connecting-scheduling"])").ok());
  for (const std::string& aud : {std::string(), std::string(R"("connecting-partners")"),
                                 std::string(R"(["connecting-partners"])"),
                                 std::string(R"(["connecting-scheduling-x"])"), std::string("7")}) {
    auto p = with(aud);
    EXPECT_TRUE(absl::IsUnauthenticated(p.status())) << aud;
    EXPECT_NE(p.status().message().find("audience"), std::string::npos) << p.status();
  }
}

TEST(Periodic, RunsAtStartThenEveryIntervalAndStopsWithoutWaitingItOut) {
  // A sweep every hour runs once at start; stopping the service does not
  // wait the hour out.
  std::atomic<int> hourly{0};
  absl::Notification ran;
  server::PeriodicRunner slow({"hourly", absl::Hours(1), [&] {
                                 ++hourly;
                                 ran.Notify();
                               }});
  slow.Start();
  ASSERT_TRUE(ran.WaitForNotificationWithTimeout(absl::Seconds(10)));
  absl::Time stop = absl::Now();
  slow.Stop();
  EXPECT_LT(absl::Now() - stop, absl::Seconds(10)) << "Stop waited for the interval";
  EXPECT_EQ(hourly.load(), 1);
  EXPECT_EQ(slow.runs(), 1);

  // A short interval repeats, a run at a time, until stopped; none after.
  std::atomic<int> running{0}, overlapped{0}, runs{0};
  server::PeriodicRunner fast({"fast", absl::Milliseconds(1), [&] {
                                 if (++running > 1) ++overlapped;
                                 absl::SleepFor(absl::Milliseconds(2));
                                 --running;
                                 ++runs;
                               }});
  fast.Start();
  for (int i = 0; i < 500 && runs.load() < 5; ++i) absl::SleepFor(absl::Milliseconds(10));
  fast.Stop();
  const int at_stop = runs.load();
  EXPECT_GE(at_stop, 5);
  EXPECT_EQ(overlapped.load(), 0);
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(runs.load(), at_stop) << "ran after Stop";
  EXPECT_EQ(fast.runs(), at_stop);
}

TEST(Throttle, LetsTheFirstLineThroughThenOneAnIntervalCountingTheRest) {
  log::Throttle throttle(absl::Milliseconds(200));
  EXPECT_EQ(throttle.Admit(), std::optional<int64_t>(0));
  EXPECT_EQ(throttle.Admit(), std::nullopt);
  EXPECT_EQ(throttle.Admit(), std::nullopt);
  absl::SleepFor(absl::Milliseconds(250));
  EXPECT_EQ(throttle.Admit(), std::optional<int64_t>(2)) << "the two held back are counted";
  EXPECT_EQ(throttle.Admit(), std::nullopt);
}

// Two tests of one run, or one test's gRPC and metrics ports, never get the
// same port: each would fail to bind it in turn. 500 picks from the ~22,700
// ports below the ephemeral range would repeat one (about five times) were
// the ports not claimed.
TEST(Harness, FreePortNeverHandsOutAPortTwiceInARun) {
  std::set<int> seen;
  for (int i = 0; i < 500; ++i) {
    const int port = testing::FreePort();
    EXPECT_TRUE(seen.insert(port).second) << "port " << port << " handed out twice";
  }
}

TEST(Executor, RefusesWorkBeyondItsQueue) {
  server::Executor ex(1, 2);
  absl::Notification release;
  std::atomic<int> ran{0};
  ASSERT_TRUE(ex.TrySubmit([&] {
    release.WaitForNotification();
    ++ran;
  }));
  absl::SleepFor(absl::Milliseconds(50));  // the worker takes the first task
  EXPECT_TRUE(ex.TrySubmit([&] { ++ran; }));
  EXPECT_TRUE(ex.TrySubmit([&] { ++ran; }));
  EXPECT_FALSE(ex.TrySubmit([&] { ++ran; }));
  release.Notify();
  ex.Shutdown();
  EXPECT_EQ(ran.load(), 3);
  EXPECT_FALSE(ex.TrySubmit([] {}));
}

// For the lost-connection tests, over a table t (id int, n int) holding row
// 1 and a table `followed`: through `admin`, row 1 locked until it commits;
// through `watcher`, t's n and how many rows `followed` holds; a write
// adding 1 to n that counts its attempts.
void HoldTheRow(db::Conn& admin) {
  ASSERT_TRUE(admin.ExecScript("BEGIN; SELECT * FROM t WHERE id = 1 FOR UPDATE").ok());
}
std::pair<long, long> NAndFollowed(db::Conn& watcher) {
  auto r = watcher.Exec("SELECT (SELECT n FROM t), (SELECT count(*) FROM followed)");
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? std::make_pair(r->Int(0, 0), r->Int(0, 1)) : std::make_pair(-1L, -1L);
}
// Through `watcher`: the pid of the one connection named `application`
// that waits for a row lock, once one does (and not one of `not_these`),
// or "" after 10 s, with the database's connections in `*seen`.
std::string PidWaitingForALock(db::Conn& watcher, const std::string& application,
                               const std::set<std::string>& not_these, std::string* seen) {
  std::string pid;
  if (testing::WaitUntil(
          [&] {
            auto r = watcher.Exec(
                "SELECT pid::text FROM pg_stat_activity WHERE application_name = $1 "
                "AND wait_event_type = 'Lock'",
                {application});
            if (r.ok() && r->rows() == 1 && not_these.count(r->String(0, 0)) == 0) {
              pid = r->String(0, 0);
            }
            return !pid.empty();
          },
          absl::Seconds(10))) {
    return pid;
  }
  auto r = watcher.Exec(
      "SELECT string_agg(concat_ws(' ', pid, application_name, state, wait_event_type, "
      "left(query, 40)), '; ') FROM pg_stat_activity WHERE datname = current_database()");
  *seen = r.ok() ? r->String(0, 0) : r.status().ToString();
  return "";
}
std::function<absl::Status(db::Conn&)> Increment(std::atomic<int>& attempts) {
  return [&attempts](db::Conn& c) {
    ++attempts;
    return c.Exec("UPDATE t SET n = n + 1 WHERE id = 1").status();
  };
}

class Database : public ::testing::Test {
 protected:
  void SetUp() override {
    url_ = testing::NewDatabase();
    pool_ = std::make_unique<db::Pool>(url_, 4, "libs-test");
  }
  // Runs `sql` (several statements) in one transaction: a test's tables.
  void Script(const std::string& sql) {
    absl::Status s = db::Transact(*pool_, [&sql](db::Conn& c) { return c.ExecScript(sql); });
    ASSERT_TRUE(s.ok()) << s;
  }
  // Through `admin`: the test's database set to take no writes (read by
  // each connection as it is made), or to take them again.
  static void SetReadOnly(db::Conn& admin, bool on) {
    ASSERT_TRUE(admin
                    .ExecScript(absl::StrCat("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I ",
                                             on ? "SET default_transaction_read_only = on"
                                                : "RESET default_transaction_read_only",
                                             "', current_database()); END $$"))
                    .ok());
  }
  // Through `admin`: every other connection to the test's database ended,
  // as a failover ends them, and gone, so that the pool's check finds them
  // closed.
  static void EndOtherConnections(db::Conn& admin) {
    ASSERT_TRUE(admin
                    .ExecScript("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                                "datname = current_database() AND pid <> pg_backend_pid()")
                    .ok());
    ASSERT_TRUE(testing::WaitUntil(
        [&] {
          auto r = admin.Exec(
              "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
              "pid <> pg_backend_pid()");
          return r.ok() && r->Int(0, 0) == 0;
        },
        absl::Seconds(5)));
  }
  std::string url_;
  std::unique_ptr<db::Pool> pool_;
};

TEST_F(Database, ErrorsMapToSpecificStatuses) {
  absl::Status s = db::Transact(*pool_, [](db::Conn& c) {
    return c.ExecScript("CREATE TABLE t (id int PRIMARY KEY, v int CHECK (v >= 0))");
  });
  ASSERT_TRUE(s.ok()) << s;
  s = db::Transact(*pool_, [](db::Conn& c) {
    auto r = c.Exec("INSERT INTO t VALUES ($1, 1), ($1, 2)", {int32_t{1}});
    return r.status();
  });
  EXPECT_TRUE(absl::IsAlreadyExists(s)) << s;
  EXPECT_EQ(db::ConstraintOf(s), "t_pkey");
  s = db::Transact(*pool_,
                   [](db::Conn& c) { return c.Exec("INSERT INTO t VALUES (2, -1)").status(); });
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  // A lock not had within lock_timeout: ABORTED, recognisable, not retried.
  auto holder = db::Conn::Open(url_, "test");
  ASSERT_TRUE(holder.ok());
  ASSERT_TRUE((*holder)->ExecScript("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").ok());
  int attempts = 0;
  s = db::Transact(*pool_, [&attempts](db::Conn& c) {
    ++attempts;
    if (absl::Status l = c.ExecScript("SET LOCAL lock_timeout = '50ms'"); !l.ok()) return l;
    return c.Exec("SELECT count(*) FROM t").status();
  });
  EXPECT_TRUE(absl::IsAborted(s)) << s;
  EXPECT_TRUE(db::IsLockNotAvailable(s)) << s;
  EXPECT_FALSE(db::IsRetryable(s));
  EXPECT_EQ(attempts, 1);
  ASSERT_TRUE((*holder)->ExecScript("COMMIT").ok());
  // The server's own trouble (out of disk or memory, an I/O error) is the
  // database being unavailable, to retry later, not a bug (INTERNAL).
  for (const char* code : {"disk_full", "out_of_memory", "io_error", "insufficient_resources"}) {
    s = db::Transact(*pool_, [code](db::Conn& c) {
      return c.ExecScript(
          absl::StrCat("DO $$ BEGIN RAISE EXCEPTION 'the server says so' USING "
                       "ERRCODE = '",
                       code, "'; END $$"));
    });
    EXPECT_TRUE(absl::IsUnavailable(s)) << code << ": " << s;
    EXPECT_TRUE(db::SaidByDatabase(s)) << code;
  }
  // Nothing of the failed transactions was kept.
  s = db::WithConnection(*pool_, absl::InfiniteFuture(), [](db::Conn& c) {
    auto r = c.Exec("SELECT count(*) FROM t");
    if (!r.ok()) return r.status();
    EXPECT_EQ(r->Int(0, 0), 0);
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok());
}

// connecting_database_refusals_total as /metrics reports it (0 if not yet registered).
double DatabaseRefusals() {
  return testing::InProcessMetric("connecting_database_refusals_total").value_or(0);
}

TEST_F(Database, ClientsHearPlainWordsNotTheDatabases) {
  // The database's messages name hosts, users, tables, constraints and the
  // values stored: they stay in the server's log. A client gets the code,
  // the reason and plain words (with the traceparent to quote when a rule
  // of the schema refused what the service's checks let through: a bug).
  Script("CREATE TABLE people (email text UNIQUE, age int CHECK (age >= 0))");
  auto insert = [&](const std::string& sql) {
    return db::Transact(*pool_, [&sql](db::Conn& c) { return c.Exec(sql).status(); });
  };
  ASSERT_TRUE(insert("INSERT INTO people VALUES ('someone@example.org', 30)").ok());
  const std::string trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  using Metadata = std::map<std::string, std::string>;
  struct Case {
    absl::Status status;
    std::vector<std::string> database_words;  // in the status, never in what is sent
    grpc::StatusCode code;
    std::string message, reason;
    Metadata metadata;
  };
  const std::string see = "; the server log has the details under traceparent " + trace;
  db::Pool nowhere("postgresql://nobody@127.0.0.1:1/secret_db?connect_timeout=1", 1, "t");
  absl::Status unreachable = db::Transact(nowhere, [](db::Conn&) { return absl::OkStatus(); });
  std::vector<Case> cases{
      {insert("INSERT INTO people VALUES ('someone@example.org', 40)"),
       {"people_email_key", "duplicate key"},
       grpc::StatusCode::ALREADY_EXISTS,
       "the change conflicts with data already stored" + see,
       "RESOURCE_EXISTS",
       {{"traceparent", trace}}},
      {insert("INSERT INTO people VALUES ('other@example.org', -1)"),
       {"people_age_check", "violates"},
       grpc::StatusCode::FAILED_PRECONDITION,
       "a rule of the stored data refused the change" + see,
       "PRECONDITION_FAILED",
       {{"traceparent", trace}}},
      {unreachable,
       {"127.0.0.1", "port 1"},
       grpc::StatusCode::UNAVAILABLE,
       "the service's database is unavailable; retry with backoff",
       "DEPENDENCY_UNAVAILABLE",
       {}},
      {db::LostAtCommit(unreachable),
       {"127.0.0.1", "COMMIT"},
       grpc::StatusCode::UNAVAILABLE,
       "the connection to the service's database was lost during the commit: the change may or "
       "may not have been made; read it, or ask again with the same request_id",
       "DEPENDENCY_UNAVAILABLE",
       {{"commitOutcome", "UNKNOWN"}}},
  };
  // The row a constraint refused is personal data (an e-mail address, the
  // values of a row): it is not even logged; the constraint's name is.
  EXPECT_FALSE(absl::StrContains(cases[0].status.message(), "someone@example.org"))
      << cases[0].status;
  EXPECT_FALSE(absl::StrContains(cases[1].status.message(), "other@example.org"))
      << cases[1].status;
  const double refusals_before = DatabaseRefusals();
  for (const Case& c : cases) {
    ASSERT_FALSE(c.status.ok());
    EXPECT_TRUE(db::SaidByDatabase(c.status)) << c.status;
    grpc::Status sent = server::ToGrpcStatus(c.status, "Test/Method", trace, "connecting.test");
    EXPECT_EQ(sent.error_code(), c.code) << c.status;
    EXPECT_EQ(sent.error_message(), c.message) << c.status;
    for (const std::string& words : c.database_words) {
      EXPECT_TRUE(absl::StrContains(c.status.message(), words)) << c.status;
      EXPECT_FALSE(absl::StrContains(sent.error_message(), words)) << sent.error_message();
      EXPECT_FALSE(absl::StrContains(sent.error_details(), words)) << words;
    }
    testing::ErrorDetails d = testing::DetailsOf(sent);
    EXPECT_EQ(d.error_infos, 1) << c.status;
    EXPECT_EQ(d.reason, c.reason) << c.status;
    EXPECT_EQ(d.metadata, c.metadata) << c.status;
  }
  // The two a rule of the schema refused are counted, for the alert.
  EXPECT_EQ(DatabaseRefusals() - refusals_before, 2);
  // The service's own words pass as they are; so does a cause it named.
  absl::Status own = absl::UnavailableError("the server is shutting down");
  EXPECT_FALSE(db::SaidByDatabase(own));
  EXPECT_EQ(server::ToGrpcStatus(own, "Test/Method", trace, "d").error_message(), own.message());
  absl::Status named = server::WithReason(absl::AlreadyExistsError("email: taken"), "EMAIL_TAKEN");
  EXPECT_EQ(server::ToGrpcStatus(named, "Test/Method", trace, "d").error_message(), "email: taken");
}

TEST_F(Database, WhatTheDatabaseSaysBesideAResultIsAJsonLogLine) {
  // A WARNING or NOTICE (and the FATAL a server sends as it ends a
  // connection) arrives beside a statement's result: libpq's default writes
  // it raw to stderr, a line no log collector parses. It is a JSON line on
  // stdout instead, warnings at warn, notices at debug only, with the
  // severity, code and message and never the DETAIL (which may quote
  // stored values).
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  absl::Status s = db::Transact(*pool_, [](db::Conn& c) {
    return c.ExecScript(
        "DO $$ BEGIN "
        "RAISE WARNING 'careful with %', 'the seats' USING DETAIL = 'someone@example.org'; "
        "RAISE NOTICE 'just so you know'; END $$");
  });
  const std::string out = ::testing::internal::GetCapturedStdout();
  const std::string err = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(err, "");
  EXPECT_TRUE(absl::StrContains(out, "\"level\":\"warn\"")) << out;
  EXPECT_TRUE(absl::StrContains(out,
                                "\"msg\":\"the database says\",\"severity\":\"WARNING\","
                                "\"sqlstate\":\"01000\",\"message\":\"careful with the seats\""))
      << out;
  EXPECT_FALSE(absl::StrContains(out, "someone@example.org")) << out;
  EXPECT_FALSE(absl::StrContains(out, "just so you know")) << "a notice is for debug only: " << out;
}

TEST_F(Database, SerializationFailuresAreRetriedUntilBothCommit) {
  Script("CREATE TABLE counter (n int); INSERT INTO counter VALUES (0)");
  db::TxOptions opts;
  opts.isolation = db::Isolation::kSerializable;
  opts.max_attempts = 50;
  std::vector<std::future<absl::Status>> work;
  for (int i = 0; i < 4; ++i) {
    work.push_back(std::async(std::launch::async, [&] {
      absl::Status last;
      for (int k = 0; k < 10 && last.ok(); ++k) {
        last = db::Transact(*pool_, opts, [](db::Conn& c) -> absl::Status {
          auto r = c.Exec("SELECT n FROM counter");
          if (!r.ok()) return r.status();
          return c.Exec("UPDATE counter SET n = $1", {r->Int(0, 0) + 1}).status();
        });
      }
      return last;
    }));
  }
  for (auto& w : work) EXPECT_TRUE(w.get().ok());
  ASSERT_TRUE(db::WithConnection(*pool_, absl::InfiniteFuture(), [](db::Conn& c) {
                auto r = c.Exec("SELECT n FROM counter");
                EXPECT_EQ(r->Int(0, 0), 40);  // no lost update
                return r.status();
              }).ok());
}

TEST_F(Database, LogicalAbortIsNotRetried) {
  int calls = 0;
  absl::Status s = db::Transact(*pool_, [&](db::Conn&) {
    ++calls;
    return absl::AbortedError("stale etag");
  });
  EXPECT_TRUE(absl::IsAborted(s));
  EXPECT_EQ(calls, 1);
}

TEST_F(Database, PoolAcquireTimesOutWhenAllConnectionsAreBusy) {
  db::Pool small(url_, 1, "libs-test");
  auto first = small.Acquire(absl::InfiniteFuture());
  ASSERT_TRUE(first.ok());
  auto second = small.Acquire(absl::Now() + absl::Milliseconds(100));
  EXPECT_TRUE(absl::IsResourceExhausted(second.status()));
}

TEST_F(Database, ARenewedPoolHandsOutOnlyConnectionsMadeAfterIt) {
  // After a failover a connection keeps the server it was made to (or its
  // read-only setting): once renewed, the pool closes the idle ones at once
  // and the leased ones when their leases end, and its size still holds.
  db::Pool pool(url_, 2, "libs-test-renew");
  auto pid = [](db::Pool::Lease& l) {
    auto r = l->Exec("SELECT pg_backend_pid()::text");
    return r.ok() ? r->String(0, 0) : std::string("?");
  };
  std::set<std::string> before;
  {
    auto idle = pool.Acquire(absl::InfiniteFuture());
    ASSERT_TRUE(idle.ok());
    before.insert(pid(*idle));
  }
  std::optional<db::Pool::Lease> leased, other;
  {
    auto l = pool.Acquire(absl::InfiniteFuture());
    ASSERT_TRUE(l.ok());
    leased.emplace(*std::move(l));
    auto o = pool.Acquire(absl::InfiniteFuture());
    ASSERT_TRUE(o.ok());
    other.emplace(*std::move(o));
  }
  before.insert(pid(*leased));
  ASSERT_EQ(before.size(), 1u) << "the idle connection was not reused";
  before.insert(pid(*other));
  other.reset();  // back to idle
  pool.Renew();
  leased.reset();  // its lease ends
  for (int i = 0; i < 2; ++i) {
    auto a = pool.Acquire(absl::Now() + absl::Seconds(5));
    ASSERT_TRUE(a.ok()) << a.status();
    auto b = pool.Acquire(absl::Now() + absl::Seconds(5));
    ASSERT_TRUE(b.ok()) << b.status() << ": the closed connections still count against the size";
    EXPECT_EQ(before.count(pid(*a)), 0u) << "a connection made before Renew";
    EXPECT_EQ(before.count(pid(*b)), 0u) << "a connection made before Renew";
  }
}

TEST_F(Database, RenewEndingLeasedConnectionsEndsTheirWaitsAtOnce) {
  // For a server known to be gone: a statement waiting on a leased
  // connection fails at once as a lost connection, instead of waiting for
  // an answer until its deadline; every leased connection is ended, and
  // the pool opens new ones once their leases end.
  db::Pool pool(url_, 2, "libs-test-renew-end");
  std::optional<db::Pool::Lease> waiting, other;
  {
    auto w = pool.Acquire(absl::Now() + absl::Seconds(60));
    ASSERT_TRUE(w.ok()) << w.status();
    waiting.emplace(*std::move(w));
    auto o = pool.Acquire(absl::Now() + absl::Seconds(60));
    ASSERT_TRUE(o.ok()) << o.status();
    other.emplace(*std::move(o));
  }
  std::future<absl::Status> slept = std::async(
      std::launch::async, [&] { return (*waiting)->Exec("SELECT pg_sleep(50)").status(); });
  // Until the statement runs at the server.
  ASSERT_TRUE(testing::WaitUntil(
      [&] {
        auto r = (*other)->Exec(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(50)' "
            "AND state = 'active'");
        return r.ok() && r->String(0, 0) == "1";
      },
      absl::Seconds(10)));
  EXPECT_EQ(pool.Renew(/*end_leased=*/true), 2);
  ASSERT_EQ(slept.wait_for(std::chrono::seconds(10)), std::future_status::ready)
      << "the statement still waits";
  absl::Status s = slept.get();
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_FALSE((*waiting)->healthy());
  EXPECT_FALSE((*other)->Exec("SELECT 1").ok()) << "every leased connection is ended";
  waiting.reset();
  other.reset();
  for (int i = 0; i < 2; ++i) {
    auto a = pool.Acquire(absl::Now() + absl::Seconds(5));
    ASSERT_TRUE(a.ok()) << a.status() << ": the ended connections still count against the size";
    EXPECT_TRUE((*a)->Exec("SELECT 1").ok());
  }
}

TEST_F(Database, RenewKeepingTheNewServerLeavesItsConnectionsAlone) {
  // After a restart or a failover the health monitor renews the pool,
  // ending the connections to the server gone; those the new server took
  // meanwhile (the calls of the half second before it looked) stay, idle
  // or leased, or a transaction on one would be ended mid-way, at its
  // COMMIT answering "outcome unknown". Every pool connection knows its
  // server: when its postmaster started.
  db::Pool pool(url_, 3, "libs-test-renew-keep");
  auto pid = [](db::Pool::Lease& l) {
    auto r = l->Exec("SELECT pg_backend_pid()::text");
    return r.ok() ? r->String(0, 0) : std::string("?");
  };
  std::optional<db::Pool::Lease> in_use;
  std::string idle_pid, server;
  {
    auto idle = pool.Acquire(absl::InfiniteFuture());
    ASSERT_TRUE(idle.ok()) << idle.status();
    auto used = pool.Acquire(absl::InfiniteFuture());
    ASSERT_TRUE(used.ok()) << used.status();
    in_use.emplace(*std::move(used));
    idle_pid = pid(*idle);
    server = (*idle)->server();
  }
  auto start = (*in_use)->Exec("SELECT pg_postmaster_start_time()::text");
  ASSERT_TRUE(start.ok()) << start.status();
  EXPECT_EQ((*in_use)->server(), start->String(0, 0));
  EXPECT_EQ(server, start->String(0, 0));
  ASSERT_TRUE((*in_use)->Exec("BEGIN").ok());

  EXPECT_EQ(pool.Renew(/*end_leased=*/true, server), 0) << "a connection to the server kept ended";
  EXPECT_TRUE((*in_use)->Exec("SELECT 1").ok()) << "its transaction was ended";
  ASSERT_TRUE((*in_use)->Exec("COMMIT").ok());
  const std::string in_use_pid = pid(*in_use);
  in_use.reset();  // back to idle, not closed: the renewal kept its server
  {
    auto a = pool.Acquire(absl::Now() + absl::Seconds(5));
    auto b = pool.Acquire(absl::Now() + absl::Seconds(5));
    ASSERT_TRUE(a.ok() && b.ok());
    std::set<std::string> pids{pid(*a), pid(*b)};
    EXPECT_EQ(pids, (std::set<std::string>{idle_pid, in_use_pid}))
        << "kept connections were closed";
  }

  // A renewal for another server ends them.
  auto leased = pool.Acquire(absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(leased.ok());
  EXPECT_EQ(pool.Renew(/*end_leased=*/true, "another server"), 1);
  EXPECT_FALSE((*leased)->Exec("SELECT 1").ok()) << "a connection to the server gone went on";
}

TEST_F(Database, UnreachableDatabaseIsUnavailable) {
  db::Pool nowhere("postgresql://postgres@127.0.0.1:1/none?connect_timeout=1", 1, "t");
  absl::Status s = db::Transact(nowhere, [](db::Conn&) { return absl::OkStatus(); });
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
}

TEST_F(Database, AConnectionTheServerEndedWhileIdleIsReplacedNotHandedOut) {
  // A restart, a failover or an operator's pg_terminate_backend ends the
  // pool's idle connections. The next caller gets a fresh connection, not
  // an UNAVAILABLE at its first statement (a read has no retry, and a
  // transaction gets none for it: max_attempts 1).
  db::Pool pool(url_, 2, "idle-ended");
  auto pid_of_a_connection = [&] {
    std::string pid;
    EXPECT_TRUE(db::WithConnection(pool, absl::InfiniteFuture(), [&](db::Conn& c) {
                  auto r = c.Exec("SELECT pg_backend_pid()::text");
                  if (r.ok()) pid = r->String(0, 0);
                  return r.status();
                }).ok());
    return pid;
  };
  for (int round = 0; round < 2; ++round) {
    const std::string pid = pid_of_a_connection();
    ASSERT_FALSE(pid.empty());
    ASSERT_TRUE(db::WithConnection(*pool_, absl::InfiniteFuture(), [&](db::Conn& c) {
                  return c.Exec("SELECT pg_terminate_backend(" + pid + ")").status();
                }).ok());
    ASSERT_TRUE(testing::WaitUntil(
        [&] {
          bool gone = false;
          (void)db::WithConnection(*pool_, absl::InfiniteFuture(), [&](db::Conn& c) {
            auto r = c.Exec("SELECT count(*) FROM pg_stat_activity WHERE pid = " + pid);
            gone = r.ok() && r->Int(0, 0) == 0;
            return r.status();
          });
          return gone;
        },
        absl::Seconds(5)));
    if (round == 0) {
      std::string other;
      absl::Status s = db::WithConnection(pool, absl::InfiniteFuture(), [&](db::Conn& c) {
        auto r = c.Exec("SELECT pg_backend_pid()::text");
        if (r.ok()) other = r->String(0, 0);
        return r.status();
      });
      EXPECT_TRUE(s.ok()) << "a read on the ended connection: " << s;
      EXPECT_NE(other, pid);
    } else {
      db::TxOptions once;
      once.max_attempts = 1;
      absl::Status s =
          db::Transact(pool, once, [](db::Conn& c) { return c.Exec("SELECT 1").status(); });
      EXPECT_TRUE(s.ok()) << "a transaction on the ended connection: " << s;
    }
  }
}

TEST_F(Database, AWriteOnAReadOnlyServerIsUnavailableAndItsConnectionIsDropped) {
  // After a failover a connection can land on a standby (the old primary,
  // or the first host of a URL naming several), which refuses every write:
  // here, a database set read-only and its connections ended, as a
  // failover ends them. A write answers UNAVAILABLE (not INTERNAL, which
  // says "bug"), and its connection is dropped rather than returned to the
  // pool, so that once writes are taken again the next one succeeds on a
  // fresh connection instead of failing on the old one for its lifetime.
  Script("CREATE TABLE t (id int PRIMARY KEY)");
  auto admin = db::Conn::Open(url_, "admin");  // opened while writes are taken
  ASSERT_TRUE(admin.ok());
  SetReadOnly(**admin, true);
  EndOtherConnections(**admin);
  absl::Status s =
      db::Transact(*pool_, [](db::Conn& c) { return c.Exec("INSERT INTO t VALUES (1)").status(); });
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "accepts no writes")) << s;
  EXPECT_TRUE(db::SaidByDatabase(s));
  // Through a pipeline (group commit's way) too.
  bool healthy_after = true;
  s = db::WithConnection(*pool_, absl::InfiniteFuture(), [&](db::Conn& c) {
    auto results = c.Pipeline({{"INSERT INTO t VALUES (2)", {}}});
    healthy_after = c.healthy();
    return results[0].status();
  });
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_FALSE(healthy_after) << "a connection to a read-only server went back to the pool";
  SetReadOnly(**admin, false);
  s = db::Transact(*pool_, [](db::Conn& c) { return c.Exec("INSERT INTO t VALUES (3)").status(); });
  EXPECT_TRUE(s.ok()) << "writes are taken again, but not on the pool's connections: " << s;
}

TEST_F(Database, AWriteOnAConnectionMadeWhileTheDatabaseTookNoWritesIsTriedOnANewOne) {
  // The database takes writes again (a failover done, a read-only setting
  // lifted) and the pool still holds connections made before, each with
  // the read-only setting it read at connect. Until the health monitor
  // renews the pool (every half second), each would refuse one write; the
  // write is tried again at once on a new connection instead, and succeeds.
  Script("CREATE TABLE t (id int PRIMARY KEY)");
  auto admin = db::Conn::Open(url_, "admin");  // opened while writes are taken
  ASSERT_TRUE(admin.ok());
  absl::Cleanup writable = [&] { SetReadOnly(**admin, false); };
  // The pool full of connections made while the database took no writes,
  // each read-only; then writes are taken again, their connections left.
  auto made_read_only = [&] {
    SetReadOnly(**admin, true);
    EndOtherConnections(**admin);
    std::vector<db::Pool::Lease> leases;
    for (int i = 0; i < 4; ++i) {
      auto l = pool_->Acquire(absl::Now() + absl::Seconds(10));
      ASSERT_TRUE(l.ok()) << l.status();
      auto r = (*l)->Exec("SELECT current_setting('transaction_read_only')");
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_EQ(r->String(0, 0), "on");
      leases.push_back(*std::move(l));
    }
    leases.clear();
    SetReadOnly(**admin, false);
  };
  made_read_only();
  for (int i = 0; i < 4; ++i) {
    absl::Status s = db::Transact(*pool_, [&](db::Conn& c) {
      return c.Exec("INSERT INTO t VALUES ($1)", {int32_t{i}}).status();
    });
    EXPECT_TRUE(s.ok()) << "write " << i << ": " << s;
  }
  // Group commit's batches (bookings' way) likewise.
  made_read_only();
  server::Executor threads(1, 16);
  db::GroupCommitter group(*pool_, "read-only-test", [&threads](std::function<void()> task) {
    return threads.TrySubmit(std::move(task));
  });
  for (int i = 4; i < 8; ++i) {
    db::GroupCommitter::Work w;
    w.first = {"INSERT INTO t VALUES ($1) RETURNING id", {int32_t{i}}};
    w.then = [](const db::Result&, int) { return std::vector<db::Statement>{}; };
    std::promise<absl::Status> outcome;
    group.Submit("k", absl::Now() + absl::Seconds(10), std::move(w),
                 [&outcome](absl::Status s) { outcome.set_value(std::move(s)); });
    absl::Status s = outcome.get_future().get();
    EXPECT_TRUE(s.ok()) << "batch " << i << ": " << s;
  }
  auto n = (*admin)->Exec("SELECT count(*) FROM t");
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n->Int(0, 0), 8);
}

TEST_F(Database, AWriteWhoseConnectionWasLostBeforeItsCommitRunsOnceMoreOnANewOne) {
  // A failover, a restart or an operator's pg_terminate_backend ends a
  // connection while its transaction runs, before its COMMIT: the server
  // rolled it back. The write runs once more, at once, on a new connection
  // (after a failover, to the server the address leads to now) and takes
  // effect once, rather than answering UNAVAILABLE. Only once: a second
  // loss is answered.
  Script(
      "CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL);"
      "INSERT INTO t VALUES (1, 0);"
      "CREATE TABLE followed (n int NOT NULL)");
  auto admin = db::Conn::Open(url_, "admin");
  ASSERT_TRUE(admin.ok()) << admin.status();
  // Another connection watches: within `admin`'s transaction
  // pg_stat_activity would stay as its first look saw it.
  auto watcher = db::Conn::Open(url_, "watcher");
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  // Ends the pool's connection that waits for the row `admin` holds, once
  // one does (and not `ended` before).
  std::set<std::string> ended;
  auto end_the_waiting_one = [&] {
    std::string seen;
    std::string pid = PidWaitingForALock(**watcher, "libs-test", ended, &seen);
    EXPECT_FALSE(pid.empty()) << "no connection of the pool waits for the row: " << seen;
    if (pid.empty()) return;
    ended.insert(pid);
    EXPECT_TRUE((*watcher)->Exec("SELECT pg_terminate_backend($1::int)", {pid}).ok());
  };
  auto n_and_followed = [&] { return NAndFollowed(**watcher); };
  auto hold_the_row = [&] { HoldTheRow(**admin); };

  // Transact: lost once, then run on a new connection.
  std::atomic<int> attempts{0};
  auto increment = Increment(attempts);
  hold_the_row();
  auto once = std::async(std::launch::async, [&] { return db::Transact(*pool_, increment); });
  end_the_waiting_one();
  end_the_waiting_one();  // the same write, waiting again on a new connection...
  ASSERT_TRUE((*admin)->ExecScript("COMMIT").ok());
  absl::Status s = once.get();
  // ...which was its last chance: a second loss is answered.
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_EQ(attempts.load(), 2);
  EXPECT_EQ(n_and_followed().first, 0) << "a lost transaction left a change";

  attempts = 0;
  hold_the_row();
  auto twice = std::async(std::launch::async, [&] { return db::Transact(*pool_, increment); });
  end_the_waiting_one();
  EXPECT_TRUE(testing::WaitUntil([&] { return attempts.load() == 2; }, absl::Seconds(10)));
  ASSERT_TRUE((*admin)->ExecScript("COMMIT").ok());
  s = twice.get();
  EXPECT_TRUE(s.ok()) << "a write lost before its COMMIT: " << s;
  EXPECT_EQ(attempts.load(), 2);
  EXPECT_EQ(n_and_followed().first, 1) << "the write took effect once";

  // Group commit (bookings' way): the batch lost in its first round trip runs
  // again, its second round trip with it.
  server::Executor threads(1, 16);
  db::GroupCommitter group(*pool_, "lost-test", [&threads](std::function<void()> task) {
    return threads.TrySubmit(std::move(task));
  });
  // An increment whose follow-up commits with it; its outcome.
  auto submit_increment = [&group] {
    auto outcome = std::make_shared<std::promise<absl::Status>>();
    db::GroupCommitter::Work w;
    w.first = {"UPDATE t SET n = n + 1 WHERE id = 1 RETURNING n", {}};
    w.then = [](const db::Result& r, int) {
      return std::vector<db::Statement>{{"INSERT INTO followed VALUES ($1)", {r.String(0, 0)}}};
    };
    group.Submit("k", absl::Now() + absl::Seconds(20), std::move(w),
                 [outcome](absl::Status st) { outcome->set_value(std::move(st)); });
    return outcome->get_future();
  };
  hold_the_row();
  std::future<absl::Status> lost_twice = submit_increment();
  end_the_waiting_one();
  end_the_waiting_one();  // waiting again, on a new connection
  ASSERT_TRUE((*admin)->ExecScript("COMMIT").ok());
  s = lost_twice.get();
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_EQ(n_and_followed(), std::make_pair(1L, 0L)) << "a lost batch left a change";

  hold_the_row();
  std::future<absl::Status> lost_once = submit_increment();
  end_the_waiting_one();
  ASSERT_TRUE(testing::WaitUntil(
      [&] {
        auto r = (*watcher)->Exec(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'libs-test' "
            "AND wait_event_type = 'Lock'");
        return r.ok() && r->Int(0, 0) == 1;
      },
      absl::Seconds(10)))
      << "the batch did not wait again on a new connection";
  ASSERT_TRUE((*admin)->ExecScript("COMMIT").ok());
  s = lost_once.get();
  EXPECT_TRUE(s.ok()) << "a batch lost before its COMMIT: " << s;
  EXPECT_EQ(n_and_followed(), std::make_pair(2L, 1L)) << "the batch took effect once, whole";
}

TEST_F(Database, AWriteLostWhileItsServerIsAwayWaitsForItWithinItsDeadline) {
  // A restart, or a failover whose address has not moved yet: a write's
  // connection is lost before its COMMIT, and for a while the address
  // refuses connections. The write waits for the server (AcquireAfterLoss)
  // and runs once when it answers, for Transact and for group commit,
  // rather than answering UNAVAILABLE at the first refusal; a server that
  // stays away is answered UNAVAILABLE before the caller's deadline.
  Script(
      "CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL);"
      "INSERT INTO t VALUES (1, 0);"
      "CREATE TABLE followed (n int NOT NULL)");
  testing::StallingProxy proxy(testing::PortOf(url_));
  db::Pool pool(testing::WithPort(url_, proxy.port()), 2, "away-test");
  const int nobody = testing::FreePort();  // refuses connections
  auto admin = db::Conn::Open(url_, "admin");
  ASSERT_TRUE(admin.ok()) << admin.status();
  auto watcher = db::Conn::Open(url_, "watcher");
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  auto n_and_followed = [&] { return NAndFollowed(**watcher); };
  // Once the pool's connection waits for the row `admin` holds: the address
  // refuses from now on, and that connection is ended.
  auto go_away = [&] {
    std::string seen;
    std::string pid = PidWaitingForALock(**watcher, "away-test", {}, &seen);
    ASSERT_FALSE(pid.empty()) << "no connection of the pool waits for the row: " << seen;
    proxy.Retarget(nobody);
    ASSERT_TRUE((*watcher)->Exec("SELECT pg_terminate_backend($1::int)", {pid}).ok());
  };
  auto come_back = [&] {
    absl::SleepFor(absl::Milliseconds(700));  // refused meanwhile, more than once
    proxy.Retarget(testing::PortOf(url_));
    ASSERT_TRUE((*admin)->ExecScript("COMMIT").ok());
  };
  auto hold_the_row = [&] { HoldTheRow(**admin); };
  std::atomic<int> attempts{0};
  auto increment = Increment(attempts);
  const db::TxOptions ten_seconds{.deadline = absl::Now() + absl::Seconds(10)};

  hold_the_row();
  auto waited =
      std::async(std::launch::async, [&] { return db::Transact(pool, ten_seconds, increment); });
  go_away();
  come_back();
  absl::Status s = waited.get();
  EXPECT_TRUE(s.ok()) << "a write lost while its server was away for 0.7 s: " << s;
  EXPECT_EQ(attempts.load(), 2);
  EXPECT_EQ(n_and_followed().first, 1) << "the write took effect once";

  // Group commit: the batch waits for the server the same way.
  server::Executor threads(1, 16);
  db::GroupCommitter group(pool, "away-test", [&threads](std::function<void()> task) {
    return threads.TrySubmit(std::move(task));
  });
  db::GroupCommitter::Work w;
  w.first = {"UPDATE t SET n = n + 1 WHERE id = 1 RETURNING n", {}};
  w.then = [](const db::Result& r, int) {
    return std::vector<db::Statement>{{"INSERT INTO followed VALUES ($1)", {r.String(0, 0)}}};
  };
  std::promise<absl::Status> outcome;
  hold_the_row();
  group.Submit("k", absl::Now() + absl::Seconds(10), w,
               [&outcome](absl::Status st) { outcome.set_value(std::move(st)); });
  go_away();
  come_back();
  s = outcome.get_future().get();
  EXPECT_TRUE(s.ok()) << "a batch lost while its server was away for 0.7 s: " << s;
  EXPECT_EQ(n_and_followed(), std::make_pair(2L, 1L)) << "the batch took effect once, whole";

  // A server that stays away: UNAVAILABLE, before the deadline, nothing done.
  attempts = 0;
  hold_the_row();
  const absl::Time start = absl::Now();
  auto given_up = std::async(std::launch::async, [&] {
    return db::Transact(pool, {.deadline = start + absl::Milliseconds(1500)}, increment);
  });
  go_away();
  s = given_up.get();
  const absl::Duration took = absl::Now() - start;
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_LT(took, absl::Milliseconds(1500)) << "answered after its deadline";
  EXPECT_EQ(attempts.load(), 1);
  proxy.Retarget(testing::PortOf(url_));
  ASSERT_TRUE((*admin)->ExecScript("COMMIT").ok());
  EXPECT_EQ(n_and_followed(), std::make_pair(2L, 1L)) << "a write given up left a change";
}

TEST_F(Database, ConnectionsProbeASilentServerAndTheUrlCanSayOtherwise) {
  // A server whose host vanished sends no reset. Every connection probes
  // after 30 s of silence (10 s apart, 3 probes) and gives sent data 60 s to
  // be acknowledged, so a statement without a deadline (a migration's)
  // fails within about a minute instead of the kernel's two hours; the
  // socket itself carries the settings. A URL's own values win.
  struct Got {
    int keepalive = -1, idle = -1, interval = -1, count = -1;
    unsigned user_timeout = 0;
  };
  auto options_of = [](db::Conn& c) {
    Got g;
    int fd = PQsocket(c.raw());
    socklen_t n = sizeof(int);
    EXPECT_EQ(getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &g.keepalive, &n), 0);
    EXPECT_EQ(getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &g.idle, &n), 0);
    EXPECT_EQ(getsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &g.interval, &n), 0);
    EXPECT_EQ(getsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &g.count, &n), 0);
    n = sizeof(unsigned);
    EXPECT_EQ(getsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &g.user_timeout, &n), 0);
    return g;
  };
  ASSERT_TRUE(absl::StrContains(url_, "127.0.0.1")) << "the test needs a TCP connection";
  auto plain = db::Conn::Open(url_, "t");
  ASSERT_TRUE(plain.ok()) << plain.status();
  Got g = options_of(**plain);
  EXPECT_NE(g.keepalive, 0);
  EXPECT_EQ(g.idle, 30);
  EXPECT_EQ(g.interval, 10);
  EXPECT_EQ(g.count, 3);
  EXPECT_EQ(g.user_timeout, 60000u);

  auto own = db::Conn::Open(url_ + "?keepalives_idle=7&tcp_user_timeout=5000", "t");
  ASSERT_TRUE(own.ok()) << own.status();
  g = options_of(**own);
  EXPECT_EQ(g.idle, 7);
  EXPECT_EQ(g.interval, 10);
  EXPECT_EQ(g.user_timeout, 5000u);
  auto off = db::Conn::Open(url_ + "?keepalives=0", "t");
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_EQ(options_of(**off).keepalive, 0);
  // The pool's connections are opened the same way.
  auto lease = pool_->Acquire(absl::InfiniteFuture());
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ(options_of(**lease).idle, 30);
}

TEST_F(Database, MigrationsApplyOnceAndRefuseEditedHistory) {
  auto conn = db::Conn::Open(url_, "t");
  ASSERT_TRUE(conn.ok());
  std::vector<db::MigrationSet> sets = {
      {"demo", {{"0001_a", "CREATE TABLE a (x int)"}, {"0002_b", "CREATE TABLE b (y int)"}}}};
  auto applied = db::Migrate(**conn, sets);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(applied->size(), 2u);
  applied = db::Migrate(**conn, sets);
  ASSERT_TRUE(applied.ok());
  EXPECT_TRUE(applied->empty());
  sets[0].migrations[0].sql = "CREATE TABLE a (x bigint)";
  EXPECT_TRUE(absl::IsFailedPrecondition(db::Migrate(**conn, sets).status()));
  // A failing migration leaves nothing half-applied.
  std::vector<db::MigrationSet> broken = {
      {"demo2",
       {{"0001_ok", "CREATE TABLE c (z int)"}, {"0002_bad", "CREATE TABLE d (; nonsense"}}}};
  EXPECT_FALSE(db::Migrate(**conn, broken).ok());
  auto r = (*conn)->Exec("SELECT count(*) FROM schema_migrations WHERE component = 'demo2'");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Int(0, 0), 1);
}

TEST_F(Database, RepeatableMigrationsFollowTheirFileAfterTheVersionedOnes) {
  auto conn = db::Conn::Open(url_, "t");
  ASSERT_TRUE(conn.ok());
  auto answer = [&]() -> int64_t {
    auto r = (*conn)->Exec("SELECT answer()");
    return r.ok() ? r->Int(0, 0) : -1;
  };
  // Listed first, applied after the versioned table it reads.
  std::vector<db::MigrationSet> sets = {
      {"rep",
       {{"R__answer",
         "CREATE OR REPLACE FUNCTION answer() RETURNS bigint LANGUAGE sql "
         "AS 'SELECT count(*) FROM facts'"},
        {"0001_facts", "CREATE TABLE facts (x int); INSERT INTO facts VALUES (1), (2)"}}}};
  auto applied = db::Migrate(**conn, sets);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, (std::vector<std::string>{"rep/0001_facts", "rep/R__answer"}));
  EXPECT_EQ(answer(), 2);
  applied = db::Migrate(**conn, sets);
  ASSERT_TRUE(applied.ok());
  EXPECT_TRUE(applied->empty()) << "unchanged: not applied again";
  // Edited: applied again, and only it.
  sets[0].migrations[0].sql =
      "CREATE OR REPLACE FUNCTION answer() RETURNS bigint LANGUAGE sql "
      "AS 'SELECT sum(x) FROM facts'";
  applied = db::Migrate(**conn, sets);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, (std::vector<std::string>{"rep/R__answer"}));
  EXPECT_EQ(answer(), 3);
  // A failing edit keeps the last good definition.
  std::string good = sets[0].migrations[0].sql;
  sets[0].migrations[0].sql = "CREATE OR REPLACE FUNCTION answer() RETURNS bigint AS nonsense";
  EXPECT_FALSE(db::Migrate(**conn, sets).ok());
  EXPECT_EQ(answer(), 3);

  // A newer release adds a versioned migration and redefines the function;
  // then an older replica restarts (a rolling update): it must not put its
  // own, older definition back.
  std::vector<db::MigrationSet> newer = {
      {"rep",
       {{"R__answer",
         "CREATE OR REPLACE FUNCTION answer() RETURNS bigint LANGUAGE sql "
         "AS 'SELECT max(x) * 100 FROM facts'"},
        {"0001_facts", "CREATE TABLE facts (x int); INSERT INTO facts VALUES (1), (2)"},
        {"0002_more", "INSERT INTO facts VALUES (3)"}}}};
  applied = db::Migrate(**conn, newer);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, (std::vector<std::string>{"rep/0002_more", "rep/R__answer"}));
  EXPECT_EQ(answer(), 300);
  sets[0].migrations[0].sql = good;  // the older release, as it was
  std::vector<std::string> ahead;
  db::MigrateOptions tell_ahead;
  tell_ahead.ahead = &ahead;
  applied = db::Migrate(**conn, sets, tell_ahead);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_TRUE(applied->empty()) << "the older release re-applied " << (*applied)[0];
  EXPECT_EQ(ahead, std::vector<std::string>{"rep/0002_more"});
  EXPECT_EQ(answer(), 300) << "the newer definition stays";
  ahead.clear();
  applied = db::Migrate(**conn, newer, tell_ahead);
  ASSERT_TRUE(applied.ok());
  EXPECT_TRUE(applied->empty() && ahead.empty()) << "the newer release finds it current";
}

// Options that note each statement of a migration run outside a
// transaction as it starts: "[component/name ]i/n first line".
db::MigrateOptions Telling(std::vector<std::string>* told, bool with_name) {
  db::MigrateOptions o;
  o.progress = [told, with_name](const std::string& m, size_t i, size_t n, absl::string_view line) {
    told->push_back(absl::StrCat(with_name ? m + " " : "", i, "/", n, " ", line));
  };
  return o;
}

// Whether `index` exists and is valid (usable by reads); nullopt: absent.
std::optional<bool> IndexValid(db::Conn& c, const std::string& index) {
  auto r = c.Exec("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", {index});
  if (!r.ok() || r->rows() == 0) return std::nullopt;
  return r->Bool(0, 0);
}

TEST_F(Database, AnIndexBuiltOutsideATransactionLetsWritesThroughAndAnotherReplicaWaits) {
  auto conn = db::Conn::Open(url_, "t");
  ASSERT_TRUE(conn.ok());
  std::vector<db::MigrationSet> v1 = {
      {"live",
       {{"0001_t", "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000)"}}}};
  ASSERT_TRUE(db::Migrate(**conn, v1).ok());
  std::vector<db::MigrationSet> v2 = v1;
  v2[0].migrations.push_back(
      {"0002_t_by_x", absl::StrCat(db::kNoTransaction, "\n",
                                   "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_by_x ON t (x);\n")});

  // A writer's transaction is open when the build starts: the build waits
  // for it, as any index build must.
  auto open = db::Conn::Open(url_, "open");
  ASSERT_TRUE(open.ok());
  ASSERT_TRUE((*open)->ExecScript("BEGIN; INSERT INTO t VALUES (0)").ok());
  std::vector<std::string> told;  // what the first replica was told
  auto first = std::async(std::launch::async, [&] {
    auto c = db::Conn::Open(url_, "first");
    return c.ok() ? db::Migrate(**c, v2, Telling(&told, true)) : c.status();
  });
  // Whatever fails below, the build is let finish (the future waits for it).
  absl::Cleanup end_open = [&] { (void)(*open)->ExecScript("COMMIT"); };
  // Until the build waits for that transaction (bounded: 20 s).
  bool waiting = false;
  for (int i = 0; i < 400 && !waiting; ++i) {
    auto r = (*conn)->Exec(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'first' "
        "AND wait_event_type = 'Lock' AND query LIKE '%CREATE INDEX CONCURRENTLY%'");
    ASSERT_TRUE(r.ok()) << r.status();
    waiting = r->Int(0, 0) == 1;
    if (!waiting) absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(waiting) << "the build never started waiting";
  // Another replica migrating meanwhile waits for the first without holding
  // a snapshot, which the build would otherwise wait for in turn.
  auto second = std::async(std::launch::async, [&] {
    auto c = db::Conn::Open(url_, "second");
    return c.ok() ? db::Migrate(**c, v2) : c.status();
  });
  absl::SleepFor(absl::Milliseconds(300));
  // Other writers go on while the index builds (a CREATE INDEX in a
  // transaction would hold them: this insert would wait behind it).
  auto writer = db::Conn::Open(url_, "writer");
  ASSERT_TRUE(writer.ok());
  EXPECT_TRUE(
      (*writer)->ExecScript("SET statement_timeout = '3s'; INSERT INTO t VALUES (1001)").ok())
      << "a write waited for the index build";
  EXPECT_FALSE(IndexValid(**conn, "t_by_x").value_or(false)) << "built before the open write ended";

  std::move(end_open).Invoke();
  // Bounded: were the second replica to hold a snapshot while it waits, the
  // two would wait for each other for good (PostgreSQL does not see it).
  for (auto* f : {&first, &second}) {
    if (f->wait_for(std::chrono::seconds(60)) == std::future_status::ready) continue;
    ADD_FAILURE() << "the migrations waited for each other";
    (void)(*conn)->Exec(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
        "WHERE application_name IN ('first', 'second')");
  }
  auto applied = first.get();
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, std::vector<std::string>{"live/0002_t_by_x"});
  EXPECT_EQ(told,
            std::vector<std::string>{
                "live/0002_t_by_x 1/1 CREATE INDEX CONCURRENTLY IF NOT EXISTS t_by_x ON t (x)"});
  auto again = second.get();
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->empty()) << "applied twice";
  EXPECT_EQ(IndexValid(**conn, "t_by_x"), std::optional<bool>(true));
  auto rows = (*conn)->Exec("SELECT count(*) FROM t WHERE x IN (0, 1001)");
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(rows->Int(0, 0), 2);
}

TEST_F(Database, AMigrationOutsideATransactionResumesAfterAFailedIndexBuild) {
  auto conn = db::Conn::Open(url_, "t");
  ASSERT_TRUE(conn.ok());
  // Statements are split at semicolons outside comments and quoted text;
  // each can run again (the last runs once: after it, the migration is
  // recorded).
  std::vector<db::MigrationSet> sets = {
      {"resume",
       {{"0001_t", "CREATE TABLE t (x int, note text)"},
        {"0002_unique",
         absl::StrCat(db::kNoTransaction,
                      "\n-- notes; with semicolons in them\n"
                      "CREATE TABLE IF NOT EXISTS notes AS SELECT * FROM (VALUES (1, 'a;b'), "
                      "(2, $$c;d$$), (3, E'e\\';f'), (4, $q$g;$$h$q$) /* ; */) v(x, note);\n"
                      "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x);\n"
                      "/* nested /* ; */ ; */ UPDATE notes SET note = note || '.' WHERE x = 1;\n"
                      "-- the end;\n")}}}};
  auto notes = [&] {
    auto r = (*conn)->Exec("SELECT string_agg(note, '|' ORDER BY x) FROM notes");
    return r.ok() ? r->String(0, 0) : r.status().ToString();
  };
  ASSERT_TRUE(db::Migrate(**conn, {{"resume", {sets[0].migrations[0]}}}).ok());
  // A duplicate, which the unique index refuses.
  ASSERT_TRUE((*conn)->ExecScript("INSERT INTO t VALUES (1, 'one'), (1, 'duplicate')").ok());
  auto failed = db::Migrate(**conn, sets);
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("resume/0002_unique failed: at statement 2 of 3"),
            absl::string_view::npos)
      << failed.status();
  EXPECT_EQ(IndexValid(**conn, "t_x"), std::nullopt) << "the failed build's index was left";
  EXPECT_EQ(notes(), "a;b|c;d|e';f|g;$$h") << "split wrongly";

  // A build killed part-way (with no chance to drop it) leaves an invalid
  // index of the migration's name: the next run builds it again.
  EXPECT_FALSE((*conn)->ExecScript("CREATE UNIQUE INDEX CONCURRENTLY t_x ON t (x)").ok());
  ASSERT_EQ(IndexValid(**conn, "t_x"), std::optional<bool>(false));
  ASSERT_TRUE((*conn)->ExecScript("DELETE FROM t WHERE note = 'duplicate'").ok());
  std::vector<std::string> told;  // each statement's first line, comments left out
  auto applied = db::Migrate(**conn, sets, Telling(&told, false));
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, std::vector<std::string>{"resume/0002_unique"});
  EXPECT_EQ(IndexValid(**conn, "t_x"), std::optional<bool>(true)) << "left invalid";
  EXPECT_EQ(told, (std::vector<std::string>{
                      "1/3 CREATE TABLE IF NOT EXISTS notes AS SELECT * FROM (VALUES (1, 'a;b'), "
                      "(2, $$c;d$$), (3, E'e\\';f'), (4, $q$g;$$h$q$) /* ; */) v(x, note)",
                      "2/3 CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x)",
                      "3/3 UPDATE notes SET note = note || '.' WHERE x = 1"}));
  EXPECT_FALSE((*conn)->ExecScript("INSERT INTO t VALUES (1, 'twice')").ok()) << "not unique";
  EXPECT_EQ(notes(), "a;b.|c;d|e';f|g;$$h");
  applied = db::Migrate(**conn, sets);
  ASSERT_TRUE(applied.ok());
  EXPECT_TRUE(applied->empty());
}

TEST_F(Database, AMigrationOutsideATransactionMustBuildIndexesSoThatItCanRunAgain) {
  auto conn = db::Conn::Open(url_, "t");
  ASSERT_TRUE(conn.ok());
  for (const char* build : {"CREATE INDEX t_x ON t (x)", "CREATE INDEX CONCURRENTLY t_x ON t (x)",
                            "create unique index concurrently on t (x)"}) {
    std::vector<db::MigrationSet> sets = {
        {"rule",
         {{"0001_t", "CREATE TABLE t (x int)"},
          {"0002_x", absl::StrCat(db::kNoTransaction, "\nCREATE TABLE u (y int);\n", build)}}}};
    auto applied = db::Migrate(**conn, sets);
    EXPECT_TRUE(absl::IsFailedPrecondition(applied.status())) << build << ": " << applied.status();
    EXPECT_NE(applied.status().message().find("CONCURRENTLY IF NOT EXISTS"),
              absl::string_view::npos)
        << applied.status();
    auto u = (*conn)->Exec("SELECT to_regclass('u') IS NULL");
    ASSERT_TRUE(u.ok());
    EXPECT_TRUE(u->Bool(0, 0)) << build << ": ran a statement before refusing";
  }
  std::vector<db::MigrationSet> repeatable = {
      {"rule2",
       {{"R__f", absl::StrCat(db::kNoTransaction,
                              "\nCREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql "
                              "AS 'SELECT 1'")}}}};
  EXPECT_TRUE(absl::IsFailedPrecondition(db::Migrate(**conn, repeatable).status()));
}

// What a migration's lock waits were told: "migration|holders" each.
struct LockWaits {
  absl::Mutex mu;
  std::vector<std::string> told ABSL_GUARDED_BY(mu);

  db::MigrateOptions Options(absl::Duration lock_timeout, absl::Duration lock_wait) {
    db::MigrateOptions o;
    o.lock_timeout = lock_timeout;
    o.lock_wait = lock_wait;
    o.on_lock_busy = [this](const std::string& m, int, absl::Duration, absl::Duration,
                            const std::string& holders) {
      absl::MutexLock l(&mu);
      told.push_back(absl::StrCat(m, "|", holders));
    };
    return o;
  }
  std::vector<std::string> Told() {
    absl::MutexLock l(&mu);
    return told;
  }
};

// A statement waiting for a table lock makes every later query of that
// table queue behind it: a migration's ALTER TABLE behind one long read
// would stop the service's writes for as long as the read lasts.
TEST_F(Database, AMigrationWaitingForALockHoldsTheTablesWritesUpOnlyBriefly) {
  auto conn = db::Conn::Open(url_, "t");
  ASSERT_TRUE(conn.ok());
  std::vector<db::MigrationSet> sets = {{"lock", {{"0001_t", "CREATE TABLE t (x int)"}}}};
  ASSERT_TRUE(db::Migrate(**conn, sets).ok());
  auto writer = db::Conn::Open(url_, "writer");
  ASSERT_TRUE(writer.ok());
  // Were a write held up until the read ends, it would fail here.
  ASSERT_TRUE((*writer)->ExecScript("SET statement_timeout = '3s'").ok());
  int written = 0;

  // In a transaction, then outside one, one statement of several.
  std::vector<db::MigrationSet> v2 = sets;
  v2[0].migrations.push_back({"0002_y", "ALTER TABLE t ADD COLUMN y int"});
  std::vector<db::MigrationSet> v3 = v2;
  v3[0].migrations.push_back(
      {"0003_z", absl::StrCat(db::kNoTransaction,
                              "\nCREATE TABLE IF NOT EXISTS u (x int);\n"
                              "ALTER TABLE t ADD COLUMN IF NOT EXISTS z int;\n")});
  for (const auto& step :
       {std::make_pair("lock/0002_y", &v2), std::make_pair("lock/0003_z statement 2 of 2", &v3)}) {
    const std::string migration = step.first;
    const std::vector<db::MigrationSet>* release = step.second;
    SCOPED_TRACE(migration);
    // A long read: it holds the table's lock until it ends.
    auto reader = db::Conn::Open(url_, "long-read");
    ASSERT_TRUE(reader.ok());
    ASSERT_TRUE((*reader)->ExecScript("BEGIN; SELECT count(*) FROM t").ok());
    LockWaits waits;
    auto migrating = std::async(std::launch::async, [&] {
      auto c = db::Conn::Open(url_, "migrator");
      return c.ok() ? db::Migrate(**c, *release,
                                  waits.Options(absl::Milliseconds(200), absl::Seconds(60)))
                    : c.status();
    });
    // Whatever fails below, the read ends before the migration is waited for.
    absl::Cleanup end_read = [&] { (void)(*reader)->ExecScript("COMMIT"); };
    // Writes go on while the migration tries, and tries again, for 2 s.
    for (absl::Time end = absl::Now() + absl::Seconds(2); absl::Now() < end; ++written) {
      absl::Status s =
          (*writer)->ExecScript(absl::StrCat("INSERT INTO t (x) VALUES (", written, ")"));
      ASSERT_TRUE(s.ok()) << "a write waited behind the migration: " << s;
      absl::SleepFor(absl::Milliseconds(20));
    }
    std::vector<std::string> told = waits.Told();
    ASSERT_FALSE(told.empty()) << "the migration never gave up waiting";
    EXPECT_TRUE(absl::StartsWith(told[0], absl::StrCat(migration, "|pid "))) << told[0];
    EXPECT_TRUE(absl::StrContains(told[0], "long-read, idle in transaction")) << told[0];
    EXPECT_TRUE(absl::StrContains(told[0], "SELECT count(*) FROM t")) << told[0];
    // Once the read ends, the migration's next attempt has its lock.
    std::move(end_read).Invoke();
    ASSERT_EQ(migrating.wait_for(std::chrono::seconds(30)), std::future_status::ready);
    auto applied = migrating.get();
    ASSERT_TRUE(applied.ok()) << applied.status();
    EXPECT_EQ(applied->size(), 1u);
  }
  auto r = (*conn)->Exec("SELECT count(*), count(y) + count(z) FROM t");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->Int(0, 0), written) << "a write was lost";
  EXPECT_EQ(r->Int(0, 1), 0);
}

TEST_F(Database, AMigrationKeptFromItsLocksGivesUpNamingWhoHoldsThemAndChangesNothing) {
  auto conn = db::Conn::Open(url_, "t");
  ASSERT_TRUE(conn.ok());
  std::vector<db::MigrationSet> sets = {{"stuck", {{"0001_t", "CREATE TABLE t (x int)"}}}};
  ASSERT_TRUE(db::Migrate(**conn, sets).ok());
  sets[0].migrations.push_back(
      {"0002_y", "CREATE TABLE v (x int); ALTER TABLE t ADD COLUMN y int"});
  auto reader = db::Conn::Open(url_, "nightly-report");
  ASSERT_TRUE(reader.ok());
  auto pid = (*reader)->Exec("BEGIN; SELECT pg_backend_pid() FROM t LIMIT 0");
  ASSERT_TRUE((*reader)->ExecScript("BEGIN; SELECT count(*) FROM t").ok());
  pid = (*reader)->Exec("SELECT pg_backend_pid()");
  ASSERT_TRUE(pid.ok()) << pid.status();
  LockWaits waits;
  // Another replica migrating meanwhile waits its turn, and is told who
  // migrates.
  absl::Notification first_started;
  std::vector<std::string> told_second;
  auto second = std::async(std::launch::async, [&] {
    auto c = db::Conn::Open(url_, "replica-2");
    first_started.WaitForNotification();
    db::MigrateOptions o;
    o.lock_timeout = absl::Milliseconds(100);
    o.lock_wait = absl::Seconds(1);
    o.on_waiting_for_other = [&](absl::Duration, const std::string& migrating) {
      told_second.push_back(migrating);
    };
    return c.ok() ? db::Migrate(**c, sets, o) : c.status();
  });
  db::MigrateOptions first = waits.Options(absl::Milliseconds(100), absl::Seconds(2));
  first.on_lock_busy = [&, told = first.on_lock_busy](const std::string& m, int n, absl::Duration w,
                                                      absl::Duration next,
                                                      const std::string& holders) {
    told(m, n, w, next, holders);
    if (!first_started.HasBeenNotified()) first_started.Notify();
  };
  auto refused = db::Migrate(**conn, sets, first);
  if (!first_started.HasBeenNotified()) first_started.Notify();
  ASSERT_TRUE(absl::IsAborted(refused.status())) << refused.status();
  // Its own turn ends as the first one's did.
  ASSERT_EQ(second.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_TRUE(absl::IsAborted(second.get().status()));
  ASSERT_FALSE(told_second.empty()) << "the second replica waited without a word";
  auto me = (*conn)->Exec("SELECT pg_backend_pid()");
  ASSERT_TRUE(me.ok());
  EXPECT_TRUE(absl::StartsWith(told_second[0], absl::StrCat("pid ", me->Int(0, 0), " (t, ")))
      << told_second[0];
  const std::string message(refused.status().message());
  EXPECT_TRUE(absl::StrContains(message, "stuck/0002_y failed: could not take the locks"))
      << message;
  EXPECT_TRUE(absl::StrContains(message, absl::StrCat("pid ", pid->Int(0, 0), " (nightly-report")))
      << message;
  EXPECT_GE(waits.Told().size(), 1u);
  // Nothing of it is kept, nor recorded.
  auto r = (*conn)->Exec(
      "SELECT to_regclass('v') IS NULL, "
      "NOT EXISTS (SELECT FROM information_schema.columns WHERE table_name = 't' "
      "AND column_name = 'y'), "
      "NOT EXISTS (SELECT FROM schema_migrations WHERE component = 'stuck' AND name = '0002_y')");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->Bool(0, 0) && r->Bool(0, 1) && r->Bool(0, 2));
  // Run again once the read is over, it applies.
  ASSERT_TRUE((*reader)->ExecScript("COMMIT").ok());
  auto applied =
      db::Migrate(**conn, sets, waits.Options(absl::Milliseconds(100), absl::Seconds(2)));
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, std::vector<std::string>{"stuck/0002_y"});
}

// The backfill docs/operations.md gives for a table that already holds data:
// a DO block in a no-transaction migration, committing after each batch, so
// a writer waits at most for one batch, and a run stopped part-way keeps the
// batches it committed and the next run fills the rest.
TEST_F(Database, ABackfillCommitsBatchByBatchAndResumesWhereItStopped) {
  auto conn = db::Conn::Open(url_, "t");
  ASSERT_TRUE(conn.ok());
  const std::string backfill =
      "DO $$\n"
      "DECLARE last int := 0;\n"
      "BEGIN\n"
      "  LOOP\n"
      "    WITH batch AS (SELECT id FROM t WHERE id > last ORDER BY id LIMIT 500),\n"
      "         filled AS (UPDATE t SET y = t.x * 2 FROM batch\n"
      "                     WHERE t.id = batch.id AND t.y IS NULL)\n"
      "    SELECT max(id) INTO last FROM batch;\n"
      "    EXIT WHEN last IS NULL;\n"
      "    COMMIT;\n"
      "  END LOOP;\n"
      "END $$;\n";
  std::vector<db::MigrationSet> sets = {
      {"fill",
       {{"0001_t",
         "CREATE TABLE t (id int PRIMARY KEY, x int);"
         "INSERT INTO t SELECT i, i FROM generate_series(1, 5000) i"},
        {"0002_y", "ALTER TABLE t ADD COLUMN y int"},
        {"0003_fill_y", absl::StrCat(db::kNoTransaction, "\n", backfill)}}}};
  auto filled = [&] {
    auto r = (*conn)->Exec("SELECT count(*) FILTER (WHERE y = 2 * x), count(y) FROM t");
    return r.ok() ? absl::StrCat(r->Int(0, 0), " ", r->Int(0, 1)) : r.status().ToString();
  };

  // In one transaction, PostgreSQL refuses the batches' COMMIT: nothing is
  // filled and nothing is recorded.
  std::vector<db::MigrationSet> in_one = {
      {"fill", {sets[0].migrations[0], sets[0].migrations[1], {"0003_fill_y", backfill}}}};
  auto refused = db::Migrate(**conn, in_one);
  EXPECT_FALSE(refused.ok());
  EXPECT_EQ(filled(), "0 0");

  // A writer holds row 4,000: the backfill waits for it in its eighth batch.
  auto holder = db::Conn::Open(url_, "holder");
  ASSERT_TRUE(holder.ok());
  ASSERT_TRUE((*holder)->ExecScript("BEGIN; SELECT * FROM t WHERE id = 4000 FOR UPDATE").ok());
  // The backfill waits for the row without giving up and retrying (it
  // would by default: MigrateOptions::lock_timeout), so that the cancel
  // below always finds it waiting, never pausing between two tries.
  db::MigrateOptions wait_for_the_row;
  wait_for_the_row.lock_timeout = absl::ZeroDuration();
  auto first = std::async(std::launch::async, [&] {
    auto c = db::Conn::Open(url_, "backfill");
    return c.ok() ? db::Migrate(**c, sets, wait_for_the_row) : c.status();
  });
  // Declared after the backfill: whatever the test's outcome, the row is
  // released before the backfill is waited for.
  absl::Cleanup release = [&] { (void)(*holder)->ExecScript("ROLLBACK"); };
  ASSERT_TRUE(testing::UntilLockWaiters(url_, 1)) << "the backfill never reached the held row";
  // The seven batches before it are committed, and their rows are free.
  EXPECT_EQ(filled(), "3500 3500");
  auto writer = db::Conn::Open(url_, "writer");
  ASSERT_TRUE(writer.ok());
  EXPECT_TRUE(
      (*writer)->ExecScript("SET statement_timeout = '3s'; UPDATE t SET x = x WHERE id = 10").ok())
      << "a filled row stayed locked";

  // Stopped part-way (a Job killed): the committed batches stay.
  ASSERT_TRUE((*conn)
                  ->Exec("SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = 'backfill'")
                  .ok());
  ASSERT_EQ(first.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  auto stopped = first.get();
  ASSERT_FALSE(stopped.ok());
  EXPECT_NE(stopped.status().message().find("fill/0003_fill_y failed: at statement 1 of 1"),
            absl::string_view::npos)
      << stopped.status();
  EXPECT_EQ(filled(), "3500 3500");

  // Run again once the writer is done: it fills the rest and is recorded.
  std::move(release).Invoke();
  auto applied = db::Migrate(**conn, sets);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, std::vector<std::string>{"fill/0003_fill_y"});
  EXPECT_EQ(filled(), "5000 5000");
  applied = db::Migrate(**conn, sets);
  ASSERT_TRUE(applied.ok());
  EXPECT_TRUE(applied->empty());
}

TEST_F(Database, PendingListsWhatMigrateWouldApplyAndAppliesNothing) {
  // What a replica that does not migrate waits for (MIGRATE_ON_START=false).
  auto conn = db::Conn::Open(url_, "t");
  ASSERT_TRUE(conn.ok());
  using Names = std::vector<std::string>;
  std::vector<db::MigrationSet> v1 = {
      {"rep",
       {{"R__f", "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'"},
        {"0001_t", "CREATE TABLE t (x int)"}}}};
  auto pending = db::Pending(**conn, v1);
  ASSERT_TRUE(pending.ok()) << pending.status();
  EXPECT_EQ(*pending, (Names{"rep/0001_t", "rep/R__f"})) << "a database never migrated";
  auto tables = (*conn)->Exec("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'");
  ASSERT_TRUE(tables.ok());
  EXPECT_EQ(tables->Int(0, 0), 0) << "Pending created something";
  ASSERT_TRUE(db::Migrate(**conn, v1).ok());
  pending = db::Pending(**conn, v1);
  ASSERT_TRUE(pending.ok()) << pending.status();
  EXPECT_TRUE(pending->empty());

  // The next release: a versioned migration and a new text of R__f.
  std::vector<db::MigrationSet> v2 = v1;
  v2[0].migrations[0].sql = "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 2'";
  v2[0].migrations.push_back({"0002_u", "CREATE TABLE u (y int)"});
  pending = db::Pending(**conn, v2);
  ASSERT_TRUE(pending.ok()) << pending.status();
  EXPECT_EQ(*pending, (Names{"rep/0002_u", "rep/R__f"}));
  EXPECT_EQ(*db::Pending(**conn, v2), *pending) << "asking applied nothing";
  ASSERT_TRUE(db::Migrate(**conn, v2).ok());
  EXPECT_TRUE(db::Pending(**conn, v2)->empty());
  // The previous release against the newer database (a rolling update):
  // nothing to wait for, though its R__f differs.
  pending = db::Pending(**conn, v1);
  ASSERT_TRUE(pending.ok()) << pending.status();
  EXPECT_TRUE(pending->empty()) << (*pending)[0];
  // A versioned migration edited since it was applied: no wait cures it.
  v1[0].migrations[1].sql = "CREATE TABLE t (x bigint)";
  EXPECT_TRUE(absl::IsFailedPrecondition(db::Pending(**conn, v1).status()));
}

TEST_F(Database, PipelineReturnsResultsInOrderAndSkipsAfterAFailure) {
  auto lease = pool_->Acquire(absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(lease.ok());
  db::Conn& c = **lease;
  ASSERT_TRUE(c.ExecScript("CREATE TABLE piped (v int PRIMARY KEY)").ok());
  auto ok = c.Pipeline({{"BEGIN", {}},
                        {"INSERT INTO piped VALUES ($1) RETURNING v * 10", {int32_t{1}}},
                        {"INSERT INTO piped VALUES ($1) RETURNING v * 10", {int32_t{2}}},
                        {"SELECT count(*) FROM piped", {}},
                        {"COMMIT", {}}});
  ASSERT_EQ(ok.size(), 5u);
  for (const auto& r : ok) ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(ok[1]->Int(0, 0), 10);
  EXPECT_EQ(ok[2]->Int(0, 0), 20);
  EXPECT_EQ(ok[3]->Int(0, 0), 2) << "a statement sees the ones before it";

  auto bad = c.Pipeline({{"BEGIN", {}},
                         {"INSERT INTO piped VALUES ($1)", {int32_t{3}}},
                         {"INSERT INTO piped VALUES ($1)", {int32_t{1}}},  // duplicate
                         {"INSERT INTO piped VALUES ($1)", {int32_t{4}}},
                         {"COMMIT", {}}});
  ASSERT_EQ(bad.size(), 5u);
  EXPECT_TRUE(bad[1].ok());
  EXPECT_TRUE(absl::IsAlreadyExists(bad[2].status())) << bad[2].status();
  EXPECT_TRUE(absl::IsAborted(bad[3].status())) << bad[3].status();
  EXPECT_TRUE(absl::IsAborted(bad[4].status())) << "COMMIT is skipped too";
  EXPECT_TRUE(c.ExecScript("ROLLBACK").ok());
  ASSERT_TRUE(c.healthy());
  auto n = c.Exec("SELECT count(*), sum(v) FROM piped");
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->Int(0, 0), 2) << "nothing of the failed pipeline's transaction remains";
  EXPECT_EQ(n->Int(0, 1), 3);

  // A statement that does not parse fails alone, and the connection stays usable.
  auto unparsable = c.Pipeline({{"SELEC 1", {}}, {"SELECT 2", {}}});
  EXPECT_TRUE(absl::IsInternal(unparsable[0].status())) << unparsable[0].status();
  EXPECT_TRUE(absl::IsAborted(unparsable[1].status()));
  auto after = c.Exec("SELECT 7");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->Int(0, 0), 7);
}

TEST_F(Database, PrefixRangeHoldsExactlyTheTextsWithThePrefix) {
  // PostgreSQL judges: in the "C" collation, lo <= v < hi must hold for the
  // values starting with the prefix and for no other.
  auto conn = db::Conn::Open(url_, "t");
  ASSERT_TRUE(conn.ok());
  const std::string top = "\xf4\x8f\xbf\xbf";  // U+10FFFF, the last code point
  const std::vector<std::string> values = {"",
                                           "a",
                                           "ab",
                                           "abc",
                                           "abd",
                                           "ac",
                                           "b",
                                           "z{",
                                           "\x7f",
                                           "\xc2\x80",
                                           "\xc3\xa9",
                                           "\xc3\xa9t\xc3\xa9",
                                           "\xc3\xaa",
                                           "\xed\x9f\xbf",
                                           "\xee\x80\x80",
                                           "a" + top,
                                           top,
                                           top + "x",
                                           "b" + top};
  for (const std::string& prefix :
       {std::string("a"), std::string("ab"), std::string("z"), std::string("\x7f"),
        std::string("\xc3\xa9"), std::string("\xed\x9f\xbf"), "a" + top, top}) {
    db::TextRange r = db::PrefixRange(prefix);
    EXPECT_EQ(r.lo, prefix);
    EXPECT_EQ(r.hi.has_value(), prefix != top) << prefix;
    for (const std::string& v : values) {
      auto judged = (*conn)->Exec(
          "SELECT starts_with($1 COLLATE \"C\", $2), $1 COLLATE \"C\" >= $2 AND "
          "($3::text IS NULL OR $1 COLLATE \"C\" < $3)",
          {v, prefix, r.hi ? db::Param(*r.hi) : db::Param(std::nullopt)});
      ASSERT_TRUE(judged.ok()) << judged.status() << " prefix " << prefix << " value " << v;
      EXPECT_EQ(judged->Bool(0, 0), judged->Bool(0, 1)) << "prefix " << prefix << " value " << v;
    }
  }
  // CaselessPrefix's condition, on a lowered value, ignores ASCII case, and
  // holds without an upper bound too (a prefix of U+10FFFF alone).
  for (const std::string& prefix : {std::string("AB"), std::string("z"), top}) {
    for (const std::string& v : values) {
      std::vector<db::Param> params = {v};
      std::string cond = db::CaselessPrefix("lower($1::text COLLATE \"C\")", prefix, &params);
      params.push_back(prefix);
      auto judged =
          (*conn)->Exec(absl::StrCat("SELECT starts_with(lower($1::text COLLATE \"C\"), lower($",
                                     params.size(), "::text COLLATE \"C\")), ", cond),
                        params);
      ASSERT_TRUE(judged.ok()) << judged.status() << " prefix " << prefix << " value " << v;
      EXPECT_EQ(judged->Bool(0, 0), judged->Bool(0, 1)) << "prefix " << prefix << " value " << v;
    }
  }
  EXPECT_EQ(db::PrefixRange("ab").hi, "ac");
  EXPECT_EQ(db::PrefixRange("a" + top).hi, "b");
  EXPECT_EQ(db::PrefixRange("\xed\x9f\xbf").hi, "\xee\x80\x80");  // U+D7FF → U+E000
}

TEST_F(Database, PreparedStatementsStayBoundedAndTheBusyOnesStay) {
  // Statement texts that carry a page size are as many as callers make them:
  // a connection keeps the ones it used lately and deallocates the rest.
  auto conn = db::Conn::Open(url_, "t");
  ASSERT_TRUE(conn.ok());
  db::Conn& c = **conn;
  auto count_on_server = [&] {
    auto n = c.Exec("SELECT count(*) FROM pg_prepared_statements");
    return n.ok() ? n->Int(0, 0) : -1;
  };
  const std::string busy = "SELECT $1::int + 1";
  for (int i = 0; i < 1000; ++i) {
    auto busy_row = c.Exec(busy, {int32_t{i}});
    ASSERT_TRUE(busy_row.ok()) << busy_row.status();
    ASSERT_EQ(busy_row->Int(0, 0), i + 1);
    std::string text = absl::StrCat("SELECT ", i, " AS page_of", db::LimitClause(i + 1));
    auto r = i % 2 ? c.Exec(text) : std::move(c.Pipeline({{text, {}}})[0]);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->Int(0, 0), i);
  }
  EXPECT_LE(c.prepared_count(), 257u);
  EXPECT_GE(c.prepared_count(), 100u) << "the recent ones are kept";
  EXPECT_EQ(count_on_server(), static_cast<int64_t>(c.prepared_count()) + 1)
      << "what the connection forgot is deallocated on the server (+1: this count's own)";
  auto kept = c.Exec("SELECT count(*) FROM pg_prepared_statements WHERE statement = $1", {busy});
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->Int(0, 0), 1) << "the statement used all along is still prepared";
  auto again = c.Exec("SELECT 0 AS page_of LIMIT 1");  // forgotten long ago: prepared again
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->Int(0, 0), 0);
  // Inside a transaction nothing is deallocated (nor anything lost).
  ASSERT_TRUE(c.ExecScript("BEGIN").ok());
  for (int i = 0; i < 300; ++i) {
    ASSERT_TRUE(c.Exec(absl::StrCat("SELECT ", i, " AS in_tx")).ok());
  }
  ASSERT_TRUE(c.ExecScript("COMMIT").ok());
  EXPECT_GT(c.prepared_count(), 257u);
  ASSERT_TRUE(c.Exec("SELECT 1 AS after_tx").ok());
  EXPECT_LE(c.prepared_count(), 257u);
  EXPECT_EQ(count_on_server(), static_cast<int64_t>(c.prepared_count()) + 1);
}

TEST_F(Database, PipelineOnALostConnectionFailsEveryStatementAsUnavailable) {
  auto victim = db::Conn::Open(url_, "victim");
  ASSERT_TRUE(victim.ok());
  auto pid = (*victim)->Exec("SELECT pg_backend_pid()");
  ASSERT_TRUE(pid.ok());
  ASSERT_TRUE(db::WithConnection(*pool_, absl::InfiniteFuture(), [&](db::Conn& c) {
                return c.Exec("SELECT pg_terminate_backend($1::int)", {pid->String(0, 0)}).status();
              }).ok());
  absl::SleepFor(absl::Milliseconds(100));
  auto res = (*victim)->Pipeline({{"BEGIN", {}}, {"SELECT 1", {}}, {"COMMIT", {}}});
  ASSERT_EQ(res.size(), 3u);
  for (const auto& r : res) EXPECT_TRUE(absl::IsUnavailable(r.status())) << r.status();
  EXPECT_FALSE((*victim)->healthy()) << "a pool must drop it";
}

TEST_F(Database, GroupCommitKeepsEachCallersOutcomeSeparate) {
  Script(
      "CREATE TABLE hot (k int PRIMARY KEY, n int NOT NULL);"
      "INSERT INTO hot VALUES (1, 0);"
      "CREATE TABLE taken (v int PRIMARY KEY);"
      "CREATE TABLE followed (v int PRIMARY KEY)");
  server::Executor threads(4, 64);
  db::GroupCommitter group(*pool_, "test", [&threads](std::function<void()> task) {
    return threads.TrySubmit(std::move(task));
  });
  // 64 callers on one hot row. Every 8th statement raises (a duplicate key);
  // every 8th caller from 4 refuses in `then` (a rule, nothing written); caller
  // 13 meets something unexpected after writing (INTERNAL). None of these may
  // be applied, nor undo the others. The statements `then` returns commit with
  // the batch.
  std::vector<std::future<absl::Status>> calls;
  for (int i = 0; i < 64; ++i) {
    calls.push_back(std::async(std::launch::async, [&, i] {
      int v = i % 8 == 0 ? 0 : i;  // value 0 collides after its first use
      db::GroupCommitter::Work w;
      bool refuse = i % 8 == 4;
      w.first = {refuse
                     ? std::string("SELECT -1")
                     : std::string("WITH u AS (UPDATE hot SET n = n + 1 WHERE k = 1 RETURNING n) "
                                   "INSERT INTO taken SELECT $1 FROM u RETURNING v"),
                 refuse ? std::vector<db::Param>{} : std::vector<db::Param>{int32_t{v}}};
      w.then = [i, refuse](const db::Result& r, int) -> absl::StatusOr<std::vector<db::Statement>> {
        if (refuse) return absl::FailedPreconditionError("refused by rule");
        if (i == 13) return absl::InternalError("unexpected");
        return std::vector<db::Statement>{{"INSERT INTO followed VALUES ($1)", {r.String(0, 0)}}};
      };
      // Submit returns at once; the batch's thread reports the outcome.
      std::promise<absl::Status> outcome;
      std::future<absl::Status> f = outcome.get_future();
      group.Submit("hot", absl::Now() + absl::Seconds(20), std::move(w),
                   [&outcome](absl::Status s) { outcome.set_value(std::move(s)); });
      return f.get();
    }));
  }
  int ok = 0, exists = 0, refused = 0, internal = 0;
  for (auto& f : calls) {
    absl::Status s = f.get();
    if (s.ok())
      ++ok;
    else if (absl::IsAlreadyExists(s))
      ++exists;
    else if (absl::IsFailedPrecondition(s))
      ++refused;
    else if (absl::IsInternal(s))
      ++internal;
    else
      ADD_FAILURE() << s;
  }
  EXPECT_EQ(refused, 8);
  EXPECT_EQ(internal, 1);
  EXPECT_EQ(exists, 7);
  EXPECT_EQ(ok, 48);  // 64 - 8 refused - 1 internal - 7 duplicates
  ASSERT_TRUE(db::WithConnection(*pool_, absl::InfiniteFuture(), [](db::Conn& c) {
                auto r = c.Exec(
                    "SELECT (SELECT n FROM hot), (SELECT count(*) FROM taken), "
                    "(SELECT count(*) FROM followed), (SELECT count(*) FROM taken WHERE v = 13)");
                EXPECT_EQ(r->Int(0, 0), 48) << "the failed callers' updates were rolled back";
                EXPECT_EQ(r->Int(0, 1), 48);
                EXPECT_EQ(r->Int(0, 2), 48) << "each success's follow-up statement committed";
                EXPECT_EQ(r->Int(0, 3), 0) << "the INTERNAL caller's write was undone";
                return r.status();
              }).ok());
}

TEST_F(Database, GroupCommitTakesTheLockFirstRowsBeforeAnyItemRuns) {
  // Items name rows to lock before the rest (here: people before seats).
  // While such a row is held elsewhere the batch waits at its start, holding
  // none of the rows its items lock: a writer that holds the person and
  // wants the seats gets them, instead of deadlocking with the batch.
  Script(
      "CREATE TABLE people (k text PRIMARY KEY);"
      "INSERT INTO people VALUES ('ann'), ('bob');"
      "CREATE TABLE seats (k int PRIMARY KEY, n int NOT NULL);"
      "INSERT INTO seats VALUES (1, 0)");
  std::vector<std::vector<std::string>> asked;
  server::Executor threads(1, 8);
  db::GroupCommitter group(
      *pool_, "lockfirst",
      [&threads](std::function<void()> task) { return threads.TrySubmit(std::move(task)); },
      /*max_batch=*/64, /*max_pending=*/100,
      [&asked](const std::vector<std::string>& keys) {
        asked.push_back(keys);
        return db::Statement{"SELECT 1 FROM people WHERE k = ANY($1::text[]) ORDER BY k FOR SHARE",
                             {absl::StrCat("{", absl::StrJoin(keys, ","), "}")}};
      });
  auto leaver = db::Conn::Open(url_, "test");
  ASSERT_TRUE(leaver.ok());
  ASSERT_TRUE((*leaver)->ExecScript("BEGIN; SELECT 1 FROM people WHERE k = 'bob' FOR UPDATE").ok());
  // The one thread is busy until all three queued, so they run as one batch.
  absl::Notification queued;
  ASSERT_TRUE(threads.TrySubmit([&queued] { queued.WaitForNotification(); }));
  std::atomic<int> heard{0};
  absl::Notification all_heard;
  for (const char* who : {"bob", "ann", "bob"}) {
    db::GroupCommitter::Work w;
    w.lock_first = who;
    w.first = {"UPDATE seats SET n = n + 1 WHERE k = 1 RETURNING n", {}};
    w.then = [](const db::Result&, int) -> absl::StatusOr<std::vector<db::Statement>> {
      return std::vector<db::Statement>{};
    };
    group.Submit("k", absl::Now() + absl::Seconds(20), std::move(w), [&](absl::Status s) {
      EXPECT_TRUE(s.ok()) << s;
      if (++heard == 3) all_heard.Notify();
    });
  }
  queued.Notify();
  // The batch waits for bob without holding the seats: the leaver takes them.
  ASSERT_TRUE(testing::UntilLockWaiters(url_, 1));
  ASSERT_TRUE((*leaver)->ExecScript("SET lock_timeout = '2s'").ok());
  absl::Status seats = (*leaver)->Exec("SELECT 1 FROM seats WHERE k = 1 FOR UPDATE").status();
  EXPECT_TRUE(seats.ok()) << "the batch held the seats while it waited: " << seats;
  ASSERT_TRUE((*leaver)->ExecScript("COMMIT").ok());
  ASSERT_TRUE(all_heard.WaitForNotificationWithTimeout(absl::Seconds(20)));
  ASSERT_EQ(asked.size(), 1u) << "one batch";
  EXPECT_EQ(asked[0], (std::vector<std::string>{"ann", "bob"})) << "sorted and distinct";
  auto n = (*leaver)->Exec("SELECT n FROM seats WHERE k = 1");
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n->Int(0, 0), 3);
}

TEST_F(Database, GroupCommitCombinesNeighbouringCallersIntoOneStatement) {
  // Callers next to each other in a batch's order that give `args` share one
  // first statement (Combine), in that order, each reading its own row of
  // it. A caller without args is not combined.
  // A combined statement that raises runs again with its callers alone, so
  // only the caller whose own statement raises fails.
  Script("CREATE TABLE taken (v int PRIMARY KEY); INSERT INTO taken VALUES (99)");
  server::Executor threads(1, 8);
  std::vector<std::vector<int>> combined;  // the values of each combined statement
  db::GroupCommitter group(
      *pool_, "combine",
      [&threads](std::function<void()> task) { return threads.TrySubmit(std::move(task)); },
      /*max_batch=*/64, /*max_pending=*/100, nullptr, absl::InfiniteDuration(),
      [&combined](const std::vector<const db::GroupCommitter::Work*>& run) {
        std::vector<int> values;
        for (const auto* w : run) values.push_back(std::stoi(*w->args[0].value()));
        combined.push_back(values);
        return db::Statement{"INSERT INTO taken SELECT unnest($1::int[]) RETURNING v",
                             {absl::StrCat("{", absl::StrJoin(values, ","), "}")}};
      });
  // The one thread is busy until every caller queued, so they form one batch.
  absl::Notification queued;
  ASSERT_TRUE(threads.TrySubmit([&queued] { queued.WaitForNotification(); }));
  struct Caller {
    std::string row;
    int v;
    bool args;
  };
  // Row "b" in arrival order 1, 3, 5, 99 (taken already), 7, and row "a"
  // with 2, 4, then 6 without args, then 8, 10.
  const std::vector<Caller> callers = {
      {"b", 1, true},  {"a", 2, true},  {"b", 3, true}, {"a", 4, true}, {"b", 5, true},
      {"a", 6, false}, {"b", 99, true}, {"a", 8, true}, {"b", 7, true}, {"a", 10, true}};
  std::vector<absl::Status> outcome(callers.size());
  std::atomic<int> heard{0};
  absl::Notification all_heard;
  for (size_t i = 0; i < callers.size(); ++i) {
    const Caller& c = callers[i];
    db::GroupCommitter::Work w;
    w.lock_order = c.row;
    w.first = {"INSERT INTO taken VALUES ($1) RETURNING v", {int32_t{c.v}}};
    if (c.args) w.args = {int32_t{c.v}};
    w.then = [v = c.v](const db::Result& r, int row) -> absl::StatusOr<std::vector<db::Statement>> {
      if (r.Int(row, 0) != v) {
        return absl::InternalError(absl::StrCat("read ", r.Int(row, 0), " for ", v));
      }
      return std::vector<db::Statement>{};
    };
    group.Submit("k", absl::Now() + absl::Seconds(20), std::move(w), [&, i](absl::Status s) {
      outcome[i] = s;
      if (++heard == static_cast<int>(callers.size())) all_heard.Notify();
    });
  }
  queued.Notify();
  ASSERT_TRUE(all_heard.WaitForNotificationWithTimeout(absl::Seconds(20)));
  for (size_t i = 0; i < callers.size(); ++i) {
    if (callers[i].v == 99) {
      EXPECT_TRUE(absl::IsAlreadyExists(outcome[i])) << outcome[i];
    } else {
      EXPECT_TRUE(outcome[i].ok()) << callers[i].v << ": " << outcome[i];
    }
  }
  // Row "a" runs first (lock order): 2, 4 combined, 6 alone, 8, 10 combined;
  // then row "b" combined, which raised, and so ran again alone.
  // Row "a" runs first (lock order): 2, 4 combined, 6 alone, then 8, 10 and
  // row "b" combined, which raised, and so ran again alone (2, 4 combined
  // again with them).
  ASSERT_GE(combined.size(), 2u);
  EXPECT_EQ(combined[0], (std::vector<int>{2, 4}));
  EXPECT_EQ(combined[1], (std::vector<int>{8, 10, 1, 3, 5, 99, 7}));
  for (size_t i = 2; i < combined.size(); ++i) {
    EXPECT_EQ(combined[i], (std::vector<int>{2, 4})) << "combined again after it raised";
  }
  ASSERT_TRUE(db::WithConnection(*pool_, absl::InfiniteFuture(), [](db::Conn& c) {
                auto n = c.Exec("SELECT count(*) FROM taken");
                if (n.ok()) {
                  EXPECT_EQ(n->Int(0, 0), 10) << "99 and the nine callers' values";
                }
                return n.status();
              }).ok());
}

TEST_F(Database, GroupCommitFindsWhoseRowIsHeldWhenACombinedStatementWaitsTooLong) {
  // A combined statement of callers locking rows "a" and "b" waits out the
  // lock wait: another transaction holds "b". The batch runs again with its
  // callers alone: "a"'s commit while "b" is held; "b"'s wait apart for it,
  // then commit in the order they came.
  Script(
      "CREATE TABLE counters (k text PRIMARY KEY, n int NOT NULL);"
      "INSERT INTO counters VALUES ('a', 0), ('b', 0);"
      "CREATE FUNCTION bump(ks text[]) RETURNS SETOF int LANGUAGE plpgsql AS $$ "
      "DECLARE key text; v int; BEGIN FOREACH key IN ARRAY ks LOOP "
      "UPDATE counters SET n = n + 1 WHERE k = key RETURNING n INTO v; "
      "RETURN NEXT v; END LOOP; END $$");
  auto holder = db::Conn::Open(url_, "test");
  ASSERT_TRUE(holder.ok());
  ASSERT_TRUE((*holder)->ExecScript("BEGIN; SELECT 1 FROM counters WHERE k = 'b' FOR UPDATE").ok());
  server::Executor threads(1, 8);
  absl::Mutex mu;
  std::vector<std::vector<std::string>> combined;  // the rows of each combined statement
  auto array = [](const std::vector<std::string>& ks) {
    return absl::StrCat("{", absl::StrJoin(ks, ","), "}");
  };
  db::GroupCommitter group(
      *pool_, "held",
      [&threads](std::function<void()> task) { return threads.TrySubmit(std::move(task)); },
      /*max_batch=*/64, /*max_pending=*/100, nullptr, absl::Milliseconds(100),
      [&](const std::vector<const db::GroupCommitter::Work*>& run) {
        std::vector<std::string> ks;
        for (const auto* w : run) ks.push_back(*w->args[0].value());
        absl::MutexLock lock(&mu);
        combined.push_back(ks);
        return db::Statement{"SELECT * FROM bump($1::text[])", {array(ks)}};
      });
  absl::Notification queued;
  ASSERT_TRUE(threads.TrySubmit([&queued] { queued.WaitForNotification(); }));
  // Arrival order: a, b, a, b; each expects its place on its row.
  const std::vector<std::pair<std::string, int>> callers = {{"a", 1}, {"b", 1}, {"a", 2}, {"b", 2}};
  std::vector<absl::Status> outcome(callers.size());
  std::vector<absl::Notification> heard(callers.size());
  for (size_t i = 0; i < callers.size(); ++i) {
    const auto& [k, place] = callers[i];
    db::GroupCommitter::Work w;
    w.lock_order = k;
    w.first = {absl::StrCat("SELECT * FROM bump('{", k, "}')"), {}};
    w.args = {k};
    w.then = [place = place](const db::Result& r,
                             int row) -> absl::StatusOr<std::vector<db::Statement>> {
      if (r.Int(row, 0) != place) {
        return absl::InternalError(absl::StrCat("read ", r.Int(row, 0), " for ", place));
      }
      return std::vector<db::Statement>{};
    };
    group.Submit("k", absl::Now() + absl::Seconds(20), std::move(w), [&, i](absl::Status s) {
      outcome[i] = s;
      heard[i].Notify();
    });
  }
  queued.Notify();
  for (size_t i : {0, 2}) {
    ASSERT_TRUE(heard[i].WaitForNotificationWithTimeout(absl::Seconds(10)))
        << "row a's caller waited for row b";
    EXPECT_TRUE(outcome[i].ok()) << outcome[i];
  }
  EXPECT_FALSE(heard[1].HasBeenNotified()) << "committed while its row was held";
  EXPECT_FALSE(heard[3].HasBeenNotified()) << "committed while its row was held";
  ASSERT_TRUE((*holder)->ExecScript("COMMIT").ok());
  for (size_t i : {1, 3}) {
    ASSERT_TRUE(heard[i].WaitForNotificationWithTimeout(absl::Seconds(10)));
    EXPECT_TRUE(outcome[i].ok()) << outcome[i];
  }
  absl::MutexLock lock(&mu);
  ASSERT_FALSE(combined.empty());
  EXPECT_EQ(combined[0], (std::vector<std::string>{"a", "a", "b", "b"}));
  ASSERT_TRUE(db::WithConnection(*pool_, absl::InfiniteFuture(), [](db::Conn& c) {
                auto n = c.Exec("SELECT string_agg(k || n, ',' ORDER BY k) FROM counters");
                if (n.ok()) {
                  EXPECT_EQ(n->String(0, 0), "a2,b2");
                }
                return n.status();
              }).ok());
}

TEST_F(Database, GroupCommitAnswersABatchWhileTheNextIsAtTheDatabase) {
  // A hot key's next batch does not wait for the callers of the one before
  // to be answered (a send each): it is sent first, and they are answered
  // while it is at the database. Here the first batch's caller checks, as it
  // is answered, that the second batch already waits at the database (its
  // `done` waits up to 5 s for that, as a real one must not).
  Script(
      "CREATE TABLE seats (k int PRIMARY KEY, n int NOT NULL);"
      "INSERT INTO seats VALUES (1, 0)");
  server::Executor threads(2, 8);
  db::GroupCommitter group(*pool_, "answers", [&threads](std::function<void()> task) {
    return threads.TrySubmit(std::move(task));
  });
  auto holder = db::Conn::Open(url_, "test");
  ASSERT_TRUE(holder.ok());
  ASSERT_TRUE((*holder)
                  ->ExecScript("SELECT pg_advisory_lock(7); BEGIN; "
                               "SELECT 1 FROM seats WHERE k = 1 FOR UPDATE")
                  .ok());
  auto work = [](std::string sql) {
    db::GroupCommitter::Work w;
    w.first = {std::move(sql), {}};
    w.then = [](const db::Result&, int) -> absl::StatusOr<std::vector<db::Statement>> {
      return std::vector<db::Statement>{};
    };
    return w;
  };
  // The first batch waits for the advisory lock, so the second queues
  // behind it; the second waits for the seat the holder keeps.
  absl::Notification first_heard, second_heard;
  bool second_at_the_database = false;
  absl::Status first_status, second_status;
  group.Submit("hot", absl::Now() + absl::Seconds(20), work("SELECT pg_advisory_xact_lock(7)"),
               [&](absl::Status s) {
                 first_status = s;
                 second_at_the_database = testing::UntilLockWaiters(url_, 1);
                 first_heard.Notify();
               });
  ASSERT_TRUE(testing::UntilLockWaiters(url_, 1));
  group.Submit("hot", absl::Now() + absl::Seconds(20),
               work("UPDATE seats SET n = n + 1 WHERE k = 1 RETURNING n"), [&](absl::Status s) {
                 second_status = s;
                 second_heard.Notify();
               });
  ASSERT_TRUE((*holder)->Exec("SELECT pg_advisory_unlock(7)").ok());
  ASSERT_TRUE(first_heard.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_TRUE(first_status.ok()) << first_status;
  EXPECT_TRUE(second_at_the_database)
      << "the first batch's caller was answered before the next batch was sent";
  EXPECT_FALSE(second_heard.HasBeenNotified()) << "the seat is still held";
  ASSERT_TRUE((*holder)->ExecScript("COMMIT").ok());
  ASSERT_TRUE(second_heard.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_TRUE(second_status.ok()) << second_status;
}

TEST_F(Database, StatementsStopAtTheCallersDeadline) {
  // A statement still running at the deadline is cancelled by PostgreSQL
  // (statement_timeout), in a plain transaction and in a group-committed one;
  // a deadline already past runs nothing.
  auto sleepy = [](db::Conn& c) { return c.Exec("SELECT pg_sleep(5)").status(); };
  db::TxOptions o;
  o.deadline = absl::Now() + absl::Milliseconds(300);
  absl::Time start = absl::Now();
  absl::Status s = db::Transact(*pool_, o, sleepy);
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(3)) << "ran past its deadline";
  o.deadline = absl::Now() - absl::Milliseconds(1);
  EXPECT_TRUE(absl::IsDeadlineExceeded(db::Transact(*pool_, o, sleepy)));

  server::Executor threads(1, 8);
  db::GroupCommitter group(*pool_, "deadline", [&threads](std::function<void()> task) {
    return threads.TrySubmit(std::move(task));
  });
  for (absl::Duration left : {absl::Milliseconds(300), absl::Milliseconds(-1)}) {
    db::GroupCommitter::Work w;
    w.first = {"SELECT pg_sleep(5)", {}};
    w.then = [](const db::Result&, int) -> absl::StatusOr<std::vector<db::Statement>> {
      return std::vector<db::Statement>{};
    };
    std::promise<absl::Status> outcome;
    start = absl::Now();
    group.Submit("k", absl::Now() + left, std::move(w),
                 [&outcome](absl::Status st) { outcome.set_value(std::move(st)); });
    absl::Status got = outcome.get_future().get();
    EXPECT_TRUE(absl::IsDeadlineExceeded(got)) << got;
    EXPECT_LT(absl::Now() - start, absl::Seconds(3)) << "ran past its deadline";
  }
}

TEST_F(Database, AServerThatStopsAnsweringCostsACallerItsDeadlineNotItsThread) {
  // PostgreSQL behind a network that drops everything (a stalled relay)
  // keeps its connections open and answers nothing. A transaction, a single
  // read and a group-committed batch each wait until their deadline and
  // Pool::kAnswerGrace, no longer; their connections are dropped; a new one
  // gives up at connect_timeout; and once the network is back the pool
  // works again. A COMMIT without an answer is reported as of unknown
  // outcome. Each call runs on a thread of its own, watched: waiting for
  // ever (until TCP gives up) fails the test instead of hanging it.
  testing::StallingProxy proxy(testing::PortOf(url_));
  db::Pool pool(testing::WithPort(url_, proxy.port()), 3, "libs-test-stalled");
  ASSERT_TRUE(db::Transact(pool, [](db::Conn& c) {
                return c.ExecScript("CREATE TABLE stalled (v int PRIMARY KEY)");
              }).ok());
  {  // three connections open and idle
    std::vector<db::Pool::Lease> open;
    for (int i = 0; i < 3; ++i) {
      auto lease = pool.Acquire(absl::Now() + absl::Seconds(5));
      ASSERT_TRUE(lease.ok()) << lease.status();
      ASSERT_TRUE((*lease)->Exec("SELECT 1").ok());
      open.push_back(*std::move(lease));
    }
  }
  auto watched = [&proxy](const char* what, std::function<absl::Status()> call) {
    const absl::Time start = absl::Now();
    auto outcome = std::async(std::launch::async, std::move(call));
    if (outcome.wait_for(std::chrono::seconds(15)) != std::future_status::ready) {
      ADD_FAILURE() << what << " still waiting after 15 s: its wait is not bounded";
      proxy.Resume();  // lets it end
    }
    absl::Status s = outcome.get();
    EXPECT_LT(absl::Now() - start, absl::Seconds(6)) << what;
    return s;
  };
  auto insert = [](int v) {
    return [v](db::Conn& c) { return c.Exec("INSERT INTO stalled VALUES ($1)", {v}).status(); };
  };
  db::TxOptions soon;
  server::Executor threads(1, 8);
  db::GroupCommitter group(pool, "stalled", [&threads](std::function<void()> task) {
    return threads.TrySubmit(std::move(task));
  });

  proxy.Stall();
  soon.deadline = absl::Now() + absl::Milliseconds(300);
  absl::Status s = watched("Transact", [&] { return db::Transact(pool, soon, insert(1)); });
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  s = watched("WithConnection", [&] {
    return db::WithConnection(pool, absl::Now() + absl::Milliseconds(300),
                              [](db::Conn& c) { return c.Exec("SELECT 1").status(); });
  });
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  s = watched("GroupCommitter", [&] {
    db::GroupCommitter::Work w;
    w.first = {"INSERT INTO stalled VALUES (2) RETURNING v", {}};
    w.then = [](const db::Result&, int) -> absl::StatusOr<std::vector<db::Statement>> {
      return std::vector<db::Statement>{};
    };
    std::promise<absl::Status> done;
    group.Submit("k", absl::Now() + absl::Milliseconds(300), std::move(w),
                 [&done](absl::Status st) { done.set_value(std::move(st)); });
    return done.get_future().get();
  });
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  // Every connection that waited was dropped: the next one is new, and its
  // handshake gets no answer either.
  s = watched("a new connection", [&] {
    return db::WithConnection(pool, absl::Now() + absl::Milliseconds(300),
                              [](db::Conn& c) { return c.Exec("SELECT 1").status(); });
  });
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;

  proxy.Resume();
  soon.deadline = absl::Now() + absl::Seconds(5);
  s = watched("Transact once answered", [&] { return db::Transact(pool, soon, insert(3)); });
  EXPECT_TRUE(s.ok()) << s;

  // The COMMIT is sent, and then nothing comes back.
  soon.deadline = absl::Now() + absl::Milliseconds(500);
  s = watched("COMMIT", [&] {
    return db::Transact(pool, soon, [&](db::Conn& c) {
      absl::Status inserted = insert(4)(c);
      proxy.Stall();
      return inserted;
    });
  });
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_NE(s.message().find("during COMMIT"), std::string::npos) << s;
  proxy.Resume();
  // Likewise a batch's second round trip (its follow-ups and COMMIT), even
  // though the first answer not to come is a follow-up's, not the COMMIT's.
  s = watched("a batch's COMMIT", [&] {
    db::GroupCommitter::Work w;
    w.first = {"INSERT INTO stalled VALUES (5) RETURNING v", {}};
    w.then = [&proxy](const db::Result&, int) -> absl::StatusOr<std::vector<db::Statement>> {
      proxy.Stall();
      return std::vector<db::Statement>{{"INSERT INTO stalled VALUES (6)", {}}};
    };
    std::promise<absl::Status> done;
    group.Submit("k", absl::Now() + absl::Milliseconds(500), std::move(w),
                 [&done](absl::Status st) { done.set_value(std::move(st)); });
    return done.get_future().get();
  });
  EXPECT_TRUE(db::CommitOutcomeUnknown(s)) << s;
  EXPECT_NE(s.message().find("during COMMIT"), std::string::npos) << s;
  proxy.Resume();

  // A statement larger than the sockets' buffers, to a server that stopped
  // reading: sending it waits until the deadline too, not until TCP gives up.
  s = watched("a large statement", [&] {
    return db::WithConnection(pool, absl::Now() + absl::Seconds(5), [&](db::Conn& c) {
      // Prepared while the server answers: only the large send is left.
      absl::Status ready = c.Exec("SELECT length($1)", {"x"}).status();
      if (!ready.ok()) return ready;
      proxy.Stall();
      c.set_answer_deadline(absl::Now() + absl::Milliseconds(300));
      return c.Exec("SELECT length($1)", {std::string(64 << 20, 'x')}).status();
    });
  });
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  proxy.Resume();
  ASSERT_TRUE(db::WithConnection(*pool_, absl::Now() + absl::Seconds(5), [](db::Conn& c) {
                auto r = c.Exec(
                    "SELECT count(*) FILTER (WHERE v < 3), count(*) FILTER (WHERE v = 3) "
                    "FROM stalled");
                if (!r.ok()) return r.status();
                EXPECT_EQ(r->Int(0, 0), 0) << "a statement given up on was kept";
                EXPECT_EQ(r->Int(0, 1), 1);
                return absl::OkStatus();
              }).ok());
}

// A gauge's series, family{label="value"}, as the /metrics page reports it
// (-1: no such series).
double GaugeValue(const std::string& family_name, const std::string& label,
                  const std::string& value) {
  for (const auto& family : metrics::Registry()->Collect()) {
    if (family.name != family_name) continue;
    for (const auto& m : family.metric) {
      for (const auto& l : m.label) {
        if (l.name == label && l.value == value) return m.gauge.value;
      }
    }
  }
  return -1;
}

// connecting_group_commit_waiting{committer}.
double Waiting(const std::string& committer) {
  return GaugeValue("connecting_group_commit_waiting", "committer", committer);
}

TEST_F(Database, GroupCommitWaitersHoldNoThreadAndItShedsBeyondItsBound) {
  // One thread runs every batch, and 300 callers queue at once behind a slow
  // first batch: none of them may hold that thread while it waits (or nothing
  // would finish), the first 100 are served, the rest are refused at once with
  // RESOURCE_EXHAUSTED, and every caller hears exactly once.
  server::Executor one(1, 8);
  db::GroupCommitter group(
      *pool_, "shed",
      [&one](std::function<void()> task) { return one.TrySubmit(std::move(task)); },
      /*max_batch=*/64, /*max_pending=*/100);
  std::atomic<int> ok{0}, shed{0}, other{0}, calls{0};
  absl::Notification all_heard;
  for (int i = 0; i < 300; ++i) {
    db::GroupCommitter::Work w;
    w.first = {i == 0 ? "SELECT pg_sleep(0.3)" : "SELECT 1", {}};
    w.then = [](const db::Result&, int) -> absl::StatusOr<std::vector<db::Statement>> {
      return std::vector<db::Statement>{};
    };
    group.Submit("k", absl::Now() + absl::Seconds(20), std::move(w), [&](absl::Status s) {
      if (s.ok())
        ++ok;
      else if (absl::IsResourceExhausted(s))
        ++shed;
      else
        ++other;
      if (++calls == 300) all_heard.Notify();
    });
  }
  EXPECT_EQ(Waiting("shed"), 100) << "connecting_group_commit_waiting while the batch runs";
  ASSERT_TRUE(all_heard.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_EQ(Waiting("shed"), 0);
  EXPECT_EQ(ok.load(), 100);
  EXPECT_EQ(shed.load(), 200);
  EXPECT_EQ(other.load(), 0);
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(calls.load(), 300) << "a caller heard twice";

  // Once drained it takes work again; with no thread to be had it refuses.
  server::Executor none(1, 1);
  none.Shutdown();
  db::GroupCommitter stuck(*pool_, "stuck", [&none](std::function<void()> task) {
    return none.TrySubmit(std::move(task));
  });
  absl::Status refused;
  db::GroupCommitter::Work w;
  w.first = {"SELECT 1", {}};
  w.then = [](const db::Result&, int) -> absl::StatusOr<std::vector<db::Statement>> {
    return std::vector<db::Statement>{};
  };
  stuck.Submit("k", absl::InfiniteFuture(), std::move(w), [&](absl::Status s) { refused = s; });
  EXPECT_TRUE(absl::IsResourceExhausted(refused)) << refused;
}

// A histogram's series, family{label="value"}: its count, its sum, and how
// many of its observations were at most `at_most` (an upper bound of one
// of its buckets). Count -1: no such series.
struct HistogramReading {
  double count = -1, sum = 0, at_most = 0;
};
HistogramReading HistogramValue(const std::string& family_name, const std::string& label,
                                const std::string& value, double at_most) {
  HistogramReading r;
  for (const auto& family : metrics::Registry()->Collect()) {
    if (family.name != family_name) continue;
    for (const auto& m : family.metric) {
      for (const auto& l : m.label) {
        if (l.name != label || l.value != value) continue;
        r.count = static_cast<double>(m.histogram.sample_count);
        r.sum = m.histogram.sample_sum;
        for (const auto& b : m.histogram.bucket) {
          if (b.upper_bound == at_most) r.at_most = static_cast<double>(b.cumulative_count);
        }
      }
    }
  }
  return r;
}

TEST_F(Database, GroupCommitReportsHowLongCallersQueuedAndHowLongItsTransactionsTook) {
  // A slow first transaction (0.3 s), and nine callers who come while it
  // runs: they are carried by the next one, having queued for most of it.
  // What an operator reads to split a caller's time between the batches
  // before it and its own.
  server::Executor executor(2, 16);
  db::GroupCommitter group(*pool_, "timed", [&executor](std::function<void()> task) {
    return executor.TrySubmit(std::move(task));
  });
  auto work = [](const char* sql) {
    db::GroupCommitter::Work w;
    w.first = {sql, {}};
    w.then = [](const db::Result&, int) -> absl::StatusOr<std::vector<db::Statement>> {
      return std::vector<db::Statement>{};
    };
    return w;
  };
  std::atomic<int> heard{0}, ok{0};
  absl::Notification all_heard;
  auto done = [&](absl::Status s) {
    if (s.ok()) ++ok;
    if (++heard == 10) all_heard.Notify();
  };
  group.Submit("k", absl::Now() + absl::Seconds(20), work("SELECT pg_sleep(0.3)"), done);
  // Once the first transaction sleeps, the rest come.
  auto sleeping = [&] {
    int64_t n = 0;
    (void)db::WithConnection(*pool_, absl::Now() + absl::Seconds(5), [&n](db::Conn& c) {
      auto r = c.Exec(
          "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
          "AND state = 'active' AND query = 'SELECT pg_sleep(0.3)'");
      if (r.ok()) n = r->Int(0, 0);
      return r.status();
    });
    return n == 1;
  };
  ASSERT_TRUE(testing::WaitUntil(sleeping, absl::Seconds(5)));
  for (int i = 0; i < 9; ++i) {
    group.Submit("k", absl::Now() + absl::Seconds(20), work("SELECT 1"), done);
  }
  ASSERT_TRUE(all_heard.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_EQ(ok.load(), 10);

  const HistogramReading queued =
      HistogramValue("connecting_group_commit_queued_seconds", "committer", "timed", 0.1);
  EXPECT_EQ(queued.count, 10) << "one observation per caller";
  EXPECT_EQ(queued.at_most, 1) << "only the first caller was carried within 0.1 s";
  const HistogramReading transactions =
      HistogramValue("connecting_group_commit_transaction_seconds", "committer", "timed", 0.25);
  EXPECT_EQ(transactions.count, 2) << "the slow transaction, then the nine together";
  EXPECT_EQ(transactions.at_most, 1) << "the nine's, quickly";
  EXPECT_GE(transactions.sum, 0.3);
}

// A loopback gRPC server with nothing but `health`, and a client of it.
struct ServedHealth {
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<grpc::health::v1::Health::Stub> stub;
};
ServedHealth Serve(server::HealthService* health) {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(health);
  ServedHealth served{builder.BuildAndStart(), nullptr};
  served.stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  return served;
}

TEST(Health, NotServingUntilSetWatchersHearEachChangeAndShutdownEndsThem) {
  // gRPC's built-in health service answered SERVING for "" from the moment the
  // server listened, before PostgreSQL or NATS were checked: a probe (and once
  // a test, in CI) saw SERVING, then NOT_SERVING.
  namespace hv1 = ::grpc::health::v1;
  server::HealthService health({"connecting.partners.v1.PartnersService"});
  ServedHealth served = Serve(&health);
  ASSERT_NE(served.server, nullptr);
  auto& stub = served.stub;
  auto check = [&](const std::string& name) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    hv1::HealthCheckRequest req;
    req.set_service(name);
    hv1::HealthCheckResponse resp;
    grpc::Status s = stub->Check(&ctx, req, &resp);
    return s.ok() ? static_cast<int>(resp.status()) : -s.error_code();
  };
  EXPECT_EQ(check(""), hv1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(check("connecting.partners.v1.PartnersService"), hv1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(check("liveness"), hv1::HealthCheckResponse::SERVING);
  EXPECT_EQ(check("connecting.nothing.v1.Nothing"), -grpc::StatusCode::NOT_FOUND);

  // Two watchers: one of the server, one of an unknown name.
  grpc::ClientContext watch_ctx, unknown_ctx;
  hv1::HealthCheckRequest req;
  auto watch = stub->Watch(&watch_ctx, req);
  req.set_service("connecting.nothing.v1.Nothing");
  auto unknown = stub->Watch(&unknown_ctx, req);
  hv1::HealthCheckResponse resp;
  ASSERT_TRUE(watch->Read(&resp));
  EXPECT_EQ(resp.status(), hv1::HealthCheckResponse::NOT_SERVING);
  ASSERT_TRUE(unknown->Read(&resp));
  EXPECT_EQ(resp.status(), hv1::HealthCheckResponse::SERVICE_UNKNOWN);

  health.SetServing(true);
  EXPECT_EQ(check(""), hv1::HealthCheckResponse::SERVING);
  EXPECT_EQ(check("connecting.partners.v1.PartnersService"), hv1::HealthCheckResponse::SERVING);
  ASSERT_TRUE(watch->Read(&resp));
  EXPECT_EQ(resp.status(), hv1::HealthCheckResponse::SERVING);
  health.SetServing(true);  // no change: nothing sent
  health.SetServing(false);
  ASSERT_TRUE(watch->Read(&resp));
  EXPECT_EQ(resp.status(), hv1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(check("liveness"), hv1::HealthCheckResponse::SERVING) << "liveness is the process's";
  health.SetServing(true);
  ASSERT_TRUE(watch->Read(&resp));
  EXPECT_EQ(resp.status(), hv1::HealthCheckResponse::SERVING);
  EXPECT_EQ(health.watchers(), 2);

  // Shutdown: NOT_SERVING for good, each watcher told and ended, so the
  // server's own shutdown does not wait out its deadline for them.
  health.Shutdown();
  ASSERT_TRUE(watch->Read(&resp));
  EXPECT_EQ(resp.status(), hv1::HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(watch->Read(&resp));
  EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_FALSE(unknown->Read(&resp));
  EXPECT_EQ(unknown->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  health.SetServing(true);
  EXPECT_EQ(check(""), hv1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(check("liveness"), hv1::HealthCheckResponse::NOT_SERVING);
  // A watch begun after the shutdown hears NOT_SERVING and ends.
  grpc::ClientContext late_ctx;
  req.set_service("");
  auto late = stub->Watch(&late_ctx, req);
  ASSERT_TRUE(late->Read(&resp));
  EXPECT_EQ(resp.status(), hv1::HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(late->Read(&resp));
  EXPECT_EQ(late->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  for (int i = 0; i < 200 && health.watchers() > 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(health.watchers(), 0);

  // A client that goes away mid-watch is let go without a shutdown.
  server::HealthService other({});
  ServedHealth served2 = Serve(&other);
  ASSERT_NE(served2.server, nullptr);
  auto& stub2 = served2.stub;
  {
    grpc::ClientContext ctx;
    req.set_service("");
    auto w = stub2->Watch(&ctx, req);
    ASSERT_TRUE(w->Read(&resp));
    EXPECT_EQ(other.watchers(), 1);
    ctx.TryCancel();
    w->Finish();
  }
  for (int i = 0; i < 200 && other.watchers() > 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(other.watchers(), 0);
  served2.server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  served.server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

TEST(WireReply, SendsTheBytesOfTheReplyItWasMadeFrom) {
  namespace pv1 = ::connecting::partners::v1;
  // What gRPC sends for a reply: its serialization of the reply type (the
  // service's .api.h gives it), from the reply the handler filled.
  auto sent = [](const pv1::ListOrganisationsResponse& msg) {
    grpc::ByteBuffer bb;
    bool own = false;
    EXPECT_TRUE(
        grpc::SerializationTraits<pv1::ListOrganisationsResponse>::Serialize(msg, &bb, &own).ok());
    std::vector<grpc::Slice> slices;
    EXPECT_TRUE(bb.Dump(&slices).ok());
    std::string bytes;
    for (const grpc::Slice& s : slices) {
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    return bytes;
  };
  pv1::ListOrganisationsResponse reply;
  for (int i = 0; i < 3; ++i) {
    pv1::Organisation* o = reply.add_organisations();
    o->set_id(absl::StrCat("00000000-0000-0000-0000-00000000000", i));
    o->set_name(absl::StrCat("Ysbyty Gwynedd ŵ ", i));
    o->set_sector(pv1::SECTOR_ACUTE_TRUST);
    o->set_region(pv1::REGION_SOUTH_WEST);
    o->set_description(std::string(300, 'd'));
    o->mutable_create_time()->set_seconds(1700000000 + i);
    o->mutable_create_time()->set_nanos(123);
  }
  reply.set_next_page_token("token");
  // A reply made in the process is serialized as protobuf does it.
  EXPECT_EQ(sent(reply), reply.SerializeAsString());
  server::WireReply wire(reply);
  pv1::ListOrganisationsResponse out;
  out.set_next_page_token("something left over");
  wire.CopyTo(&out);
  EXPECT_EQ(sent(out), reply.SerializeAsString());
  pv1::ListOrganisationsResponse back;
  ASSERT_TRUE(back.ParseFromString(sent(out)));
  EXPECT_EQ(back.organisations(2).name(), "Ysbyty Gwynedd ŵ 2");
  EXPECT_EQ(back.organisations(1).create_time().seconds(), 1700000001);
  EXPECT_EQ(back.next_page_token(), "token");
  // Less than the message it came from: the cache's budget holds more replies.
  EXPECT_LT(wire.SpaceUsedLong(), reply.SpaceUsedLong());
  // A copy shares the bytes.
  server::WireReply copy = wire;
  EXPECT_EQ(copy.SpaceUsedLong(), wire.SpaceUsedLong());
  pv1::ListOrganisationsResponse empty_reply;
  server::WireReply none(empty_reply);
  none.CopyTo(&out);
  EXPECT_EQ(sent(out), "");
  // A reply whose unknown fields are something else is serialized whole.
  pv1::ListOrganisationsResponse other = reply;
  other.GetReflection()->MutableUnknownFields(&other)->AddVarint(server::WireReply::kField, 7);
  EXPECT_EQ(sent(other), other.SerializeAsString());
}

TEST_F(Database, ReadCacheStaysWithinItsByteBudget) {
  // Entries differ in size (a page of organisations against one), so the
  // budget is in bytes: filling the cache with far more than it may hold
  // keeps it under the budget, keeps what was put last, and refuses a value
  // larger than the whole budget without dropping the rest for it.
  using Value = google::protobuf::StringValue;
  const std::string name = "test-" + testing::RandomSuffix();
  constexpr size_t kBudget = 100 * 1024;
  db::NotifyCache<Value> cache(name, url_, "test_cache_" + testing::RandomSuffix(), kBudget);
  cache.Start();
  for (int i = 0; i < 500 && !cache.listening(); ++i) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_TRUE(cache.listening());
  auto value = [](size_t n) {
    Value v;
    v.set_value(std::string(n, 'x'));
    return v;
  };

  for (int i = 0; i < 200; ++i) {  // 200 × 10 KB into 100 KB
    cache.Put(absl::StrCat("k", i), value(10 * 1024), cache.Generation());
    auto [entries, bytes] = cache.EntriesAndBytes();
    ASSERT_LE(bytes, kBudget) << "after " << i + 1 << " puts";
    ASSERT_GE(entries, 1u);
  }
  auto [entries, bytes] = cache.EntriesAndBytes();
  EXPECT_GE(entries, 5u) << "a budget of ten values should hold most of ten";
  EXPECT_LE(entries, 9u) << "each value costs more than its 10 KB of text";
  ASSERT_TRUE(cache.Get("k199").has_value());
  EXPECT_EQ(cache.Get("k199")->value().size(), 10u * 1024);
  EXPECT_EQ(GaugeValue("connecting_cache_bytes", "cache", name), static_cast<double>(bytes));
  EXPECT_EQ(GaugeValue("connecting_cache_entries", "cache", name), static_cast<double>(entries));

  // The same key again replaces its entry: counted once.
  cache.Put("k199", value(10 * 1024), cache.Generation());
  EXPECT_EQ(cache.EntriesAndBytes(), std::make_pair(entries, bytes));

  // Too large to keep at all: not stored, and nothing else evicted for it.
  cache.Put("huge", value(2 * kBudget), cache.Generation());
  EXPECT_FALSE(cache.Get("huge").has_value());
  EXPECT_EQ(cache.EntriesAndBytes(), std::make_pair(entries, bytes));

  // An invalidated key gives its bytes back; a value read before the
  // invalidation is not stored after it.
  uint64_t before = cache.Generation();
  cache.Invalidate("k199");
  EXPECT_FALSE(cache.Get("k199").has_value());
  EXPECT_LT(cache.EntriesAndBytes().second, bytes);
  cache.Put("k199", value(10), before);
  EXPECT_FALSE(cache.Get("k199").has_value());
  cache.Stop();
}

TEST_F(Database, ACacheWhoseListenerFallsSilentIsBypassedWithinSeconds) {
  // The listening connection dies without a reset (a failover, the network
  // gone): no change would be heard again, so the cache must notice the
  // silence itself, empty and bypass itself, and fill again once LISTEN is
  // back in place.
  using Value = google::protobuf::StringValue;
  testing::StallingProxy proxy(testing::PortOf(url_));
  db::NotifyCache<Value> cache("test-" + testing::RandomSuffix(),
                               testing::WithPort(url_, proxy.port()),
                               "test_cache_" + testing::RandomSuffix(), 1 << 20);
  cache.Start();
  auto becomes = [&cache](bool listening, absl::Duration within) {
    return testing::WaitUntil([&] { return cache.listening() == listening; }, within);
  };
  ASSERT_TRUE(becomes(true, absl::Seconds(5)));
  Value v;
  v.set_value("kept");
  cache.Put("k", v, cache.Generation());
  ASSERT_TRUE(cache.Get("k").has_value());

  proxy.Stall();
  const absl::Time stalled = absl::Now();
  EXPECT_TRUE(becomes(false, absl::Seconds(10))) << "a silent listener is trusted";
  EXPECT_LT(absl::Now() - stalled, absl::Seconds(5));
  EXPECT_FALSE(cache.Get("k").has_value()) << "served from a cache that hears nothing";
  proxy.Resume();
  EXPECT_TRUE(becomes(true, absl::Seconds(15)));
  EXPECT_FALSE(cache.Get("k").has_value()) << "what was cached before may have missed a change";
  cache.Put("k", v, cache.Generation());
  EXPECT_TRUE(cache.Get("k").has_value());
  cache.Stop();
}

}  // namespace
}  // namespace connecting
