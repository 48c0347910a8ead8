// The booking rules under concurrency: capacity, FIFO waitlist and promotion,
// one frontline visit per date, idempotent retries.
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <tuple>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "connecting/events/v1/scheduling_events.pb.h"
#include "libs/db/db.h"
#include "tests/scheduling_common.h"

namespace connecting::testing {
namespace {

// The status of booking `id` on `session`.
sv1::BookingStatus StatusOf(SchedulingFixture& fx, const std::string& session,
                            const std::string& id) {
  for (const auto& b : SessionBookings(fx, session)) {
    if (b.id() == id) return b.status();
  }
  return sv1::BOOKING_STATUS_UNSPECIFIED;
}

class SchedulingConcurrency : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // No sweep during these tests: each shows that a change hands on the
    // seats it frees itself, not that the sweep came by meanwhile.
    // Four lanes: bookings of different sessions commit in parallel, so the
    // races below meet across lanes as well as within one. A booking that
    // waits more than a millisecond for a lock leaves its batch to wait
    // apart (BOOKING_LOCK_WAIT), so these races, the random workload's
    // included, go through that path too.
    fx_ = new SchedulingFixture(std::map<std::string, std::string>{
        {"SEAT_SWEEP_INTERVAL", "24h"}, {"BOOKING_LANES", "4"}, {"BOOKING_LOCK_WAIT", "1ms"}});
    org_ = new std::string(fx_->CreatePartner("Concurrency Trust"));
  }
  static void TearDownTestSuite() {
    delete fx_;
    delete org_;
  }
  static SchedulingFixture* fx_;
  static std::string* org_;
};
SchedulingFixture* SchedulingConcurrency::fx_ = nullptr;
std::string* SchedulingConcurrency::org_ = nullptr;

