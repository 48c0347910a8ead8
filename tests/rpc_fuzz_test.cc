// Random requests to every RPC of both services: whatever arrives, the answer
// is a precise status (never INTERNAL, UNKNOWN or a dropped connection), an
// INVALID_ARGUMENT names its field ("field: rule") and carries the same fields
// and rules in its BadRequest, the services keep
// serving, and what is stored stays consistent: every site's seat counters
// equal its bookings, and every event reaches the stream.
//
// The requests are random messages (tests/random_message.h) whose strings are
// drawn, by field name, from values near the rules: the ids of real
// organisations, contacts, offers, participants, sessions and bookings, other
// UUIDs and non-UUIDs, dates around today and impossible ones, times, emails,
// etags, page tokens, field-mask paths, long and odd text; every other one
// is tame (plausible values only), to get past validation more often. Each
// RPC gets kPerMethod of them, under an admin's token or, one time in four, under a
// viewer's, a participant's or a partner's, then a few of garbage bytes.
// The seed is printed with any failure.
#include <google/protobuf/descriptor.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "libs/db/db.h"
#include "tests/harness.h"
#include "tests/random_message.h"
#include "tests/scheduling_common.h"

namespace connecting::testing {
namespace {

namespace pv1 = ::connecting::partners::v1;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::MethodDescriptor;
using google::protobuf::ServiceDescriptor;
using server::Role;

constexpr int kPerMethod = 40;
constexpr int kMutations = 30;  // per method, from requests it accepted
constexpr uint32_t kSeed = 20261130;  // CI's; CONNECTING_TEST_SEED explores others

// "field: rule" (field paths are lower-case, with dots and [i]).
bool NamesAField(const std::string& message) {
  size_t colon = message.find(": ");
  if (colon == std::string::npos || colon == 0) return false;
  for (size_t i = 0; i < colon; ++i) {
    char c = message[i];
    if (!(absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '_' || c == '.' || c == '[' ||
          c == ']')) {
      return false;
    }
  }
  return true;
}

// Whether `message`'s field path ("session.sites[0].capacity") names a field
// of `type`, so that a caller can find what to fix.
bool IsFieldOf(const google::protobuf::Descriptor* type, const std::string& message) {
  std::string path = message.substr(0, message.find(": "));
  for (absl::string_view part : absl::StrSplit(path, '.')) {
    if (type == nullptr) return false;
    absl::string_view name = part.substr(0, part.find('['));
    const FieldDescriptor* f = type->FindFieldByName(std::string(name));
    if (f == nullptr) return false;
    if (part.find('[') != absl::string_view::npos && !f->is_repeated()) return false;
    type = f->message_type();
  }
  return true;
}

class RpcFuzz : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { fx_ = new SchedulingFixture(); }
  static void TearDownTestSuite() {
    delete fx_;
    fx_ = nullptr;
  }
  static SchedulingFixture* fx_;
};
SchedulingFixture* RpcFuzz::fx_ = nullptr;

// Strings near the rules, by the field's name.
class PlausibleText {
 public:
  // ids: (a word in field or message names, such as "session", an id of that kind).
  PlausibleText(RandomFiller& fill, std::vector<std::pair<std::string, std::string>> ids)
      : fill_(fill), ids_(std::move(ids)) {}

