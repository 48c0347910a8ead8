#!/usr/bin/env bash
# A migration never holds a table that already exists for as long as its
# rows take to read.
#
# Replicas of the old release keep serving while a migration Job runs
# (docs/operations.md), so a statement that locks an existing table and
# then reads every row stops bookings and registrations for that long: over
# 300,000 participants, an index built inside a migration's transaction held
# registrations up to 3.9 s (tools/bench/migration.sh). Each versioned
# migration is read statement by statement (comments out, lower-cased), and
# on a table the same file did not create:
#   - CREATE INDEX must be CONCURRENTLY, in a migration whose first line is
#     `-- connecting:no-transaction` (libs/db/migrations.h, which refuses any
#     other CREATE INDEX there);
#   - a UNIQUE, PRIMARY KEY or EXCLUDE constraint (ALTER TABLE … ADD, or on
#     an added column) builds its index under an exclusive lock: build the
#     index concurrently first, then ADD CONSTRAINT … USING INDEX in the
#     next migration;
#   - a CHECK or FOREIGN KEY constraint reads every row under its lock: add
#     it NOT VALID, then VALIDATE CONSTRAINT (which lets writes through) in
#     a later migration: in the same transaction the lock taken to add it
#     is still held while it validates;
#   - ALTER COLUMN … TYPE rewrites the table and SET NOT NULL reads it, both
#     under an exclusive lock: add a new column instead, or a CHECK
#     (… IS NOT NULL) NOT VALID, validated, before SET NOT NULL;
#   - so does a column added with a volatile DEFAULT (gen_random_uuid(),
#     random(), clock_timestamp(), nextval(), a serial type) or GENERATED …
#     STORED, and SET LOGGED/UNLOGGED or SET TABLESPACE: add the column
#     plain and fill it in batches;
#   - VACUUM FULL and CLUSTER rewrite a table under an exclusive lock;
#   - UPDATE, DELETE and MERGE hold every row they change until they end
#     (a writer to any of them waits that long): change rows in batches, a
#     DO block that COMMITs after each, in a no-transaction migration (a
#     DO block in a transaction cannot commit; a function's body is only
#     defined, not run, and is not checked).
# Nor may it take away what those replicas use: DROP TABLE, VIEW, FUNCTION,
# PROCEDURE or TYPE, ALTER TABLE … DROP [COLUMN] and RENAME (a column, a
# table, a view or function) of what the file did not create are refused
# unless the file has a line `-- connecting:contract: <why>`, saying why no
# release still running reads or writes it (it was replaced a release
# before). Dropping and creating a name in one file is not checked: a
# replaced function must keep what its callers of the release before read.
# The migrations listed below came before this check, when their tables were
# small and no release was running; they stay as they were applied.
# Usage (ctest runs it): migrations_keep_writes_flowing_test.sh [ROOT]
#        migrations_keep_writes_flowing_test.sh --self-test
set -euo pipefail