TEST_F(SchedulingConcurrency, TwoHundredParallelBookingsForTenSeats) {
  std::vector<std::string> people;
  for (int i = 0; i < 200; ++i)
    people.push_back(Register(*fx_, "CC" + std::to_string(1000 + i)).id());
  sv1::Session session = NewSession(*fx_, *org_, 10, DateIn(7));

  std::atomic<int> next{0}, confirmed{0}, waitlisted{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 25; ++t) {
    threads.emplace_back([&] {
      for (int i = next++; i < 200; i = next++) {
        sv1::Booking b;
        grpc::Status s = Book(*fx_, session.id(), people[i], &b);
        if (!s.ok()) {
          ++failed;
          ADD_FAILURE() << s.error_message();
        } else if (b.status() == sv1::BOOKING_STATUS_CONFIRMED) {
          ++confirmed;
        } else if (b.status() == sv1::BOOKING_STATUS_WAITLISTED) {
          ++waitlisted;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(confirmed.load(), 10);
  EXPECT_EQ(waitlisted.load(), 190);
  EXPECT_EQ(failed.load(), 0);

  // In arrival order: the first ten confirmed, then the waitlist 1..190.
  std::vector<sv1::Booking> all = SessionBookings(*fx_, session.id());
  ASSERT_EQ(all.size(), 200u);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(all[i].status(), sv1::BOOKING_STATUS_CONFIRMED) << i;
  for (int i = 10; i < 200; ++i) {
    EXPECT_EQ(all[i].status(), sv1::BOOKING_STATUS_WAITLISTED) << i;
    EXPECT_EQ(all[i].waitlist_position(), i - 9);
  }
  sv1::GetSessionRequest get;
  get.set_id(session.id());
  sv1::Session seen;
  ASSERT_TRUE(fx_->stub->GetSession(Ctx(fx_->admin).get(), get, &seen).ok());
  EXPECT_EQ(seen.sites(0).confirmed(), 10);
  EXPECT_EQ(seen.sites(0).waitlisted(), 190);

  // Cancelling three confirmed bookings (in parallel) promotes the first three waiting.
  std::vector<std::future<grpc::Status>> cancels;
  for (int i = 0; i < 3; ++i) {
    cancels.push_back(std::async(std::launch::async, [&, i] {
      sv1::CancelBookingRequest req;
      req.set_id(all[i].id());
      sv1::Booking out;
      return fx_->stub->CancelBooking(Ctx(fx_->admin).get(), req, &out);
    }));
  }
  for (auto& c : cancels) EXPECT_TRUE(c.get().ok());
  std::vector<sv1::Booking> after = SessionBookings(*fx_, session.id());
  int now_confirmed = 0;
  for (const auto& b : after) now_confirmed += b.status() == sv1::BOOKING_STATUS_CONFIRMED;
  EXPECT_EQ(now_confirmed, 10);
  std::set<std::string> first_three = {all[10].id(), all[11].id(), all[12].id()};
  for (const auto& b : after) {
    if (first_three.count(b.id())) {
      EXPECT_EQ(b.status(), sv1::BOOKING_STATUS_CONFIRMED);
    }
  }
  EXPECT_EQ(after[13].waitlist_position(), 1);

  // Exactly one promoted event for each of them, and one confirmed/waitlisted per booking.
  std::map<std::string, int> promoted;
  int booked_events = 0;
  for (const auto& e : WaitForEvents(fx_->nats_url, fx_->scheduling_stream, 1, absl::Seconds(1))) {
    (void)e;
  }
  absl::Time until = absl::Now() + absl::Seconds(15);
  std::vector<StoredEvent> events;
  do {
    events = ReadStream(fx_->nats_url, fx_->scheduling_stream);
    promoted.clear();
    booked_events = 0;
    for (const auto& e : events) {
      if (e.subject.find(".booking.promoted") != std::string::npos) {
        events::v1::BookingChanged bc;
        ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(e.data, &bc).ok());
        if (bc.session().id() == session.id()) ++promoted[bc.booking().id()];
      }
      if (e.subject.find(".booking.confirmed") != std::string::npos ||
          e.subject.find(".booking.waitlisted") != std::string::npos) {
        ++booked_events;
      }
    }
  } while ((promoted.size() < 3 || booked_events < 200) && absl::Now() < until);
  EXPECT_EQ(promoted.size(), 3u);
  for (const auto& [id, n] : promoted) {
    EXPECT_TRUE(first_three.count(id)) << id;
    EXPECT_EQ(n, 1);
  }
  EXPECT_GE(booked_events, 200);
}

TEST_F(SchedulingConcurrency, OneConfirmedFrontlineVisitPerDateEvenInParallel) {
  for (int round = 0; round < 5; ++round) {
    std::string person = Register(*fx_, "SD" + std::to_string(100 + round)).id();
    std::string date = DateIn(10 + round);
    sv1::Session a = NewSession(*fx_, *org_, 5, date);
    sv1::Session b = NewSession(*fx_, *org_, 5, date);
    auto book = [&](const std::string& s) {
      sv1::Booking out;
      return Book(*fx_, s, person, &out);
    };
    auto fa = std::async(std::launch::async, book, a.id());
    auto fb = std::async(std::launch::async, book, b.id());
    grpc::Status sa = fa.get(), sb = fb.get();
    EXPECT_NE(sa.ok(), sb.ok()) << sa.error_message() << " / " << sb.error_message();
    const grpc::Status& refused = sa.ok() ? sb : sa;
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(refused.error_message().find("one confirmed frontline visit per date"),
              std::string::npos)
        << refused.error_message();
  }
}

TEST_F(SchedulingConcurrency, SameRequestIdConcurrentlyBooksOnce) {
  std::string person = Register(*fx_, "IDEM01").id();
  sv1::Session s = NewSession(*fx_, *org_, 3, DateIn(20));
  std::vector<std::future<std::pair<grpc::Status, sv1::Booking>>> calls;
  for (int i = 0; i < 8; ++i) {
    calls.push_back(std::async(std::launch::async, [&] {
      sv1::Booking out;
      grpc::Status st = Book(*fx_, s.id(), person, &out, "retry-key-1");
      return std::make_pair(st, out);
    }));
  }
  std::set<std::string> ids;
  for (auto& c : calls) {
    auto [st, b] = c.get();
    EXPECT_TRUE(st.ok()) << st.error_message();
    ids.insert(b.id());
  }
  EXPECT_EQ(ids.size(), 1u);
  EXPECT_EQ(SessionBookings(*fx_, s.id()).size(), 1u);
}

TEST_F(SchedulingConcurrency, PromotionSkipsWhoeverWouldHoldTwoVisitsThatDate) {
  std::string date = DateIn(30);
  sv1::Session full = NewSession(*fx_, *org_, 1, date);
  sv1::Session other = NewSession(*fx_, *org_, 1, date);
  std::string holder = Register(*fx_, "PR0001").id();
  std::string busy = Register(*fx_, "PR0002").id();
  std::string free_person = Register(*fx_, "PR0003").id();
  sv1::Booking hb, bw, fw, bo;
  ASSERT_TRUE(Book(*fx_, full.id(), holder, &hb).ok());
  ASSERT_TRUE(Book(*fx_, full.id(), busy, &bw).ok());         // waitlisted first
  ASSERT_TRUE(Book(*fx_, full.id(), free_person, &fw).ok());  // waitlisted second
  ASSERT_TRUE(Book(*fx_, other.id(), busy, &bo).ok());        // busy confirms elsewhere that day
  EXPECT_EQ(bo.status(), sv1::BOOKING_STATUS_CONFIRMED);
  sv1::CancelBookingRequest cancel;
  cancel.set_id(hb.id());
  sv1::Booking out;
  ASSERT_TRUE(fx_->stub->CancelBooking(Ctx(fx_->admin).get(), cancel, &out).ok());
  for (const auto& b : SessionBookings(*fx_, full.id())) {
    if (b.id() == fw.id()) {
      EXPECT_EQ(b.status(), sv1::BOOKING_STATUS_CONFIRMED);
    }
    if (b.id() == bw.id()) {
      EXPECT_EQ(b.status(), sv1::BOOKING_STATUS_WAITLISTED);
    }
  }
}

// Someone waiting for a visit, passed over when its one seat freed because
// they held another confirmed visit that date; nobody else waits there, so
// the seat stays free.
struct PassedOver {
  sv1::Session wanted, other;
  sv1::Booking held, waits, elsewhere;
};
// With `cancel_held` false, it stops before the cancellation: someone holds
// the one seat of `wanted`, the other waits for it and holds `other`.
PassedOver PassOver(SchedulingFixture& fx, const std::string& org, const std::string& date,
                    const std::string& tag, bool cancel_held = true) {
  PassedOver p;
  p.wanted = NewSession(fx, org, 1, date);
  p.other = NewSession(fx, org, 1, date);
  std::string holder = Register(fx, tag + "01").id();
  std::string x = Register(fx, tag + "02").id();
  EXPECT_TRUE(Book(fx, p.wanted.id(), holder, &p.held).ok());
  EXPECT_TRUE(Book(fx, p.wanted.id(), x, &p.waits).ok());
  EXPECT_EQ(p.waits.status(), sv1::BOOKING_STATUS_WAITLISTED);
  EXPECT_TRUE(Book(fx, p.other.id(), x, &p.elsewhere).ok());
  EXPECT_EQ(p.elsewhere.status(), sv1::BOOKING_STATUS_CONFIRMED);
  if (!cancel_held) return p;
  sv1::CancelBookingRequest cancel;
  cancel.set_id(p.held.id());
  sv1::Booking out;
  EXPECT_TRUE(fx.stub->CancelBooking(Ctx(fx.admin).get(), cancel, &out).ok());
  EXPECT_EQ(StatusOf(fx, p.wanted.id(), p.waits.id()), sv1::BOOKING_STATUS_WAITLISTED)
      << "passed over, for now";
  return p;
}

// Seats handed on so far, by what found them (`by`: change, booking, sweep).
double HandedOn(SchedulingFixture& fx, const std::string& by) {
  return MetricValue(fx.scheduling->metrics_port(),
                     "connecting_seats_handed_on_total{by=\"" + by + "\"}")
      .value_or(-1);
}

// The seat went to them: the booking CONFIRMED, the counters so (with
// `still_waiting` behind them), and one booking.promoted event (within 10 s).
void ExpectTheSeatIsTheirs(SchedulingFixture& fx, const PassedOver& p,
                           absl::Duration within = absl::Seconds(0), int still_waiting = 0) {
  absl::Time until = absl::Now() + within;
  while (StatusOf(fx, p.wanted.id(), p.waits.id()) != sv1::BOOKING_STATUS_CONFIRMED &&
         absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(StatusOf(fx, p.wanted.id(), p.waits.id()), sv1::BOOKING_STATUS_CONFIRMED);
  sv1::GetSessionRequest get;
  get.set_id(p.wanted.id());
  sv1::Session seats;
  ASSERT_TRUE(fx.stub->GetSession(Ctx(fx.admin).get(), get, &seats).ok());
  EXPECT_EQ(seats.sites(0).confirmed(), 1);
  EXPECT_EQ(seats.sites(0).waitlisted(), still_waiting);
  int promoted = 0;
  for (absl::Time end = absl::Now() + absl::Seconds(10); promoted == 0 && absl::Now() < end;
       absl::SleepFor(absl::Milliseconds(100))) {
    for (const StoredEvent& e : ReadStream(fx.nats_url, fx.scheduling_stream)) {
      if (absl::EndsWith(e.subject, ".booking.promoted") &&
          e.headers.at("ce-subject") == p.waits.id()) {
        ++promoted;
      }
    }
  }
  EXPECT_EQ(promoted, 1);
}

TEST_F(SchedulingConcurrency, ASeatLeftFreeGoesToWhoeverWaitsOnceTheirOtherVisitThatDateEnds) {
  // Once their other visit that date ends (cancelled, moved to another date,
  // or its session cancelled) the seat is theirs. (Found by the random
  // workload, seed 44.)
  const char* ways[] = {"cancelled", "moved", "session cancelled"};
  for (int way = 0; way < 3; ++way) {
    SCOPED_TRACE(ways[way]);
    PassedOver p = PassOver(*fx_, *org_, DateIn(33), absl::StrCat("FS", way));
    const std::string x = p.waits.participant_id();
    const double changed_before = HandedOn(*fx_, "change");
    grpc::Status st;
    sv1::Booking out;
    if (way == 0) {
      sv1::CancelBookingRequest cancel;
      cancel.set_id(p.elsewhere.id());
      st = fx_->stub->CancelBooking(Ctx(Token(server::Role::kParticipant, x)).get(), cancel, &out);
    } else if (way == 1) {
      sv1::RescheduleBookingRequest move;
      move.set_id(p.elsewhere.id());
      move.set_session_id(NewSession(*fx_, *org_, 1, DateIn(34)).id());
      st =
          fx_->stub->RescheduleBooking(Ctx(Token(server::Role::kParticipant, x)).get(), move, &out);
    } else {
      sv1::CancelSessionRequest cs;
      cs.set_id(p.other.id());
      cs.set_reason("the ward is closed");
      sv1::Session gone;
      st = fx_->stub->CancelSession(Ctx(fx_->admin).get(), cs, &gone);
    }
    ASSERT_TRUE(st.ok()) << st.error_message();
    ExpectTheSeatIsTheirs(*fx_, p);  // as the call returns
    EXPECT_EQ(HandedOn(*fx_, "change"), changed_before + 1);
  }
}

// Their other visit that date ends straight in the database, as if the
// process that ended it stopped before handing the seat on.
void EndElsewhereWithoutHandingOn(SchedulingFixture& fx, const PassedOver& p) {
  auto conn = db::Conn::Open(fx.scheduling_db, "test");
  ASSERT_TRUE(conn.ok()) << conn.status();
  // One statement, so committed at once as the change would have been.
  ASSERT_TRUE((*conn)
                  ->Exec("WITH b AS (UPDATE bookings SET status = 3, version = version + 1 "
                         "WHERE id = $1::uuid RETURNING session_id, site) "
                         "UPDATE session_sites ss SET confirmed = ss.confirmed - 1 FROM b "
                         "WHERE ss.session_id = b.session_id AND ss.site = b.site",
                         {p.elsewhere.id()})
                  .ok());
}

TEST_F(SchedulingConcurrency, ASeatFreedAsTheVisitThatKeptThemFromItEndsIsTheirs) {
  // Two changes at the same moment (found by the random workload, seed
  // 834): the holder of the one seat cancels, and the promotion passes over
  // the person waiting, who holds another visit that date; meanwhile that
  // other visit is cancelled, and its hand-on looks for their seat before
  // the first cancellation has committed, so finds none. The seat must not
  // stay free while they wait. The first cancellation is held at its
  // COMMIT (a deferred trigger waiting on an advisory lock) until the second
  // has finished.
  PassedOver p = PassOver(*fx_, *org_, DateIn(38), "MM", /*cancel_held=*/false);
  auto ctl = db::Conn::Open(fx_->scheduling_db, "test");
  ASSERT_TRUE(ctl.ok()) << ctl.status();
  const std::string trigger = "pause_" + absl::StrReplaceAll(p.held.id(), {{"-", "_"}});
  ASSERT_TRUE((*ctl)
                  ->ExecScript(absl::StrCat(
                      "CREATE OR REPLACE FUNCTION test_pause_commit() RETURNS trigger "
                      "LANGUAGE plpgsql AS $$ BEGIN "
                      "PERFORM pg_advisory_xact_lock_shared(TG_ARGV[0]::bigint); RETURN NULL; "
                      "END $$; "
                      "CREATE CONSTRAINT TRIGGER ",
                      trigger,
                      " AFTER UPDATE ON bookings DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
                      "WHEN (NEW.id = '",
                      p.held.id(), "'::uuid) EXECUTE FUNCTION test_pause_commit('838'); ",
                      "SELECT pg_advisory_lock(838)"))
                  .ok());
  // Declared before `let_go`, so that a failure ends the wait at COMMIT
  // before waiting for this call to return.
  std::future<grpc::Status> first;
  absl::Cleanup let_go = [&] {
    (void)(*ctl)->ExecScript("SELECT pg_advisory_unlock_all(); DROP TRIGGER IF EXISTS " + trigger +
                             " ON bookings");
  };
  const double before = HandedOn(*fx_, "change");
  first = std::async(std::launch::async, [&] {
    sv1::CancelBookingRequest req;
    req.set_id(p.held.id());
    sv1::Booking out;
    return fx_->stub->CancelBooking(Ctx(fx_->admin).get(), req, &out);
  });
  UntilWaitingOrDone(fx_->scheduling_db, first);
  ASSERT_TRUE(WaitsForALock(fx_->scheduling_db)) << "the cancellation should wait at its commit";
  sv1::CancelBookingRequest other;
  other.set_id(p.elsewhere.id());
  sv1::Booking out;
  grpc::Status st = fx_->stub->CancelBooking(Ctx(fx_->admin).get(), other, &out);
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_EQ(StatusOf(*fx_, p.wanted.id(), p.waits.id()), sv1::BOOKING_STATUS_WAITLISTED)
      << "the seat is not free yet";
  ASSERT_TRUE((*ctl)->ExecScript("SELECT pg_advisory_unlock(838)").ok());
  st = first.get();
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  ExpectTheSeatIsTheirs(*fx_, p);  // as the first cancellation returns
  EXPECT_EQ(HandedOn(*fx_, "change"), before + 1);
}

TEST_F(SchedulingConcurrency, ANewcomerWaitsBehindWhoeverIsOwedAFreeSeat) {
  // A seat is free while someone who could take it waits (the process that
  // should have handed it on stopped, and the sweep is a minute away). The
  // next person to book does not take it ahead of them: they wait behind,
  // and the seat is handed on as their booking commits.
  PassedOver p = PassOver(*fx_, *org_, DateIn(36), "OW");
  EndElsewhereWithoutHandingOn(*fx_, p);
  const double before = HandedOn(*fx_, "booking");
  sv1::Booking newcomer;
  ASSERT_TRUE(Book(*fx_, p.wanted.id(), Register(*fx_, "OW03").id(), &newcomer).ok());
  EXPECT_EQ(newcomer.status(), sv1::BOOKING_STATUS_WAITLISTED) << "took a seat owed to another";
  EXPECT_EQ(newcomer.waitlist_position(), 2);
  // The sweep does not run here (SEAT_SWEEP_INTERVAL is 24 h).
  ExpectTheSeatIsTheirs(*fx_, p, absl::Seconds(10), /*still_waiting=*/1);
  EXPECT_EQ(StatusOf(*fx_, p.wanted.id(), newcomer.id()), sv1::BOOKING_STATUS_WAITLISTED);
  EXPECT_EQ(HandedOn(*fx_, "booking"), before + 1);
}

TEST_F(SchedulingConcurrency, ASeatIsTheirsOnceTheVisitThatKeptThemFromItIsAttended) {
  // Their morning visit kept them from a seat on an afternoon visit that
  // date. Once the morning one is recorded (attended, or missed), it no
  // longer holds the date (one CONFIRMED frontline visit per date), and the
  // afternoon seat is theirs as the record returns.
  auto clock = db::Conn::Open(fx_->scheduling_db, "test");
  ASSERT_TRUE(clock.ok()) << clock.status();
  auto late = (*clock)->Exec("SELECT ((now() AT TIME ZONE 'Europe/London')::time >= '23:55')::int");
  ASSERT_TRUE(late.ok()) << late.status();
  if (late->Int(0, 0) == 1) GTEST_SKIP() << "needs the rest of today in London (until 23:58)";
  for (bool attended : {true, false}) {
    SCOPED_TRACE(attended ? "attended" : "no-show");
    PassedOver p = PassOver(*fx_, *org_, DateIn(37), attended ? "AT" : "NS");
    // The time machine: both visits today, the morning one under way and the
    // afternoon one still to begin.
    const std::string today = "(now() AT TIME ZONE 'Europe/London')::date";
    for (const auto& [id, from, to] :
         {std::tuple<std::string, const char*, const char*>{p.other.id(), "00:00", "00:01"},
          {p.wanted.id(), "23:58", "23:59"}}) {
      ASSERT_TRUE((*clock)
                      ->Exec("UPDATE sessions SET session_date = " + today + ", start_time = '" +
                                 from + "', end_time = '" + to + "' WHERE id = $1::uuid",
                             {id})
                      .ok());
      ASSERT_TRUE(
          (*clock)
              ->Exec("UPDATE bookings SET session_date = " + today + " WHERE session_id = $1::uuid",
                     {id})
              .ok());
    }
    const double before = HandedOn(*fx_, "change");
    sv1::RecordAttendanceRequest record;
    record.set_id(p.elsewhere.id());
    record.set_attended(attended);
    sv1::Booking out;
    grpc::Status st = fx_->stub->RecordAttendance(Ctx(fx_->admin).get(), record, &out);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ExpectTheSeatIsTheirs(*fx_, p);  // as the call returns
    EXPECT_EQ(HandedOn(*fx_, "change"), before + 1);
  }
}

TEST(SchedulingSweep, ASeatLeftFreeByAServiceThatStoppedIsHandedOnByTheSweep) {
  // The change that ends the other visit commits, and the process stops
  // before it hands the seat on: done here straight in the database. The
  // sweep (SEAT_SWEEP_INTERVAL, 1 s here) hands it on.
  SchedulingFixture fx(std::map<std::string, std::string>{{"SEAT_SWEEP_INTERVAL", "1s"}});
  PassedOver p = PassOver(fx, fx.CreatePartner("Sweep Trust"), DateIn(35), "SW");
  EndElsewhereWithoutHandingOn(fx, p);
  ExpectTheSeatIsTheirs(fx, p, absl::Seconds(10));
  // What operators watch for (ConnectingSeatsHandedOnBySweep).
  EXPECT_EQ(HandedOn(fx, "sweep"), 1);
}

TEST_F(SchedulingConcurrency, ABookingInFlightIsCancelledWithItsSession) {
  // A booking transaction that has passed every check but not yet committed
  // (another replica's, say) while the session is cancelled: the cancel must
  // wait for it and then cancel it too, never leave it live on a cancelled
  // session.
  std::string who = Register(*fx_, "CR1001").id();
  sv1::Session session = NewSession(*fx_, *org_, 5, DateIn(8));
  auto conn = db::Conn::Open(fx_->scheduling_db, "test");
  ASSERT_TRUE(conn.ok()) << conn.status();
  // A booking's first step: the site's row lock (book_site then reads the
  // session and writes). Another replica's booking could sit here.
  ASSERT_TRUE((*conn)->ExecScript("BEGIN").ok());
  ASSERT_TRUE((*conn)
                  ->Exec("SELECT 1 FROM session_sites WHERE session_id = $1::uuid FOR UPDATE",
                         {session.id()})
                  .ok());

  auto cancel = std::async(std::launch::async, [&] {
    sv1::CancelSessionRequest req;
    req.set_id(session.id());
    sv1::Session out;
    return fx_->stub->CancelSession(Ctx(fx_->admin).get(), req, &out);
  });
  EXPECT_EQ(cancel.wait_for(std::chrono::milliseconds(500)), std::future_status::timeout)
      << "CancelSession must wait for the booking that holds the site";
  auto booked = (*conn)->Exec(
      "SELECT o_outcome FROM book_site($1::uuid, '', ARRAY[$2::uuid], ARRAY[NULL::text])",
      {session.id(), who});
  ASSERT_TRUE(booked.ok()) << booked.status();
  EXPECT_EQ(booked->String(0, 0), "booked");
  ASSERT_TRUE((*conn)->ExecScript("COMMIT").ok());
  ASSERT_TRUE(cancel.get().ok());

  std::vector<sv1::Booking> all = SessionBookings(*fx_, session.id());
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].status(), sv1::BOOKING_STATUS_CANCELLED) << "outlived its session's cancel";

  // And once cancelled, the session takes no more bookings.
  sv1::Booking b;
  grpc::Status again = Book(*fx_, session.id(), Register(*fx_, "CR1002").id(), &b);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << again.error_message();
}

TEST_F(SchedulingConcurrency, DeactivationCopesWithABookingCancelledMeanwhile) {
  // The deactivation has listed the leaver's live bookings and waits for a
  // site's lock, which a concurrent cancellation of one of them holds; once
  // that commits, the booking is no longer live and the deactivation goes on
  // (it failed with "only a CONFIRMED or WAITLISTED booking can be cancelled").
  sv1::Session s = NewSession(*fx_, *org_, 5, DateIn(40));
  sv1::Participant p = Register(*fx_, "DRACE1");
  sv1::Booking b;
  ASSERT_TRUE(Book(*fx_, s.id(), p.id(), &b).ok());
  auto other = db::Conn::Open(fx_->scheduling_db, "test");
  ASSERT_TRUE(other.ok());
  // The cancellation's transaction, as CancelBooking writes it.
  ASSERT_TRUE((*other)->ExecScript("BEGIN").ok());
  ASSERT_TRUE(
      (*other)
          ->Exec("SELECT 1 FROM session_sites WHERE session_id = $1::uuid FOR UPDATE", {s.id()})
          .ok());
  auto deactivation = std::async(std::launch::async, [&] {
    sv1::DeactivateParticipantRequest req;
    req.set_id(p.id());
    sv1::Participant out;
    return fx_->stub->DeactivateParticipant(Ctx(fx_->admin).get(), req, &out);
  });
  UntilWaitingOrDone(fx_->scheduling_db, deactivation);
  ASSERT_TRUE(WaitsForALock(fx_->scheduling_db)) << "the deactivation should wait for the site";
  ASSERT_TRUE(
      (*other)
          ->Exec("UPDATE bookings SET status = 3, version = version + 1 WHERE id = $1::uuid",
                 {b.id()})
          .ok());
  ASSERT_TRUE((*other)
                  ->Exec("UPDATE session_sites SET confirmed = confirmed - 1 "
                         "WHERE session_id = $1::uuid",
                         {s.id()})
                  .ok());
  ASSERT_TRUE((*other)->ExecScript("COMMIT").ok());
  grpc::Status st = deactivation.get();
  EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  sv1::GetParticipantRequest get;
  get.set_id(p.id());
  sv1::Participant now;
  ASSERT_TRUE(fx_->stub->GetParticipant(Ctx(fx_->admin).get(), get, &now).ok());
  EXPECT_EQ(now.status(), sv1::PARTICIPANT_STATUS_INACTIVE);
}

TEST_F(SchedulingConcurrency, NoBookingSlipsInWhileAParticipantIsDeactivated) {
  // A booking reads the participant while a deactivation holds the row and
  // then commits INACTIVE: the booking must see that and refuse, not take a
  // seat for someone who has left (its insert only waited for the row's key).
  sv1::Session s = NewSession(*fx_, *org_, 5, DateIn(41));
  sv1::Participant p = Register(*fx_, "DRACE2");
  auto other = db::Conn::Open(fx_->scheduling_db, "test");
  ASSERT_TRUE(other.ok());
  // The deactivation's transaction, as DeactivateParticipant writes it for
  // someone with no bookings.
  ASSERT_TRUE((*other)->ExecScript("BEGIN").ok());
  ASSERT_TRUE(
      (*other)
          ->Exec("SELECT 1 FROM participants WHERE id = $1::uuid FOR NO KEY UPDATE", {p.id()})
          .ok());
  auto booking = std::async(std::launch::async, [&] {
    sv1::Booking b;
    return Book(*fx_, s.id(), p.id(), &b);
  });
  UntilWaitingOrDone(fx_->scheduling_db, booking);
  ASSERT_TRUE(WaitsForALock(fx_->scheduling_db)) << "the booking should wait for the participant";
  ASSERT_TRUE((*other)
                  ->Exec("UPDATE participants SET status = 2, version = version + 1 "
                         "WHERE id = $1::uuid",
                         {p.id()})
                  .ok());
  ASSERT_TRUE((*other)->ExecScript("COMMIT").ok());
  grpc::Status st = booking.get();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  auto live = (*other)->Exec(
      "SELECT count(*) FROM bookings WHERE participant_id = $1::uuid AND status IN (1, 2)",
      {p.id()});
  ASSERT_TRUE(live.ok());
  EXPECT_EQ(live->Int(0, 0), 0) << "a seat taken by someone who has left";
}

// A seat frees on visit A (one seat) while the first person waiting for it is
// being confirmed on visit B the same date, by a transaction left open on
// `other` (BookSession on B, as the service sends it); the cancellation that
// frees the seat (or, with `move_to`, the move of that booking to another
// session) runs in `cancel` and, once this returns, waits for it.
struct PromotionRace {
  sv1::Booking held, first_waiting, next_waiting;
  std::string first;
  std::unique_ptr<db::Conn> other;
  std::future<grpc::Status> cancel;
};

void StartPromotionRace(SchedulingFixture& fx, const std::string& org, int days,
                        const std::string& tag, PromotionRace* race,
                        const std::string& move_to = "") {
  std::string date = DateIn(days);
  sv1::Session a = NewSession(fx, org, 1, date);
  sv1::Session b = NewSession(fx, org, 5, date);
  std::string holder = Register(fx, tag + "1").id();
  race->first = Register(fx, tag + "2").id();
  std::string next = Register(fx, tag + "3").id();
  ASSERT_TRUE(Book(fx, a.id(), holder, &race->held).ok());
  ASSERT_TRUE(Book(fx, a.id(), race->first, &race->first_waiting).ok());
  ASSERT_TRUE(Book(fx, a.id(), next, &race->next_waiting).ok());
  ASSERT_EQ(race->first_waiting.status(), sv1::BOOKING_STATUS_WAITLISTED);

  auto other = db::Conn::Open(fx.scheduling_db, "test");
  ASSERT_TRUE(other.ok());
  race->other = *std::move(other);
  ASSERT_TRUE(race->other->ExecScript("BEGIN").ok());
  auto on_b = race->other->Exec(
      "SELECT o_outcome FROM book_site($1::uuid, '', ARRAY[$2::uuid], ARRAY[NULL::text])",
      {b.id(), race->first});
  ASSERT_TRUE(on_b.ok()) << on_b.status();
  ASSERT_EQ(on_b->String(0, 0), "booked");
  race->cancel = std::async(std::launch::async, [&fx, id = race->held.id(), move_to] {
    sv1::Booking out;
    if (!move_to.empty()) {
      sv1::RescheduleBookingRequest req;
      req.set_id(id);
      req.set_session_id(move_to);
      return fx.stub->RescheduleBooking(Ctx(fx.admin).get(), req, &out);
    }
    sv1::CancelBookingRequest req;
    req.set_id(id);
    return fx.stub->CancelBooking(Ctx(fx.admin).get(), req, &out);
  });
  // Until the promotion waits for the booking on B (or the cancel finishes).
  UntilWaitingOrDone(fx.scheduling_db, race->cancel);
}

// The promotion gave up its brief wait and started again several times
// before 2026-11-30, answering ABORTED after about two seconds: a booking
// left open longer than that shows it now waits instead, however long (within
// the call's deadline).
constexpr auto kLongerThanTheOldRetries = std::chrono::milliseconds(2500);

// Keeps the booking on B open that long, checking that the cancellation
// waits meanwhile, then ends it with `end` (COMMIT or ROLLBACK).
void EndTheBookingOnBLate(PromotionRace& race, const char* end) {
  EXPECT_NE(race.cancel.wait_for(kLongerThanTheOldRetries), std::future_status::ready)
      << "the cancellation ended while the person first in line might still get B";
  ASSERT_TRUE(race.other->ExecScript(end).ok());
}

// The cancellation ended well; the first person waiting was skipped (they
// hold the visit on B that date) and the seat went to the next.
void ExpectSkippedForTheNext(PromotionRace& race) {
  grpc::Status st = race.cancel.get();
  EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  auto statuses = race.other->Exec(
      "SELECT (SELECT count(*) FROM bookings WHERE participant_id = $1::uuid AND status = 1), "
      "(SELECT status FROM bookings WHERE id = $2::uuid), "
      "(SELECT status FROM bookings WHERE id = $3::uuid)",
      {race.first, race.first_waiting.id(), race.next_waiting.id()});
  ASSERT_TRUE(statuses.ok());
  EXPECT_EQ(statuses->Int(0, 0), 1) << "one confirmed visit that date";
  EXPECT_EQ(statuses->Int(0, 1), sv1::BOOKING_STATUS_WAITLISTED) << "skipped at promotion";
  EXPECT_EQ(statuses->Int(0, 2), sv1::BOOKING_STATUS_CONFIRMED) << "the seat went to the next";
}

TEST_F(SchedulingConcurrency, PromotionSkipsSomeoneConfirmedElsewhereThatDateMeanwhile) {
  // The promotion must not break the one-visit rule nor fail the
  // cancellation that freed the seat: once the booking on B commits, the
  // seat passes to the next person waiting.
  PromotionRace race;
  ASSERT_NO_FATAL_FAILURE(StartPromotionRace(*fx_, *org_, 45, "PROMO", &race));
  ASSERT_TRUE(race.other->ExecScript("COMMIT").ok());
  ExpectSkippedForTheNext(race);
}

TEST_F(SchedulingConcurrency, PromotionWaitsOutALongConfirmationElsewhere) {
  PromotionRace race;
  ASSERT_NO_FATAL_FAILURE(StartPromotionRace(*fx_, *org_, 47, "PROML", &race));
  ASSERT_NO_FATAL_FAILURE(EndTheBookingOnBLate(race, "COMMIT"));
  ExpectSkippedForTheNext(race);
}

TEST_F(SchedulingConcurrency, AMoveWaitsOutALongConfirmationElsewhereToo) {
  // The seat is freed by moving its holder to a visit on another date.
  sv1::Session later = NewSession(*fx_, *org_, 5, DateIn(49));
  PromotionRace race;
  ASSERT_NO_FATAL_FAILURE(StartPromotionRace(*fx_, *org_, 48, "PROMV", &race, later.id()));
  ASSERT_NO_FATAL_FAILURE(EndTheBookingOnBLate(race, "COMMIT"));
  ExpectSkippedForTheNext(race);
}

TEST_F(SchedulingConcurrency, PromotionWaitsOutAConfirmationElsewhereThatRollsBack) {
  // As above, but the booking on B takes longer than the promotion's 200 ms
  // wait, and then rolls back. The first person waiting for A never got B,
  // so A's freed seat is theirs: the promotion starts again rather than pass
  // them over on a guess.
  PromotionRace race;
  ASSERT_NO_FATAL_FAILURE(StartPromotionRace(*fx_, *org_, 46, "PROMW", &race));
  // Past the promotion's wait (it gave up once by now), then undone.
  ASSERT_NO_FATAL_FAILURE(EndTheBookingOnBLate(race, "ROLLBACK"));
  grpc::Status st = race.cancel.get();
  EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  auto statuses = race.other->Exec(
      "SELECT (SELECT status FROM bookings WHERE id = $1::uuid), "
      "(SELECT status FROM bookings WHERE id = $2::uuid)",
      {race.first_waiting.id(), race.next_waiting.id()});
  ASSERT_TRUE(statuses.ok());
  EXPECT_EQ(statuses->Int(0, 0), sv1::BOOKING_STATUS_CONFIRMED) << "first in line, promoted";
  EXPECT_EQ(statuses->Int(0, 1), sv1::BOOKING_STATUS_WAITLISTED);
}

TEST_F(SchedulingConcurrency, OppositeReschedulesNeverDeadlock) {
  // Two connectors swap between two sessions at the same moment, again and
  // again: each move locks both sessions' seats, in one order for everyone,
  // so PostgreSQL never has to break a deadlock (each costs a second's stall
  // and a retry).
  sv1::Session a = NewSession(*fx_, *org_, 10, DateIn(50));
  sv1::Session b = NewSession(*fx_, *org_, 10, DateIn(51));
  std::string ids[2];
  std::string at[2] = {a.id(), b.id()};
  for (int i = 0; i < 2; ++i) {
    sv1::Booking booked;
    ASSERT_TRUE(Book(*fx_, at[i], Register(*fx_, absl::StrCat("SWAP0", i)).id(), &booked).ok());
    ids[i] = booked.id();
  }
  auto deadlocks = [&] { return DeadlocksIn(fx_->scheduling_db); };
  int64_t before = deadlocks();
  for (int round = 0; round < 30; ++round) {
    std::future<grpc::Status> moves[2];
    sv1::Booking moved[2];
    for (int i = 0; i < 2; ++i) {
      moves[i] = std::async(std::launch::async, [&, i] {
        sv1::RescheduleBookingRequest req;
        req.set_id(ids[i]);
        req.set_session_id(at[1 - i]);
        return fx_->stub->RescheduleBooking(Ctx(fx_->admin).get(), req, &moved[i]);
      });
    }
    for (int i = 0; i < 2; ++i) {
      grpc::Status st = moves[i].get();
      ASSERT_TRUE(st.ok()) << st.error_message();
      ids[i] = moved[i].id();
    }
    std::swap(at[0], at[1]);
  }
  absl::SleepFor(absl::Milliseconds(1500));  // backends report their statistics within a second
  EXPECT_EQ(deadlocks(), before) << "reschedules deadlocked";
}

TEST_F(SchedulingConcurrency, CancellingASessionWhileItIsBookedNeverDeadlocks) {
  // The programme team cancels sessions while people book them: the
  // cancellation and the bookings queue for the seats, and none of them has
  // to be broken out of a deadlock by PostgreSQL.
  std::vector<std::string> people;
  for (int i = 0; i < 8; ++i) people.push_back(Register(*fx_, absl::StrCat("CXL0", i)).id());
  auto deadlocks = [&] { return DeadlocksIn(fx_->scheduling_db); };
  int64_t before = deadlocks();
  for (int round = 0; round < 15; ++round) {
    sv1::Session s = NewSession(*fx_, *org_, 4, DateIn(60 + round));
    std::vector<std::future<grpc::Status>> calls;
    for (const std::string& p : people) {
      calls.push_back(std::async(std::launch::async, [&, p] {
        sv1::Booking b;
        return Book(*fx_, s.id(), p, &b);
      }));
    }
    calls.push_back(std::async(std::launch::async, [&] {
      sv1::CancelSessionRequest req;
      req.set_id(s.id());
      req.set_reason("ward closed");
      sv1::Session out;
      return fx_->stub->CancelSession(Ctx(fx_->admin).get(), req, &out);
    }));
    for (auto& c : calls) {
      grpc::Status st = c.get();
      EXPECT_TRUE(st.ok() || st.error_code() == grpc::StatusCode::FAILED_PRECONDITION)
          << st.error_code() << " " << st.error_message();
    }
  }
  absl::SleepFor(absl::Milliseconds(1500));  // backends report their statistics within a second
  EXPECT_EQ(deadlocks(), before) << "cancellations and bookings deadlocked";
}

// The participant's lock comes before any site's, for every writer that
// takes both: a deactivation holds the leaver and then wants the seats of
// their bookings, so a writer holding some seats while it waits for the
// leaver would deadlock with it (PostgreSQL breaks that after a second's
// stall, and the loser retries).

// A second connection holding the seats of `session` in an open transaction.
std::unique_ptr<db::Conn> HoldSeats(const std::string& db_url, const std::string& session) {
  auto conn = db::Conn::Open(db_url, "test");
  EXPECT_TRUE(conn.ok()) << conn.status();
  if (!conn.ok()) return nullptr;
  EXPECT_TRUE((*conn)->ExecScript("BEGIN").ok());
  EXPECT_TRUE(
      (*conn)
          ->Exec("SELECT 1 FROM session_sites WHERE session_id = $1::uuid FOR UPDATE", {session})
          .ok());
  return *std::move(conn);
}

std::future<grpc::Status> Deactivate(SchedulingFixture& fx, const std::string& participant) {
  return std::async(std::launch::async, [&fx, participant] {
    sv1::DeactivateParticipantRequest req;
    req.set_id(participant);
    sv1::Participant out;
    return fx.stub->DeactivateParticipant(Ctx(fx.admin).get(), req, &out);
  });
}

// Sessions in the sites' lock order (session id: each has the one site '').
std::vector<sv1::Session> SessionsInLockOrder(SchedulingFixture& fx, const std::string& org, int n,
                                              int first_day) {
  std::vector<sv1::Session> s;
  for (int i = 0; i < n; ++i) s.push_back(NewSession(fx, org, 5, DateIn(first_day + i)));
  std::sort(s.begin(), s.end(),
            [](const sv1::Session& x, const sv1::Session& y) { return x.id() < y.id(); });
  return s;
}

// Every booking in one lane (BOOKING_LANES=1), so that the bookings a test
// queues behind a held batch run together as the next one; a batch waits
// for its locks as long as they are held (BOOKING_LOCK_WAIT), as it does for
// waits shorter than that.
class SchedulingOneLane : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fx_ = new SchedulingFixture(
        std::map<std::string, std::string>{{"BOOKING_LANES", "1"}, {"BOOKING_LOCK_WAIT", "1h"}});
    org_ = new std::string(fx_->CreatePartner("One Lane Trust"));
  }
  static void TearDownTestSuite() {
    delete fx_;
    delete org_;
  }
  static std::future<grpc::Status> BookLater(const std::string& session, const std::string& who,
                                             sv1::Booking* out,
                                             const std::string& request_id = "") {
    return std::async(std::launch::async, [session, who, out, request_id] {
      return Book(*fx_, session, who, out, request_id);
    });
  }
  static void PromotionBesideABatchBookingThatPersonElsewhere(bool retry_in_batch);
  // Until `n` callers wait for the lane (queued, or in its running batch).
  static bool UntilQueued(int n) {
    const std::string waiting = "connecting_group_commit_waiting{committer=\"bookings\"}";
    for (int i = 0; i < 250; ++i) {
      if (MetricValue(fx_->scheduling->metrics_port(), waiting) == n) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }
  static SchedulingFixture* fx_;
  static std::string* org_;
};
SchedulingFixture* SchedulingOneLane::fx_ = nullptr;
std::string* SchedulingOneLane::org_ = nullptr;

// One lane, and a booking waits for its seats in its batch for 100 ms.
class SchedulingLockWait : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fx_ = new SchedulingFixture(
        std::map<std::string, std::string>{{"BOOKING_LANES", "1"}, {"BOOKING_LOCK_WAIT", "100ms"}});
  }
  static void TearDownTestSuite() { delete fx_; }
  static SchedulingFixture* fx_;
};
SchedulingFixture* SchedulingLockWait::fx_ = nullptr;

