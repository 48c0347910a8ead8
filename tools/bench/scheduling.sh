# Sourced by tools/bench/run.sh (its stack is running): booking throughput
# beside pgbench inserting single rows into the same database.
psql -qc "CREATE DATABASE scheduling"
forget() {  # processes ended: not to be signalled again at exit
  local keep=() p
  for p in "${pids[@]}"; do [[ " $* " == *" $p "* ]] || keep+=("$p"); done
  pids=("${keep[@]}")
}
scheduling_port=$(free_port)
scheduling_metrics=$(free_port)
start=$(date +%s.%N)
launch_service "$BUILD_DIR/services/scheduling/scheduling" scheduling "$work/scheduling.log" \
  "$scheduling_port" "$scheduling_metrics" warn
pids+=($!)
scheduling_pid=${pids[-1]}
wait_port 127.0.0.1 "$scheduling_port" 30 "$scheduling_pid" || { tail -5 "$work/scheduling.log" >&2; exit 1; }
if [ -n "${replay_orgs:-}" ]; then  # run.sh put them on the stream: the replay, from start-up
  deadline=$(( $(date +%s) + 600 ))
  until [ "$(psql -d scheduling -tAc "SELECT count(*) FROM partner_organisations")" -ge "$replay_orgs" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "  replay: not done after 600 s" >&2; break; }
    sleep 0.2
  done
  end=$(date +%s.%N)
  awk -v s="$start" -v e="$end" -v n="$replay_orgs" 'BEGIN {
    printf "  replayed into a new scheduling (projection, inbox): %.1f s from its start, %.0f events/s\n",
      e - s, n / (e - s) }'
fi
admin=$(AUTH_JWT_KEY="$key" "$BUILD_DIR/tools/connecting-token" admin)

echo
echo "== bookings (16 clients; every rule checked under the site lock, an outbox event each; concurrent bookings share transactions)"
# pgbench's single-row INSERT into the same database, for as long as a
# booking run, before the first booking run and after each (--between): each
# run is compared with the pgbench runs on either side of it, as this host's
# speed drifts within a minute (pgbench alone ranged 7,500-11,400 tps over
# one quarter of an hour on 2026-12-04).
psql -d scheduling -qc "CREATE TABLE pgbench_single_row (id bigserial PRIMARY KEY, payload text NOT NULL)"
echo "INSERT INTO pgbench_single_row (payload) VALUES ('booking-sized row');" >"$work/insert.sql"
: >"$work/pgbench.txt"
: >"$work/pgbench-cpu.txt"
proc_ticks() {  # utime + stime of a process, with its reaped children (the postmaster's backends)
  local t p; t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat")
  for p in $(pgrep -P "$1"); do t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) )); done
  echo "$t"
}
machine_ticks() {  # the machine's busy and total ticks, as scheduling_bench counts them
  awk '/^cpu / {busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6; exit}' /proc/stat
}
pg_pid=$(head -1 "$work/pg/data/postmaster.pid")
# BENCH_STATS: the WAL each run writes (records, full-page images, bytes).
wal_reset() { [ -z "${BENCH_STATS:-}" ] || psql -d scheduling -qtAc "SELECT pg_stat_reset_shared('wal')" >/dev/null; }
wal_per() {  # $1: what, $2: how many of them
  [ -z "${BENCH_STATS:-}" ] || psql -d scheduling -tAc "SELECT format('  WAL per %s: %s records, %s full-page images, %s bytes', '$1',
    round(wal_records::numeric / $2, 1), round(wal_fpi::numeric / $2, 2), round(wal_bytes / $2)) FROM pg_stat_wal"
}
{
  echo "set -e"
  echo "psql() { command psql -h 127.0.0.1 -p $pg_port -U postgres -v ON_ERROR_STOP=1 \"\$@\"; }"
  declare -f wal_reset wal_per
  echo "BENCH_STATS='${BENCH_STATS:-}'"
  declare -f proc_ticks machine_ticks
  echo "rows=\$(psql -d scheduling -tAc 'SELECT count(*) FROM pgbench_single_row')"
  echo "wal_reset"
  echo "before=\"\$(proc_ticks $pg_pid) \$(machine_ticks)\""
  echo "tps=\$(command pgbench -h 127.0.0.1 -p $pg_port -U postgres -n -c 16 -j 2 -T $SECONDS_PER_RUN \\"
  echo "  -f '$work/insert.sql' scheduling 2>/dev/null | awk '/^tps/ {print int(\$3); exit}')"
  echo "[ -n \"\$tps\" ] || { echo 'pgbench gave no rate' >&2; exit 1; }"
  echo "sleep 0.5  # the backends' exit: their time is the postmaster's once reaped"
  echo "after=\"\$(proc_ticks $pg_pid) \$(machine_ticks)\""
  echo "echo \"\$tps\" >>'$work/pgbench.txt'"
  echo "inserted=\$(( \$(psql -d scheduling -tAc 'SELECT count(*) FROM pgbench_single_row') - rows ))"
  # PostgreSQL's CPU per insert (pgbench's client not counted).
  echo "awk -v hz=\$(getconf CLK_TCK) -v n=\$inserted \\"
  echo "  -v b=\"\$before\" -v a=\"\$after\" 'BEGIN { split(b, x, \" \"); split(a, y, \" \")"
  echo "  if (n > 0 && y[3] > x[3]) printf \"%.0f us (machine %d%% busy)\\n\", (y[1] - x[1]) * 1e6 / hz / n, 100 * (y[2] - x[2]) / (y[3] - x[3]) }' >>'$work/pgbench-cpu.txt'"
  echo "[ -z \"\$BENCH_STATS\" ] ||"
  echo "  wal_per 'pgbench insert' \$inserted >'$work/pgbench-wal.txt'"
} >"$work/pgbench.sh"
# --cpu: CPU per booking of each process (the postmaster with its backends).
cpu="postgres=$(head -1 "$work/pg/data/postmaster.pid"),scheduling=$scheduling_pid,partners=${pids[0]}"
cpu="$cpu,nats=$(cat "$work/nats/nats.pid")"
# BENCH_BUSY=N: N busy loops at the same priority through the pgbench,
# booking and floor runs, each taking a core when it can: a host with other
# work on it, as this one often is, made repeatable.
busy=()
for _ in $(seq "${BENCH_BUSY:-0}"); do
  timeout 1800 sh -c 'while :; do :; done' &
  busy+=($!)
  pids+=($!)
