#!/usr/bin/env bash
# Runs the whole test suite against one throwaway PostgreSQL and one nats-server
# (started here on free loopback ports, stopped on exit whatever happens).
# Usage: tools/test/run.sh [extra ctest arguments]
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/dev/lib.sh
BUILD_DIR=${BUILD_DIR:-build}

work=$(mktemp -d /tmp/connecting-test.XXXXXX)
chmod 755 "$work"
cleanup() {
  stop_nats "$work/nats"
  stop_postgres "$work/pg"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pg_port=$(free_port)
start_postgres "$work/pg" "$pg_port" fast
nats_port=$(free_port)
start_nats "$work/nats" "$nats_port"

export CONNECTING_TEST_PG="postgresql://postgres@127.0.0.1:$pg_port/postgres"
export CONNECTING_TEST_NATS="nats://127.0.0.1:$nats_port"
export CONNECTING_TEST_PG_BINDIR=$(pg_bindir)
export CONNECTING_TEST_TMP="$work"
# Idle test clients notice server restarts (GOAWAY) quickly instead of every 5 s.
export GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS=100
echo "test PostgreSQL on 127.0.0.1:$pg_port, NATS on 127.0.0.1:$nats_port"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j2 --timeout 600 "$@"