TEST_F(SchedulingLockWait, BookingsWaitingForHeldSeatsHoldUpNoOtherSession) {
  // A transaction holds a session's seats (a large session being cancelled,
  // a client that left one open). A booking of those seats waits for them,
  // and so does the one booking them after it; a booking of another session
  // in the same lane must not wait with them. Once the seats are let go the
  // two book in the order they came.
  SchedulingFixture& fx = *fx_;
  const std::string org = fx.CreatePartner("Lock Wait Trust");
  sv1::Session held = NewSession(fx, org, 1, DateIn(90));
  sv1::Session other = NewSession(fx, org, 5, DateIn(91));
  const std::string first = Register(fx, "LOCKW1").id();
  const std::string second = Register(fx, "LOCKW2").id();
  const std::string elsewhere = Register(fx, "LOCKW3").id();
  const std::string lock_waits = "connecting_group_commit_lock_waits_total{committer=\"bookings\"}";
  const double waits_before = MetricValue(fx.scheduling->metrics_port(), lock_waits).value_or(0);

  std::unique_ptr<db::Conn> holder = HoldSeats(fx.scheduling_db, held.id());
  ASSERT_TRUE(holder);
  sv1::Booking first_out, second_out, elsewhere_out;
  auto first_call =
      std::async(std::launch::async, [&] { return Book(fx, held.id(), first, &first_out); });
  ASSERT_TRUE(UntilLockWaiters(fx.scheduling_db, 1));
  auto second_call =
      std::async(std::launch::async, [&] { return Book(fx, held.id(), second, &second_out); });
  absl::SleepFor(absl::Milliseconds(300));  // past the lock wait: both wait apart now
  const absl::Time start = absl::Now();
  grpc::Status st = Book(fx, other.id(), elsewhere, &elsewhere_out);
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_EQ(elsewhere_out.status(), sv1::BOOKING_STATUS_CONFIRMED);
  EXPECT_LT(took, absl::Seconds(2)) << "a booking of another session waited for the held seats";
  EXPECT_EQ(first_call.wait_for(std::chrono::seconds(0)), std::future_status::timeout)
      << "booked while the seats were held";
  EXPECT_EQ(second_call.wait_for(std::chrono::seconds(0)), std::future_status::timeout)
      << "booked while the seats were held";
  EXPECT_GE(MetricValue(fx.scheduling->metrics_port(), lock_waits).value_or(0), waits_before + 1);

  ASSERT_TRUE(holder->ExecScript("COMMIT").ok());
  st = first_call.get();
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  st = second_call.get();
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_EQ(first_out.status(), sv1::BOOKING_STATUS_CONFIRMED) << "not in the order they came";
  EXPECT_EQ(second_out.status(), sv1::BOOKING_STATUS_WAITLISTED);
  EXPECT_EQ(second_out.waitlist_position(), 1);
  sv1::GetSessionRequest get;
  get.set_id(held.id());
  sv1::Session now;
  ASSERT_TRUE(fx.stub->GetSession(Ctx(fx.admin).get(), get, &now).ok());
  EXPECT_EQ(now.sites(0).confirmed(), 1);
  EXPECT_EQ(now.sites(0).waitlisted(), 1);
}

