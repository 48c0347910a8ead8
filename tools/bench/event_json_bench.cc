// The cost of an event's JSON: bus::EventJson (the direct writer the outbox
// uses) against protobuf's MessageToJsonString, on the BookingChanged event
// every booking emits (an event session on three sites).
//   event_json_bench [--benchmark_min_time=0.5]
#include <benchmark/benchmark.h>
#include <google/protobuf/util/json_util.h>

#include "connecting/events/v1/scheduling_events.pb.h"
#include "libs/bus/event_json.h"

namespace {

connecting::events::v1::BookingChanged Event() {
  namespace sv1 = connecting::scheduling::v1;
  connecting::events::v1::BookingChanged e;
  sv1::Booking* b = e.mutable_booking();
  b->set_id("6f1c9a52-3d0e-4b7a-9c61-2f8e5d4a1b30");
  b->set_session_id("0b6d2e4f-8a1c-4f3e-b5d7-9e2c1a0f6b84");
  b->set_participant_id("c3a9e1f7-5b2d-4c8e-a6f0-1d7b3e9c5a22");
  b->set_site("Leeds");
  b->set_status(sv1::BOOKING_STATUS_CONFIRMED);
  b->mutable_create_time()->set_seconds(1795000000);
  b->mutable_create_time()->set_nanos(123456000);
  *b->mutable_update_time() = b->create_time();
  b->set_etag("W/\"1\"");
  sv1::Session* s = e.mutable_session();
  s->set_id(b->session_id());
  s->set_kind(sv1::SESSION_KIND_DEPARTMENT_EVENT);
  s->set_title("Connecting comes to you: urgent and emergency care");
  s->set_organisation_id("9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b");
  s->set_date("2027-03-18");
  s->set_start_time("10:00");
  s->set_end_time("12:30");
  s->set_broadcast_link("https://events.example.gov.uk/live/ueccare");
  for (const char* name : {"London", "Leeds", "Darlington"}) {
    sv1::Site* site = s->add_sites();
    site->set_name(name);
    site->set_capacity(120);
    site->set_confirmed(87);
    site->set_waitlisted(3);
  }
  s->set_status(sv1::SESSION_STATUS_SCHEDULED);
  *s->mutable_create_time() = b->create_time();
  *s->mutable_update_time() = b->create_time();
  s->set_etag("W/\"4\"");
  return e;
}

void BM_MessageToJsonString(benchmark::State& state) {
  auto e = Event();
  google::protobuf::util::JsonPrintOptions opts;
  for (auto _ : state) {
    std::string out;
    benchmark::DoNotOptimize(google::protobuf::util::MessageToJsonString(e, &out, opts));
    benchmark::DoNotOptimize(out);
  }
}
BENCHMARK(BM_MessageToJsonString);

void BM_EventJson(benchmark::State& state) {
  auto e = Event();
  for (auto _ : state) benchmark::DoNotOptimize(connecting::bus::EventJson(e));
}
BENCHMARK(BM_EventJson);

}  // namespace

BENCHMARK_MAIN();
