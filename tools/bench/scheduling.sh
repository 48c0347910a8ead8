# Sourced by tools/bench/run.sh (its stack is running): booking throughput
# beside pgbench inserting single rows into the same database.
psql -qc "CREATE DATABASE scheduling"
scheduling_port=$(free_port)
scheduling_metrics=$(free_port)
DATABASE_URL="postgresql://postgres@127.0.0.1:$pg_port/scheduling" NATS_URL="nats://127.0.0.1:$nats_port" \
GRPC_LISTEN="127.0.0.1:$scheduling_port" METRICS_LISTEN="127.0.0.1:$scheduling_metrics" AUTH_JWT_KEY="$key" \
LOG_LEVEL=warn "$BUILD_DIR/services/scheduling/scheduling" >"$work/scheduling.log" 2>&1 &
pids+=($!)
wait_port 127.0.0.1 "$scheduling_port" 30 "${pids[-1]}" || { tail -5 "$work/scheduling.log" >&2; exit 1; }
admin=$(AUTH_JWT_KEY="$key" "$BUILD_DIR/tools/connecting-token" admin)

echo
echo "== bookings (16 clients; every rule checked under the site lock, an outbox event each; concurrent bookings share transactions)"
"$BUILD_DIR/tools/scheduling_bench" --scheduling "127.0.0.1:$scheduling_port" \
  --partners "127.0.0.1:$partners_port" --token "$admin" --seconds "$SECONDS_PER_RUN" | tee "$work/bookings.txt"
curl -s "http://127.0.0.1:$scheduling_metrics/metrics" | awk '
  /^connecting_group_commit_batch_size_sum\{committer="bookings"/ {sum = $NF}
  /^connecting_group_commit_batch_size_count\{committer="bookings"/ {n = $NF}
  END { if (n > 0) printf "  (both scenarios: %d transactions, %.1f bookings each on average)\n", n, sum / n }'

psql -d scheduling -qc "CREATE TABLE pgbench_single_row (id bigserial PRIMARY KEY, payload text NOT NULL)"
echo "INSERT INTO pgbench_single_row (payload) VALUES ('booking-sized row');" >"$work/insert.sql"
pgbench_tps=$(command pgbench -h 127.0.0.1 -p "$pg_port" -U postgres -n -c 16 -j 2 -T "$SECONDS_PER_RUN" \
  -f "$work/insert.sql" scheduling 2>/dev/null | awk '/^tps/ {print int($3); exit}')
echo "pgbench, single-row INSERT, 16 clients, same database: $pgbench_tps tps"
awk -v tps="$pgbench_tps" 'NR > 1 && $NF ~ /^[0-9]+$/ {
  rate = $(NF-3); name = $0; sub(/ +[0-9]+ +[0-9]+ +[0-9.]+ +[0-9.]+ +[0-9]+$/, "", name);
  printf "  %-32s %.0f%% of pgbench\n", name, 100 * rate / tps }' "$work/bookings.txt"
if [ -n "${BENCH_STATS:-}" ]; then
  psql -d scheduling -c "SELECT relname, seq_scan, seq_tup_read, idx_scan, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, n_dead_tup FROM pg_stat_user_tables ORDER BY seq_tup_read DESC"
  psql -d scheduling -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" 2>/dev/null &&
  psql -d scheduling -c "SELECT calls, total_exec_time::int ms, rows, left(query, 90) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25" 2>/dev/null || true
fi