TEST_F(SchedulingOneLane, DeactivationNeverDeadlocksWithABatchBookingTheLeaver) {
  // The leaver holds bookings on sessions a and b. One batch books someone
  // else on b and the leaver on c while the leaver is deactivated: the batch
  // took b's seats for the first booking when the second reads the leaver,
  // whom the deactivation holds while it waits for a's seats and then b's.
  // The batch must take its participants before any seats instead: then it
  // waits for the deactivation holding nothing it wants, and the leaver's
  // booking is refused.
  SchedulingFixture& fx = *fx_;
  std::vector<sv1::Session> s = SessionsInLockOrder(fx, *org_, 4, 80);
  const std::string &a = s[0].id(), &b = s[1].id(), &c = s[2].id(), &d = s[3].id();
  std::string leaver = Register(fx, "LANE01").id();
  std::string other = Register(fx, "LANE02").id();
  std::string blocker = Register(fx, "LANE03").id();
  sv1::Booking held;
  ASSERT_TRUE(Book(fx, a, leaver, &held).ok());
  ASSERT_TRUE(Book(fx, b, leaver, &held).ok());
  int64_t deadlocks = DeadlocksIn(fx.scheduling_db);

  std::unique_ptr<db::Conn> on_d = HoldSeats(fx.scheduling_db, d);
  std::unique_ptr<db::Conn> on_a = HoldSeats(fx.scheduling_db, a);
  ASSERT_TRUE(on_d && on_a);
  sv1::Booking first_out, other_out, leaver_out;
  auto first = BookLater(d, blocker, &first_out);  // the lane's batch waits for d
  ASSERT_TRUE(UntilLockWaiters(fx.scheduling_db, 1));
  auto other_on_b = BookLater(b, other, &other_out);
  auto leaver_on_c = BookLater(c, leaver, &leaver_out);
  ASSERT_TRUE(UntilQueued(3))
      << "the two bookings should queue behind the first batch, to run as one";
  auto deactivation = Deactivate(fx, leaver);
  ASSERT_TRUE(UntilLockWaiters(fx.scheduling_db, 2)) << "the deactivation should wait for a";
  ASSERT_TRUE(on_d->ExecScript("COMMIT").ok());
  grpc::Status st = first.get();
  ASSERT_TRUE(st.ok()) << st.error_message();
  // The next batch runs and waits for the leaver, beside the deactivation.
  ASSERT_TRUE(UntilLockWaiters(fx.scheduling_db, 2));
  ASSERT_TRUE(on_a->ExecScript("COMMIT").ok());

  st = deactivation.get();
  EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  st = other_on_b.get();
  EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_EQ(other_out.status(), sv1::BOOKING_STATUS_CONFIRMED);
  st = leaver_on_c.get();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << "the leaver booked after the deactivation committed: " << st.error_message();
  auto live = on_a->Exec(
      "SELECT count(*) FROM bookings WHERE participant_id = $1::uuid AND status IN (1, 2)",
      {leaver});
  ASSERT_TRUE(live.ok());
  EXPECT_EQ(live->Int(0, 0), 0) << "a seat kept by someone who has left";
  absl::SleepFor(absl::Milliseconds(1500));  // backends report their statistics within a second
  EXPECT_EQ(DeadlocksIn(fx.scheduling_db), deadlocks)
      << "the batch and the deactivation deadlocked";
}

