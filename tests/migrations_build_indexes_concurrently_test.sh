#!/usr/bin/env bash
# An index on a table that already exists is built CONCURRENTLY.
#
# Inside a migration's transaction, CREATE INDEX holds every write to its
# table until the migration commits: over 300,000 participants,
# registrations waited up to 3.9 s (tools/bench/migration.sh). So a versioned
# migration that indexes a table it did not create in the same file runs
# outside a transaction (first line `-- connecting:no-transaction`) and
# builds with CREATE INDEX CONCURRENTLY IF NOT EXISTS (libs/db/migrations.h,
# which refuses any other CREATE INDEX there). The migrations listed below
# came before that was possible, when their tables were small; they stay as
# they were applied. (A constraint added with ALTER TABLE … ADD UNIQUE or
# PRIMARY KEY builds an index too; this check does not see those: build the
# index concurrently first, then add the constraint USING INDEX.)
# Usage (ctest runs it): migrations_build_indexes_concurrently_test.sh [ROOT]
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
shopt -s nullglob
grandfathered=(
  libs/bus/migrations/0006_inbox_stream_position.sql
  services/scheduling/migrations/0004_booking_indexes.sql
  services/scheduling/migrations/0007_sessions_by_arranger.sql
  services/scheduling/migrations/0008_sessions_by_host.sql
  services/scheduling/migrations/0010_attendance_chains.sql
)
failures=0
checked=0
for f in libs/*/migrations/[0-9][0-9][0-9][0-9]_*.sql services/*/migrations/[0-9][0-9][0-9][0-9]_*.sql; do
  checked=$((checked + 1))
  [[ " ${grandfathered[*]} " == *" $f "* ]] && continue
  # Comments out, the file as one line (grep -z), names lower-cased.
  text=$(sed -e 's/--.*$//' "$f" | tr 'A-Z' 'a-z')
  created=$( (grep -zoP 'create\s+table\s+(if\s+not\s+exists\s+)?\K\w+' <<<"$text" || true) | tr '\0' '\n')
  indexed=$( (grep -zoP 'create\s+(unique\s+)?index\s+(?!concurrently)[^;]*?\bon\s+(only\s+)?\K\w+' \
    <<<"$text" || true) | tr '\0' '\n')
  for table in $indexed; do
    grep -qx "$table" <<<"$created" && continue
    echo "$f: indexes $table, which it did not create, inside a transaction; build it" \
      "CONCURRENTLY in a migration whose first line is '-- connecting:no-transaction'" \
      "(libs/db/migrations.h)" >&2
    failures=$((failures + 1))
  done
done
[ "$checked" -gt 0 ] || { echo "no migrations found under $(pwd)" >&2; exit 1; }
if [ "$failures" -gt 0 ]; then exit 1; fi
echo "$checked versioned migrations: every index on an existing table is built concurrently"
