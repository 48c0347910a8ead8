#!/usr/bin/env bash
# Every repeatable migration (R__name.sql) is released with a versioned one.
#
# A replica older than its database leaves the repeatable migrations as they
# are, and "older" means: the database has a versioned migration this replica
# does not know (libs/db/migrations.h). So a release that edits an R__ file
# must add a versioned migration too, or its old replicas, restarting during
# the rolling update, put their own definition back. This check makes that
# rule mechanical: each migrations directory with R__ files keeps a
# repeatable.lock listing, oldest first, each text an R__ file has had and the
# versioned migration released with it:
#   R__book_session 0008 <sha256 of the file>
# An edited R__ file no longer matches its last line, and the check fails
# until a new versioned migration exists and a line naming it is appended.
# While that migration is unreleased, amend its line instead of adding one.
# Usage (ctest runs it): repeatable_migrations_test.sh [ROOT]
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
shopt -s nullglob
failures=0
fail() {
  echo "$*" >&2
  failures=$((failures + 1))
}

for dir in libs/*/migrations services/*/migrations; do
  lock=$dir/repeatable.lock
  repeatable=("$dir"/R__*.sql)
  [ ${#repeatable[@]} -eq 0 ] && [ ! -f "$lock" ] && continue
  versioned=("$dir"/[0-9][0-9][0-9][0-9]_*.sql)
  newest=0000
  [ ${#versioned[@]} -gt 0 ] && newest=$(basename "${versioned[-1]}" | cut -c1-4)
  next=$(printf '%04d' $((10#$newest + 1)))
  touch_hint=""
  [ -f "$lock" ] || touch_hint=" (create it)"

  for f in "${repeatable[@]}"; do
    name=$(basename "$f" .sql)
    sha=$(sha256sum "$f" | cut -d' ' -f1)
    lines=()
    if [ -f "$lock" ]; then
      mapfile -t lines < <(awk -v n="$name" '$1 == n' "$lock")
    fi
    last=""
    [ ${#lines[@]} -gt 0 ] && last=${lines[-1]}
    if [ "$(awk '{print $3}' <<<"$last")" != "$sha" ]; then
      fail "$f: its text is not the one $lock${touch_hint:-} records last for it.
  A release that edits a repeatable migration adds a versioned one too, so that
  replicas of the release before it leave the new definition alone during a
  rolling update (libs/db/migrations.h). Add $dir/${next}_<what>.sql
  (SELECT 1; if it has nothing else to change), then append to $lock:
    $name $next $sha
  (While that migration is unreleased, amend its line instead.)"
      continue
    fi
    prev=0
    for line in "${lines[@]}"; do
      read -r _ version _ <<<"$line"
      if ! [[ $version =~ ^[0-9]{4}$ ]] || [ -z "$(echo "$dir/${version}"_*.sql)" ]; then
        fail "$lock: '$line' names no versioned migration of $dir"
      elif [ $((10#$version)) -le "$prev" ]; then
        fail "$lock: '$line': each text of $name is released with a newer versioned migration than the text before it"
      else
        prev=$((10#$version))
      fi
    done
  done

  if [ -f "$lock" ]; then
    while read -r name _; do
      [ -f "$dir/$name.sql" ] || fail "$lock: $name.sql does not exist; remove its lines"
    done < <(grep -Ev '^[[:space:]]*(#|$)' "$lock")
  fi
done

[ "$failures" -eq 0 ] || exit 1
echo "repeatable migrations: every text is recorded with its versioned migration"