// A seat frees on visit A while the first person waiting for it is being
// booked on visit B the same date, by a batch that also wants A's seats for
// someone else, and that waits for A's seats behind the cancellation. Either
// way the promotion and the batch must not deadlock.
//
// `retry_in_batch`: the batch also carries a retried request, so that it
// books one by one (book_sites' loop, R__book_session.sql), taking each
// site's lock just before its bookings: it has confirmed the first person on
// B when it waits for A. The promotion then waits for that batch (the one
// visit per date index) and the batch for A's seats: the promotion must give
// up waiting soon and start again, letting the batch finish (its booking on
// A joins the line); then the first person has B, is skipped, and the seat
// goes down the line. Without it the batch is booked in one statement, which
// takes every site's lock before booking anyone: the promotion goes first,
// the first person gets A's seat, and B is refused (one visit per date).
void SchedulingOneLane::PromotionBesideABatchBookingThatPersonElsewhere(bool retry_in_batch) {
  SchedulingFixture& fx = *fx_;
  std::string date = DateIn(retry_in_batch ? 86 : 88);
  // One seat each, B before A in the lock order (the batch locks B, then A).
  sv1::Session b = NewSession(fx, *org_, 1, date), a = NewSession(fx, *org_, 1, date);
  if (a.id() < b.id()) std::swap(a, b);
  sv1::Session c = NewSession(fx, *org_, 5, DateIn(retry_in_batch ? 87 : 89));
  std::string tag = retry_in_batch ? "PROM0" : "PROM1";
  std::string holder = Register(fx, tag + "1").id(), first = Register(fx, tag + "2").id();
  std::string other = Register(fx, tag + "3").id(), blocker = Register(fx, tag + "4").id();
  std::string retrier = Register(fx, tag + "5").id();
  sv1::Booking held, waiting, retried;
  ASSERT_TRUE(Book(fx, a.id(), holder, &held).ok());
  ASSERT_TRUE(Book(fx, a.id(), first, &waiting).ok());
  ASSERT_EQ(waiting.status(), sv1::BOOKING_STATUS_WAITLISTED);
  const std::string retry_key = "retry-" + tag;
  if (retry_in_batch) {
    ASSERT_TRUE(Book(fx, c.id(), retrier, &retried, retry_key).ok());
  }
  int64_t deadlocks = DeadlocksIn(fx.scheduling_db);

  std::unique_ptr<db::Conn> on_a = HoldSeats(fx.scheduling_db, a.id());
  std::unique_ptr<db::Conn> on_c = HoldSeats(fx.scheduling_db, c.id());
  ASSERT_TRUE(on_a && on_c);
  // The cancellation queues for A's seats first.
  auto cancel = std::async(std::launch::async, [&] {
    sv1::CancelBookingRequest req;
    req.set_id(held.id());
    sv1::Booking out;
    return fx.stub->CancelBooking(Ctx(fx.admin).get(), req, &out);
  });
  ASSERT_TRUE(UntilLockWaiters(fx.scheduling_db, 1));
  // A batch waits for C; behind it, the first person on B and someone on A
  // (and the retry).
  sv1::Booking blocker_out, first_on_b, other_on_a, retried_again;
  auto blocked = BookLater(c.id(), blocker, &blocker_out);
  ASSERT_TRUE(UntilLockWaiters(fx.scheduling_db, 2));
  auto on_b_call = BookLater(b.id(), first, &first_on_b);
  auto on_a_call = BookLater(a.id(), other, &other_on_a);
  std::future<grpc::Status> retry_call;
  if (retry_in_batch) retry_call = BookLater(c.id(), retrier, &retried_again, retry_key);
  ASSERT_TRUE(UntilQueued(retry_in_batch ? 4 : 3));
  ASSERT_TRUE(on_c->ExecScript("COMMIT").ok());
  grpc::Status st = blocked.get();
  ASSERT_TRUE(st.ok()) << st.error_message();
  // The next batch queues for A's seats, behind the cancellation.
  ASSERT_TRUE(UntilLockWaiters(fx.scheduling_db, 2));
  ASSERT_TRUE(on_a->ExecScript("COMMIT").ok());

  st = cancel.get();
  EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  st = on_b_call.get();
  grpc::Status on_a_st = on_a_call.get();
  EXPECT_TRUE(on_a_st.ok()) << on_a_st.error_code() << " " << on_a_st.error_message();
  if (retry_in_batch) {
    EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
    EXPECT_EQ(first_on_b.status(), sv1::BOOKING_STATUS_CONFIRMED);
    grpc::Status again = retry_call.get();
    EXPECT_TRUE(again.ok()) << again.error_message();
    EXPECT_EQ(retried_again.id(), retried.id());
  } else {
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
        << "promoted on A first, the person cannot hold B the same date: " << st.error_message();
  }
  for (const sv1::Booking& x : SessionBookings(fx, a.id())) {
    if (x.id() == waiting.id()) {
      EXPECT_EQ(x.status(),
                retry_in_batch ? sv1::BOOKING_STATUS_WAITLISTED : sv1::BOOKING_STATUS_CONFIRMED)
          << (retry_in_batch ? "has B that date: skipped" : "first in line for the seat");
    }
    if (x.id() == other_on_a.id()) {
      EXPECT_EQ(x.status(),
                retry_in_batch ? sv1::BOOKING_STATUS_CONFIRMED : sv1::BOOKING_STATUS_WAITLISTED)
          << (retry_in_batch ? "the seat went down the line" : "behind the one promoted");
    }
  }
  absl::SleepFor(absl::Milliseconds(1500));  // backends report their statistics within a second
  EXPECT_EQ(DeadlocksIn(fx.scheduling_db), deadlocks) << "the promotion and the batch deadlocked";
}

TEST_F(SchedulingOneLane, APromotionNeverDeadlocksWithABatchConfirmingThatPersonElsewhere) {
  PromotionBesideABatchBookingThatPersonElsewhere(/*retry_in_batch=*/true);
}

TEST_F(SchedulingOneLane, APromotionNeverDeadlocksWithABatchBookedInOneStatement) {
  PromotionBesideABatchBookingThatPersonElsewhere(/*retry_in_batch=*/false);
}

// Another writer's confirmed visit for `participant` at `session` (a
// frontline visit), inserted with its seat counted and not committed: the
// returned connection holds it until COMMIT or ROLLBACK; null on failure.
std::unique_ptr<db::Conn> UncommittedVisit(SchedulingFixture& fx, const sv1::Session& session,
                                           const std::string& participant) {
  auto c = db::Conn::Open(fx.scheduling_db, "test");
  if (!c.ok()) return nullptr;
  absl::Status s = (*c)->ExecScript(absl::StrCat(
      "BEGIN; INSERT INTO bookings (session_id, site, participant_id, status, session_date, "
      "kind) VALUES ('",
      session.id(), "', '', '", participant, "', 1, '", session.date(),
      "', 1); UPDATE session_sites SET confirmed = confirmed + 1 WHERE session_id = '",
      session.id(), "'"));
  if (!s.ok()) return nullptr;
  return *std::move(c);
}

TEST_F(SchedulingOneLane, ABatchBookedInOneStatementDecidesAgainWhenAnotherWriterTookAPlace) {
  // A batch booked in one statement (book_sites' set-based path) decides
  // every booking from what is committed when it reads, then inserts. A
  // writer that was not yet committed then (another replica, say) gives one
  // of them the same person's visit that date: that insert finds the
  // other's row only when it commits. The seat it had counted on must not
  // be lost: the batch is decided again, the person refused, and the seat
  // goes to the next in the batch instead of leaving them waiting beside it.
  SchedulingFixture& fx = *fx_;
  std::string date = DateIn(90);
  sv1::Session one_seat = NewSession(fx, *org_, 1, date);
  sv1::Session elsewhere = NewSession(fx, *org_, 5, date);
  sv1::Session d = NewSession(fx, *org_, 5, DateIn(91));
  std::string p = Register(fx, "RACE01").id(), q = Register(fx, "RACE02").id();
  std::string blocker = Register(fx, "RACE03").id();

  std::unique_ptr<db::Conn> on_d = HoldSeats(fx.scheduling_db, d.id());
  ASSERT_TRUE(on_d);
  sv1::Booking blocker_out, p_out, q_out;
  auto blocked = BookLater(d.id(), blocker, &blocker_out);
  ASSERT_TRUE(UntilLockWaiters(fx.scheduling_db, 1));
  auto p_call = BookLater(one_seat.id(), p, &p_out);
  ASSERT_TRUE(UntilQueued(2));
  auto q_call = BookLater(one_seat.id(), q, &q_out);  // after p, in the same batch
  ASSERT_TRUE(UntilQueued(3));
  // The other writer: p's visit elsewhere that date, not committed yet.
  std::unique_ptr<db::Conn> other = UncommittedVisit(fx, elsewhere, p);
  ASSERT_TRUE(other);
  ASSERT_TRUE(on_d->ExecScript("COMMIT").ok());
  grpc::Status st = blocked.get();
  ASSERT_TRUE(st.ok()) << st.error_message();
  // The batch of p and q has decided (p the seat, q the line) and waits to
  // see whether p's visit elsewhere commits.
  ASSERT_TRUE(UntilLockWaiters(fx.scheduling_db, 1));
  ASSERT_TRUE(other->ExecScript("COMMIT").ok());

  st = p_call.get();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << "p holds a visit that date: " << st.error_message();
  st = q_call.get();
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_EQ(q_out.status(), sv1::BOOKING_STATUS_CONFIRMED) << "the seat p did not take";
  auto seats = other->Exec(
      "SELECT confirmed, waitlisted, (SELECT count(*) FROM bookings b WHERE b.session_id = "
      "ss.session_id AND b.status = 1) FROM session_sites ss WHERE ss.session_id = $1::uuid",
      {one_seat.id()});
  ASSERT_TRUE(seats.ok()) << seats.status();
  EXPECT_EQ(seats->Int(0, 0), 1);
  EXPECT_EQ(seats->Int(0, 1), 0);
  EXPECT_EQ(seats->Int(0, 2), 1) << "the counters and the rows agree";
}

TEST_F(SchedulingOneLane, ABookingAloneInItsBatchDecidesAgainWhenAnotherWriterTookItsDate) {
  // As above with a batch of one: its insert meets the other writer's row
  // (a unique index's violation once that commits), and there is nobody
  // else in the batch to run alone instead. The booking is decided again and
  // refused under the rule, rather than answered with the index's error.
  SchedulingFixture& fx = *fx_;
  std::string date = DateIn(92);
  sv1::Session here = NewSession(fx, *org_, 3, date);
  sv1::Session elsewhere = NewSession(fx, *org_, 3, date);
  std::string p = Register(fx, "RACE11").id();
  std::unique_ptr<db::Conn> other = UncommittedVisit(fx, elsewhere, p);
  ASSERT_TRUE(other);
  sv1::Booking p_out;
  auto p_call = BookLater(here.id(), p, &p_out);
  ASSERT_TRUE(UntilLockWaiters(fx.scheduling_db, 1));  // its insert waits for the other
  ASSERT_TRUE(other->ExecScript("COMMIT").ok());
  grpc::Status st = p_call.get();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << "p holds a visit that date: " << st.error_code() << " " << st.error_message();
  auto seats = other->Exec(
      "SELECT confirmed, waitlisted, (SELECT count(*) FROM bookings b WHERE b.session_id = "
      "ss.session_id) FROM session_sites ss WHERE ss.session_id = $1::uuid",
      {here.id()});
  ASSERT_TRUE(seats.ok()) << seats.status();
  EXPECT_EQ(seats->Int(0, 0), 0);
  EXPECT_EQ(seats->Int(0, 1), 0);
  EXPECT_EQ(seats->Int(0, 2), 0) << "nothing booked here";
}

TEST_F(SchedulingConcurrency, DeactivationNeverDeadlocksWithTheLeaversReschedule) {
  // The leaver moves a booking from a to b as they are deactivated: the move
  // holds a's seats and waits for b's (held here); the deactivation holds the
  // leaver and wants a's. Had the move read the leaver only once it had both
  // sites, as booking b does, each would wait for the other.
  std::vector<sv1::Session> s = SessionsInLockOrder(*fx_, *org_, 2, 90);
  const std::string &a = s[0].id(), &b = s[1].id();
  std::string leaver = Register(*fx_, "MOVE01").id();
  sv1::Booking on_a;
  ASSERT_TRUE(Book(*fx_, a, leaver, &on_a).ok());
  int64_t deadlocks = DeadlocksIn(fx_->scheduling_db);
  std::unique_ptr<db::Conn> on_b = HoldSeats(fx_->scheduling_db, b);
  ASSERT_TRUE(on_b);
  sv1::Booking moved;
  auto move = std::async(std::launch::async, [&] {
    sv1::RescheduleBookingRequest req;
    req.set_id(on_a.id());
    req.set_session_id(b);
    return fx_->stub->RescheduleBooking(Ctx(fx_->admin).get(), req, &moved);
  });
  ASSERT_TRUE(UntilLockWaiters(fx_->scheduling_db, 1)) << "the move should wait for b";
  auto deactivation = Deactivate(*fx_, leaver);
  ASSERT_TRUE(UntilLockWaiters(fx_->scheduling_db, 2)) << "the deactivation should wait";
  ASSERT_TRUE(on_b->ExecScript("COMMIT").ok());
  grpc::Status st = move.get();
  EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  st = deactivation.get();
  EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  auto live = on_b->Exec(
      "SELECT count(*) FROM bookings WHERE participant_id = $1::uuid AND status IN (1, 2)",
      {leaver});
  ASSERT_TRUE(live.ok());
  EXPECT_EQ(live->Int(0, 0), 0) << "the moved booking outlived the deactivation";
  absl::SleepFor(absl::Milliseconds(1500));  // backends report their statistics within a second
  EXPECT_EQ(DeadlocksIn(fx_->scheduling_db), deadlocks)
      << "the move and the deactivation deadlocked";
}

TEST_F(SchedulingConcurrency, AcceptingAVisitAsItsArrangerLeavesNeverDeadlocks) {
  // The host accepts a visit at the moment its arranger is deactivated. The
  // deactivation holds the arranger and then cancels their pending visits;
  // an acceptance that held the visit while it waited for the arranger
  // would deadlock with it. Here a second connection does what the
  // deactivation does.
  std::string arranger = Register(*fx_, "ACC001").id();
  sv1::Session pending = ArrangedVisit(*fx_, *org_, arranger, DateIn(95));
  int64_t deadlocks = DeadlocksIn(fx_->scheduling_db);
  auto other = db::Conn::Open(fx_->scheduling_db, "test");
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE((*other)->ExecScript("BEGIN; SET LOCAL lock_timeout = '5s'").ok());
  ASSERT_TRUE(
      (*other)
          ->Exec("SELECT 1 FROM participants WHERE id = $1::uuid FOR NO KEY UPDATE", {arranger})
          .ok());
  auto accept = std::async(std::launch::async, [&] {
    sv1::AcceptSessionRequest req;
    req.set_id(pending.id());
    sv1::Session out;
    return fx_->stub->AcceptSession(Ctx(Token(server::Role::kPartner, "host", *org_)).get(), req,
                                    &out);
  });
  UntilWaitingOrDone(fx_->scheduling_db, accept);
  ASSERT_TRUE(WaitsForALock(fx_->scheduling_db)) << "the acceptance should wait for the arranger";
  absl::Status cancel = (*other)
                            ->Exec(
                                "UPDATE sessions SET status = $2, version = version + 1 "
                                "WHERE id = $1::uuid",
                                {pending.id(), static_cast<int32_t>(sv1::SESSION_STATUS_CANCELLED)})
                            .status();
  EXPECT_TRUE(cancel.ok()) << "the deactivation could not cancel the visit: " << cancel;
  ASSERT_TRUE((*other)
                  ->Exec("UPDATE participants SET status = 2, version = version + 1 "
                         "WHERE id = $1::uuid",
                         {arranger})
                  .ok());
  ASSERT_TRUE((*other)->ExecScript("COMMIT").ok());
  grpc::Status st = accept.get();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  absl::SleepFor(absl::Milliseconds(1500));  // backends report their statistics within a second
  EXPECT_EQ(DeadlocksIn(fx_->scheduling_db), deadlocks);
}

