#!/usr/bin/env bash
# `make bench`: starts its own PostgreSQL, NATS and services in a temporary
# directory, seeds data, runs the benchmarks (bounded: a few seconds each),
# prints the figures and ratios, and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/dev/lib.sh
BUILD_DIR=${BUILD_DIR:-build}
SECONDS_PER_RUN=${BENCH_SECONDS:-3}

work=$(mktemp -d /tmp/connecting-bench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  stop_nats "$work/nats"
  stop_postgres "$work/pg"
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

# "partners 21.3 MiB resident (peak 24.0)": a service's memory now (/proc).
memory_of() {
  awk -v name="$1" '/^VmRSS:/ {r = $2} /^VmHWM:/ {p = $2}
    END { printf "%s %.1f MiB resident (peak %.1f)", name, r / 1024, p / 1024 }' "/proc/$2/status"
}

pg_port=$(free_port)
start_postgres "$work/pg" "$pg_port"
nats_port=$(free_port)
start_nats "$work/nats" "$nats_port"
psql() { command psql -h 127.0.0.1 -p "$pg_port" -U postgres -v ON_ERROR_STOP=1 "$@"; }
psql -qc "CREATE DATABASE partners"
key=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
PG_PORT=$pg_port NATS_PORT=$nats_port JWT_KEY=$key  # for launch_service

partners_port=$(free_port)
partners_metrics=$(free_port)
launch_service "$BUILD_DIR/services/partners/partners" partners "$work/partners.log" "$partners_port" \
  "$partners_metrics" warn
pids+=($!)
wait_port 127.0.0.1 "$partners_port" 30 "${pids[-1]}" || { tail -5 "$work/partners.log" >&2; exit 1; }

# BENCH_ONLY: partners, scheduling or migration runs that part alone.
only() { [ -z "${BENCH_ONLY:-}" ] || [ "$BENCH_ONLY" = "$1" ]; }
if only partners; then
echo "seeding 100,000 organisations"
until psql -d partners -tAc "SELECT 1 FROM pg_tables WHERE tablename = 'organisations'" | grep -q 1; do sleep 0.2; done
psql -d partners -q <<'SQL'
INSERT INTO organisations (name, ods_code, sector, region, description)
SELECT 'Bench Organisation ' || lpad(g::text, 6, '0'), 'B' || lpad(g::text, 6, '0'),
       1 + g % 10, 1 + g % 7, 'Seeded for the read benchmark'
FROM generate_series(1, 100000) AS g;
ANALYZE organisations;
SQL
org=$(psql -d partners -tAc "SELECT id FROM organisations ORDER BY name LIMIT 1 OFFSET 50000")
partners_memory_before=$(memory_of partners "${pids[0]}")
token=$(AUTH_JWT_KEY="$key" "$BUILD_DIR/tools/connecting-token" viewer)

echo
echo "== partners reads (100,000 organisations; ${SECONDS_PER_RUN}s per row; $(nproc) cores shared by client and server)"
"$BUILD_DIR/tools/partners_bench" --addr "127.0.0.1:$partners_port" --token "$token" --org "$org" \
  --seconds "$SECONDS_PER_RUN"
echo "  memory: $(memory_of partners "${pids[0]}") after the reads; before them: ${partners_memory_before#partners }"
curl -s "http://127.0.0.1:$partners_metrics/metrics" | awk '
  /^connecting_cache_lookups_total/ { split($1, a, "\""); look[a[2] "," a[4]] = $NF; names[a[2]] = 1 }
  /^connecting_cache_(entries|bytes)/ { split($1, a, "\""); v[substr($1, 1, index($1, "{") - 1) "," a[2]] = $NF }
  END { for (c in names) printf "  cache %s: %d entries, %.1f MiB by its count, %.0f%% of lookups hit\n", c,
          v["connecting_cache_entries," c], v["connecting_cache_bytes," c] / 1048576,
          100 * look[c ",hit"] / (look[c ",hit"] + look[c ",miss"] + 1e-9) }' 

# The 100,000 organisations onto the PARTNERS stream (`partners --republish`,
# then the serving replica's relay), for scheduling to replay when it starts
# (tools/bench/scheduling.sh): how fast a new consumer, or one set right after
# a restore, catches up.
echo
echo "== partner events (100,000 organisations republished; replayed by scheduling when it starts)"
start=$(date +%s.%N)
DATABASE_URL="postgresql://postgres@127.0.0.1:$pg_port/partners" \
  "$BUILD_DIR/services/partners/partners" --republish >"$work/republish.log" 2>&1
until [ "$(psql -d partners -tAc "SELECT count(*) FROM outbox")" = 0 ]; do sleep 0.2; done
end=$(date +%s.%N)
replay_orgs=100000
awk -v s="$start" -v e="$end" 'BEGIN { printf "  republished and published: %.1f s, %.0f events/s\n",
  e - s, 100000 / (e - s) }'
fi

if only scheduling && [ -x "$BUILD_DIR/tools/scheduling_bench" ]; then
  . tools/bench/scheduling.sh
fi

if only migration; then
  . tools/bench/migration.sh
fi

if only scheduling && [ -x "$BUILD_DIR/tools/event_json_bench" ]; then
  echo
  echo "== event encoding (the BookingChanged of an event session on three sites; CPU per event)"
  "$BUILD_DIR/tools/event_json_bench" --benchmark_min_time=0.3 2>/dev/null | awk '
    /^BM_/ { printf "  %-24s %8.1f us\n", substr($1, 4), $4 / 1000; t[$1] = $4 }
    END { if (t["BM_MessageToJsonString"] > 0)
            printf "  EventJson costs %.0f%% of MessageToJsonString\n", 100 * t["BM_EventJson"] / t["BM_MessageToJsonString"] }'
fi