if [ "${1:-}" = "--self-test" ]; then
  # The check itself: each kind of statement it must refuse is refused with
  # its reason, and the forms it must accept pass.
  self=$(readlink -f "$0")
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  expect() {  # expect pass|fail "reason substring" "migration text"
    rm -rf "$tmp/root" && mkdir -p "$tmp/root/services/x/migrations"
    printf '%s\n' "$3" >"$tmp/root/services/x/migrations/0001_x.sql"
    local rc=0
    "$self" "$tmp/root" >"$tmp/out" 2>&1 || rc=$?
    if [ "$1" = pass ] && [ $rc -ne 0 ]; then
      echo "self-test: refused what it must accept: $3" >&2
      cat "$tmp/out" >&2
      exit 1
    fi
    if [ "$1" = fail ] && { [ $rc -eq 0 ] || ! grep -qF -- "$2" "$tmp/out"; }; then
      echo "self-test: did not refuse ($2): $3" >&2
      cat "$tmp/out" >&2
      exit 1
    fi
  }
  expect fail "inside a transaction" "CREATE INDEX people_by_name ON people (name);"
  expect fail "inside a transaction" "create unique index if not exists x on only people (a);"
  expect fail "USING INDEX" "ALTER TABLE people ADD CONSTRAINT people_email UNIQUE (email);"
  expect fail "USING INDEX" "ALTER TABLE IF EXISTS ONLY people ADD PRIMARY KEY (id);"
  expect fail "USING INDEX" "ALTER TABLE people ADD COLUMN code text UNIQUE;"
  expect fail "USING INDEX" "ALTER TABLE rooms ADD EXCLUDE USING gist (during WITH &&);"
  expect fail "NOT VALID" "ALTER TABLE people ADD CONSTRAINT adult CHECK (age >= 18);"
  expect fail "NOT VALID" "ALTER TABLE people ADD COLUMN n int NOT NULL DEFAULT 0 CHECK (n >= 0);"
  expect fail "NOT VALID" "ALTER TABLE people ADD FOREIGN KEY (team) REFERENCES teams (id);"
  expect fail "NOT VALID" "ALTER TABLE people ADD COLUMN team uuid REFERENCES teams;"
  expect fail "rewrites" "ALTER TABLE people ALTER COLUMN age TYPE bigint;"
  expect fail "rewrites" "alter table people alter age set data type bigint;"
  expect fail "SET NOT NULL" "ALTER TABLE people ALTER COLUMN email SET NOT NULL;"
  expect fail "volatile" "ALTER TABLE people ADD COLUMN token uuid NOT NULL DEFAULT gen_random_uuid();"
  expect fail "volatile" "ALTER TABLE people ADD COLUMN n bigserial;"
  expect fail "volatile" "ALTER TABLE people ADD COLUMN seen timestamptz DEFAULT clock_timestamp();"
  expect fail "volatile" "ALTER TABLE people ADD COLUMN n int GENERATED ALWAYS AS (age * 2) STORED;"
  expect fail "rewrites" "ALTER TABLE people SET UNLOGGED;"
  expect fail "rewrites" "VACUUM FULL people;"
  expect fail "rewrites" "CLUSTER people USING people_pkey;"
  expect fail "later migration" "ALTER TABLE people ADD CONSTRAINT adult CHECK (age >= 18) NOT VALID;
ALTER TABLE people VALIDATE CONSTRAINT adult;"
  expect fail "in batches" "UPDATE people SET email = lower(email);"
  expect fail "in batches" "delete from only people where left_on < now();"
  expect fail "in batches" "WITH old AS (SELECT id FROM people) DELETE FROM people USING old WHERE people.id = old.id;"
  expect fail "in batches" "-- connecting:no-transaction
UPDATE people p SET n = 0 WHERE p.n IS NULL;"
  expect fail "COMMIT after each batch" "DO \$\$ BEGIN UPDATE people SET n = 0; COMMIT; END \$\$;"
  expect fail "COMMIT after each batch" "-- connecting:no-transaction
DO \$fill\$ BEGIN DELETE FROM people WHERE n IS NULL; END \$fill\$ LANGUAGE plpgsql;"
  expect pass "" "-- connecting:no-transaction
DO \$\$
DECLARE last uuid := '00000000-0000-0000-0000-000000000000';
BEGIN
  LOOP
    WITH batch AS (SELECT id FROM people WHERE id > last ORDER BY id LIMIT 1000),
         filled AS (UPDATE people p SET n = 0 FROM batch WHERE p.id = batch.id AND p.n IS NULL)
    SELECT max(id) INTO last FROM batch;
    EXIT WHEN last IS NULL;
    COMMIT;
  END LOOP;
END \$\$;"
  expect pass "" "CREATE FUNCTION touch(uuid) RETURNS void LANGUAGE sql AS \$\$
  UPDATE people SET n = n + 1 WHERE id = \$1; DELETE FROM people WHERE n > 9 \$\$;
ALTER TABLE people ADD COLUMN team uuid REFERENCES teams ON UPDATE CASCADE NOT VALID;"
  expect pass "" "CREATE TABLE t (x int); INSERT INTO t VALUES (1); UPDATE t SET x = 2; DELETE FROM t;