// 400 people booking one session of 10 seats at once, each request with its
// own request_id, from 16 client threads: for stopping the service mid-way.
class BookingStorm {
 public:
  static constexpr int kPeople = 400;
  struct Told {
    bool ok = false;
    std::string id;
    int status = 0;
    std::string error;  // the last try's, when it failed
  };

  // On the shared PostgreSQL, or `own_pg`.
  explicit BookingStorm(const PostgresServer* own_pg = nullptr) : fx({}, "", own_pg) {
    std::string org = fx.CreatePartner("Storm Trust");
    session = NewSession(fx, org, 10, DateIn(7));
    for (int i = 0; i < kPeople; ++i) {
      people.push_back(Register(fx, "KX" + std::to_string(1000 + i)).id());
    }
    Reconnect();
  }
  // Opens the test's own connection to the database (again after a crash of
  // the server).
  void Reconnect() {
    auto conn = db::Conn::Open(fx.scheduling_db, "test");
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (conn.ok()) conn_ = *std::move(conn);
  }

  // Sends every request (again); `acked` counts the answered ones.
  std::vector<std::thread> Book(std::atomic<int>* acked) {
    next_ = 0;
    std::vector<std::thread> threads;
    for (int t = 0; t < 16; ++t) {
      threads.emplace_back([this, acked] {
        for (int i = next_++; i < kPeople; i = next_++) {
          sv1::Booking b;
          grpc::Status st = testing::Book(fx, session.id(), people[i], &b,
                                          "storm-" + std::to_string(i));
          if (st.ok()) {
            told[i] = {true, b.id(), b.status(), ""};
            ++*acked;
          } else {
            told[i].error = absl::StrCat(st.error_code(), " ", st.error_message());
            if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
              ++unanswered;  // taken and never answered within the client's 10 s
            }
          }
        }
      });
    }
    return threads;
  }
  // Books until `n` are acknowledged, then runs `stop`; returns what clients were told.
  std::vector<Told> StopAfter(int n, const std::function<void()>& stop) {
    std::atomic<int> acked{0};
    std::vector<std::thread> threads = Book(&acked);
    for (int i = 0; i < 2000 && acked.load() < n; ++i) absl::SleepFor(absl::Milliseconds(5));
    stop();
    for (auto& t : threads) t.join();
    int answered = 0;
    for (const Told& t : told) answered += t.ok;
    std::printf("stopped with %d of %d bookings acknowledged\n", answered, kPeople);
    EXPECT_GE(answered, n);
    EXPECT_LT(answered, kPeople) << "the stop came after every booking; nothing was tested";
    return told;
  }

  int64_t Scalar(const std::string& sql) {
    auto r = conn_->Exec(sql, {session.id()});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() && r->rows() == 1 ? r->Int(0, 0) : -1;
  }
  // Counters match the rows, at most 10 confirmed, and they are the earliest.
  void ExpectConsistent(const char* when) {
    SCOPED_TRACE(when);
    EXPECT_EQ(Scalar("SELECT confirmed FROM session_sites WHERE session_id = $1::uuid"),
              Scalar("SELECT count(*) FROM bookings WHERE session_id = $1::uuid AND status = 1"));
    EXPECT_EQ(Scalar("SELECT waitlisted FROM session_sites WHERE session_id = $1::uuid"),
              Scalar("SELECT count(*) FROM bookings WHERE session_id = $1::uuid AND status = 2"));
    EXPECT_LE(Scalar("SELECT count(*) FROM bookings WHERE session_id = $1::uuid AND status = 1"),
              10);
    EXPECT_EQ(Scalar("SELECT count(*) FROM (SELECT status FROM bookings WHERE session_id = "
                     "$1::uuid ORDER BY seq LIMIT 10) first WHERE status <> 1"),
              0)
        << "the confirmed are the earliest arrivals";
  }
  // Every booking a client was told of is stored as told.
  void ExpectStoredAsTold(const std::vector<Told>& told_then) {
    for (const Told& t : told_then) {
      if (!t.ok) continue;
      auto r = conn_->Exec("SELECT status FROM bookings WHERE id = $1::uuid", {t.id});
      ASSERT_TRUE(r.ok() && r->rows() == 1) << "acknowledged booking " << t.id << " lost";
      EXPECT_EQ(r->Int(0, 0), t.status);
    }
  }
  // Exactly one booking.confirmed/waitlisted event per stored booking.
  void ExpectOneEventPerBooking() {
    std::vector<std::string> stored;
    auto rows = conn_->Exec("SELECT id::text FROM bookings WHERE session_id = $1::uuid",
                            {session.id()});
    ASSERT_TRUE(rows.ok()) << rows.status();
    for (int i = 0; i < rows->rows(); ++i) stored.push_back(rows->String(i, 0));
    std::map<std::string, int> events;
    for (int i = 0; i < 300; ++i) {
      events.clear();
      for (const StoredEvent& e : ReadStream(fx.nats_url, fx.scheduling_stream)) {
        if (absl::EndsWith(e.subject, ".booking.confirmed") ||
            absl::EndsWith(e.subject, ".booking.waitlisted")) {
          ++events[e.headers.at("ce-subject")];
        }
      }
      if (events.size() >= stored.size()) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    EXPECT_EQ(events.size(), stored.size()) << "events for bookings that are not stored";
    for (const std::string& id : stored) {
      auto it = events.find(id);
      ASSERT_NE(it, events.end()) << "no event for booking " << id;
      EXPECT_EQ(it->second, 1) << "booking " << id << " published twice";
    }
  }
  // Every client retries every request after `what`: each succeeds, a
  // request acknowledged before gets the same booking back, and the
  // session holds one booking per person, one event each.
  void RetryEveryRequest(const std::vector<Told>& before, const std::string& what) {
    std::atomic<int> acked{0};
    for (auto& t : Book(&acked)) t.join();
    for (int i = 0; i < kPeople; ++i) {
      ASSERT_TRUE(told[i].ok) << "request " << i << " failed after " << what << ": "
                              << told[i].error;
      if (before[i].ok) {
        EXPECT_EQ(told[i].id, before[i].id) << "a retry booked twice";
        EXPECT_EQ(told[i].status, before[i].status);
      }
    }
    EXPECT_EQ(Scalar("SELECT count(*) FROM bookings WHERE session_id = $1::uuid"), kPeople);
    ExpectConsistent("after the retries");
    ExpectOneEventPerBooking();
  }
  void Restart() {
    ServiceProcess::Options o = fx.scheduling->options();
    fx.scheduling = std::make_unique<ServiceProcess>(o);
    fx.scheduling->Start();
    fx.stub = sv1::SchedulingService::NewStub(fx.scheduling->channel());
  }

  SchedulingFixture fx;
  sv1::Session session;
  std::vector<std::string> people;
  std::vector<Told> told = std::vector<Told>(kPeople);
  std::atomic<int> unanswered{0};

 private:
  std::unique_ptr<db::Conn> conn_;
  std::atomic<int> next_{0};
};

// Sends `call` again while `caught` says a crash caught it, every 50 ms for
// at most 30 s (the servers come back within a few), as a client would;
// counts each repeat in `sent_again`.
grpc::Status SendUntilAnswered(const std::function<grpc::Status()>& call,
                               const std::function<bool(const grpc::Status&)>& caught,
                               std::atomic<int>* sent_again) {
  const absl::Time until = absl::Now() + absl::Seconds(30);
  for (;;) {
    grpc::Status st = call();
    if (absl::Now() > until || !caught(st)) return st;
    ++*sent_again;
    absl::SleepFor(absl::Milliseconds(50));
  }
}

// The servers a crashing workload may crash besides the service: its
// fixture's own PostgreSQL and NATS.
struct CrashableServers {
  PostgresServer* pg = nullptr;
  NatsServer* nats = nullptr;
};

