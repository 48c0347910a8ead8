// Every list filter of both services reads about as many rows as a page
// returns (and an attendance record, at the end, reads about its chains'
// neighbours), however rare the value asked for and wherever it falls in the
// list's order: an index in the list's own order serves each filter. Without
// one, a page of a rare value walks the whole order (an empty directorate read
// every participant) and grows with the table, not the page.
//
// Each database is migrated by its service's binary, filled with tens of
// thousands of rows by SQL, and each list's statement (the store's own, as
// the service runs it) is run in a transaction whose per-table counters
// (pg_stat_get_xact_*) say how many index entries and rows it read, with the
// plan PostgreSQL makes for the values given and with the generic plan a
// prepared statement may settle on.
#include <gtest/gtest.h>

#include <functional>

#include "absl/strings/str_cat.h"
#include "libs/db/db.h"
#include "services/partners/store.h"
#include "services/scheduling/store.h"
#include "tests/harness.h"

namespace connecting::testing {
namespace {

constexpr int kPage = 51;  // a page of 50, read with one more row to know whether more follow
// At most this many index entries and rows read per row returned (a session
// reads its sites too), plus a few.
constexpr int64_t kReadsPerRow = 5;
constexpr int64_t kSlack = 20;

// Index entries and rows the transaction read so far, over the tables and
// indexes of the schema.
int64_t RowsRead(db::Conn& c) {
  auto r = c.Exec(
      "SELECT coalesce(sum(pg_stat_get_xact_tuples_returned(oid) + "
      "pg_stat_get_xact_tuples_fetched(oid)), 0)::bigint FROM pg_class "
      "WHERE relnamespace = 'public'::regnamespace");
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? r->Int(0, 0) : -1;
}

// What `run` returned and the index entries and rows it read, in a
// transaction rolled back after it (nothing it writes stays).
struct Reads {
  absl::StatusOr<int> result;
  int64_t read;
};
Reads ReadsOf(db::Conn& c, const std::function<absl::StatusOr<int>(db::Conn&)>& run) {
  if (absl::Status s = c.ExecScript("BEGIN"); !s.ok()) return {s, 0};
  const int64_t before = RowsRead(c);
  Reads out{run(c), 0};
  out.read = RowsRead(c) - before;
  if (absl::Status s = c.ExecScript("ROLLBACK"); !s.ok()) out.result = s;
  return out;
}

std::unique_ptr<db::Conn> Migrated(const char* binary, const std::string& url,
                                   const std::string& fill) {
  OneShot m = RunOnce(binary, {"--migrate"}, {{"DATABASE_URL", url}}, "migrate");
  EXPECT_EQ(m.code, 0) << m.log;
  auto c = db::Conn::Open(url, "test");
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return nullptr;
  absl::Status s = (*c)->ExecScript(fill + "; ANALYZE");
  EXPECT_TRUE(s.ok()) << s;
  // Every row read counted in this backend: no parallel workers.
  EXPECT_TRUE((*c)->ExecScript("SET max_parallel_workers_per_gather = 0").ok());
  return std::move(*c);
}

// Runs `list` (returning how many rows it gave) under both plan modes and
// expects `want` rows, read within the bound (`per_row` for each row
// returned, and `passed_over` more).
void ExpectReadInProportion(db::Conn& c, const std::string& what, int want,
                            const std::function<absl::StatusOr<int>(db::Conn&)>& list,
                            int64_t per_row = kReadsPerRow, int64_t passed_over = 0) {
  for (const char* mode : {"force_custom_plan", "force_generic_plan"}) {
    SCOPED_TRACE(absl::StrCat(what, " (", mode, ")"));
    ASSERT_TRUE(c.ExecScript(absl::StrCat("SET plan_cache_mode = ", mode)).ok());
    Reads rows = ReadsOf(c, list);
    ASSERT_TRUE(rows.result.ok()) << rows.result.status();
    EXPECT_EQ(*rows.result, want);
    EXPECT_LE(rows.read, per_row * want + passed_over + kSlack) << *rows.result << " rows returned";
  }
}

template <class T>
absl::StatusOr<int> Count(const absl::StatusOr<std::vector<T>>& rows) {
  if (!rows.ok()) return rows.status();
  return static_cast<int>(rows->size());
}

// 30,000 organisations: one in a hundred archived, all named "Zeal …" (after
// every other name), one in a hundred paused; 30,000 offers, one in a hundred
// withdrawn and titled last; a contact at each organisation, 2,000 at the
// first.
constexpr char kPartnersFill[] = R"sql(
INSERT INTO organisations (name, sector, region, status)
SELECT CASE WHEN i % 100 = 0 THEN 'Zeal ' ELSE 'Trust ' END || lpad(i::text, 6, '0'),
       1 + i % 8, 1 + i % 9, CASE WHEN i % 100 = 0 THEN 3 WHEN i % 100 = 1 THEN 2 ELSE 1 END
FROM generate_series(1, 30000) i;
INSERT INTO offers (organisation_id, title, setting, capacity_per_day, weekdays, state)
SELECT id, CASE WHEN n % 100 = 0 THEN 'Zz offer ' ELSE 'Offer ' END || lpad(n::text, 6, '0'),
       1, 5, '{1}', CASE WHEN n % 100 = 0 THEN 3 ELSE 2 END
FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM organisations) o;
INSERT INTO contacts (organisation_id, display_name, email)
SELECT id, 'Host ' || name, 'host@example.nhs.uk' FROM organisations;
INSERT INTO contacts (organisation_id, display_name, email)
SELECT (SELECT min(id::text)::uuid FROM organisations),
       CASE WHEN i % 2 = 0 THEN 'contact ' ELSE 'Contact ' END || lpad(i::text, 6, '0'),
       'c' || i || '@example.nhs.uk'
FROM generate_series(1, 2000) i
)sql";