  std::string operator()(const FieldDescriptor* f) {
    const std::string& name = f->name();
    if (!fill_.tame && fill_.Chance(8)) return fill_.OddText();
    if (!fill_.tame && fill_.Chance(12)) return "";
    if (name == "request_id") {
      // Now and then one already used: the retry of an earlier request.
      return Either({absl::StrCat("req-", fill_.Pick(400))}, {"has spaces", std::string(65, 'r')});
    }
    if (name == "id" || absl::EndsWith(name, "_id") || absl::EndsWith(name, "_ids")) {
      // The id of the kind the field names ("session_id", or "id" in
      // GetSessionRequest or Session) two times in three when tame.
      std::string kind = name == "id" ? f->containing_type()->name() : name;
      for (const auto& [word, id] : ids_) {
        if (absl::StrContains(absl::AsciiStrToLower(kind), word) && !fill_.Chance(3)) return id;
      }
      switch (fill_.tame ? 3 + fill_.Pick(3) : fill_.Pick(6)) {
        case 0:
          return "not-a-uuid";
        case 1:
          return absl::StrCat(ids_[fill_.Pick(ids_.size())].second, "x");
        case 3:
          return "00000000-0000-4000-8000-000000000000";  // well formed, unknown
        default:
          return ids_[fill_.Pick(ids_.size())].second;
      }
    }
    if (absl::StrContains(name, "date")) {
      return Either({DateIn(14 + static_cast<int>(fill_.Pick(40))), DateIn(60)},
                    {DateIn(static_cast<int>(fill_.Pick(60)) - 20), DateIn(400), DateIn(4000),
                     "2027-02-30", "1999-12-31", "9999-12-31", "2027-1-5", "tomorrow"});
    }
    if (absl::EndsWith(name, "_time") || name == "time") {
      return Either({"09:00", "17:30", "13:00"},
                    {"00:00", "23:59", "24:00", "25:61", "9am", "09:00:00"});
    }
    if (absl::StrContains(name, "email")) {
      return Either({absl::StrCat("someone", fill_.Pick(100000), "@example.org")},
                    {"no-at-sign", "a@b", "@example.org", std::string(300, 'a') + "@example.org"});
    }
    if (name == "etag") return Either({"1", "2"}, {"0", "-1", "99999999999999999999"});
    if (name == "page_token") return Either({"", page_token_}, {"AAAA", "not base64!"});
    if (name == "paths") {
      return Either(
          {"name", "display_name", "email", "status", "capacity", "title", "sites", "grade",
           "directorate", "description", "phone", "sector", "region", "ods_code"},
          {"etag", "id", "nonsense", ""});
    }
    if (name == "ods_code") {
      return Either({absl::StrCat("R", fill_.Pick(10), "X", fill_.Pick(10))}, {"bad code", "rx1"});
    }
    if (name == "phone") return Either({"+44 20 7946 0000", "020 7946 0000"}, {"phone"});
    if (name == "site") return Either({"", "Leeds", "London"}, {"Nowhere"});
    if (absl::StrContains(name, "link")) {
      return Either({"https://meet.example.org/connecting"}, {"ftp://x", "not a link"});
    }
    return Either({"Ward 7, St Elsewhere", "Primary Care", "A day with the district nurses"},
                  {std::string(1 + fill_.Pick(5000), 'w'), fill_.OddText()});
  }

  void AddPageToken(const std::string& t) {
    if (!t.empty()) page_token_ = t;
  }

 private:
  template <typename T>
  const T& Pick(const std::vector<T>& v) {
    return v[fill_.Pick(static_cast<uint32_t>(v.size()))];
  }
  // One of `good`, or when not tame one of either list.
  std::string Either(std::vector<std::string> good, const std::vector<std::string>& bad) {
    if (!fill_.tame) good.insert(good.end(), bad.begin(), bad.end());
    return Pick(good);
  }

