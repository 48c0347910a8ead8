#!/usr/bin/env bash
# `make down`: stops what `make up` started (data stays in .stack/).
# `make reset` (--reset): stops it and deletes its data, wherever it lies.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tools/dev/lib.sh
stack="$(pwd)/.stack"
for pidfile in "$stack"/run/*.pid; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "stopped $(basename "$pidfile" .pid)"
  fi
  rm -f "$pidfile"
done
stop_nats "$stack/nats" && echo "stopped NATS"
if [ -f "$stack/run/pgdir" ]; then stop_postgres "$(cat "$stack/run/pgdir")" && echo "stopped PostgreSQL"; fi
if [ "${1:-}" = --reset ]; then
  # PostgreSQL's data sits outside .stack/ when its owner cannot enter the tree (up.sh).
  pgdir=$(cat "$stack/run/pgdir" 2>/dev/null || true)
  case "$pgdir" in
    "$stack"/*) ;;
    /var/tmp/connecting-*/pg) rm -rf "$(dirname "$pgdir")" ;;
  esac
  rm -rf "$stack"
  echo "deleted the local stack's data: the next make up starts afresh"
fi