TEST(ListsAtScale, OrganisationsAndOffersReadInProportionToThePage) {
  namespace ps = ::connecting::partners::store;
  std::unique_ptr<db::Conn> c = Migrated(PARTNERS_BIN, NewDatabase(), kPartnersFill);
  ASSERT_NE(c, nullptr);
  auto orgs = [](ps::OrganisationFilter f, std::optional<ps::After> after = std::nullopt) {
    return [f, after](db::Conn& c) { return Count(ps::ListOrganisations(c, f, after, kPage)); };
  };
  ExpectReadInProportion(*c, "all", kPage, orgs({}));
  ExpectReadInProportion(*c, "archived (all named last)", kPage, orgs({0, 0, 3, "", ""}));
  ExpectReadInProportion(*c, "paused (one in a hundred)", kPage, orgs({0, 0, 2, "", ""}));
  ExpectReadInProportion(*c, "a sector", kPage, orgs({3, 0, 0, "", ""}));
  ExpectReadInProportion(*c, "a region", kPage, orgs({0, 4, 0, "", ""}));
  // One in 72: a dashboard's "acute trusts in London".
  ExpectReadInProportion(*c, "a sector in a region", kPage, orgs({3, 4, 0, "", ""}));
  // A name prefix is matched ignoring case, and the list is in that order.
  ExpectReadInProportion(*c, "prefix named last", kPage, orgs({0, 0, 0, "zEAL", ""}));
  ExpectReadInProportion(*c, "prefix of nine", 9,  // Trust 010001–010009 (010000 is a Zeal)
                         orgs({0, 0, 0, "trust 01000", ""}));
  ExpectReadInProportion(*c, "prefix matching nothing", 0, orgs({0, 0, 0, "Trusty", ""}));
  // A later page: the last 30 of the 300 archived organisations.
  auto mid = c->Exec(
      "SELECT name, id::text FROM organisations WHERE status = 3 "
      "ORDER BY name_lower, name, id OFFSET 269 LIMIT 1");
  ASSERT_TRUE(mid.ok() && mid->rows() == 1);
  ExpectReadInProportion(*c, "archived, the last 30", 30,
                         orgs({0, 0, 3, "", ""}, ps::After{mid->String(0, 0), mid->String(0, 1)}));

  auto offers = [](int state) {
    return
        [state](db::Conn& c) { return Count(ps::ListOffers(c, "", state, std::nullopt, kPage)); };
  };
  ExpectReadInProportion(*c, "withdrawn offers (titled last)", kPage, offers(3));
  ExpectReadInProportion(*c, "published offers", kPage, offers(2));
  ExpectReadInProportion(*c, "draft offers (none)", 0, offers(1));
  ExpectReadInProportion(*c, "every offer", kPage, offers(0));
  auto title = c->Exec(
      "SELECT title, id::text FROM offers ORDER BY lower(title), title, id "
      "OFFSET 29969 LIMIT 1");
  ASSERT_TRUE(title.ok() && title->rows() == 1);
  ExpectReadInProportion(*c, "every offer, the last 30", 30, [&](db::Conn& c) {
    return Count(
        ps::ListOffers(c, "", 0, ps::After{title->String(0, 0), title->String(0, 1)}, kPage));
  });

  // Contacts of one organisation among 32,000, by name ignoring case.
  auto first = c->Exec(
      "SELECT organisation_id::text, display_name, id::text FROM contacts "
      "WHERE organisation_id = (SELECT min(id::text)::uuid FROM organisations) "
      "ORDER BY lower(display_name), display_name, id OFFSET 1970 LIMIT 1");
  ASSERT_TRUE(first.ok() && first->rows() == 1);
  const std::string org = first->String(0, 0);
  ExpectReadInProportion(*c, "an organisation's contacts", kPage, [&](db::Conn& c) {
    return Count(ps::ListContacts(c, org, std::nullopt, kPage));
  });
  ExpectReadInProportion(*c, "an organisation's contacts, the last 30", 30, [&](db::Conn& c) {
    return Count(
        ps::ListContacts(c, org, ps::After{first->String(0, 1), first->String(0, 2)}, kPage));
  });
}

