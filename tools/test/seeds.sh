#!/usr/bin/env bash
# Runs the seeded random tests over other seeds than CI's, against one
# throwaway PostgreSQL and nats-server (as tools/test/run.sh starts them):
# the random requests to every RPC (rpc_fuzz_test) and the random concurrent
# workload of bookings (RandomConcurrentWorkloadKeepsEveryRule), each once
# per seed, seeds FROM to TO. Against an already built tree (BUILD_DIR,
# default build; build-asan after `make sanitize` runs them instrumented).
#
# With `crash`, instead: the same workload while the service is killed or
# stopped and started again, its database connections ended, PostgreSQL
# crashed or nats-server killed (servers of the test's own), at seeded
# moments (SchedulingCrash.RandomConcurrentWorkloadThroughCrashesKeepsEveryRule).
#
# Usage: tools/test/seeds.sh FROM TO [fuzz|workload|crash]
#   SEEDS_SECONDS (default 3600) bounds the whole run: the seeds not reached
#   by then are named, not run. A failed seed's output is kept in
#   /tmp/connecting-seed-<test>-<seed>.log. Exit code: 0 when every seed
#   passed, 1 when one failed, 3 when none failed but time ran out.
# One seed of each took about 3.5 s here (15 s instrumented).
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/dev/lib.sh
BUILD_DIR=${BUILD_DIR:-build}

from=${1:-}
to=${2:-}
only=${3:-}
if ! [[ $from =~ ^[0-9]+$ && $to =~ ^[0-9]+$ ]] || ((from > to)) ||
  [[ -n $only && $only != fuzz && $only != workload && $only != crash ]]; then
  echo "usage: $0 FROM TO [fuzz|workload|crash]   (seeds FROM to TO, whole numbers)" >&2
  exit 2
fi
for bin in rpc_fuzz_test scheduling_concurrency_test; do
  [ -x "$BUILD_DIR/tests/$bin" ] || {
    echo "$BUILD_DIR/tests/$bin is not built (cmake --build $BUILD_DIR first)" >&2
    exit 2
  }
done

use_test_stack seeds

# run NAME SEED COMMAND...: one test at one seed; its output kept if it fails.
failed=0
run() {
  local name=$1 seed=$2
  shift 2
  if CONNECTING_TEST_SEED=$seed "$@" >"$work/out" 2>&1; then
    echo "seed $seed $name: ok"
  else
    cp "$work/out" "/tmp/connecting-seed-$name-$seed.log"
    echo "seed $seed $name: FAILED (output in /tmp/connecting-seed-$name-$seed.log)"
    failed=$((failed + 1))
  fi
}

end=$(($(date +%s) + ${SEEDS_SECONDS:-3600}))
ran=0
out_of_time=0
for ((seed = from; seed <= to; seed++)); do
  if (($(date +%s) >= end)); then
    echo "out of time (SEEDS_SECONDS): seeds $seed to $to not run"
    out_of_time=1
    break
  fi
  if [ "$only" = crash ]; then
    run crash "$seed" "$BUILD_DIR/tests/scheduling_concurrency_test" \
      --gtest_filter='SchedulingCrash.RandomConcurrentWorkloadThroughCrashesKeepsEveryRule'
    ran=$((ran + 1))
    continue
  fi
  [ "$only" = workload ] || run fuzz "$seed" "$BUILD_DIR/tests/rpc_fuzz_test"
  [ "$only" = fuzz ] || run workload "$seed" "$BUILD_DIR/tests/scheduling_concurrency_test" \
    --gtest_filter='*RandomConcurrentWorkloadKeepsEveryRule'
  ran=$((ran + 1))
done
echo "$ran seeds run, $failed failed"
if ((failed > 0)); then exit 1; fi
if ((out_of_time)); then exit 3; fi