DO \$\$ BEGIN UPDATE t SET x = 3; END \$\$; INSERT INTO t SELECT n FROM people;"
  expect fail "expand" "DROP TABLE IF EXISTS public.people;"
  expect fail "expand" "ALTER TABLE people DROP COLUMN email;"
  expect fail "expand" "alter table people drop if exists nickname, drop constraint x;"
  expect fail "expand" "ALTER TABLE people RENAME COLUMN email TO mail;"
  expect fail "expand" "ALTER TABLE people RENAME TO persons;"
  expect fail "expand" "DROP FUNCTION touch(uuid);"
  expect fail "expand" "ALTER FUNCTION touch(uuid) RENAME TO touch_v1;"
  expect pass "" "-- connecting:contract: release 2027.1 stopped reading email and nickname
ALTER TABLE people DROP COLUMN email, DROP nickname; DROP FUNCTION touch(uuid);"
  expect pass "" "ALTER TABLE people DROP CONSTRAINT people_check, ALTER COLUMN n DROP DEFAULT,
  ALTER COLUMN n DROP NOT NULL; ALTER TABLE people RENAME CONSTRAINT a TO b;
ALTER INDEX people_by_n RENAME TO people_in_n_order;
CREATE TABLE t (x int); ALTER TABLE t RENAME COLUMN x TO y; DROP TABLE t;
CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'; DROP FUNCTION f();"
  expect pass "" "-- connecting:no-transaction
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS people_email ON people (email);"
  expect pass "" "ALTER TABLE people ADD CONSTRAINT people_email UNIQUE USING INDEX people_email;"
  expect pass "" "ALTER TABLE people ADD CONSTRAINT adult CHECK (age >= 18) NOT VALID;
ALTER TABLE people ADD COLUMN team uuid, ADD CONSTRAINT t FOREIGN KEY (team) REFERENCES teams NOT VALID;"
  expect pass "" "ALTER TABLE people VALIDATE CONSTRAINT adult;"
  expect pass "" "ALTER TABLE people ADD COLUMN made timestamptz NOT NULL DEFAULT now();
ALTER TABLE people ADD COLUMN id2 uuid; ALTER TABLE people ALTER COLUMN id2 SET DEFAULT gen_random_uuid();"
  expect pass "" "ALTER TABLE people ADD COLUMN nickname text; -- a UNIQUE name? CHECK later
ALTER TABLE people DROP CONSTRAINT people_check; ALTER TABLE people SET (fillfactor = 50);
/* ALTER TABLE people ALTER COLUMN age TYPE bigint; */"
  expect pass "" "CREATE TABLE teams (id uuid PRIMARY KEY, name text UNIQUE CHECK (name <> ''));
CREATE INDEX teams_by_name ON teams (name);
ALTER TABLE teams ADD CONSTRAINT one_name UNIQUE (name), ALTER COLUMN name SET NOT NULL;
CREATE TABLE IF NOT EXISTS rooms (id int);
ALTER TABLE rooms ADD PRIMARY KEY (id);"
  echo "self-test: every statement that holds an existing table while it reads it, or takes away what the release before uses, is refused"
  exit 0
fi

