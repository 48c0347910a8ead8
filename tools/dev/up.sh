#!/usr/bin/env bash
# `make up`: PostgreSQL, NATS (JetStream + websocket) and the services as local
# processes on loopback, with demo data. State lives in .stack/ and survives
# `make down` / `make up`; delete .stack/ to start afresh.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/dev/lib.sh
root=$(pwd)
stack="$root/.stack"
BUILD_DIR=${BUILD_DIR:-build}
mkdir -p "$stack/logs" "$stack/run"
chmod 755 "$stack"

PG_PORT=${PG_PORT:-15432}
NATS_PORT=${NATS_PORT:-14222}
NATS_WS_PORT=${NATS_WS_PORT:-14223}
PARTNERS_PORT=${PARTNERS_PORT:-50051}
PARTNERS_METRICS=${PARTNERS_METRICS:-9101}

if [ ! -f "$stack/jwt.key" ]; then
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$stack/jwt.key"
fi
key=$(cat "$stack/jwt.key")

# The tree may sit where the postgres user cannot reach (e.g. under /root).
pgdir="$stack/pg"
if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$stack" 2>/dev/null; then
  pgdir="/var/tmp/connecting-$(echo "$root" | md5sum | cut -c1-8)/pg"
fi
echo "$pgdir" >"$stack/run/pgdir"

if [ -f "$pgdir/data/postmaster.pid" ] && as_pg_owner "$(pg_bindir)/pg_ctl" -D "$pgdir/data" status >/dev/null 2>&1; then
  echo "PostgreSQL already running"
else
  require_free_port "$PG_PORT" PostgreSQL PG_PORT
  start_postgres "$pgdir" "$PG_PORT"
fi
for db in partners scheduling; do
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
    psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $db"
done

if [ -f "$stack/nats/nats.pid" ] && kill -0 "$(cat "$stack/nats/nats.pid")" 2>/dev/null; then
  echo "NATS already running"
else
  require_free_port "$NATS_PORT" NATS NATS_PORT
  require_free_port "$NATS_WS_PORT" "NATS websocket" NATS_WS_PORT
  start_nats "$stack/nats" "$NATS_PORT" "$NATS_WS_PORT"
fi

start_service() {  # name binary grpc_port metrics_port variable-prefix
  local name=$1 bin=$2 port=$3 metrics=$4 var=$5
  local pidfile="$stack/run/$name.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "$name already running"
    return
  fi
  require_free_port "$port" "$name gRPC" "${var}_PORT"
  require_free_port "$metrics" "$name metrics" "${var}_METRICS"
  JWT_KEY=$key launch_service "$BUILD_DIR/$bin" "$name" "$stack/logs/$name.log" "$port" "$metrics" info
  echo $! >"$pidfile"
  wait_port 127.0.0.1 "$port" 30 "$(cat "$pidfile")" || {
    tail -20 "$stack/logs/$name.log"
    if grep -q "edited after it was applied" "$stack/logs/$name.log"; then
      # Only an unreleased migration is ever edited (CHANGELOG, Upgrading).
      echo >&2 "$name: this stack's database was made with an earlier text of an" \
        "unreleased migration; 'make reset' deletes .stack's data (demo data comes back)."
    fi
    exit 1
  }
}
start_service partners services/partners/partners "$PARTNERS_PORT" "$PARTNERS_METRICS" PARTNERS
start_service scheduling services/scheduling/scheduling "${SCHEDULING_PORT:-50052}" \
  "${SCHEDULING_METRICS:-9102}" SCHEDULING

echo "loading demo data (idempotent)"
PARTNERS_ADDR="127.0.0.1:$PARTNERS_PORT" SCHEDULING_ADDR="127.0.0.1:${SCHEDULING_PORT:-50052}" \
  SCHEDULING_DATABASE_URL="postgresql://postgres@127.0.0.1:$PG_PORT/scheduling" \
  AUTH_JWT_KEY="$key" "$BUILD_DIR/tools/connecting-demo"

admin=$(AUTH_JWT_KEY="$key" "$BUILD_DIR/tools/connecting-token" admin)
cat <<INFO

Connecting is up (logs in .stack/logs/, stop with: make down)
  partners gRPC     127.0.0.1:$PARTNERS_PORT   (reflection on; metrics http://127.0.0.1:$PARTNERS_METRICS/metrics)
INFO
[ -f "$stack/run/scheduling.pid" ] && echo "  scheduling gRPC   127.0.0.1:${SCHEDULING_PORT:-50052}   (metrics http://127.0.0.1:${SCHEDULING_METRICS:-9102}/metrics)"
# grpcurl is not packaged for Debian 12; tools/grpc-call takes the same arguments.
call=grpcurl call_note="the README has more"
command -v grpcurl >/dev/null 2>&1 ||
  call=tools/grpc-call/grpc-call.js call_note="grpcurl's arguments; the README has more"
cat <<INFO
  PostgreSQL        postgresql://postgres@127.0.0.1:$PG_PORT/partners
  NATS              nats://127.0.0.1:$NATS_PORT  (websocket ws://127.0.0.1:$NATS_WS_PORT, streams PARTNERS, SCHEDULING)

An admin token (12 h; more with: make token ROLE=viewer):
  export TOKEN=$admin
Try ($call_note):
  $call -plaintext -H "authorization: Bearer \$TOKEN" 127.0.0.1:$PARTNERS_PORT connecting.partners.v1.PartnersService/ListOrganisations
  $call -plaintext -H "authorization: Bearer \$TOKEN" 127.0.0.1:${SCHEDULING_PORT:-50052} connecting.scheduling.v1.SchedulingService/ListSessions
Follow the bookings as a dashboard does (over websocket; Ctrl-C stops):
  node tools/watch-events/watch-events.js --server ws://127.0.0.1:$NATS_WS_PORT --stream SCHEDULING --subject 'connecting.scheduling.booking.>'
INFO
