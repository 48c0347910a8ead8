#!/usr/bin/env bash
# The README's API walk-through, run with tools/grpc-call (grpcurl's commands,
# in Node) against partners and scheduling on the test PostgreSQL and NATS:
# everything it does, it learns from reflection alone (no proto files), as
# grpcurl and any other department's client would.
# Then make up's demo loader, against the same services.
# Usage (ctest runs it): grpc_call_test.sh PARTNERS_BIN SCHEDULING_BIN TOKEN_BIN DEMO_BIN
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/dev/lib.sh
partners_bin=$1 scheduling_bin=$2 token_bin=$3 demo_bin=$4
G=tools/grpc-call/grpc-call.js
[ -d node_modules/grpc-js-reflection-client ] || { echo "npm packages missing: run make deps" >&2; exit 1; }

suffix=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
work="$CONNECTING_TEST_TMP/grpc-call-$suffix"
mkdir -p "$work"
key=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  stop_nats "$work/nats"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; for f in "$work"/*.log; do echo "--- $f" >&2; tail -5 "$f" >&2; done; exit 1; }

# Its own NATS, with websocket, for tools/watch-events as a dashboard uses it.
nats_port=$(free_port)
ws_port=$(free_port)
start_nats "$work/nats" "$nats_port" "$ws_port" || fail "nats-server did not start"
admin_pg=$CONNECTING_TEST_PG
pg_base=${admin_pg%/*}
for db in partners scheduling; do
  psql "$admin_pg" -qc "CREATE DATABASE gc_${db}_$suffix" >/dev/null
done
start() {  # name binary grpc_port extra env...
  local name=$1 bin=$2 port=$3; shift 3
  env DATABASE_URL="$pg_base/gc_${name}_$suffix" NATS_URL="nats://127.0.0.1:$nats_port" \
    GRPC_LISTEN="127.0.0.1:$port" METRICS_LISTEN="127.0.0.1:$(free_port)" AUTH_JWT_KEY="$key" \
    LOG_LEVEL=warn "$@" "$bin" >"$work/$name.log" 2>&1 &
  pids+=($!)
  wait_port 127.0.0.1 "$port" 30 "$!" || fail "$name did not start"
}
A=127.0.0.1:$(free_port)
S=127.0.0.1:$(free_port)
partners_prefix="t$suffix.connecting.partners"
start partners "$partners_bin" "${A#*:}" EVENT_STREAM="PARTNERS_$suffix" \
  EVENT_SUBJECT_PREFIX="$partners_prefix"
start scheduling "$scheduling_bin" "${S#*:}" EVENT_STREAM="SCHEDULING_$suffix" \
  EVENT_SUBJECT_PREFIX="t$suffix.connecting.scheduling" PARTNERS_EVENTS_STREAM="PARTNERS_$suffix" \
  PARTNERS_EVENTS_SUBJECT="$partners_prefix.>"
TOKEN=$(AUTH_JWT_KEY="$key" "$token_bin" admin)
auth=(-H "authorization: Bearer $TOKEN")
field() { node -e 'const v = JSON.parse(require("fs").readFileSync(0, "utf8")); console.log(process.argv[1].split(".").reduce((o, k) => o[k], v))' "$1"; }
expect_status() {  # want_exit want_stderr_part command...
  local want=$1 part=$2; shift 2
  local rc=0
  "$@" >"$work/out" 2>"$work/err" || rc=$?
  [ "$rc" = "$want" ] || fail "$* exited $rc, want $want: $(cat "$work/err")"
  grep -qF -- "$part" "$work/err" || fail "$* said $(cat "$work/err"), want \"$part\""
}

# Discovery: the services, their methods and types, from reflection alone.
services=$($G -plaintext "$A" list)
for want in connecting.partners.v1.PartnersService grpc.health.v1.Health \
  grpc.reflection.v1alpha.ServerReflection; do
  grep -qx "$want" <<<"$services" || fail "list lacks $want: $services"
done
$G -plaintext "$A" list connecting.partners.v1.PartnersService |
  grep -qx connecting.partners.v1.PartnersService.ArchiveOrganisation || fail "list methods"
$G -plaintext "$A" describe connecting.partners.v1.Organisation | grep -q "Timestamp create_time = 8;" ||
  fail "describe Organisation"
$G -plaintext "$S" describe connecting.scheduling.v1.SchedulingService | grep -q "rpc BookSession" ||
  fail "describe SchedulingService"
$G -plaintext "$S" describe connecting.scheduling.v1.SchedulingService.BookSession |
  grep -q "returns ( .connecting.scheduling.v1.Booking )" || fail "describe a method"
expect_status 1 "no.such.Thing" $G -plaintext "$A" describe no.such.Thing
# Health needs no token, and is described too (gRPC's own health service is
# not, unless the binary links its descriptor).
[ "$($G -plaintext "$A" grpc.health.v1.Health/Check | field status)" = SERVING ] || fail "health"
[ "$($G -plaintext -d '{"service": "liveness"}' "$S" grpc.health.v1.Health/Check | field status)" = SERVING ] ||
  fail "scheduling liveness"

# Partners: create (retried with its request_id: the same organisation), update, list, pause.
create='{"request_id": "9f1c2a3e-0000-4000-8000-000000000001",
  "organisation": {"name": "Eastgate Hospice", "ods_code": "EGH1",
                   "sector": "SECTOR_VOLUNTARY_COMMUNITY", "region": "REGION_SOUTH_EAST"}}'
org=$($G -plaintext "${auth[@]}" -d "$create" "$A" connecting.partners.v1.PartnersService/CreateOrganisation)
id=$(field id <<<"$org")
[ "$(field status <<<"$org")" = ORGANISATION_STATUS_ACTIVE ] || fail "created: $org"
again=$($G -plaintext "${auth[@]}" -d "$create" "$A" connecting.partners.v1.PartnersService/CreateOrganisation)
[ "$(field id <<<"$again")" = "$id" ] || fail "request_id retry made a second organisation"
updated=$($G -plaintext "${auth[@]}" -d "{
  \"organisation\": {\"id\": \"$id\", \"etag\": \"$(field etag <<<"$org")\", \"description\": \"Adult and children hospice\"},
  \"update_mask\": \"description\"}" "$A" connecting.partners.v1.PartnersService/UpdateOrganisation)
[ "$(field description <<<"$updated")" = "Adult and children hospice" ] || fail "update: $updated"
[ "$(field etag <<<"$updated")" -gt "$(field etag <<<"$org")" ] || fail "etag did not grow"
listed=$($G -plaintext "${auth[@]}" -d '{"page_size": 2, "region": "REGION_SOUTH_EAST"}' "$A" \
  connecting.partners.v1.PartnersService/ListOrganisations)
[ "$(field organisations.0.id <<<"$listed")" = "$id" ] || fail "list: $listed"
# A stale etag, bad input, no token: the status and a message naming the rule.
expect_status $((64 + 10)) "ABORTED" $G -plaintext "${auth[@]}" -d "{
  \"organisation\": {\"id\": \"$id\", \"etag\": \"$(field etag <<<"$org")\", \"description\": \"x\"},
  \"update_mask\": \"description\"}" "$A" connecting.partners.v1.PartnersService/UpdateOrganisation
# ... and the details for programs (README, "Error details"), printed as grpcurl does.
details_say() { grep -qF -- "$1" "$work/err" || fail "no \"$1\" in the error's details: $(cat "$work/err")"; }
details_say '"@type": "type.googleapis.com/google.rpc.ErrorInfo"'
details_say '"reason": "ETAG_MISMATCH"'
details_say '"domain": "connecting.partners"'
details_say "\"etag\": \"$(field etag <<<"$updated")\""  # metadata: the current etag
expect_status $((64 + 3)) "page_size: must be between 1 and 500" $G -plaintext "${auth[@]}" \
  -d '{"page_size": -1}' "$A" connecting.partners.v1.PartnersService/ListOrganisations
details_say '"@type": "type.googleapis.com/google.rpc.BadRequest"'
details_say '"field": "page_size"'
expect_status $((64 + 16)) "UNAUTHENTICATED" $G -plaintext -d '{}' "$A" \
  connecting.partners.v1.PartnersService/ListOrganisations
details_say '"reason": "TOKEN_MISSING"'
expect_status $((64 + 5)) "NOT_FOUND" $G -plaintext "${auth[@]}" \
  -d '{"id": "00000000-0000-4000-8000-000000000000"}' "$A" \
  connecting.partners.v1.PartnersService/GetOrganisation
details_say '"@type": "type.googleapis.com/google.rpc.ResourceInfo"'
details_say '"resource_type": "organisation"'
details_say '"resource_name": "00000000-0000-4000-8000-000000000000"'
expect_status 2 "no such field" $G -plaintext -d '{"nope": 1}' "$A" \
  connecting.partners.v1.PartnersService/ListOrganisations

# Scheduling: a connector, a visit at the new partner (once the partner event
# has reached scheduling), a booking, the figures.
person=$($G -plaintext "${auth[@]}" -d '{"participant": {"staff_number": "GC0001",
  "display_name": "Grace Call", "email": "grace.call@dept.example.gov.uk", "grade": "GRADE_POLICY",
  "directorate": "Primary Care"}}' "$S" connecting.scheduling.v1.SchedulingService/RegisterParticipant)
date=$(date -d '+7 days' +%F)
session_req="{\"session\": {\"kind\": \"SESSION_KIND_FRONTLINE_VISIT\", \"title\": \"Ward visit\",
  \"organisation_id\": \"$id\", \"date\": \"$date\", \"start_time\": \"09:00\", \"end_time\": \"17:00\",
  \"sites\": [{\"capacity\": 1}]}}"
for _ in $(seq 1 100); do
  session=$($G -plaintext "${auth[@]}" -d "$session_req" "$S" \
    connecting.scheduling.v1.SchedulingService/CreateSession 2>/dev/null) && break
  sleep 0.1
done
[ -n "${session:-}" ] || fail "no session at the new partner"
booked=$($G -plaintext "${auth[@]}" -d "{\"session_id\": \"$(field id <<<"$session")\",
  \"participant_id\": \"$(field id <<<"$person")\", \"request_id\": \"3c9a1e2f-0000-4000-8000-000000000001\"}" \
  "$S" connecting.scheduling.v1.SchedulingService/BookSession)
[ "$(field status <<<"$booked")" = BOOKING_STATUS_CONFIRMED ] || fail "booking: $booked"
bigger=$($G -plaintext "${auth[@]}" -d "{\"session\": {\"id\": \"$(field id <<<"$session")\",
  \"etag\": \"$(field etag <<<"$session")\", \"sites\": [{\"capacity\": 2}]}, \"update_mask\": \"sites\"}" \
  "$S" connecting.scheduling.v1.SchedulingService/UpdateSession)
[ "$(field sites.0.capacity <<<"$bigger")" = 2 ] && [ "$(field sites.0.confirmed <<<"$bigger")" = 1 ] ||
  fail "update session: $bigger"
# The partner's view: its own sessions by status, nothing awaiting its hosts.
partner=(-H "authorization: Bearer $(AUTH_JWT_KEY="$key" "$token_bin" partner "$id")")
theirs=$($G -plaintext "${partner[@]}" -d '{"status": "SESSION_STATUS_SCHEDULED"}' "$S" \
  connecting.scheduling.v1.SchedulingService/ListSessions)
[ "$(field sessions.0.id <<<"$theirs")" = "$(field id <<<"$session")" ] || fail "partner's sessions: $theirs"
pending=$($G -plaintext "${partner[@]}" -d '{"status": "SESSION_STATUS_PENDING_HOST"}' "$S" \
  connecting.scheduling.v1.SchedulingService/ListSessions)
! grep -q '"sessions"' <<<"$pending" || fail "pending: $pending"
$G -plaintext "${auth[@]}" -d "{\"from_date\": \"$(date +%Y)-01-01\", \"to_date\": \"$(( $(date +%Y) + 1 ))-12-31\",
  \"group_by\": \"FIGURES_GROUPING_QUARTER\"}" "$S" connecting.scheduling.v1.SchedulingService/GetProgrammeFigures \
  >/dev/null || fail "figures"
# A dashboard's view: the booking's event, read over websocket by
# tools/watch-events (the README's example), as the service committed it.
W=tools/watch-events/watch-events.js
event=$(timeout 20 node $W --server "ws://127.0.0.1:$ws_port" --stream "SCHEDULING_$suffix" \
  --subject "t$suffix.connecting.scheduling.booking.>" --count 1) || fail "watch-events: $event"
[ "$(field subject <<<"$event")" = "t$suffix.connecting.scheduling.booking.confirmed" ] &&
  [ "$(field type <<<"$event")" = connecting.events.v1.BookingChanged ] &&
  [ "$(field resource <<<"$event")" = "$(field id <<<"$booked")" ] &&
  [ "$(field data.booking.etag <<<"$event")" = "$(field etag <<<"$booked")" ] &&
  [ "$(field data.session.sites.0.confirmed <<<"$event")" = 1 ] || fail "booking event: $event"
# The same through the WHATWG WebSocket a browser has (Node's own, behind a
# flag before Node 22), not the `ws` package the tool falls back on.
if node --experimental-websocket -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null; then
  again=$(timeout 20 node --experimental-websocket $W --server "ws://127.0.0.1:$ws_port" \
    --stream "SCHEDULING_$suffix" --subject "t$suffix.connecting.scheduling.booking.>" --count 1 2>&1) ||
    fail "watch-events with the standard WebSocket: $again"
  [ "$again" = "$event" ] || fail "the standard WebSocket read another event: $again"
fi
# Everything the partners calls above published, in order, then quiet.
timeout 20 node $W --server "nats://127.0.0.1:$nats_port" --stream "PARTNERS_$suffix" --idle 2 \
  >"$work/partners-events" || fail "watch-events partners"
[ "$(node -e 'for (const l of require("fs").readFileSync(0, "utf8").trim().split("\n"))
  console.log(JSON.parse(l).subject.split(".").slice(-2).join("."))' <"$work/partners-events" | tr '\n' ' ')" = \
  "organisation.created organisation.updated " ] || fail "partners events: $(cat "$work/partners-events")"
expect_status 1 "stream not found" node $W --server "ws://127.0.0.1:$ws_port" --stream NO_SUCH_STREAM

# make up's demo data, loaded twice: the second run adds nothing. Its year of
# past visits (40, 79 attendances by 5 connectors at 6 organisations) shows
# in the figures and in a connector's enduring contacts.
demo() {
  PARTNERS_ADDR=$A SCHEDULING_ADDR=$S SCHEDULING_DATABASE_URL="$pg_base/gc_scheduling_$suffix" \
    AUTH_JWT_KEY="$key" "$demo_bin" >"$work/demo.out" 2>&1 || fail "demo: $(tail -3 "$work/demo.out")"
}
demo
grep -qF "history: 40 past visits (40 new)" "$work/demo.out" || fail "demo: $(tail -3 "$work/demo.out")"
demo
grep -qF "history: 40 past visits (0 new)" "$work/demo.out" || fail "demo again: $(tail -3 "$work/demo.out")"
year=$($G -plaintext "${auth[@]}" -d "{\"from_date\": \"$(date -d '-400 days' +%F)\", \"to_date\": \"$(date +%F)\"}" \
  "$S" connecting.scheduling.v1.SchedulingService/GetProgrammeFigures)
[ "$(field totals.connectingDays <<<"$year")" = 79 ] && [ "$(field totals.connectors <<<"$year")" = 5 ] &&
  [ "$(field totals.organisations <<<"$year")" = 6 ] || fail "the demo's past year: $year"
demo_person=$($G -plaintext "${auth[@]}" -d '{"staff_number": "DEMO1001"}' \
  "$S" connecting.scheduling.v1.SchedulingService/ListParticipants)
contacts=$($G -plaintext "${auth[@]}" -d "{\"participant_id\": \"$(field participants.0.id <<<"$demo_person")\"}" \
  "$S" connecting.scheduling.v1.SchedulingService/ListEnduringContacts)
[ -n "$(field contacts.0.hostContactId <<<"$contacts")" ] || fail "the demo's enduring contacts: $contacts"
# The visit the demo's connector arranged (the same one both runs) awaits its
# partner's host: the partner finds it by status and accepts it.
arranged=$(sed -n 's/^  arranged visit .* \([0-9a-f-]\{36\}\) (SESSION_STATUS_PENDING_HOST)$/\1/p' "$work/demo.out")
[ -n "$arranged" ] || fail "the demo's arranged visit: $(tail -3 "$work/demo.out")"
visit=$($G -plaintext "${auth[@]}" -d "{\"id\": \"$arranged\"}" "$S" \
  connecting.scheduling.v1.SchedulingService/GetSession)
host_partner=(-H "authorization: Bearer $(AUTH_JWT_KEY="$key" "$token_bin" partner "$(field organisationId <<<"$visit")")")
to_accept=$($G -plaintext "${host_partner[@]}" -d '{"status": "SESSION_STATUS_PENDING_HOST"}' "$S" \
  connecting.scheduling.v1.SchedulingService/ListSessions)
[ "$(field sessions.0.id <<<"$to_accept")" = "$arranged" ] || fail "the partner's visits to accept: $to_accept"
accepted=$($G -plaintext "${host_partner[@]}" -d "{\"id\": \"$arranged\"}" "$S" \
  connecting.scheduling.v1.SchedulingService/AcceptSession)
[ "$(field status <<<"$accepted")" = SESSION_STATUS_SCHEDULED ] || fail "accept: $accepted"

echo "grpc-call: discovery, health, partners and scheduling calls all behaved; watch-events read their events; the demo loaded once, its arranged visit accepted by its partner"