cd "${1:-$(dirname "$0")/..}"
shopt -s nullglob
grandfathered=(
  libs/bus/migrations/0002_outbox_wake_in_process.sql
  libs/bus/migrations/0003_outbox_delete_when_published.sql
  libs/bus/migrations/0006_inbox_stream_position.sql
  services/scheduling/migrations/0002_site_waitlist_counter.sql
  services/scheduling/migrations/0004_booking_indexes.sql
  services/scheduling/migrations/0007_sessions_by_arranger.sql
  services/scheduling/migrations/0008_sessions_by_host.sql
  services/scheduling/migrations/0010_attendance_chains.sql
)
failures=0
checked=0
refuse() {  # refuse FILE TABLE REASON
  echo "$1: on $2, which it did not create: $3" >&2
  failures=$((failures + 1))
}
ours() { grep -qx "$1" <<<"$created"; }  # a table the file being read creates
create_index='^ *create (unique )?index '
concurrently='^ *create (unique )?index concurrently '
alter_table='^ *alter table (if exists )?(only )?([a-z0-9_]+)'
rewrite_table='^ *(vacuum (\([^)]*full[^)]*\) |full )(verbose )?|cluster (verbose )?)([a-z0-9_]+)'
change_rows='^ *(update|delete|merge|with) '
do_block='^ *do .*\$body\(([^)]*)\)(commit)?\$'
drop_object='^ *drop (table|view|materialized view|function|procedure|type) (if exists )?([a-z0-9_]+\.)?([a-z0-9_]+)'
rename_object='^ *alter (view|materialized view|function|procedure|type) (if exists )?([a-z0-9_]+\.)?([a-z0-9_]+).*\brename to\b'
still_used="the previous release's replicas serve while the migration runs and until the rollout replaces them, and use what it had: add the new beside the old (expand), and drop or rename the old only in a later release, once no release still running reads or writes it, in a file with a line '-- connecting:contract: <why nothing running uses it>' (docs/operations.md)"
for f in libs/*/migrations/[0-9][0-9][0-9][0-9]_*.sql services/*/migrations/[0-9][0-9][0-9][0-9]_*.sql; do
  checked=$((checked + 1))
  [[ " ${grandfathered[*]} " == *" $f "* ]] && continue
  # Comments out (`--` to the end of a line, `/* … */`), lower-cased, one
  # statement per line. A dollar-quoted body (a function's, a DO block's)
  # becomes `$body(T …)$`, naming the tables it updates or deletes from
  # (T …), with `commit` after the parenthesis if it commits.
  statements=$(perl -0777 -pe 's{/\*.*?\*/}{ }gs; s{--[^\n]*}{}g;
    s{\$(\w*)\$(.*?)\$\1\$}{my $b = lc $2;
      my @t = grep { defined } $b =~ /\b(?:update\s+(?:only\s+)?(\w+)(?=(?:\s+(?:as\s+)?\w+)?\s+set\b)|delete\s+from\s+(?:only\s+)?(\w+)|merge\s+into\s+(?:only\s+)?(\w+))/g;
      " \$body(@t)" . ($b =~ /\bcommit\b/ ? "commit" : "") . "\$ "}gse;
    s{\s+}{ }g; s{;}{\n}g; $_ = lc' "$f")
  created=$(grep -oP '^ *create (or replace )?(unlogged table|table|view|materialized view|function|procedure|type) (if not exists )?\K\w+' <<<"$statements" || true)
  # What the release before still reads may be removed only by a file that
  # says why nothing running uses it any more.
  contract=false
  grep -qE '^-- connecting:contract: *[^ ]' "$f" && contract=true
  # Constraints this file adds NOT VALID, if it runs in one transaction.
  unvalidated=""
  no_transaction=false
  if head -1 "$f" | grep -q '^-- connecting:no-transaction'; then
    no_transaction=true
  else
    unvalidated=$(grep -oP 'add constraint \K\w+(?=[^,]* not valid\b)' <<<"$statements" || true)
  fi
  while IFS= read -r s; do
    if [[ $s =~ $change_rows ]]; then
      for table in $(grep -oP '\b(update (only )?\K\w+(?=( (as )?\w+)? set\b)|delete from (only )?\K\w+|merge into (only )?\K\w+)' <<<"$s" || true); do
        ours "$table" || refuse "$f" "$table" "an UPDATE, DELETE or MERGE holds every row it changes until it ends, however it runs; change them in batches: a DO block that commits after each batch, in a migration whose first line is '-- connecting:no-transaction' (docs/operations.md)"
      done
      continue
    fi
    if [[ $s =~ $do_block ]]; then
      for table in ${BASH_REMATCH[1]}; do
        ours "$table" && continue
        [ "$no_transaction" = true ] && [ -n "${BASH_REMATCH[2]}" ] ||
          refuse "$f" "$table" "a DO block that changes rows holds them all until its transaction ends; COMMIT after each batch, in a migration whose first line is '-- connecting:no-transaction' (docs/operations.md)"
      done
      continue
    fi
    if [[ $s =~ $create_index ]] && [[ ! $s =~ $concurrently ]]; then
      table=$(grep -oP '\bon (only )?\K\w+' <<<"$s" | head -1)
      ours "$table" || refuse "$f" "$table" "an index built inside a transaction holds its writes; build it CONCURRENTLY in a migration whose first line is '-- connecting:no-transaction' (libs/db/migrations.h)"
      continue
    fi
    if [[ $s =~ $rewrite_table ]]; then
      ours "${BASH_REMATCH[5]}" ||
        refuse "$f" "${BASH_REMATCH[5]}" "VACUUM FULL or CLUSTER rewrites the table under an exclusive lock"
      continue
    fi
    if [[ $s =~ $drop_object ]] || [[ $s =~ $rename_object ]]; then
      ours "${BASH_REMATCH[4]}" || $contract || refuse "$f" "${BASH_REMATCH[4]}" "$still_used"
      continue
    fi
    [[ $s =~ $alter_table ]] || continue
    table=${BASH_REMATCH[3]}
    ours "$table" && continue
    if ! $contract && grep -qP '\b(drop (column\b|(?!constraint|default|not|identity|expression)\w+)|rename (column )?(?!constraint)\w+ to|rename to)\b' <<<"$s"; then
      refuse "$f" "$table" "$still_used"
    fi
    if grep -qP '\b(unique|primary key|exclude)\b' <<<"$s" && ! grep -qP '\busing index\b' <<<"$s"; then
      refuse "$f" "$table" "a UNIQUE, PRIMARY KEY or EXCLUDE constraint builds its index under an exclusive lock; build the index CONCURRENTLY first, then ADD CONSTRAINT … USING INDEX"
    fi
    if grep -qP '\b(check|references|foreign key)\b' <<<"$s" && ! grep -qP '\bnot valid\b' <<<"$s"; then
      refuse "$f" "$table" "a CHECK or FOREIGN KEY constraint reads every row under its lock; add it NOT VALID, then VALIDATE CONSTRAINT"
    fi
    if grep -qP '\balter (column )?\w+ (set data )?type\b' <<<"$s"; then
      refuse "$f" "$table" "ALTER COLUMN … TYPE rewrites the table under an exclusive lock; add a new column instead"
    fi
    for name in $(grep -oP '\bvalidate constraint \K\w+' <<<"$s" || true); do
      grep -qx "$name" <<<"$unvalidated" || continue
      refuse "$f" "$table" "VALIDATE CONSTRAINT $name in the transaction that added it still holds the lock the ADD took; validate it in a later migration"
    done
    if grep -qP '\badd (column )?(if not exists )?\w+ [^,]*(\bdefault [^,]*\b(gen_random_uuid|random|clock_timestamp|timeofday|uuid_generate_v\d\w*|nextval) *\(|\b(small|big)?serial\b|\bstored\b)' <<<"$s"; then
      refuse "$f" "$table" "a column added with a volatile DEFAULT, a serial type or GENERATED … STORED rewrites the table under an exclusive lock; add it plain, then fill it in batches"
    fi
    if grep -qP '\bset (logged|unlogged|tablespace)\b' <<<"$s"; then
      refuse "$f" "$table" "SET LOGGED, UNLOGGED or TABLESPACE rewrites the table under an exclusive lock"
    fi
    if grep -qP '\bset not null\b' <<<"$s"; then
      refuse "$f" "$table" "SET NOT NULL reads every row under an exclusive lock; add CHECK (… IS NOT NULL) NOT VALID and VALIDATE it first"
    fi
  done <<<"$statements"
done
[ "$checked" -gt 0 ] || { echo "no migrations found under $(pwd)" >&2; exit 1; }
if [ "$failures" -gt 0 ]; then exit 1; fi
echo "$checked versioned migrations: none holds an existing table while it reads it, nor takes away what the release before uses"