// 30,000 participants in 200 directorates (one in a hundred senior civil
// servants, one in a hundred inactive) and 20,000 sessions over two years
// (one in a hundred awaiting their host, one in a hundred a partner's visit
// to the department, one in a thousand both, one in seven at one partner),
// each with its site.
constexpr char kSchedulingFill[] = R"sql(
INSERT INTO participants (staff_number, display_name, email, grade, directorate, status)
SELECT 'S' || i, CASE WHEN i % 10 = 0 THEN 'person ' ELSE 'Person ' END || lpad(i::text, 6, '0'),
       'p' || i || '@example.gov.uk',
       CASE WHEN i % 100 = 0 THEN 1 ELSE 2 + i % 3 END, 'Directorate ' || (i % 200),
       CASE WHEN i % 100 = 1 THEN 2 ELSE 1 END
FROM generate_series(1, 30000) i;
INSERT INTO sessions (kind, title, organisation_id, session_date, start_time, end_time, status)
SELECT CASE WHEN i % 100 = 0 THEN 3 ELSE 1 END, 'Visit ' || i,
       CASE WHEN i % 7 = 0 THEN 'b1900000-0000-4000-8000-000000000001'::uuid
            ELSE gen_random_uuid() END,
       current_date - 340 + i / 29, time '09:00', time '16:00',
       CASE WHEN i % 100 = 1 OR i % 1000 = 0 THEN 1 ELSE 2 END
FROM generate_series(1, 20000) i;
INSERT INTO session_sites (session_id, site, capacity, ordinal) SELECT id, '', 10, 0 FROM sessions
)sql";