void RandomConcurrentWorkloadKeepsEveryRule(SchedulingFixture& fx, const std::string& org,
                                            bool crashes = false, CrashableServers servers = {}) {
  // Six clients book, cancel, reschedule, retry and change capacities at
  // random (seeded) over
  // four frontline visits on two dates and a two-site department event, while
  // a participant is deactivated and a session cancelled midway. Afterwards
  // every rule holds in what is stored, and the last event about each
  // booking says what is stored.
  // With `crashes`, three times at seeded moments the service is killed
  // (SIGKILL) or stopped (SIGTERM, as a rolling update does: it must exit
  // 0) and started again, or the database ends its connections (a
  // failover), or, given `servers`, PostgreSQL crashes (an immediate
  // shutdown) or nats-server is killed, and each comes back a moment
  // later; a call caught in any of them fails (UNAVAILABLE, or
  // CANCELLED at a stop: below) and its client sends it again until it is
  // answered otherwise, as a client would (a booking under the same
  // request_id). A seat a killed process left free
  // for someone waiting is the sweep's to hand on (the fixture runs it
  // every second).
  const uint32_t seed = TestSeed(77);  // 77 in CI
  constexpr int kClients = 6, kOpsPerClient = 70;
  std::vector<std::string> sessions;
  std::string d1 = DateIn(30), d2 = DateIn(31);
  for (int i = 0; i < 4; ++i)
    sessions.push_back(NewSession(fx, org, 2 + i % 2, i < 2 ? d1 : d2).id());
  sessions.push_back(NewEventSession(fx, org, DateIn(32), {{"Leeds", 2}, {"London", 2}}).id());
  ASSERT_FALSE(sessions.back().empty());
  std::vector<std::string> people;
  for (int i = 0; i < 12; ++i)
    people.push_back(Register(fx, absl::StrCat("WL", seed % 10000, "X", i)).id());

  std::mutex mu;
  std::vector<std::string> bookings;  // every booking id any client was given
  std::map<int, int> codes;
  std::atomic<int> ops{0};
  std::function<void()> midway;
  auto after_op = [&] {
    if (++ops == kClients * kOpsPerClient / 2) midway();
  };
  // A call caught in a crash, sent again until answered otherwise
  // (SendUntilAnswered). CANCELLED too, which
  // these clients never cause: gRPC (1.51) ends a call that arrives as the
  // server stops taking calls, before its client has heard so, with
  // CANCELLED, unrun (grpc/grpc#41785; README, Error details).
  auto caught = [](const grpc::Status& st) {
    return st.error_code() == grpc::StatusCode::UNAVAILABLE ||
           st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
           st.error_code() == grpc::StatusCode::CANCELLED;
  };
  std::atomic<int> sent_again{0};
  auto again = [crashes, &caught, &sent_again](const std::function<grpc::Status()>& call) {
    return crashes ? SendUntilAnswered(call, caught, &sent_again) : call();
  };
  auto client = [&](int c) {
    std::mt19937 rng(seed * 100 + c);
    auto pick = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
    for (int i = 0; i < kOpsPerClient; ++i) {
      grpc::Status st;
      int op = static_cast<int>(pick(10));
      sv1::Booking out;
      if (op == 9) {  // the programme team changes a site's capacity (fewer or more seats)
        sv1::GetSessionRequest get;
        get.set_id(sessions[pick(sessions.size())]);
        st = again([&] {
          sv1::UpdateSessionRequest req;
          grpc::Status got = fx.stub->GetSession(Ctx(fx.admin).get(), get, req.mutable_session());
          if (!got.ok()) return got;
          req.mutable_session()
              ->mutable_sites(static_cast<int>(pick(req.session().sites_size())))
              ->set_capacity(1 + static_cast<int>(pick(4)));
          req.mutable_update_mask()->add_paths("sites");
          sv1::Session updated;
          return fx.stub->UpdateSession(Ctx(fx.admin).get(), req, &updated);
        });
        std::lock_guard<std::mutex> l(mu);
        ++codes[st.error_code()];
        EXPECT_TRUE(st.ok() || st.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
                    st.error_code() == grpc::StatusCode::ABORTED)
            << "client " << c << " op " << i << ": " << st.error_code() << " "
            << st.error_message();
        after_op();
        continue;
      }
      if (op < 5 || bookings.empty()) {  // book, now and then retrying an earlier request id
        sv1::BookSessionRequest req;
        size_t si = pick(sessions.size());
        req.set_session_id(sessions[si]);
        req.set_participant_id(people[pick(people.size())]);
        if (si == 4) req.set_site(pick(2) ? "Leeds" : "London");
        req.set_request_id(absl::StrCat("wl-", c, "-", pick(3) == 0 ? i / 2 : i));
        st = again([&] { return fx.stub->BookSession(Ctx(fx.admin).get(), req, &out); });
      } else {
        std::string id;
        {
          std::lock_guard<std::mutex> l(mu);
          id = bookings[pick(bookings.size())];
        }
        if (op < 8) {
          sv1::CancelBookingRequest req;
          req.set_id(id);
          st = again([&] { return fx.stub->CancelBooking(Ctx(fx.admin).get(), req, &out); });
        } else {  // op 8
          sv1::RescheduleBookingRequest req;
          req.set_id(id);
          size_t si = pick(sessions.size());
          req.set_session_id(sessions[si]);
          if (si == 4) req.set_site(pick(2) ? "Leeds" : "London");
          st = again([&] { return fx.stub->RescheduleBooking(Ctx(fx.admin).get(), req, &out); });
        }
      }
      std::lock_guard<std::mutex> l(mu);
      ++codes[st.error_code()];
      if (st.ok()) bookings.push_back(out.id());
      // A move to the booking's own session, or between kinds of site, is a
      // bad request; anything else refused is a rule saying no.
      bool bad_move = op >= 8 && st.error_code() == grpc::StatusCode::INVALID_ARGUMENT &&
                      (absl::StartsWith(st.error_message(), "session_id: ") ||
                       absl::StartsWith(st.error_message(), "site: "));
      EXPECT_TRUE(st.ok() || bad_move || st.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
                  st.error_code() == grpc::StatusCode::ALREADY_EXISTS ||
                  st.error_code() == grpc::StatusCode::ABORTED)
          << "client " << c << " op " << i << ": " << st.error_code() << " " << st.error_message();
      after_op();
    }
  };
  midway = [&] {  // a leaver and a cancelled visit
    // Sent again after a crash, the change may have been made by the try
    // that was not answered: then it is refused as made already.
    bool retried = false;
    auto once = [&](const std::function<grpc::Status()>& call) {
      return again([&] {
        grpc::Status st = call();
        retried = retried || caught(st);
        return st;
      });
    };
    auto made = [&retried](const grpc::Status& st) {
      return st.ok() || (retried && st.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
    };
    sv1::DeactivateParticipantRequest dp;
    dp.set_id(people[0]);
    sv1::Participant gone;
    grpc::Status ds =
        once([&] { return fx.stub->DeactivateParticipant(Ctx(fx.admin).get(), dp, &gone); });
    EXPECT_TRUE(made(ds)) << ds.error_code() << " " << ds.error_message();
    retried = false;
    sv1::CancelSessionRequest cs;
    cs.set_id(sessions[1]);
    cs.set_reason("the ward is closed that day");
    sv1::Session cancelled;
    grpc::Status cst =
        once([&] { return fx.stub->CancelSession(Ctx(fx.admin).get(), cs, &cancelled); });
    EXPECT_TRUE(made(cst)) << cst.error_code() << " " << cst.error_message();
  };
  auto deadlocks = [&] { return DeadlocksIn(fx.scheduling_db); };
  int64_t deadlocks_before = deadlocks();
  std::vector<std::thread> threads;
  std::atomic<int> clients_done{0};
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      client(c);
      ++clients_done;
    });
  }
  // The crashes, at three seeded moments between a tenth of the way and
  // four fifths, from this thread: a service started from a thread that
  // then ends is killed with it (the harness's PR_SET_PDEATHSIG).
  int crashed = 0;
  if (crashes) {
    std::mt19937 rng(seed * 100 + 99);
    const int total = kClients * kOpsPerClient;
    std::vector<int> at;
    for (int k = 0; k < 3; ++k)
      at.push_back(total / 10 + static_cast<int>(rng() % (total * 7 / 10)));
    std::sort(at.begin(), at.end());
    for (int when : at) {
      while (ops.load() < when && clients_done.load() < kClients) {
        absl::SleepFor(absl::Milliseconds(1));
      }
      if (clients_done.load() == kClients) break;
      // Up to 30 ms on: not always just as a call was answered.
      absl::SleepFor(absl::Microseconds(rng() % 30000));
      // Down for up to 0.3 s, then started again.
      auto down_a_while = [&](const char* what, const std::function<void()>& down,
                              const std::function<void()>& up) {
        down();
        std::printf("at operation %d: %s\n", ops.load(), what);
        absl::SleepFor(absl::Milliseconds(rng() % 300));
        up();
      };
      const unsigned kind = rng() % (servers.pg != nullptr && servers.nats != nullptr ? 6 : 4);
      if (kind == 4) {
        // Started again, it recovers from its WAL first.
        down_a_while(
            "PostgreSQL crashed", [&] { servers.pg->Crash(); }, [&] { servers.pg->Start(); });
      } else if (kind == 5) {
        down_a_while(
            "nats-server killed", [&] { servers.nats->Kill(); }, [&] { servers.nats->Start(); });
      } else if (kind == 0) {
        int64_t dropped = DropConnections(fx.scheduling_db);
        std::printf("at operation %d: the database ended %lld connections\n", ops.load(),
                    static_cast<long long>(dropped));
      } else if (kind == 1) {
        // A rolling update's stop: the calls it took answered, exit 0.
        std::printf("at operation %d: the service stopped (SIGTERM)\n", ops.load());
        EXPECT_EQ(fx.scheduling->Terminate(), 0) << "SIGTERM mid-workload";
        fx.scheduling->Start();
      } else {
        down_a_while(
            "the service killed", [&] { fx.scheduling->Kill(); }, [&] { fx.scheduling->Start(); });
      }
      ++crashed;
    }
    EXPECT_GT(crashed, 0) << "the workload ended before its first crash";
  }
  for (auto& t : threads) t.join();
  if (crashes) std::printf("calls caught in a crash and sent again: %d\n", sent_again.load());
  absl::SleepFor(absl::Milliseconds(1500));  // backends report their statistics within a second
  std::printf("deadlocks broken by PostgreSQL: %lld\n",
              static_cast<long long>(deadlocks() - deadlocks_before));
  std::string summary;
  for (const auto& [code, n] : codes) absl::StrAppend(&summary, " ", code, ":", n);
  std::printf("%d operations; by status code:%s\n", ops.load(), summary.c_str());
  EXPECT_GT(codes[0], 100) << "the workload should mostly do things";

  auto conn = db::Conn::Open(fx.scheduling_db, "test");
  ASSERT_TRUE(conn.ok()) << conn.status();
  // After crashes, a seat left free for someone waiting is handed on by the
  // sweep, within a few seconds: the rules are read until they hold, for
  // 15 s at most.
  const absl::Time settled = absl::Now() + (crashes ? absl::Seconds(15) : absl::ZeroDuration());
  auto none = [&](const std::string& what, const std::string& sql) {
    for (;;) {
      auto r = (*conn)->Exec(sql);
      ASSERT_TRUE(r.ok()) << r.status();
      if (r->rows() == 0) return;
      if (absl::Now() >= settled) {
        ADD_FAILURE() << what << ": " << r->String(0, 0);
        return;
      }
      absl::SleepFor(absl::Milliseconds(200));
    }
  };
  std::string ids = "'" + absl::StrJoin(sessions, "','") + "'";
  none("seat counters differ from the bookings",
       "SELECT ss.session_id::text FROM session_sites ss WHERE ss.session_id IN (" + ids +
           ") AND (ss.confirmed <> (SELECT count(*) FROM bookings b WHERE b.session_id = "
           "ss.session_id AND b.site = ss.site AND b.status = 1) OR ss.waitlisted <> (SELECT "
           "count(*) FROM bookings b WHERE b.session_id = ss.session_id AND b.site = ss.site AND "
           "b.status = 2))");
  none("more confirmed than seats",
       "SELECT session_id::text FROM session_sites WHERE confirmed > capacity");
  none("a free seat while someone who could take it waits",
       "SELECT w.id::text FROM bookings w JOIN session_sites ss ON ss.session_id = w.session_id "
       "AND ss.site = w.site JOIN sessions s ON s.id = w.session_id WHERE w.status = 2 AND "
       "s.id IN (" +
           ids +
           ") AND ss.confirmed < ss.capacity AND NOT (s.kind = 1 AND EXISTS "
           "(SELECT 1 FROM bookings f WHERE f.participant_id = w.participant_id AND f.kind = 1 AND "
           "f.status = 1 AND f.session_date = w.session_date))");
  none("two confirmed frontline visits on one date",
       "SELECT participant_id::text FROM bookings WHERE status = 1 AND kind = 1 "
       "GROUP BY participant_id, session_date HAVING count(*) > 1");
  none("two live bookings on one session",
       "SELECT participant_id::text FROM bookings WHERE status IN (1, 2) "
       "GROUP BY participant_id, session_id HAVING count(*) > 1");
  none("a live booking on the cancelled session",
       "SELECT id::text FROM bookings WHERE status IN (1, 2) AND session_id = '" + sessions[1] +
           "'");
  none("a live booking of the deactivated participant",
       "SELECT id::text FROM bookings WHERE status IN (1, 2) AND participant_id = '" + people[0] +
           "'");

  // Every booking's latest event (highest version) is the booking as stored.
  auto stored = (*conn)->Exec(
      "SELECT id::text, status, version FROM bookings WHERE session_id IN (" + ids + ")");
  ASSERT_TRUE(stored.ok()) << stored.status();
  std::map<std::string, std::pair<int64_t, int64_t>> want;  // id → (status, version)
  for (int i = 0; i < stored->rows(); ++i) {
    want[stored->String(i, 0)] = {stored->Int(i, 1), stored->Int(i, 2)};
  }
  ASSERT_TRUE(WaitForOutboxDrained(fx.scheduling_db));
  std::map<std::string, std::pair<int64_t, int64_t>> latest;
  auto see = [&](const sv1::Booking& b) {
    int64_t version = 0;
    ASSERT_TRUE(absl::SimpleAtoi(b.etag(), &version)) << b.etag();
    auto& l = latest[b.id()];
    if (version > l.second) l = {b.status(), version};
  };
  for (const StoredEvent& e : ReadStream(fx.nats_url, fx.scheduling_stream)) {
    const std::string& type = e.headers.count("ce-type") ? e.headers.at("ce-type") : "";
    if (type == "connecting.events.v1.BookingChanged") {
      events::v1::BookingChanged ev;
      ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(e.data, &ev).ok());
      see(ev.booking());
    } else if (type == "connecting.events.v1.BookingRescheduled") {
      events::v1::BookingRescheduled ev;
      ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(e.data, &ev).ok());
      see(ev.from_booking());
      see(ev.to_booking());
    }
  }
  EXPECT_GT(want.size(), 20u);
  for (const auto& [id, sv] : want) {
    auto it = latest.find(id);
    ASSERT_NE(it, latest.end()) << "no event for booking " << id;
    EXPECT_EQ(it->second, sv) << "booking " << id << ": latest event (status, version) "
                              << it->second.first << "," << it->second.second << " but stored "
                              << sv.first << "," << sv.second;
  }
}

TEST_F(SchedulingConcurrency, RandomConcurrentWorkloadKeepsEveryRule) {
  RandomConcurrentWorkloadKeepsEveryRule(*fx_, *org_);
}

// The same with every booking in one lane, as the service runs by default:
// larger batches, the bookings of every session sharing their transactions.
TEST_F(SchedulingOneLane, RandomConcurrentWorkloadKeepsEveryRule) {
  RandomConcurrentWorkloadKeepsEveryRule(*fx_, *org_);
}

// The random workload through crashes: the service killed or stopped and
// started again, its database connections ended, PostgreSQL crashed or
// nats-server killed (on servers of the test's own), three times at seeded
// moments (CONNECTING_TEST_SEED; tools/test/seeds.sh FROM TO crash). One
// lane, as the service runs by default; bookings that wait for a lock wait
// apart.
TEST(SchedulingCrash, RandomConcurrentWorkloadThroughCrashesKeepsEveryRule) {
  PostgresServer pg;
  NatsServer nats;
  SchedulingFixture fx(std::map<std::string, std::string>{{"SEAT_SWEEP_INTERVAL", "1s"},
                                                          {"BOOKING_LOCK_WAIT", "1ms"}},
                       nats.url(), &pg);
  RandomConcurrentWorkloadKeepsEveryRule(fx, fx.CreatePartner("Crash Trust"), /*crashes=*/true,
                                         CrashableServers{&pg, &nats});
}

// SIGKILL in the middle of concurrent, group-committed bookings, then a
// restart: every booking a client was told about is stored as told, the seat
// counters match the rows, the confirmed are the earliest arrivals, retrying
// every request (same request_id) books each person exactly once, and the
// stream carries exactly one event per stored booking.
TEST(SchedulingCrash, KilledMidBookingsLosesNothingAcknowledgedAndDuplicatesNothing) {
  BookingStorm storm;
  std::vector<BookingStorm::Told> before = storm.StopAfter(40, [&] { storm.fx.scheduling->Kill(); });
  storm.ExpectConsistent("after the kill");
  storm.ExpectStoredAsTold(before);

  // Restarted, every client retries whatever it was not told, and the rest too.
  storm.Restart();
  std::atomic<int> acked{0};
  for (auto& t : storm.Book(&acked)) t.join();
  EXPECT_EQ(acked.load(), BookingStorm::kPeople) << "requests failed after the restart";
  for (int i = 0; i < BookingStorm::kPeople; ++i) {
    if (before[i].ok) {
      EXPECT_EQ(storm.told[i].id, before[i].id) << "a retry booked twice";
      EXPECT_EQ(storm.told[i].status, before[i].status);
    }
  }
  EXPECT_EQ(storm.Scalar("SELECT count(*) FROM bookings WHERE session_id = $1::uuid"),
            BookingStorm::kPeople);
  EXPECT_EQ(storm.Scalar("SELECT count(*) FROM bookings WHERE session_id = $1::uuid AND status = 1"),
            10);
  storm.ExpectConsistent("after the retries");
  storm.ExpectOneEventPerBooking();
}