  RandomFiller& fill_;
  std::vector<std::pair<std::string, std::string>> ids_;
  std::string page_token_ = "eyJ4Ijoie30";  // the last real one seen
};

TEST_F(RpcFuzz, EveryRpcAnswersRandomRequestsWithAPreciseStatusAndKeepsItsData) {
  SchedulingFixture& fx = *fx_;
  // Something real to point at.
  std::string org = fx.CreatePartner("Fuzz Trust");
  std::string host = fx.hosts[org];
  sv1::Participant p = Register(fx, "FZ0001");
  sv1::Session s = NewSession(fx, org, 3, DateIn(14));
  sv1::Booking b;
  ASSERT_TRUE(Book(fx, s.id(), p.id(), &b).ok());
  pv1::Offer offer;
  {
    pv1::CreateOfferRequest req;
    pv1::Offer* o = req.mutable_offer();
    o->set_organisation_id(org);
    o->set_title("Shadow a ward manager");
    o->set_setting(pv1::SETTING_COMMUNITY_SERVICE);
    o->set_capacity_per_day(2);
    o->add_weekdays(pv1::WEEKDAY_TUESDAY);
    o->set_host_contact_id(host);
    grpc::Status st = fx.partners_stub->CreateOffer(Ctx(fx.admin).get(), req, &offer);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  std::vector<std::pair<std::string, std::string>> ids = {
      {"organisation", org},  {"contact", host},     {"participant", p.id()},
      {"session", s.id()},    {"booking", b.id()},   {"offer", offer.id()},
      {"attendance", b.id()}, {"reschedule", b.id()}};

  const uint32_t seed = TestSeed(kSeed);
  RandomFiller fill(seed);
  PlausibleText text(fill, ids);
  fill.text = [&](const FieldDescriptor* f) { return text(f); };
  const std::string tokens[] = {fx.admin,
                                fx.admin,
                                fx.admin,
                                Token(Role::kViewer, "viewer"),
                                Token(Role::kParticipant, p.id()),
                                Token(Role::kPartner, "host", org)};

  struct Target {
    const ServiceDescriptor* service;
    std::shared_ptr<grpc::Channel> channel;
  };
  const Target targets[] = {
      // Scheduling first: partners' archiving reaches scheduling too.
      {sv1::Session::descriptor()->file()->FindServiceByName("SchedulingService"),
       fx.scheduling->channel()},
      {pv1::Organisation::descriptor()->file()->FindServiceByName("PartnersService"),
       fx.partners->channel()},
  };
  std::map<grpc::StatusCode, int> codes;
  int calls = 0;
  for (const Target& t : targets) {
    ASSERT_NE(t.service, nullptr);
    // Those that end something last, so that the others meet live things.
    std::vector<const MethodDescriptor*> methods;
    for (int m = 0; m < t.service->method_count(); ++m) methods.push_back(t.service->method(m));
    std::stable_partition(methods.begin(), methods.end(), [](const MethodDescriptor* m) {
      for (const char* verb :
           {"Deactivate", "Archive", "Pause", "Cancel", "Remove", "Withdraw", "Complete"}) {
        if (absl::StartsWith(m->name(), verb)) return false;
      }
      return true;
    });
    for (const MethodDescriptor* method : methods) {
      const std::string path = absl::StrCat("/", t.service->full_name(), "/", method->name());
      const Message* prototype =
          google::protobuf::MessageFactory::generated_factory()->GetPrototype(method->input_type());
      ASSERT_NE(prototype, nullptr) << path;
      // Requests this method accepted, for the mutation phase.
      std::vector<std::unique_ptr<Message>> accepted;
      for (int i = 0; i < kPerMethod + 3 + kMutations; ++i) {
        const bool garbage = i >= kPerMethod && i < kPerMethod + 3;
        const bool mutation = i >= kPerMethod + 3;
        if (mutation && accepted.empty()) break;
        std::string bytes;
        std::string shown;
        std::unique_ptr<Message> req;
        if (garbage) {
          for (int n = 1 + fill.Pick(40); n > 0; --n)
            bytes.push_back(static_cast<char>(fill.Pick(256)));
          shown = "(garbage bytes)";
        } else {
          if (mutation) {  // one field of an accepted request changed
            req.reset(accepted[fill.Pick(static_cast<uint32_t>(accepted.size()))]->New());
            req->CopyFrom(*accepted[fill.Pick(static_cast<uint32_t>(accepted.size()))]);
            fill.MutateOne(req.get());
          } else {
            req.reset(prototype->New());
            fill.tame = i % 2 == 1;  // every other request: plausible values only
            fill.Fill(req.get());
          }
          bytes = req->SerializeAsString();
          shown = req->ShortDebugString().substr(0, 2000);
        }
        const std::string& token = tokens[!mutation && fill.Chance(4) ? 3 + fill.Pick(3) : 0];
        std::string reply;
        grpc::Status st = RawCall(t.channel, path, bytes, token, &reply);
        ++calls;
        ++codes[st.error_code()];
        const std::string where =
            absl::StrCat(path, " (seed ", seed, ", call ", i, "): ", st.error_code(), " ",
                         st.error_message(), "\n  request: ", shown);
        if (!st.ok()) {
          // Every error names its cause for programs: exactly one ErrorInfo
          // (AIP-193), with this service's domain.
          ErrorDetails d = DetailsOf(st);
          EXPECT_EQ(d.error_infos, 1) << where;
          EXPECT_FALSE(d.reason.empty()) << "an error without a reason: " << where;
          EXPECT_TRUE(absl::StartsWith(d.domain, "connecting.")) << where;
          // Nor does any error carry what the database said (its constraints,
          // tables, the values stored): that stays in the server's log.
          for (const char* words : {"ERROR:", "DETAIL:", "violates", "constraint \"", "postgres"}) {
            EXPECT_FALSE(absl::StrContains(st.error_message(), words)) << where;
          }
        }
        switch (st.error_code()) {
          case grpc::StatusCode::NOT_FOUND: {
            // A program learns which resource from the ResourceInfo.
            ErrorDetails d = DetailsOf(st);
            EXPECT_FALSE(d.resource_type.empty()) << "NOT_FOUND without a ResourceInfo: " << where;
            EXPECT_EQ(absl::StrCat(d.resource_type, " ", d.resource_name, " not found"),
                      st.error_message())
                << where;
            break;
          }
          case grpc::StatusCode::OK:
          case grpc::StatusCode::ALREADY_EXISTS:
          case grpc::StatusCode::FAILED_PRECONDITION:
          case grpc::StatusCode::ABORTED:
          case grpc::StatusCode::PERMISSION_DENIED:
          case grpc::StatusCode::OUT_OF_RANGE:
            break;
          case grpc::StatusCode::INVALID_ARGUMENT:
            EXPECT_TRUE(NamesAField(st.error_message()) || garbage) << where;
            EXPECT_TRUE(garbage || IsFieldOf(method->input_type(), st.error_message()))
                << "names no field of " << method->input_type()->full_name() << ": " << where;
            if (!garbage) {
              // A program reads the same fields and rules from the BadRequest.
              std::vector<std::string> said;
              for (const auto& [field, rule] : DetailsOf(st).fields) {
                said.push_back(absl::StrCat(field, ": ", rule));
                EXPECT_TRUE(IsFieldOf(method->input_type(), said.back()))
                    << "a violation names no field of " << method->input_type()->full_name() << ": "
                    << said.back() << "\n  " << where;
              }
              EXPECT_EQ(absl::StrJoin(said, "; "), st.error_message())
                  << "the BadRequest does not say what the message says: " << where;
            }
            break;
          default:  // INTERNAL, UNKNOWN, UNAVAILABLE (a crash), DEADLINE_EXCEEDED (a hang)...
            ADD_FAILURE() << where;
        }
        if (st.ok() && req != nullptr && !mutation && accepted.size() < 6) {
          accepted.push_back(std::move(req));
        }
        if (st.ok() && absl::StartsWith(method->name(), "List")) {
          // Feed real page tokens back in, so that reuse across filters is tried.
          std::unique_ptr<Message> resp(google::protobuf::MessageFactory::generated_factory()
                                            ->GetPrototype(method->output_type())
                                            ->New());
          if (resp->ParseFromString(reply)) {
            const FieldDescriptor* f = resp->GetDescriptor()->FindFieldByName("next_page_token");
            if (f != nullptr) text.AddPageToken(resp->GetReflection()->GetString(*resp, f));
          }
        }
      }
    }
  }
  // Both still serve, and every accepted request was judged, not all refused.
  EXPECT_EQ(fx.partners->Health(), 1);
  EXPECT_EQ(fx.scheduling->Health(), 1);
  EXPECT_GT(calls, 1000);
  EXPECT_GT(codes[grpc::StatusCode::OK], 50);

  // What is stored is consistent: seats match bookings, and the outboxes drain.
  auto conn = db::Conn::Open(fx.scheduling_db, "rpc_fuzz_test");
  ASSERT_TRUE(conn.ok()) << conn.status();
  auto wrong = (*conn)->Exec(
      "SELECT ss.session_id::text || '/' || ss.site FROM session_sites ss WHERE "
      "ss.confirmed <> (SELECT count(*) FROM bookings b WHERE b.session_id = ss.session_id "
      "AND b.site = ss.site AND b.status = 1) OR ss.waitlisted <> (SELECT count(*) FROM "
      "bookings b WHERE b.session_id = ss.session_id AND b.site = ss.site AND b.status = 2)");
  ASSERT_TRUE(wrong.ok()) << wrong.status();
  EXPECT_EQ(wrong->rows(), 0) << "counters differ from bookings at " << wrong->String(0, 0);
  for (const std::string& url : {fx.scheduling_db, fx.partners_db}) {
    EXPECT_TRUE(WaitForOutboxDrained(url)) << url << ": events still waiting in the outbox";
  }

  // The alerts and the dashboard (deploy/k8s/monitoring) watch metrics that
  // exist: every connecting_* name they use, and every label they group or
  // match by, is on the services' /metrics pages now that everything has run.
  std::string scraped = HttpGet(fx.partners->metrics_port(), "/metrics") +
                        HttpGet(fx.scheduling->metrics_port(), "/metrics");
  ASSERT_NE(scraped.find("connecting_grpc_requests_total{"), std::string::npos) << scraped;
  const std::string rule_text =
      ReadFile(std::string(SOURCE_DIR) + "/deploy/k8s/monitoring/prometheusrule.yaml") +
      ReadFile(std::string(SOURCE_DIR) + "/deploy/k8s/monitoring/dashboard.json");
  std::set<std::string> names, labels;
  std::regex metric("connecting_[a-z_]+"), by("by \\(([a-z_, ]+)\\)"), matcher("\\{([a-z_]+)=");
  for (std::sregex_iterator m(rule_text.begin(), rule_text.end(), metric), end; m != end; ++m) {
    names.insert(m->str());
  }
  for (std::sregex_iterator m(rule_text.begin(), rule_text.end(), by), end; m != end; ++m) {
    for (absl::string_view l : absl::StrSplit((*m)[1].str(), ',', absl::SkipWhitespace())) {
      labels.insert(std::string(absl::StripAsciiWhitespace(l)));
    }
  }
  for (std::sregex_iterator m(rule_text.begin(), rule_text.end(), matcher), end; m != end; ++m) {
    labels.insert((*m)[1].str());
  }
  for (const char* added_by_scraping : {"service", "pod", "system"})
    labels.erase(added_by_scraping);
  EXPECT_GE(names.size(), 7u);
  for (const std::string& n : names) {
    EXPECT_NE(scraped.find("\n" + n), std::string::npos) << n << " is not exported";
  }
  for (const std::string& l : labels) {
    EXPECT_NE(scraped.find(l + "=\""), std::string::npos) << "no metric has label " << l;
  }

  std::string summary;
  for (const auto& [code, n] : codes) absl::StrAppend(&summary, " ", code, ":", n);
  std::printf("%d calls; by status code:%s\n", calls, summary.c_str());
}

}  // namespace
}  // namespace connecting::testing