TEST(ListsAtScale, ParticipantsAndSessionsReadInProportionToThePage) {
  namespace ss = ::connecting::scheduling::store;
  std::unique_ptr<db::Conn> c = Migrated(SCHEDULING_BIN, NewDatabase(), kSchedulingFill);
  ASSERT_NE(c, nullptr);
  auto people = [](ss::ParticipantFilter f, std::vector<std::string> after = {}) {
    return [f, after](db::Conn& c) { return Count(ss::ListParticipants(c, f, after, kPage)); };
  };
  auto who = [](int grade, int status, std::string directorate, std::string staff_number = "",
                std::string name_prefix = "") {
    return ss::ParticipantFilter{grade, status, std::move(directorate), std::move(staff_number),
                                 std::move(name_prefix)};
  };
  ExpectReadInProportion(*c, "all", kPage, people({}));
  ExpectReadInProportion(*c, "a directorate", kPage, people(who(0, 0, "Directorate 7")));
  ExpectReadInProportion(*c, "a directorate with nobody", 0, people(who(0, 0, "Directorate 900")));
  ExpectReadInProportion(*c, "senior civil servants", kPage, people(who(1, 0, "")));
  ExpectReadInProportion(*c, "inactive", kPage, people(who(0, 2, "")));
  ExpectReadInProportion(*c, "a staff number", 1, people(who(0, 0, "", "S12345")));
  // A name prefix, matched ignoring case, late in the order.
  ExpectReadInProportion(*c, "a name prefix", kPage, people(who(0, 0, "", "", "PERSON 029")));
  ExpectReadInProportion(*c, "a name prefix of ten", 10, people(who(0, 0, "", "", "person 02999")));
  ExpectReadInProportion(*c, "a name prefix matching nobody", 0,
                         people(who(0, 0, "", "", "Persona")));
  auto mid = c->Exec(
      "SELECT display_name, id::text FROM participants WHERE grade = 1 "
      "ORDER BY lower(display_name), display_name, id OFFSET 249 LIMIT 1");
  ASSERT_TRUE(mid.ok() && mid->rows() == 1);
  ExpectReadInProportion(*c, "senior civil servants, from the 250th", 50,
                         people(who(1, 0, ""), {mid->String(0, 0), mid->String(0, 1)}));

  auto sessions = [](ss::SessionFilter f, std::vector<std::string> after = {}) {
    return [f, after](db::Conn& c) { return Count(ss::ListSessions(c, f, after, kPage)); };
  };
  auto filter = [](int kind, int status, std::string from = "") {
    ss::SessionFilter f;
    f.kind = kind;
    f.status = status;
    f.from_date = std::move(from);
    return f;
  };
  ExpectReadInProportion(*c, "all", kPage, sessions({}));
  ExpectReadInProportion(*c, "awaiting their host", kPage, sessions(filter(0, 1)));
  ExpectReadInProportion(*c, "awaiting their host, from a date", kPage,
                         sessions(filter(0, 1, "2027-01-01")));
  ExpectReadInProportion(*c, "partner visits", kPage, sessions(filter(3, 0)));
  ExpectReadInProportion(*c, "partner visits, from a date", kPage,
                         sessions(filter(3, 0, "2027-03-01")));
  ExpectReadInProportion(*c, "department events (none)", 0, sessions(filter(2, 0)));
  // A rare pair: the partner visits awaiting their host (20), among 200
  // partner visits and 220 sessions awaiting their host.
  ExpectReadInProportion(*c, "partner visits awaiting their host", 20, sessions(filter(3, 1)));
  ExpectReadInProportion(*c, "scheduled partner visits, from a date", kPage,
                         sessions(filter(3, 2, "2026-06-01")));
  // A partner (one in seven of the sessions, 2,857) lists the visits
  // awaiting its hosts (31 of them), and its scheduled ones.
  ss::SessionFilter partner = filter(0, 1);
  partner.organisation_id = "b1900000-0000-4000-8000-000000000001";
  ExpectReadInProportion(*c, "a partner's awaiting their host", 31, sessions(partner));
  partner.status = 2;
  ExpectReadInProportion(*c, "a partner's scheduled", kPage, sessions(partner));
  // And its visits to the department (28), of any status.
  partner.status = 0;
  partner.kind = 3;
  ExpectReadInProportion(*c, "a partner's visits to the department", 28, sessions(partner));
  // Sessions a booking would be confirmed on: the 9,860 past ones, ahead of
  // today in the list's order, are not read; today's 29, once begun, are
  // passed over (an index entry and a row each). A row returned reads its
  // sites twice: for the free seat, and for its columns.
  ss::SessionFilter free_seats;
  free_seats.with_free_seats = true;
  ExpectReadInProportion(*c, "with free seats", kPage, sessions(free_seats), 6, 2 * 29);
  // Of one kind: none of today's are partner visits, and the 98 past ones
  // are not read either.
  free_seats.kind = 3;
  ExpectReadInProportion(*c, "partner visits with free seats", kPage, sessions(free_seats), 6);
  auto later = c->Exec(
      "SELECT session_date::text, start_time::text, id::text FROM sessions "
      "WHERE status = 1 ORDER BY session_date, start_time, id OFFSET 169 LIMIT 1");
  ASSERT_TRUE(later.ok() && later->rows() == 1);
  ExpectReadInProportion(
      *c, "awaiting their host, from the 170th (the last 50)", 50,
      sessions(filter(0, 1), {later->String(0, 0), later->String(0, 1), later->String(0, 2)}));
}