// The database drops every connection of the service in the middle of the
// same (a failover, an operator's pg_terminate_backend): the service lives on,
// calls caught in it fail, nothing acknowledged is lost, and retrying every
// request books each person exactly once with one event each.
TEST(SchedulingCrash, DatabaseDropsItsConnectionsMidBookingsLosesNothingAcknowledged) {
  BookingStorm storm;
  std::atomic<int> acked{0};
  std::vector<std::thread> threads = storm.Book(&acked);
  for (int i = 0; i < 2000 && acked.load() < 40; ++i) absl::SleepFor(absl::Milliseconds(5));
  int64_t dropped = DropConnections(storm.fx.scheduling_db);
  EXPECT_GT(dropped, 0);
  for (auto& t : threads) t.join();
  std::vector<BookingStorm::Told> before = storm.told;
  int answered = 0;
  for (const auto& t : before) answered += t.ok;
  std::printf("%lld connections dropped; %d of %d bookings acknowledged\n",
              static_cast<long long>(dropped), answered, BookingStorm::kPeople);
  EXPECT_EQ(storm.unanswered.load(), 0);
  storm.ExpectConsistent("after the drop");
  storm.ExpectStoredAsTold(before);

  storm.RetryEveryRequest(before, "the drop");
  EXPECT_TRUE(storm.fx.scheduling->WaitForHealth(1, absl::Seconds(10))) << "not SERVING again";
}

// PostgreSQL itself crashes in the middle of the same (an immediate
// shutdown: every backend ends at once, some mid-commit, nothing is
// checkpointed) and comes back a moment later, recovering from its WAL.
// Neither service is restarted. Calls caught in it fail or wait for the
// database and then succeed; nothing acknowledged is lost; retrying every
// request books each person exactly once with one event each; no restore
// is reported (a crash loses no committed change, so neither the relay's
// numbering nor a consumer's inbox runs back); and partner events flow into
// scheduling's projection again: partners made while it crashed, each
// sent again until answered (the same request_id), all reach it, none
// dead-lettered.
TEST(SchedulingCrash, DatabaseServerCrashMidBookingsLosesNothingAcknowledged) {
  PostgresServer pg;
  BookingStorm storm(&pg);
  const pid_t scheduling_pid = storm.fx.scheduling->process()->pid();
  const pid_t partners_pid = storm.fx.partners->process()->pid();
  // Partners made through the crash: their events, published by partners'
  // relay, are applied by scheduling's consumer with its inbox.
  constexpr int kPartners = 30;
  std::vector<std::string> partner_ids(kPartners);
  std::atomic<int> partners_sent_again{0};
  std::thread partners_made([&] {
    for (int i = 0; i < kPartners; ++i) {
      connecting::partners::v1::CreateOrganisationRequest req;
      *req.mutable_organisation() = SampleOrganisation(absl::StrCat("Through the Crash ", i));
      req.set_request_id(absl::StrCat("through-the-crash-", i));
      connecting::partners::v1::Organisation org;
      grpc::Status st = SendUntilAnswered(
          [&] {
            return storm.fx.partners_stub->CreateOrganisation(Ctx(storm.fx.admin).get(), req, &org);
          },
          [](const grpc::Status& s) { return s.error_code() == grpc::StatusCode::UNAVAILABLE; },
          &partners_sent_again);
      if (st.ok()) {
        partner_ids[i] = org.id();
      } else {
        ADD_FAILURE() << "partner " << i << ": " << st.error_code() << " " << st.error_message();
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  });
  std::atomic<int> acked{0};
  std::vector<std::thread> threads = storm.Book(&acked);
  for (int i = 0; i < 2000 && acked.load() < 40; ++i) absl::SleepFor(absl::Milliseconds(5));
  pg.Crash();
  const int at_crash = acked.load();
  EXPECT_LT(at_crash, BookingStorm::kPeople) << "the crash came after every booking";
  absl::SleepFor(absl::Milliseconds(300));  // down a while: connections are refused
  pg.Start();
  for (auto& t : threads) t.join();
  partners_made.join();
  storm.Reconnect();
  std::vector<BookingStorm::Told> before = storm.told;
  int answered = 0;
  for (const auto& t : before) answered += t.ok;
  std::printf(
      "PostgreSQL crashed with %d bookings acknowledged and recovered; %d of %d; partners' "
      "creations sent again: %d\n",
      at_crash, answered, BookingStorm::kPeople, partners_sent_again.load());
  storm.ExpectConsistent("after the crash");
  storm.ExpectStoredAsTold(before);

  storm.RetryEveryRequest(before, "the crash");

  // The same processes, serving, with no restore reported.
  EXPECT_EQ(storm.fx.scheduling->process()->pid(), scheduling_pid);
  EXPECT_EQ(storm.fx.partners->process()->pid(), partners_pid);
  EXPECT_LT(storm.fx.scheduling->process()->Wait(absl::ZeroDuration()), 0) << "scheduling exited";
  EXPECT_LT(storm.fx.partners->process()->Wait(absl::ZeroDuration()), 0) << "partners exited";
  EXPECT_TRUE(storm.fx.scheduling->WaitForHealth(1, absl::Seconds(10))) << "not SERVING again";
  std::string after_crash = storm.fx.CreatePartner("After the Crash Trust");
  EXPECT_FALSE(after_crash.empty());
  for (int i = 0; i < kPartners; ++i) {
    EXPECT_TRUE(storm.fx.WaitForPartnerStatus(partner_ids[i], 1, absl::Seconds(5)))
        << "partner " << i << " (" << partner_ids[i] << ") never reached scheduling";
  }
  EXPECT_EQ(storm.Scalar("SELECT count(*) FROM dead_letters WHERE $1::text IS NOT NULL"), 0)
      << "an event dead-lettered";
  for (ServiceProcess* service : {storm.fx.scheduling.get(), storm.fx.partners.get()}) {
    EXPECT_EQ(MetricValue(service->metrics_port(), "connecting_outbox_database_behind_stream"),
              std::optional<double>(0));
    for (const char* alarm : {"database behind", "a restore of this database"}) {
      EXPECT_TRUE(LogLinesWith(service->process()->log_path(), {alarm}).empty())
          << service->options().binary << " logged \"" << alarm << "\" after a crash";
    }
  }
}

// SIGTERM in the middle of the same: the service answers every call it took,
// commits or refuses each queued booking, publishes what it committed, and
// exits 0.
TEST(SchedulingCrash, TerminatedMidBookingsAnswersEveryCallAndExitsZero) {
  BookingStorm storm;
  int code = -1;
  std::vector<BookingStorm::Told> told =
      storm.StopAfter(40, [&] { code = storm.fx.scheduling->Terminate(absl::Seconds(30)); });
  EXPECT_EQ(code, 0);
  EXPECT_EQ(storm.unanswered.load(), 0);
  storm.ExpectConsistent("after the shutdown");
  storm.ExpectStoredAsTold(told);
  EXPECT_EQ(storm.Scalar("SELECT count(*) FROM outbox WHERE $1::text IS NOT NULL"), 0)
      << "the relay flushes the outbox before exiting";
  storm.ExpectOneEventPerBooking();
}

TEST_F(SchedulingConcurrency, FiguresStayExactWhileHostsRecordAndCorrectAttendanceAtOnce) {
  // Every attendance record or correction relinks its connector's and its
  // organisation's chains that the figures read (migrations/0010); hosts
  // recording at once, on the same organisations and people, must leave them
  // as records made one by one would: figures equal to a count of the
  // bookings themselves, and no writer broken out of a deadlock.
  const std::string second = fx_->CreatePartner("Figures Partner");
  auto conn = db::Conn::Open(fx_->scheduling_db, "test");
  ASSERT_TRUE(conn.ok());
  const char* dirs[] = {"Primary Care", "Social Care", "Public Health"};
  std::vector<std::string> people;
  for (int i = 0; i < 16; ++i) {
    people.push_back(Register(*fx_, absl::StrCat("FIG", 100 + i), dirs[i % 3],
                              static_cast<sv1::Grade>(1 + i % 4))
                         .id());
  }
  std::vector<std::string> bookings;
  for (int v = 0; v < 10; ++v) {
    sv1::Session s = NewSession(*fx_, v % 3 ? *org_ : second, 16, DateIn(300 + v));
    for (int i = 0; i < 16; ++i) {
      if ((i + v) % 3 == 0) continue;
      sv1::Booking b;
      ASSERT_TRUE(Book(*fx_, s.id(), people[i], &b).ok());
      bookings.push_back(b.id());
    }
    // The visit happened, 20 to 47 days ago, each on its own date and in no
    // order (the tests' time machine).
    const std::string ago = absl::StrCat("current_date - ", 20 + 3 * (v * 7 % 10));
    ASSERT_TRUE(
        (*conn)
            ->Exec("UPDATE sessions SET session_date = " + ago + " WHERE id = $1::uuid", {s.id()})
            .ok());
    ASSERT_TRUE(
        (*conn)
            ->Exec("UPDATE bookings SET session_date = " + ago + " WHERE session_id = $1::uuid",
                   {s.id()})
            .ok());
  }
  const int64_t deadlocks_before = DeadlocksIn(fx_->scheduling_db);
  // Every visit recorded attended; a third corrected to no-show, and half of
  // those back again; eight hosts at once, each record in its own call.
  auto record = [&](const std::string& id, bool attended) {
    sv1::RecordAttendanceRequest req;
    req.set_id(id);
    req.set_attended(attended);
    sv1::Booking out;
    grpc::Status st = fx_->stub->RecordAttendance(Ctx(fx_->admin).get(), req, &out);
    EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  };
  std::vector<std::thread> hosts;
  for (int h = 0; h < 8; ++h) {
    hosts.emplace_back([&, h] {
      for (size_t i = h; i < bookings.size(); i += 8) record(bookings[i], true);
      for (size_t i = h; i < bookings.size(); i += 8) {
        if (i % 3 == 0) record(bookings[i], false);
      }
      for (size_t i = h; i < bookings.size(); i += 8) {
        if (i % 6 == 0) record(bookings[i], true);
      }
    });
  }
  for (auto& t : hosts) t.join();

  auto day = [&](int ago) {
    auto r = (*conn)->Exec(absl::StrCat("SELECT to_char(current_date - ", ago, ", 'YYYY-MM-DD')"));
    return r.ok() ? r->String(0, 0) : std::string();
  };
  using Counts = std::map<std::string, std::tuple<int64_t, int64_t, int64_t>>;
  // Counted from the bookings, not from what the figures read.
  auto counted = [&](const std::string& key_sql, const std::string& from, const std::string& to) {
    Counts m;
    auto r = (*conn)->Exec(
        absl::StrCat("SELECT ", key_sql,
                     ", count(*), count(DISTINCT b.participant_id), "
                     "count(DISTINCT s.organisation_id) FROM bookings b "
                     "JOIN sessions s ON s.id = b.session_id "
                     "JOIN participants p ON p.id = b.participant_id WHERE b.status = ",
                     static_cast<int>(sv1::BOOKING_STATUS_ATTENDED),
                     " AND b.session_date BETWEEN $1::date AND $2::date GROUP BY 1"),
        {from, to});
    EXPECT_TRUE(r.ok()) << r.status();
    for (int i = 0; r.ok() && i < r->rows(); ++i) {
      m[r->String(i, 0)] = {r->Int(i, 1), r->Int(i, 2), r->Int(i, 3)};
    }
    return m;
  };
  auto figures = [&](sv1::FiguresGrouping g, const std::string& from, const std::string& to) {
    sv1::GetProgrammeFiguresRequest req;
    req.set_from_date(from);
    req.set_to_date(to);
    req.set_group_by(g);
    sv1::ProgrammeFigures out;
    grpc::Status st = fx_->stub->GetProgrammeFigures(Ctx(fx_->admin).get(), req, &out);
    EXPECT_TRUE(st.ok()) << st.error_message();
    Counts m;
    if (g == sv1::FIGURES_GROUPING_UNSPECIFIED) {
      const auto& t = out.totals();
      m["total"] = {t.connecting_days(), t.connectors(), t.organisations()};
    }
    for (const auto& row : out.rows()) {
      m[row.key()] = {row.connecting_days(), row.connectors(), row.organisations()};
    }
    return m;
  };
  // A range that starts after some of the visits, and one holding them all.
  for (const auto& [from, to] : {std::pair(day(35), day(20)), std::pair(day(60), day(0))}) {
    SCOPED_TRACE(absl::StrCat(from, " to ", to));
    Counts total = counted("'total'", from, to);
    ASSERT_FALSE(total.empty());
    EXPECT_EQ(figures(sv1::FIGURES_GROUPING_UNSPECIFIED, from, to), total);
    EXPECT_EQ(figures(sv1::FIGURES_GROUPING_MONTH, from, to),
              counted("to_char(b.session_date, 'YYYY-MM')", from, to));
    Counts by_directorate = figures(sv1::FIGURES_GROUPING_DIRECTORATE, from, to);
    EXPECT_EQ(by_directorate, counted("p.directorate", from, to));
    EXPECT_EQ(by_directorate.size(), 3u);
  }
  ASSERT_TRUE((*conn)->ExecScript("BEGIN").ok());
  auto relinked = (*conn)->Exec("SELECT rebuild_attendance_chains()");
  ASSERT_TRUE(relinked.ok()) << relinked.status();
  EXPECT_EQ(relinked->Int(0, 0), 0) << "facts whose chains were not kept right";
  ASSERT_TRUE((*conn)->ExecScript("ROLLBACK").ok());
  absl::SleepFor(absl::Milliseconds(1500));  // backends report their statistics within a second
  EXPECT_EQ(DeadlocksIn(fx_->scheduling_db), deadlocks_before) << "attendance records deadlocked";
}

}  // namespace
}  // namespace connecting::testing