done
[ "${#busy[@]}" -eq 0 ] || echo "(with ${#busy[@]} busy loop(s) beside, BENCH_BUSY)"
"$BUILD_DIR/tools/scheduling_bench" --scheduling "127.0.0.1:$scheduling_port" \
  --partners "127.0.0.1:$partners_port" --token "$admin" --seconds "$SECONDS_PER_RUN" \
  --cpu "$cpu" --nats "nats://127.0.0.1:$nats_port" --between "bash $work/pgbench.sh" |
  tee "$work/bookings.txt"
# The service's metrics after the three scenarios, read once for both lines below.
metrics=$(curl -s "http://127.0.0.1:$scheduling_metrics/metrics")
batches=$(printf '%s\n' "$metrics" | awk '
  /^connecting_group_commit_batch_size_sum\{committer="bookings"/ {sum = $NF}
  /^connecting_group_commit_batch_size_count\{committer="bookings"/ {n = $NF}
  END { if (n > 0) printf "%d %.1f", n, sum / n }')
[ -z "$batches" ] || echo "  (all three scenarios: ${batches% *} transactions, ${batches#* } bookings each on average)"
# Where a booking's time went, on average over the three scenarios: queued
# behind the batches before its own, then its own transaction (the rest of
# its latency is gRPC's, both ways, and the answer's wait for the lane).
printf '%s\n' "$metrics" | awk '
  /^connecting_group_commit_queued_seconds_sum\{committer="bookings"/ {qs = $NF}
  /^connecting_group_commit_queued_seconds_count\{committer="bookings"/ {qn = $NF}
  /^connecting_group_commit_transaction_seconds_sum\{committer="bookings"/ {ts = $NF}
  /^connecting_group_commit_transaction_seconds_count\{committer="bookings"/ {tn = $NF}
  END { if (qn > 0 && tn > 0) printf "  (a booking queued %.2f ms behind the batches before its own on average; a transaction took %.2f ms)\n", 1000 * qs / qn, 1000 * ts / tn }'

echo "pgbench, single-row INSERT, 16 clients, same database, before the first booking run and after each: $(paste -sd' ' "$work/pgbench.txt" | sed 's/ / tps, /g') tps"
pgbench_tps=$(tail -1 "$work/pgbench.txt")  # the floor below runs next to the last
echo "  CPU per insert, PostgreSQL: $(paste -sd, "$work/pgbench-cpu.txt" | sed 's/,/, /g')"
# Each of pgbench's inserts is a commit, so its rate follows the disk's
# flush time; bookings share commits (batches), so it weighs less on them
# and the share of pgbench below rises on a slow disk (11-19% on hosts
# whose disk flushed in 0.15 ms; 22-44% on one at 0.47-0.50 ms, on
# 2026-12-02). Measured where the database writes its WAL.
flush_us=$("$(pg_bindir)/pg_test_fsync" -s 1 -f "$work/pg/fsync.test" 2>/dev/null |
  awk '/one 8kB write/ {one = 1} one && $1 == "fdatasync" {print int($(NF-1)); exit}')
rm -f "$work/pg/fsync.test"
echo "  the disk's flush (pg_test_fsync, fdatasync of one 8 kB write): ${flush_us:-?} us"
[ -z "${BENCH_STATS:-}" ] || cat "$work/pgbench-wal.txt"
# Each booking run's share of the mean of the pgbench runs on either side.
awk 'BEGIN { n = 0 } NR == FNR { tps[FNR - 1] = $1; next }
  FNR > 1 && $NF ~ /^[0-9]+$/ {
    rate = $(NF-3); name = $0; sub(/ +[0-9]+ +[0-9]+ +[0-9.]+ +[0-9.]+ +[0-9]+$/, "", name);
    if ((n + 1) in tps) printf "  %-36s %.0f%% of pgbench (%d and %d tps either side)\n", name,
      100 * rate / ((tps[n] + tps[n + 1]) / 2), tps[n], tps[n + 1]
    n++ }' "$work/pgbench.txt" "$work/bookings.txt"
# The floor: what the database alone does with the statements of a booking,
# sent the way the service sent them (per lane, a batch in two round trips:
# BEGIN, the people's share locks, one book_sites for the batch's bookings,
# each with a request_id of its own, then the outbox rows (one INSERT) + COMMIT; spread
# over the sessions, each booking is a run of its own; the people locked are the next
# ones the shared sequence hands out, which other lanes may take meanwhile:
# the same work), by pgbench with a client for each of the service's lanes
# and batches of the size the service's averaged over its runs (metrics
# above). Each client books its
# own share of the sessions, as a session's bookings keep to one lane. No
# gRPC, no service, no NATS: the best any service could do with these
# statements on this machine.
floor_lanes=${BOOKING_LANES:-1}
floor_batch=$(awk -v b="${batches#* }" 'BEGIN { n = int(b + 0.5); print (n < 1 ? 4 : n) }')
kill -TERM "$scheduling_pid" && wait "$scheduling_pid" 2>/dev/null || true  # its relay would publish the rows
forget "$scheduling_pid"
psql -d scheduling -q <<SQL
INSERT INTO participants (staff_number, display_name, email, grade, directorate)
  SELECT 'FLOOR' || g, 'Floor ' || g, 'floor' || g || '@example.org', 1, 'Bench'
    FROM generate_series(1, $(( SECONDS_PER_RUN * 12000 ))) g;
CREATE TABLE floor_participants AS
  SELECT row_number() OVER () AS n, id FROM participants WHERE staff_number LIKE 'FLOOR%';
CREATE UNIQUE INDEX ON floor_participants (n);
CREATE TABLE floor_sessions AS
  SELECT row_number() OVER (ORDER BY s.id) - 1 AS n, s.id FROM sessions s
   WHERE s.status = 2 AND s.kind <> 2;
CREATE UNIQUE INDEX ON floor_sessions (n);
CREATE SEQUENCE floor_next;
-- Its own tables only. Analysed, the bench's 201 sessions (a few pages) are
-- cheaper to read whole than through their index, so the floor's backend
-- planned the booking's reads of a session (twice per booking) and of its
-- partner (once) as sequential scans, where the service's backends, which
-- planned them before, use the indexes (until 2026-12-04: pg_stat_user_tables,
-- 21,066 scans of sessions over 10,456 floor bookings).
ANALYZE floor_participants, floor_sessions;
SQL
floor_sessions=$(psql -d scheduling -tAc "SELECT count(*) FROM floor_sessions")
{
  for i in $(seq "$floor_batch"); do
    echo "\\set s$i (random(0, $floor_sessions / $floor_lanes - 1) * $floor_lanes + :client_id % $floor_lanes)"
  done
  echo "\\startpipeline"
  echo "BEGIN ISOLATION LEVEL READ COMMITTED;"
  echo "SELECT set_config('statement_timeout', '10000', true), set_config('lock_timeout', '100', true);"
  echo "SELECT lock_participants(ARRAY(SELECT id FROM floor_participants WHERE n > (SELECT last_value FROM floor_next) AND n <= (SELECT last_value FROM floor_next) + $floor_batch));"
  sessions=""; sites=""; people=""; keys=""
  for i in $(seq "$floor_batch"); do
    sessions="$sessions${sessions:+, }(SELECT id FROM floor_sessions WHERE n = :s$i)"
    sites="$sites${sites:+, }''"
    people="$people${people:+, }(SELECT id FROM floor_participants WHERE n = (SELECT nextval('floor_next')))"
    keys="$keys${keys:+, }gen_random_uuid()::text"
  done
  echo "SELECT * FROM book_sites(ARRAY[$sessions], ARRAY[$sites], ARRAY[$people], ARRAY[$keys]);"
  echo "\\endpipeline"
  echo "\\startpipeline"
  # The batch's events in one INSERT, as the service writes them since
  # e26c751 (bus::MergeOutboxRows).
  rows=""
  for i in $(seq "$floor_batch"); do
    rows="$rows${rows:+, }('connecting.scheduling.booking.confirmed', 'connecting.events.v1.BookingChanged', 'scheduling', 'bench', repeat('x', 1000), '')"
  done
  echo "INSERT INTO outbox (subject, type, source, ce_subject, payload, traceparent) VALUES $rows;"
  echo "COMMIT;"
  echo "\\endpipeline"
} >"$work/floor.sql"
wal_reset
floor_before="$(proc_ticks "$pg_pid") $(machine_ticks)"
# (The floor's own lookups of its 201 sessions are sequential scans, which
# the service never pays: pg_stat_user_tables, 2026-12-05, 14,746 scans of
# floor_sessions over 14,744 floor bookings. With enable_seqscan off for
# the floor's connection its helper statements ran 20 times slower.)
floor_tps=$(command pgbench -h 127.0.0.1 -p "$pg_port" -U postgres -n -c "$floor_lanes" -j 2 -M prepared \
  -T "$SECONDS_PER_RUN" -f "$work/floor.sql" scheduling 2>/dev/null | awk '/^tps/ {print int($3); exit}')
sleep 0.5  # its backends' exit: their time is the postmaster's once reaped
floor_after="$(proc_ticks "$pg_pid") $(machine_ticks)"
floor_outcomes=$(psql -d scheduling -tAc "SELECT string_agg(status || ':' || n, ' ') FROM (SELECT CASE status WHEN 1 THEN 'confirmed' ELSE 'waitlisted' END AS status, count(*) AS n FROM bookings b JOIN floor_participants f ON f.id = b.participant_id GROUP BY 1) x")
echo "floor: the booking's statements alone (pgbench, $floor_lanes lane(s), batches of $floor_batch): $(( floor_tps * floor_batch )) bookings/s ($floor_outcomes)"
floor_booked=$(psql -d scheduling -tAc "SELECT count(*) FROM bookings b JOIN floor_participants f ON f.id = b.participant_id")
# PostgreSQL's CPU per booking on the floor (its statements alone: no relay
# publishing, pgbench's client not counted), beside the service's runs' above.
awk -v hz="$(getconf CLK_TCK)" -v n="$floor_booked" -v b="$floor_before" -v a="$floor_after" 'BEGIN {
  split(b, x, " "); split(a, y, " ")
  if (n > 0 && y[3] > x[3])
    printf "  CPU per booking, us: postgres %.0f (machine %d%% busy)\n", (y[1] - x[1]) * 1e6 / hz / n,
      100 * (y[2] - x[2]) / (y[3] - x[3]) }'
wal_per "floor booking" "$floor_booked"
awk -v f="$(( floor_tps * floor_batch ))" -v tps="$pgbench_tps" 'BEGIN { printf "  %-36s %.0f%% of pgbench\n", "floor (database alone)", 100 * f / tps }'
awk -v f="$(( floor_tps * floor_batch ))" 'NR > 1 && $NF ~ /^[0-9]+$/ {
  rate = $(NF-3); name = $0; sub(/ +[0-9]+ +[0-9]+ +[0-9.]+ +[0-9.]+ +[0-9]+$/, "", name);
  printf "  %-36s %.0f%% of the floor\n", name, 100 * rate / f }' "$work/bookings.txt"
if [ "${#busy[@]}" -gt 0 ]; then
  for p in "${busy[@]}"; do kill -TERM "$p" && wait "$p" 2>/dev/null || true; done
  forget "${busy[@]}"
fi
if [ -n "${BENCH_STATS:-}" ]; then
  psql -d scheduling -c "SELECT relname, seq_scan, seq_tup_read, idx_scan, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, n_dead_tup FROM pg_stat_user_tables ORDER BY seq_tup_read DESC"
  psql -d scheduling -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" 2>/dev/null &&
  psql -d scheduling -c "SELECT calls, total_exec_time::int ms, rows, left(query, 90) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25" 2>/dev/null || true
fi

# An outbox backlog, as after NATS was unreachable for a while: the floor
# left its filler events (1 kB each) in the outbox with no service running,
# topped up here to 50,000. A scheduling started on them publishes them all:
# how fast a backlog drains, and what each event costs every process (the
# relay's transactions, JetStream storing and acknowledging, the service's
# NATS client).
psql -d scheduling -qc "INSERT INTO outbox (subject, type, source, ce_subject, payload, traceparent)
  SELECT 'connecting.scheduling.booking.confirmed', 'connecting.events.v1.BookingChanged',
         'scheduling', 'bench', repeat('x', 1000), ''
    FROM generate_series(1, 50000 - (SELECT count(*) FROM outbox))"
backlog=$(psql -d scheduling -tAc "SELECT count(*) FROM outbox")
if [ "$backlog" -gt 0 ]; then
  nats_pid=$(cat "$work/nats/nats.pid")
  launch_service "$BUILD_DIR/services/scheduling/scheduling" scheduling "$work/scheduling-backlog.log" \
    "$scheduling_port" "$scheduling_metrics" warn
  backlog_pid=$!
  pids+=($backlog_pid)
  published() {  # events its relay published so far (its metrics: no load on the database)
    curl -s "http://127.0.0.1:$scheduling_metrics/metrics" |
      awk '/^connecting_outbox_published_total/ {n = $NF} END {printf "%d", n}'
  }
  wait_port 127.0.0.1 "$scheduling_port" 30 "$backlog_pid" || { tail -5 "$work/scheduling-backlog.log" >&2; exit 1; }
  # From when it serves (its start-up aside): what is left then, drained.
  before="$(proc_ticks "$pg_pid") $(proc_ticks "$nats_pid") $(proc_ticks "$backlog_pid") $(date +%s.%N) $(published)"
  deadline=$(( $(date +%s) + 300 ))
  until [ "$(published)" -ge "$backlog" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "  outbox backlog: not drained after 300 s" >&2; break; }
    sleep 0.05
  done
  after="$(proc_ticks "$pg_pid") $(proc_ticks "$nats_pid") $(proc_ticks "$backlog_pid") $(date +%s.%N) $(published)"
  kill -TERM "$backlog_pid" && wait "$backlog_pid" 2>/dev/null || true
  forget "$backlog_pid"
  awk -v total="$backlog" -v hz="$(getconf CLK_TCK)" -v b="$before" -v a="$after" 'BEGIN {
    split(b, x, " "); split(a, y, " "); n = y[5] - x[5]
    if (n <= 0) { print "outbox backlog: published before the service answered"; exit }
    us = 1e6 / hz / n
    printf "outbox backlog of %d events (1 kB each), published by a scheduling started on it: %d of them in %.2f s once it served, %.0f events/s\n", total, n, y[4] - x[4], n / (y[4] - x[4])
    printf "  CPU per event, us: postgres %.0f, nats %.0f, scheduling %.0f\n", (y[1] - x[1]) * us, (y[2] - x[2]) * us, (y[3] - x[3]) * us }'
fi

# Programme figures at national scale: a year of 500,000 attended visits
# (seventy times the programme's first two years) by 100,000 connectors at
# 10,000 organisations. They are written straight into attendance_facts, the
# one table the figures read, without the bookings behind them (foreign keys
# and triggers off for this load: a seeded history, not a booked one); the
# figures' chains are then built in one pass, as the migration that added
# them does (R__attendance_chains.sql).
figures_year=$(( $(date -u +%Y) - 1 ))
psql -d scheduling -q <<SQL
DELETE FROM outbox;  -- any the backlog's relay left
SET session_replication_role = replica;
CREATE TABLE bench_people AS SELECT g AS n, gen_random_uuid() AS id,
  'Directorate ' || g % 40 AS directorate, 1 + g % 4 AS grade FROM generate_series(1, 100000) g;
CREATE TABLE bench_places AS SELECT g AS n, gen_random_uuid() AS id,
  1 + g % 10 AS sector, 1 + g % 7 AS region FROM generate_series(1, 10000) g;
CREATE INDEX ON bench_people (n);
CREATE INDEX ON bench_places (n);
INSERT INTO attendance_facts (booking_id, session_date, participant_id, organisation_id, sector,
                              region, directorate, grade)
SELECT gen_random_uuid(), date '$figures_year-01-01' + (g % 365)::int, p.id, o.id, o.sector,
       o.region, p.directorate, p.grade
  FROM generate_series(1, 500000::bigint) g
  JOIN bench_people p ON p.n = g * 7919 % 100000 + 1
  JOIN bench_places o ON o.n = g * 104729 % 10000 + 1;
SET session_replication_role = DEFAULT;
SELECT rebuild_attendance_chains() AS facts_linked \gset
VACUUM ANALYZE attendance_facts;
SQL
launch_service "$BUILD_DIR/services/scheduling/scheduling" scheduling "$work/scheduling-figures.log" \
  "$scheduling_port" "$scheduling_metrics" warn
pids+=($!)
wait_port 127.0.0.1 "$scheduling_port" 30 "${pids[-1]}" || { tail -5 "$work/scheduling-figures.log" >&2; exit 1; }
echo
echo "== programme figures ($figures_year: 500,000 attended visits, 100,000 connectors, 10,000 organisations; one stream)"
"$BUILD_DIR/tools/figures_bench" --addr "127.0.0.1:$scheduling_port" --token "$admin" \
  --year "$figures_year" --seconds "$SECONDS_PER_RUN"
echo "  memory: $(memory_of scheduling "${pids[-1]}") after the figures"

# What keeping the chains costs an attendance record: one more visit's fact
# among those 500,000, by one client, with the chains' triggers (their
# locks, ten predecessors and successors looked up, relinked) and without
# (foreign keys off in both: the facts name no bookings).
cat >"$work/record.sql" <<SQL
\\set p random(1, 100000)
\\set o random(1, 10000)
\\set d random(0, 364)
INSERT INTO attendance_facts (booking_id, session_date, participant_id, organisation_id, sector,
                              region, directorate, grade)
SELECT gen_random_uuid(), date '$figures_year-01-01' + :d, p.id, o.id, o.sector, o.region,
       p.directorate, p.grade FROM bench_people p, bench_places o WHERE p.n = :p AND o.n = :o;
SQL
record_tps() {
  PGOPTIONS="-c session_replication_role=replica" command pgbench -h 127.0.0.1 -p "$pg_port" \
    -U postgres -n -c 1 -T "$SECONDS_PER_RUN" -f "$work/record.sql" scheduling 2>/dev/null |
    awk '/^tps/ {print $3; exit}'
}
plain=$(record_tps)
for t in attendance_chains_link attendance_chains_keys_fixed; do
  psql -d scheduling -qc "ALTER TABLE attendance_facts ENABLE ALWAYS TRIGGER $t"
done
linked=$(record_tps)
awk -v plain="$plain" -v linked="$linked" 'BEGIN {
  printf "recording an attendance (its fact among 500,000; one client): %.2f ms with the chains linked, %.2f ms without\n",
    1000 / linked, 1000 / plain }'
