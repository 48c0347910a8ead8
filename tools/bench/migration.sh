# Sourced by tools/bench/run.sh (its psql, pg_port, work, BUILD_DIR): a
# migration building indexes over 300,000 participants (scheduling's 0013)
# while two clients insert participants, as old replicas would during a
# rollout; built as it is (CONCURRENTLY, outside a transaction), then as the
# same statements inside one transaction, beside each other.
echo
echo "== a migration building indexes while writes go on (scheduling 0013, 300,000 participants, 2 clients inserting)"
m13=services/scheduling/migrations/0013_lists_in_proportion_to_the_page.sql
built=$(grep -o 'IF NOT EXISTS [a-z_]*' "$m13" | awk '{print $4}' | paste -sd, -)
psql -qc "CREATE DATABASE upgrade"
upgrade_url="postgresql://postgres@127.0.0.1:$pg_port/upgrade"
DATABASE_URL=$upgrade_url "$BUILD_DIR/services/scheduling/scheduling" --migrate >/dev/null 2>&1
psql -d upgrade -q <<SQL
INSERT INTO participants (staff_number, display_name, email, grade, directorate)
SELECT 'S' || g, 'Name ' || md5(g::text), 'p' || g || '@example.gov.uk', 1 + g % 4, 'D' || g % 300
FROM generate_series(1, 300000) g;
CREATE SEQUENCE upgrade_staff;
SQL
echo "INSERT INTO participants (staff_number, display_name, email, grade, directorate) VALUES ('N' || nextval('upgrade_staff'), 'New', 'new@example.gov.uk', 1, 'D1');" \
  >"$work/upgrade_insert.sql"

# Back to 0012: without 0013's indexes, with the name index it replaces.
migration_reset() {
  psql -d upgrade -q -c "DROP INDEX IF EXISTS $built" \
    -c "CREATE INDEX IF NOT EXISTS participants_by_name ON participants (display_name, id)" \
    -c "DELETE FROM schema_migrations WHERE component = 'scheduling' AND name LIKE '0013%'" \
    -c "VACUUM ANALYZE participants"
}
# $1: how; $2...: the command that migrates.
migration_run() {
  local how=$1
  shift
  migration_reset
  rm -f "$work"/upgrade_log.*
  command pgbench -h 127.0.0.1 -p "$pg_port" -U postgres -n -c 2 -j 2 -T 14 \
    -f "$work/upgrade_insert.sql" -l --log-prefix="$work/upgrade_log" upgrade >/dev/null 2>&1 &
  local bench=$!
  sleep 1
  local t0 t1
  t0=$(date +%s%N)
  "$@" >"$work/upgrade_migrate.log" 2>&1 || { tail -3 "$work/upgrade_migrate.log" >&2; }
  t1=$(date +%s%N)
  wait "$bench"
  # pgbench's log: client, transaction, latency (us), script, and when it
  # ended (epoch s, us); the inserts that ended while it migrated, and the
  # first to end after it (one held throughout ends just after).
  cat "$work"/upgrade_log.* | sort -k5,5n -k6,6n | awk -v how="$how" -v t0="$t0" -v t1="$t1" '
    { t = $5 * 1e9 + $6 * 1e3
      if (t < t0 || after) next
      if (t > t1) after = 1
      n++; if ($3 > max) max = $3; if ($3 > 100000) slow++ }
    END { printf "  %-40s %5.1f s; inserts meanwhile %4.0f/s, slowest %6.1f ms, %d over 100 ms\n",
                 how, (t1 - t0) / 1e9, n / ((t1 - t0) / 1e9), max / 1000, slow }'
}
migration_run "CONCURRENTLY, outside a transaction" \
  env DATABASE_URL="$upgrade_url" "$BUILD_DIR/services/scheduling/scheduling" --migrate
sed -e 's/ CONCURRENTLY//' "$m13" >"$work/0013_in_a_transaction.sql"
migration_run "the same, inside one transaction" psql -d upgrade -q -1 -f "$work/0013_in_a_transaction.sql"
migration_run "no migration (4 s of the inserts alone)" sleep 4
psql -qc "DROP DATABASE upgrade"
