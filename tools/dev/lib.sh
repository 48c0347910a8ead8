# Shared shell functions for the dev stack, the test run and the benchmarks.
# shellcheck shell=bash
# Source it: . tools/dev/lib.sh

pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$d" ] || { echo "PostgreSQL server binaries not found (apt-get install postgresql)" >&2; return 1; }
  echo "$d"
}

# Runs a command as the PostgreSQL owner: initdb refuses to run as root.
# From /, which that user can enter (pg_ctl complains of a working directory
# it cannot): the paths given must be absolute.
as_pg_owner() {
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
# free_port: a loopback port nobody listens on, below the kernel's ephemeral
# range, so an outgoing connection cannot take it before our server binds it.
# Under a test stack ($CONNECTING_TEST_TMP) the port is also claimed for the
# run, as the C++ harness's FreePort claims its own (tests/harness.cc), so two
# tests running side by side never pick the same one.
free_port() {
  local p low=32768
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  [ "$low" -gt 11000 ] || low=32768
  for _ in $(seq 1 200); do
    p=$(( (RANDOM * 32768 + RANDOM) % (low - 10000) + 10000 ))
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then continue; fi
    if [ -n "${CONNECTING_TEST_TMP:-}" ]; then
      mkdir -p "$CONNECTING_TEST_TMP/ports"
      (set -C; : >"$CONNECTING_TEST_TMP/ports/$p") 2>/dev/null || continue
    fi
    echo "$p"; return 0
  done
  echo "no free port found" >&2; return 1
}

# require_free_port PORT NAME VAR: fails, saying how to choose another, when
# something else already listens on 127.0.0.1:PORT (a server started then
# would fail to bind, and its clients would reach the other program instead).
require_free_port() {
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "127.0.0.1:$1, wanted for $2, is taken by another program; choose another with $3=<port>" >&2
    return 1
  fi
}

wait_port() {  # host port seconds [pid: give up at once if it exits]
  local deadline=$(( $(date +%s) + ${3:-20} ))
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    if [ -n "${4:-}" ] && ! kill -0 "$4" 2>/dev/null; then
      echo "the process meant to listen on $1:$2 exited" >&2; return 1
    fi
    [ "$(date +%s)" -lt "$deadline" ] || { echo "nothing listens on $1:$2 after ${3:-20}s" >&2; return 1; }
    sleep 0.1
  done
}

# start_postgres DIR PORT [fast]: initialises DIR/data on first use, then starts
# PostgreSQL on 127.0.0.1:PORT (socket in DIR). "fast" turns off fsync for tests.
start_postgres() {
  local dir=$1 port=$2 mode=${3:-}
  local bin; bin=$(pg_bindir) || return 1
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; chmod 755 "$dir"; fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_pg_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale \
      >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
  fi
  local opts="-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300"
  [ "$mode" = fast ] && opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  [ -n "${PG_EXTRA_OPTS:-}" ] && opts="$opts $PG_EXTRA_OPTS"  # e.g. -c shared_preload_libraries=…
  as_pg_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "$opts" -w -t 60 start \
    >/dev/null || { tail -20 "$dir/postgres.log" >&2; return 1; }
}

stop_postgres() {  # DIR
  local bin; bin=$(pg_bindir) || return 0
  [ -f "$1/data/postmaster.pid" ] && as_pg_owner "$bin/pg_ctl" -D "$1/data" -m fast -w stop >/dev/null 2>&1
  return 0
}

# start_nats DIR PORT [WS_PORT]: nats-server with JetStream storing in DIR/js.
start_nats() {
  local dir=$1 port=$2 ws=${3:-}
  mkdir -p "$dir"
  {
    echo "listen: 127.0.0.1:$port"
    echo "jetstream { store_dir: \"$dir/js\" }"
    [ -n "$ws" ] && echo "websocket { listen: \"127.0.0.1:$ws\", no_tls: true }"
  } >"$dir/nats.conf"
  nats-server -c "$dir/nats.conf" -P "$dir/nats.pid" -l "$dir/nats.log" </dev/null >/dev/null 2>&1 &
  wait_port 127.0.0.1 "$port" 20
}

stop_nats() {  # DIR
  if [ -f "$1/nats.pid" ]; then
    local pid; pid=$(cat "$1/nats.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$1/nats.pid"
  fi
}

# launch_service BINARY DATABASE LOGFILE GRPC_PORT METRICS_PORT LOG_LEVEL: starts
# a service in the background on loopback ($! is its pid), its database and
# NATS being those on $PG_PORT and $NATS_PORT, its token key $JWT_KEY.
launch_service() {
  DATABASE_URL="postgresql://postgres@127.0.0.1:$PG_PORT/$2" NATS_URL="nats://127.0.0.1:$NATS_PORT" \
  GRPC_LISTEN="127.0.0.1:$4" METRICS_LISTEN="127.0.0.1:$5" AUTH_JWT_KEY="$JWT_KEY" LOG_LEVEL="$6" \
    nohup "$1" >>"$3" 2>&1 </dev/null &
}

# start_test_stack DIR: the test run's throwaway PostgreSQL (fsync off) and
# nats-server on free loopback ports, their files in DIR, and the
# CONNECTING_TEST_* variables the test binaries read (tests/harness.h)
# exported for them. stop_test_stack DIR stops both.
start_test_stack() {
  local dir=$1 pg_port nats_port
  pg_port=$(free_port)
  start_postgres "$dir/pg" "$pg_port" fast || return 1
  nats_port=$(free_port)
  start_nats "$dir/nats" "$nats_port" || return 1
  export CONNECTING_TEST_PG="postgresql://postgres@127.0.0.1:$pg_port/postgres"
  export CONNECTING_TEST_NATS="nats://127.0.0.1:$nats_port"
  CONNECTING_TEST_PG_BINDIR=$(pg_bindir)
  export CONNECTING_TEST_PG_BINDIR
  export CONNECTING_TEST_TMP="$dir"
  # Idle test clients notice server restarts (GOAWAY) quickly instead of every 5 s.
  export GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS=100
  echo "test PostgreSQL on 127.0.0.1:$pg_port, NATS on 127.0.0.1:$nats_port"
}

stop_test_stack() {  # DIR
  stop_nats "$1/nats"
  stop_postgres "$1/pg"
}

# use_test_stack NAME: start_test_stack in a new /tmp/connecting-NAME.XXXXXX
# (its path left in $work), stopped and removed when the script exits,
# whatever happens.
use_test_stack() {
  work=$(mktemp -d "/tmp/connecting-$1.XXXXXX")
  chmod 755 "$work"
  trap 'stop_test_stack "$work"; rm -rf "$work"' EXIT
  trap 'exit 130' INT TERM
  start_test_stack "$work"
}
