#!/usr/bin/env bash
# Runs the whole test suite against one throwaway PostgreSQL and one nats-server
# (started here on free loopback ports, stopped on exit whatever happens).
# Usage: tools/test/run.sh [extra ctest arguments]
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/dev/lib.sh
BUILD_DIR=${BUILD_DIR:-build}

use_test_stack test
ctest --test-dir "$BUILD_DIR" --output-on-failure -j2 --timeout 600 "$@"