// Recording an attendance links its fact into the figures' ten chains
// (docs/scheduling.md, Programme figures): each chain's neighbours before
// and after it are found by an index in chain order, so a record reads
// about the same whatever the organisation's history. At an organisation of
// 50,000 visits by 40 directorates, a visit by a directorate new to it (and
// of its rarest grade) is linked without walking those visits.
TEST(AtScale, AnAttendanceRecordReadsItsNeighboursNotTheOrganisationsVisits) {
  std::unique_ptr<db::Conn> c = Migrated(SCHEDULING_BIN, NewDatabase(), R"sql(
-- The facts' bookings are not the point here: facts without them.
ALTER TABLE attendance_facts DROP CONSTRAINT attendance_facts_booking_id_fkey;
SET session_replication_role = replica;
INSERT INTO attendance_facts (booking_id, session_date, participant_id, organisation_id, sector,
                              region, directorate, grade)
SELECT gen_random_uuid(), current_date - 400 + g % 365, gen_random_uuid(),
       'a7700000-0000-4000-8000-000000000001', 2, 3, 'Directorate ' || g % 40,
       CASE WHEN g % 5000 = 0 THEN 1 ELSE 2 + g % 3 END
FROM generate_series(1, 50000) g;
SET session_replication_role = DEFAULT;
SELECT rebuild_attendance_chains()
)sql");
  ASSERT_NE(c, nullptr);
  for (const char* who : {"'Directorate 7', 3", "'Directorate new', 1"}) {
    SCOPED_TRACE(who);
    Reads record = ReadsOf(*c, [who](db::Conn& conn) -> absl::StatusOr<int> {
      absl::Status s = conn.ExecScript(absl::StrCat(
          "INSERT INTO attendance_facts (booking_id, session_date, participant_id, "
          "organisation_id, sector, region, directorate, grade) VALUES (gen_random_uuid(), "
          "current_date - 200, gen_random_uuid(), 'a7700000-0000-4000-8000-000000000001', 2, 3, ",
          who, ")"));
      if (!s.ok()) return s;
      return 1;
    });
    ASSERT_TRUE(record.result.ok()) << record.result.status();
    // Ten chains, a neighbour each way: an index entry and a row for each.
    EXPECT_LE(record.read, 2 * 2 * 10 + kSlack);
  }
}

}  // namespace
}  // namespace connecting::testing
